"""Podman, mmdebstrap and the caches the deployment tests share.

What it is: the commands the tests in this folder run (podman with runc, the lowered ulimits these
machines need, the host's CA bundle handed to pip inside builds), base images made with mmdebstrap
and cached, waits on conditions with a deadline, and the JSON events read back from a log.
What it is not: a test; nothing here asserts on the daemon.
Relies on: podman, runc and mmdebstrap from Debian (.ci/deploy-tests installs them), root.
The cache folder (CRYSTALLINE_CI_CACHE, default /var/tmp/crystalline-ci-cache) lies outside the
clone: base image tarballs keyed by the mmdebstrap command that made them. Podman's own layer
cache keeps the installed dependencies until requirements.lock changes.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable

CACHE = Path(os.environ.get("CRYSTALLINE_CI_CACHE", "/var/tmp/crystalline-ci-cache"))
# crun refuses these machines' hybrid cgroup layout; raising limits is not permitted, lowering is
PODMAN = ["podman", "--runtime", "runc"]
LIMITS = ["--ulimit", "nofile=4096:4096", "--ulimit", "nproc=4096:4096"]
REPO = Path(__file__).resolve().parents[2]

# the two bases: the image's (Debian's python3 and tini) and a host with systemd as PID 1 (procps:
# /bin/kill, which every Debian server has and the unit's ExecReload runs)
IMAGE_BASE = ("bookworm-py", ["python3", "python3-venv", "tini", "ca-certificates"], [])
SYSTEMD_BASE = ("bookworm-systemd", ["systemd", "systemd-sysv", "dbus", "procps", "python3", "python3-venv",
                                     "ca-certificates"], ['CMD ["/sbin/init"]'])


def why_not() -> str | None:
    """The reason these tests cannot run here, or None."""
    if os.environ.get("CRYSTALLINE_DEPLOY_TESTS") != "1":
        return ("the deployment tests run through .ci/deploy-tests (it installs podman, runc and "
                "mmdebstrap); set CRYSTALLINE_DEPLOY_TESTS=1 to run them directly")
    if os.geteuid() != 0:
        return "podman with --privileged and mmdebstrap need root"
    for tool in ("podman", "runc", "mmdebstrap"):
        if shutil.which(tool) is None and not Path("/usr/sbin", tool).exists():
            return f"{tool} is not installed (apt-get install -y podman runc mmdebstrap)"
    return None


def sh(args: list[str], timeout: float = 600, check: bool = True, input: bytes | None = None
       ) -> subprocess.CompletedProcess:
    """Run a command; on failure (with check) raise with its output, so the test log says why."""
    proc = subprocess.run(args, capture_output=True, timeout=timeout, input=input)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {proc.returncode}\n"
                             f"stdout: {proc.stdout.decode(errors='replace')[-4000:]}\n"
                             f"stderr: {proc.stderr.decode(errors='replace')[-4000:]}")
    return proc


def podman(*args: str, **kwargs: Any) -> subprocess.CompletedProcess:
    return sh([*PODMAN, *args], **kwargs)


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 0.5) -> Any:
    """Poll `probe` until it returns something truthy, and return that; past `timeout` seconds
    (a failure guard, generous) raise naming `what`."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(every)


def events(text: str) -> list[dict]:
    """The JSON events among a log's lines; other lines (tini, podman, systemd) are left out."""
    found = []
    for line in text.splitlines():
        if line.startswith("{"):
            try:
                found.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return found


def first(found: list[dict], event: str, **fields: Any) -> dict | None:
    return next((e for e in found if e.get("event") == event
                 and all(e.get(k) == v for k, v in fields.items())), None)


def pip_ca_mounts() -> list[str]:
    """`-v` options that hand the host's CA bundle to pip inside a build or a container, with a
    pip.conf naming it: these machines reach the package index through a proxy whose CA only the
    host trusts. Mounted, never copied: nothing of it lands in an image. [] when pip names none."""
    proc = sh([sys.executable, "-m", "pip", "config", "get", "global.cert"], check=False)
    bundle = proc.stdout.decode().strip() or os.environ.get("PIP_CERT", "")
    if not bundle or not Path(bundle).is_file():
        return []
    CACHE.mkdir(parents=True, exist_ok=True)
    conf = CACHE / "pip.conf"
    conf.write_text("[global]\ncert = /host-ca.crt\n")
    return ["-v", f"{conf}:/etc/pip.conf:ro", "-v", f"{bundle}:/host-ca.crt:ro"]


def base_image(spec: tuple[str, list[str], list[str]]) -> str:
    """A Debian 12 base made with mmdebstrap and imported into podman, tagged with a hash of the
    command that made it. Made once: the tarball stays in CACHE and the image in podman's store;
    a change to the command (another package) makes a new one. Delete CACHE to refresh it."""
    name, include, changes = spec
    command = ["mmdebstrap", "--variant=minbase", f"--include={','.join(include)}", "bookworm"]
    key = hashlib.sha256(json.dumps([command, changes]).encode()).hexdigest()[:12]
    tag = f"localhost/{name}:{key}"
    if podman("image", "exists", tag, check=False).returncode == 0:
        record(**{f"{name} base": "cached"})
        return tag
    t0 = time.monotonic()
    tarball = CACHE / f"{name}-{key}.tar"
    if not tarball.exists():
        CACHE.mkdir(parents=True, exist_ok=True)
        partial = tarball.with_name(f"{name}-{key}.partial.tar")  # mmdebstrap's format follows the name
        sh([*command, str(partial)], timeout=900)
        partial.rename(tarball)  # whole or absent: an interrupted run leaves no half tarball
    options = [arg for change in changes for arg in ("--change", change)]
    podman("import", *options, str(tarball), tag, timeout=300)
    record(**{f"{name} base": f"made in {time.monotonic() - t0:.0f} s"})
    return tag


def record(**measured: Any) -> None:
    """Add measurements to the file .ci/deploy-tests prints at the end (CRYSTALLINE_DEPLOY_REPORT)."""
    path = os.environ.get("CRYSTALLINE_DEPLOY_REPORT")
    if path:
        with open(path, "a", encoding="utf-8") as f:
            for key, value in measured.items():
                f.write(f"{key}: {value}\n")
