"""File claims: which of several daemons watching one folder ingests each file.

Each claim is a `claims` row (models.py): the file's path, the daemon that holds it, when its
lease ends and how many times it was claimed without being finished. A daemon claims a file
before reading it and deletes the claim once the file's outcome is stored; a daemon that dies
mid-file stops renewing its leases, so after `lease_seconds` another daemon (or its restart)
takes the file over. A file claimed `max_attempts` times without being finished (a file that
kills every daemon that reads it, say) is handed back as exhausted, for the caller to record as
failed.

Claiming is `SELECT ... FOR UPDATE SKIP LOCKED` on PostgreSQL: a row another daemon is claiming
at this moment is skipped (it is theirs), never waited on; a new row is `INSERT ... ON CONFLICT
DO NOTHING`, so of two daemons inserting the same path one gets it. On SQLite the write
transaction (BEGIN IMMEDIATE) already serializes claimers. Claims are an economy, not what keeps
a document single: a takeover of a file whose first reader was only slow stores a duplicate row
(add_documents deduplicates by content hash under the stream lock), never a second copy of the text.

Times are seconds since the epoch on the database's clock (PostgreSQL's clock_timestamp(), so
machines with skewed clocks agree; time.time() on SQLite), or on an injected clock in tests.
Paths are text as the caller gives them: every daemon must see the shared folder at the same path.
Knows nothing of files, the engine or the crawler.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite

from .db import Database
from .models import claims, encode_path

GROUP = 500  # paths per statement: well under every dialect's limit on bound parameters


@dataclass
class ClaimResult:
    """What one claim() decided, path by path; every path given is in exactly one of the three."""

    claimed: list[str] = field(default_factory=list)  # ours now, in the order given: ingest them
    held: dict[str, float] = field(default_factory=dict)  # another's live claim: path -> seconds left on its lease
    # claimed max_attempts times and never finished: path -> why, in words; held by us now, so
    # that one daemon records it as failed, then releases it with done=True
    exhausted: dict[str, str] = field(default_factory=dict)


class FileClaims:
    """One daemon's claims on a database; thread-safe (each method is one transaction)."""

    def __init__(self, database: Database, owner: str, *, lease_seconds: float = 300.0, max_attempts: int = 3,
                 clock: Callable[[], float] | None = None):
        if not lease_seconds > 0 or max_attempts < 1:
            raise ValueError(f"lease_seconds ({lease_seconds}) must be positive and max_attempts ({max_attempts}) "
                             "at least 1")
        self.database, self.owner = database, owner
        self.lease_seconds, self.max_attempts = float(lease_seconds), int(max_attempts)
        self.clock = clock

    def claim(self, paths: Iterable[str]) -> ClaimResult:
        """Claims each path that is free, expired, or already ours; one transaction. Never waits
        for another daemon's claim in progress (that path is held). May block up to
        busy_timeout_ms for another writer on SQLite."""
        wanted = list(dict.fromkeys(paths))
        # every claimer inserts new rows in one order, so two never wait on each other's inserts
        # in a cycle (a deadlock); the result keeps the order given
        ordered = sorted(wanted, key=encode_path)
        result = ClaimResult()
        taken: set[str] = set()
        with self.database.write() as connection:
            now = self._now(connection)
            until = now + self.lease_seconds
            for start in range(0, len(ordered), GROUP):
                group = ordered[start:start + GROUP]
                query = (sa.select(claims.c.path, claims.c.claimed_by, claims.c.lease_until, claims.c.attempts)
                         .where(_among(connection, group)).with_for_update(skip_locked=True))
                rows = {row.path: row for row in connection.execute(query)}
                take, spent = [], []
                for path, row in rows.items():
                    if row.claimed_by != self.owner and row.lease_until > now:
                        result.held[path] = row.lease_until - now
                    elif row.attempts >= self.max_attempts:
                        spent.append(path)
                        result.exhausted[path] = (f"claimed {row.attempts} times without being finished (the last "
                                                  f"claim by {row.claimed_by}): a daemon died or failed while "
                                                  "reading it each time")
                    else:
                        take.append(path)
                for paths_, attempts in ((take, claims.c.attempts + 1), (spent, claims.c.attempts)):
                    if paths_:
                        connection.execute(claims.update().where(_among(connection, paths_)).values(
                            claimed_by=self.owner, lease_until=until, attempts=attempts))
                taken.update(take)
                new = [path for path in group if path not in rows]
                if new:
                    insert = _insert_new(connection, new, self.owner, until).returning(claims.c.path)
                    inserted = set(connection.execute(insert).scalars())
                    taken.update(inserted)
                    # a row we could not see (another daemon is claiming it now) or insert: theirs
                    result.held.update({p: self.lease_seconds for p in new if p not in inserted})
        result.claimed = [path for path in wanted if path in taken]
        return result

    def renew(self, paths: Iterable[str]) -> int:
        """Extends the lease of each of these paths that is still ours; returns how many."""
        wanted = list(dict.fromkeys(paths))
        count = 0
        if not wanted:
            return 0
        with self.database.write() as connection:
            until = self._now(connection) + self.lease_seconds
            for start in range(0, len(wanted), GROUP):
                statement = claims.update().where(_among(connection, wanted[start:start + GROUP]),
                                                  claims.c.claimed_by == self.owner).values(lease_until=until)
                count += connection.execute(statement).rowcount
        return count

    def release(self, paths: Iterable[str], *, done: bool) -> None:
        """Gives up our claims on these paths: `done` deletes them (the file's outcome is stored);
        otherwise the lease ends now and the attempts stay counted, for any daemon to take over.
        A claim another daemon took over meanwhile is left alone."""
        wanted = list(dict.fromkeys(paths))
        if not wanted:
            return
        with self.database.write() as connection:
            now = self._now(connection)
            for start in range(0, len(wanted), GROUP):
                mine = sa.and_(_among(connection, wanted[start:start + GROUP]), claims.c.claimed_by == self.owner)
                statement = claims.delete().where(mine) if done else claims.update().where(mine).values(lease_until=now)
                connection.execute(statement)

    def _now(self, connection: sa.Connection) -> float:
        """The time for leases; on PostgreSQL also makes this transaction's commit asynchronous:
        a claim lost to a server crash costs at most a second reading of a file (stored once by
        its content hash), so it need not wait for the disk, as a document's commit must."""
        if self.database.dialect == "postgresql":
            connection.execute(sa.text("SET LOCAL synchronous_commit TO OFF"))
        if self.clock is not None:
            return float(self.clock())
        if self.database.dialect == "postgresql":
            return float(connection.execute(sa.text("SELECT extract(epoch FROM clock_timestamp())")).scalar_one())
        return time.time()


