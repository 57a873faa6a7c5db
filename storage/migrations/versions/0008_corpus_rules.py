"""The corpus rules' statistics: documents per line (boilerplate) and the near-duplicate index.

Revision ID: 0008
Revises: 0007
Written out in full: never import storage.models here, so this step stays as it was shipped.
Three new tables, empty: the rules count from the first document stored after the upgrade (the
documents already stored are not counted, so a store upgraded with its corpus in place keeps the
first LINE_DOCUMENTS copies of each boilerplate line it meets from then on). Nothing existing
changes. The two keyed by a hash have no rowid on SQLite.
"""

from alembic import op
import sqlalchemy as sa

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "corpus_lines",
        sa.Column("line_hash", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("documents", sa.Integer, nullable=False),
        sa.Column("last_path", sa.BigInteger, nullable=False),
        sa.PrimaryKeyConstraint("line_hash", name="pk_corpus_lines"),
        sqlite_with_rowid=False,
    )
    op.create_table(
        "document_signatures",
        sa.Column("document_id", sa.Integer, autoincrement=False, nullable=False),
        sa.Column("shingles", sa.Integer, nullable=False),
        sa.Column("signature", sa.LargeBinary, nullable=False),
        sa.PrimaryKeyConstraint("document_id", name="pk_document_signatures"),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"],
                                name="fk_document_signatures_document_id_documents"),
    )
    op.create_table(
        "signature_bands",
        sa.Column("band_key", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("document_id", sa.Integer, autoincrement=False, nullable=False),
        sa.PrimaryKeyConstraint("band_key", "document_id", name="pk_signature_bands"),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], name="fk_signature_bands_document_id_documents"),
        sqlite_with_rowid=False,
    )


def downgrade() -> None:
    op.drop_table("signature_bands")
    op.drop_table("document_signatures")
    op.drop_table("corpus_lines")
