"""What GET /api/status and GET /api/history say: the store's report and the trainer's live figures.

The status is `status --json`'s report (crawler/service/status.py), read from the daemon's own
open store at most once every STATUS_CACHE_SECONDS however many pages poll, plus the trainer's
live figures (held-out figure, plateau, idle, rate). The history is the store's evaluations after
a cursor. Not the page's memory of the log (the window keeps the recent files and train_step
points) and not the request's query parsing (handler.py). Relies on the daemon's attributes
(config, database, clock, writes, training_worker) and on storage's CorpusQueue.
"""

from __future__ import annotations

import os
import threading
import time

from ..status import store_report, tokens_untrained
from .errors import RequestError

STATUS_CACHE_SECONDS = 1.0  # the store is read at most this often, however many pages poll


def _open_queue(daemon):
    """The daemon's store as a CorpusQueue; 503 while it is not open yet."""
    from storage import CorpusQueue

    database = getattr(daemon, "database", None)
    if database is None:
        raise RequestError(503, "the daemon is starting: its store is not open yet")
    return CorpusQueue(database)


class StatusCache:
    """The store's part of /api/status, read at most once every STATUS_CACHE_SECONDS."""

    def __init__(self) -> None:
        self._report: tuple[float, dict] | None = None
        self._lock = threading.Lock()

    def read(self, daemon) -> dict:
        """A copy of the cached report, read again from the store when it is older than the cache."""
        with self._lock:
            now = time.monotonic()
            if self._report is None or now - self._report[0] >= STATUS_CACHE_SECONDS:
                self._report = (now, _store_status(daemon))
            return dict(self._report[1])


def _store_status(daemon) -> dict:
    from ...state.health import read_health

    queue = _open_queue(daemon)
    report = store_report(daemon.config, queue)
    report["daemon"] = {"running": True, "pid": os.getpid(), "health": read_health(daemon.config.state_dir)}
    report["tokens_untrained"] = tokens_untrained(report)
    return report


def live_figures(daemon) -> dict:
    """The training worker's figures as the page shows them; {"state": "starting"} before it has any."""
    trainer = None if daemon is None else daemon.training_worker()
    f = getattr(trainer, "figures", None)
    if f is None:
        return {"state": "starting"}
    train = daemon.config.train
    now = daemon.clock()
    return {
        "state": "paused" if f.paused else "plateaued" if f.plateaued else "idle" if f.idle else "training",
        "step": f.step, "loss": f.loss, "tokens_trained": f.tokens_trained, "tokens_seen": f.tokens_seen,
        "tokens_per_s": f.tokens_per_s, "epoch": round(f.epoch, 3),
        "tokens_per_step": train.batch_size * getattr(trainer, "seq_len", train.seq_len),
        "val_bits_per_byte": f.val_bits_per_byte, "best_val_bits_per_byte": f.best_val_bits_per_byte,
        "train_bits_per_byte": f.train_bits_per_byte, "plateaued": f.plateaued, "idle": f.idle,
        "paused": f.paused, "last_checkpoint_step": f.last_checkpoint_step,
        "last_checkpoint_age_s": None if f.last_checkpoint_time is None else round(now - f.last_checkpoint_time, 1),
        "blocked": daemon.writes.blocked,
        # the model's depth now and each growth so far ({step, tokens_seen, from, to, parameters}):
        # the page marks the growths on its curve (crawler/training/grower.py)
        "n_layer": getattr(f, "n_layer", None), "parameters": getattr(f, "parameters", None),
        "growths": list(getattr(f, "growths", []) or []),
        # where the loop's time went over the last ten minutes (crawler/training/figures.py TimeShare)
        "time_share": getattr(f, "time_share", None),
    }


def evaluations_after(daemon, since: int, limit: int) -> list[dict]:
    """The stored evaluations with id > since, oldest first, up to limit; 503 before the store is open."""
    rows = _open_queue(daemon).evaluations(since=since, limit=limit)
    return [{"id": r.id, "step": r.step, "epoch": r.epoch, "tokens_trained": r.tokens_trained,
             "val_bits_per_byte": r.val_bits_per_byte, "train_bits_per_byte": r.train_bits_per_byte,
             "holdout_tokens": r.holdout_tokens, "sources": r.sources, "model": r.model, "best": r.best,
             "created_at": str(r.created_at)}
            for r in rows]
