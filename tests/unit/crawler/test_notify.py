"""The systemd notify protocol against real AF_UNIX datagram sockets: exact datagrams, the
watchdog interval, no-ops without NOTIFY_SOCKET, and sends that never raise."""

import os
import socket
import tempfile
import time
import uuid
from pathlib import Path

import pytest
from structlog.testing import capture_logs

from crawler.service.notify import Notifier


@pytest.fixture
def receiver(tmp_path):
    """A bound datagram socket standing in for systemd's notify socket: (address, socket)."""
    directory, cleanup = tmp_path, None
    if len(str(tmp_path / "notify.sock")) > 100:  # sun_path holds 108 bytes
        cleanup = tempfile.TemporaryDirectory(dir="/tmp")
        directory = Path(cleanup.name)
    path = directory / "notify.sock"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    sock.settimeout(2.0)
    yield str(path), sock
    sock.close()
    if cleanup is not None:
        cleanup.cleanup()


def received(sock: socket.socket) -> bytes:
    return sock.recv(4096)


def test_each_message_is_the_exact_datagram(receiver):
    address, sock = receiver
    with Notifier.from_environment({"NOTIFY_SOCKET": address}) as notifier:
        assert notifier.enabled
        assert notifier.ready("step 5\nloss 2.1  tokens 10") is True
        assert received(sock) == b"READY=1\nSTATUS=step 5 loss 2.1 tokens 10"
        notifier.status("training:\r\nstep 6")
        assert received(sock) == b"STATUS=training: step 6"
        notifier.watchdog()
        assert received(sock) == b"WATCHDOG=1"
        notifier.stopping()
        assert received(sock) == b"STOPPING=1"
        notifier.stopping("writing the final checkpoint")
        assert received(sock) == b"STOPPING=1\nSTATUS=writing the final checkpoint"
        notifier.ready()
        assert received(sock) == b"READY=1"
        notifier.extend_timeout(30)
        assert received(sock) == b"EXTEND_TIMEOUT_USEC=30000000"


def test_reloading_carries_the_monotonic_clock_in_microseconds(receiver):
    address, sock = receiver
    with Notifier(address) as notifier:
        before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        notifier.reloading()
        after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    first, second = received(sock).decode().split("\n")
    assert first == "RELOADING=1"
    key, _, value = second.partition("=")
    assert key == "MONOTONIC_USEC" and before <= int(value) <= after


def test_abstract_socket_address():
    name = f"crystalline-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)  # the abstract namespace: no file
    sock.settimeout(2.0)
    try:
        with Notifier.from_environment({"NOTIFY_SOCKET": "@" + name}) as notifier:
            assert notifier.ready("up")
        assert received(sock) == b"READY=1\nSTATUS=up"
    finally:
        sock.close()


@pytest.mark.parametrize(
    "env, expected",
    [
        ({"WATCHDOG_USEC": "60000000"}, 30.0),  # WatchdogSec=60: ping every 30 s
        ({"WATCHDOG_USEC": "5000000", "WATCHDOG_PID": str(os.getpid())}, 2.5),
        ({"WATCHDOG_USEC": "60000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),  # not us
        ({}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "sixty"}, None),
    ],
)
def test_watchdog_interval_is_half_of_watchdog_usec_for_this_process(receiver, env, expected):
    address, _ = receiver
    with Notifier.from_environment({"NOTIFY_SOCKET": address, **env}) as notifier:
        assert notifier.watchdog_interval() == expected


def test_everything_is_a_no_op_without_notify_socket():
    notifier = Notifier.from_environment({"WATCHDOG_USEC": "60000000"})
    assert not notifier.enabled
    assert notifier.watchdog_interval() is None  # pings would go nowhere
    for call in (notifier.ready, notifier.status, notifier.stopping):
        assert call("text") is False
    assert notifier.watchdog() is False and notifier.reloading() is False
    notifier.close()


def test_a_vanished_socket_does_not_raise_and_is_logged_once(receiver):
    address, sock = receiver
    sock.close()
    os.unlink(address)
    with capture_logs() as events:
        with Notifier(address) as notifier:
            assert notifier.ready("up") is False
            assert notifier.watchdog() is False
            assert notifier.status("still here") is False
    failures = [e for e in events if e["event"] == "notify_failed"]
    assert len(failures) == 1, events
    assert failures[0]["error"] == "FileNotFoundError" and failures[0]["component"] == "notify"


def test_a_socket_that_stops_listening_does_not_raise(receiver):
    address, sock = receiver
    with capture_logs() as events, Notifier(address) as notifier:
        assert notifier.watchdog()
        assert received(sock) == b"WATCHDOG=1"
        sock.close()  # the file stays, nobody reads: ECONNREFUSED
        assert notifier.watchdog() is False
    assert [e["error"] for e in events if e["event"] == "notify_failed"] == ["ConnectionRefusedError"]


def test_unsupported_address_disables_and_is_logged():
    with capture_logs() as events:
        notifier = Notifier.from_environment({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled and notifier.ready() is False
    assert events[0]["event"] == "notify_failed" and events[0]["error"] == "UnsupportedAddress"


def test_unset_environment_hides_the_socket_from_children(receiver, monkeypatch):
    address, sock = receiver
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    monkeypatch.setenv("WATCHDOG_USEC", "60000000")
    with Notifier.from_environment(unset_environment=True) as notifier:
        assert "NOTIFY_SOCKET" not in os.environ and "WATCHDOG_USEC" not in os.environ
        assert notifier.watchdog_interval() == 30.0
        notifier.ready()
        assert received(sock) == b"READY=1"


def test_close_is_idempotent_and_later_sends_are_no_ops(receiver):
    address, _ = receiver
    notifier = Notifier(address)
    notifier.close()
    notifier.close()
    assert not notifier.enabled and notifier.watchdog() is False
