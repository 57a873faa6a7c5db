"""The `crystalline` command line: train, generate, eval, export, bench and tokenizer (also `python -m crawler`).

This is the edge where flags become configuration. `train` is not a trainer of its own: it
stores PATH... in the state directory's corpus exactly as `ingest` does (same extraction, skip
reasons and dedup), then runs the daemon's training loop (crawler/training/worker.py) with the same
configuration layering (TOML < environment < flags; the flags override [model] and [train]),
the same events and the same checkpoints, until --steps total steps or until the held-out
measure plateaus. It holds the state directory's lock, so it never trains beside a daemon.
`generate`, `eval` and `export` use the best checkpoint by held-out bits per byte
(checkpoints/best.safetensors), or the newest with --latest. Every expected failure (a missing
file, no or an incompatible checkpoint, a bad flag value) ends as ONE line
`crystalline: error: ...` on stderr and a non-zero exit status, never a traceback; a traceback
means a bug.

State layout: STATE_DIR/corpus.db (the corpus, the cursor, checkpoint rows, the evaluation
history), STATE_DIR/checkpoints/ckpt-*.safetensors (rolling) and best.safetensors, and an
optional STATE_DIR/tokenizer.json (a BPE from `crystalline tokenizer train`; without it, bytes).
The tokenizer is fixed for the life of a model (`tokenizer train` refuses to replace it once
checkpoints or a corpus database exist). A `train` run on a state dir that holds a checkpoint
resumes it: the model shape comes from the checkpoint (a shape flag that disagrees is an error),
and the loop continues exactly where it stopped.
Exit status: 0 done, 1 error, 2 bad usage, 130 interrupted by Ctrl-C (143 by SIGTERM); `train`
finishes its step and saves a checkpoint first, and a second signal stops at once. A store
error has its own two (sysexits.h): 75 (EX_TEMPFAIL) the store is unavailable for now, locked
past busy_timeout_ms, its server lost or refusing, its disk full: the same command may work
later, unchanged; 74 (EX_IOERR) the store is broken, a damaged file, an unexpected schema, a
refused constraint or login: it needs someone first. The line names which, and the way out.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any, NoReturn

from engine import CheckpointError, ConfigError, TrainConfig
from engine.errors import EngineError
from engine.sampling import BOUNDS as SAMPLE_BOUNDS
from engine.sampling import TERMINAL_SAMPLING
from engine.units import LN2
from storage import ConfigError as StorageConfigError
from storage import StorageError, StoreUnavailable

from .. import ConfigError as SettingError
from .. import installed_version
from ..config import DATABASE_FILE, LOG_LEVELS, LogConfig
from ..ingest.data import DataError, SkippedFile, eval_windows, find_files, load_corpus, read_text
from ..ingest.tokenizer import (
    FIXED,
    MAX_BPE_VOCAB,
    MIN_BPE_VOCAB,
    TOKENIZER_FILE,
    Tokenizer,
    TokenizerError,
    load_state_tokenizer,
    tokenizer_from_identity,
    train_bpe,
)
from ..logging import configure_logging, get_logger
from ..service.daemon import REPEAT_SIGNAL_SECONDS, DaemonError, lower_priority
from ..state.health import DaemonAlreadyRunning
from .corpus import add_commands as add_corpus_commands
from .opener import add_state_flags, command_config
from .plot import add_commands as add_plot_commands
from .progress import SHOWN_BY_BARS, BarSafeStream, TrainProgress, on_terminal
from .service import add_commands as add_service_commands
from .state import add_commands as add_state_commands

PROG = "crystalline"
EXIT_ERROR, EXIT_USAGE, EXIT_INTERRUPTED = 1, 2, 130
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE: what a shell reports for a writer whose reader went away


class CliError(Exception):
    """An expected failure reported as one line; `status` is the exit status."""

    def __init__(self, message: str, status: int = EXIT_ERROR):
        super().__init__(message)
        self.status = status


class _Parser(argparse.ArgumentParser):
    """argparse that raises instead of printing usage and exiting, so main prints one line."""

    def error(self, message: str) -> NoReturn:
        raise CliError(f"{message} (see '{self.prog} --help')", EXIT_USAGE)


# ---------------------------------------------------------------------------------------------
# flag value types: each names what is allowed


def _integer(minimum: int, maximum: int | None = None) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {value}")
        return value

    return parse


def _real(low: float, high: float = math.inf, low_open: bool = False) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        too_low = value <= low if low_open else value < low
        if not math.isfinite(value) or too_low or value > high:
            if math.isinf(high):
                allowed = f"a finite number {'>' if low_open else '>='} {low:g}"
            else:
                allowed = f"in {'(' if low_open else '['}{low:g}, {high:g}]"
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text}")
        return value

    return parse


def _sample_setting(name: str) -> Callable[[str], float]:
    """The parser of a sampling setting's flag: its type (its default's) and its bound are the
    engine's (engine/sampling.py), as POST /api/generate checks them."""
    bound = SAMPLE_BOUNDS[name]
    if isinstance(getattr(TERMINAL_SAMPLING, name), int):
        return _integer(int(bound.low), None if math.isinf(bound.high) else int(bound.high))
    return _real(bound.low, bound.high, low_open=bound.low_open)


