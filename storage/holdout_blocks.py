"""The held-out blocks beyond the base, per source and spread over the stream: which lattice
blocks beyond the split's base are held out, decided once each, in stream order, and recorded in
`holdout_blocks`.

The rule (holdout.py, `choose_source_blocks`) needs each block's source, which depends on the
documents, and whether a model has read it, so it cannot be pure arithmetic over offsets like
the base: the training loop asks
for it (`settle_holdout`) before it reads text it has not read, and every lattice block whose
first token is stored by then is decided and the decision recorded. A block is decided once:
held out, it is recorded and stays so; passed over, it is training text for good (the frontier,
meta["holdout_frontier"], says which blocks are decided). So the blocks only change by new ones
being added at the stream's end, and a figure measured on them stays comparable.

The one rule that keeps the figures honest: a block is held out only if no model has read any of
its tokens. `settle_holdout` passes over every block whose first token lies at or before the
caller's position (the furthest offset its model, or a model it may still evaluate, has read)
or the committed cursor, and every block whose region meets withdrawn text. Reads stop at the
frontier (StreamMask.decided_end) until the next call decides further, so no block is read
before it is decided; a state of an earlier release (no frontier yet) is decided from the start
with the position of its checkpoint, so text it trained on stays training text.

Which source a path belongs to is the caller's: `source_of(path) -> name` (the crawler groups
by the watched folder's top-level folders), applied to the path of the document holding a
block's first token; only the counts it yields steer new choices, so a changed grouping never
changes a block already decided. Not the reads that skip the blocks (reads.py), nor the split's
arithmetic (holdout.py). A mixin of CorpusQueue (queue.py): relies on its `database`, on
models.py, stream.py's lock, rows.py and training_state.py's cursor.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import numpy as np
import sqlalchemy as sa

from .db import Database
from .holdout import HoldoutSplit, choose_source_blocks
from .mask import StreamMask
from .models import chunks, documents, holdout_blocks, meta, withdrawn
from .rows import in_groups, meta_value
from .stream import lock_stream, stream_end
from .training_state import read_cursor

FRONTIER = "holdout_frontier"  # meta key: lattice blocks below this block index are decided
POINT_LOOKUPS = 64  # up to this many offsets, one indexed query each; beyond, one range scan


class HeldOut(NamedTuple):
    """The per-source blocks as recorded, and how far the choice is made."""

    blocks: np.ndarray  # int64 (H,) held-out blocks beyond the base, ascending
    decided_end: int | None  # stream offset: every lattice block starting before it is decided
    added: dict[str, int]  # the blocks this call held out beyond the base, by source


class HoldoutBlocks:
    """CorpusQueue's per-source held-out blocks; each method is one transaction."""

    database: Database

    def held_out_blocks(self, split: HoldoutSplit) -> HeldOut:
        """The per-source blocks recorded beyond `split`'s base, and the frontier's offset (None
        for a split that holds out nothing beyond its base: nothing to wait for). One read."""
        with self.database.read() as connection:
            return HeldOut(recorded_blocks(connection, split), _decided_end(connection, split), {})

    def settle_holdout(self, split: HoldoutSplit, position: int, source_of: Callable[[str], str]) -> HeldOut:
        """Decide every undecided lattice block whose first token is stored, and record it. Atomic.

        Base blocks are recorded as held out. A block beyond the base is held out by the
        per-source and spread rule (holdout.choose_source_blocks, sources named by `source_of`
        on document paths), unless a model has read it: its first token at or before `position` (the caller's
        furthest read) or the committed cursor; or its region meets withdrawn text. The frontier
        then moves past the last block whose first token is stored. Takes the stream lock (as
        add_documents does) only when there is something to decide; a split that holds out
        nothing beyond its base decides nothing.
        """
        if not split.beyond_base:
            return HeldOut(np.empty(0, np.int64), None, {})
        S = split.block_tokens
        with self.database.read() as connection:
            if _frontier(connection) * S >= stream_end(connection):  # nothing new since the last call
                return HeldOut(recorded_blocks(connection, split), _decided_end(connection, split), {})
        with self.database.write() as connection:
            end = lock_stream(connection)
            frontier = _frontier(connection)
            last = (end - 1) // S  # the last block whose first token is stored
            blocks = split.lattice(frontier, last)  # (n,)
            added: dict[str, int] = {}
            if blocks.size:
                added = _decide(connection, split, blocks, max(position, read_cursor(connection).stream_position),
                                source_of)
            _set_frontier(connection, max(frontier, last + 1))
            return HeldOut(recorded_blocks(connection, split), _decided_end(connection, split), added)


