"""Where training stands: the cursor, the checkpoint rows that vouch for it, and the stats.

The cursor (one `training_cursor` row) is the stream offset the model has trained up to, with
its step and the tokens it has trained on; each checkpoint row names a checkpoint file and the
cursor it was saved at. Invariant: every write of the cursor goes through `_set_cursor`, which
moves the documents' statuses with it, so a document in the stream is 'trained' exactly when it
ends at or before the cursor and 'queued' otherwise, whichever way the cursor moved. Writers
lock the cursor row first (`read_cursor(..., for_update=True)`), so two of them never interleave.

Not the checkpoint files (the crawler's checkpoint store owns them, and the order of file and
row), not the evaluation history (evaluations.py), not the stream reads (reads.py). A mixin of
CorpusQueue (queue.py): relies on its `database`, and on models.py, stream.py and rows.py.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import sqlalchemy as sa

from .db import Database
from .mask import StreamMask
from .models import STATUSES, checkpoints, documents, evaluations, training_cursor, withdrawn
from .records import CheckpointRecord, Cursor, QueueStats
from .rows import in_groups, insert_row
from .stream import stream_end


class TrainingState:
    """CorpusQueue's cursor, checkpoint rows and stats; each method is one transaction."""

    database: Database

    def cursor(self) -> Cursor:
        """Where training stands, as of the latest committed checkpoint."""
        with self.database.read() as connection:
            return read_cursor(connection)

    def commit_checkpoint(
        self,
        *,
        step: int,
        path: str,
        stream_position: int,
        tokens_trained: int,
        loss: float | None = None,
    ) -> None:
        """Records a checkpoint and moves the cursor to it. Atomic: all of it or none of it.

        One transaction inserts the checkpoints row, moves the cursor, and marks 'trained' every
        queued document that ends at or before `stream_position`. Contract: the caller writes the
        checkpoint file durably first. If the process dies before this commits, the database still
        names the previous checkpoint: the caller finds the newer file, which no row names, and
        records it with restore_checkpoint. Raises ValueError, changing nothing,
        when stream_position would move the cursor back or past the stream's end.
        """
        if step < 0 or tokens_trained < 0:
            raise ValueError(f"step ({step}) and tokens_trained ({tokens_trained}) must be >= 0")
        with self.database.write() as connection:
            current = read_cursor(connection, for_update=True)
            end = stream_end(connection)
            if not current.stream_position <= stream_position <= end:
                raise ValueError(
                    f"stream_position ({stream_position}) must be in [{current.stream_position}, "
                    f"{end}]: the cursor never moves back or past the stream's end"
                )
            position = {"stream_position": stream_position, "tokens_trained": tokens_trained}
            connection.execute(
                checkpoints.insert().values(step=step, path=path, loss=loss, **position)
            )
            _set_cursor(connection, step=step, **position)

    def rewind_to(self, checkpoint_id: int) -> CheckpointRecord:
        """Makes an older checkpoint the latest: for when the newest checkpoint file is corrupt.

        Atomic: one transaction deletes every checkpoint row after `checkpoint_id`, moves the
        cursor back to that checkpoint's position, counters and step, and returns to 'queued'
        every document the removed checkpoints had marked trained, so the model is never credited
        with data it did not keep. Raises ValueError for an unknown id.
        """
        with self.database.write() as connection:
            read_cursor(connection, for_update=True)
            row = connection.execute(sa.select(checkpoints).where(checkpoints.c.id == checkpoint_id)).first()
            if row is None:
                raise ValueError(f"no checkpoint with id {checkpoint_id}")
            record = CheckpointRecord(**row._mapping)
            connection.execute(checkpoints.delete().where(checkpoints.c.id > checkpoint_id))
            _set_cursor(connection, step=record.step, stream_position=record.stream_position,
                        tokens_trained=record.tokens_trained)
        return record

    def restore_checkpoint(
        self,
        *,
        step: int,
        path: str,
        stream_position: int,
        tokens_trained: int,
        loss: float | None = None,
    ) -> CheckpointRecord:
        """Makes a checkpoint file the database does not name its latest: for when the two disagree
        (commits lost with a deleted WAL, a crash between file and commit, a restored backup).

        Atomic: one transaction deletes the rows of checkpoints at `step` or later, inserts this
        one's row, sets the cursor to its position, counters and step (forward or back), marks
        'trained' the queued documents that end at or before `stream_position` and returns to
        'queued' the trained ones that end after it. Raises ValueError, changing nothing, for a
        position beyond the stream's end (the file trained on text this database does not hold)
        or a negative count.
        """
        if step < 0 or tokens_trained < 0 or stream_position < 0:
            raise ValueError(f"step ({step}), tokens_trained ({tokens_trained}) and stream_position "
                             f"({stream_position}) must be >= 0")
        with self.database.write() as connection:
            read_cursor(connection, for_update=True)
            end = stream_end(connection)
            if stream_position > end:
                raise ValueError(f"stream_position ({stream_position}) lies beyond the stream's end ({end})")
            connection.execute(checkpoints.delete().where(checkpoints.c.step >= step))
            position = {"stream_position": stream_position, "tokens_trained": tokens_trained}
            new_id = insert_row(connection, checkpoints, {"step": step, "path": path, "loss": loss, **position})
            _set_cursor(connection, step=step, **position)
            row = connection.execute(sa.select(checkpoints).where(checkpoints.c.id == new_id)).one()
        return CheckpointRecord(**row._mapping)

    def drop_checkpoint_rows(self, checkpoint_ids: Sequence[int]) -> int:
        """Deletes the rows of checkpoints whose files are gone (retention deleted them): a row
        naming no file can neither be resumed from nor vouch for a file.

        Atomic. Never the newest row, on which the cursor stands: an id of it raises ValueError,
        changing nothing. Ids no row has are passed over. Returns the number of rows deleted."""
        wanted = {int(i) for i in checkpoint_ids}
        if not wanted:
            return 0
        deleted = 0
        with self.database.write() as connection:
            read_cursor(connection, for_update=True)  # beside commit_checkpoint, never between its steps
            newest = connection.execute(sa.select(sa.func.max(checkpoints.c.id))).scalar()
            if newest in wanted:
                raise ValueError(f"checkpoint row {newest} is the newest: the cursor stands on it")
            for group in in_groups(wanted):
                deleted += connection.execute(checkpoints.delete().where(checkpoints.c.id.in_(group))).rowcount or 0
        return int(deleted)

    def reset_training(self) -> int:
        """Forgets the model's training, keeps the corpus: every checkpoint row and evaluation is
        deleted, the cursor goes back to the stream's start (step 0) and every trained document is
        queued again; the held-out split and the tokenizer stay. Atomic. Returns the number of
        checkpoint rows deleted."""
        with self.database.write() as connection:
            read_cursor(connection, for_update=True)
            deleted = connection.execute(checkpoints.delete()).rowcount
            connection.execute(evaluations.delete())
            _set_cursor(connection, step=0, stream_position=0, tokens_trained=0)
        return int(deleted or 0)

    def latest_checkpoint(self) -> CheckpointRecord | None:
        """The most recently committed checkpoint, or None before the first."""
        found = self.checkpoints(limit=1)
        return found[0] if found else None

    def checkpoints(self, limit: int = 10) -> list[CheckpointRecord]:
        """Up to `limit` committed checkpoints, newest first."""
        query = sa.select(checkpoints).order_by(checkpoints.c.id.desc()).limit(limit)
        with self.database.read() as connection:
            return [CheckpointRecord(**row._mapping) for row in connection.execute(query)]

    # --- the whole --------------------------------------------------------------------------------

    def stats(self) -> QueueStats:
        """Counts by status, stream totals and the last checkpoint, read from one snapshot."""
        counts = dict.fromkeys(STATUSES, 0)
        query = sa.select(documents.c.status, sa.func.count()).group_by(documents.c.status)
        latest = sa.select(checkpoints).order_by(checkpoints.c.id.desc()).limit(1)
        ranges = sa.select(withdrawn.c.stream_start, withdrawn.c.stream_end)
        with self.database.read() as connection:
            counts.update({status: int(n) for status, n in connection.execute(query)})
            end = stream_end(connection)
            cursor = read_cursor(connection)
            last = connection.execute(latest).first()
            pulled = np.array(connection.execute(ranges).all(), np.int64).reshape(-1, 2)  # (R, 2)
        mask = StreamMask.of(None, pulled[:, 0], pulled[:, 1])
        ahead = np.maximum(mask.ends - np.maximum(mask.starts, cursor.stream_position), 0).sum()
        return QueueStats(
            documents=counts,
            tokens_total=end,
            tokens_queued=end - cursor.stream_position - int(ahead),
            tokens_withdrawn=mask.withdrawn_tokens,
            tokens_trained=cursor.tokens_trained,
            database_bytes=self.database.size_bytes(),
            last_checkpoint=None if last is None else CheckpointRecord(**last._mapping),
        )


# --- the cursor, inside the caller's transaction -------------------------------------------------


def read_cursor(connection: sa.Connection, for_update: bool = False) -> Cursor:
    """The cursor; with `for_update`, its row stays locked to this transaction (the writers' lock)."""
    query = sa.select(
        training_cursor.c.stream_position, training_cursor.c.tokens_trained, training_cursor.c.step
    ).where(training_cursor.c.id == 1)
    if for_update:
        query = query.with_for_update()
    return Cursor(*connection.execute(query).one())


def _set_cursor(connection: sa.Connection, *, step: int, stream_position: int, tokens_trained: int) -> None:
    """The cursor at exactly this position, forward or back; documents' statuses follow it."""
    connection.execute(training_cursor.update().where(training_cursor.c.id == 1).values(
        step=step, stream_position=stream_position, tokens_trained=tokens_trained))
    connection.execute(documents.update()
                       .where(documents.c.status == "trained", documents.c.stream_end > stream_position)
                       .values(status="queued"))
    _mark_trained(connection, stream_position)


def _mark_trained(connection: sa.Connection, stream_position: int) -> None:
    connection.execute(
        documents.update()
        .where(documents.c.status == "queued", documents.c.stream_end <= stream_position)
        .values(status="trained")
    )
