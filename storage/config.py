"""Typed, validated configuration of the corpus store.

Knows nothing of files other than the database URL, and nothing of the engine or the crawler.
The dataclass is frozen; `validate()` runs once at the edge and names what is allowed.
"""

from __future__ import annotations

from dataclasses import dataclass

SQLITE_SYNCHRONOUS = ("OFF", "NORMAL", "FULL", "EXTRA")
URL_SCHEMES = ("sqlite", "sqlite+pysqlite", "postgresql", "postgresql+psycopg")


class ConfigError(ValueError):
    """A storage config value is out of its allowed range; the message names the allowed values."""


@dataclass(frozen=True)
class StorageConfig:
    # the corpus database: "sqlite:////abs/path/corpus.db" (one machine) or
    # "postgresql+psycopg://user@host/db" (shared by several machines).
    url: str
    # SQLite only. With WAL, NORMAL syncs the log at checkpoints, not at every commit: a power loss
    # (or an OS crash) can lose the last commits, a process crash cannot. FULL syncs every commit
    # (about 6x fewer commits/s here). Transactions that let the caller delete or move a source
    # file (add_document) always run at FULL or above, whatever this says; see db.Database.write.
    sqlite_synchronous: str = "NORMAL"
    # how long a connection waits for another writer's lock before "database is locked" (SQLite).
    busy_timeout_ms: int = 5000
    # tokens per stored chunk blob: 65536 uint16 tokens are 128 KiB, so a read of one window
    # touches at most two chunks per document it spans.
    chunk_tokens: int = 65536
    # the corpus rules on what is stored (crawler/ingest/cleaning.py; docs/STORAGE.md, "Boilerplate
    # and near-duplicates"): a line repeated as navigation, header or footer across many documents
    # is stored by the first 20 and dropped from the rest; a document whose text is mostly one
    # already stored is skipped as near_duplicate. Either off: stored as extracted
    drop_boilerplate: bool = True
    skip_near_duplicates: bool = True

    def validate(self) -> "StorageConfig":
        if not isinstance(self.url, str) or "://" not in self.url:
            raise ConfigError(
                f"url ({self.url!r}) must be a database URL such as "
                "'sqlite:////abs/path/corpus.db' or 'postgresql+psycopg://user@host/db'"
            )
        scheme = self.url.split("://", 1)[0]
        if scheme not in URL_SCHEMES:
            raise ConfigError(f"url scheme ({scheme!r}) must be one of {', '.join(URL_SCHEMES)}")
        if scheme.startswith("sqlite"):
            path = self.url.split("://", 1)[1].lstrip("/")
            if path in ("", ":memory:") or path.startswith(":memory:") or "mode=memory" in path:
                raise ConfigError(
                    f"url ({self.url!r}) must name a SQLite file: an in-memory database is not "
                    "shared between connections and cannot use WAL"
                )
        if self.sqlite_synchronous not in SQLITE_SYNCHRONOUS:
            raise ConfigError(
                f"sqlite_synchronous ({self.sqlite_synchronous!r}) must be one of "
                f"{', '.join(SQLITE_SYNCHRONOUS)}"
            )
        if not isinstance(self.busy_timeout_ms, int) or not 0 <= self.busy_timeout_ms <= 600_000:
            raise ConfigError(f"busy_timeout_ms ({self.busy_timeout_ms!r}) must be in [0, 600000]")
        if not isinstance(self.chunk_tokens, int) or not 1 <= self.chunk_tokens <= 2**24:
            raise ConfigError(f"chunk_tokens ({self.chunk_tokens!r}) must be in [1, 16777216]")
        for name in ("drop_boilerplate", "skip_near_duplicates"):
            if not isinstance(getattr(self, name), bool):
                raise ConfigError(f"{name} ({getattr(self, name)!r}) must be true or false")
        return self
