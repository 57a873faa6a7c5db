"""`crystalline train PATH...`: the daemon's training loop, fed by the files named on the command line.

`train` is not a trainer of its own: it stores PATH... in the state directory's corpus exactly
as `ingest` does (same extraction, skip reasons and dedup), then runs the daemon's training loop
(crawler/training/worker.py) with the same configuration layering (TOML < environment < flags;
the flags override [model] and [train]), the same events and the same checkpoints, until
--steps total steps or until the held-out measure plateaus. It opens its state as the daemon
does (crawler/service/opening.py: the MPI join, the state directory's lock, the store, the
training lock), so it never trains beside a daemon. A run on a state dir that holds a checkpoint
resumes it: the model shape comes from the checkpoint (a shape flag that disagrees is an error),
and the loop continues exactly where it stopped. SIGINT/SIGTERM finish the step and save a
checkpoint first (exit 130 / 143); a second signal stops at once.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..ingest.tokenizer import load_state_tokenizer
from ..logging import get_logger
from ..service.daemon import REPEAT_SIGNAL_SECONDS, lower_priority
from .opener import add_state_flags, command_config
from .parsing import CliError, integer, real
from .progress import TrainProgress


def add_commands(commands: Any) -> None:
    """Register `train` on the CLI's subparsers."""
    train = commands.add_parser("train", help="store files in the corpus and train on it (the daemon's loop)")
    train.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive), stored as `ingest` does")
    train.add_argument("--steps", type=integer(1), default=None,
                       help="total step count to reach (default: until the held-out measure plateaus)")
    train.add_argument("--threads", type=integer(0), default=None, help="worker threads; 0 = all cores")
    train.add_argument("--distributed", action="store_true",
                       help="under `mpiexec -n N`: N processes train one model ([distributed], docs/SCALE-OUT.md)")
    train.add_argument("--context", type=integer(2), default=None, metavar="T", help="window length")
    train.add_argument("--d-model", type=integer(1), default=None, metavar="C")
    train.add_argument("--layers", type=integer(1), default=None, metavar="L")
    train.add_argument("--heads", type=integer(1), default=None, metavar="H")
    train.add_argument("--batch-size", type=integer(1), default=None, metavar="B")
    train.add_argument("--lr", type=real(0.0, low_open=True), default=None, metavar="X")
    train.add_argument("--seed", type=integer(0), default=None, metavar="S", help="init and data order")
    train.add_argument("--schedule", choices=("cosine", "constant"), default=None)
    train.add_argument("--warmup", type=integer(0), default=None, metavar="N", help="warmup steps")
    train.add_argument("--crystalline-weight", type=real(0.0), default=None, metavar="W")
    train.add_argument("--checkpoint-every", type=integer(0), default=None, metavar="N",
                       help="checkpoint every N steps (default: [daemon] checkpoint_every_steps); 0 = only at the end")
    train.add_argument("--keep-last", type=integer(1), default=None, metavar="N")
    train.add_argument("--log-every", type=integer(1), default=None, metavar="N")
    add_state_flags(train)  # flags win over the configuration
    train.set_defaults(handler=command_train)



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
# the run

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
    from ..service.opening import OpenedState
    from ..training.worker import TrainingWorker
    from .corpus import ingest_paths

    log = get_logger("cli")
    overrides, pinned = _train_overrides(args)
    config = command_config(args, overrides)
    with contextlib.closing(OpenedState(config)) as opened:  # closing ends the ranks after the last checkpoint
        if opened.join(args.distributed):  # rank > 0 under mpiexec: follows rank 0's steps
            return opened.follow(log)
        missing = [p for p in args.paths if not Path(p).exists() and not Path(p).is_symlink()]
        if missing:
            raise CliError(f"no such file or folder: {missing[0]}")
        opened.lock()  # one trainer per state directory: not beside a daemon
        _, queue = opened.open_store()
        opened.hold_training("train")  # one training job per corpus, even a shared PostgreSQL one
        tokenizer = load_state_tokenizer(config.state_dir)
        lower_priority(config.daemon.nice, log)
        summary = ingest_paths(args.paths, queue, tokenizer, config, log, level="info")
        with StopFlag() as stop:
            worker = TrainingWorker(config, queue, tokenizer, get_logger("trainer"), pinned=pinned, command="train",
                                    stopping=lambda: stop.signum is not None, team=opened.team)
            worker.initialize()
            try:
                return _train_loop(args, worker, summary, tokenizer, stop, log)
            finally:
                worker.shutdown()  # checkpoints the steps since the last checkpoint


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
    time_share = worker.share.shares()  # the whole run's, up to its last ten minutes
    worker.shutdown()
    log.info("train_finished", step=figures.step, reason=reason, seconds=round(time.monotonic() - started, 1),
             val_bits_per_byte=figures.val_bits_per_byte, best_val_bits_per_byte=figures.best_val_bits_per_byte,
             time_share=time_share)
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
