"""StorageConfig: defaults that work, and validate() naming what is allowed."""

import dataclasses

import pytest

from storage import ConfigError, StorageConfig


def test_defaults_validate():
    config = StorageConfig(url="sqlite:////tmp/corpus.db").validate()
    assert (config.sqlite_synchronous, config.busy_timeout_ms, config.chunk_tokens) == (
        "NORMAL",
        5000,
        65536,
    )


def test_config_is_frozen():
    config = StorageConfig(url="sqlite:////tmp/corpus.db")
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.chunk_tokens = 1


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"url": "corpus.db"}, "must be a database URL"),
        ({"url": "mysql://host/db"}, r"sqlite, sqlite\+pysqlite, postgresql, postgresql\+psycopg"),
        ({"url": "sqlite://"}, "in-memory"),
        ({"url": "sqlite:///:memory:"}, "in-memory"),
        ({"sqlite_synchronous": "normal"}, "OFF, NORMAL, FULL, EXTRA"),
        ({"busy_timeout_ms": -1}, r"busy_timeout_ms \(-1\) must be in \[0, 600000\]"),
        ({"chunk_tokens": 0}, r"chunk_tokens \(0\) must be in \[1, 16777216\]"),
    ],
)
def test_validate_names_the_allowed_values(overrides, message):
    config = StorageConfig(**({"url": "sqlite:////tmp/corpus.db"} | overrides))
    with pytest.raises(ConfigError, match=message):
        config.validate()


@pytest.mark.parametrize(
    "url",
    ["sqlite:////abs/corpus.db", "sqlite:///relative.db", "postgresql+psycopg://u@h/db"],
)
def test_accepted_urls(url):
    StorageConfig(url=url).validate()
