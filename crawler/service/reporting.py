"""What the running daemon says about itself, and when: health.json, the `status` event, the
systemd status line, the Prometheus endpoint, and the folder caps swept with each report.

A mixin of Daemon (supervisor.py), so that the supervisor's file holds its start, tick and stop
and this one its reports. Owns the state of its reports (set up by `_init_reports`): the
health file, the last failure to write it, the roots it said could not be watched, and what
health.json last said of blocked writes and of the store, so that a change is said at once.
Reads the supervisor's parts and judges: config, log, notifier, writes (crawler/state/
writable.py), outage (outage.py), workers, watcher, database, metrics, started_wall and
training_worker(). Not the figures' source (the workers keep them), not `crystalline status`
(status.py), not the page and API (http/). Never stops the daemon: a report that fails is logged.
"""

from __future__ import annotations

import os
from typing import Any

from ..state.disk import FolderCaps
from ..state.health import HealthFile, process_stats, root_problem, utc_iso
from .outage import is_transient


class DaemonReports:
    """The supervisor's reports: health_report() and the steps tick and stop take to say it."""

    def _init_reports(self) -> None:
        """The reports' own state; Daemon.__init__ calls it once `writes` exists."""
        self._health_file = HealthFile(self.config.state_dir, writes=self.writes)
        self._health_error: str | None = None  # the last health.json failure logged
        self._unwatched: dict[str, str] = {}  # watch root -> why it cannot be watched
        self._reported_block: str | None = None  # writes.blocked as health.json last said it
        self._reported_store: str | None = None  # outage.cause as health.json last said it
        self._reported_paused = False  # the trainer's pause as health.json last said it
        self.folder_caps = FolderCaps(self.config.state_dir, self.log)  # processed/ and quarantine/ caps
        self.metrics_server = None

    def health_report(self, state: str, now: float) -> dict[str, Any]:
        """What health.json and the status event say in `state` ("starting", "ready", "stopping")
        at `now` on the daemon's clock; logs root_unwatched / root_watched when a root's changes."""
        trainer = self.training_worker()
        f = trainer.figures if trainer else None
        writes = self.writes.snapshot()
        return {
            "pid": os.getpid(), "state": state, "started_at": utc_iso(self.started_wall),
            "train": self.config.daemon.train,
            "step": f.step if f else None, "tokens_trained": f.tokens_trained if f else None,
            "loss": f.loss if f else None, "tokens_per_s": f.tokens_per_s if f else None,
            "last_checkpoint_step": f.last_checkpoint_step if f else None,
            "last_checkpoint_age_s": None if not f or f.last_checkpoint_time is None else round(now - f.last_checkpoint_time, 1),
            "epoch": round(f.epoch, 3) if f else None,
            "val_bits_per_byte": f.val_bits_per_byte if f else None,
            "best_val_bits_per_byte": f.best_val_bits_per_byte if f else None,
            "plateaued": f.plateaued if f else None, "idle": f.idle if f else None,
            "paused": f.paused if f else None,
            "n_layer": f.n_layer if f else None, "parameters": f.parameters if f else None,
            "growths": len(f.growths) if f else None,
            "time_share": f.time_share if f else None,
            "replay_share": f.replay_share if f else None, "source_shares": f.source_shares if f else None,
            "rss_mb": process_stats()["rss_mb"],
            "threads": trainer.trainer.threads if trainer and trainer.trainer else None,
            "workers": {name: t.is_alive() for name, t in self.workers.items()},
            "blocked": writes["blocked"], "blocked_parts": writes.get("parts"),
            "free_bytes": writes.get("free_bytes"),
            "unwatched_roots": self._unwatched_roots() or None,
            "store_unavailable": self.outage.snapshot(now),
        }

    def _unwatched_roots(self) -> dict[str, str]:
        """Watch roots without a running observer, with the reason; logs each change once."""
        watcher = getattr(self, "watcher", None)
        if watcher is None:
            return {}
        now = {str(root): root_problem(root) or "could not be watched (see watch_failed); retrying"
               for root, observer in watcher.observers.items() if observer is None}
        for root, why in now.items():
            if self._unwatched.get(root) != why:
                self.log.error("root_unwatched", root=root, reason=why, setting="watch.roots",
                               action="set [watch] roots (CRYSTALLINE_WATCH_ROOTS) to folders the daemon can read; "
                                      "the watcher retries by itself")
        for root in self._unwatched.keys() - now.keys():
            self.log.info("root_watched", root=root)
        self._unwatched = now
        return now

    def _write_health(self, report: dict[str, Any]) -> None:
        """health.json, never fatal: a blocked write was told to `writes` by HealthFile; any
        other failure is logged once (until the error changes or a write succeeds)."""
        try:
            self._health_file.write(report)
            self._health_error = None
        except (OSError, ValueError) as exc:
            error = f"{type(exc).__name__}: {exc}"
            if error != self._health_error:
                self._health_error = error
                self.log.error("health_write_failed", path=str(self._health_file.path), error=error,
                               blocked=self.writes.blocked)

    def _report(self, now: float) -> None:
        from storage import CorpusQueue

        figures, error = {}, None
        try:  # first: a store that does not answer is in this very report
            stats = CorpusQueue(self.database).stats()
            trainer = self.training_worker()
            position = trainer.figures.position if trainer else 0
            figures = {"queue_documents": stats.documents.get("queued", 0),
                       "queue_tokens": max(0, stats.tokens_total - position)}
            self.outage.recovered("status", now)
        except Exception as exc:  # noqa: BLE001 - a status report must not stop the daemon
            if is_transient(exc):
                self.outage.report("status", exc, now)
            error = f"{type(exc).__name__}: {exc}"
        report = self.health_report("ready", now) | figures
        if error is not None:
            report["last_error"] = error
        self._write_health(report)
        self.log.info("status", **{k: v for k, v in report.items() if k not in ("pid", "state", "started_at")})
        self.notifier.status(self._status_line())

    def _trim_folders(self) -> None:
        """The processed/ and quarantine/ caps (disk.FolderCaps): processed/ is walked again only
        after the ingest worker stored files with after_ingest = "move"; never fatal."""
        thread = self.workers.get("ingest")
        counts = getattr(thread.worker, "counts", {}) if thread is not None else {}
        moved = None
        if self.config.daemon.after_ingest == "move":
            moved = (id(thread), counts.get("ingested", 0) + counts.get("duplicate", 0))
        try:
            self.folder_caps.sweep(self.config.daemon, moved)
        except Exception as exc:  # noqa: BLE001 - a sweep must not stop the daemon
            self.log.error("disk_trim_failed", error=f"{type(exc).__name__}: {exc}")

    def _check_writes(self, now: float) -> bool:
        """Re-check blocked writes (WriteState's own pace); True when the block began or ended
        since health.json last said, so that it says so now rather than at the next interval."""
        self.writes.recheck(now)
        blocked = self.writes.blocked
        changed, self._reported_block = blocked != self._reported_block, blocked
        return changed

    def _check_pause(self) -> bool:
        """True when the trainer was paused or resumed since health.json last said, so that
        `crystalline status` says so at once rather than at the next interval."""
        figures = getattr(self.training_worker(), "figures", None)
        paused = bool(figures is not None and figures.paused)
        changed, self._reported_paused = paused != self._reported_paused, paused
        return changed

    def _check_store(self, now: float) -> bool:
        """True when the store became unavailable, or answers again, since health.json last
        said, so that it says so now rather than at the next interval; also when the status
        report's own read of the store failed and its retry is due (for an idle daemon, the one
        call that finds the store back)."""
        cause = self.outage.cause
        changed, self._reported_store = cause != self._reported_store, cause
        return changed or (self.outage.failing("status") and self.outage.retry_in("status", now) == 0)

    def _status_line(self) -> str:
        trainer = self.training_worker()
        f = trainer.figures if trainer else None
        if f is None:
            return "starting" if self.config.daemon.train else "ingest only (no trainer: [daemon] train = false)"
        loss = "-" if f.loss is None else f"{f.loss:.3f}"
        line = f"step {f.step}, loss {loss}, {f.tokens_trained} tokens trained"
        if f.val_bits_per_byte is not None:
            line += f", held-out {f.val_bits_per_byte:.3f} bits/byte (best {f.best_val_bits_per_byte:.3f})"
        if self.writes.blocked:
            line += f", {self.writes.blocked}: ingest and checkpoints paused"
        if self.outage.cause:
            line += f", store unavailable ({self.outage.cause}): retrying"
        return line + (", plateaued" if f.plateaued else "")

    def _serve_metrics(self) -> None:
        """Start the Prometheus endpoint when configured; an address that cannot be bound is
        logged (metrics_failed) and the daemon runs on without it: training never waits on it."""
        listen = self.config.metrics.listen
        if self.metrics is None or not listen:
            return
        try:
            self.metrics_server = self.metrics.serve(listen)
        except OSError as exc:
            self.log.error("metrics_failed", listen=listen, error=str(exc),
                           action="free the port or set another [metrics] listen; the daemon runs without metrics")
            return
        self.log.info("metrics_serving", listen=listen, url=f"http://{listen}/metrics")
