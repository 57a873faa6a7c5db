"""End-to-end: the real `crystalline run` subprocess on temporary folders."""

from __future__ import annotations

import json
import os
import random
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from .conftest import corpus_rows, write_text_file

pytestmark = pytest.mark.slow

IN_STREAM = ("queued", "trained")


def crystalline(*args, timeout=120) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-m", "crawler", *map(str, args)], capture_output=True, timeout=timeout)
    # a barely trained model may generate bytes that are not UTF-8
    out.stdout, out.stderr = (b.decode("utf-8", "replace") for b in (out.stdout, out.stderr))
    return out


def test_drop_files_train_checkpoint_generate(tmp_path, daemon_factory):
    inbox = tmp_path / "inbox"
    d = daemon_factory()
    d.wait_for("daemon_ready")
    for i in range(3):
        write_text_file(inbox / f"doc{i}.txt", seed=i)
    ingested = d.wait_for("file_ingested", count=3)
    assert {Path(e["path"]).name for e in ingested} == {"doc0.txt", "doc1.txt", "doc2.txt"}
    assert all(e["tokens"] > 0 and e["bytes"] > 0 and "ms" in e and e["doc_id"] for e in ingested)
    steps = d.wait_for("train_step", count=2)
    assert all(key in steps[-1] for key in ("step", "loss", "crystalline_loss", "lr", "grad_norm", "tokens_per_s"))
    d.wait_for("status")
    assert d.stop() == 0
    # every stop names the checkpoint it stands on: the shutdown checkpoint, or the scheduled one
    # just before it when nothing was left to save; it covers every step logged
    stopped = d.find("trainer_stopped")[-1]
    assert stopped["unsaved_steps"] == 0 and stopped["checkpoint_step"] >= max(e["step"] for e in d.find("train_step"))
    assert Path(stopped["checkpoint_path"]).exists()
    assert stopped["checkpoint_step"] == d.find("checkpoint_saved")[-1]["step"]
    names = [e["event"] for e in d.events]
    assert names.index("daemon_stopping") < names.index("daemon_stopped")
    assert names[-1] == "daemon_stopped"
    rows = corpus_rows(tmp_path / "state")
    assert sorted(Path(r["source_path"]).name for r in rows if r["status"] in IN_STREAM) == ["doc0.txt", "doc1.txt", "doc2.txt"]
    out = crystalline("generate", "alpha", "--max-new-tokens", "20", "--state-dir", tmp_path / "state")
    assert out.returncode == 0, out.stderr
    assert out.stdout.startswith("alpha") and len(out.stdout) > len("alpha")


def test_restart_resumes_from_the_checkpoint(tmp_path, daemon_factory):
    inbox = tmp_path / "inbox"
    d = daemon_factory()
    write_text_file(inbox / "a.txt", seed=1, size=20_000)
    d.wait_for("train_step", count=3)
    assert d.stop() == 0
    step = d.find("trainer_stopped")[-1]["checkpoint_step"]
    d2 = daemon_factory()
    loaded = d2.wait_for("checkpoint_loaded")[0]
    assert loaded["step"] == step
    d2.wait_for("train_step", timeout=60)
    assert d2.find("train_step")[0]["step"] > step
    assert d2.stop() == 0
    # the file was seen before: not ingested twice
    rows = corpus_rows(tmp_path / "state")
    assert [r["status"] for r in rows if Path(r["source_path"]).name == "a.txt"].count("queued") + \
        [r["status"] for r in rows if Path(r["source_path"]).name == "a.txt"].count("trained") == 1


