"""The daemon as a child process: `crystalline run` started on a state directory, and its JSON
event lines read by a thread of their own.

For those who watch a real daemon from outside: the end-to-end tests (tests/e2e/conftest.py)
and the benchmarks that measure one (bench/daemon.py). The daemon itself never uses it. It lives
in the package, not in tests/ or bench/, so that each can import it without the other.
Relies on the daemon logging one JSON object a line when its output is not a terminal (a pipe
here; stdout and stderr are merged); a line that is not one is kept in `raw` only. Knows nothing
of what the events mean.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")
TAIL_LINES = 40  # of the daemon's output, in the message of a wait that failed


class ChildFailed(AssertionError):
    """A wait on the daemon failed: it exited first, or the time ran out. The message holds the
    last lines the daemon wrote. An AssertionError, so that a test reports it as a failure."""


class DaemonChild:
    """One `python -m crawler run --state-dir STATE` subprocess, started at once.

    `events` are its JSON lines in order, each with `_received` (time.perf_counter() when the
    reader read it) added; `raw` every line. Both grow under `cond`, which is notified at each
    line; a wait reads only the events that arrived since its last wake-up, so a daemon logging
    thousands of events cannot starve the reader thread.
    """

    def __init__(self, state: str | os.PathLike[str], args: Sequence[str] = (), env: Mapping[str, str] | None = None,
                 cwd: str | os.PathLike[str] | None = None):
        self.state = Path(state)
        self.events: list[dict[str, Any]] = []
        self.raw: list[str] = []
        self.cond = threading.Condition()
        self.launched = time.perf_counter()
        self.proc = subprocess.Popen(self.command(list(args)), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True, cwd=cwd, env=dict(os.environ, PYTHONUNBUFFERED="1") | dict(env or {}))
        self.reader = threading.Thread(target=self._read, name="daemon-child-reader", daemon=True)
        self.reader.start()

    def command(self, args: list[str]) -> list[str]:
        """The child's argv: this Python running the crawler's `run` on the state directory."""
        return [sys.executable, "-m", "crawler", "run", "--state-dir", str(self.state), *args]

    def _read(self) -> None:
        for line in self.proc.stdout:
            received = time.perf_counter()
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                event = None
            with self.cond:
                self.raw.append(line)
                if isinstance(event, dict):
                    self.events.append(event | {"_received": received})
                self.cond.notify_all()

    # --- reading the events ---------------------------------------------------------------------

    def find(self, event: str, **fields: Any) -> list[dict[str, Any]]:
        """The events named `event` (with these field values) logged so far."""
        with self.cond:
            return [e for e in self.events if _matches(e, event, fields)]

    def wait(self, check: Callable[[list[dict[str, Any]]], T], timeout: float, what: str) -> T:
        """check(events) under the lock, again at each new line, until it returns something
        truthy, which is returned; waits at most `timeout` s. Raises ChildFailed naming `what`
        when the daemon exits first or the time runs out."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not (found := check(self.events)):
                if self.proc.poll() is not None and not self.reader.is_alive():
                    raise ChildFailed(f"daemon exited {self.proc.returncode} before {what}:\n{self._tail()}")
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise ChildFailed(f"no {what} within {timeout} s:\n{self._tail()}")
                self.cond.wait(min(remaining, 0.5))
            return found

    def wait_for(self, event: str, timeout: float = 60.0, count: int = 1, **fields: Any) -> list[dict[str, Any]]:
        """The first `count` events named `event` (with these fields) the daemon logged, waiting
        up to `timeout` s."""
        return self._wait_from(0, event, timeout, count, fields, f"{count} x {event} {fields}")

    def wait_for_after(self, earlier: dict[str, Any], event: str, timeout: float = 60.0,
                       **fields: Any) -> dict[str, Any]:
        """The first `event` (with fields) logged after the event `earlier`."""
        with self.cond:
            index = self.events.index(earlier)
        return self._wait_from(index + 1, event, timeout, 1, fields,
                               f"{event} {fields} after {earlier.get('event')}")[0]

    def _wait_from(self, start: int, event: str, timeout: float, count: int, fields: dict[str, Any],
                   what: str) -> list[dict[str, Any]]:
        found: list[dict[str, Any]] = []
        seen = start

        def enough(events: list[dict[str, Any]]) -> list[dict[str, Any]] | None:
            nonlocal seen
            for e in events[seen:]:  # only what arrived since the last look
                if _matches(e, event, fields):
                    found.append(e)
                    if len(found) >= count:
                        return found
            seen = len(events)
            return None

        return self.wait(enough, timeout, what)

    def tail(self, lines: int = TAIL_LINES) -> str:
        """The last `lines` lines the daemon wrote."""
        with self.cond:
            return self._tail(lines)

    def _tail(self, lines: int = TAIL_LINES) -> str:
        return "".join(self.raw[-lines:])

    # --- ending it ------------------------------------------------------------------------------

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 90.0) -> int:
        """Send `sig` (SIGTERM) once, unless it has exited, and return its exit status; waits up
        to `timeout` s (subprocess.TimeoutExpired after that), then up to 5 s for the reader."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        code = self.proc.wait(timeout=timeout)
        self.reader.join(timeout=5)
        return code

    def kill(self) -> None:
        """SIGKILL, unless it has exited; waits for it and its reader."""
        if self.proc.poll() is None:
            self.proc.kill()
        self.proc.wait(timeout=30)
        self.reader.join(timeout=5)


def _matches(e: dict[str, Any], event: str, fields: Mapping[str, Any]) -> bool:
    return e.get("event") == event and all(e.get(k) == v for k, v in fields.items())
