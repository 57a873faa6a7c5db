"""Withdrawn stream ranges: text training must no longer read (a rewritten file's untrained
tokens, a forgotten document's whole text).

Revision ID: 0005
Revises: 0004
Written out in full: never import storage.models here, so this step stays as it was shipped.
One new table; the stream itself is unchanged (offsets never move), so existing rows keep their
meaning and nothing is copied.
"""

from alembic import op
import sqlalchemy as sa

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "withdrawn",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("document_id", sa.Integer, nullable=False),
        sa.Column("stream_start", sa.BigInteger, nullable=False),
        sa.Column("stream_end", sa.BigInteger, nullable=False),
        sa.Column("reason", sa.Text, nullable=False),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_withdrawn"),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], name="fk_withdrawn_document_id_documents"),
        sa.CheckConstraint("reason IN ('superseded', 'forgotten')", name="ck_withdrawn_reason"),
        sa.CheckConstraint("stream_start < stream_end", name="ck_withdrawn_range"),
    )
    op.create_index("ix_withdrawn_document_id", "withdrawn", ["document_id"])


def downgrade() -> None:
    op.drop_index("ix_withdrawn_document_id", table_name="withdrawn")
    op.drop_table("withdrawn")
