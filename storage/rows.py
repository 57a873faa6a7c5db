"""The few statements every part of CorpusQueue shares: insert a row, read a meta value, and
cut a long IN list into groups.

Not a query of any one concern (documents.py, reads.py, withdrawal.py, training_state.py and
evaluations.py hold those), and not the stream's chunks (stream.py). Each function runs inside
the caller's transaction; nothing here commits. Relies only on SQLAlchemy Core and models.py.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

import sqlalchemy as sa

from .models import meta

def insert_row(connection: sa.Connection, table: sa.Table, row: dict) -> int:
    """Inserts one row; returns its primary key."""
    return connection.execute(table.insert().values(**row)).inserted_primary_key[0]


def meta_value(connection: sa.Connection, key: str) -> str | None:
    """meta[key], or None where no row has that key."""
    return connection.execute(sa.select(meta.c.value).where(meta.c.key == key)).scalar()


def in_groups(values: Iterable, size: int = 500) -> Iterator[list]:
    """The values, sorted, in lists of at most `size`: one IN clause each."""
    values = sorted(values)
    for i in range(0, len(values), size):
        yield values[i : i + size]
