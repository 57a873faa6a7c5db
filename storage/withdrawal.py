"""Withdrawn text: the stream ranges training no longer reads, how they get there, and the mask.

Text leaves training two ways, each a row in the `withdrawn` table: a rewritten file's earlier
versions lose the tokens training has not reached ("superseded": add_documents calls
`supersede` in its own transaction, and so does record_removed for a member no longer in its
rewritten archive), and `forget` removes a document's text from the store
("forgotten": its chunks are deleted). Offsets never move, so the cursor and the checkpoints
stay valid. stream_mask returns the held-out split and every withdrawn range as one StreamMask
(mask.py), which the reads (reads.py) take where they take a HoldoutSplit.

Not the decision that a file was rewritten (documents.py) nor the reads that skip the ranges.
A mixin of CorpusQueue (queue.py): relies on its `database`, and on models.py, stream.py's lock
and rows.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa

from .db import Database
from .holdout import HoldoutSplit
from .mask import StreamMask
from .models import ESCAPED_PREFIX, IN_STREAM, chunks, documents, withdrawn
from .records import ForgetResult
from .rows import in_groups
from .stream import lock_stream


class Withdrawal:
    """CorpusQueue's withdrawn text; each method is one transaction."""

    database: Database

    def withdrawal_generation(self) -> int:
        """The newest withdrawn row's id (0 before the first): one small read, for a reader to
        tell whether its StreamMask is stale."""
        with self.database.read() as connection:
            return int(connection.execute(sa.select(sa.func.max(withdrawn.c.id))).scalar() or 0)

    def stream_mask(self, split: HoldoutSplit | None) -> StreamMask:
        """`split` and every withdrawn range as one StreamMask, from one snapshot."""
        query = sa.select(withdrawn.c.id, withdrawn.c.stream_start, withdrawn.c.stream_end)
        with self.database.read() as connection:
            rows = np.array(connection.execute(query).all(), np.int64).reshape(-1, 3)  # (R, 3)
        generation = int(rows[:, 0].max()) if len(rows) else 0
        return StreamMask.of(split, rows[:, 1], rows[:, 2], generation)

    def forget(self, *, paths: Sequence[str] = (), document_ids: Sequence[int] = (),
               prefixes: Sequence[str] = (), dry_run: bool = False) -> ForgetResult:
        """Removes documents' text from the store and from all future training, replay and
        held-out evaluation. Atomic and durable; with `dry_run`, says what it would remove and
        changes nothing.

        Names documents by source path (every version of it), by id, or by path prefix (a
        folder: end it with "/"). A named duplicate stands for the text it duplicates, so that
        text goes (with every other path that shares it: ForgetResult.sharing). Each document
        whose text is in the stream has its chunks deleted (on SQLite with secure_delete, and
        the write-ahead log truncated afterwards, so the bytes leave the files too; PostgreSQL
        frees them at its next VACUUM), its range recorded as withdrawn ("forgotten"), and
        becomes `skipped` with reason "forgotten" (its row stays: the file is not ingested again
        unless it changes). Offsets do not move; the cursor and the checkpoints stay valid.
        """
        wanted_ids = {int(i) for i in document_ids}
        columns = (documents.c.id, documents.c.source_path, documents.c.status, documents.c.duplicate_of,
                   documents.c.stream_start, documents.c.stream_end)
        with self.database.write(durable=True) as connection:
            lock_stream(connection)
            named: dict[int, sa.Row] = {}
            found: set[str] = set()  # the paths and prefixes that named something
            for group in in_groups(set(paths)):
                for row in connection.execute(sa.select(*columns).where(documents.c.source_path.in_(group))):
                    named[row.id] = row
                    found.add(row.source_path)
            for prefix in prefixes:
                forms = {prefix, ESCAPED_PREFIX + prefix.replace("%", "%25")}  # plain and escaped names
                condition = sa.or_(*(documents.c.source_path.startswith(form, autoescape=True) for form in forms))
                for row in connection.execute(sa.select(*columns).where(condition)):
                    if row.source_path.startswith(prefix):
                        named[row.id] = row
                        found.add(prefix)
            for group in in_groups(wanted_ids):
                for row in connection.execute(sa.select(*columns).where(documents.c.id.in_(group))):
                    named[row.id] = row
            not_found = [p for p in (*paths, *prefixes) if p not in found]
            not_found += [str(i) for i in sorted(wanted_ids - set(named))]
            # the documents whose text is in the stream: the named ones, and the originals of named duplicates
            targets = {i for i, row in named.items() if row.status in IN_STREAM}
            originals = {row.duplicate_of for row in named.values() if row.status == "duplicate" and row.duplicate_of}
            for group in in_groups(originals - targets):
                query = sa.select(documents.c.id).where(documents.c.id.in_(group), documents.c.status.in_(IN_STREAM))
                targets |= {int(i) for i in connection.execute(query).scalars()}
            already = sorted(i for i in wanted_ids & set(named)
                             if i not in targets and named[i].duplicate_of not in targets)
            rows = []
            for group in in_groups(targets):
                rows += connection.execute(sa.select(*columns).where(documents.c.id.in_(group))).all()
            sharing: set[str] = set()
            for group in in_groups(targets):
                query = sa.select(documents.c.source_path).where(documents.c.duplicate_of.in_(group))
                sharing |= set(connection.execute(query).scalars())
            forgotten_paths = sorted({row.source_path for row in rows})
            sharing -= set(forgotten_paths)
            tokens = sum(int(row.stream_end) - int(row.stream_start) for row in rows)
            result = ForgetResult(sorted(targets), forgotten_paths, tokens, sorted(sharing), already, not_found)
            if dry_run or not targets:
                return result
            if self.database.dialect == "sqlite":
                connection.exec_driver_sql("PRAGMA secure_delete = ON")
            for group in in_groups(targets):
                connection.execute(chunks.delete().where(chunks.c.document_id.in_(group)))
                connection.execute(documents.update().where(documents.c.id.in_(group)).values(
                    status="skipped", reason="forgotten", detail="text removed by `crystalline forget`"))
            connection.execute(withdrawn.insert(), [
                {"document_id": row.id, "stream_start": row.stream_start, "stream_end": row.stream_end,
                 "reason": "forgotten"} for row in rows])
            if self.database.dialect == "sqlite":
                connection.exec_driver_sql("PRAGMA secure_delete = OFF")
        self.database.truncate_log()
        return result


# --- inside the caller's transaction -------------------------------------------------------------


def supersede(connection: sa.Connection, source_path: str, new_id: int, keep: set, cursor: int) -> int:
    """Withdraws the tokens at or after `cursor` of the path's earlier versions in the stream
    (not those in `keep`, nor one already superseded); returns how many tokens that was. For
    add_documents and record_removed, under the stream lock they already hold."""
    already = sa.select(withdrawn.c.id).where(withdrawn.c.document_id == documents.c.id,
                                              withdrawn.c.reason == "superseded").exists()
    query = sa.select(documents.c.id, documents.c.stream_start, documents.c.stream_end).where(
        documents.c.source_path == source_path, documents.c.status.in_(IN_STREAM),
        documents.c.id != new_id, documents.c.stream_end > cursor, ~already)
    total = 0
    for document_id, start, end in connection.execute(query).all():
        if document_id in keep:
            continue
        start = max(int(start), cursor)
        connection.execute(withdrawn.insert().values(document_id=document_id, stream_start=start,
                                                     stream_end=int(end), reason="superseded"))
        total += int(end) - start
    return total
