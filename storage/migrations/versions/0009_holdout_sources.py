"""Held-out blocks per source: the blocks decided, and the evaluation history's figure per source.

Revision ID: 0009
Revises: 0008
Written out in full: never import storage.models here, so this step stays as it was shipped.
A new table, empty: `holdout_blocks`, every held-out block the store has decided (the split's
base, and beyond it the blocks chosen per source), filled by the training loop from its next
start on, in stream order. The split itself stays in meta["holdout"]; a split of an earlier
release is extended there once, its blocks kept (storage/reads.py, `holdout`). One nullable
text column on evaluations, `sources` (JSON), NULL for every existing row; a plain column, so
SQLite adds it without a table copy.
"""

from alembic import op
import sqlalchemy as sa

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "holdout_blocks",
        sa.Column("block", sa.BigInteger, autoincrement=False, nullable=False),
        sa.Column("document_id", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("block", name="pk_holdout_blocks"),
        sa.ForeignKeyConstraint(["document_id"], ["documents.id"], name="fk_holdout_blocks_document_id_documents"),
    )
    op.add_column("evaluations", sa.Column("sources", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("sources")
    op.drop_table("holdout_blocks")