# ---------------------------------------------------------------------------------------------
# parser


def build_parser() -> argparse.ArgumentParser:
    """The argparse tree of every subcommand."""
    parser = _Parser(prog=PROG, description="A continuous-learning crawler daemon and its trainer.")
    parser.add_argument("--log-level", default=None, choices=LOG_LEVELS,
                        help="events at this level and above (default: [log] level, info)")
    parser.add_argument("--version", action="version", version=f"{PROG} {installed_version()}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    commands.required = True

    train = commands.add_parser("train", help="store files in the corpus and train on it (the daemon's loop)")
    train.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive), stored as `ingest` does")
    train.add_argument("--steps", type=_integer(1), default=None,
                       help="total step count to reach (default: until the held-out measure plateaus)")
    train.add_argument("--threads", type=_integer(0), default=None, help="worker threads; 0 = all cores")
    train.add_argument("--distributed", action="store_true",
                       help="under `mpiexec -n N`: N processes train one model ([distributed], docs/SCALE-OUT.md)")
    train.add_argument("--context", type=_integer(2), default=None, metavar="T", help="window length")
    train.add_argument("--d-model", type=_integer(1), default=None, metavar="C")
    train.add_argument("--layers", type=_integer(1), default=None, metavar="L")
    train.add_argument("--heads", type=_integer(1), default=None, metavar="H")
    train.add_argument("--batch-size", type=_integer(1), default=None, metavar="B")
    train.add_argument("--lr", type=_real(0.0, low_open=True), default=None, metavar="X")
    train.add_argument("--seed", type=_integer(0), default=None, metavar="S", help="init and data order")
    train.add_argument("--schedule", choices=("cosine", "constant"), default=None)
    train.add_argument("--warmup", type=_integer(0), default=None, metavar="N", help="warmup steps")
    train.add_argument("--crystalline-weight", type=_real(0.0), default=None, metavar="W")
    train.add_argument("--checkpoint-every", type=_integer(0), default=None, metavar="N",
                       help="checkpoint every N steps (default: [daemon] checkpoint_every_steps); 0 = only at the end")
    train.add_argument("--keep-last", type=_integer(1), default=None, metavar="N")
    train.add_argument("--log-every", type=_integer(1), default=None, metavar="N")
    add_state_flags(train)  # flags win over the configuration
    train.set_defaults(handler=command_train)

    generate = commands.add_parser("generate", help="continue a prompt with the best checkpoint")
    generate.add_argument("prompt", nargs="?", default="", metavar="PROMPT")
    terminal = TERMINAL_SAMPLING  # the defaults of a completion printed on a terminal
    generate.add_argument("--max-new-tokens", type=_sample_setting("max_new_tokens"),
                          default=terminal.max_new_tokens, metavar="N")
    generate.add_argument("--temperature", type=_sample_setting("temperature"), default=terminal.temperature,
                          metavar="X", help="0 = greedy")
    generate.add_argument("--top-k", type=_sample_setting("top_k"), default=terminal.top_k, metavar="K", help="0 = off")
    generate.add_argument("--top-p", type=_sample_setting("top_p"), default=terminal.top_p, metavar="P")
    generate.add_argument("--seed", type=_sample_setting("seed"), default=terminal.seed, metavar="S")
    generate.add_argument("--latest", action="store_true", help="the newest checkpoint, not the best")
    add_state_flags(generate)
    generate.set_defaults(handler=command_generate)

    evaluate = commands.add_parser("eval", help="bits per byte of the best checkpoint on files")
    evaluate.add_argument("paths", nargs="+", metavar="PATH")
    evaluate.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    evaluate.add_argument("--batch-size", type=_integer(1), default=16, metavar="B")
    evaluate.add_argument("--threads", type=_integer(0), default=0)
    evaluate.add_argument("--latest", action="store_true", help="the newest checkpoint, not the best")
    add_state_flags(evaluate)
    evaluate.set_defaults(handler=command_eval)

    export = commands.add_parser("export", help="write the best model as one standalone safetensors file")
    export.add_argument("out", metavar="OUT", help="the file to write (replaced atomically)")
    export.add_argument("--latest", action="store_true", help="the newest checkpoint, not the best")
    add_state_flags(export)
    export.set_defaults(handler=command_export)

    # bench's flags belong to crawler.bench.throughput (add_arguments), parsed only when bench runs
    bench = commands.add_parser("bench", help="time the engine (crystalline bench --help)", add_help=False)
    bench.set_defaults(handler=command_bench)

    tokenizer = commands.add_parser("tokenizer", help="train the state dir's BPE tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(
        dest="tokenizer_command", metavar="COMMAND", parser_class=_Parser
    )
    tokenizer_commands.required = True
    tokenizer_train = tokenizer_commands.add_parser(
        "train", help=f"train a byte-level BPE on files and write STATE_DIR/{TOKENIZER_FILE}"
    )
    tokenizer_train.add_argument("paths", nargs="+", metavar="PATH", help="UTF-8 text files or folders")
    tokenizer_train.add_argument("--vocab-size", type=_integer(MIN_BPE_VOCAB, MAX_BPE_VOCAB), required=True,
                                 metavar="N", help="ids, EOD included (at most the training text allows)")
    tokenizer_train.add_argument("--force", action="store_true",
                                 help=f"replace the tokenizer of a state dir that has a {DATABASE_FILE} "
                                 "(never one with checkpoints)")
    add_state_flags(tokenizer_train)
    tokenizer_train.set_defaults(handler=command_tokenizer_train)
    add_corpus_commands(commands)
    add_service_commands(commands)
    add_state_commands(commands)
    add_plot_commands(commands)
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse argv; bench's own flags are registered by crawler.bench.throughput, imported only for bench.

    Raises CliError (status 2) for bad usage, SystemExit(0) for --help.
    """
    parser = build_parser()
    args, rest = parser.parse_known_args(argv)
    if args.command != "bench":
        if rest:
            parser.error(f"unrecognized arguments: {' '.join(rest)}")
        return args
    from ..bench import throughput as bench

    bench_parser = _Parser(prog=f"{PROG} bench", description=(bench.__doc__ or "").split("\n")[0])
    bench.add_arguments(bench_parser)
    return bench_parser.parse_args(rest, namespace=args)


# ---------------------------------------------------------------------------------------------
# shared helpers


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


def _load_corpus(paths: Sequence[str], tokenizer: Tokenizer, log: Any):
    corpus = load_corpus(paths, tokenizer)
    for skipped in corpus.skipped:
        log.warning("file_skipped", path=str(skipped.path), reason=skipped.reason, detail=skipped.message)
    return corpus


class StopFlag:
    """SIGINT/SIGTERM handlers that only set a flag; a second signal stops at once, unless it
    comes within REPEAT_SIGNAL_SECONDS of the first (the same stop delivered twice, as the
    daemon takes it)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.signum: int | None = None
        self._previous: dict[int, Any] = {}
        self._clock = clock
        self._first_at = 0.0

    def handle(self, signum: int, frame: Any = None) -> None:
        """The handler __enter__ installs: records the first signal; a later one (not a repeat)
        raises KeyboardInterrupt for SIGINT, else exits at once with 128 + signum."""
        now = self._clock()
        if self.signum is None:
            self.signum, self._first_at = signum, now
            return
        if now - self._first_at < REPEAT_SIGNAL_SECONDS:
            return
        if signum == signal.SIGINT:  # stop now: main() reports it as interrupted
            raise KeyboardInterrupt
        os._exit(128 + signum)

    def __enter__(self) -> "StopFlag":
        if threading.current_thread() is not threading.main_thread():
            return self  # signals reach only the main thread; a caller elsewhere stops by Ctrl-C there
        for sig in self.SIGNALS:
            self._previous[sig] = signal.signal(sig, self.handle)
        return self

    def __exit__(self, *exc: object) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, handler)


