"""The corpus store's tables, as SQLAlchemy Core `Table` objects on one `MetaData`.

This is the current schema, what the Alembic head creates; the migrations in `migrations/versions`
spell out each step on their own and never import this module, so old revisions stay as written.
A test checks that the migrated database and these tables agree.

The token stream is the concatenation of every queued or trained document's tokens in arrival
order. `documents.stream_start/stream_end` and `chunks.stream_start` are offsets into it; the
next free offset is `meta["stream_end"]`. Not here: any query (see queue.py).
"""

from __future__ import annotations

from datetime import UTC, datetime

import sqlalchemy as sa
from sqlalchemy.types import TypeDecorator

# named constraints, so migrations can address them on every dialect (Alembic's advice)
NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

STATUSES = ("queued", "trained", "duplicate", "skipped", "failed")
IN_STREAM = ("queued", "trained")  # the statuses whose tokens are in the stream
DTYPES = ("uint8", "uint16", "uint32")  # chunk blobs: raw little-endian, this many bits per token

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


def utcnow() -> datetime:
    return datetime.now(UTC)


class UTCDateTime(TypeDecorator):
    """An aware UTC datetime, stored naive in UTC so SQLite and PostgreSQL hold the same value."""

    impl = sa.DateTime
    cache_ok = True

    def process_bind_param(self, value, dialect):
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: pass an aware datetime")
        return value.astimezone(UTC).replace(tzinfo=None)

    def process_result_value(self, value, dialect):
        return None if value is None else value.replace(tzinfo=UTC)


# --- the store (revision 0001) -------------------------------------------------------------------

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("source_path", sa.Text, nullable=False),
    # sha256 hex of the raw file bytes; NULL when the file could not be read
    sa.Column("content_hash", sa.CHAR(64), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("mtime", sa.Double, nullable=True),
    sa.Column("kind", sa.Text, nullable=True),  # "text", "markdown", "html", "pdf", ...
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),  # skip reason code: "binary", "empty", ...
    sa.Column("detail", sa.Text, nullable=True),  # free text: the error message, the limit hit
    # 1, 2, ... per source_path: every row for a path (a modified file, a skip) is a new version
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("duplicate_of", sa.Integer, sa.ForeignKey("documents.id"), nullable=True),
    # tokens this row put into the stream (0 for duplicates and skips)
    sa.Column("token_count", sa.BigInteger, nullable=False, server_default="0"),
    sa.Column("tokenizer", sa.Text, nullable=True),
    sa.Column("stream_start", sa.BigInteger, nullable=True),
    sa.Column("stream_end", sa.BigInteger, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow),
    sa.CheckConstraint(
        "status IN ('queued', 'trained', 'duplicate', 'skipped', 'failed')", name="status"
    ),
    sa.Index(None, "content_hash"),
    sa.Index(None, "source_path", "version", unique=True),
    sa.Index(None, "status"),
)

chunks = sa.Table(
    "chunks",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("document_id", sa.Integer, sa.ForeignKey("documents.id"), nullable=False),
    sa.Column("seq", sa.Integer, nullable=False),  # 0, 1, ... within its document
    sa.Column("stream_start", sa.BigInteger, nullable=False),  # offset of its first token
    sa.Column("token_count", sa.Integer, nullable=False),
    sa.Column("dtype", sa.Text, nullable=False),  # "uint8", "uint16" or "uint32"
    sa.Column("tokens", sa.LargeBinary, nullable=False),  # (token_count,) little-endian
    sa.CheckConstraint("dtype IN ('uint8', 'uint16', 'uint32')", name="dtype"),
    sa.Index(None, "stream_start", unique=True),
    sa.Index(None, "document_id", "seq", unique=True),
)

# "tokenizer": the identity JSON every document's tokens were made with;
# "stream_end": the next free stream offset, as a decimal string;
# "holdout": the held-out split (HoldoutSplit.to_json), recorded on first use and never changed.
meta = sa.Table(
    "meta",
    metadata,
    sa.Column("key", sa.Text, primary_key=True),
    sa.Column("value", sa.Text, nullable=False),
)

# --- training bookkeeping (revision 0002) --------------------------------------------------------

checkpoints = sa.Table(
    "checkpoints",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("path", sa.Text, nullable=False),
    sa.Column("tokens_trained", sa.BigInteger, nullable=False),
    sa.Column("stream_position", sa.BigInteger, nullable=False),
    sa.Column("loss", sa.Double, nullable=True),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)

# one row, id 1: how far training has got in the stream, as of the latest checkpoint
training_cursor = sa.Table(
    "training_cursor",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
    # the first stream token training has not consumed yet
    sa.Column("stream_position", sa.BigInteger, nullable=False),
    sa.Column("tokens_trained", sa.BigInteger, nullable=False),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("updated_at", UTCDateTime, nullable=False, default=utcnow, onupdate=utcnow),
    sa.CheckConstraint("id = 1", name="single_row"),
)

# --- evaluation history (revision 0003) ----------------------------------------------------------

# one row per evaluation on the held-out split (holdout.py), oldest first
evaluations = sa.Table(
    "evaluations",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("step", sa.BigInteger, nullable=False),
    sa.Column("epoch", sa.Double, nullable=False),  # passes over the stream, as the trainer counts
    sa.Column("tokens_trained", sa.BigInteger, nullable=False),
    sa.Column("val_bits_per_byte", sa.Double, nullable=False),
    sa.Column("train_bits_per_byte", sa.Double, nullable=True),  # NULL when not measured
    sa.Column("holdout_tokens", sa.BigInteger, nullable=False),  # targets scored
    sa.Column("seconds", sa.Double, nullable=False),
    # the best val_bits_per_byte so far, as the caller judged it; best_evaluation() reads it
    sa.Column("best", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
)
