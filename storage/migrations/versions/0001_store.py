"""The store: documents, their token chunks, and the meta table holding the stream's end.

Revision ID: 0001
Revises:
Written out in full: never import storage.models here, so this step stays as it was shipped.
"""

from alembic import op
import sqlalchemy as sa

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "documents",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("source_path", sa.Text, nullable=False),
        sa.Column("content_hash", sa.CHAR(64), nullable=True),
        sa.Column("size", sa.BigInteger, nullable=True),
        sa.Column("mtime", sa.Double, nullable=True),
        sa.Column("kind", sa.Text, nullable=True),
        sa.Column("status", sa.Text, nullable=False),
        sa.Column("reason", sa.Text, nullable=True),
        sa.Column("detail", sa.Text, nullable=True),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("duplicate_of", sa.Integer, nullable=True),
        sa.Column("token_count", sa.BigInteger, nullable=False, server_default="0"),
        sa.Column("tokenizer", sa.Text, nullable=True),
        sa.Column("stream_start", sa.BigInteger, nullable=True),
        sa.Column("stream_end", sa.BigInteger, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_documents"),
        sa.ForeignKeyConstraint(
            ["duplicate_of"], ["documents.id"], name="fk_documents_duplicate_of_documents"
        ),
        sa.CheckConstraint(
            "status IN ('queued', 'trained', 'duplicate', 'skipped', 'failed')",
            name="ck_documents_status",
        ),
    )
    op.create_index("ix_documents_content_hash", "documents", ["content_hash"])
    op.create_index(
        "ix_documents_source_path_version", "documents", ["source_path", "version"], unique=True
    )
    op.create_index("ix_documents_status", "documents", ["status"])

    op.create_table(
        "chunks",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("document_id", sa.Integer, nullable=False),
        sa.Column("seq", sa.Integer, nullable=False),
        sa.Column("stream_start", sa.BigInteger, nullable=False),
        sa.Column("token_count", sa.Integer, nullable=False),
        sa.Column("dtype", sa.Text, nullable=False),
        sa.Column("tokens", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_chunks"),
        sa.ForeignKeyConstraint(
            ["document_id"], ["documents.id"], name="fk_chunks_document_id_documents"
        ),
        sa.CheckConstraint("dtype IN ('uint8', 'uint16', 'uint32')", name="ck_chunks_dtype"),
    )
    op.create_index("ix_chunks_stream_start", "chunks", ["stream_start"], unique=True)
    op.create_index("ix_chunks_document_id_seq", "chunks", ["document_id", "seq"], unique=True)

    meta = op.create_table(
        "meta",
        sa.Column("key", sa.Text, primary_key=True),
        sa.Column("value", sa.Text, nullable=False),
        sa.PrimaryKeyConstraint("key", name="pk_meta"),
    )
    # the stream's next free offset; writers lock this row to allocate offsets
    op.bulk_insert(meta, [{"key": "stream_end", "value": "0"}])


def downgrade() -> None:
    op.drop_table("chunks")
    op.drop_table("documents")
    op.drop_table("meta")
