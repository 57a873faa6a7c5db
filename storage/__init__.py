"""The corpus store: documents, their tokens as one stream, and the training cursor, in SQL.

Also the stream's held-out split (holdout.py: offsets training never sees) and the history of
evaluations on it.

The map, one concern a module:
- queue.py: CorpusQueue, the one front every caller holds, gathered from the modules below it
  - documents.py: documents in (add_documents, record_skip, record_removed, the tokenizer)
  - versions.py: which versions of each file are stored, and which one a change is read against
  - reads.py: token windows out (training reads, replay draws, the held-out split and set)
  - withdrawal.py: withdrawn text (forget, superseded versions, stream_mask)
  - training_state.py: the cursor and its one writer, the checkpoint rows, stats
  - evaluations.py: the history of evaluations on the held-out set
  - holdout_blocks.py: the held-out blocks beyond the split's base, chosen per source
- stream.py: tokens to chunk rows and a stream range back; rows.py: statements the parts share
- cache.py: StreamCache, a copy of the stream in one flat file, derived from the store, for
  reading windows at any size (one pread a window)
- holdout.py, mask.py and replay.py: pure arithmetic over offsets (the held-out split; what
  training may read; replay drawn source by source)
- claims.py: which daemon ingests each file; locks.py: one training job per corpus
- db.py: the engine, transactions, migrations on open (migrations/); models.py: the tables;
  config.py: StorageConfig; errors.py: the typed exceptions; records.py: the values returned

SQLite (one machine, WAL) or PostgreSQL (shared), through SQLAlchemy Core, with the schema kept
by Alembic migrations that run on open. A database error reaches callers as one of the
StoreUnavailable classes (errors.py), transient or not, never as the driver's own exception. Knows nothing of the engine or the crawler: it takes and
returns rows, token arrays and paths. Callers import from here.
"""

from .cache import StreamCache
from .claims import ClaimResult, FileClaims
from .config import ConfigError, StorageConfig
from .db import Database, open_database
from .errors import (
    DatabaseUnavailable,
    SchemaTooNew,
    StorageError,
    StoreBroken,
    StoreBusy,
    StoreDisconnected,
    StoreFull,
    StoreUnavailable,
    TokenizerMismatch,
)
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
    PathVersion,
    QueueStats,
    StoredVersion,
)
from .replay import ReplayMix, draw_starts

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
    "draw_starts",
    "draw_window_starts",
    "NewDocument",
    "PathVersion",
    "QueueStats",
    "ReplayMix",
    "SchemaTooNew",
    "StorageConfig",
    "StorageError",
    "StoreBroken",
    "StoreBusy",
    "StoreDisconnected",
    "StoreFull",
    "StoreUnavailable",
    "StreamCache",
    "StreamMask",
    "StoredVersion",
    "TokenizerMismatch",
    "TrainingLock",
    "TrainingLocked",
    "open_database",
]
