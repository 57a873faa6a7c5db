"""The daemon's window: a small page and JSON API to watch it learn and talk to the live model.

`[http] listen = "127.0.0.1:8484"` (`crystalline run --http ADDR|off`) serves, with the standard
library's threaded server on threads of its own (training never waits on a request):

- `GET /`             the page (crawler/service/web/index.html: curves, files, figures, a prompt box)
- `GET /api/status`   what `status --json` shows, read from the daemon's own open store, plus
                      the trainer's live figures (held-out figure, plateau, idle, rate)
- `GET /api/history`  the evaluation history from the store (`since`: the last id seen) and
                      the train_step points logged since the daemon started (`since_step`)
- `GET /api/events`   every log event (info and up) as server-sent events, the JSON lines' fields
- `POST /api/generate` a completion from a snapshot of the live weights, streamed as NDJSON
- `GET /metrics`      the Prometheus text of crawler/service/metrics.py

Safety: a request whose Host is not a name the daemon is reached by (its listen address,
localhost, `[http] allowed_hosts`) is refused (DNS rebinding), and so is a POST from another
origin or without a JSON body (cross-site forms). With a token (required beyond loopback,
config.py refuses to start without one) every request carries it, as `Authorization: Bearer` or
`?token=` (the page and its event stream). Bodies, prompts and completions are bounded, and
`max_generations` completions run at once (429 beyond). No endpoint takes a path.

A completion runs on its request's thread at a lower CPU priority (nice +10) and within
`generation_cpu_share` of one core (it sleeps when its own CPU time runs ahead), on numpy with
BLAS held to one thread; the weights are copied by the training thread between two steps
(TrainingWorker.snapshot), so a completion never sees a half-updated step. Relies on the
daemon's attributes (database, tokenizer, config, workers); knows nothing of HTTP libraries.
"""

from __future__ import annotations

import base64
import codecs
import hashlib
import hmac
import json
import os
import re
import threading
import time
from collections import deque
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from .. import ConfigError
from ..config import parse_listen
from ..logging import _serialize, get_logger

WEB_DIR = Path(__file__).with_name("web")
MAX_BODY_BYTES = 16 * 1024  # a POST body
MAX_PROMPT_BYTES = 8 * 1024  # of UTF-8
MAX_STREAMS = 16  # event streams at once
RING_EVENTS = 1000  # events kept for a stream that (re)connects with a cursor
RECENT_FILES = 50  # file_ingested / file_skipped / file_failed kept for the page
RECENT_STEPS = 5000  # train_step points kept for the curve
STATUS_CACHE_SECONDS = 1.0  # the store is read at most this often, however many pages poll
SNAPSHOT_WAIT_SECONDS = 10.0  # for the trainer's next step boundary (an evaluation may hold it)
KEEPALIVE_SECONDS = 15.0
GENERATION_NICE = 10
FILE_EVENTS = ("file_ingested", "file_skipped", "file_failed")


class RequestError(Exception):
    """A request refused: `status` and a one-line message for the client."""

    def __init__(self, status: int, message: str, headers: dict | None = None):
        super().__init__(message)
        self.status, self.headers = status, headers or {}


def resolve_token(config) -> str:
    """The configured token: [http] token, else the first line of token_file; ConfigError when
    the file cannot be read or is empty."""
    if config.token or not config.token_file:
        return config.token
    try:
        token = Path(config.token_file).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"[http] token_file: {exc}") from None
    if not token:
        raise ConfigError(f"[http] token_file {config.token_file} is empty")
    return token


class EventFeed:
    """The last RING_EVENTS events as JSON text, numbered; readers wait on the condition."""

    def __init__(self) -> None:
        self.ring: deque[tuple[int, str]] = deque(maxlen=RING_EVENTS)
        self.seq = 0
        self.cond = threading.Condition()
        self.closed = False

    def publish(self, event: dict) -> None:
        """Called by whichever thread logs: never blocks beyond a short lock."""
        line = _serialize(event)
        with self.cond:
            self.seq += 1
            self.ring.append((self.seq, line))
            self.cond.notify_all()

    def after(self, seq: int, timeout: float) -> list[tuple[int, str]]:
        """Events numbered above `seq`, waiting up to `timeout` for one; [] on timeout or close."""
        with self.cond:
            if self.seq <= seq and not self.closed:
                self.cond.wait(timeout)
            return [item for item in self.ring if item[0] > seq]

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.cond.notify_all()


