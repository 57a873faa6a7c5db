"""Files that only grew: a version can hold just the text appended since the version it continues.

Revision ID: 0004
Revises: 0003
Written out in full: never import storage.models here, so this step stays as it was shipped.
Two nullable columns on documents, NULL for every existing row (each a whole file, as before):
byte_offset, the byte of the file the version's text starts at, and continues, the id of the
version it grew from. Plain integers, no foreign key, so SQLite adds them without a table copy.
"""

from alembic import op
import sqlalchemy as sa

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("byte_offset", sa.BigInteger, nullable=True))
    op.add_column("documents", sa.Column("continues", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("continues")
        batch.drop_column("byte_offset")
