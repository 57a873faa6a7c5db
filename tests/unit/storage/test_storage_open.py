"""Opening a database that cannot be opened: one line naming the file and the way out."""

import sqlite3

import pytest

from storage import CorpusQueue, DatabaseUnavailable, StorageConfig, StorageError, open_database


def test_a_missing_folder_is_one_line_naming_it(tmp_path):
    url = f"sqlite:///{tmp_path / 'nowhere' / 'corpus.db'}"
    with pytest.raises(DatabaseUnavailable) as raised:
        open_database(StorageConfig(url=url))
    message = str(raised.value)
    assert "\n" not in message and str(tmp_path / "nowhere") in message and "does not exist" in message
    assert "store url" in message and isinstance(raised.value, StorageError)


def test_a_damaged_header_is_one_line_with_the_way_out(tmp_path):
    path = tmp_path / "corpus.db"
    with CorpusQueue(open_database(StorageConfig(url=f"sqlite:///{path}"))) as queue:
        queue.set_tokenizer("byte")
    data = bytearray(path.read_bytes())
    data[:16] = b"not a database!!"
    path.write_bytes(bytes(data))
    with pytest.raises(DatabaseUnavailable) as raised:
        open_database(StorageConfig(url=f"sqlite:///{path}"))
    message = str(raised.value)
    assert "\n" not in message and message.startswith(f"{path} is damaged")
    assert "backup" in message and "move it" in message
    assert isinstance(raised.value.__cause__.orig, sqlite3.DatabaseError)


def test_a_refused_connection_names_the_server_without_its_password():
    url = "postgresql+psycopg://crystalline:secret@127.0.0.1:1/none?connect_timeout=2"
    with pytest.raises(DatabaseUnavailable) as raised:
        open_database(StorageConfig(url=url))
    message = str(raised.value)
    assert "\n" not in message and "127.0.0.1:1" in message and "secret" not in message
