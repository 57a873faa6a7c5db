"""systemd/crystalline.service as shipped, run by a real systemd (PID 1 of a privileged container):
start on READY, the dynamic user and sandbox, ingest, STATUS=, reload, journal priorities, a clean
stop with a final checkpoint, a resume, and the watchdog restarting a stalled daemon.

The package goes in as docs/DEPLOY.md installs it: the locked dependencies into /opt/crystalline
(the host image, tests/deploy/systemd-host.Containerfile), the wheel built from this checkout,
`crystalline` linked into /usr/local/bin where the unit's ExecStart looks. Settings go where an
operator puts them, /etc/crystalline/crystalline.env; the unit itself is copied unchanged.
Needs root, podman, runc and mmdebstrap (.ci/deploy-tests); skipped with the reason otherwise.
"""

from __future__ import annotations

import json
import time
import uuid

import pytest

from .test_container import TINY, notes
from .tools import LIMITS, REPO, events, first, podman, record, wait_for

pytestmark = pytest.mark.slow

UNIT = "crystalline"
INBOX = "/var/lib/crystalline/inbox"


class Host:
    """A container whose PID 1 is systemd; commands run in it with `podman exec`."""

    def __init__(self, image: str, name: str, wheel) -> None:
        self.name = name
        podman("run", "-d", "--name", name, "--privileged", "--systemd=always", "--network", "host", *LIMITS,
               "-v", f"{wheel.parent}:/wheels:ro", image)

    def sh(self, script: str, check: bool = True, input: bytes | None = None, timeout: float = 600) -> str:
        args = ["exec", *(["-i"] if input is not None else []), self.name, "sh", "-c", script]
        return podman(*args, check=check, input=input, timeout=timeout).stdout.decode(errors="replace")

    def show(self, prop: str) -> str:
        return self.sh(f"systemctl show {UNIT} -p {prop} --value").strip()

    def journal(self, *options: str) -> str:
        return self.sh(f"journalctl -u {UNIT} --no-pager {' '.join(options)}")

    def invocation_events(self, invocation: str) -> list[dict]:
        """The JSON events of one run of the service (one InvocationID)."""
        return events(self.sh(f"journalctl --no-pager -o cat _SYSTEMD_INVOCATION_ID={invocation}"))

    def wait_event(self, invocation: str, event: str, timeout: float = 180, **fields) -> dict:
        return wait_for(f"{event} {fields or ''} in the journal",
                        lambda: first(self.invocation_events(invocation), event, **fields), timeout)


@pytest.fixture
def host(systemd_host, wheel):
    name = f"crystalline-ci-systemd-{uuid.uuid4().hex[:8]}"
    try:
        made = Host(systemd_host, name, wheel)
        yield made
    finally:
        podman("rm", "-f", "-t", "0", name, check=False)