# ---------------------------------------------------------------------------------------------
# train: the daemon's training loop, fed by the files named on the command line

# (flag dest, section, field): the flags that override the configuration's [model] and [train]
TRAIN_FLAGS = (
    ("context", "model", "context_length"), ("context", "train", "seq_len"),
    ("d_model", "model", "d_model"), ("layers", "model", "n_layer"), ("heads", "model", "n_head"),
    ("seed", "model", "seed"), ("seed", "train", "seed"),
    ("batch_size", "train", "batch_size"), ("lr", "train", "learning_rate"),
    ("schedule", "train", "schedule"), ("warmup", "train", "warmup_steps"),
    ("crystalline_weight", "train", "crystalline_weight"), ("threads", "train", "threads"),
    ("keep_last", "daemon", "keep_checkpoints"), ("log_every", "daemon", "log_every"),
)
NEVER = 2**62  # --checkpoint-every 0: no scheduled checkpoints, only the final one


def _train_overrides(args: argparse.Namespace) -> tuple[dict, dict[str, str]]:
    """The flags as load_config overrides, and the model fields they pin (field -> flag)."""
    overrides: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "daemon": {}}
    pinned: dict[str, str] = {}
    for flag, section, field in TRAIN_FLAGS:
        value = getattr(args, flag)
        if value is not None:
            overrides[section][field] = value
            if section == "model":
                pinned[field] = "--" + flag.replace("_", "-")
    if args.checkpoint_every is not None:
        overrides["daemon"]["checkpoint_every_steps"] = args.checkpoint_every or NEVER
    return overrides, pinned


