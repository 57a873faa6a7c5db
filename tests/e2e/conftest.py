"""Run the real daemon as a subprocess on temporary folders and follow its JSON log."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

TINY_CONFIG = """
[watch]
roots = [{roots}]
settle_seconds = 0.3
rescan_interval_seconds = 5.0

[daemon]
checkpoint_every_steps = {checkpoint_every}
keep_checkpoints = {keep_checkpoints}
idle = "replay"  # never plateau on these tiny files: a stop always finds the trainer training
checkpoint_every_seconds = 600.0
log_every = 5
status_interval_seconds = 1.0
after_ingest = "keep"
health_max_age_seconds = 10.0

[model]
context_length = 32
d_model = 32
n_layer = 1
n_head = 2

[train]
batch_size = 4
seq_len = 32
warmup_steps = 5
threads = 2

[extract]
max_file_bytes = {max_file_bytes}

[log]
level = "info"
format = "json"

[http]
listen = "off"  # several test daemons at once must not race for one port (tests of it set CRYSTALLINE_HTTP_LISTEN)
"""


class DaemonProcess:
    """One `crystalline run` subprocess; its stdout JSON events collected by a reader thread."""

    def __init__(self, state: Path, roots: list[Path], env: dict | None = None, checkpoint_every: int = 20,
                 max_file_bytes: int = 1_000_000, keep_checkpoints: int = 3):
        self.state, self.roots = state, roots
        state.mkdir(parents=True, exist_ok=True)
        config = TINY_CONFIG.format(roots=", ".join(json.dumps(str(r)) for r in roots),
                                    checkpoint_every=checkpoint_every, max_file_bytes=max_file_bytes,
                                    keep_checkpoints=keep_checkpoints)
        (state / "crystalline.toml").write_text(config)
        self.events: list[dict] = []
        self.raw: list[str] = []
        self.lock = threading.Condition()
        full_env = dict(os.environ, PYTHONUNBUFFERED="1") | (env or {})
        self.proc = subprocess.Popen([sys.executable, "-m", "crawler", "run", "--state-dir", str(state)],
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=full_env, text=True)
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self.lock:
                self.raw.append(line)
                try:
                    self.events.append(json.loads(line))
                except json.JSONDecodeError:
                    pass
                self.lock.notify_all()

    def find(self, event: str, **fields) -> list[dict]:
        with self.lock:
            return [e for e in self.events if e.get("event") == event
                    and all(e.get(k) == v for k, v in fields.items())]

    def wait_for(self, event: str, timeout: float = 60.0, count: int = 1, **fields) -> list[dict]:
        """The first `count` events named `event` (with these fields) the daemon logged, waiting
        up to `timeout` s. Each wake-up reads only the events that arrived since the last one: a
        daemon logging thousands of events must not make the waiter rescan them all for every
        line (under load the reader thread then starves and the wait times out)."""
        return self._wait(0, event, timeout, count, fields, f"no {count} x {event} {fields}")

    def wait_for_after(self, earlier: dict, event: str, timeout: float = 60.0, **fields) -> dict:
        """The first `event` (with fields) logged after the event `earlier`."""
        with self.lock:
            index = self.events.index(earlier)
        return self._wait(index + 1, event, timeout, 1, fields,
                          f"no {event} {fields} after {earlier.get('event')}")[0]

    def _wait(self, start: int, event: str, timeout: float, count: int, fields: dict, missing: str) -> list[dict]:
        deadline = time.monotonic() + timeout
        found: list[dict] = []
        with self.lock:
            while True:
                for e in self.events[start:]:
                    if e.get("event") == event and all(e.get(k) == v for k, v in fields.items()):
                        found.append(e)
                        if len(found) >= count:
                            return found
                start = len(self.events)
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise AssertionError(f"daemon exited {self.proc.returncode} before {event}:\n{self.tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise AssertionError(f"{missing} within {timeout} s:\n{self.tail()}")
                self.lock.wait(min(remaining, 0.5))

    def tail(self, lines: int = 40) -> str:
        with self.lock:
            return "".join(self.raw[-lines:])

    def stop(self, sig=signal.SIGTERM, timeout: float = 90.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=5)


@pytest.fixture
def daemon_factory(tmp_path):
    started: list[DaemonProcess] = []

    def start(**kw) -> DaemonProcess:
        kw.setdefault("roots", [tmp_path / "inbox"])
        d = DaemonProcess(tmp_path / "state", **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.kill()


def corpus_rows(state: Path) -> list[dict]:
    """Every documents row of the state directory's SQLite database."""
    import sqlite3

    connection = sqlite3.connect(state / "corpus.db")
    connection.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in connection.execute("SELECT * FROM documents ORDER BY id")]
    finally:
        connection.close()


def write_text_file(path: Path, seed: int, size: int = 3000) -> Path:
    """A unique, learnable text file."""
    import random

    rng = random.Random(seed)
    words = ["alpha", "beta", "gamma", "delta", "river", "stone", "light", "crystal", "north", "wind"]
    text = f"document {seed}\n" + " ".join(rng.choice(words) for _ in range(size // 6)) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".tmp")
    tmp.write_text(text)
    tmp.rename(path)  # appears complete, as a download or a copy tool finishing would
    return path
