"""The corpus store's tables, as SQLAlchemy Core `Table` objects on one `MetaData`.

This is the current schema, what the Alembic head creates; the migrations in `migrations/versions`
spell out each step on their own and never import this module, so old revisions stay as written.
A test checks that the migrated database and these tables agree.

The token stream is the concatenation of every queued or trained document's tokens in arrival
order; `withdrawn` lists the ranges of it training no longer reads. `documents.stream_start/stream_end` and `chunks.stream_start` are offsets into it; the
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


# --- file names ----------------------------------------------------------------------------------

# A POSIX file name is bytes; Python hands the bytes that are not UTF-8 over as lone surrogates
# (os.fsdecode's surrogateescape), which neither SQLite nor PostgreSQL accepts as text. Such a
# name is stored as ESCAPED_PREFIX + the name with each such byte written %XX (two upper-case hex
# digits; %uXXXX for a lone surrogate of another kind, which only Windows names can hold) and
# every "%" written %25. Every other name is stored as it is, unless it starts with the prefix
# itself (then it is escaped too), so the mapping is lossless both ways and valid names keep
# their plain form: "/in/caf\udce9.txt" (bytes b"/in/caf\xe9.txt") is stored "escaped:/in/caf%E9.txt".
ESCAPED_PREFIX = "escaped:"


def encode_path(name: str) -> str:
    """The stored form of a file name (see ESCAPED_PREFIX); a valid name is unchanged."""
    if not name.startswith(ESCAPED_PREFIX):
        try:
            name.encode("utf-8")  # the fast test: only surrogates fail
            return name
        except UnicodeEncodeError:
            pass
    out = []
    for ch in name:
        if ch == "%":
            out.append("%25")
        elif "\udc80" <= ch <= "\udcff":  # an undecodable byte, as surrogateescape carries it
            out.append(f"%{ord(ch) - 0xDC00:02X}")
        elif "\ud800" <= ch <= "\udfff":
            out.append(f"%u{ord(ch):04X}")
        else:
            out.append(ch)
    return ESCAPED_PREFIX + "".join(out)


def decode_path(stored: str) -> str:
    """The file name a stored form stands for: encode_path's inverse."""
    if not stored.startswith(ESCAPED_PREFIX):
        return stored
    text, out, i = stored[len(ESCAPED_PREFIX):], [], 0
    try:
        while i < len(text):
            if text[i] != "%":
                out.append(text[i])
                i += 1
            elif text[i + 1] == "u":
                out.append(chr(_hex(text[i + 2:i + 6])))
                i += 6
            else:
                byte = _hex(text[i + 1:i + 3])
                out.append("%" if byte == 0x25 else chr(0xDC00 + byte))
                i += 3
    except (IndexError, ValueError):  # not encode_path's output (a name written by hand): as stored
        return stored
    return "".join(out)


def _hex(digits: str) -> int:
    if len(digits) not in (2, 4) or not all(c in "0123456789ABCDEF" for c in digits):
        raise ValueError(digits)
    return int(digits, 16)


def readable_text(text: str) -> str:
    """Free text made storable and printable, lossy: undecodable bytes as \\xNN, NUL as \\x00."""
    try:
        raw = text.encode("utf-8", "surrogateescape")
    except UnicodeEncodeError:  # a lone surrogate that stands for no byte
        raw = text.encode("utf-8", "surrogatepass")
    return raw.decode("utf-8", "backslashreplace").replace("\0", "\\x00")