def command_train(args: argparse.Namespace) -> int:
    """Store PATH... in the state directory's corpus (as `ingest` does), then run the daemon's
    training loop until --steps total steps, or until the held-out measure plateaus."""
    import socket

    from storage import TrainingLock

    from ..state.health import DaemonLock
    from ..training.worker import TrainingWorker
    from .corpus import ingest_paths, open_queue

    log = get_logger("cli")
    overrides, pinned = _train_overrides(args)
    config = command_config(args, overrides)
    team = None
    if args.distributed:  # under mpiexec: rank 0 runs all of this, the others follow its steps
        from ..training.team import follow, join

        team, comm = join(config.distributed)
        if comm.rank > 0:
            return follow(comm, log, config.distributed.timeout_seconds)
    missing = [p for p in args.paths if not Path(p).exists() and not Path(p).is_symlink()]
    if missing:
        if team is not None:
            team.stop()
        raise CliError(f"no such file or folder: {missing[0]}")
    lock = DaemonLock(config.state_dir)  # one trainer per state directory: not beside a daemon
    database = training_lock = None
    try:
        lock.acquire()
        database, queue = open_queue(config)
        # one training job per corpus, even a PostgreSQL corpus shared by several state directories
        training_lock = TrainingLock(database, f"crystalline train on {socket.gethostname()}, pid {os.getpid()}")
        training_lock.acquire()
        tokenizer = load_state_tokenizer(config.state_dir)
        lower_priority(config.daemon.nice, log)
        summary = ingest_paths(args.paths, queue, tokenizer, config, log, level="info")
        with StopFlag() as stop:
            worker = TrainingWorker(config, queue, tokenizer, get_logger("trainer"), pinned=pinned, command="train",
                                    stopping=lambda: stop.signum is not None, team=team)
            worker.initialize()
            try:
                return _train_loop(args, worker, summary, tokenizer, stop, log)
            finally:
                worker.shutdown()  # checkpoints the steps since the last checkpoint
    finally:
        if team is not None:
            team.stop()  # the other ranks end after the final checkpoint
        if training_lock is not None:
            training_lock.release()
        if database is not None:
            database.close()
        lock.release()


