"""The plain values CorpusQueue returns: frozen dataclasses, no database handles inside."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class NewDocument:
    """One file version to add: its identity and its tokens (N,) for the stream."""

    source_path: str
    content_hash: str  # sha256 hex of the raw file bytes
    size: int
    mtime: float
    kind: str
    tokens: object  # np.ndarray (N,) of token ids


@dataclass(frozen=True)
class AddResult:
    document_id: int
    status: str  # "queued" or "duplicate"
    duplicate_of: int | None  # the queued or trained document with the same content
    version: int  # 1, 2, ... per source_path
    token_count: int  # tokens added to the stream: 0 for a duplicate
    chunks: int
    stream_start: int | None  # [stream_start, stream_end): the document's place in the stream
    stream_end: int | None


@dataclass(frozen=True)
class Cursor:
    stream_position: int  # the first stream token training has not consumed
    tokens_trained: int
    step: int


@dataclass(frozen=True)
class CheckpointRecord:
    id: int
    step: int
    path: str
    tokens_trained: int
    stream_position: int
    loss: float | None
    created_at: datetime  # aware, UTC


@dataclass(frozen=True)
class QueueStats:
    documents: dict[str, int]  # status -> rows, every status present
    tokens_total: int  # the stream's length
    tokens_queued: int  # stream tokens training has not reached yet
    tokens_trained: int  # as the trainer counts them (replay included), at the last checkpoint
    database_bytes: int
    last_checkpoint: CheckpointRecord | None
