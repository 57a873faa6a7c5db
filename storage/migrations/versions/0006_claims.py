"""File claims: which of several daemons watching one folder ingests each file.

Revision ID: 0006
Revises: 0005
Written out in full: never import storage.models here, so this step stays as it was shipped.
One new table, empty between ingests; nothing existing changes.
"""

from alembic import op
import sqlalchemy as sa

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "claims",
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("claimed_by", sa.Text, nullable=False),
        sa.Column("lease_until", sa.Double, nullable=False),
        sa.Column("attempts", sa.Integer, nullable=False),
        sa.PrimaryKeyConstraint("path", name="pk_claims"),
    )
    op.create_index("ix_claims_claimed_by", "claims", ["claimed_by"])


def downgrade() -> None:
    op.drop_index("ix_claims_claimed_by", table_name="claims")
    op.drop_table("claims")
