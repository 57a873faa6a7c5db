"""File names that are not UTF-8: stored losslessly as text both dialects accept, read back as given."""

import os

import pytest
import sqlalchemy as sa
from hypothesis import given
from hypothesis import strategies as st

from storage.models import ESCAPED_PREFIX, decode_path, encode_path, readable_text

LATIN1 = os.fsdecode(b"/inbox/caf\xe9 50%.txt")  # b"\xe9" is not UTF-8: a lone surrogate in Python


@pytest.mark.parametrize("name, stored", [
    ("/inbox/plain.txt", "/inbox/plain.txt"),
    ("/inbox/100% natürlich.txt", "/inbox/100% natürlich.txt"),  # valid names keep their plain form
    (LATIN1, "escaped:/inbox/caf%E9 50%25.txt"),
    ("escaped:/not/escaped%.txt", "escaped:escaped:/not/escaped%25.txt"),  # the prefix itself is escaped
    ("\ud800.txt", "escaped:%uD800.txt"),  # a lone surrogate that stands for no byte (Windows)
])
def test_encode_path_is_plain_for_valid_names_and_escaped_ascii_otherwise(name, stored):
    assert encode_path(name) == stored
    assert decode_path(stored) == name
    assert stored.startswith(ESCAPED_PREFIX) or stored == name


@given(raw=st.binary(min_size=1, max_size=40).filter(lambda b: b"\0" not in b))
def test_every_posix_name_round_trips(raw):
    name = os.fsdecode(raw)
    stored = encode_path(name)
    stored.encode("utf-8")  # storable: no lone surrogate left
    assert os.fsencode(decode_path(stored)) == raw


def test_a_stored_value_that_only_looks_escaped_is_read_as_stored():
    assert decode_path("escaped:%") == "escaped:%" and decode_path("escaped:%zz") == "escaped:%zz"


def test_readable_text_never_fails_and_shows_the_bytes():
    assert readable_text("open " + LATIN1 + " failed\0") == "open /inbox/caf\\xe9 50%.txt failed\\x00"


def test_documents_skips_and_lookups_with_a_name_that_is_not_utf8(queue, add):
    result = add(queue, LATIN1, [1, 2, 3], size=3, mtime=5.0)
    assert result.status == "queued" and result.version == 1
    assert queue.seen(LATIN1, 3, 5.0) and not queue.seen("/inbox/caf\u00e9 50%.txt", 3, 5.0)
    assert queue.seen_many([(LATIN1, 3, 5.0), ("/other", 1, 1.0)]) == {(LATIN1, 3, 5.0)}
    assert add(queue, LATIN1, [4, 5], size=2, mtime=6.0).version == 2  # versions count per stored name
    skip = queue.record_skip(source_path=LATIN1 + ".bin", reason="binary", size=9, mtime=7.0,
                             detail=f"[Errno 5] Input/output error: {LATIN1}.bin")
    assert skip > 0 and queue.seen(LATIN1 + ".bin", 9, 7.0)
    with queue.database.read() as connection:
        rows = connection.execute(sa.text("SELECT source_path, detail FROM documents ORDER BY id")).all()
    assert [path for path, _ in rows] == ["escaped:/inbox/caf%E9 50%25.txt"] * 2 + ["escaped:/inbox/caf%E9 50%25.txt.bin"]
    assert rows[2][1] == "[Errno 5] Input/output error: /inbox/caf\\xe9 50%.txt.bin"
