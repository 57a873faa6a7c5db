"""Is the corpus store answering? The one owner of "store unavailable" in a running daemon.

A part of the daemon (the ingest worker, a worker thread's loop, the supervisor's status report,
the start) that meets a transient store error (`storage.StoreUnavailable` with `transient`: a
lock held past busy_timeout_ms, a connection lost or refused, a full disk) hands it to
`StoreOutage.report` and keeps what it was doing for a retry: the ingest worker its files, a
worker thread its loop. A part's first failure logs `store_unavailable` with the cause and the
way out; while any part fails, `snapshot()` says so for health.json, the status event and
`crystalline status --health`. A part tries again no sooner than `report` (or `retry_in`) says:
a delay that doubles from `first_seconds` with each failed try, up to `max_seconds`, so a long
outage costs one try a part every half minute, and a short one is over within a second or two.
The part's first call that works again (`recovered`) ends its failure: `store_available`, with
how long it lasted and how many tries it took.

Not a retry loop: each part retries on its own thread and clock; this keeps the times and says
what happened. A permanent store error (StoreBroken) is not an outage: it stays the caller's.
Knows nothing of storage beyond the exception's `transient`, `cause` and one-line message.
Thread-safe: every method takes one lock; logging happens outside it.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from storage import StoreUnavailable

RETRY_FIRST_SECONDS = 1.0  # the first retry: a lock released, a server back from a blip
RETRY_MAX_SECONDS = 30.0  # the longest wait between two tries of a part


def is_transient(exc: BaseException | None) -> bool:
    """Whether `exc` is a store error that may pass by itself (StoreUnavailable.transient)."""
    return isinstance(exc, StoreUnavailable) and exc.transient


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a store error's already is)."""
    return " ".join(str(exc).split()) or type(exc).__name__


@dataclass
class _Failure:
    since: float  # the daemon's clock at the part's first failed try
    cause: str  # StoreUnavailable.cause: busy, disconnected, disk_full
    error: str  # the last error, one line naming the cause and the way out
    tries: int  # failed tries so far
    next_at: float  # no try before this


class StoreOutage:
    """Which parts find the store unavailable, since when, and when each may try again."""

    def __init__(self, log: Any, clock: Callable[[], float] = time.monotonic,
                 first_seconds: float = RETRY_FIRST_SECONDS, max_seconds: float = RETRY_MAX_SECONDS) -> None:
        self._log = log
        self._clock = clock
        self.first_seconds, self.max_seconds = first_seconds, max_seconds
        self._lock = threading.Lock()
        self._failures: dict[str, _Failure] = {}  # part -> its failure, while it lasts

    def report(self, part: str, exc: StoreUnavailable, now: float | None = None) -> float:
        """Record that `part`'s call failed with the transient store error `exc`; returns the
        seconds until it may try again (first_seconds, doubled with each failed try up to
        max_seconds). Logs `store_unavailable` when the part's failure begins."""
        now = self._clock() if now is None else now
        error = one_line(exc)
        cause = getattr(exc, "cause", "unavailable")
        with self._lock:
            failure = self._failures.get(part)
            first = failure is None
            if first:
                failure = self._failures[part] = _Failure(now, cause, error, 0, now)
            failure.tries += 1
            failure.cause, failure.error = cause, error
            delay = min(self.max_seconds, self.first_seconds * 2.0 ** (failure.tries - 1))
            failure.next_at = now + delay
        if first:
            self._log.error("store_unavailable", part=part, cause=cause, error=error, retry_in_s=round(delay, 1))
        return delay

    def recovered(self, part: str, now: float | None = None) -> None:
        """`part`'s call worked: its failure, if it had one, ends (`store_available`)."""
        with self._lock:
            failure = self._failures.pop(part, None)
        if failure is not None:
            now = self._clock() if now is None else now
            self._log.info("store_available", part=part, was=failure.cause,
                           unavailable_s=round(now - failure.since, 1), tries=failure.tries)

    def failing(self, part: str) -> bool:
        """Whether `part`'s last call found the store unavailable."""
        with self._lock:
            return part in self._failures

    def retry_in(self, part: str, now: float) -> float:
        """Seconds until `part` may try again: 0 when it may now (or is not failing)."""
        with self._lock:
            failure = self._failures.get(part)
            return 0.0 if failure is None else max(0.0, failure.next_at - now)

    @property
    def cause(self) -> str | None:
        """The cause of the oldest failure going on (busy, disconnected, disk_full), or None
        while every part's calls work."""
        with self._lock:
            oldest = min(self._failures.values(), key=lambda f: f.since, default=None)
            return None if oldest is None else oldest.cause

    def snapshot(self, now: float) -> dict[str, Any] | None:
        """For health reports: None while the store answers every part; else the oldest failure's
        `cause` and `error` (one line with the way out), `unavailable_s`, and each failing part's
        cause."""
        with self._lock:
            failures = dict(self._failures)
        if not failures:
            return None
        oldest = min(failures.values(), key=lambda f: f.since)
        return {"cause": oldest.cause, "error": oldest.error, "unavailable_s": round(now - oldest.since, 1),
                "parts": {part: failure.cause for part, failure in sorted(failures.items())}}
