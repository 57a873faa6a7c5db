"""File versions: which versions of each path the store holds, and which one a change is read against.

Every document row is one version of a source path (version 1, 2, ... per path, allocated under
the stream lock). The one rule of "the version a changed file is compared with" lives here
(`_latest_accounted`): a path's newest version whose bytes are all accounted for (stored, a
duplicate, or a growth by whitespace only), not another skip. latest_versions answers it for the
ingest side; `newest_versions` and `stale_continuations` answer it under the lock for the
writers (documents.py), which is what keeps two writers of one growing file from both storing it.
What counts as seen lives here too: any row of that (path, size, mtime), but a skip that an
older extractor gave for a reason the caller says a newer one may cure (seen_many). And the
paths under a prefix with their newest rows (newest_under): the members stored for an archive,
`ARCHIVE!member`, which a rewrite of the archive is compared with.

Read only: storing a version is documents.py's. A mixin of CorpusQueue (queue.py): relies on
its `database`, and on models.py and rows.py; the functions below run inside the caller's
transaction.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import sqlalchemy as sa

from .db import Database
from .models import ESCAPED_PREFIX, IN_STREAM, documents
from .records import NewDocument, PathVersion, StoredVersion
from .rows import in_groups


class FileVersions:
    """CorpusQueue's lookups of file versions; each method reads one snapshot."""

    database: Database

    def seen_many(self, versions: Sequence[tuple[str, int, float]], *, extractor_version: int | None = None,
                  reoffered: Collection[str] = ()) -> set[tuple[str, int, float]]:
        """Which of these (path, size, mtime) file versions already have a row of any status.
        One snapshot, a few IN queries: the cheap way to reconcile a large folder.

        With `extractor_version`, a 'skipped' row whose reason is in `reoffered` and that an
        older extractor recorded (extractor_version below it, or NULL) does not count: that
        file version is offered to the current extractor again (docs/STORAGE.md, "A skip by an
        older extractor"). Its next row, whatever the verdict, counts."""
        wanted = set(versions)
        found: set[tuple[str, int, float]] = set()
        columns = (documents.c.source_path, documents.c.size, documents.c.mtime, documents.c.status,
                   documents.c.reason, documents.c.extractor_version)
        with self.database.read() as connection:
            for group in in_groups({path for path, _, _ in wanted}):
                query = sa.select(*columns).where(documents.c.source_path.in_(group))
                for path, size, mtime, status, reason, recorded in connection.execute(query):
                    if not _reoffered(status, reason, recorded, extractor_version, reoffered):
                        found.add((path, size, mtime))
        return found & wanted

    def latest_versions(self, paths: Sequence[str]) -> dict[str, StoredVersion]:
        """For each path with one, its latest version whose bytes are all accounted for (stored,
        a duplicate, or a growth by whitespace only; not a skip). One snapshot, a few IN
        queries. What a changed file is compared with (docs/STORAGE.md, "What a changed file
        means")."""
        found: dict[str, StoredVersion] = {}
        columns = (documents.c.source_path, documents.c.version, documents.c.id, documents.c.size,
                   documents.c.mtime, documents.c.content_hash, documents.c.kind, documents.c.status)
        with self.database.read() as connection:
            for group in in_groups(set(paths)):
                for path, _, *fields in connection.execute(_latest_accounted(group, columns)):
                    found[path] = StoredVersion(int(fields[0]), int(fields[1]), fields[2], *fields[3:])
        return found

    def newest_under(self, prefix: str) -> dict[str, PathVersion]:
        """Every path that starts with `prefix` (exactly: case and all), with its newest row of
        any status. One snapshot, one query (a scan of the paths: `prefix` is no folder of an
        index). For the members stored for an archive, `ARCHIVE!`."""
        forms = {prefix, ESCAPED_PREFIX + prefix.replace("%", "%25")}  # plain and escaped names, as forget
        condition = sa.or_(*(documents.c.source_path.startswith(form, autoescape=True) for form in forms))
        latest = (sa.select(documents.c.source_path, sa.func.max(documents.c.version).label("version"))
                  .where(condition).group_by(documents.c.source_path).subquery())
        columns = (documents.c.id, documents.c.source_path, documents.c.version, documents.c.status,
                   documents.c.reason, documents.c.size, documents.c.mtime, documents.c.content_hash,
                   documents.c.extractor_version)
        query = sa.select(*columns).join(latest, sa.and_(documents.c.source_path == latest.c.source_path,
                                                         documents.c.version == latest.c.version))
        with self.database.read() as connection:
            rows = connection.execute(query).all()
        # LIKE ignores ASCII case on SQLite: the prefix is checked again on the names as they are
        return {row.source_path: PathVersion(int(row.id), *row[1:]) for row in rows
                if row.source_path.startswith(prefix)}

    def seen(self, source_path: str, size: int, mtime: float) -> bool:
        """Whether this exact file version (path, size, mtime) already has a row of any status."""
        query = sa.select(documents.c.id).where(
            documents.c.source_path == source_path,
            documents.c.size == size,
            documents.c.mtime == mtime,
        )
        with self.database.read() as connection:
            return connection.execute(query.limit(1)).first() is not None


