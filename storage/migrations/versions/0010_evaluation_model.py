"""The evaluation history's model: the shape each evaluation measured, so a growth shows in it.

Revision ID: 0010
Revises: 0009
Written out in full: never import storage.models here, so this step stays as it was shipped.
One nullable text column on evaluations, `model` (JSON: the measured model's shape and parameter
count, and the growth that gave it that shape), NULL for every existing row; a plain column, so
SQLite adds it without a table copy.
"""

from alembic import op
import sqlalchemy as sa

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("evaluations", sa.Column("model", sa.Text, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("evaluations") as batch:
        batch.drop_column("model")
