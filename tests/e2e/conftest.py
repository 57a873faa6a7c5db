"""Run the real daemon as a subprocess on temporary folders and follow its JSON log."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from crawler.service.child import DaemonChild

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


class DaemonProcess(DaemonChild):
    """One `crystalline run` subprocess on TINY_CONFIG; its JSON events collected by a reader
    thread (crawler.service.child, which bench/daemon.py uses too)."""

    def __init__(self, state: Path, roots: list[Path], env: dict | None = None, checkpoint_every: int = 20,
                 max_file_bytes: int = 1_000_000, keep_checkpoints: int = 3):
        self.roots = roots
        state.mkdir(parents=True, exist_ok=True)
        config = TINY_CONFIG.format(roots=", ".join(json.dumps(str(r)) for r in roots),
                                    checkpoint_every=checkpoint_every, max_file_bytes=max_file_bytes,
                                    keep_checkpoints=keep_checkpoints)
        (state / "crystalline.toml").write_text(config)
        super().__init__(state, env=env)


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
