"""The image, built from the Dockerfile and run with podman as docs/DEPLOY.md runs it with docker:
a host folder as /inbox, a named volume as /data, a 90 s grace period to stop, a second container
resuming on the same volume.

Needs root, podman, runc and mmdebstrap (.ci/deploy-tests installs them and runs this); skipped
with the reason otherwise. Waits poll the container's logs with a deadline that only guards
against a hang; the durations it records go to docs/BENCHMARKS.md, never into an assertion.
"""

from __future__ import annotations

import json
import os
import random
import time
import uuid

import pytest

from .tools import LIMITS, events, first, podman, record, wait_for

pytestmark = pytest.mark.slow

# a model small enough to train at once on 2 cores; status and health.json every second
TINY = {
    "CRYSTALLINE_MODEL_CONTEXT_LENGTH": "32", "CRYSTALLINE_MODEL_D_MODEL": "32",
    "CRYSTALLINE_MODEL_N_LAYER": "1", "CRYSTALLINE_MODEL_N_HEAD": "2",
    "CRYSTALLINE_TRAIN_BATCH_SIZE": "4", "CRYSTALLINE_TRAIN_SEQ_LEN": "32",
    "CRYSTALLINE_TRAIN_WARMUP_STEPS": "5", "CRYSTALLINE_TRAIN_THREADS": "2",
    "CRYSTALLINE_DAEMON_LOG_EVERY": "200", "CRYSTALLINE_DAEMON_STATUS_INTERVAL_SECONDS": "1",
    "CRYSTALLINE_WATCH_SETTLE_SECONDS": "0.3",
}


def notes(seed: int = 1) -> str:
    rng = random.Random(seed)
    words = "the river stone light north wind crystal and of to a in".split()
    return "".join(" ".join(rng.choice(words) for _ in range(12)) + ".\n" for _ in range(400))


class Container:
    """One `podman run -d` of the image; removed (with -f) by the test's cleanup."""

    def __init__(self, image: str, name: str, volume: str, inbox) -> None:
        self.name = name
        env = [arg for key, value in TINY.items() for arg in ("-e", f"{key}={value}")]
        self.started = time.monotonic()
        podman("run", "-d", "--name", name, *LIMITS, "-v", f"{volume}:/data", "-v", f"{inbox}:/inbox",
               *env, image)

    def logs(self) -> list[dict]:
        return events(podman("logs", self.name).stdout.decode(errors="replace"))

    def wait_event(self, event: str, timeout: float = 120, **fields) -> dict:
        return wait_for(f"{event} {fields or ''} in the logs of {self.name}",
                        lambda: first(self.logs(), event, **fields), timeout)

    def healthy(self) -> bool:
        return podman("healthcheck", "run", self.name, check=False).returncode == 0

    def stop(self) -> float:
        t0 = time.monotonic()
        podman("stop", "-t", "90", self.name, timeout=120)
        return time.monotonic() - t0

    def exit_code(self) -> int:
        return int(podman("inspect", self.name, "--format", "{{.State.ExitCode}}").stdout.decode())


@pytest.fixture
def names():
    made = {"containers": [], "volume": f"crystalline-ci-{uuid.uuid4().hex[:8]}"}
    yield made
    for name in made["containers"]:
        podman("rm", "-f", name, check=False)
    podman("volume", "rm", "-f", made["volume"], check=False)


