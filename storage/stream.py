"""The token stream's layout in the database: tokens to chunk rows, and a stream range back.

A document's tokens are cut into chunks of at most `chunk_tokens` ids, each stored as raw
little-endian bytes (uint8, uint16 or uint32: the narrowest every id in the chunk fits) with its dtype and its
offset in the stream. Chunks tile the stream without overlaps, because offsets are allocated
under the lock on `meta["stream_end"]` (see `lock_stream`), and without gaps but where a
forgotten document's chunks were deleted (its range is withdrawn, so no training read asks
for it; readers that may cross one pass `missing`). Reads select only the
chunks overlapping the requested range. Each function runs inside the caller's transaction;
nothing here commits.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import sqlalchemy as sa

from .errors import StorageError
from .models import chunks, meta

DTYPE_CODES = {"uint8": "u1", "uint16": "<u2", "uint32": "<u4"}  # stored name -> little-endian numpy code
MAX_TOKEN_ID = 2**31 - 1  # windows come back as int32


def check_tokens(tokens: np.ndarray) -> np.ndarray:
    """`tokens` as a 1-D integer array; raises ValueError if empty or an id is out of range."""
    tokens = np.asarray(tokens)
    if tokens.ndim != 1 or tokens.size == 0:
        raise ValueError(f"tokens must be a non-empty 1-D array, got shape {tokens.shape}")
    if tokens.dtype.kind not in "iu":
        raise ValueError(f"tokens must be integers, got dtype {tokens.dtype}")
    low, high = int(tokens.min()), int(tokens.max())
    if low < 0 or high > MAX_TOKEN_ID:
        raise ValueError(f"token ids must be in [0, {MAX_TOKEN_ID}], got [{low}, {high}]")
    return tokens


def chunk_batches(
    document_id: int, start: int, tokens: np.ndarray, chunk_tokens: int, batch: int = 64
) -> Iterator[list[dict]]:
    """The chunks rows of a document whose tokens (N,) start at stream offset `start`, in order.

    Yielded `batch` rows at a time, one executemany each, so the blob bytes held at once stay
    bounded however long the document.
    """
    rows = []
    for seq, offset in enumerate(range(0, len(tokens), chunk_tokens)):
        piece = tokens[offset : offset + chunk_tokens]  # (<= chunk_tokens,)
        top = int(piece.max())
        # byte-level text is uint8 in every chunk but the one holding a document separator (256)
        dtype = "uint8" if top < 2**8 else "uint16" if top < 2**16 else "uint32"
        row = {"document_id": document_id, "seq": seq, "stream_start": start + offset}
        row |= {"token_count": len(piece), "dtype": dtype}
        rows.append(row | {"tokens": piece.astype(DTYPE_CODES[dtype]).tobytes()})
        if len(rows) == batch:
            yield rows
            rows = []
    if rows:
        yield rows


def lock_stream(connection: sa.Connection) -> int:
    """Locks the stream_end row until the transaction ends; returns the next free offset.

    PostgreSQL: SELECT ... FOR UPDATE, so writers queue here. SQLite renders no FOR UPDATE: the
    write transaction's BEGIN IMMEDIATE already holds the database's one write lock.
    """
    query = sa.select(meta.c.value).where(meta.c.key == "stream_end").with_for_update()
    return int(connection.execute(query).scalar_one())


def stream_end(connection: sa.Connection) -> int:
    """The stream's length: the next free offset, as last committed."""
    query = sa.select(meta.c.value).where(meta.c.key == "stream_end")
    return int(connection.execute(query).scalar_one())


def advance_stream(connection: sa.Connection, end: int) -> None:
    """Sets the next free offset: under lock_stream, in the transaction that stored the chunks."""
    connection.execute(meta.update().where(meta.c.key == "stream_end").values(value=str(end)))


def overlapping_chunks(start: int, stop: int) -> sa.Select:
    """The chunks overlapping stream range [start, stop), in order; both bounds use the index.

    The first is the one holding `start` (the greatest stream_start <= start); chunks tile the
    stream, so the rest are exactly those starting before `stop` (from 0 when no chunk starts at
    or before `start`: a forgotten document's chunks are deleted). Equivalent to
    "stream_start < stop AND stream_start + token_count > start", without scanning every earlier
    chunk to evaluate the second condition.
    """
    first = sa.select(sa.func.max(chunks.c.stream_start)).where(chunks.c.stream_start <= start)
    return (
        sa.select(chunks.c.stream_start, chunks.c.token_count, chunks.c.dtype, chunks.c.tokens)
        .where(chunks.c.stream_start >= sa.func.coalesce(first.scalar_subquery(), 0),
               chunks.c.stream_start < stop)
        .order_by(chunks.c.stream_start)
    )


def read_range(connection: sa.Connection, start: int, stop: int, missing: int | None = None) -> np.ndarray:
    """Stream tokens [start, stop) as int32 (stop - start,).

    A token that is not stored (a forgotten document's chunks are deleted) raises StorageError,
    or with `missing` is that value instead (readers that skip withdrawn text use -1)."""
    out = np.empty(stop - start, np.int32)  # (stop - start,)
    if missing is not None:
        out.fill(missing)
    filled = start  # every token before this offset is in `out`
    for chunk_start, count, dtype, blob in connection.execute(overlapping_chunks(start, stop)):
        low, high = max(start, chunk_start), min(stop, chunk_start + count)
        if high <= low:
            continue  # ends before the range: not expected from the query, harmless
        if low != filled and missing is None:
            break
        values = np.frombuffer(blob, dtype=DTYPE_CODES[dtype])  # (count,)
        out[low - start : high - start] = values[low - chunk_start : high - chunk_start]
        filled = high
    if filled != stop and missing is None:
        raise StorageError(f"stream tokens [{start}, {stop}) are not all stored: gap at {filled}")
    return out
