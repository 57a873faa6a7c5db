"""The systemd notify protocol (sd_notify(3)), spoken directly over one AF_UNIX datagram socket.

The service manager passes NOTIFY_SOCKET (a filesystem path, or an abstract socket name written
with a leading '@') and, when the unit sets WatchdogSec=, WATCHDOG_USEC (and WATCHDOG_PID, the
process meant to ping). Each message is one datagram of newline-separated KEY=VALUE lines:
READY=1 when startup is complete, STATUS= for `systemctl status`, WATCHDOG=1 from the main loop
at half the watchdog period, STOPPING=1 on a graceful stop, RELOADING=1 with MONOTONIC_USEC.

Not a library binding and not a supervisor: without NOTIFY_SOCKET (a terminal, Docker, tests)
every method is a no-op, so the daemon calls them unconditionally. A failed send never raises:
it is logged once per kind of error as `notify_failed`, and the daemon carries on, because a
lost status line must never stop training. Relies on the standard library and crawler.logging.
"""

from __future__ import annotations

import os
import socket
import threading
import time
from collections.abc import Mapping

from ..logging import get_logger

SEND_TIMEOUT_S = 2.0  # a send blocks at most this long when the manager's queue is full


def _one_line(text: str) -> str:
    """STATUS= is one line: newlines in the text would start new KEY=VALUE assignments."""
    return " ".join(str(text).split())


def _positive_int(text: str | None) -> int | None:
    try:
        value = int(text) if text is not None else None
    except ValueError:
        return None
    return value if value is not None and value > 0 else None


class Notifier:
    """Sends notifications to the service manager; every method is a no-op when disabled.

    Thread-safe: sends are serialized by a lock. Each send may block up to SEND_TIMEOUT_S.
    """

    def __init__(self, address: str | None, watchdog_usec: int | None = None,
                 watchdog_pid: int | None = None):
        self.address = address or None
        self.watchdog_usec = watchdog_usec
        self.watchdog_pid = watchdog_pid
        self._log = get_logger("notify")
        self._lock = threading.Lock()
        self._failed: set[str] = set()  # error kinds already logged
        self._socket: socket.socket | None = None
        self._target: str | bytes | None = None
        if self.address is None:
            return
        if self.address.startswith("@"):  # abstract namespace: a leading NUL byte
            self._target = b"\0" + self.address[1:].encode()
        elif self.address.startswith("/"):
            self._target = self.address
        else:  # vsock:CID:PORT and the like (systemd >= 254, virtual machines): not spoken here
            self._log.warning("notify_failed", address=self.address, error="UnsupportedAddress",
                              message="NOTIFY_SOCKET is neither a path nor an abstract socket")
            return
        self._socket = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)  # close-on-exec
        self._socket.settimeout(SEND_TIMEOUT_S)

    @classmethod
    def from_environment(cls, environ: Mapping[str, str] | None = None,
                         unset_environment: bool = False) -> "Notifier":
        """Build from NOTIFY_SOCKET, WATCHDOG_USEC and WATCHDOG_PID. With `unset_environment`
        (and `environ` left as os.environ) the variables are removed, so that child processes
        cannot notify in the daemon's name."""
        env = os.environ if environ is None else environ
        notifier = cls(env.get("NOTIFY_SOCKET"), _positive_int(env.get("WATCHDOG_USEC")),
                       _positive_int(env.get("WATCHDOG_PID")))
        if unset_environment and environ is None:
            for name in ("NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"):
                os.environ.pop(name, None)
        return notifier

    @property
    def enabled(self) -> bool:
        """True when a service manager is listening (NOTIFY_SOCKET was set and usable)."""
        return self._socket is not None

    def watchdog_interval(self) -> float | None:
        """Seconds between WATCHDOG=1 pings: half of WATCHDOG_USEC, as sd_watchdog_enabled(3)
        advises. None when disabled, when no watchdog is set, or when WATCHDOG_PID names another
        process."""
        if not self.enabled or self.watchdog_usec is None:
            return None
        if self.watchdog_pid is not None and self.watchdog_pid != os.getpid():
            return None
        return self.watchdog_usec / 2 / 1e6

    # -----------------------------------------------------------------------------------------

    def send(self, message: str) -> bool:
        """Send one raw datagram ("KEY=VALUE\\n..."); True when it was sent. Never raises."""
        if self._socket is None:
            return False
        data = message.encode("utf-8", errors="replace")
        with self._lock:
            try:
                self._socket.sendto(data, self._target)
                return True
            except (OSError, ValueError) as exc:
                kind = type(exc).__name__
                if kind not in self._failed:
                    self._failed.add(kind)
                    self._log.warning("notify_failed", address=self.address, error=kind,
                                      message=str(exc))
                return False

    def ready(self, status: str = "") -> bool:
        """READY=1: startup is complete (the unit becomes active, dependent units start)."""
        return self.send("READY=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def status(self, text: str) -> bool:
        """STATUS=: one line shown by `systemctl status`."""
        return self.send(f"STATUS={_one_line(text)}")

    def watchdog(self) -> bool:
        """WATCHDOG=1: the main loop is alive. Call every watchdog_interval() seconds."""
        return self.send("WATCHDOG=1")

    def stopping(self, status: str = "") -> bool:
        """STOPPING=1: a graceful stop has begun (the final checkpoint may still be written)."""
        return self.send("STOPPING=1" + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def reloading(self, status: str = "") -> bool:
        """RELOADING=1 with MONOTONIC_USEC (Type=notify-reload needs both); send ready() when
        the reload is done."""
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        message = f"RELOADING=1\nMONOTONIC_USEC={usec}"
        return self.send(message + (f"\nSTATUS={_one_line(status)}" if status else ""))

    def extend_timeout(self, seconds: float) -> bool:
        """EXTEND_TIMEOUT_USEC: ask for `seconds` more before the start or stop timeout fires
        (a slow numba compile at start, a large final checkpoint at stop)."""
        return self.send(f"EXTEND_TIMEOUT_USEC={max(0, int(seconds * 1e6))}")

    # -----------------------------------------------------------------------------------------

    def close(self) -> None:
        """Close the socket; later sends are no-ops. Idempotent."""
        with self._lock:
            if self._socket is not None:
                self._socket.close()
                self._socket = None

    def __enter__(self) -> "Notifier":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
