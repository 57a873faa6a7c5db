"""`crystalline repair` and `crystalline reset --keep-corpus`: the ways out of a damaged state.

`repair` makes the database and the checkpoint files agree exactly as every start of the training
loop does (crawler/checkpoints.py: resume from the newest usable checkpoint, rebuild the cursor
from its metadata, move what does not load into STATE_DIR/quarantine/), also sets aside a
best.safetensors that does not load and removes the temporary files of cut-short writes, and
says what it did. `reset --keep-corpus` drops the model and its training state (the checkpoint
files are moved into STATE_DIR/quarantine/reset-<time>/, the checkpoint rows and the evaluation
history are deleted, the cursor goes back to the start) and keeps the stored text, which the next
start trains on from the beginning. Neither deletes a checkpoint file.

Both hold the state directory's lock, so neither runs beside a daemon or `train`. Wired into the
parser by crawler/cli.py; every expected failure is one line there.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from engine import ConfigError

from .checkpoints import QUARANTINE_DIR, check_best, reconcile, remove_temporary_files, set_aside_model
from .config import load_config
from .logging import get_logger


def add_commands(commands: Any, state: dict) -> None:
    """Register `repair` and `reset` on the CLI's subparsers."""
    common = {"--state-dir": dict(state, default=None), "--config": dict(default=None, metavar="FILE",
              help="TOML configuration (default: STATE_DIR/crystalline.toml when present)")}
    repair = commands.add_parser("repair", help="make the database and the checkpoint files agree again")
    for flag, kw in common.items():
        repair.add_argument(flag, **kw)
    repair.set_defaults(handler=command_repair)

    reset = commands.add_parser("reset", help="drop the model and its training state (with --keep-corpus)")
    reset.add_argument("--keep-corpus", action="store_true",
                       help="keep the stored text; the checkpoints are moved into STATE_DIR/quarantine/")
    for flag, kw in common.items():
        reset.add_argument(flag, **kw)
    reset.set_defaults(handler=command_reset)


class _OpenState:
    """The state directory's lock, database and queue, for one command; released on exit."""

    def __init__(self, args: argparse.Namespace):
        self.config = load_config(args.config, state_dir=args.state_dir)
        self.database = None

    def __enter__(self):
        from .corpus_commands import open_queue
        from .health import DaemonLock

        if not self.config.state_dir.is_dir():
            raise ConfigError(f"{self.config.state_dir}: no such state directory (pass --state-dir)")
        self.lock = DaemonLock(self.config.state_dir)  # never beside a daemon or `train`
        self.lock.acquire()
        try:
            self.database, self.queue = open_queue(self.config)
        except BaseException:
            self.lock.release()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self.database is not None:
            self.database.close()
        self.lock.release()


def command_repair(args: argparse.Namespace) -> int:
    """Reconcile, then print what was done, one line each."""
    from .tokenizer import load_state_tokenizer

    log = get_logger("repair")
    with _OpenState(args) as opened:
        state = opened.config.state_dir
        tokenizer = load_state_tokenizer(state)
        removed = remove_temporary_files(state)
        result = reconcile(state, opened.queue, tokenizer.identity(), log)
        best = check_best(state, log)
        cursor, end = opened.queue.cursor(), opened.queue.stream_end()
    lines = []
    checkpoint = result.checkpoint
    if result.action == "fresh":
        lines.append("no checkpoint yet: training starts from the beginning of the stored text")
    elif result.action == "adopted":
        lines.append(f"no checkpoint in the database: training starts from the weights of {checkpoint.path} "
                     f"(step {checkpoint.step}) on all stored text")
    else:
        did = {"resumed": "agrees with", "rewound": "was rewound to", "recovered": "was rebuilt from"}[result.action]
        lines.append(f"the database {did} {checkpoint.path} (step {checkpoint.step}): training resumes at stream "
                     f"position {cursor.stream_position:,} of {end:,} tokens")
    if result.dropped_rows:
        lines.append(f"checkpoint rows dropped (their files are gone or were never committed): steps "
                     f"{', '.join(map(str, result.dropped_rows))}")
    moved = result.quarantined + ([best] if best is not None else [])
    if moved:
        lines.append(f"moved into {Path(state) / QUARANTINE_DIR}: {', '.join(p.name for p in moved)}")
    if removed:
        lines.append(f"removed {len(removed)} temporary file(s) of cut-short checkpoint writes")
    print("\n".join(f"repair: {line}" for line in lines))
    return 0


def command_reset(args: argparse.Namespace) -> int:
    """Move the checkpoints aside, then forget the training in the database; the corpus stays."""
    if not args.keep_corpus:
        raise ConfigError("reset needs --keep-corpus: it drops the model and its training state and keeps the "
                          "stored text (to drop the corpus as well, remove the state directory)")
    with _OpenState(args) as opened:
        state = opened.config.state_dir
        # files first: were the database reset first and the move to fail, the next start would
        # adopt the old weights instead of starting afresh
        folder, files, size = set_aside_model(state)
        rows = opened.queue.reset_training()
        stats = opened.queue.stats()
    get_logger("reset").info("training_reset", state_dir=str(state), moved_to=None if folder is None else str(folder),
                             files=files, bytes=size, checkpoint_rows=rows, tokens=stats.tokens_total)
    kept = sum(stats.documents.get(s, 0) for s in ("queued", "trained"))
    where = f"{files} checkpoint file(s), {size / 1e6:.1f} MB, moved to {folder} (delete it to free the space)" \
        if folder is not None else "no checkpoint files"
    print(f"reset: the model and its training state are dropped ({where}); the corpus keeps {kept:,} documents, "
          f"{stats.tokens_total:,} tokens, which the next start trains on from the beginning")
    return 0
