"""What the store holds for a file: every version of a path, and what became of each one's text.

`document_versions` answers `crystalline show`: the rows a path or a document id names (every
version of that path, oldest first), each with its place in the stream, its verdict (a skip's
reason, the document a duplicate points at) and the ranges of its text that were withdrawn
(superseded by a rewrite, or forgotten). The tokens themselves are read with
StreamReads.read_tokens; turning them back into text is the caller's tokenizer's.

Read only. Not the lookups that decide what to ingest (versions.py) nor forgetting
(withdrawal.py). A mixin of CorpusQueue (queue.py): relies on its `database`, and on models.py
and rows.py.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import sqlalchemy as sa

from .db import Database
from .models import documents, withdrawn
from .rows import in_groups


@dataclass(frozen=True)
class DocumentRow:
    """One version of a file as stored: a document row and the withdrawn ranges of its text."""

    id: int
    source_path: str
    version: int  # 1, 2, ... per source_path
    status: str  # queued | trained | duplicate | skipped | failed
    reason: str | None  # a skip's reason ("binary", ..., "forgotten"); None for stored text
    detail: str | None
    duplicate_of: int | None  # a duplicate: the document that holds its text
    token_count: int  # tokens it put in the stream (0 for a duplicate or a skip)
    stream_start: int | None  # [stream_start, stream_end): its text's place in the stream
    stream_end: int | None
    byte_offset: int | None  # a file that only grew: the first byte of its new text
    continues: int | None  # ... and the id of the version it continues
    extractor_version: int | None  # the extractor that read it; None before revision 0007
    withdrawn: tuple[tuple[int, int, str], ...] = ()  # (start, end, reason) of its withdrawn text


class DocumentText:
    """CorpusQueue's reads of whole document rows; each method reads one snapshot."""

    database: Database

    def document_versions(self, *, paths: Sequence[str] = (),
                          document_ids: Sequence[int] = ()) -> list[DocumentRow]:
        """Every version of each path in `paths`, and of the path of each id in
        `document_ids`, sorted by (path, version). One snapshot, a few IN queries; a name that
        matches nothing adds nothing."""
        columns = (documents.c.id, documents.c.source_path, documents.c.version, documents.c.status,
                   documents.c.reason, documents.c.detail, documents.c.duplicate_of, documents.c.token_count,
                   documents.c.stream_start, documents.c.stream_end, documents.c.byte_offset,
                   documents.c.continues, documents.c.extractor_version)
        with self.database.read() as connection:
            wanted = set(paths)
            for group in in_groups({int(i) for i in document_ids}):
                query = sa.select(documents.c.source_path).where(documents.c.id.in_(group))
                wanted |= set(connection.execute(query).scalars())
            rows = []
            for group in in_groups(wanted):
                rows += connection.execute(sa.select(*columns).where(documents.c.source_path.in_(group))).all()
            ranges: dict[int, list[tuple[int, int, str]]] = {}
            for group in in_groups({row.id for row in rows}):
                query = (sa.select(withdrawn.c.document_id, withdrawn.c.stream_start, withdrawn.c.stream_end,
                                   withdrawn.c.reason)
                         .where(withdrawn.c.document_id.in_(group)).order_by(withdrawn.c.stream_start))
                for document_id, start, end, reason in connection.execute(query):
                    ranges.setdefault(int(document_id), []).append((int(start), int(end), reason))
        found = [DocumentRow(*row, withdrawn=tuple(ranges.get(row.id, ()))) for row in rows]
        return sorted(found, key=lambda row: (row.source_path, row.version))
