"""The byte tokenizer: exact round trips, EOD handling, byte counts and identity."""

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from crawler.tokenizer import EOD, ByteTokenizer, TokenizerError, tokenizer_from_identity


def test_every_byte_value_round_trips():
    tokenizer = ByteTokenizer()
    data = bytes(range(256))
    ids = tokenizer.encode(data)
    assert ids.dtype == np.uint16
    assert ids.tolist() == list(range(256))
    assert tokenizer.decode(ids) == data


@given(st.binary(max_size=4096))
def test_random_bytes_round_trip(data):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode(data)
    assert ids.shape == (len(data),)
    assert tokenizer.decode(ids) == data
    assert tokenizer.decode(ids.tolist()) == data
    assert tokenizer.token_bytes(ids) == len(data)


@given(st.lists(st.binary(max_size=64), min_size=1, max_size=8))
def test_eod_is_dropped_or_rendered(documents):
    tokenizer = ByteTokenizer()
    ids = np.concatenate([np.append(tokenizer.encode(doc), np.uint16(EOD)) for doc in documents])
    assert tokenizer.decode(ids) == b"".join(documents)
    assert tokenizer.decode(ids, eod=b"\n") == b"".join(doc + b"\n" for doc in documents)
    assert tokenizer.token_bytes(ids) == sum(len(doc) for doc in documents)


def test_eod_rendering_at_the_edges():
    tokenizer = ByteTokenizer()
    assert tokenizer.decode([EOD, 104, 105, EOD, EOD], eod=b"|") == b"|hi||"
    assert tokenizer.decode([], eod=b"|") == b""
    assert tokenizer.token_bytes([EOD, EOD]) == 0


def test_encode_accepts_bytearray_and_memoryview():
    tokenizer = ByteTokenizer()
    assert tokenizer.encode(bytearray(b"ab")).tolist() == [97, 98]
    assert tokenizer.encode(memoryview(b"ab")).tolist() == [97, 98]


@pytest.mark.parametrize("ids", [[257], [-1], [0, 300]])
def test_decode_rejects_ids_outside_the_vocabulary(ids):
    with pytest.raises(TokenizerError, match=r"\[0, 257\)"):
        ByteTokenizer().decode(ids)


def test_identity_round_trips():
    identity = ByteTokenizer().identity()
    assert identity == {"kind": "byte", "vocab_size": 257, "version": 1}
    rebuilt = tokenizer_from_identity(identity)
    assert isinstance(rebuilt, ByteTokenizer)
    assert rebuilt.vocab_size == 257


@pytest.mark.parametrize(
    "identity, match",
    [
        ({"kind": "bpe", "vocab_size": 50257, "version": 1}, "unknown tokenizer kind 'bpe'"),
        ({"kind": "byte", "vocab_size": 257, "version": 2}, "version 2"),
        ({"kind": "byte", "vocab_size": 300, "version": 1}, "vocab_size 300"),
        ({}, "unknown tokenizer kind None"),
        (None, "must be a dict"),
    ],
)
def test_unknown_identities_are_refused(identity, match):
    with pytest.raises(TokenizerError, match=match):
        tokenizer_from_identity(identity)
