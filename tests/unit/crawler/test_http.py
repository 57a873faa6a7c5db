"""The daemon's window (crawler/service/http/) over real sockets: the safety checks, the event stream,
completions and their limits against an in-process server with a stand-in daemon; then the API
of a running `crystalline run` (marked slow): status and history against the store, a dropped
file on the event stream, a completion while training steps go on, refusals that leave it running."""

from __future__ import annotations

import http.client
import json
import sqlite3
import threading
import time
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

from crawler import ConfigError
from crawler.config import Config, HttpConfig, load_config
from crawler.logging import configure_logging, get_logger
from crawler.service.http import Window
from crawler.service.http.handler import MAX_BODY_BYTES


def _e2e_runner():
    """tests/e2e/conftest.py's daemon runner, loaded by path (every conftest is named conftest)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("e2e_daemon_runner",
                                                  Path(__file__).resolve().parents[2] / "e2e" / "conftest.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.DaemonProcess, module.write_text_file


DaemonProcess, write_text_file = _e2e_runner()

WAIT = 60  # a failure guard for waits on events, never reached when the test passes


# ---------------------------------------------------------------------------------------------
# an in-process server on a stand-in daemon


class StubTrainer:
    """What Window reads of a TrainingWorker: figures, the engine's model config, snapshots."""

    def __init__(self, block: threading.Event | None = None):
        from engine.config import ModelConfig
        from engine.layout import init_parameters

        model = ModelConfig(vocab_size=257, context_length=16, d_model=16, n_layer=1, n_head=2).validate()
        self.trainer = SimpleNamespace(model_config=model)
        self.params = init_parameters(model)
        self.figures = SimpleNamespace(step=7, loss=2.0, tokens_trained=10, tokens_seen=10, tokens_per_s=5.0, epoch=0.1,
                                       val_bits_per_byte=None, best_val_bits_per_byte=None, train_bits_per_byte=None,
                                       plateaued=False, idle=False, paused=False, last_checkpoint_step=None,
                                       last_checkpoint_time=None)
        self.seq_len = 16
        self.block = block
        self.entered = threading.Event()  # a snapshot was asked for

    def snapshot(self, timeout):
        self.entered.set()
        if self.block is not None:
            self.block.wait(WAIT)
        return self.params.copy(), 7, self.trainer.model_config


@pytest.fixture
def window():
    """A Window serving on 127.0.0.1 (a free port) for a stand-in daemon; stopped afterwards."""
    from crawler.ingest.tokenizer import ByteTokenizer

    made = []

    def make(trainer=None, **http) -> tuple[Window, str]:
        config = HttpConfig(**({"listen": "127.0.0.1:0"} | http)).validate()
        w = Window(config)
        daemon = SimpleNamespace(config=Config(), tokenizer=ByteTokenizer(), clock=time.monotonic,
                                 writes=SimpleNamespace(blocked=None), training_worker=lambda: trainer)
        configure_logging("info", json=True, stream=open("/dev/null", "w"), observer=w)
        w.serve(daemon)
        made.append(w)
        return w, f"127.0.0.1:{w.server.server_address[1]}"

    yield make
    for w in made:
        w.stop()
    configure_logging("info", json=True)


def request(address: str, method: str, path: str, body: bytes | None = None, headers: dict | None = None):
    """One request on a new connection: (status, headers, body bytes)."""
    connection = http.client.HTTPConnection(address, timeout=WAIT)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, dict(response.getheaders()), response.read()
    finally:
        connection.close()


def post(address: str, data, headers: dict | None = None):
    body = data if isinstance(data, bytes) else json.dumps(data).encode()
    return request(address, "POST", "/api/generate", body, {"Content-Type": "application/json"} | (headers or {}))


def error_of(body: bytes) -> str:
    return json.loads(body)["error"]


def test_a_host_that_is_not_the_daemons_is_refused(window):
    _, address = window()
    status, _, body = request(address, "GET", "/api/history", headers={"Host": "attacker.example:8484"})
    assert status == 403 and "allowed_hosts" in error_of(body)
    status, headers, page = request(address, "GET", "/", headers={"Host": "localhost:8484"})
    assert status == 200 and b"<svg id=\"chart\"" in page
    assert "'sha256-" in headers["Content-Security-Policy"] and "unsafe-inline" not in headers["Content-Security-Policy"]


