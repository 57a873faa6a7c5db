"""Fixtures of the deployment tests: the image, the systemd host image and the wheel, each made once
per session (and cached across sessions where tools.py says so)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from pathlib import Path

import pytest

from .tools import IMAGE_BASE, LIMITS, REPO, SYSTEMD_BASE, base_image, pip_ca_mounts, podman, record, sh, why_not

IMAGE = "localhost/crystalline-ci:latest"
SYSTEMD_HOST = "localhost/crystalline-ci-systemd:latest"


# session scope: pytest sets up session fixtures (the image) before function-scoped ones, so a
# function-scoped check would come after a podman call on a machine without podman
@pytest.fixture(autouse=True, scope="session")
def _deploy_tools():
    reason = why_not()
    if reason and os.environ.get("CRYSTALLINE_DEPLOY_TESTS") == "1":
        # asked for (.ci/deploy-tests sets it): a skip would pass untested, so each test fails
        pytest.fail(f"CRYSTALLINE_DEPLOY_TESTS=1, but the deployment tests cannot run here: {reason}", pytrace=False)
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def image() -> str:
    """The Dockerfile built from this checkout on the mmdebstrap base (--format docker keeps the
    HEALTHCHECK); the layers up to the locked dependencies come from podman's cache on a repeat."""
    base = base_image(IMAGE_BASE)
    t0 = time.monotonic()
    podman("build", "--format", "docker", "--network", "host", *LIMITS, *pip_ca_mounts(),
           "--build-arg", f"BASE={base}", "-t", IMAGE, str(REPO), timeout=1200)
    size = podman("image", "inspect", IMAGE, "--format", "{{.Size}}").stdout.decode().strip()
    record(**{"image build": f"{time.monotonic() - t0:.0f} s",
              "image size": f"{int(size) / 1e6:.0f} MB (on the mmdebstrap base)"})
    return IMAGE



@pytest.fixture(scope="session")
def systemd_host(tmp_path_factory) -> str:
    """A Debian 12 with systemd as PID 1 and a virtualenv holding the locked dependencies
    (/opt/crystalline, as docs/DEPLOY.md installs it); the package itself goes in per test."""
    base = base_image(SYSTEMD_BASE)
    context = tmp_path_factory.mktemp("systemd-host")
    shutil.copy(REPO / "requirements.lock", context / "requirements.lock")
    shutil.copy(Path(__file__).with_name("systemd-host.Containerfile"), context / "Containerfile")
    t0 = time.monotonic()
    podman("build", "--format", "docker", "--network", "host", *LIMITS, *pip_ca_mounts(),
           "--build-arg", f"BASE={base}", "-t", SYSTEMD_HOST, str(context), timeout=1200)
    record(**{"systemd host build": f"{time.monotonic() - t0:.0f} s"})
    return SYSTEMD_HOST


@pytest.fixture(scope="session")
def wheel(tmp_path_factory) -> Path:
    """The wheel of this checkout, built from a copy (a build writes into its source tree)."""
    work = tmp_path_factory.mktemp("wheel")
    src = work / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md", "LICENSE"):
        shutil.copy(REPO / name, src / name)
    for package in ("engine", "storage", "crawler"):
        shutil.copytree(REPO / package, src / package, ignore=shutil.ignore_patterns("__pycache__", "*.nb[ic]"))
    t0 = time.monotonic()
    sh([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(work / "dist"), str(src)])
    record(**{"wheel build": f"{time.monotonic() - t0:.0f} s"})
    (built,) = (work / "dist").glob("crystalline-*.whl")
    return built
