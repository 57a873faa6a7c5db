"""`crystalline grow --layers N`: a stopped state directory's model deepened by hand.

Not a growth of its own: it opens the state as `train` does (crawler/service/opening.py: the
state directory's lock, so never beside a daemon or `train`; the store; the training lock),
starts the training loop's worker on it exactly as a start of `run` or `train` does (the
checkpoint the CheckpointStore reconciles, with all of the loop's state), grows the live model to
N layers through the loop's own growth (TrainingWorker.grow: held-out bits per byte measured just
before and just after, `model_grown`), and writes the grown model as a checkpoint at the same step
through the CheckpointStore, in place of the one it grew (the same file name; it keeps the
command that wrote it, so retention treats it as before). The next `train` or `run` resumes from
it and goes on from the same step, on the same batches. A [model] n_layer set in the
configuration is no conflict (the shape the model was born with still matches it); a set depth
keeps the grown one from growing further by the policy. Wired into the parser by
crawler/cli/main.py; every expected failure is one line there.
"""

from __future__ import annotations

import argparse
import contextlib
from typing import Any

from .. import ConfigError
from ..logging import get_logger
from .opener import add_state_flags, command_config
from .parsing import CliError, integer

REASON = "by hand (crystalline grow)"


def add_commands(commands: Any) -> None:
    """Register `grow` on the CLI's subparsers."""
    grow = commands.add_parser("grow", help="deepen a stopped state directory's model (more layers, the same function)")
    grow.add_argument("--layers", type=integer(2), required=True, metavar="N",
                      help="the depth to grow to: more than the model has")
    add_state_flags(grow)
    grow.set_defaults(handler=command_grow)


def command_grow(args: argparse.Namespace) -> int:
    """Grow the newest checkpoint's model to --layers N and checkpoint it; prints one line."""
    from ..ingest.tokenizer import load_state_tokenizer
    from ..service.opening import OpenedState
    from ..training.worker import TrainingWorker

    config = command_config(args)
    if not config.state_dir.is_dir():
        raise ConfigError(f"{config.state_dir}: no such state directory (pass --state-dir)")
    with contextlib.closing(OpenedState(config)) as opened:
        opened.lock()  # DaemonAlreadyRunning while a daemon or `train` holds it
        _, queue = opened.open_store()
        opened.hold_training("grow")
        tokenizer = load_state_tokenizer(config.state_dir)
        worker = TrainingWorker(config, queue, tokenizer, get_logger("trainer"), command=None)
        worker.initialize()
        try:
            f, model = worker.figures, worker.trainer.model_config
            if f.last_checkpoint_step is None:
                raise CliError(f"no model to grow in {config.state_dir}: train one first ('crystalline train PATH...' "
                               "or the daemon), or set [model] n_layer for the model a first start makes")
            if args.layers <= model.n_layer:
                raise CliError(f"--layers {args.layers}: the model has {model.n_layer} layers already; growth only "
                               "adds layers")
            record = worker.grow(args.layers - model.n_layer, REASON)
            path = worker.checkpoint(reason="grown")
            if path is None:  # deferred: a full disk or a read-only state (logged)
                raise CliError(f"the grown model could not be written to {config.state_dir} (see checkpoint_deferred); "
                               "nothing changed")
        finally:
            worker.shutdown()
    old, new = record["old"], record["new"]
    print(f"grow: {old['n_layer']} -> {new['n_layer']} layers ({old['parameters']:,} -> {new['parameters']:,} "
          f"parameters) at step {record['step']:,}, written to {path}; the next `train` or `run` goes on from it")
    return 0