# --- statements (each inside the caller's transaction) -------------------------------------------


def _decide(connection: sa.Connection, split: HoldoutSplit, blocks: np.ndarray, read_to: int,
            source_of: Callable[[str], str]) -> dict[str, int]:
    """Record the base blocks among `blocks` (lattice blocks, ascending) as held out and make the
    per-source choice among the rest; returns the blocks held out beyond the base, by source."""
    S = split.block_tokens
    owners = documents_at(connection, blocks * S)  # (n,) the document holding each first token
    paths = document_paths(connection, owners)
    base = split.in_base(blocks) & (owners >= 0)  # (n,)
    rows = [{"block": int(k), "document_id": int(d)} for k, d in zip(blocks[base], owners[base])]
    beyond = ~split.in_base(blocks)  # (n,)
    added: dict[str, int] = {}
    if beyond.any():
        ks, ds = blocks[beyond], owners[beyond]  # (m,) each
        query = (sa.select(withdrawn.c.stream_start, withdrawn.c.stream_end)
                 .where(withdrawn.c.stream_end > int(ks[0]) * S))
        ranges = np.array(connection.execute(query).all(), np.int64).reshape(-1, 2)  # (R, 2)
        gone = StreamMask.of(None, ranges[:, 0], ranges[:, 1]).withdrawn_overlaps(ks * S, S + 1)  # (m,)
        # no model has read a token of it (a region starts at its first token), none is withdrawn
        open_ = (ks * S > read_to) & ~gone & (ds >= 0)  # (m,)
        recorded = connection.execute(sa.select(holdout_blocks.c.block, documents.c.source_path).join(
            documents, documents.c.id == holdout_blocks.c.document_id)).all()
        counts: dict[str, int] = {}  # held-out blocks by source, counted with today's grouping
        for path in [path for _, path in recorded] + [paths[int(d)] for d in owners[base]]:
            name = source_of(path)
            counts[name] = counts.get(name, 0) + 1
        kept = np.array([block for block, _ in recorded], np.int64)  # (H,)
        extra = int((~split.in_base(kept) & ~split.on_spread(kept)).sum())  # by the per-source rule
        names = [source_of(paths[int(d)]) if free else None for d, free in zip(ds.tolist(), open_.tolist())]
        held = choose_source_blocks(split, names, counts, extra, split.on_spread(ks))  # (m,)
        for i in np.flatnonzero(held).tolist():
            rows.append({"block": int(ks[i]), "document_id": int(ds[i])})
            added[names[i]] = added.get(names[i], 0) + 1
    if rows:
        connection.execute(holdout_blocks.insert(), rows)
    return added


def recorded_blocks(connection: sa.Connection, split: HoldoutSplit) -> np.ndarray:
    """The recorded held-out blocks beyond `split`'s base: int64 (H,), ascending. Whatever split
    the caller holds (one read before the store's was extended, too): a block recorded is held out."""
    found = np.array(connection.execute(sa.select(holdout_blocks.c.block).order_by(holdout_blocks.c.block))
                     .scalars().all(), np.int64)  # (all,)
    return found[~split.in_base(found)] if found.size else found


