"""What a state directory holds, as `crystalline status` and the daemon's API report it: one reader.

`store_report` reads the figures of an open corpus queue (documents, tokens, the last checkpoint
and the model it holds: its shape and growths, from the file's header; the held-out
evaluations); `status_report` opens the store of a configuration itself (without
creating one). Both add the disk use by part and what the checkpoints will take at the deepest
shape growth reaches (crawler/training/forecast.py, for the model training goes on with). The
CLI prints them; the daemon's page serves the same dict, with the live figures of the running
trainer beside it. Also the one estimate of how long the text not yet trained takes at a rate
(`seconds_to_train`), and the words for counts and durations that `crystalline status` and
`crystalline bench` (its "your model" line) print them in.
"""

from __future__ import annotations

from ..config import DATABASE_FILE, Config
from ..state.disk import disk_usage
from .opening import open_queue

TREND_EVALUATIONS = 5  # the held-out trend in `status`: the change over the last few evaluations


def display_url(url: str) -> str:
    """The URL without a password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def recent_evaluations(queue) -> list:
    latest = queue.latest_evaluation()
    if latest is None:
        return []
    return queue.evaluations(since=max(0, latest.id - TREND_EVALUATIONS), limit=TREND_EVALUATIONS)


def evaluation_record(record) -> dict | None:
    if record is None:
        return None
    return {"step": record.step, "epoch": round(record.epoch, 3), "val_bits_per_byte": record.val_bits_per_byte,
            "train_bits_per_byte": record.train_bits_per_byte, "holdout_tokens": record.holdout_tokens,
            "sources": record.sources, "created_at": str(record.created_at)}


def store_report(config: Config, queue) -> dict:
    """The queue's figures, the held-out evaluations and the disk use, as a JSON-able dict."""
    stats = queue.stats()
    last = stats.last_checkpoint
    disk = disk_usage(config.state_dir, config.daemon, stats.database_bytes)
    return {
        "state_dir": str(config.state_dir), "database": display_url(config.database_url), "exists": True,
        "documents": dict(stats.documents), "tokens_total": stats.tokens_total,
        "tokens_queued": stats.tokens_queued, "tokens_trained": stats.tokens_trained,
        "tokens_withdrawn": stats.tokens_withdrawn, "database_bytes": stats.database_bytes,
        "tokenizer": queue.tokenizer(),
        "last_checkpoint": None if last is None else {
            "step": last.step, "path": last.path, "tokens_trained": last.tokens_trained, "loss": last.loss,
            "created_at": str(last.created_at)},
        "model": None if last is None else checkpoint_model(config, last.path),
        "evaluation": {"latest": evaluation_record(queue.latest_evaluation()),
                       "best": best_record(config, evaluation_record(queue.best_evaluation())),
                       "recent": [evaluation_record(e) for e in recent_evaluations(queue)]},
        "disk": disk,
        "checkpoint_forecast": checkpoint_forecast(config, None if last is None else last.path, disk),
    }


def best_record(config: Config, recorded: dict | None) -> dict | None:
    """The best model's figure as best.safetensors holds it now: the history's best row, but
    measured again on the held-out set of today where that set has grown since (new text, new
    sources: crawler/training/evaluation.py writes the figure into the file), so that it compares
    with the latest evaluation. The row as recorded when the file cannot be read."""
    from engine import CheckpointError
    from engine.checkpoint import read_metadata

    from ..training.checkpoints import CheckpointStore

    if recorded is None:
        return None
    try:
        path = CheckpointStore(config.state_dir).best_path
        extra, step = read_metadata(path, "extra"), read_metadata(path, "step")
    except CheckpointError:
        return recorded
    value, tokens = extra.get("val_bits_per_byte"), extra.get("holdout_tokens")
    if not isinstance(value, (int, float)) or tokens == recorded["holdout_tokens"]:
        return recorded
    return recorded | {"step": int(step), "val_bits_per_byte": float(value), "holdout_tokens": tokens,
                       "remeasured": True}


def checkpoint_model(config: Config, stored_path: str) -> dict | None:
    """The model of the checkpoint a row names (CheckpointStore.model_summary: shape, parameters,
    growths), or None when its file cannot be read (pruned meanwhile, or damaged)."""
    from engine import CheckpointError

    from ..training.checkpoints import CheckpointStore

    store = CheckpointStore(config.state_dir)
    try:
        return store.model_summary(store.resolve(stored_path))
    except CheckpointError:
        return None


