"""`crystalline bench` on the state directory it is run for: the model that directory trains,
timed at its configured thread count, and how long one pass over its stored text takes at that rate.

The model is the one training goes on with (crawler/service/status.py `present_model`: the last
checkpoint's shape, else the configuration's with the state directory's vocabulary), with the
configuration's [train] settings and the window capped at the model's context, as a start of the
training loop builds it (crawler/training/resume.py). It is a fresh model of that shape trained on
random ids of its vocabulary: neither the weights nor which ids a batch holds change how long a
step takes, and so the checkpoint's tensors are never read. A handful of steps, after the
configs of the main table, whose runs have already loaded every kernel.

"One pass" is the training time to read every stored token once (withdrawn text left out); the
part not yet trained goes at the share of each batch that is new text (`seconds_to_train`, the
estimate `crystalline status` prints). Evaluations and checkpoints are not counted. Takes no lock
and writes nothing: a daemon training beside it shares the cores, and the report says so.

Not the configs' table (throughput.py), not where the state directory is (the caller resolves the
configuration as every command does: crawler/cli/opener.py). Relies on the store's figures
(crawler.service's opening and status), the lock and health files (crawler.state.health) and the
engine's Trainer through throughput.measure_trainer.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

from engine import ConfigError, count_parameters

from ..config import DATABASE_FILE, Config
from .throughput import flops_per_token, measure_trainer, random_batches

MAX_STEPS = 5  # timed steps, at most: enough for a median, few enough to stay quick on a big model
MAX_WARMUP = 1  # untimed steps, at most: the table's runs have compiled the kernels already


class YourModel:
    """What `crystalline bench` measures for one state directory, in the order it needs: `read()`
    the store's figures first (a store error stops the command before the long part), then
    `measure(...)` after the main table (measure_your_model)."""

    def __init__(self, config: Config):
        self.config, self.text = config, None

    def read(self) -> None:
        self.text = stored_text(self.config)

    def measure(self, peaks: dict, steps: int, warmup: int, peak: Callable[[int], float]) -> dict:
        return measure_your_model(self.config, self.text, peaks, steps, warmup, peak)


def stored_text(config: Config) -> dict | None:
    """The store's figures: `tokens` training reads (the stream less withdrawn text), `untrained`
    (not reached yet: the store's count, or a running daemon's own where lower, as `status`
    says), the last checkpoint's stored path, and whether a trainer holds the state directory now.
    None when the state directory has no store yet (a SQLite file is not created here). Raises the
    store's errors (StoreUnavailable, StoreBroken) as every command does."""
    from ..service.opening import open_queue
    from ..service.status import tokens_untrained
    from ..state.health import lock_holder, read_health

    if not config.store.url and not (config.state_dir / DATABASE_FILE).exists():
        return None
    database, queue = open_queue(config)
    try:
        stats = queue.stats()
    finally:
        database.close()
    pid = lock_holder(config.state_dir)
    health = read_health(config.state_dir) if pid is not None else None
    last = stats.last_checkpoint
    return {"tokens": stats.tokens_total - stats.tokens_withdrawn,
            "untrained": tokens_untrained({"tokens_queued": stats.tokens_queued, "daemon": {"health": health}}),
            "checkpoint": None if last is None else last.path, "trainer_running": pid is not None}


def measure_your_model(config: Config, text: dict | None, peaks: dict, steps: int, warmup: int,
                       peak: Callable[[int], float]) -> dict:
    """The report's "your_model": the state directory and its stored tokens; with stored text,
    the model it trains, timed (measure_trainer's figures, MFU against `peaks` at its thread
    count, measured by `peak(threads)` when this run has not), and the seconds of one pass and of
    the part not yet trained. Settings the engine refuses for this model (ConfigError, as a start
    of training would meet it) are reported as `skipped`, with the reason."""
    from ..service.status import present_model, seconds_to_train

    report: dict = {"state_dir": str(config.state_dir), "stored_tokens": 0 if text is None else text["tokens"]}
    if not report["stored_tokens"]:
        return report
    model, header = present_model(config, text["checkpoint"])
    train = replace(config.train, seq_len=min(config.train.seq_len, model.context_length))
    threads = train.resolved_threads()
    report.update({
        "untrained_tokens": text["untrained"], "replay_fraction": config.daemon.replay_fraction,
        "trainer_running": text["trainer_running"],
        "model": {"n_layer": model.n_layer, "d_model": model.d_model, "n_head": model.n_head,
                  "vocab_size": model.vocab_size, "parameters": count_parameters(model),
                  "from": "checkpoint" if header is not None else "configuration"},
        "threads": threads, "batch_size": train.batch_size, "seq_len": train.seq_len,
    })
    steps, warmup = min(steps, MAX_STEPS), min(warmup, MAX_WARMUP)
    try:
        model, train = model.validate(), train.validate(model)
        batches = random_batches(model.vocab_size, train.batch_size, train.seq_len, count=steps + warmup)
        report.update(measure_trainer(model, train, batches, steps, warmup))
    except ConfigError as exc:
        report["skipped"] = str(exc)
        return report
    if threads not in peaks:
        peaks[threads] = peak(threads)
    tokens = train.batch_size * train.seq_len
    gflops = flops_per_token(model, train.seq_len) * tokens / report["compute_ms_median"] / 1e6
    rate = report["tokens_per_s"]
    report.update({
        "gflops": gflops, "peak_gflops": peaks[threads], "mfu": gflops / peaks[threads],
        "pass_seconds": report["stored_tokens"] / rate,
        "untrained_seconds": seconds_to_train(text["untrained"], rate, config.daemon.replay_fraction),
    })
    return report