class Window:
    """The log observer (metrics and the event feed) and, once `serve`d, the HTTP server."""

    def __init__(self, config, metrics=None) -> None:
        self.config, self.metrics = config, metrics
        self.token = resolve_token(config)
        self.feed = EventFeed()
        self.files: deque[dict] = deque(maxlen=RECENT_FILES)
        self.steps: deque[dict] = deque(maxlen=RECENT_STEPS)
        self.generations = threading.BoundedSemaphore(config.max_generations)
        self.streams = threading.BoundedSemaphore(MAX_STREAMS)
        self.daemon = None
        self.server: ThreadingHTTPServer | None = None
        self.stopping = threading.Event()
        self._status: tuple[float, dict] | None = None
        self._status_lock = threading.Lock()
        self._last_snapshot = None
        self.page, self.page_policy = _load_page()

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
            server = _Server((host, port), _Handler, window=self)
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

    def _trainer(self):
        return None if self.daemon is None else self.daemon.training_worker()

    def status(self) -> dict:
        """`status --json`'s report from the open store (cached STATUS_CACHE_SECONDS) and the live figures."""
        with self._status_lock:
            now = time.monotonic()
            if self._status is None or now - self._status[0] >= STATUS_CACHE_SECONDS:
                self._status = (now, self._store_report())
            report = dict(self._status[1])
        report["live"] = self._live()
        report["files"] = list(self.files)[-20:][::-1]
        return report

    def _store_report(self) -> dict:
        from storage import CorpusQueue

        from ..state.health import read_health
        from .status import store_report, tokens_untrained

        d = self.daemon
        database = getattr(d, "database", None)
        if database is None:
            raise RequestError(503, "the daemon is starting: its store is not open yet")
        report = store_report(d.config, CorpusQueue(database))
        report["daemon"] = {"running": True, "pid": os.getpid(), "health": read_health(d.config.state_dir)}
        report["tokens_untrained"] = tokens_untrained(report)
        return report

    def _live(self) -> dict:
        trainer = self._trainer()
        f = getattr(trainer, "figures", None)
        if f is None:
            return {"state": "starting"}
        train = self.daemon.config.train
        now = self.daemon.clock()
        return {
            "state": "paused" if f.paused else "plateaued" if f.plateaued else "idle" if f.idle else "training",
            "step": f.step, "loss": f.loss, "tokens_trained": f.tokens_trained, "tokens_seen": f.tokens_seen,
            "tokens_per_s": f.tokens_per_s, "epoch": round(f.epoch, 3),
            "tokens_per_step": train.batch_size * getattr(trainer, "seq_len", train.seq_len),
            "val_bits_per_byte": f.val_bits_per_byte, "best_val_bits_per_byte": f.best_val_bits_per_byte,
            "train_bits_per_byte": f.train_bits_per_byte, "plateaued": f.plateaued, "idle": f.idle,
            "paused": f.paused, "last_checkpoint_step": f.last_checkpoint_step,
            "last_checkpoint_age_s": None if f.last_checkpoint_time is None else round(now - f.last_checkpoint_time, 1),
            "blocked": self.daemon.writes.blocked,
        }

    def history(self, query: dict) -> dict:
        """Evaluations with id > since (oldest first, up to limit) and train_step points after since_step."""
        from storage import CorpusQueue

        since = _query_int(query, "since", 0, 0)
        limit = _query_int(query, "limit", 1000, 1, 10_000)
        since_step = _query_int(query, "since_step", -1, -1)
        database = getattr(self.daemon, "database", None)
        if database is None:
            raise RequestError(503, "the daemon is starting: its store is not open yet")
        rows = CorpusQueue(database).evaluations(since=since, limit=limit)
        evaluations = [{"id": r.id, "step": r.step, "epoch": r.epoch, "tokens_trained": r.tokens_trained,
                        "val_bits_per_byte": r.val_bits_per_byte, "train_bits_per_byte": r.train_bits_per_byte,
                        "holdout_tokens": r.holdout_tokens, "best": r.best, "created_at": str(r.created_at)}
                       for r in rows]
        steps = [s for s in list(self.steps) if (s["step"] or 0) > since_step]
        live = self._live()
        return {"evaluations": evaluations, "next": evaluations[-1]["id"] if evaluations else since,
                "steps": steps, "tokens_per_step": live.get("tokens_per_step")}

    # --- a completion ------------------------------------------------------------------------------

    def generate(self, body: dict, send) -> None:
        """Validate, take a snapshot, and stream a completion through `send(dict)`; RequestError
        before anything is sent when the request is wrong or the model is not there yet."""
        request = _completion_request(body, self.config.max_new_tokens)
        trainer = self._trainer()
        if trainer is None or trainer.trainer is None or getattr(self.daemon, "tokenizer", None) is None:
            raise RequestError(503, "the model is not loaded yet; try again in a moment", {"Retry-After": "5"})
        if not self.generations.acquire(blocking=False):
            raise RequestError(429, f"{self.config.max_generations} completion(s) already running: try again when "
                               "it ends ([http] max_generations)", {"Retry-After": "5"})
        try:
            self._generate(request, trainer, send)
        finally:
            self.generations.release()

    def _generate(self, request: dict, trainer, send) -> None:
        import numpy as np

        from engine.sample import Generator, sample_next
        from engine.trainer import limit_blas_threads

        _lower_this_thread()
        limit_blas_threads()
        model_config = trainer.trainer.model_config
        snapshot = trainer.snapshot(SNAPSHOT_WAIT_SECONDS) or self._last_snapshot
        if snapshot is None:
            raise RequestError(503, "the trainer is busy (an evaluation or a checkpoint); try again in a moment",
                               {"Retry-After": "10"})
        self._last_snapshot = snapshot
        params, step = snapshot
        tokenizer = self.daemon.tokenizer
        try:
            prompt_ids = [tokenizer.eod_id] + tokenizer.encode(request["prompt"].encode("utf-8")).tolist()
        except ValueError as exc:
            raise RequestError(400, f"prompt: {exc}") from None
        generator = Generator(model_config, params)
        rng = np.random.default_rng(request["seed"])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        t0, cpu0 = time.monotonic(), time.thread_time()
        share = self.config.generation_cpu_share
        send({"step": step, "prompt_tokens": len(prompt_ids)})
        logits, count, reason = generator.feed(prompt_ids), 0, "length"
        while count < request["max_new_tokens"]:
            if self.stopping.is_set():
                reason = "stopping"
                break
            token = sample_next(logits, rng, request["temperature"], request["top_k"], request["top_p"])
            if token == tokenizer.eod_id:
                reason = "end_of_document"
                break
            count += 1
            text = decoder.decode(tokenizer.decode([token]))
            if text:
                send({"text": text})
            if count < request["max_new_tokens"]:
                logits = generator.feed([token])
            # the CPU budget: sleep while this thread's CPU time runs ahead of its share of the wall clock
            ahead = (time.thread_time() - cpu0) / share - (time.monotonic() - t0)
            if ahead > 0:
                self.stopping.wait(ahead)
        tail = decoder.decode(b"", final=True)
        if tail:
            send({"text": tail})
        seconds = time.monotonic() - t0
        send({"done": True, "tokens": count, "reason": reason, "seconds": round(seconds, 3)})
        self.log.info("generation_finished", step=step, prompt_tokens=len(prompt_ids), tokens=count, reason=reason,
                      seconds=round(seconds, 3), cpu_seconds=round(time.thread_time() - cpu0, 3))

    # --- the checks every request passes -------------------------------------------------------------

    def allowed_host(self, host: str | None) -> bool:
        """Is `host` (a Host header, or an Origin's host) a name the daemon is reached by?"""
        if not host:
            return False
        name = _host_name(host)
        allowed = {"localhost", "127.0.0.1", "::1"} | {h.lower() for h in self.config.allowed_hosts}
        listen = self.config.listen.rpartition(":")[0].strip("[]").lower()
        if listen not in ("", "0.0.0.0", "::"):
            allowed.add(listen)
        return "*" in allowed or name in allowed

    def authorized(self, header: str | None, query: dict) -> bool:
        if not self.token:
            return True
        given = ""
        if header and header.lower().startswith("bearer "):
            given = header[7:].strip()
        elif query.get("token"):
            given = query["token"][0]
        return hmac.compare_digest(given.encode(), self.token.encode())