def _train_loop(args, worker, summary, tokenizer, stop: "StopFlag", log) -> int:
    figures, trainer = worker.figures, worker.trainer
    first = figures.step
    started = time.monotonic()
    log.info("train_started", step=first, steps=args.steps, resumed=first > 0, files=dict(summary.counts),
             bytes=summary.bytes, tokens=summary.tokens, tokenizer=tokenizer.identity(),
             parameters=int(trainer.params.size), threads=trainer.threads,
             model=trainer.model_config.to_dict(), batch_size=trainer.train_config.batch_size,
             lr=trainer.train_config.learning_rate)
    if args.steps is not None and first >= args.steps:
        log.info("train_skipped", reason="already_done", step=first, steps=args.steps)
        return 0
    reason = "steps"
    with contextlib.closing(TrainProgress(first, args.steps)) as progress:
        reason = _train_steps(args, worker, first, stop, progress)
    if stop.signum is not None:
        worker.shutdown()
        log.info("train_stopped", step=figures.step, signal=signal.Signals(stop.signum).name)
        return 128 + stop.signum
    if worker.unsaved_steps:
        worker.checkpoint(reason="finished")  # evaluated: the figure below is the final model's
    worker.shutdown()
    log.info("train_finished", step=figures.step, reason=reason, seconds=round(time.monotonic() - started, 1),
             val_bits_per_byte=figures.val_bits_per_byte, best_val_bits_per_byte=figures.best_val_bits_per_byte)
    return 0


def _train_steps(args, worker, first: int, stop: "StopFlag", progress: TrainProgress) -> str:
    """Run the worker until --steps, a stop signal, a plateau or no data; returns why it ended."""
    figures, trainer = worker.figures, worker.trainer
    reason = "steps"
    while stop.signum is None and (args.steps is None or figures.step < args.steps):
        progress.update(figures)
        if worker.run_once(worker.clock()):  # nothing to train on: plateaued, or too little text
            if not figures.plateaued and figures.step == first:
                stats = worker.queue.stats()
                raise CliError(f"not enough text to train on: the corpus holds {stats.tokens_total} tokens; "
                               f"a batch needs {trainer.train_config.batch_size} windows of "
                               f"{worker.seq_len + 1} (add text or lower --context / --batch-size)")
            reason = "plateau" if figures.plateaued else "no_data"
            break
    progress.update(figures)
    return reason


# ---------------------------------------------------------------------------------------------
# generate, eval, bench


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
    _write_stdout(prompt + tokenizer.decode(new_ids) + b"\n")
    return 0


def command_eval(args: argparse.Namespace) -> int:
    """Bits per byte of the best (or --latest) checkpoint on PATH...: summed nats / ln 2 / source bytes."""
    log = get_logger("cli")
    checkpoint, state_dir = _model_checkpoint(args, log)
    tokenizer = _checkpoint_tokenizer(checkpoint, state_dir)
    corpus = _load_corpus(args.paths, tokenizer, log)
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
        _write_stdout(json.dumps(result).encode() + b"\n")
    else:
        line = (
            f"bits/byte {result['bits_per_byte']:.4f} over {n_bytes:,} bytes in {len(corpus.files)} "
            f"files ({n_tokens:,} tokens, {result['loss_nats']:.4f} nats/token) at step {checkpoint.step}\n"
        )
        _write_stdout(line.encode())
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
    _write_stdout(f"wrote {path} (step {checkpoint.step}, from {checkpoint.path})\n".encode())
    return 0


def command_bench(args: argparse.Namespace) -> int:
    """Hand the parsed flags to crawler.bench.throughput, imported only when asked for."""
    from ..bench import throughput as bench

    status = bench.main(args)
    return 0 if status is None else int(status)


