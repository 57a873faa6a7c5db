"""The plain values CorpusQueue returns: frozen dataclasses, no database handles inside."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime

import numpy as np


@dataclass(frozen=True)
class NewDocument:
    """One file version to add: its identity and its tokens (N,) for the stream."""

    source_path: str
    content_hash: str  # sha256 hex of the raw file bytes
    size: int
    mtime: float
    kind: str
    tokens: object  # np.ndarray (N,) of token ids
    # a file that only grew: its tokens are the text from this byte of the file on, and it
    # continues that version (the id of the path's previous version); None for a whole file
    byte_offset: int | None = None
    continues: int | None = None


@dataclass(frozen=True)
class StoredVersion:
    """The latest version of a path whose bytes were read: what a changed file is compared with."""

    document_id: int
    size: int
    mtime: float
    content_hash: str  # sha256 hex of the file's bytes [0, size)
    kind: str | None
    status: str


@dataclass(frozen=True)
class PathVersion:
    """A path's newest row, of any status: what the member of a rewritten archive is compared
    with (its content hash), and whether it still holds text (its status and reason)."""

    document_id: int
    source_path: str
    version: int
    status: str  # queued | trained | duplicate | skipped | failed
    reason: str | None
    size: int | None
    mtime: float | None
    content_hash: str | None  # sha256 hex of the bytes it was read from; None when not read
    extractor_version: int | None


@dataclass(frozen=True)
class AddResult:
    document_id: int | None  # None when stale: nothing was written
    # "queued", "duplicate", or "stale": a version that `continues` one that is no longer its
    # path's newest (another writer stored a newer one since it was read): read the file again
    status: str
    duplicate_of: int | None  # the queued or trained document with the same content
    version: int  # 1, 2, ... per source_path (0 when stale)
    token_count: int  # tokens added to the stream: 0 for a duplicate
    chunks: int
    stream_start: int | None  # [stream_start, stream_end): the document's place in the stream
    stream_end: int | None
    # a rewrite: tokens of the path's earlier versions withdrawn because training had not reached them
    withdrawn_tokens: int = 0


@dataclass(frozen=True)
class Cursor:
    stream_position: int  # the first stream token training has not consumed
    tokens_trained: int  # new stream tokens trained on (replay and further passes not counted)
    step: int


@dataclass(frozen=True)
class CheckpointRecord:
    id: int
    step: int
    path: str
    tokens_trained: int  # new stream tokens trained on, as the cursor counts them
    stream_position: int
    loss: float | None
    created_at: datetime  # aware, UTC


@dataclass(frozen=True)
class QueueStats:
    documents: dict[str, int]  # status -> rows, every status present
    tokens_total: int  # the stream's length
    tokens_queued: int  # stream tokens training has not reached yet (withdrawn ones not counted)
    tokens_trained: int  # new stream tokens trained on (replay not counted), at the last checkpoint
    database_bytes: int
    last_checkpoint: CheckpointRecord | None
    tokens_withdrawn: int = 0  # stream tokens no training reads: superseded or forgotten


@dataclass(frozen=True)
class EvaluationRecord:
    id: int
    step: int
    epoch: float  # passes over the stream, as the trainer counts them
    tokens_trained: int  # new stream tokens trained on (replay and further passes not counted)
    val_bits_per_byte: float  # on the held-out set
    train_bits_per_byte: float | None  # on recent training windows, when measured
    holdout_tokens: int  # targets scored: HoldoutSet.tokens at the time
    seconds: float  # how long the evaluation took
    best: bool  # the lowest val_bits_per_byte so far, as the caller judged it
    created_at: datetime  # aware, UTC
    # per source: {"SOURCE": {"val_bits_per_byte": x, "holdout_tokens": n}}; None before revision 0009
    sources: dict | None = None
    # the model measured: {"d_model", "n_head", "n_layer", "parameters", "grown_at_step",
    # "grown_from_layers"} (the growth that gave it this shape; null if none); None before revision 0010
    model: dict | None = None


@dataclass(frozen=True, eq=False)  # identity equality: arrays do not compare to one bool
class HoldoutSet:
    """The evaluation windows of every complete held-out block, in stream order.

    Each block's region (S + 1 tokens) gives n = S // seq_len windows and, when r = S % seq_len
    is not 0, one tail window of r + 1 tokens; every target of every region is in exactly one.
    """

    blocks: int  # complete held-out blocks
    tokens: int  # blocks * S: the targets scored
    windows: np.ndarray  # int32 (blocks * n, seq_len + 1)
    tail: np.ndarray  # int32 (blocks, r + 1) when r > 0; (0, 1) when r == 0
    key: str = ""  # names the set of blocks: equal keys, equal held-out text (withdrawals change it)
    paths: tuple[str, ...] = ()  # per block, the source path of the document holding its first token
    # per block, the stretch of stream it stands for (holdout.block_weights), float64 (blocks,); None:
    # every block weighs the same (a split without spread blocks)
    weights: np.ndarray | None = None


@dataclass(frozen=True)
class ForgetResult:
    """What CorpusQueue.forget removed."""

    documents: list[int]  # ids of the documents whose text was removed
    paths: list[str]  # their source paths
    tokens: int  # stream tokens removed
    sharing: list[str]  # other paths stored as duplicates of that text: forgotten with it
    already: list[int]  # ids asked for whose text was already gone (forgotten, or never stored)
    not_found: list[str]  # paths or ids asked for that name no document
