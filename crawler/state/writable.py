"""Can the daemon write its state? The one owner of "the disk is full" and "the state is read-only".

Writers (the ingest worker's database transactions, checkpoints, health.json) hand an exception
that stopped a write to `WriteState.report`. When it is a blocked write (ENOSPC or EDQUOT: the
disk is full; EROFS, EACCES or EPERM: the state cannot be written; the same conditions raised by
SQLite or PostgreSQL as database errors) the state records it, logs `disk_full` or
`state_unwritable` once with the free space it sees, and says so (`report` returns True); the
writer then keeps what it could not write and pauses that kind of write instead of dying.
`recheck(now)`, called by the supervisor, tries a small probe write in the state directory at most
every `recheck_seconds`; once it succeeds the block is cleared (`state_writable`) and
`generation` grows by one, which is how a paused writer learns that it may retry what failed.
Before that, `on_clear` renews what the block may have spoiled for good: the daemon closes the
store's pooled SQLite connections, since SQLite opens a connection read-only, and keeps it so,
when the database cannot be opened for writing (one opened while the state was read-only would
refuse every write after it is writable again, until a restart).

Not a supervisor and not a retry loop: it decides nothing but "blocked or not". Knows nothing
of storage or the engine: database errors are recognised by their driver's error text or SQLSTATE.
Thread-safe: every method takes one lock; logging happens outside it.
"""

from __future__ import annotations

import errno
import os
import shutil
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

DISK_FULL = "disk_full"
STATE_UNWRITABLE = "state_unwritable"
RECHECK_SECONDS = 10.0
PROBE_FILE = ".write-probe"
PROBE_BYTES = 64 * 1024  # a probe that fits in the last few blocks proves little: ask for 64 KiB

_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
_UNWRITABLE_ERRNOS = {errno.EROFS, errno.EACCES, errno.EPERM}
# SQLite's texts (sqlite3.OperationalError) and PostgreSQL's SQLSTATEs (class 53: insufficient resources)
_FULL_TEXTS = ("database or disk is full", "no space left on device", "disk quota exceeded")
_UNWRITABLE_TEXTS = ("attempt to write a readonly database", "read-only file system", "readonly database")
_FULL_SQLSTATES = {"53100"}  # disk_full


def classify(exc: BaseException | None) -> str | None:
    """DISK_FULL, STATE_UNWRITABLE or None for an exception (its causes, and a database
    driver's original error, included)."""
    seen: set[int] = set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno is not None:
            if exc.errno in _FULL_ERRNOS:
                return DISK_FULL
            if exc.errno in _UNWRITABLE_ERRNOS:
                return STATE_UNWRITABLE
        text = str(exc).lower()
        if any(t in text for t in _FULL_TEXTS):
            return DISK_FULL
        if any(t in text for t in _UNWRITABLE_TEXTS):
            return STATE_UNWRITABLE
        if getattr(exc, "sqlstate", None) in _FULL_SQLSTATES or getattr(exc, "pgcode", None) in _FULL_SQLSTATES:
            return DISK_FULL
        orig = getattr(exc, "orig", None)  # sqlalchemy.exc.DBAPIError wraps the driver's error
        exc = orig if isinstance(orig, BaseException) else (exc.__cause__ or exc.__context__)
    return None


def free_bytes(path: str | Path) -> int | None:
    """Bytes available to this user on the file system holding path (None if it cannot be read)."""
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


class WriteState:
    """Whether writes to the state directory are blocked, and since when."""

    def __init__(self, state_dir: str | Path, log: Any, clock: Callable[[], float] = time.monotonic,
                 recheck_seconds: float = RECHECK_SECONDS, on_clear: Callable[[], None] | None = None) -> None:
        self.state_dir = Path(state_dir)
        self._log = log
        self._clock = clock
        self._on_clear = on_clear  # run when a block clears, before writers learn it; must not raise
        self.recheck_seconds = recheck_seconds
        self._lock = threading.Lock()
        self._reason: str | None = None
        self._since: float | None = None
        self._parts: dict[str, str] = {}  # part -> the error that blocked it
        self._next_check = 0.0
        self.generation = 0  # grows each time a block clears: writers retry what failed

    @property
    def blocked(self) -> str | None:
        """DISK_FULL, STATE_UNWRITABLE, or None while writes work."""
        with self._lock:
            return self._reason

    def snapshot(self) -> dict[str, Any]:
        """For health reports: the reason, the parts that hit it and the free bytes now."""
        with self._lock:
            reason, since, parts = self._reason, self._since, dict(self._parts)
        if reason is None:
            return {"blocked": None}
        return {"blocked": reason, "blocked_s": round(self._clock() - since, 1), "parts": parts,
                "free_bytes": free_bytes(self.state_dir)}

    def report(self, part: str, exc: BaseException) -> bool:
        """Record a failed write by `part` ("ingest", "checkpoint", ...). True when it was a blocked
        write (logged once per block, the first time each part hits it); False for any other error,
        which stays the caller's to handle."""
        reason = classify(exc)
        if reason is None:
            return False
        now = self._clock()
        with self._lock:
            first = self._reason is None
            new_part = part not in self._parts
            if first:
                self._reason, self._since = reason, now
                self._next_check = now + self.recheck_seconds
            self._parts.setdefault(part, f"{type(exc).__name__}: {exc}")
        if first or new_part:
            self._log.error(reason, part=part, error=f"{type(exc).__name__}: {exc}", state_dir=str(self.state_dir),
                            free_bytes=free_bytes(self.state_dir), needed_bytes=PROBE_BYTES,
                            action=ACTIONS[reason])
        return True

    def recheck(self, now: float, force: bool = False) -> bool:
        """While blocked, at most every recheck_seconds (or at once with force): try the probe
        write. Returns True when writes work (then or already). When the probe works, `on_clear`
        runs first, then the block clears and `generation` grows, so a writer that sees either
        finds what on_clear renewed."""
        with self._lock:
            if self._reason is None:
                return True
            if not force and now < self._next_check:
                return False
            self._next_check = now + self.recheck_seconds
        if not probe(self.state_dir):
            return False
        if self._on_clear is not None:
            self._on_clear()
        with self._lock:
            reason, since, parts = self._reason, self._since, sorted(self._parts)
            self._reason, self._since, self._parts = None, None, {}
            if reason is not None:  # (another thread's recheck may have cleared it meanwhile)
                self.generation += 1
        if reason is not None:
            self._log.info("state_writable", was=reason, blocked_s=round(now - since, 1), parts=parts)
        return True


# the way out, for each reason (the event and `status --health` say it)
ACTIONS = {
    DISK_FULL: "free space on the state directory's file system; ingest and checkpoints resume by themselves",
    STATE_UNWRITABLE: "make the state directory writable by the daemon's user; ingest and checkpoints resume by themselves",
}


def probe(state_dir: str | Path) -> bool:
    """Whether PROBE_BYTES can be written and synced in state_dir (the probe file is removed)."""
    path = Path(state_dir) / PROBE_FILE
    try:
        with open(path, "wb") as f:
            f.write(b"\0" * PROBE_BYTES)
            f.flush()
            os.fsync(f.fileno())
        return True
    except OSError:
        return False
    finally:
        try:
            path.unlink()
        except OSError:
            pass