def _host_name(host: str) -> str:
    """"Example.org:8484" -> "example.org"; "[::1]:8484" -> "::1"."""
    host = host.strip().lower()
    if host.startswith("["):
        return host[1:].partition("]")[0]
    return host.rpartition(":")[0] if host.count(":") == 1 else host


def _lower_this_thread() -> None:
    """Raise this thread's niceness (Linux: per thread), so training's threads come first."""
    try:
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), GENERATION_NICE)
    except (OSError, AttributeError):
        pass


def _query_int(query: dict, name: str, default: int, low: int, high: int | None = None) -> int:
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


def _completion_request(body: Any, max_new_tokens: int) -> dict:
    """The POST /api/generate body checked field by field; RequestError(400) naming the field."""
    if not isinstance(body, dict):
        raise RequestError(400, "the body must be a JSON object")
    fields = {"prompt": (str, ""), "max_new_tokens": (int, min(200, max_new_tokens)), "temperature": (float, 0.8),
              "top_k": (int, 0), "top_p": (float, 1.0), "seed": (int, 0)}
    unknown = sorted(set(body) - set(fields))
    if unknown:
        raise RequestError(400, f"unknown field {unknown[0]!r}; allowed: {', '.join(fields)}")
    request = {}
    for name, (kind, default) in fields.items():
        value = body.get(name, default)
        ok = isinstance(value, kind) or (kind is float and isinstance(value, int))
        if isinstance(value, bool) or not ok:
            raise RequestError(400, f"{name} must be {'a string' if kind is str else 'an integer' if kind is int else 'a number'}, "
                               f"got {json.dumps(value)}")
        request[name] = float(value) if kind is float else value
    if len(request["prompt"].encode("utf-8", "surrogatepass")) > MAX_PROMPT_BYTES:
        raise RequestError(400, f"prompt is longer than {MAX_PROMPT_BYTES} bytes")
    limits = {"max_new_tokens": (1, max_new_tokens), "temperature": (0.0, 10.0), "top_k": (0, 1 << 20),
              "top_p": (1e-9, 1.0), "seed": (0, 2**63 - 1)}
    for name, (low, high) in limits.items():
        if not low <= request[name] <= high:  # (NaN fails too)
            raise RequestError(400, f"{name} ({request[name]}) must be in [{low}, {high}]")
    return request


