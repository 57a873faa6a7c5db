"""The corpus store: documents, their tokens as one stream, and the training cursor, in SQL.

Also the stream's held-out split (holdout.py: offsets training never sees) and the history of
evaluations on it.

SQLite (one machine, WAL) or PostgreSQL (shared), through SQLAlchemy Core, with the schema kept
by Alembic migrations that run on open. Knows nothing of the engine or the crawler: it takes and
returns rows, token arrays and paths. Callers import from here.
"""

from .claims import ClaimResult, FileClaims
from .config import ConfigError, StorageConfig
from .db import Database, open_database
from .errors import DatabaseUnavailable, SchemaTooNew, StorageError, TokenizerMismatch
from .holdout import HoldoutSplit, draw_window_starts
from .locks import TrainingLock, TrainingLocked
from .mask import StreamMask
from .queue import CorpusQueue
from .records import (
    AddResult,
    CheckpointRecord,
    Cursor,
    EvaluationRecord,
    ForgetResult,
    HoldoutSet,
    NewDocument,
    QueueStats,
    StoredVersion,
)

__all__ = [
    "AddResult",
    "CheckpointRecord",
    "ClaimResult",
    "ConfigError",
    "CorpusQueue",
    "Cursor",
    "Database",
    "DatabaseUnavailable",
    "EvaluationRecord",
    "FileClaims",
    "ForgetResult",
    "HoldoutSet",
    "HoldoutSplit",
    "draw_window_starts",
    "NewDocument",
    "QueueStats",
    "SchemaTooNew",
    "StorageConfig",
    "StorageError",
    "StreamMask",
    "StoredVersion",
    "TokenizerMismatch",
    "TrainingLock",
    "TrainingLocked",
    "open_database",
]