class PathText(TypeDecorator):
    """A file name as Python holds it (str, possibly with surrogate escapes), stored as encode_path
    says: plain text on every dialect, so comparisons and IN lists still run in the database."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else encode_path(value)

    def process_result_value(self, value, dialect):
        return None if value is None else decode_path(value)


class ReadableText(TypeDecorator):
    """Free text (error messages, which may quote a file name) made storable by readable_text."""

    impl = sa.Text
    cache_ok = True

    def process_bind_param(self, value, dialect):
        return None if value is None else readable_text(value)


# --- the store (revision 0001) -------------------------------------------------------------------

documents = sa.Table(
    "documents",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("source_path", PathText, nullable=False),  # encode_path's form
    # sha256 hex of the raw file bytes; NULL when the file could not be read
    sa.Column("content_hash", sa.CHAR(64), nullable=True),
    sa.Column("size", sa.BigInteger, nullable=True),
    sa.Column("mtime", sa.Double, nullable=True),
    sa.Column("kind", sa.Text, nullable=True),  # "text", "markdown", "html", "pdf", ...
    sa.Column("status", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=True),  # skip reason code: "binary", "empty", ...
    sa.Column("detail", ReadableText, nullable=True),  # free text: the error message, the limit hit
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
    # (revision 0004) a version of a file that only grew holds only its new text: the byte of
    # the file its text starts at, and the id of the version it continues; NULL for a whole file
    sa.Column("byte_offset", sa.BigInteger, nullable=True),
    sa.Column("continues", sa.Integer, nullable=True),
    # (revision 0007) the extractor that gave the row's verdict (the crawler's EXTRACTOR_VERSION);
    # NULL for a row written before it was recorded. A skip by an older extractor, for a reason a
    # newer one may cure, is read again (versions.FileVersions.seen_many)
    sa.Column("extractor_version", sa.Integer, nullable=True),
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
# "holdout": the held-out split (HoldoutSplit.to_json), recorded on first use and never changed
#   but once: a split of an earlier release (four keys) gains the per-source fields, its blocks kept;
# "holdout_frontier": the lattice blocks below this block index have been decided (holdout_blocks.py)
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
    # (revision 0009) the figure per source, as JSON: {"SOURCE": {"val_bits_per_byte": x,
    # "holdout_tokens": n}, ...}; NULL for an evaluation recorded before
    sa.Column("sources", sa.Text, nullable=True),
    # (revision 0010) the model measured, as JSON: {"d_model": C, "n_head": NH, "n_layer": L,
    # "parameters": n, "grown_at_step": s, "grown_from_layers": l} (the last two null for a model
    # never grown); the rows where it changes are the growths; NULL for an evaluation recorded before
    sa.Column("model", sa.Text, nullable=True),
)

# --- withdrawn text (revision 0005) --------------------------------------------------------------

WITHDRAW_REASONS = ("superseded", "forgotten")

# stream ranges [stream_start, stream_end) that no training read, replay or held-out evaluation
# touches any more: "superseded", the tokens of a rewritten file's earlier version that training
# had not reached when the new version arrived (the chunks stay: the text is history); and
# "forgotten", a document's whole text, removed by `crystalline forget` (its chunks are deleted).
# Offsets never move, so the rest of the stream keeps its place. Ranges may overlap.
withdrawn = sa.Table(
    "withdrawn",
    metadata,
    sa.Column("id", sa.Integer, primary_key=True),
    sa.Column("document_id", sa.Integer, sa.ForeignKey("documents.id"), nullable=False),
    sa.Column("stream_start", sa.BigInteger, nullable=False),
    sa.Column("stream_end", sa.BigInteger, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("created_at", UTCDateTime, nullable=False, default=utcnow),
    sa.CheckConstraint("reason IN ('superseded', 'forgotten')", name="reason"),
    sa.CheckConstraint("stream_start < stream_end", name="range"),
    sa.Index(None, "document_id"),
)

# --- file claims (revision 0006) -----------------------------------------------------------------

# which daemon ingests a file when several watch one folder (claims.py): the daemon holding it
# (a name stable across its restarts), when its lease ends (seconds since the epoch, on the
# database's clock), and how many times it was claimed without being finished. A row exists
# only while a file is being read: it is deleted once the file's outcome is stored.
claims = sa.Table(
    "claims",
    metadata,
    sa.Column("path", PathText, primary_key=True),  # encode_path's form
    sa.Column("claimed_by", sa.Text, nullable=False),
    sa.Column("lease_until", sa.Double, nullable=False),
    sa.Column("attempts", sa.Integer, nullable=False),
    sa.Index(None, "claimed_by"),
)

# --- corpus rules (revision 0008) ----------------------------------------------------------------

# the boilerplate rule's line statistics (corpus_rules.py, crawler/ingest/cleaning.py): per line,
# by a signed 64-bit hash of its text, the documents that hold it, and the hash of the path that
# counted it last (a new version of that file does not count it again). No rowid on SQLite:
# the hash is the table's one key.
corpus_lines = sa.Table(
    "corpus_lines",
    metadata,
    sa.Column("line_hash", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("documents", sa.Integer, nullable=False),
    sa.Column("last_path", sa.BigInteger, nullable=False),
    sqlite_with_rowid=False,
)

# the near-duplicate index: a stored document's MinHash (PERMUTATIONS little-endian uint32) and
# its count of distinct shingles, and one row per locality-sensitive band key it holds
document_signatures = sa.Table(
    "document_signatures",
    metadata,
    sa.Column("document_id", sa.Integer, sa.ForeignKey("documents.id"), primary_key=True, autoincrement=False),
    sa.Column("shingles", sa.Integer, nullable=False),
    sa.Column("signature", sa.LargeBinary, nullable=False),
)

signature_bands = sa.Table(
    "signature_bands",
    metadata,
    sa.Column("band_key", sa.BigInteger, primary_key=True, autoincrement=False),
    sa.Column("document_id", sa.Integer, sa.ForeignKey("documents.id"), primary_key=True, autoincrement=False),
    sqlite_with_rowid=False,
)

# --- held-out blocks (revision 0009) --------------------------------------------------------------

# every held-out block the store has decided (holdout.py's lattice, holdout_blocks.py): the
# base's as their first token is stored, the per-source ones as they are chosen; with the
# document holding the block's first token, whose path names its source. Never updated or
# deleted: a block once held out stays held out.
holdout_blocks = sa.Table(
    "holdout_blocks",
    metadata,
    sa.Column("block", sa.BigInteger, primary_key=True, autoincrement=False),  # k: tokens [k*S, k*S + S + 1)
    sa.Column("document_id", sa.Integer, sa.ForeignKey("documents.id"), nullable=False),
)
