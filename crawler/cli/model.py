"""`crystalline generate`, `eval` and `export`: the commands that use a trained model.

They use the best checkpoint by held-out bits per byte (checkpoints/best.safetensors), or the
newest with --latest, as CheckpointStore.load_model picks it, with the tokenizer the checkpoint
records (which must be the state directory's). They take no lock and open no store, so they
work beside a running daemon. `generate`'s settings and their bounds are the engine's
(engine/sampling.py), the same the page's prompt box obeys. `eval` reads each file as the daemon
does (crawler.ingest.reading: the same extraction, normalisation and skips), so it scores the
text the model trains on.
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from engine import TrainConfig
from engine.sampling import BOUNDS as SAMPLE_BOUNDS
from engine.sampling import TERMINAL_SAMPLING
from engine.units import LN2

from ..ingest.data import SkippedFile, eval_windows, load_corpus
from ..ingest.tokenizer import Tokenizer, TokenizerError, tokenizer_from_identity
from ..logging import get_logger
from .opener import add_state_flags, command_config
from .parsing import CliError, integer, real, write_stdout


def add_commands(commands: Any) -> None:
    """Register `generate`, `eval` and `export` on the CLI's subparsers."""
    generate = commands.add_parser("generate", help="continue a prompt with the best checkpoint")
    generate.add_argument("prompt", nargs="?", default="", metavar="PROMPT")
    terminal = TERMINAL_SAMPLING  # the defaults of a completion printed on a terminal
    generate.add_argument("--max-new-tokens", type=sample_setting("max_new_tokens"),
                          default=terminal.max_new_tokens, metavar="N")
    generate.add_argument("--temperature", type=sample_setting("temperature"), default=terminal.temperature,
                          metavar="X", help="0 = greedy")
    generate.add_argument("--top-k", type=sample_setting("top_k"), default=terminal.top_k, metavar="K", help="0 = off")
    generate.add_argument("--top-p", type=sample_setting("top_p"), default=terminal.top_p, metavar="P")
    generate.add_argument("--seed", type=sample_setting("seed"), default=terminal.seed, metavar="S")

    evaluate = commands.add_parser("eval", help="bits per byte of the best checkpoint on files")
    evaluate.add_argument("paths", nargs="+", metavar="PATH")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.add_argument("--batch-size", type=integer(1), default=16, metavar="B")
    evaluate.add_argument("--threads", type=integer(0), default=0)

    export = commands.add_parser("export", help="write the best model as one standalone safetensors file")
    export.add_argument("out", metavar="OUT", help="the file to write (replaced atomically)")
    for parser, handler in ((generate, command_generate), (evaluate, command_eval), (export, command_export)):
        parser.add_argument("--latest", action="store_true", help="the newest checkpoint, not the best")
        add_state_flags(parser)
        parser.set_defaults(handler=handler)



def sample_setting(name: str) -> Callable[[str], float]:
    """The parser of a sampling setting's flag: its type (its default's) and its bound are the
    engine's (engine/sampling.py), as POST /api/generate checks them."""
    bound = SAMPLE_BOUNDS[name]
    if isinstance(getattr(TERMINAL_SAMPLING, name), int):
        return integer(int(bound.low), None if math.isinf(bound.high) else int(bound.high))
    return real(bound.low, bound.high, low_open=bound.low_open)


# ---------------------------------------------------------------------------------------------
# the checkpoint a command uses


def _model_checkpoint(args: argparse.Namespace, log: Any):
    """The checkpoint a model command uses (CheckpointStore.load_model): the best by held-out bits
    per byte unless --latest, or when there is none yet, the newest; and its state directory."""
    from ..training.checkpoints import CheckpointStore

    state_dir = command_config(args).state_dir
    store = CheckpointStore(state_dir, log=log)
    checkpoint = store.load_model(latest=args.latest)
    if checkpoint is None:
        hint = "run 'crystalline train PATH...' or the daemon first"
        raise CliError(f"no checkpoint in {store.directory} ({hint}, or pass --state-dir or set CRYSTALLINE_STATE_DIR)")
    return checkpoint, state_dir


def _checkpoint_tokenizer(checkpoint, state_dir: Path) -> Tokenizer:
    """The checkpoint's tokenizer, which must be the state dir's (TokenizerError otherwise)."""
    identity = checkpoint.extra.get("tokenizer")
    if identity is None:
        raise CliError(f"{checkpoint.path}: checkpoint records no tokenizer")
    tokenizer = tokenizer_from_identity(identity, state_dir)
    if tokenizer.vocab_size != checkpoint.model_config.vocab_size:
        raise CliError(
            f"{checkpoint.path}: tokenizer vocab_size {tokenizer.vocab_size} does not match "
            f"the model's {checkpoint.model_config.vocab_size}"
        )
    return tokenizer


