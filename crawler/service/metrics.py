"""Prometheus metrics of the daemon, read off its own events: an optional HTTP endpoint.

`[metrics] listen = "127.0.0.1:9464"` (or `crystalline run --metrics ADDR`; empty, the default,
is off) serves the Prometheus text format through prometheus_client on a thread of its own.
The figures are the ones the JSON lines carry: `EventMetrics.observe` is a structlog processor
placed before the renderer, so every event updates the metrics it concerns (file_ingested,
file_skipped, file_failed, train_step, checkpoint_saved, eval_finished, worker_restarted,
status) and a scrape never disagrees with the log. Logging stays filtered at the configured
level for output; with metrics on, the events the metrics need (info and above) are produced
and observed even at level warning, then dropped before rendering.

Names follow Prometheus conventions: one prefix (`crystalline_`), base units (seconds, bytes),
`_total` counters, no file paths as label values (a skip reason is a label; a path is not).
Knows nothing of storage or the engine.
"""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info
from prometheus_client.exposition import start_http_server

from ..config import parse_listen

PREFIX = "crystalline"
# step times are sampled: train_step carries the last step's dt_ms, once every log_every steps
STEP_SECONDS_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0)


class EventMetrics:
    """The metrics and the event -> metric mapping; one per daemon, on a registry of its own."""

    def __init__(self, version: str = "unknown") -> None:
        r = self.registry = CollectorRegistry(auto_describe=True)
        p = PREFIX
        Info(f"{p}_build", "The running program.", registry=r).info({"version": version})
        self.files = Counter(f"{p}_files_total", "Files handled, by result (ingested, duplicate, skipped, failed) "
                             "and skip reason.", ["result", "reason"], registry=r)
        self.bytes_ingested = Counter(f"{p}_ingested_bytes_total", "Bytes of files ingested.", registry=r)
        self.tokens_ingested = Counter(f"{p}_ingested_tokens_total", "Tokens stored by ingest.", registry=r)
        self.steps = Counter(f"{p}_training_steps_total", "Training steps taken.", registry=r)
        self.tokens_trained = Counter(f"{p}_trained_tokens_total",
                                      "New stream tokens trained on (replay and further passes not counted).",
                                      registry=r)
        self.checkpoints = Counter(f"{p}_checkpoints_total", "Checkpoints written, by reason.", ["reason"], registry=r)
        self.restarts = Counter(f"{p}_worker_restarts_total", "Worker threads restarted after dying.", ["worker"],
                                registry=r)
        self.step = Gauge(f"{p}_training_step", "The training step reached.", registry=r)
        self.loss = Gauge(f"{p}_train_loss", "Mean training loss over the last log interval (nats per token).",
                          registry=r)
        self.val = Gauge(f"{p}_heldout_bits_per_byte", "Held-out bits per byte at the last evaluation.", registry=r)
        self.best_val = Gauge(f"{p}_heldout_best_bits_per_byte", "Best held-out bits per byte so far.", registry=r)
        self.lr = Gauge(f"{p}_learning_rate", "The learning rate of the last step.", registry=r)
        self.rate = Gauge(f"{p}_training_tokens_per_second", "Training throughput over the last log interval.",
                          registry=r)
        self.queue_documents = Gauge(f"{p}_queue_documents", "Documents stored and not yet trained on.", registry=r)
        self.queue_tokens = Gauge(f"{p}_queue_tokens", "Tokens stored and not yet trained on.", registry=r)
        self.last_checkpoint = Gauge(f"{p}_last_checkpoint_timestamp_seconds",
                                     "When the last checkpoint was written (Unix time).", registry=r)
        self.rss = Gauge(f"{p}_resident_memory_bytes", "Resident memory of the daemon.", registry=r)
        self.threads = Gauge(f"{p}_training_threads", "Worker threads of the trainer.", registry=r)
        self.idle = Gauge(f"{p}_training_idle", "1 while the trainer waits for new text.", registry=r)
        self.plateaued = Gauge(f"{p}_training_plateaued", "1 while the held-out measure has stopped improving.",
                               registry=r)
        self.step_seconds = Histogram(f"{p}_step_seconds", "Duration of a training step (sampled once per log "
                                      "interval).", buckets=STEP_SECONDS_BUCKETS, registry=r)
        self._last_step: int | None = None  # counters count from this process's start, not the run's
        self._tokens_trained: int | None = None

    # --- the structlog processor ----------------------------------------------------------------

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        """Observe an event on its way to the renderer; never raises, never changes it."""
        try:
            self.observe(event_dict)
        except Exception:  # noqa: BLE001 - a metric must never cost an event
            pass
        return event_dict

    def observe(self, e: dict) -> None:
        name = e.get("event")
        if name == "file_ingested":
            self.files.labels("duplicate" if e.get("duplicate") else "ingested", "").inc()
            if not e.get("duplicate"):
                self.bytes_ingested.inc(e.get("bytes") or 0)
                self.tokens_ingested.inc(e.get("tokens") or 0)
        elif name == "file_skipped":
            self.files.labels("skipped", str(e.get("reason") or "")).inc()
        elif name == "file_failed":
            self.files.labels("failed", "").inc()
        elif name == "train_step":
            step = int(e["step"])
            if self._last_step is not None and step > self._last_step:
                self.steps.inc(step - self._last_step)
            self._last_step = step
            self.step.set(step)
            for gauge, key in ((self.loss, "loss"), (self.lr, "lr"), (self.rate, "tokens_per_s")):
                if e.get(key) is not None:
                    gauge.set(e[key])
            if e.get("dt_ms") is not None:
                self.step_seconds.observe(e["dt_ms"] / 1e3)
        elif name == "trainer_ready":
            self._last_step = e.get("step", self._last_step)
        elif name == "checkpoint_saved":
            self.checkpoints.labels(str(e.get("reason") or "")).inc()
            self.last_checkpoint.set_to_current_time()
        elif name == "eval_finished":
            if e.get("val_bits_per_byte") is not None:
                self.val.set(e["val_bits_per_byte"])
            if e.get("best_val_bits_per_byte") is not None:
                self.best_val.set(e["best_val_bits_per_byte"])
        elif name == "worker_restarted":
            self.restarts.labels(str(e.get("worker") or "")).inc()
        elif name == "status":
            self._status(e)

    def _status(self, e: dict) -> None:
        for gauge, key, scale in ((self.queue_documents, "queue_documents", 1), (self.queue_tokens, "queue_tokens", 1),
                                  (self.rss, "rss_mb", 1e6), (self.threads, "threads", 1)):
            if e.get(key) is not None:
                gauge.set(e[key] * scale)
        for gauge, key in ((self.idle, "idle"), (self.plateaued, "plateaued")):
            if e.get(key) is not None:
                gauge.set(1 if e[key] else 0)
        total = e.get("tokens_trained")
        if total is not None:  # the daemon's running total; the counter counts from this process's start
            if self._tokens_trained is not None and total > self._tokens_trained:
                self.tokens_trained.inc(total - self._tokens_trained)
            self._tokens_trained = total

    # --- the endpoint ---------------------------------------------------------------------------

    def serve(self, listen: str):
        """Start the HTTP endpoint on its own thread; returns the server (call .shutdown())."""
        host, port = parse_listen(listen, "127.0.0.1:9464")
        server, _thread = start_http_server(port, host, registry=self.registry)
        return server