def command_tokenizer_train(args: argparse.Namespace) -> int:
    """Train a byte-level BPE on PATH... and write it to STATE_DIR/tokenizer.json; one summary line."""
    from ..training.checkpoints import CheckpointStore

    log = get_logger("cli")
    state = command_config(args).state_dir
    store = CheckpointStore(state, log=log)
    checkpoints = store.rolling()
    if checkpoints:
        raise CliError(f"{state} holds {len(checkpoints)} checkpoint(s) in {store.directory}: {FIXED}; "
                       "use a new --state-dir")
    if (state / DATABASE_FILE).exists() and not args.force:
        raise CliError(f"{state} holds a corpus database {DATABASE_FILE} tokenized with its tokenizer: "
                       f"{FIXED}; use a new --state-dir (or --force to replace it anyway)")
    files, skipped = find_files(args.paths)
    for item in skipped:
        log.warning("file_skipped", path=str(item.path), reason=item.reason, detail=item.message)
    used: list[Path] = []

    def texts(paths: Sequence[Path], first_pass: bool) -> Iterator[str]:
        for path in paths:
            text = read_text(path)
            if isinstance(text, SkippedFile):
                if first_pass:
                    log.warning("file_skipped", path=str(path), reason=text.reason, detail=text.message)
                continue
            if first_pass:
                used.append(path)
            yield text

    started = time.perf_counter()
    tokenizer = train_bpe(texts(files, first_pass=True), args.vocab_size)
    seconds = time.perf_counter() - started
    if not used:
        named = ", ".join(str(p) for p in args.paths)
        raise DataError(f"no readable UTF-8 text files in {named}")
    # compression on the training text: a second read, so no file is held in memory twice
    n_bytes = n_tokens = 0
    for text in texts(used, first_pass=False):
        ids = tokenizer.encode_text(text)
        n_tokens += int(ids.size)
        n_bytes += tokenizer.token_bytes(ids)
    path = tokenizer.save(state / TOKENIZER_FILE)
    log.info("tokenizer_trained", path=str(path), vocab_size=tokenizer.vocab_size, files=len(used),
             bytes=n_bytes, tokens=n_tokens, seconds=round(seconds, 2), sha256=tokenizer.sha256)
    short = ""
    if tokenizer.vocab_size < args.vocab_size:
        short = f" (asked {args.vocab_size:,}: the text has no more merges)"
    line = (
        f"tokenizer: vocab {tokenizer.vocab_size:,}{short} from {len(used)} files, {n_bytes:,} bytes, "
        f"in {seconds:.2f}s; {n_bytes / max(n_tokens, 1):.2f} bytes/token on the training text; "
        f"wrote {path}\n"
    )
    _write_stdout(line.encode())
    return 0


def _write_stdout(data: bytes) -> None:
    buffer = getattr(sys.stdout, "buffer", None)
    if buffer is not None:
        sys.stdout.flush()
        buffer.write(data)
        buffer.flush()
    else:  # a text-only stream (some test harnesses)
        sys.stdout.write(data.decode("utf-8", "replace"))
        sys.stdout.flush()


# ---------------------------------------------------------------------------------------------
# entry point

EXPECTED = (CliError, DataError, CheckpointError, ConfigError, SettingError, TokenizerError, EngineError, StorageError,
            StorageConfigError, DaemonAlreadyRunning, DaemonError, OSError)
EXIT_STORE_BROKEN = 74  # EX_IOERR: a store error that retrying will not cure (storage.StoreBroken)
EXIT_STORE_UNAVAILABLE = 75  # EX_TEMPFAIL: a transient store error (busy, disconnected, disk full)


def main(argv: Sequence[str] | None = None) -> int:
    """Run one command; returns the exit status instead of raising for every expected failure."""
    try:
        args = parse_args(argv)
    except CliError as exc:
        return _fail(exc, exc.status)
    except SystemExit as exc:  # --help
        return int(exc.code or 0)
    try:
        # stdout carries the result of generate and eval, so events go to stderr; on a terminal
        # they are written around the progress bars, which show train_step themselves
        if on_terminal(sys.stderr):
            configure_logging(args.log_level or LogConfig.level, stream=BarSafeStream(sys.stderr), drop=SHOWN_BY_BARS)
        else:
            configure_logging(args.log_level or LogConfig.level, stream=sys.stderr)
        return args.handler(args)
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:  # the reader had what it wanted (`generate ... | head`): no error
        _silence_stdout()
        return EXIT_BROKEN_PIPE
    except EXPECTED as exc:
        return _fail(exc, _exit_status(exc))


def _exit_status(exc: BaseException) -> int:
    """The exit status of an expected failure: its own `status`, a store error's class, else 1."""
    if isinstance(exc, StoreUnavailable):  # (a DaemonError's `status` says how the daemon ended)
        return EXIT_STORE_UNAVAILABLE if exc.transient else EXIT_STORE_BROKEN
    return getattr(exc, "status", EXIT_ERROR)


def _silence_stdout() -> None:
    """Point stdout at /dev/null, so the interpreter's last flush at exit finds no closed pipe."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (AttributeError, OSError, ValueError):  # a stream with no descriptor (tests)
        pass


def _fail(exc: BaseException, status: int) -> int:
    message = " ".join(str(exc).split()) or type(exc).__name__  # always one line
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in message:
        message = f"{exc.filename}: {message}"
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status