def block_paths(connection: sa.Connection, blocks: np.ndarray, block_tokens: int) -> list[str]:
    """Per block, the source path of the document holding its first token: the recorded document
    where there is one, else found by offset."""
    blocks = np.asarray(blocks, np.int64)
    if blocks.size == 0:
        return []
    owners = np.full(blocks.size, -1, np.int64)  # (n,)
    found: dict[int, int] = {}
    for group in in_groups(blocks.tolist()):
        query = sa.select(holdout_blocks.c.block, holdout_blocks.c.document_id).where(holdout_blocks.c.block.in_(group))
        found.update(dict(connection.execute(query).all()))
    for i, k in enumerate(blocks.tolist()):
        owners[i] = found.get(k, -1)
    missing = np.flatnonzero(owners < 0)
    if missing.size:
        owners[missing] = documents_at(connection, blocks[missing] * block_tokens)
    paths = document_paths(connection, owners)
    return [paths.get(int(d), "") for d in owners]


def documents_at(connection: sa.Connection, offsets: np.ndarray) -> np.ndarray:
    """The id of the document holding each stream offset: int64 (n,), -1 where none does (past
    the stream's end), for offsets in any order. Through the chunks' stream_start index: one query an
    offset for a few, one range scan of the chunks between the first and the last for more
    (their rows, not their tokens); an offset whose chunk is gone (a forgotten document) is
    looked up in the documents' ranges."""
    offsets = np.asarray(offsets, np.int64)  # (n,)
    out = np.full(offsets.size, -1, np.int64)
    if offsets.size == 0:
        return out
    columns = (chunks.c.stream_start, chunks.c.token_count, chunks.c.document_id)
    if offsets.size <= POINT_LOOKUPS:
        rows = []
        for x in offsets.tolist():
            row = connection.execute(sa.select(*columns).where(chunks.c.stream_start <= x)
                                     .order_by(chunks.c.stream_start.desc()).limit(1)).first()
            if row is not None:
                rows.append(tuple(row))
    else:
        lo, hi = int(offsets.min()), int(offsets.max())
        first = sa.select(sa.func.max(chunks.c.stream_start)).where(chunks.c.stream_start <= lo)
        query = (sa.select(*columns).where(chunks.c.stream_start >= sa.func.coalesce(first.scalar_subquery(), 0),
                                            chunks.c.stream_start <= hi))
        rows = [tuple(row) for row in connection.execute(query)]
    table = np.array(sorted(set(rows)), np.int64).reshape(-1, 3)  # (C, 3): start, count, document
    if table.size:
        i = np.searchsorted(table[:, 0], offsets, side="right") - 1  # (n,) the chunk starting at or before
        ok = i >= 0
        ok[ok] = offsets[ok] < table[i[ok], 0] + table[i[ok], 1]
        out[ok] = table[i[ok], 2]
    for j in np.flatnonzero(out < 0).tolist():  # its chunks deleted: the document's row keeps its range
        x = int(offsets[j])
        query = sa.select(documents.c.id).where(documents.c.stream_start <= x, documents.c.stream_end > x).limit(1)
        found = connection.execute(query).scalar()
        out[j] = -1 if found is None else found
    return out


def document_paths(connection: sa.Connection, ids: np.ndarray) -> dict[int, str]:
    """The source path of each document id."""
    paths: dict[int, str] = {}
    for group in in_groups({int(i) for i in np.asarray(ids).tolist() if i >= 0}):
        query = sa.select(documents.c.id, documents.c.source_path).where(documents.c.id.in_(group))
        paths.update(dict(connection.execute(query).all()))
    return paths


def _frontier(connection: sa.Connection) -> int:
    value = meta_value(connection, FRONTIER)
    return 0 if value is None else int(value)


def _decided_end(connection: sa.Connection, split: HoldoutSplit) -> int | None:
    return _frontier(connection) * split.block_tokens if split.beyond_base else None


def _set_frontier(connection: sa.Connection, block: int) -> None:
    if meta_value(connection, FRONTIER) is None:
        connection.execute(meta.insert().values(key=FRONTIER, value=str(block)))
    else:
        connection.execute(meta.update().where(meta.c.key == FRONTIER).values(value=str(block)))