def _load_page() -> tuple[bytes, str]:
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


class _Server(ThreadingHTTPServer):
    daemon_threads = True  # a stream or a completion never holds the process's exit

    def __init__(self, address, handler, window: Window):
        self.window = window
        if ":" in address[0]:
            import socket

            self.address_family = socket.AF_INET6
        super().__init__(address, handler)


class _Handler(BaseHTTPRequestHandler):
    server_version = "crystalline"
    sys_version = ""

    def log_message(self, format: str, *args) -> None:  # noqa: A002 - requests are not logged (tokens in URLs)
        pass

    @property
    def window(self) -> Window:
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
            self._check(method, query)
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

    def _check(self, method: str, query: dict) -> None:
        w = self.window
        if not w.allowed_host(self.headers.get("Host")):
            raise RequestError(403, f"Host {self.headers.get('Host')!r} is not a name this daemon is reached by; "
                               "add it to [http] allowed_hosts")
        if not w.authorized(self.headers.get("Authorization"), query):
            raise RequestError(401, "a token is required: Authorization: Bearer TOKEN, or ?token=TOKEN "
                               "([http] token)", {"WWW-Authenticate": "Bearer"})
        if method == "POST":
            origin = self.headers.get("Origin")
            if origin is not None and not w.allowed_host(urlsplit(origin).netloc):
                raise RequestError(403, f"cross-origin request from {origin!r} refused")
            if self.headers.get("Sec-Fetch-Site") in ("cross-site", "same-site"):
                raise RequestError(403, "cross-site request refused")

    # --- routes -------------------------------------------------------------------------------------

    def _page(self, query: dict) -> None:
        self._send(200, self.window.page, "text/html; charset=utf-8",
                   {"Content-Security-Policy": self.window.page_policy})

    def _status(self, query: dict) -> None:
        self._send_json(200, self.window.status())

    def _history(self, query: dict) -> None:
        self._send_json(200, self.window.history(query))

    def _metrics(self, query: dict) -> None:
        from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

        metrics = self.window.metrics
        if metrics is None:
            raise RequestError(404, "metrics are off")
        self._send(200, generate_latest(metrics.registry), CONTENT_TYPE_LATEST)

    def _events(self, query: dict) -> None:
        w = self.window
        seq = _query_int(query, "since", -1, -1)
        last = self.headers.get("Last-Event-ID")
        if last and last.isdigit():
            seq = int(last)
        if seq < 0:  # from now on
            seq = w.feed.seq
        if not w.streams.acquire(blocking=False):
            raise RequestError(429, f"{MAX_STREAMS} event streams are open already", {"Retry-After": "10"})
        try:
            self._start_stream("text/event-stream")
            self.wfile.write(b"retry: 2000\n\n")
            self.wfile.flush()
            while not w.stopping.is_set():
                items = w.feed.after(seq, KEEPALIVE_SECONDS)
                if not items:
                    self.wfile.write(b": keepalive\n\n")
                for seq, line in items:
                    self.wfile.write(f"id: {seq}\ndata: {line}\n\n".encode("utf-8"))
                self.wfile.flush()
        finally:
            w.streams.release()

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
