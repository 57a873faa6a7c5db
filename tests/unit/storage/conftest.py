"""Fixtures of the storage tests: each store test runs on SQLite and on PostgreSQL.

SQLite: a file under tmp_path. PostgreSQL: the server named by CRYSTALLINE_TEST_POSTGRES_URL
(tests/conftest.py's `postgres_url`), with a fresh schema per test (first on the search_path, so
every table, the alembic_version one included, lands in it), dropped afterwards. The PostgreSQL
variants are marked `postgres`; they skip, saying why, when the variable is unset, and fail when
it is set and the server does not answer.
"""

from __future__ import annotations

import hashlib

import numpy as np
import pytest

from storage import CorpusQueue, StorageConfig, open_database

TOKENIZER = '{"kind": "byte", "version": 1}'
# small and odd, so documents in the tests cross chunk boundaries at awkward places
CHUNK_TOKENS = 7


@pytest.fixture
def make_config(database_url):
    """StorageConfig for this test's database; keyword arguments override the test defaults."""

    def make(**overrides) -> StorageConfig:
        return StorageConfig(**({"url": database_url, "chunk_tokens": CHUNK_TOKENS} | overrides))

    return make


@pytest.fixture
def queue(make_config):
    with CorpusQueue(open_database(make_config())) as opened:
        yield opened


def content_hash(tokens) -> str:
    return hashlib.sha256(np.asarray(tokens, "<i8").tobytes()).hexdigest()


class DocumentAdder:
    """add(queue, path, tokens, **overrides): add_document, hashing the tokens, with defaults."""

    tokenizer = TOKENIZER
    chunk_tokens = CHUNK_TOKENS
    content_hash = staticmethod(content_hash)

    def __call__(self, queue: CorpusQueue, path: str, tokens, **overrides):
        tokens = np.asarray(tokens)
        arguments = {
            "source_path": path,
            "content_hash": content_hash(tokens),
            "size": int(tokens.size),
            "mtime": 1_700_000_000.25,
            "kind": "text",
            "tokens": tokens,
            "tokenizer": TOKENIZER,
        }
        return queue.add_document(**(arguments | overrides))


@pytest.fixture
def add() -> DocumentAdder:
    return DocumentAdder()
