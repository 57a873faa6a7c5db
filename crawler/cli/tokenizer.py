"""`crystalline tokenizer train PATH... --vocab-size N`: the state directory's byte-level BPE.

Trains on the files' text, each file read as the daemon reads it (crawler.ingest.reading: HTML,
PDF and the rest as their extracted text; what the daemon skips is skipped, with its reason),
and writes STATE_DIR/tokenizer.json. The tokenizer is fixed for the life of a model, so this
refuses a state directory that holds checkpoints, and one with a corpus database unless
--force (its stored tokens were made with the old tokenizer).
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from ..config import DATABASE_FILE
from ..ingest.data import DataError, SkippedFile, find_files, read_texts
from ..ingest.tokenizer import FIXED, MAX_BPE_VOCAB, MIN_BPE_VOCAB, TOKENIZER_FILE, train_bpe
from ..logging import get_logger
from .model import log_left_out
from .opener import add_state_flags, command_config
from .parsing import CliError, Parser, integer, write_stdout


def add_commands(commands: Any) -> None:
    """Register `tokenizer train` on the CLI's subparsers."""
    tokenizer = commands.add_parser("tokenizer", help="train the state dir's BPE tokenizer")
    tokenizer_commands = tokenizer.add_subparsers(
        dest="tokenizer_command", metavar="COMMAND", parser_class=Parser
    )
    tokenizer_commands.required = True
    tokenizer_train = tokenizer_commands.add_parser(
        "train", help=f"train a byte-level BPE on files and write STATE_DIR/{TOKENIZER_FILE}"
    )
    tokenizer_train.add_argument("paths", nargs="+", metavar="PATH",
                                 help="files or folders, read as the daemon reads them")
    tokenizer_train.add_argument("--vocab-size", type=integer(MIN_BPE_VOCAB, MAX_BPE_VOCAB), required=True,
                                 metavar="N", help="ids, EOD included (at most the training text allows)")
    tokenizer_train.add_argument("--force", action="store_true",
                                 help=f"replace the tokenizer of a state dir that has a {DATABASE_FILE} "
                                 "(never one with checkpoints)")
    add_state_flags(tokenizer_train)
    tokenizer_train.set_defaults(handler=command_tokenizer_train)


def command_tokenizer_train(args: argparse.Namespace) -> int:
    """Train a byte-level BPE on PATH... and write it to STATE_DIR/tokenizer.json; one summary line."""
    from ..training.checkpoints import CheckpointStore

    log = get_logger("cli")
    config = command_config(args)
    state = config.state_dir
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
        log_left_out(log, item)
    used: list[Path] = []

    def texts(paths: Sequence[Path], first_pass: bool) -> Iterator[str]:
        for path in paths:
            found = read_texts(path, config.extract)  # an archive: each member its own document
            for _, text in found:
                if isinstance(text, SkippedFile):
                    if first_pass:
                        log_left_out(log, text)
                    continue
                yield text
            if first_pass and any(not isinstance(text, SkippedFile) for _, text in found):
                used.append(path)

    started = time.perf_counter()
    tokenizer = train_bpe(texts(files, first_pass=True), args.vocab_size)
    seconds = time.perf_counter() - started
    if not used:
        named = ", ".join(str(p) for p in args.paths)
        raise DataError(f"no readable text files in {named}")
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
    write_stdout(line.encode())
    return 0
