"""A daemon that refuses to start says so in exactly one line on stderr, and served nothing.

The real `crystalline run` subprocess on three broken states: a damaged database header, every
checkpoint file gone, and a store URL in a folder that does not exist. The daemon opens and
checks its state (store, tokenizer, checkpoints) before it listens on any port, so stderr holds
the one-line error alone and stdout's events hold no `http_serving` or `metrics_serving`.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import structlog

from crawler.cli.main import main

pytestmark = pytest.mark.slow

TINY = ["--d-model", "16", "--layers", "1", "--heads", "2", "--context", "16", "--batch-size", "4", "--threads", "1"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def damaged_header(state: Path, env: dict) -> None:
    state.mkdir()
    (state / "corpus.db").write_bytes(b"not a database at all" * 200)


def checkpoints_gone(state: Path, env: dict) -> None:
    text = state.parent / "text.txt"
    text.write_text("the lattice grows in the cold cave and the crystal grows slowly\n" * 60)
    try:
        assert main(["train", str(text), *TINY, "--steps", "2", "--state-dir", str(state)]) == 0
    finally:
        structlog.reset_defaults()
    files = list((state / "checkpoints").glob("*.safetensors"))
    assert files
    for path in files:
        path.unlink()


def store_in_a_missing_folder(state: Path, env: dict) -> None:
    env["CRYSTALLINE_STORE_URL"] = f"sqlite:///{state.parent / 'no-such-folder' / 'corpus.db'}"


@pytest.mark.parametrize("breakage", [damaged_header, checkpoints_gone, store_in_a_missing_folder])
def test_a_refusal_to_start_is_one_line_on_stderr_and_nothing_was_served(tmp_path, breakage, capsys):
    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith("CRYSTALLINE_")}
    breakage(state, env)
    capsys.readouterr()
    http, metrics = free_port(), free_port()
    out = subprocess.run(
        [sys.executable, "-m", "crawler", "run", "--state-dir", str(state), "--watch", str(tmp_path / "inbox"),
         "--http", f"127.0.0.1:{http}", "--metrics", f"127.0.0.1:{metrics}", "--log-format", "json"],
        capture_output=True, timeout=300, env=env, text=True)
    assert out.returncode not in (0, 1), (out.returncode, out.stderr)
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("crystalline: error: "), out.stderr
    logged = [json.loads(line)["event"] for line in out.stdout.splitlines() if line.startswith("{")]
    assert "daemon_stopped" in logged, logged
    assert not {"http_serving", "metrics_serving"} & set(logged), logged