def test_bad_inputs_are_reported_and_the_daemon_keeps_running(tmp_path, daemon_factory):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    d = daemon_factory(max_file_bytes=50_000)
    d.wait_for("daemon_ready")
    (inbox / "binary.bin").write_bytes(bytes(range(256)) * 40)
    (inbox / "empty.txt").write_bytes(b"")
    (inbox / "huge.txt").write_text("x" * 60_000)
    (inbox / "bad-encoding.txt").write_bytes(bytes([0x80, 0x81, 0x8d, 0x8f, 0x90, 0x9d]) * 50 + b"\x00\x01\x02\x03")
    outside = tmp_path / "outside.txt"
    outside.write_text("secret text outside the watched folder\n")
    os.symlink(outside, inbox / "link.txt")
    os.symlink(inbox / "loop-b", inbox / "loop-a")  # a symlink loop
    os.symlink(inbox / "loop-a", inbox / "loop-b")
    os.mkfifo(inbox / "pipe.txt")
    (inbox / "#autosave.txt#").write_text("an editor's autosave, never ingested\n")
    with open(os.path.join(os.fsencode(inbox), b"caf\xe9-latin1.txt"), "w") as f:  # a name that is not UTF-8
        f.write("a good text file whose name is not UTF-8\n" * 20)
    gone = inbox / "gone.txt"
    gone.write_text("here for a moment")
    gone.unlink()
    # a file still being written for several seconds, open throughout: however long the writer
    # pauses (on a busy machine, longer than settle_seconds), it is ingested once, when closed
    slow = inbox / "slow.txt"
    with open(slow, "w") as f:
        for i in range(12):
            f.write(f"line {i} of a file written slowly\n" * 20)
            f.flush()
            time.sleep(0.25)
    # a new subfolder with files, and a burst of small files
    (inbox / "sub" / "deeper").mkdir(parents=True)
    write_text_file(inbox / "sub" / "deeper" / "nested.txt", seed=7)
    burst = inbox / "burst"
    burst.mkdir()
    for i in range(1000):
        (burst / f"b{i:04d}.txt").write_text(f"small file number {i} with its own words\n")

    expected_skips = {"binary.bin": "binary", "empty.txt": "empty", "huge.txt": "too_large",
                      "link.txt": "outside_root", "pipe.txt": "unsupported", "loop-a": "unreadable",
                      "loop-b": "unreadable"}
    for name, reason in expected_skips.items():
        d.wait_for("file_skipped", timeout=60, reason=reason)
    last = d.wait_for("file_ingested", count=1003, timeout=120)[-1]
    # a full rescan after the last file was stored proves that nothing is left to hand over
    d.wait_for_after(last, "rescan_finished", timeout=30, reason="interval")
    assert d.proc.poll() is None, "the daemon keeps running"
    ingested = [Path(e["path"]) for e in d.find("file_ingested")]
    assert len(ingested) == len(set(ingested)) == 1003, "every good file exactly once"
    assert any("caf\\xe9-latin1.txt" in str(p) for p in ingested), "the name is logged readably"
    assert "#autosave.txt#" not in {p.name for p in ingested}
    slow_events = [e for e in d.find("file_ingested") if Path(e["path"]).name == "slow.txt"]
    assert slow_events[0]["bytes"] == slow.stat().st_size, "ingested complete, not half-written"
    skipped = {Path(e["path"]).name: e["reason"] for e in d.find("file_skipped")}
    for name, reason in expected_skips.items():
        assert skipped[name] == reason
    assert skipped.get("bad-encoding.txt") in ("binary", "undecodable")
    assert len([e for e in d.find("file_skipped") if Path(e["path"]).name == "pipe.txt"]) == 1, "reported once"
    assert "gone.txt" not in {p.name for p in ingested}
    assert d.stop() == 0


def test_sigterm_checkpoints_then_exits_zero_and_health(tmp_path, daemon_factory):
    d = daemon_factory()
    write_text_file(tmp_path / "inbox" / "a.txt", seed=3, size=10_000)
    d.wait_for("train_step")
    d.wait_for("status")
    health = crystalline("status", "--health", "--state-dir", tmp_path / "state")
    assert health.returncode == 0, health.stdout + health.stderr
    status = json.loads(crystalline("status", "--json", "--state-dir", tmp_path / "state").stdout)
    assert status["daemon"]["running"] and status["daemon"]["pid"] == d.proc.pid
    assert d.stop(signal.SIGTERM) == 0
    names = [e["event"] for e in d.events]
    assert names.index("daemon_stopping") < names.index("daemon_stopped") == len(names) - 1
    # the stop names the checkpoint it stands on, and it covers every step logged
    stopped = d.find("trainer_stopped")[-1]
    trained = max(e["step"] for e in d.events if e["event"] == "train_step")
    assert stopped["unsaved_steps"] == 0 and stopped["checkpoint_step"] >= trained
    assert crystalline("status", "--health", "--state-dir", tmp_path / "state").returncode == 1


