"""Evaluation history: one row per evaluation on the held-out split of the stream.

Revision ID: 0003
Revises: 0002
Written out in full: never import storage.models here, so this step stays as it was shipped.
The split itself needs no table: it is one meta row ("holdout"), written on first use.
"""

from alembic import op
import sqlalchemy as sa

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "evaluations",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("epoch", sa.Double, nullable=False),
        sa.Column("tokens_trained", sa.BigInteger, nullable=False),
        sa.Column("val_bits_per_byte", sa.Double, nullable=False),
        sa.Column("train_bits_per_byte", sa.Double, nullable=True),
        sa.Column("holdout_tokens", sa.BigInteger, nullable=False),
        sa.Column("seconds", sa.Double, nullable=False),
        sa.Column("best", sa.Boolean, nullable=False, server_default=sa.false()),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_evaluations"),
    )


def downgrade() -> None:
    op.drop_table("evaluations")