def checkpoint_forecast(config: Config, stored_path: str | None, disk: dict) -> dict:
    """`forecast_checkpoints` for the model training goes on with, beside the bytes the folder
    holds now (`used_bytes`, measured: `disk`'s): the model of the checkpoint a row names, with
    its file's header, or, when there is none or it cannot be read, the configuration's with the
    state directory's vocabulary, as a fresh start builds it."""
    from ..training.forecast import forecast_checkpoints

    model, header = present_model(config, stored_path)
    forecast = forecast_checkpoints(model, config.daemon.keep_checkpoints, config.growth, config.depth_set_in,
                                    header_bytes=header, cap_bytes=disk["checkpoints"]["cap_bytes"])
    return {"used_bytes": disk["checkpoints"]["bytes"], **forecast.to_dict()}


def present_model(config: Config, stored_path: str | None):
    """(the ModelConfig training goes on with, its checkpoint file's header bytes or None): the
    checkpoint's model wins over the configuration (crawler/training/resume.py), and the
    vocabulary of a fresh model is the state directory's tokenizer's."""
    from dataclasses import replace

    from engine import CheckpointError, ModelConfig
    from engine.checkpoint import read_metadata, tensor_bytes

    from ..ingest.tokenizer import load_state_tokenizer
    from ..training.checkpoints import CheckpointStore

    if stored_path is not None:
        path = CheckpointStore(config.state_dir).resolve(stored_path)
        try:
            model = ModelConfig.from_dict(read_metadata(path, "model_config"))
            return model, path.stat().st_size - tensor_bytes(model)
        except (CheckpointError, OSError, ValueError):  # pruned meanwhile, or damaged
            pass
    try:
        vocab_size = load_state_tokenizer(config.state_dir).vocab_size
    except (OSError, ValueError):  # a tokenizer.json that does not load: the start would say so
        vocab_size = config.model.vocab_size
    return replace(config.model, vocab_size=vocab_size), None


def tokens_untrained(report: dict) -> int:
    """Tokens training has not reached yet: the store's figure, which moves only at checkpoints,
    or a running daemon's own from its health report (`daemon.health.queue_tokens`) where that is
    lower; it counts withdrawn text ahead of training too, so it never raises the store's."""
    queued = report["tokens_queued"]
    health = (report.get("daemon") or {}).get("health") or {}
    live = health.get("queue_tokens")
    if isinstance(live, int) and not isinstance(live, bool):
        queued = min(queued, max(0, live))
    return queued


def seconds_to_train(tokens: int, tokens_per_s: float, replay_fraction: float) -> float:
    """Training seconds until `tokens` of text not yet trained are trained at `tokens_per_s`: a
    share `replay_fraction` of every batch rereads trained text, so new text goes at the rest."""
    return tokens / (tokens_per_s * (1.0 - replay_fraction))


def count_text(value: float) -> str:
    """4,071,523 -> 4.07M; 24360.2 -> 24.4k."""
    for size, unit in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= size:
            return f"{value / size:.3g}{unit}" if value / size < 100 else f"{value / size:.0f}{unit}"
    return f"{value:.0f}"


def duration_text(seconds: float) -> str:
    """3725 -> "1 h 2 min"; 95 -> "1 min 35 s": the two largest units, rounded to the second."""
    seconds = max(0, int(round(seconds)))
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    if days:
        return f"{days} d {hours} h"
    if hours:
        return f"{hours} h {minutes} min"
    if minutes:
        return f"{minutes} min" + (f" {seconds} s" if minutes < 10 and seconds else "")
    return f"{seconds} s"


def status_report(config: Config) -> dict:
    """`store_report` of the configuration's store, opened here; a SQLite store that does not
    exist yet is reported as such (`exists: false`, the disk use) and not created."""
    if not config.store.url and not (config.state_dir / DATABASE_FILE).exists():
        disk = disk_usage(config.state_dir, config.daemon, None)
        return {"state_dir": str(config.state_dir), "database": display_url(config.database_url), "exists": False,
                "disk": disk, "checkpoint_forecast": checkpoint_forecast(config, None, disk)}
    database, queue = open_queue(config)
    try:
        return store_report(config, queue)
    finally:
        database.close()