def test_sighup_reloads_roots(tmp_path, daemon_factory):
    d = daemon_factory()
    d.wait_for("daemon_ready")
    second = tmp_path / "second"
    second.mkdir()
    config = (tmp_path / "state" / "crystalline.toml").read_text()
    config = config.replace(f'roots = ["{tmp_path / "inbox"}"]', f'roots = ["{tmp_path / "inbox"}", "{second}"]')
    (tmp_path / "state" / "crystalline.toml").write_text(config)
    d.proc.send_signal(signal.SIGHUP)
    reloaded = d.wait_for("config_reloaded")[0]
    assert str(second) in reloaded["roots"]
    write_text_file(second / "new.txt", seed=11)
    d.wait_for("file_ingested", timeout=30)
    assert d.stop() == 0


def test_notify_protocol(tmp_path, daemon_factory):
    address = str(tmp_path / "notify.sock")
    server = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    server.bind(address)
    server.settimeout(60)
    try:
        d = daemon_factory(env={"NOTIFY_SOCKET": address, "WATCHDOG_USEC": "2000000"})
        messages = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any("WATCHDOG=1" in m for m in messages):
            messages.append(server.recv(4096).decode())
        assert any(m.startswith("READY=1") for m in messages), messages
        assert any("WATCHDOG=1" in m for m in messages)
        d.proc.send_signal(signal.SIGTERM)
        while not any("STOPPING=1" in m for m in messages):
            messages.append(server.recv(4096).decode())
        assert d.proc.wait(timeout=90) == 0  # the one SIGTERM: a second would stop at once
        d.reader.join(timeout=5)
    finally:
        server.close()


