"""The HTTP side of the window: the routes, the request's framing, and the page itself.

Each request, on a thread of the standard library's threaded server, passes access.py's checks,
then goes to its route; a route reads its query and body, asks the window, and writes JSON, a
stream (server-sent events, NDJSON) or the page. Every answer carries no-store, nosniff and
no-referrer headers, the page a Content-Security-Policy that admits only its own inline script
and style. Bodies are bounded (MAX_BODY_BYTES) and no endpoint takes a path. A refusal
(RequestError) answers its status; any other fault answers 500, is logged (http_request_failed),
and the daemon runs on.
Not what the answers say (the window and reports.py), not who may ask (access.py) and not a
completion (completion.py). Relies on the standard library's http.server and on the window the
server is made with; knows nothing of the daemon.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import socket
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .errors import RequestError
from .events import MAX_STREAMS

WEB_DIR = Path(__file__).parents[1] / "web"
MAX_BODY_BYTES = 16 * 1024  # a POST body


def load_page() -> tuple[bytes, str]:
    """The page, and a Content-Security-Policy that admits only its own inline script and style."""
    page = (WEB_DIR / "index.html").read_text(encoding="utf-8")
    hashes = {}
    for tag in ("script", "style"):
        bodies = re.findall(rf"<{tag}>(.*?)</{tag}>", page, flags=re.S)
        hashes[tag] = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(b.encode()).digest()).decode()}'"
                               for b in bodies)
    policy = (f"default-src 'none'; script-src {hashes['script']}; style-src {hashes['style']}; connect-src 'self'; "
              "img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")
    return page.encode("utf-8"), policy


def query_int(query: dict, name: str, default: int, low: int, high: int | None = None) -> int:
    """The integer `name` of a parsed query string, `default` when absent; 400 when it is not
    an integer in [low, high]."""
    values = query.get(name)
    if not values:
        return default
    try:
        value = int(values[0])
    except ValueError:
        raise RequestError(400, f"{name} must be an integer, got {values[0]!r}") from None
    if value < low or (high is not None and value > high):
        raise RequestError(400, f"{name} ({value}) must be in [{low}, {high if high is not None else 'inf'}]")
    return value


# ---------------------------------------------------------------------------------------------
# the server and its handler


def make_server(host: str, port: int, window) -> ThreadingHTTPServer:
    """A server bound to (host, port) whose routes answer from `window`; OSError when the
    address cannot be bound. The caller runs serve_forever on a thread of its own."""
    return _Server((host, port), _Handler, window=window)


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stream or a completion never holds the process's exit

    def __init__(self, address, handler, window):
        self.window = window  # the Window (window.py) whose answers the routes write
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "crystalline"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - requests are not logged (tokens in URLs)
        pass

    @property
    def window(self):
        return self.server.window

    def do_GET(self) -> None:
        self._dispatch("GET")

    def do_POST(self) -> None:
        self._dispatch("POST")

    def do_HEAD(self) -> None:
        self._send_error(RequestError(405, "HEAD is not served"))

    def _dispatch(self, method: str) -> None:
        url = urlsplit(self.path)
        query = parse_qs(url.query)
        routes = {("GET", "/"): self._page, ("GET", "/api/status"): self._status, ("GET", "/api/history"): self._history,
                  ("GET", "/api/events"): self._events, ("GET", "/metrics"): self._metrics,
                  ("POST", "/api/generate"): self._generate}
        try:
            self.window.access.check(method, self.headers, query)
            route = routes.get((method, url.path))
            if route is None:
                if any(path == url.path for _, path in routes):
                    raise RequestError(405, f"{method} is not allowed on {url.path}")
                raise RequestError(404, f"no such page: {url.path}")
            route(query)
        except RequestError as exc:
            self._send_error(exc)
        except (BrokenPipeError, ConnectionResetError):
            pass
        except Exception as exc:  # noqa: BLE001 - a fault answers 500 and the daemon runs on
            self.window.log.exception("http_request_failed", path=url.path, error=f"{type(exc).__name__}: {exc}")
            self._send_error(RequestError(500, f"internal error: {type(exc).__name__}"))

    # --- routes -------------------------------------------------------------------------------------

    def _page(self, query: dict) -> None:
        self._send(200, self.window.page, "text/html; charset=utf-8",
                   {"Content-Security-Policy": self.window.page_policy})

    def _status(self, query: dict) -> None:
        self._send_json(200, self.window.status())

    def _history(self, query: dict) -> None:
        since = query_int(query, "since", 0, 0)
        limit = query_int(query, "limit", 1000, 1, 10_000)
        since_step = query_int(query, "since_step", -1, -1)
        self._send_json(200, self.window.history(since, limit, since_step))

    def _metrics(self, query: dict) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics = self.window.metrics
        if metrics is None:
            raise RequestError(404, "metrics are off")
        self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)

    def _events(self, query: dict) -> None:
        w = self.window
        seq = query_int(query, "since", -1, -1)
        last = self.headers.get("Last-Event-ID")
        if last and last.isdigit():
            seq = int(last)
        if seq < 0:  # from now on
            seq = w.feed.seq
        if not w.feed.readers.acquire(blocking=False):
            raise RequestError(429, f"{MAX_STREAMS} event streams are open already", {"Retry-After": "10"})
        try:
            self._start_stream("text/event-stream")
            w.feed.write_stream(self.wfile, seq, w.stopping)
        finally:
            w.feed.readers.release()

    def _generate(self, query: dict) -> None:
        if self.headers.get_content_type() != "application/json":
            raise RequestError(415, "the body must be JSON (Content-Type: application/json)")
        length = self.headers.get("Content-Length")
        if length is None or not length.isdigit():
            raise RequestError(411, "Content-Length is required")
        if int(length) > MAX_BODY_BYTES:
            raise RequestError(413, f"the body is larger than {MAX_BODY_BYTES} bytes")
        raw = self.rfile.read(int(length))
        try:
            body = json.loads(raw)
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RequestError(400, f"the body is not valid JSON: {exc}") from None
        started = []

        def send(item: dict) -> None:
            if not started:
                self._start_stream("application/x-ndjson")
                started.append(True)
            self.wfile.write(json.dumps(item).encode("utf-8") + b"\n")
            self.wfile.flush()

        self.window.generate(body, send)

    # --- responses ----------------------------------------------------------------------------------

    def _common_headers(self) -> None:
        for name, value in (("Cache-Control", "no-store"), ("X-Content-Type-Options", "nosniff"),
                            ("Referrer-Policy", "no-referrer"), ("X-Frame-Options", "DENY")):
            self.send_header(name, value)

    def _start_stream(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self._common_headers()
        self.end_headers()
        self.close_connection = True  # the body ends when the connection closes

    def _send(self, status: int, body: bytes, content_type: str, headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self._common_headers()
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def _send_json(self, status: int, data: Any, headers: dict | None = None) -> None:
        self._send(status, json.dumps(data, default=str).encode("utf-8"), "application/json", headers)

    def _send_error(self, exc: RequestError) -> None:
        try:
            self._send_json(exc.status, {"error": str(exc), "status": exc.status}, exc.headers)
        except OSError:
            pass
