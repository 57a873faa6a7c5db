"""`crystalline plot`: the learning curve from the store, without a monitoring stack.

Draws held-out bits per byte and training bits per byte (measured at each evaluation on recent
training windows) against tokens seen (steps times the configured batch_size x seq_len, replay
included: docs/EVENTS.md), from the `evaluations` history the training loop keeps in the database,
into a PNG (matplotlib with the Agg backend: no display needed). Each growth of the model
(crawler/training/grower.py) is a dashed vertical line at its step, labelled with the depths,
read from the history (each row holds the shape measured and the step it grew at) and from the
newest checkpoint's growth records, for a growth no evaluation followed yet or one from before
the history kept shapes (revision 0010). matplotlib is an optional extra
(`pip install 'crystalline[plot]'`); without it the command says so in one line. Reads the store
only: it runs beside a daemon. Wired into the parser by crawler/cli/main.py.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from .. import ConfigError
from .opener import add_state_flags, command_config

PAGE = 10_000  # evaluations read per query


def add_commands(commands: Any) -> None:
    """Register `plot` on the CLI's subparsers."""
    plot = commands.add_parser("plot", help="draw the learning curve (held-out and training bits per byte)")
    plot.add_argument("--output", "-o", default="learning-curve.png", metavar="FILE.png",
                      help="the picture to write (default: learning-curve.png)")
    add_state_flags(plot)
    plot.set_defaults(handler=command_plot)


def read_history(queue) -> list:
    """Every evaluation the store holds, oldest first."""
    history, since = [], 0
    while page := queue.evaluations(since=since, limit=PAGE):
        history += page
        since = page[-1].id
    return history


def history_growths(history: list) -> list[dict]:
    """The growths the history shows ({step, from, to}, oldest first): the first row of each
    shape it records a growth for (EvaluationRecord.model, crawler/training/evaluation.py)."""
    growths: dict[int, dict] = {}
    for e in history:
        model = e.model or {}
        step = model.get("grown_at_step")
        if step is not None and step not in growths:
            growths[step] = {"step": step, "from": model.get("grown_from_layers"), "to": model.get("n_layer")}
    return list(growths.values())


def read_growths(state_dir: Path) -> list[dict]:
    """The model's growths ({step, from, to, ...}, oldest first) from the newest rolling
    checkpoint's header that reads (a daemon may prune one meanwhile); [] when none does."""
    from engine import CheckpointError

    from ..training.checkpoints import CheckpointStore

    store = CheckpointStore(state_dir)
    for path in reversed(store.rolling()):
        try:
            return store.model_summary(path)["growths"]
        except CheckpointError:
            continue
    return []


def command_plot(args: argparse.Namespace) -> int:
    try:
        import matplotlib
    except ImportError:
        raise ConfigError("plot needs matplotlib: pip install 'crystalline[plot]'") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    from ..service.opening import open_queue

    config = command_config(args)
    if not config.state_dir.is_dir():
        raise ConfigError(f"{config.state_dir}: no such state directory (pass --state-dir)")
    database, queue = open_queue(config)
    try:
        history = read_history(queue)
    finally:
        database.close()
    if not history:
        raise ConfigError(f"no evaluation in {config.state_dir} yet: the daemon measures the held-out text every "
                          "daemon.eval_every_steps steps or eval_every_seconds seconds")
    # tokens seen, replay included (the store's tokens_trained counts new text only, so it stands
    # still while the loop trains further passes; docs/EVENTS.md): steps times the tokens of a step
    per_step = config.train.batch_size * config.train.seq_len
    tokens = [e.step * per_step / 1e6 for e in history]
    figure, axes = pyplot.subplots(figsize=(8, 4.5), dpi=120)
    axes.plot(tokens, [e.val_bits_per_byte for e in history], marker="o", markersize=3, label="held-out")
    trained = [(t, e.train_bits_per_byte) for t, e in zip(tokens, history) if e.train_bits_per_byte is not None]
    if trained:
        axes.plot(*zip(*trained), marker=".", markersize=3, alpha=0.7, label="training (recent windows)")
    best = min(history, key=lambda e: e.val_bits_per_byte)
    axes.annotate(f"best {best.val_bits_per_byte:.3f} at step {best.step:,}",
                  (best.step * per_step / 1e6, best.val_bits_per_byte), textcoords="offset points", xytext=(0, 12),
                  ha="center", fontsize=8)
    # one mark a step: the checkpoint's record and the history's row of the same growth agree
    marks = {g["step"]: g for g in read_growths(config.state_dir) + history_growths(history)}
    growths = [marks[step] for step in sorted(marks)]
    for growth in growths:
        x = growth["step"] * per_step / 1e6
        axes.axvline(x, color="0.4", linestyle="--", linewidth=1)
        axes.annotate(f"{growth['from']} \u2192 {growth['to']} layers", (x, 1.0), xycoords=("data", "axes fraction"),
                      textcoords="offset points", xytext=(3, -12), fontsize=8, color="0.3")
    axes.set_xlabel(f"tokens seen, replay included (millions; {per_step:,} a step)")
    axes.set_ylabel("bits per byte")
    axes.set_title(f"{config.state_dir.resolve().name}: {len(history)} evaluations, step {history[-1].step:,}")
    axes.grid(alpha=0.3)
    axes.legend()
    figure.tight_layout()
    output = Path(args.output)
    figure.savefig(output)
    pyplot.close(figure)
    print(f"plot: {output}: {len(history)} evaluations, held-out {history[-1].val_bits_per_byte:.4f} bits per byte "
          f"at step {history[-1].step:,} (best {best.val_bits_per_byte:.4f} at step {best.step:,})"
          + (f"; {len(growths)} growth(s) of the model marked" if growths else ""))
    return 0
