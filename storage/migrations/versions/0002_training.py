"""Training bookkeeping: the checkpoints trained so far and the cursor into the token stream.

Revision ID: 0002
Revises: 0001
Written out in full: never import storage.models here, so this step stays as it was shipped.
"""

from datetime import UTC, datetime

from alembic import op
import sqlalchemy as sa

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "checkpoints",
        sa.Column("id", sa.Integer, primary_key=True),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("path", sa.Text, nullable=False),
        sa.Column("tokens_trained", sa.BigInteger, nullable=False),
        sa.Column("stream_position", sa.BigInteger, nullable=False),
        sa.Column("loss", sa.Double, nullable=True),
        sa.Column("created_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_checkpoints"),
    )
    cursor = op.create_table(
        "training_cursor",
        sa.Column("id", sa.Integer, primary_key=True, autoincrement=False),
        sa.Column("stream_position", sa.BigInteger, nullable=False),
        sa.Column("tokens_trained", sa.BigInteger, nullable=False),
        sa.Column("step", sa.BigInteger, nullable=False),
        sa.Column("updated_at", sa.DateTime, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_training_cursor"),
        sa.CheckConstraint("id = 1", name="ck_training_cursor_single_row"),
    )
    # nothing trained yet: documents stored under 0001 are all ahead of the cursor
    now = datetime.now(UTC).replace(tzinfo=None)  # naive UTC, as storage.models stores it
    op.bulk_insert(
        cursor, [{"id": 1, "stream_position": 0, "tokens_trained": 0, "step": 0, "updated_at": now}]
    )


def downgrade() -> None:
    op.drop_table("training_cursor")
    op.drop_table("checkpoints")
