"""The window: the one object the daemon holds for its page and API, and the log's observer.

`Window(config.http, metrics)` is made before logging is configured (it reads the token file,
so a ConfigError comes before anything starts), is handed to `configure_logging` as the
observer every event passes on its way to the renderer (metrics, then the event feed, the recent
files and train_step points), and once `serve`d answers the routes from the daemon it serves.
It is a thin front: who may ask is access.py's, the event stream events.py's, the store's
reports reports.py's, a completion completion.py's, the HTTP framing handler.py's.
Not the daemon's supervisor (crawler/service/supervisor.py starts and stops the window, and
the window never stops the daemon). Relies on the daemon's attributes (config, database,
tokenizer, clock, writes, training_worker) and on the [http] section of the configuration.
"""

from __future__ import annotations

import threading
from collections import deque
from http.server import ThreadingHTTPServer
from typing import Any

from ...config import parse_listen
from ...logging import get_logger
from .access import Access
from .completion import Completions
from .events import EventFeed
from .handler import load_page, make_server
from .reports import StatusCache, evaluations_after, live_figures

RECENT_FILES = 50  # file_ingested / file_skipped / file_failed kept for the page
RECENT_STEPS = 5000  # train_step points kept for the curve
FILE_EVENTS = ("file_ingested", "file_skipped", "file_failed")


class Window:
    """The log observer (metrics and the event feed) and, once `serve`d, the HTTP server."""

    def __init__(self, config, metrics=None) -> None:
        self.config, self.metrics = config, metrics
        self.access = Access(config)  # reads the token file: a ConfigError before anything starts
        self.feed = EventFeed()
        self.files: deque[dict] = deque(maxlen=RECENT_FILES)
        self.steps: deque[dict] = deque(maxlen=RECENT_STEPS)
        self.stopping = threading.Event()
        self.completions = Completions(config, self.stopping)
        self.daemon = None
        self.server: ThreadingHTTPServer | None = None
        self._status = StatusCache()
        self.page, self.page_policy = load_page()

    @property
    def token(self) -> str:
        """The token every request carries ("" when none is set)."""
        return self.access.token

    # --- the structlog processor ------------------------------------------------------------------

    def __call__(self, logger: Any, method: str, event_dict: dict) -> dict:
        """Observe an event on its way to the renderer (metrics, then the feed); never raises."""
        if self.metrics is not None:
            self.metrics(logger, method, event_dict)
        try:
            event = {k: v for k, v in event_dict.items() if k != "exc_info"}
            name = event.get("event")
            if name in FILE_EVENTS:
                self.files.append(event)
            elif name == "train_step":
                self.steps.append({k: event.get(k) for k in ("step", "loss", "bits_per_byte", "tokens_per_s", "epoch")})
            self.feed.publish(event)
        except Exception:  # noqa: BLE001 - the window must never cost an event
            pass
        return event_dict

    # --- the server ---------------------------------------------------------------------------------

    def serve(self, daemon) -> None:
        """Bind and serve on a thread of its own; an address that cannot be bound is logged
        (http_failed) and the daemon runs on without it."""
        self.daemon = daemon
        host, port = parse_listen(self.config.listen, "127.0.0.1:8484", any_port=True)
        try:
            server = make_server(host, port, self)
        except OSError as exc:
            self.log.error("http_failed", listen=self.config.listen, error=str(exc),
                           action="free the port or set another [http] listen (or --http off); "
                                  "the daemon runs without its page")
            return
        self.server = server
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.5}, name="crystalline-http",
                         daemon=True).start()
        bound = server.server_address[1]
        shown = f"[{host}]" if ":" in host else host
        self.log.info("http_serving", listen=self.config.listen, port=bound, url=f"http://{shown}:{bound}/",
                      token=bool(self.token))

    @property
    def log(self) -> Any:
        """The page's logger, bound when used: the window is made before the daemon configures
        logging (it observes the events), and a logger bound then would write where the
        command line pointed events first (stderr), not where the daemon's go."""
        return get_logger("http")

    def stop(self) -> None:
        """Stop accepting, end the event streams and the completions; idempotent."""
        self.stopping.set()
        self.feed.close()
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None

    # --- what the API says -------------------------------------------------------------------------

    def status(self) -> dict:
        """`status --json`'s report from the open store (cached) and the live figures."""
        report = self._status.read(self.daemon)
        report["live"] = live_figures(self.daemon)
        report["files"] = list(self.files)[-20:][::-1]
        return report

    def history(self, since: int, limit: int, since_step: int) -> dict:
        """Evaluations with id > since (oldest first, up to limit) and train_step points after since_step."""
        evaluations = evaluations_after(self.daemon, since, limit)
        steps = [s for s in list(self.steps) if (s["step"] or 0) > since_step]
        return {"evaluations": evaluations, "next": evaluations[-1]["id"] if evaluations else since,
                "steps": steps, "tokens_per_step": live_figures(self.daemon).get("tokens_per_step")}

    def generate(self, body: dict, send) -> None:
        """Stream a completion of `body` through `send(dict)` (completion.py), then log
        generation_finished; RequestError before anything is sent when it cannot run."""
        trainer = None if self.daemon is None else self.daemon.training_worker()
        figures = self.completions.run(body, trainer, getattr(self.daemon, "tokenizer", None), send)
        self.log.info("generation_finished", **figures)
