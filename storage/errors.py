"""Typed exceptions the corpus store raises on purpose; callers decide what to log.

Every driver error met while the store is in use leaves it as one of the StoreUnavailable
classes below, converted once where connections are made (db.py), never the driver's own
exception: transient ones (StoreBusy, StoreDisconnected, StoreFull) may work if the same call is
made again later, unchanged; StoreBroken will not until someone acts. Each message is one line
naming the database, the cause and the way out.
"""


class StorageError(Exception):
    """Base class of every error the corpus store raises on purpose."""


class SchemaTooNew(StorageError):
    """The database was migrated by a newer crystalline; it is left untouched."""


class StoreUnavailable(StorageError):
    """The database could not serve a call. `transient` says whether the same call may work
    later (a caller may retry it); `cause` names why in one word for logs and health ("busy",
    "disconnected", "disk_full", "broken"); `orig` is the driver's exception (also the
    `__cause__`). Nothing of the transaction that raised it was committed."""

    transient = False
    cause = "broken"

    def __init__(self, message: str, orig: BaseException | None = None):
        super().__init__(message)
        self.orig = orig


class StoreBusy(StoreUnavailable):
    """Another transaction held what this one needed past the wait allowed: SQLite's write lock
    held past busy_timeout_ms, or on PostgreSQL a deadlock, a serialization failure, a lock or
    statement timeout, a server out of memory."""

    transient = True
    cause = "busy"


class StoreDisconnected(StoreUnavailable):
    """The connection to the database was lost or refused (a server that stopped, restarted,
    is unreachable or has no connection slot left), or SQLite could not read or write its file
    (an I/O error)."""

    transient = True
    cause = "disconnected"


class StoreFull(StoreUnavailable):
    """The database's disk is full: SQLite's "database or disk is full" (SQLITE_FULL, also a
    `max_page_count` reached), PostgreSQL's disk_full (SQLSTATE 53100)."""

    transient = True
    cause = "disk_full"


class StoreBroken(StoreUnavailable):
    """An error retrying will not cure: a damaged file, a schema this code does not expect, a
    refused constraint, a read-only database, a refused login."""


class DatabaseUnavailable(StoreUnavailable):
    """The database cannot be opened: its folder is missing, its file is damaged, it is locked
    or full, or its server does not answer. The message is one line naming the file or server
    and the way out; `transient` and `cause` are those of what stopped the open (a locked file or
    a server that does not answer may open later; a missing folder or a damaged file will not)."""

    def __init__(self, message: str, orig: BaseException | None = None, *, transient: bool = False,
                 cause: str = "broken"):
        super().__init__(message, orig)
        self.transient, self.cause = transient, cause


class TokenizerMismatch(StorageError):
    """Tokens made with one tokenizer offered to a corpus recorded with another."""

    def __init__(self, recorded: str, offered: str):
        self.recorded = recorded
        self.offered = offered
        super().__init__(
            f"tokenizer {offered} does not match the corpus tokenizer {recorded}: the tokenizer "
            "is fixed for the life of a model; use a new database for a new tokenizer"
        )