def test_a_named_host_is_allowed_when_configured(window):
    _, address = window(allowed_hosts=("box.lan",))
    assert request(address, "GET", "/", headers={"Host": "box.lan:8484"})[0] == 200
    assert request(address, "GET", "/", headers={"Host": "other.lan:8484"})[0] == 403


def test_a_cross_origin_post_is_refused_before_the_body_is_read(window):
    _, address = window(StubTrainer())
    status, _, body = post(address, {"prompt": "a"}, {"Origin": "http://attacker.example"})
    assert status == 403 and "cross-origin" in error_of(body)
    status, _, body = post(address, {"prompt": "a"}, {"Sec-Fetch-Site": "cross-site"})
    assert status == 403
    status, _, body = request(address, "POST", "/api/generate", b"prompt=a",
                              {"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 415 and "application/json" in error_of(body)


def test_with_a_token_every_request_carries_it(window):
    _, address = window(token="s3cret")
    status, headers, body = request(address, "GET", "/api/history")
    assert status == 401 and headers["WWW-Authenticate"] == "Bearer" and "token is required" in error_of(body)
    assert request(address, "GET", "/", headers={"Authorization": "Bearer wrong"})[0] == 401
    assert request(address, "GET", "/", headers={"Authorization": "Bearer s3cret"})[0] == 200
    assert request(address, "GET", "/?token=s3cret")[0] == 200
    assert post(address, {"prompt": "a"})[0] == 401


def test_a_listen_address_beyond_loopback_needs_a_token(tmp_path):
    with pytest.raises(ConfigError, match="not a loopback address: set token or token_file"):
        load_config(state_dir=tmp_path, env={"CRYSTALLINE_HTTP_LISTEN": "0.0.0.0:8484"})
    token = tmp_path / "token"
    token.write_text("from-a-file\n")
    config = load_config(state_dir=tmp_path, env={"CRYSTALLINE_HTTP_LISTEN": "0.0.0.0:8484",
                                                   "CRYSTALLINE_HTTP_TOKEN_FILE": str(token)})
    assert Window(config.http).token == "from-a-file"
    token.write_text("")
    with pytest.raises(ConfigError, match="is empty"):
        Window(config.http)
    assert load_config(state_dir=tmp_path, overrides={"http": {"listen": "off"}}).http.enabled is False
    assert "s3cret" not in json.dumps(replace(Config(), http=HttpConfig(token="s3cret")).to_dict(), default=str)


@pytest.mark.parametrize("body, status, says", [
    (b"{not json", 400, "not valid JSON"),
    (b"[1, 2]", 400, "JSON object"),
    (json.dumps({"prompt": 5}).encode(), 400, "prompt must be a string"),
    (json.dumps({"prompt": "a", "max_new_tokens": "10"}).encode(), 400, "max_new_tokens must be an integer"),
    (json.dumps({"prompt": "a", "max_new_tokens": True}).encode(), 400, "max_new_tokens must be an integer"),
    (json.dumps({"prompt": "a", "max_new_tokens": 10**6}).encode(), 400, "max_new_tokens (1000000) must be in [0, 512]"),
    (json.dumps({"prompt": "a", "temperature": -1}).encode(), 400, "temperature"),
    (json.dumps({"prompt": "a", "path": "/etc/passwd"}).encode(), 400, "unknown field 'path'"),
    (b"x" * (MAX_BODY_BYTES + 1), 413, "larger than"),
])
def test_bad_requests_get_a_4xx_that_says_why(window, body, status, says):
    _, address = window(StubTrainer())
    got, _, answer = post(address, body)
    assert got == status and says in error_of(answer)
    assert request(address, "GET", "/api/history?since=x")[0] == 400
    assert request(address, "GET", "/nowhere")[0] == 404
    assert request(address, "POST", "/api/status", b"{}", {"Content-Type": "application/json"})[0] == 405


def test_a_completion_streams_text_from_a_snapshot(window):
    _, address = window(StubTrainer())
    status, headers, body = post(address, {"prompt": "hello", "max_new_tokens": 12, "temperature": 1.0, "seed": 3})
    assert status == 200 and headers["Content-Type"] == "application/x-ndjson"
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert lines[0] == {"step": 7, "prompt_tokens": 6}
    assert lines[-1]["done"] is True and 0 <= lines[-1]["tokens"] <= 12
    again = post(address, {"prompt": "hello", "max_new_tokens": 12, "temperature": 1.0, "seed": 3})[2]
    assert again.decode().splitlines()[:-1] == body.decode().splitlines()[:-1], "deterministic in the seed"


def test_a_completion_samples_a_grown_snapshot_at_its_own_shape(window):
    """The snapshot carries its model config: weights taken after a growth are sampled at their
    own depth, whatever the trainer's config said when the request came."""
    from engine.layout import init_parameters

    trainer = StubTrainer()
    grown = replace(trainer.trainer.model_config, n_layer=3)
    trainer.snapshot = lambda timeout: (init_parameters(grown), 9, grown)
    _, address = window(trainer)
    status, _, body = post(address, {"prompt": "hello", "max_new_tokens": 5, "seed": 3})
    lines = [json.loads(line) for line in body.decode().splitlines()]
    assert status == 200 and lines[0]["step"] == 9 and lines[-1]["done"] is True


def test_the_live_figures_carry_the_depth_and_each_growth():
    from crawler.service.http.reports import live_figures

    trainer = StubTrainer()
    growths = [{"step": 40, "tokens_seen": 1000, "from": 1, "to": 2, "parameters": 12000}]
    trainer.figures = SimpleNamespace(**vars(trainer.figures), n_layer=2, parameters=12000, growths=growths)
    daemon = SimpleNamespace(config=Config(), clock=time.monotonic, writes=SimpleNamespace(blocked=None),
                             training_worker=lambda: trainer)
    live = live_figures(daemon)
    assert (live["n_layer"], live["parameters"], live["growths"]) == (2, 12000, growths)


def test_completions_beyond_max_generations_get_429(window):
    block = threading.Event()
    trainer = StubTrainer(block)
    _, address = window(trainer)
    first = threading.Thread(target=post, args=(address, {"prompt": "a", "max_new_tokens": 2}))
    first.start()
    try:
        assert trainer.entered.wait(WAIT)  # the first holds the only slot while its snapshot waits
        status, headers, body = post(address, {"prompt": "b"})
        assert status == 429 and headers["Retry-After"] and "max_generations" in error_of(body)
    finally:
        block.set()
        first.join(WAIT)


def test_without_a_model_a_completion_is_503(window):
    _, address = window(None)
    status, _, body = post(address, {"prompt": "a"})
    assert status == 503 and "not loaded yet" in error_of(body)


def test_the_event_stream_carries_logged_events_with_their_fields(window):
    w, address = window()
    connection = http.client.HTTPConnection(address, timeout=WAIT)
    connection.request("GET", f"/api/events?since={w.feed.seq}")
    response = connection.getresponse()
    assert response.status == 200 and response.getheader("Content-Type") == "text/event-stream"
    get_logger("ingest").info("file_skipped", path="/in/x.bin", reason="binary", detail="NUL bytes")
    event = None
    while event is None:
        line = response.fp.readline().decode()
        if line.startswith("data: "):
            found = json.loads(line[6:])
            event = found if found["event"] == "file_skipped" else None
    connection.close()
    assert event["reason"] == "binary" and event["component"] == "ingest" and event["level"] == "info"
    assert "timestamp" in event
    assert w.status.__self__.files[-1]["path"] == "/in/x.bin"


def test_stop_ends_the_streams_and_frees_the_port(window):
    w, address = window()
    connection = http.client.HTTPConnection(address, timeout=WAIT)
    connection.request("GET", "/api/events")
    response = connection.getresponse()
    assert response.status == 200
    w.stop()
    assert response.read() is not None  # the stream ends (the connection closes) rather than hanging
    connection.close()
    with pytest.raises(OSError):
        request(address, "GET", "/")


# ---------------------------------------------------------------------------------------------
# a running daemon


TOKEN = "test-token-123"


def url_of(daemon: DaemonProcess) -> str:
    return f"127.0.0.1:{daemon.wait_for('http_serving')[0]['port']}"


def get_json(address: str, path: str):
    status, _, body = request(address, "GET", path, headers={"Authorization": f"Bearer {TOKEN}"})
    assert status == 200, body
    return json.loads(body)


@pytest.fixture
def api_daemon(daemon_factory_http):
    return daemon_factory_http()


@pytest.fixture
def daemon_factory_http(tmp_path):
    started = []

    def start() -> DaemonProcess:
        (tmp_path / "inbox").mkdir(exist_ok=True)
        d = DaemonProcess(tmp_path / "state", [tmp_path / "inbox"],
                          env={"CRYSTALLINE_HTTP_LISTEN": "127.0.0.1:0", "CRYSTALLINE_HTTP_TOKEN": TOKEN,
                               "CRYSTALLINE_HTTP_GENERATION_CPU_SHARE": "0.05"})
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


@pytest.mark.slow
def test_the_api_of_a_running_daemon(api_daemon, tmp_path):
    d = api_daemon
    address = url_of(d)
    d.wait_for("daemon_ready")
    # the stream is open before the file is dropped: its file_ingested arrives on it
    connection = http.client.HTTPConnection(address, timeout=WAIT)
    connection.request("GET", f"/api/events?token={TOKEN}")
    stream = connection.getresponse()
    assert stream.status == 200
    for i in range(4):
        write_text_file(tmp_path / "inbox" / f"doc{i}.txt", seed=i, size=12000)
    seen = None
    while seen is None:
        line = stream.fp.readline().decode()
        if line.startswith("data: "):
            event = json.loads(line[6:])
            seen = event if event["event"] == "file_ingested" else None
    connection.close()
    assert seen["path"].endswith(".txt") and seen["tokens"] > 0

    d.wait_for("file_ingested", count=4)
    d.wait_for("eval_finished")  # checkpoint_every_steps = 20: an evaluation with each checkpoint
    checkpoint = d.wait_for("checkpoint_saved")[0]
    db = sqlite3.connect(tmp_path / "state" / "corpus.db")  # the store first: the API then holds at least this
    try:
        stored = {row[0]: row[1] for row in db.execute("SELECT status, count(*) FROM documents GROUP BY status")}
        evaluations = db.execute("SELECT id, step, val_bits_per_byte FROM evaluations ORDER BY id").fetchall()
        status = get_json(address, "/api/status")
        history = get_json(address, "/api/history")
        committed = {row[0] for row in db.execute("SELECT step FROM checkpoints")}
    finally:
        db.close()
    assert sum(status["documents"].values()) == sum(stored.values()) == 4
    assert status["daemon"]["running"] and status["live"]["step"] >= checkpoint["step"]
    assert status["last_checkpoint"]["step"] in committed and status["last_checkpoint"]["step"] >= checkpoint["step"]
    known = [(e["id"], e["step"], e["val_bits_per_byte"]) for e in history["evaluations"]]
    assert known[: len(evaluations)] == evaluations and len(known) >= 1
    later = get_json(address, f"/api/history?since={known[-1][0]}")
    assert all(e["id"] > known[-1][0] for e in later["evaluations"]), "the cursor skips what was seen"
    assert history["steps"] and history["tokens_per_step"] == 4 * 32

    # a completion from the live model while training steps go on
    status_code, _, body = request(address, "POST", "/api/generate",
                                   json.dumps({"prompt": "document 7\nalpha", "max_new_tokens": 60, "seed": 1}).encode(),
                                   {"Content-Type": "application/json", "Authorization": f"Bearer {TOKEN}"})
    assert status_code == 200
    lines = [json.loads(line) for line in body.decode().splitlines()]
    snapshot_step, done = lines[0]["step"], lines[-1]
    assert done["done"] and done["tokens"] >= 1 and "".join(line.get("text", "") for line in lines)
    finished = d.wait_for("generation_finished")[0]
    with d.cond:
        before = d.events[: d.events.index(finished)]
    assert any(e["event"] == "train_step" and e["step"] > snapshot_step for e in before), \
        "training stepped on while the completion ran"

    # refusals: 4xx with a reason, and the daemon runs on
    auth = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
    for body, headers, code, says in [
        (b"x" * (MAX_BODY_BYTES + 1), auth, 413, "larger than"),
        (b"{oops", auth, 400, "not valid JSON"),
        (json.dumps({"prompt": ["a"]}).encode(), auth, 400, "prompt must be a string"),
        (json.dumps({"prompt": "a"}).encode(), {"Content-Type": "application/json"}, 401, "token is required"),
    ]:
        got, _, answer = request(address, "POST", "/api/generate", body, headers)
        assert got == code and says in error_of(answer)
    assert d.proc.poll() is None and get_json(address, "/api/status")["daemon"]["running"]
    assert b"crystalline_training_steps_total" in request(address, "GET", "/metrics",
                                                          headers={"Authorization": f"Bearer {TOKEN}"})[2]
    assert d.stop() == 0
    assert not [e for e in d.events if e.get("level") == "error"]
