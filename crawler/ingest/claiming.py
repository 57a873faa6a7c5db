"""The ingest worker's side of file claims, for several daemons watching one folder.

Before the ingest worker reads a batch, `ClaimGate.admit` claims its files (storage.FileClaims:
one transaction for the batch): the files this daemon now holds go on to be ingested; a file
another daemon holds is deferred until that daemon's lease ends and then claimed again (by
then it is stored, and the ingestor finds it `unchanged`, or its daemon died and this one takes
it over); a file claimed `claim_attempts` times without being finished is recorded as failed
(`file_failed`, reason `claim_attempts`). After the batch, `finish` deletes the claims of the
files whose outcome is stored. The supervisor calls `renew` on every step: it extends the
leases of the files in hand every third of a lease, so only a daemon that stopped (or lost the
database) loses them. Used only on PostgreSQL (`make_gate` returns None on SQLite: one machine,
one daemon per corpus, nothing to share).

The claim is keyed by the file's absolute path, so every daemon must see a shared folder at the
same path. Knows nothing of extraction or the engine.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

from storage import FileClaims

from .pipeline import display_path

RETRY_MARGIN_SECONDS = 1.0  # a deferred file is claimed again this long after its lease ends
EXHAUSTED = "claim_attempts"  # the reason of a file recorded as failed after too many claims


def owner_name(state_dir: str | Path) -> str:
    """This daemon's name in claims: the host and the state directory, the same across its
    restarts (so a restart takes its own files back at once) and unique while it runs (the
    state directory's lock)."""
    return f"{socket.gethostname()}:{Path(state_dir).resolve()}"


def make_gate(config, database, queue, log) -> "ClaimGate | None":
    """A gate for the daemon's ingest worker on PostgreSQL, None on SQLite."""
    if database.dialect != "postgresql":
        return None
    claims = FileClaims(database, owner_name(config.state_dir), lease_seconds=config.daemon.claim_lease_seconds,
                        max_attempts=config.daemon.claim_attempts)
    return ClaimGate(claims, queue, log)


def _key(item: tuple) -> str:
    return os.path.abspath(item[0])  # as the ingestor stores the path (abspath normalizes as Path does)


class ClaimGate:
    """Claims the ingest worker's files; admit/finish on its thread, renew on the supervisor's."""

    def __init__(self, claims: FileClaims, queue, log):
        self.claims, self.queue, self.log = claims, queue, log
        self.deferred: dict[str, tuple[tuple, float]] = {}  # path -> ((path, root), claim again at)
        self._holding: set[str] = set()  # claimed and not finished: the leases renew() extends
        self._lock = threading.Lock()  # guards _holding (renew runs on the supervisor's thread)
        self._next_renew = 0.0
        self._renew_error: str | None = None

    def admit(self, batch: list[tuple], now: float, counts: dict) -> list[tuple]:
        """The (path, root) files of `batch`, and the deferred ones due at `now`, that this
        daemon holds now, in order; the rest are deferred, or recorded as failed (counted in
        counts["failed"]). One claim transaction; raises what storage raises (nothing is lost:
        the deferred files stay deferred)."""
        due = [path for path, (_, at) in self.deferred.items() if at <= now]
        candidates = {path: self.deferred[path][0] for path in due}
        candidates |= {_key(item): item for item in batch}
        if not candidates:
            return []
        result = self.claims.claim(list(candidates))
        for path in due:
            del self.deferred[path]
        with self._lock:
            self._holding.update(result.claimed)
            self._holding.update(result.exhausted)
        for path, seconds in result.held.items():
            self.deferred[path] = (candidates[path], now + seconds + RETRY_MARGIN_SECONDS)
            self.log.debug("file_deferred", path=display_path(path), seconds=round(seconds, 1))
        for path, why in result.exhausted.items():
            self._give_up(path, why, counts)
        return [candidates[path] for path in result.claimed]

    def _give_up(self, path: str, why: str, counts: dict) -> None:
        """Record a file claimed too often as failed (unless its outcome was stored after all,
        by a daemon that died before it could delete its claim), then delete the claim."""
        try:
            st = os.stat(path)
            version = (path, st.st_size, st.st_mtime)
        except OSError:
            version = None
        if version is None or not self.queue.seen_many([version]):
            self.queue.record_skip(source_path=path, reason=EXHAUSTED, detail=why, status="failed",
                                   size=None if version is None else version[1],
                                   mtime=None if version is None else version[2])
            counts["failed"] = counts.get("failed", 0) + 1
            self.log.warning("file_failed", path=display_path(path), error=why, reason=EXHAUSTED)
        self.finish([(path, None)])

    def finish(self, items: list[tuple], done: bool = True) -> None:
        """Give up the claims on these files: `done` (their outcome is stored) deletes them;
        otherwise any daemon may take them over at once."""
        paths = [_key(item) for item in items]
        with self._lock:
            self._holding.difference_update(paths)  # not renewed any more, even if the release fails
        self.claims.release(paths, done=done)

    def renew(self, now: float) -> None:
        """Extend the leases in hand, every third of a lease (on the caller's clock); a failure
        is logged (claims_renew_failed, once until it changes) and retried at the next step."""
        if now < self._next_renew:
            return
        with self._lock:
            paths = list(self._holding)
        try:
            self.claims.renew(paths)
        except Exception as exc:  # noqa: BLE001 - the supervisor must go on; the leases may lapse
            error = f"{type(exc).__name__}: {exc}".splitlines()[0]
            if error != self._renew_error:
                self.log.warning("claims_renew_failed", files=len(paths), error=error)
            self._renew_error = error
            return
        self._renew_error = None
        self._next_renew = now + self.claims.lease_seconds / 3

    def shutdown(self, unfinished: list[tuple]) -> list[tuple]:
        """At the worker's end: release the claims on the files it did not finish (another
        daemon may take them over at once) and return them with the deferred ones, to be handed
        back to the watcher. Never raises."""
        try:
            self.finish(unfinished, done=False)
        except Exception as exc:  # noqa: BLE001 - the leases lapse by themselves
            self.log.warning("claims_renew_failed", files=len(unfinished), error=f"{type(exc).__name__}: {exc}")
        deferred = [item for item, _ in self.deferred.values()]
        self.deferred = {}
        return list(dict.fromkeys(unfinished + deferred))