def _reoffered(status: str, reason: str | None, recorded: int | None, current: int | None,
               reasons: Collection[str]) -> bool:
    """Whether a row is a skip an older extractor gave for a reason the current one may cure."""
    return (current is not None and status == "skipped" and reason in reasons
            and (recorded is None or recorded < current))


# --- inside the caller's transaction -------------------------------------------------------------


def max_versions(connection: sa.Connection, paths: set[str]) -> dict[str, int]:
    """The highest version of each path that has rows, in a few IN queries."""
    found: dict[str, int] = {}
    for group in in_groups(paths):
        query = (sa.select(documents.c.source_path, sa.func.max(documents.c.version))
                 .where(documents.c.source_path.in_(group)).group_by(documents.c.source_path))
        found |= {path: int(version) for path, version in connection.execute(query)}
    return found


def _latest_accounted(group: list[str], columns: tuple) -> sa.Select:
    """`columns` of each path's (of `group`) newest version whose bytes are all accounted for:
    stored, a duplicate, or a growth by whitespace only (a skip with a content hash), not another
    skip. The one rule of "the version a changed file is compared with"."""
    latest = (sa.select(documents.c.source_path, sa.func.max(documents.c.version).label("version"))
              .where(documents.c.source_path.in_(group), documents.c.content_hash.is_not(None),
                     documents.c.size.is_not(None),
                     sa.or_(documents.c.status.in_((*IN_STREAM, "duplicate")), documents.c.byte_offset.is_not(None)))
              .group_by(documents.c.source_path).subquery())
    return sa.select(*columns).join(latest, sa.and_(documents.c.source_path == latest.c.source_path,
                                                    documents.c.version == latest.c.version))


def newest_versions(connection: sa.Connection, paths: set[str]) -> dict[str, int]:
    """The id of each path's newest accounted-for version (_latest_accounted), for paths with one."""
    found: dict[str, int] = {}
    for group in in_groups(paths):
        query = _latest_accounted(group, (documents.c.source_path, documents.c.id))
        found |= {path: int(document_id) for path, document_id in connection.execute(query)}
    return found


def stale_continuations(connection: sa.Connection, items: Sequence[NewDocument]) -> set[int]:
    """The indices of the items that continue a version no longer their path's newest: another
    writer stored a newer one after the caller read it, or an earlier item of the batch is a
    version of the same path. Call under the stream lock, or the answer may be stale itself."""
    continuing = {item.source_path for item in items if item.continues is not None}
    if not continuing:
        return set()
    newest = newest_versions(connection, continuing)
    stale, versioned = set(), set()
    for i, item in enumerate(items):
        if item.continues is not None and (item.source_path in versioned
                                           or newest.get(item.source_path) != item.continues):
            stale.add(i)
        else:
            versioned.add(item.source_path)
    return stale


def next_version(connection: sa.Connection, source_path: str) -> int:
    """The version the path's next row takes: 1 for a path with no rows."""
    query = sa.select(sa.func.max(documents.c.version)).where(
        documents.c.source_path == source_path
    )
    return int(connection.execute(query).scalar() or 0) + 1