def test_image_ingests_trains_stops_with_a_checkpoint_and_resumes_as_uid_10001(image, tmp_path, names):
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    os.chown(inbox, 10001, 10001)  # the image runs as uid/gid 10001 (docs/DEPLOY.md)
    volume = names["volume"]

    # 1. cold start on an empty volume, until `crystalline status --health` passes in the container
    names["containers"].append(f"{volume}-a")
    first_run = Container(image, f"{volume}-a", volume, inbox)
    wait_for("the health check to pass", first_run.healthy, timeout=300)
    healthy_s = time.monotonic() - first_run.started

    # 2. a dropped text file is ingested and trained on
    staged = tmp_path / "notes.txt"
    staged.write_text(notes())
    os.rename(staged, inbox / "notes.txt")  # appears whole
    ingested = first_run.wait_event("file_ingested", path="/inbox/notes.txt")
    assert ingested["tokens"] > 0 and not ingested.get("duplicate")
    first_run.wait_event("train_step")
    assert first_run.healthy()

    # 3. every process in the container runs as uid and gid 10001; tini is PID 1
    probe = ("import os; print(open('/proc/1/cmdline').read().split(chr(0))[0]); "
             "[print(p, open(f'/proc/{p}/status').read().split('Uid:')[1].split()[:4], "
             "open(f'/proc/{p}/status').read().split('Gid:')[1].split()[:4]) "
             "for p in os.listdir('/proc') if p.isdigit()]")
    lines = podman("exec", first_run.name, "python", "-c", probe).stdout.decode().splitlines()
    assert lines[0] == "/usr/bin/tini", lines
    assert len(lines) >= 3, lines  # tini, the daemon and this probe at least
    for line in lines[1:]:
        assert line.count("'10001'") == 8, f"a process not running as 10001:10001: {line}"

    # 4. the operator's commands exactly as docs/DEPLOY.md gives them: `docker exec crystalline
    # crystalline pause` from the image's working directory, which is not the state directory;
    # only CRYSTALLINE_STATE_DIR (set by the image) says where the state is
    def operator(*argv: str):
        return podman("exec", first_run.name, "crystalline", *argv, check=False)

    paused = operator("pause")
    assert paused.returncode == 0, paused.stderr.decode()
    held = first_run.wait_event("training_paused")
    assert held["checkpoint_step"] > 0, held
    first_run.wait_event("status", paused=True)  # health.json says so (at once, not at the next interval)
    shown = operator("status")
    assert shown.returncode == 0, shown.stderr.decode()
    assert "/data" in shown.stdout.decode() and "paused" in shown.stdout.decode(), shown.stdout.decode()
    sampled = operator("generate", "the river", "--max-new-tokens", "20")
    assert sampled.returncode == 0, sampled.stderr.decode()
    assert sampled.stdout.startswith(b"the river") and len(sampled.stdout) > len("the river\n")
    resumed = operator("resume")
    assert resumed.returncode == 0, resumed.stderr.decode()
    first_run.wait_event("training_unpaused")

    # 5. stop with a 90 s grace: exit 0, and the shutdown names the checkpoint it stands on
    stop_s = first_run.stop()
    assert first_run.exit_code() == 0
    logged = first_run.logs()
    stopped = first(logged, "trainer_stopped")
    assert stopped is not None, "no trainer_stopped event"
    assert isinstance(stopped["checkpoint_step"], int) and stopped["checkpoint_step"] > 0, stopped
    assert stopped["checkpoint_path"].startswith("/data/checkpoints/"), stopped
    assert stopped["unsaved_steps"] == 0, stopped
    assert first(logged, "daemon_stopped", reason="signal", exit_code=0) is not None

    # 6. a new container on the same volume resumes from that checkpoint and ingests nothing again
    names["containers"].append(f"{volume}-b")
    second_run = Container(image, f"{volume}-b", volume, inbox)
    loaded = second_run.wait_event("checkpoint_loaded")
    assert loaded["step"] == stopped["checkpoint_step"] and loaded["path"] == stopped["checkpoint_path"]
    rescan = second_run.wait_event("rescan_finished", reason="start")
    assert rescan["files"] == 1, rescan
    wait_for("the health check to pass after the restart", second_run.healthy, timeout=300)
    status = json.loads(podman("exec", second_run.name, "crystalline", "status", "--json").stdout)
    assert sum(status["documents"].values()) == 1, status["documents"]
    second_stop_s = second_run.stop()
    assert second_run.exit_code() == 0
    # the start's scan handed the file over again (its watcher remembers nothing); the ingest
    # worker read it as stored already: not ingested, and not left unread at the stop either
    logged = second_run.logs()
    assert first(logged, "file_ingested") is None
    assert first(logged, "daemon_stopped", reason="signal", exit_code=0, files_left=0) is not None

    record(**{"container: start to healthy (cold, empty volume)": f"{healthy_s:.1f} s",
              "container: podman stop -t 90 (training, final checkpoint)": f"{stop_s:.1f} s",
              "container: second stop": f"{second_stop_s:.1f} s"})