# On PostgreSQL a group of paths travels as one array parameter (`= ANY(:paths)`, `unnest`), so
# each statement's text is the same whatever the group's size: compiled and parsed once, where an
# IN list or a many-row VALUES of 256 paths cost more than the claim itself (bench/claims.py).
PATH_ARRAY = postgresql.ARRAY(sa.Text)


def _among(connection: sa.Connection, paths: list[str]) -> sa.ColumnElement[bool]:
    """claims.path is one of `paths`."""
    if connection.dialect.name == "postgresql":
        return claims.c.path == sa.any_(sa.bindparam("paths", [encode_path(p) for p in paths], type_=PATH_ARRAY))
    return claims.c.path.in_(paths)


def _insert_new(connection: sa.Connection, paths: list[str], owner: str, until: float):
    """INSERT of a first claim on each path, doing nothing for a path that has a row already."""
    if connection.dialect.name == "postgresql":
        rows = sa.select(sa.func.unnest(sa.bindparam("new", [encode_path(p) for p in paths], type_=PATH_ARRAY)),
                         sa.literal(owner, sa.Text), sa.literal(until, sa.Double), sa.literal(1, sa.Integer))
        insert = postgresql.insert(claims).from_select(["path", "claimed_by", "lease_until", "attempts"], rows)
    else:
        insert = sqlite.insert(claims).values(
            [{"path": p, "claimed_by": owner, "lease_until": until, "attempts": 1} for p in paths])
    return insert.on_conflict_do_nothing(index_elements=["path"])