def log_left_out(log: Any, item: SkippedFile) -> None:
    """A file an offline command leaves out, logged as the daemon logs it: file_skipped with its
    reason, or file_failed (a parser rejected it)."""
    if item.status == "failed":
        log.warning("file_failed", path=str(item.path), reason=item.reason, error=item.detail)
    else:
        log.warning("file_skipped", path=str(item.path), reason=item.reason, detail=item.detail)


def _load_corpus(paths: Sequence[str], tokenizer: Tokenizer, log: Any, args: argparse.Namespace):
    """The files' text as the daemon reads it, within the state's [extract] limits."""
    return load_corpus(paths, tokenizer, command_config(args).extract, on_skip=lambda item: log_left_out(log, item))


# ---------------------------------------------------------------------------------------------
# the commands


def command_generate(args: argparse.Namespace) -> int:
    """Print PROMPT followed by its continuation (raw bytes, then a newline) on stdout."""
    from engine.sample import sample

    log = get_logger("cli")
    checkpoint, state_dir = _model_checkpoint(args, log)
    tokenizer = _checkpoint_tokenizer(checkpoint, state_dir)
    prompt = args.prompt.encode("utf-8", "surrogateescape")  # the bytes the shell passed
    # a document starts after EOD in training, so a prompt does too
    try:
        prompt_ids = [tokenizer.eod_id] + tokenizer.encode(prompt).tolist()
    except TokenizerError as exc:  # a BPE takes UTF-8 only
        raise CliError(f"prompt: {exc}") from None
    new_ids = sample(
        checkpoint.model_config, checkpoint.params, prompt_ids, args.max_new_tokens,
        temperature=args.temperature, top_k=args.top_k, top_p=args.top_p, seed=args.seed,
        stop_token=tokenizer.eod_id,
    )
    write_stdout(prompt + tokenizer.decode(new_ids) + b"\n")
    return 0


def command_eval(args: argparse.Namespace) -> int:
    """Bits per byte of the best (or --latest) checkpoint on PATH...: summed nats / ln 2 / the bytes
    of the files' text, each file read as the daemon reads it (what it would skip is skipped)."""
    log = get_logger("cli")
    checkpoint, state_dir = _model_checkpoint(args, log)
    tokenizer = _checkpoint_tokenizer(checkpoint, state_dir)
    corpus = _load_corpus(args.paths, tokenizer, log, args)
    model = checkpoint.model_config
    recipe = TrainConfig(batch_size=args.batch_size, seq_len=model.context_length, threads=args.threads)
    loss_sum, n_tokens, n_bytes = 0.0, 0, 0
    from engine import Trainer

    with Trainer.from_checkpoint(checkpoint, recipe.validate(model)) as trainer:
        for inputs, targets in eval_windows(corpus.tokens, model.context_length, args.batch_size):
            batch_loss, batch_tokens = trainer.evaluate(inputs, targets)
            loss_sum += float(batch_loss)
            n_tokens += int(batch_tokens)
            n_bytes += tokenizer.token_bytes(targets)  # every target once: the source bytes
    result = {
        "bits_per_byte": loss_sum / LN2 / n_bytes,
        "loss_nats": loss_sum / n_tokens,
        "bytes": n_bytes,
        "tokens": n_tokens,
        "step": checkpoint.step,
        "files": len(corpus.files),
    }
    if args.json:
        write_stdout(json.dumps(result).encode() + b"\n")
    else:
        line = (
            f"bits/byte {result['bits_per_byte']:.4f} over {n_bytes:,} bytes in {len(corpus.files)} "
            f"files ({n_tokens:,} tokens, {result['loss_nats']:.4f} nats/token) at step {checkpoint.step}\n"
        )
        write_stdout(line.encode())
    return 0


def command_export(args: argparse.Namespace) -> int:
    """Write the best (or --latest) model as one safetensors file: a tensor per parameter, named
    as in engine/layout.py, no optimizer state; its metadata names the model config, the
    tokenizer identity (and holds a BPE's JSON), the step and the held-out figure."""
    from engine.export import export_model

    log = get_logger("cli")
    checkpoint, state_dir = _model_checkpoint(args, log)
    tokenizer = _checkpoint_tokenizer(checkpoint, state_dir)
    metadata = {"tokenizer": json.dumps(checkpoint.extra.get("tokenizer"), sort_keys=True),
                "source": str(checkpoint.path)}
    if checkpoint.extra.get("val_bits_per_byte") is not None:
        metadata["val_bits_per_byte"] = repr(float(checkpoint.extra["val_bits_per_byte"]))
    serialized = getattr(tokenizer, "serialized", None)
    if serialized is not None:
        metadata["tokenizer_json"] = serialized.decode("utf-8") if isinstance(serialized, bytes) else str(serialized)
    path = export_model(args.out, checkpoint.model_config, checkpoint.params, step=checkpoint.step, metadata=metadata)
    log.info("model_exported", path=str(path), source=str(checkpoint.path), step=checkpoint.step,
             bytes=path.stat().st_size)
    write_stdout(f"wrote {path} (step {checkpoint.step}, from {checkpoint.path})\n".encode())
    return 0
