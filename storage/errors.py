"""Typed exceptions the corpus store raises on purpose; callers decide what to log."""


class StorageError(Exception):
    """Base class of every error the corpus store raises on purpose."""


class SchemaTooNew(StorageError):
    """The database was migrated by a newer crystalline; it is left untouched."""


class DatabaseUnavailable(StorageError):
    """The database cannot be opened: its folder is missing, its file is damaged, or its server
    does not answer. The message is one line naming the file or server and the way out."""


class TokenizerMismatch(StorageError):
    """Tokens made with one tokenizer offered to a corpus recorded with another."""

    def __init__(self, recorded: str, offered: str):
        self.recorded = recorded
        self.offered = offered
        super().__init__(
            f"tokenizer {offered} does not match the corpus tokenizer {recorded}: the tokenizer "
            "is fixed for the life of a model; use a new database for a new tokenizer"
        )
