"""The extractor's version on every document row, so a file an older extractor skipped is read again.

Revision ID: 0007
Revises: 0006
Written out in full: never import storage.models here, so this step stays as it was shipped.
One nullable integer column on documents, NULL for every existing row (a verdict given before
the version was recorded, which the ingest side treats as older than any version). A plain
integer, no default and no index, so SQLite adds it without a table copy.
"""

from alembic import op
import sqlalchemy as sa

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.add_column("documents", sa.Column("extractor_version", sa.Integer, nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("documents") as batch:
        batch.drop_column("extractor_version")
