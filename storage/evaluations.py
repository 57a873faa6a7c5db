"""The history of evaluations on the held-out set: one row per evaluation, appended, never changed.

Each row holds the step and tokens trained at the time, the held-out (and optionally training)
bits per byte, how many held-out tokens were scored, how long it took, whether it was the best
so far, (revision 0009) the held-out figure of each source and (revision 0010) the shape of the
model measured, both as JSON: where the shape changes between two rows, the model grew. Not the
held-out set itself (reads.py cuts it into windows, holdout.py and holdout_blocks.py decide which
offsets it holds) and not the scoring (the engine and the crawler do that); reset_training
(training_state.py) empties the history with the checkpoints. A mixin of CorpusQueue (queue.py):
relies on its `database`, and on models.py and rows.py.
"""

from __future__ import annotations

import json
import math
import operator

import numpy as np
import sqlalchemy as sa

from .db import Database
from .models import evaluations
from .records import EvaluationRecord
from .rows import insert_row


class Evaluations:
    """CorpusQueue's evaluation history; each method is one transaction."""

    database: Database

    def record_evaluation(
        self,
        *,
        step: int,
        epoch: float,
        tokens_trained: int,
        val_bits_per_byte: float,
        train_bits_per_byte: float | None,
        holdout_tokens: int,
        seconds: float,
        best: bool,
        sources: dict[str, tuple[float, int]] | None = None,
        model: dict[str, int | None] | None = None,
    ) -> int:
        """Appends one evaluation to the history; returns its id (ids ascend in order). Atomic.

        `sources` maps a source's name to its (val_bits_per_byte, holdout_tokens), stored as
        {"NAME": {"val_bits_per_byte": x, "holdout_tokens": n}}. `model` describes the model
        measured, each field a count or None (the crawler's: d_model, n_head, n_layer, parameters,
        grown_at_step, grown_from_layers), stored as given. Raises ValueError, writing nothing,
        for a negative count, a non-finite or negative number, or a non-bool `best` (TypeError
        for a count that is not an integer). numpy scalars are accepted and stored as Python
        numbers.
        """
        row = {
            "step": _count("step", step),
            "epoch": _number("epoch", epoch),
            "tokens_trained": _count("tokens_trained", tokens_trained),
            "val_bits_per_byte": _number("val_bits_per_byte", val_bits_per_byte),
            "train_bits_per_byte": None if train_bits_per_byte is None
            else _number("train_bits_per_byte", train_bits_per_byte),
            "holdout_tokens": _count("holdout_tokens", holdout_tokens),
            "seconds": _number("seconds", seconds),
            "sources": None if sources is None else json.dumps({
                str(name): {"val_bits_per_byte": _number(f"sources[{name!r}]", value),
                            "holdout_tokens": _count(f"sources[{name!r}] tokens", tokens)}
                for name, (value, tokens) in sources.items()}, sort_keys=True),
            "model": None if model is None else json.dumps({
                str(name): None if value is None else _count(f"model[{name!r}]", value)
                for name, value in model.items()}, sort_keys=True),
        }
        if not isinstance(best, (bool, np.bool_)):
            raise ValueError(f"best ({best!r}) must be a bool")
        with self.database.write() as connection:
            return insert_row(connection, evaluations, row | {"best": bool(best)})

    def evaluations(self, since: int = 0, limit: int = 1000) -> list[EvaluationRecord]:
        """Up to `limit` evaluations with id > `since`, oldest first (pass the last id seen)."""
        if limit < 0:
            raise ValueError(f"limit ({limit}) must be >= 0")
        query = sa.select(evaluations).where(evaluations.c.id > since).order_by(evaluations.c.id)
        with self.database.read() as connection:
            rows = connection.execute(query.limit(limit))
            return [_record(row) for row in rows]

    def latest_evaluation(self) -> EvaluationRecord | None:
        """The most recent evaluation, or None before the first."""
        return self._last_evaluation(sa.true())

    def best_evaluation(self) -> EvaluationRecord | None:
        """The most recent evaluation recorded with best=True, or None if there is none."""
        return self._last_evaluation(evaluations.c.best)

    def _last_evaluation(self, condition) -> EvaluationRecord | None:
        query = sa.select(evaluations).where(condition).order_by(evaluations.c.id.desc()).limit(1)
        with self.database.read() as connection:
            row = connection.execute(query).first()
        return None if row is None else _record(row)


def _record(row) -> EvaluationRecord:
    values = dict(row._mapping)
    sources, model = values.pop("sources", None), values.pop("model", None)
    return EvaluationRecord(**values, sources=None if sources is None else json.loads(sources),
                            model=None if model is None else json.loads(model))


def _count(name: str, value) -> int:
    value = operator.index(value)  # TypeError for a float or a str
    if value < 0:
        raise ValueError(f"{name} ({value}) must be >= 0")
    return value


def _number(name: str, value) -> float:
    value = float(value)
    if not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} ({value}) must be a finite number >= 0")
    return value