def test_kill_9_in_a_loop_loses_nothing_and_counts_nothing_twice(tmp_path, daemon_factory):
    inbox = tmp_path / "inbox"
    rng = random.Random(1234)
    written = 0
    for round_ in range(20):
        d = daemon_factory(checkpoint_every=5)
        for _ in range(rng.randint(1, 4)):
            write_text_file(inbox / f"r{round_:02d}" / f"f{written:03d}.txt", seed=written, size=rng.randint(500, 6000))
            written += 1
        time.sleep(rng.uniform(1.0, 4.0))  # somewhere in start-up, ingest or training
        d.kill()
    d = daemon_factory(checkpoint_every=5)
    d.wait_for("daemon_ready", timeout=60)
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        rows = corpus_rows(tmp_path / "state")
        if len([r for r in rows if r["status"] in IN_STREAM]) == written:
            break
        time.sleep(1)
    assert d.stop() == 0
    rows = corpus_rows(tmp_path / "state")
    in_stream = [r["source_path"] for r in rows if r["status"] in IN_STREAM]
    assert len(in_stream) == len(set(in_stream)) == written, "every document present exactly once"
    import sqlite3

    connection = sqlite3.connect(tmp_path / "state" / "corpus.db")
    try:
        position, step = connection.execute("SELECT stream_position, step FROM training_cursor").fetchone()
        latest = connection.execute("SELECT step, path, stream_position FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        connection.close()
    assert latest is not None and (latest[0], latest[2]) == (step, position)
    from engine import load_checkpoint

    checkpoint = load_checkpoint(tmp_path / "state" / latest[1])  # rows name files relative to the state dir
    assert checkpoint.step == step and checkpoint.extra["stream_position"] == position, \
        "the cursor is the loaded checkpoint's"


def test_train_and_the_daemon_are_one_loop(tmp_path, daemon_factory):
    """`train` and the daemon, from the same stored corpus, seed and step count, write the same
    checkpoint; a daemon then started on what `train` wrote resumes it and deletes none of it."""
    from engine import load_checkpoint

    from .conftest import DaemonProcess

    corpus, empty = tmp_path / "corpus", tmp_path / "empty"
    empty.mkdir()
    for i in range(3):
        write_text_file(corpus / f"c{i}.txt", seed=100 + i, size=4000)
    state = tmp_path / "state"
    assert crystalline("ingest", corpus, "--state-dir", state).returncode == 0
    d = daemon_factory(roots=[empty], checkpoint_every=4, keep_checkpoints=1000)
    d.wait_for("checkpoint_saved", step=8, timeout=120)
    assert d.stop() == 0

    trained = tmp_path / "trained"
    trained.mkdir()
    (trained / "crystalline.toml").write_text((state / "crystalline.toml").read_text())  # the same config
    out = crystalline("train", corpus, "--steps", "8", "--state-dir", trained)
    assert out.returncode == 0, out.stderr
    by_daemon = load_checkpoint(state / "checkpoints" / "ckpt-000000008.safetensors")
    by_train = load_checkpoint(trained / "checkpoints" / "ckpt-000000008.safetensors")
    assert by_daemon.extra["command"] == "run" and by_train.extra["command"] == "train"
    for a, b in ((by_daemon.params, by_train.params), (by_daemon.m, by_train.m), (by_daemon.v, by_train.v)):
        assert np.array_equal(a, b)
    assert by_daemon.extra["stream_position"] == by_train.extra["stream_position"]

    written = sorted(p.name for p in (trained / "checkpoints").iterdir())
    d2 = DaemonProcess(trained, [empty], checkpoint_every=4)
    try:
        assert d2.wait_for("checkpoint_loaded", timeout=60)[0]["step"] == 8
        d2.wait_for("checkpoint_saved", step=24, timeout=120)  # beyond keep_checkpoints (3) of its own
        assert d2.stop() == 0
    finally:
        d2.kill()
    left = sorted(p.name for p in (trained / "checkpoints").iterdir())
    assert set(written) <= set(left), "the daemon deleted a checkpoint that train wrote"
    own = [p for p in left if p not in written and p.startswith("ckpt-")]
    assert len(own) == 3, left  # its own rolling checkpoints, pruned to keep_checkpoints


def test_metrics_scraped_from_a_running_daemon_agree_with_its_events(tmp_path, daemon_factory):
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families

    with socket.socket() as probe:  # a free port
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    d = daemon_factory(env={"CRYSTALLINE_METRICS_LISTEN": f"127.0.0.1:{port}"})
    d.wait_for("metrics_serving")
    for i in range(3):
        write_text_file(tmp_path / "inbox" / f"m{i}.txt", seed=40 + i)
    (tmp_path / "inbox" / "empty.txt").write_bytes(b"")
    d.wait_for("file_ingested", count=3)
    d.wait_for("file_skipped", reason="empty")
    d.wait_for("train_step", count=2)
    last_status = d.wait_for("status", count=2)[-1]  # a status after training began
    logged_step = max(e["step"] for e in d.find("train_step"))
    text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
    found = {(s.name, tuple(sorted(s.labels.items()))): s.value
             for family in text_string_to_metric_families(text) for s in family.samples}
    ingested = d.find("file_ingested")
    assert found[("crystalline_files_total", (("reason", ""), ("result", "ingested")))] == len(ingested) == 3
    assert found[("crystalline_files_total", (("reason", "empty"), ("result", "skipped")))] == 1
    assert found[("crystalline_ingested_bytes_total", ())] == sum(e["bytes"] for e in ingested)
    assert found[("crystalline_ingested_tokens_total", ())] == sum(e["tokens"] for e in ingested)
    assert found[("crystalline_training_step", ())] >= logged_step  # training goes on between log and scrape
    assert found[("crystalline_training_threads", ())] == last_status["threads"]
    assert any(name == "crystalline_build_info" for name, _ in found)
    assert d.stop() == 0


def test_operator_controls_on_a_running_daemon(tmp_path, daemon_factory):
    """SIGUSR1 writes a checkpoint now; `pause` holds training (after a checkpoint) while ingest
    goes on; `resume` lets it go on."""
    d = daemon_factory(checkpoint_every=100_000)
    write_text_file(tmp_path / "inbox" / "a.txt", seed=5, size=20_000)
    d.wait_for("train_step", count=2)
    d.proc.send_signal(signal.SIGUSR1)
    requested = d.wait_for("checkpoint_saved", reason="requested")[0]
    assert d.proc.poll() is None and Path(requested["path"]).exists()
    assert crystalline("pause", "--state-dir", tmp_path / "state").returncode == 0
    paused = d.wait_for("training_paused")[0]
    write_text_file(tmp_path / "inbox" / "b.txt", seed=6)
    d.wait_for("file_ingested", count=2)  # ingest goes on while training is held
    assert max(e["step"] for e in d.find("train_step")) <= paused["step"]
    assert paused["checkpoint_step"] == paused["step"], "the steps before the pause are checkpointed"
    assert crystalline("resume", "--state-dir", tmp_path / "state").returncode == 0
    d.wait_for("training_unpaused")
    d.wait_for_after(d.find("training_unpaused")[0], "train_step")
    assert d.stop() == 0