def test_unit_runs_under_systemd_ready_sandboxed_reloadable_watched_and_stops_cleanly(host, wheel):
    wait_for("systemd to finish booting",
             lambda: host.sh("systemctl is-system-running", check=False).strip() in ("running", "degraded"), 120)
    # --- install as docs/DEPLOY.md says; the unit as shipped, settings in the environment file
    host.sh(f"/opt/crystalline/bin/pip install --quiet --no-deps /wheels/{wheel.name} && /opt/crystalline/bin/pip check"
            " && ln -sf /opt/crystalline/bin/crystalline /usr/local/bin/crystalline")
    host.sh("cat > /etc/systemd/system/crystalline.service", input=(REPO / "systemd" / "crystalline.service").read_bytes())
    settings = "".join(f"{key}={value}\n" for key, value in TINY.items())
    host.sh("mkdir -p /etc/crystalline && cat > /etc/crystalline/crystalline.env", input=settings.encode())
    host.sh("systemctl daemon-reload")

    # --- `systemctl start` returns once the daemon sent READY=1 (Type=notify), not before
    t0 = time.monotonic()
    host.sh(f"systemctl start {UNIT}")
    start_s = time.monotonic() - t0
    assert host.show("ActiveState") == "active"
    run1 = host.show("InvocationID")
    assert first(host.invocation_events(run1), "daemon_ready") is not None, "started before daemon_ready"

    # --- a dynamic user, no privileges, the system call filter
    pid = host.show("MainPID")
    status = dict(line.split(":", 1) for line in host.sh(f"cat /proc/{pid}/status").splitlines() if ":" in line)
    uid = int(status["Uid"].split()[0])
    assert host.show("DynamicUser") == "yes" and 61184 <= uid <= 65519, status["Uid"]  # systemd's dynamic range
    assert status["NoNewPrivs"].strip() == "1" and status["Seccomp"].strip() == "2"
    assert int(status["CapEff"], 16) == 0

    # --- a dropped file is ingested and trained on: numba's JIT compiles and runs in the sandbox
    host.sh(f"cat > {INBOX}/notes.txt", input=notes().encode())
    ingested = host.wait_event(run1, "file_ingested")
    assert ingested["path"].endswith("/inbox/notes.txt") and ingested["tokens"] > 0
    host.wait_event(run1, "train_step")
    assert host.sh("find /var/cache/private/crystalline/numba -name '*.nbi' | head -1").strip(), "no numba cache"

    # --- STATUS= shows in `systemctl status`
    # (the daemon sends a new STATUS= every status interval, a second here, so the text read first
    # may have moved on by the time `systemctl status` reads it: the line must be the unit's
    # StatusText as systemd holds it at that moment, which the property read just after brackets)
    def status_line_shown() -> bool:
        before = host.show("StatusText")
        shown = host.sh(f"systemctl status {UNIT} --no-pager", check=False)
        after = host.show("StatusText")
        return bool(before) and any(f"Status: \"{text[:20]}" in shown for text in (before, after))

    wait_for("the STATUS= line in systemctl status", status_line_shown, 60)

    # --- `systemctl reload` is SIGHUP: the configuration is read again, the process stays
    host.sh(f"systemctl reload {UNIT}")
    host.wait_event(run1, "config_reloaded")
    assert host.show("MainPID") == pid and host.show("ActiveState") == "active"

    # --- journal priorities: a reload of a broken configuration logs an error; -p warning
    # selects it and none of the info lines (the setting is one the environment file leaves alone:
    # the environment overrides the file)
    host.sh("cat > /var/lib/crystalline/crystalline.toml", input=b'[daemon]\nreplay_fraction = "lots"\n')
    host.sh(f"systemctl reload {UNIT}", check=False)
    host.wait_event(run1, "config_reload_failed")
    host.sh("rm /var/lib/crystalline/crystalline.toml")
    selected = events(host.journal("-p", "warning", "-o", "cat"))
    assert first(selected, "config_reload_failed") is not None
    assert {e["level"] for e in selected} <= {"warning", "error", "critical"}, {e["event"] for e in selected}
    records = [json.loads(line) for line in host.journal("-o", "json").splitlines()]
    by_event = {}
    for entry in records:
        message = entry.get("MESSAGE")
        if isinstance(message, str) and message.startswith("{"):
            by_event.setdefault(json.loads(message)["event"], entry["PRIORITY"])
    assert by_event["daemon_ready"] == "6" and by_event["config_reload_failed"] == "3", by_event
    assert not any(isinstance(e.get("MESSAGE"), str) and e["MESSAGE"].startswith("<") for e in records)

    # --- `systemctl stop`: a clean exit within TimeoutStopSec (Result would be "timeout" past it)
    t0 = time.monotonic()
    host.sh(f"systemctl stop {UNIT}", timeout=200)
    stop_s = time.monotonic() - t0
    assert host.show("Result") == "success" and host.show("ActiveState") == "inactive"
    logged = host.invocation_events(run1)
    stopped = first(logged, "trainer_stopped")
    assert stopped and stopped["checkpoint_step"] and stopped["unsaved_steps"] == 0, stopped
    assert first(logged, "daemon_stopped", reason="signal", exit_code=0) is not None

    # --- a restart resumes from that checkpoint
    t0 = time.monotonic()
    host.sh(f"systemctl start {UNIT}")
    restart_s = time.monotonic() - t0
    run2 = host.show("InvocationID")
    loaded = host.wait_event(run2, "checkpoint_loaded")
    assert loaded["step"] == stopped["checkpoint_step"], (loaded, stopped)

    # --- the watchdog: a stalled main loop (SIGSTOP) stops pinging; WatchdogSec=60 later systemd
    # aborts it and Restart=on-failure starts it again, from its last checkpoint
    pid, restarts = host.show("MainPID"), int(host.show("NRestarts"))
    host.sh(f"kill -STOP {pid}")
    t0 = time.monotonic()
    wait_for("the watchdog's restart",
             lambda: int(host.show("NRestarts")) > restarts and host.show("ActiveState") == "active", 240, every=2)
    watchdog_s = time.monotonic() - t0
    assert host.show("MainPID") != pid
    assert "Watchdog timeout" in host.journal("-o", "cat")
    run3 = host.show("InvocationID")
    host.wait_event(run3, "checkpoint_loaded")

    host.sh(f"systemctl stop {UNIT}", timeout=200)
    assert host.show("Result") == "success"
    record(**{"systemd: systemctl start to READY (empty state, cold numba cache)": f"{start_s:.1f} s",
              "systemd: systemctl start to READY (resuming)": f"{restart_s:.1f} s",
              "systemd: systemctl stop (training, final checkpoint)": f"{stop_s:.1f} s",
              "systemd: SIGSTOP to restarted by the watchdog (WatchdogSec=60)": f"{watchdog_s:.0f} s"})
