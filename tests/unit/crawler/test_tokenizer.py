"""Both tokenizers: exact round trips, EOD handling, byte counts, identities and the state dir.

The BPE is trained once per module on generated English-like text (a fixed seed), so its
tests take well under a second each.
"""

import hashlib
import json

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from crawler.ingest.tokenizer import (
    EOD,
    MAX_BPE_VOCAB,
    TOKENIZER_FILE,
    BPETokenizer,
    ByteTokenizer,
    TokenizerError,
    load_state_tokenizer,
    tokenizer_from_identity,
    train_bpe,
)


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


def test_the_byte_vocabulary_is_the_engines_default():
    from engine import BYTE_VOCAB_SIZE, ModelConfig

    # the tokenizer counts its ids itself (ingest may not import the engine): the two must agree
    assert ByteTokenizer.vocab_size == BYTE_VOCAB_SIZE == ModelConfig().vocab_size == 257
    assert EOD == BYTE_VOCAB_SIZE - 1 and ByteTokenizer().decode([EOD], eod=b"|") == b"|"


def test_identity_round_trips():
    identity = ByteTokenizer().identity()
    assert identity == {"kind": "byte", "vocab_size": 257, "version": 1}
    rebuilt = tokenizer_from_identity(identity)
    assert isinstance(rebuilt, ByteTokenizer)
    assert rebuilt.vocab_size == 257


@pytest.mark.parametrize(
    "identity, match",
    [
        ({"kind": "wordpiece", "vocab_size": 50257, "version": 1}, "unknown tokenizer kind 'wordpiece'"),
        ({"kind": "bpe", "vocab_size": 512, "version": 2, "sha256": "0" * 64}, "bpe tokenizer version 2"),
        ({"kind": "bpe", "vocab_size": 512, "version": 1}, "by sha256"),
        ({"kind": "byte", "vocab_size": 257, "version": 2}, "version 2"),
        ({"kind": "byte", "vocab_size": 300, "version": 1}, "vocab_size 300"),
        ({}, "unknown tokenizer kind None"),
        (None, "must be a dict"),
    ],
)
def test_unknown_identities_are_refused(identity, match):
    with pytest.raises(TokenizerError, match=match):
        tokenizer_from_identity(identity)


# ---------------------------------------------------------------------------------------------
# the text interface, on both tokenizers

SYLLABLES = ["the", "an", "ing", "er", "tion", "st", "re", "ou", "ly", "con", "pro", "al", "ed", "in", "ca"]


def english_like(n_words: int, seed: int) -> str:
    """Sentences of made-up words over a Zipf-like word list: text with real structure to merge."""
    rng = np.random.default_rng(seed)
    lexicon = ["".join(rng.choice(SYLLABLES, size=rng.integers(1, 4))) for _ in range(300)]
    weights = 1.0 / np.arange(1, len(lexicon) + 1)
    words = rng.choice(lexicon, size=n_words, p=weights / weights.sum())
    sentences = np.array_split(words, max(1, n_words // 12))
    return " ".join(" ".join(s).capitalize() + rng.choice([".", ",", "?", "!\n"]) for s in sentences)


@pytest.fixture(scope="module")
def bpe() -> BPETokenizer:
    return train_bpe([english_like(4000, seed) for seed in range(8)], vocab_size=512)


@pytest.fixture(params=["byte", "bpe"])
def tokenizer(request, bpe):
    return ByteTokenizer() if request.param == "byte" else bpe


@settings(max_examples=200, deadline=None)
@given(text=st.text(max_size=300))  # any str without lone surrogates (st.text excludes them)
def test_text_round_trips_with_byte_tokenizer(text):
    tokenizer = ByteTokenizer()
    ids = tokenizer.encode_text(text)
    assert ids.dtype == np.uint16
    assert tokenizer.decode_text(ids) == text
    assert tokenizer.token_bytes(ids) == len(text.encode("utf-8"))


@settings(max_examples=300, deadline=None)
@given(text=st.text(max_size=300) | st.text(alphabet="aeiou tnsr.\n<|>", max_size=300))
def test_text_round_trips_with_bpe(bpe, text):
    ids = bpe.encode_text(text)
    assert ids.dtype == np.uint16
    assert not np.any(ids == bpe.eod_id)
    assert bpe.decode_text(ids) == text
    assert bpe.decode(ids) == text.encode("utf-8")
    assert bpe.token_bytes(ids) == len(text.encode("utf-8"))


def test_eod_text_is_plain_text_and_eod_is_dropped(tokenizer):
    text = "one<|endoftext|>two"
    ids = tokenizer.encode_text(text)
    assert tokenizer.eod_id not in ids.tolist()  # only a separator is ever EOD
    assert tokenizer.decode_text(ids) == text
    joined = np.concatenate([[tokenizer.eod_id], ids, [tokenizer.eod_id], ids])
    assert tokenizer.decode_text(joined) == text + text
    assert tokenizer.token_bytes(joined) == 2 * len(text.encode())


def test_ids_that_split_a_character_count_their_bytes(bpe):
    ids = bpe.encode_text("\u00e9\u4e2d")  # 2 + 3 bytes, with no merges for either at this vocab
    assert bpe.token_bytes(ids) == 5
    assert all(bpe.token_bytes([i]) >= 1 for i in ids)
    assert bpe.decode_text(ids[:1]) == "\ufffd"  # half a character decodes to U+FFFD


def test_lone_surrogates_are_refused(tokenizer):
    with pytest.raises(TokenizerError, match="not valid Unicode"):
        tokenizer.encode_text("a\ud800b")


def test_bpe_refuses_bytes_that_are_not_utf8_and_ids_outside_the_vocabulary(bpe):
    with pytest.raises(TokenizerError, match="not UTF-8"):
        bpe.encode(b"caf\xe9")
    assert bpe.encode("caf\u00e9".encode()).tolist() == bpe.encode_text("caf\u00e9").tolist()
    with pytest.raises(TokenizerError, match=r"\[0, 512\)"):
        bpe.decode_text([bpe.vocab_size])


def test_bpe_has_every_byte_and_one_eod(bpe):
    assert bpe.vocab_size == 512
    single = [i for i in range(bpe.vocab_size) if bpe.token_bytes([i]) == 1]
    assert sorted(bpe.decode(single)) == list(range(256))  # each byte value exactly once
    assert bpe.token_bytes([bpe.eod_id]) == 0


def test_bpe_compresses_english_like_text(bpe):
    held_out = english_like(3000, seed=99)
    ids = bpe.encode_text(held_out)
    tokens_per_byte = ids.size / len(held_out.encode())
    assert tokens_per_byte < 0.6, tokens_per_byte


def test_large_vocabularies_use_uint32():
    tokenizer = ByteTokenizer()
    assert tokenizer.dtype == np.uint16
    tokenizer.vocab_size = 65537  # an instance attribute: the dtype follows the vocabulary
    assert tokenizer.dtype == np.uint32


# ---------------------------------------------------------------------------------------------
# training, files and identities


@pytest.mark.parametrize("vocab_size", [259, MAX_BPE_VOCAB + 1, True, 512.0])
def test_train_bpe_refuses_vocab_sizes_out_of_range(vocab_size):
    with pytest.raises(TokenizerError, match="vocab_size"):
        train_bpe(["some text"], vocab_size)


def test_small_text_gives_a_smaller_vocabulary():
    tokenizer = train_bpe(["ab ab ab"], vocab_size=1000)
    assert 258 <= tokenizer.vocab_size < 1000
    assert tokenizer.decode_text(tokenizer.encode_text("ab ba")) == "ab ba"


def test_save_load_round_trip_and_identity(bpe, tmp_path):
    path = bpe.save(tmp_path / "state" / TOKENIZER_FILE)
    assert [p.name for p in path.parent.iterdir()] == [TOKENIZER_FILE]  # no temporary left over
    loaded = BPETokenizer.load(path)
    identity = loaded.identity()
    assert identity == bpe.identity()
    sha256 = hashlib.sha256(path.read_bytes()).hexdigest()
    assert identity == {"kind": "bpe", "vocab_size": 512, "version": 1, "sha256": sha256}
    assert loaded.identity_string() == json.dumps(identity, sort_keys=True, separators=(",", ":"))
    assert " " not in loaded.identity_string()
    assert ByteTokenizer().identity_string() == '{"kind":"byte","version":1,"vocab_size":257}'
    text = english_like(50, seed=5)
    assert loaded.encode_text(text).tolist() == bpe.encode_text(text).tolist()


def test_identity_changes_when_the_file_changes(bpe, tmp_path):
    path = bpe.save(tmp_path / TOKENIZER_FILE)
    before = BPETokenizer.load(path).identity()
    # the same tokenizer, written differently: the identity names the exact bytes
    path.write_text(json.dumps(json.loads(path.read_text()), indent=2))
    after = BPETokenizer.load(path).identity()
    assert after["sha256"] != before["sha256"]
    assert after["vocab_size"] == before["vocab_size"]


@pytest.mark.parametrize("content", [b"{not json", b'{"model": {"type": "WordPiece"}}', b"\xff"])
def test_malformed_files_are_refused(tmp_path, content):
    (tmp_path / TOKENIZER_FILE).write_bytes(content)
    with pytest.raises(TokenizerError):
        BPETokenizer.load(tmp_path / TOKENIZER_FILE)


def test_state_tokenizer_is_bpe_only_when_the_file_exists(bpe, tmp_path):
    assert isinstance(load_state_tokenizer(tmp_path), ByteTokenizer)
    bpe.save(tmp_path / TOKENIZER_FILE)
    assert load_state_tokenizer(tmp_path).identity() == bpe.identity()


def test_identity_must_match_the_state_directory(bpe, tmp_path):
    byte_identity = ByteTokenizer().identity()
    assert isinstance(tokenizer_from_identity(byte_identity, tmp_path), ByteTokenizer)
    with pytest.raises(TokenizerError, match="no tokenizer.json"):
        tokenizer_from_identity(bpe.identity(), tmp_path)
    with pytest.raises(TokenizerError, match="read from its state directory"):
        tokenizer_from_identity(bpe.identity())

    bpe.save(tmp_path / TOKENIZER_FILE)
    assert tokenizer_from_identity(bpe.identity(), tmp_path).identity() == bpe.identity()
    # a byte model meets a BPE that appeared later
    with pytest.raises(TokenizerError, match="trained with tokenizer byte, the state directory .* holds bpe"):
        tokenizer_from_identity(byte_identity, tmp_path)
    # a BPE model meets another BPE
    other = train_bpe([english_like(500, seed=42)], vocab_size=300)
    other.save(tmp_path / TOKENIZER_FILE)
    expected = (
        f"checkpoint was trained with tokenizer bpe sha256:{bpe.sha256[:12]}, the state directory "
        f"{tmp_path} holds bpe sha256:{other.sha256[:12]}: the tokenizer is fixed for the life of a model"
    )
    with pytest.raises(TokenizerError) as raised:
        tokenizer_from_identity(bpe.identity(), tmp_path)
    assert str(raised.value) == expected


def test_a_long_text_is_encoded_in_pieces_and_round_trips(bpe):
    from crawler.ingest.tokenizer import ENCODE_PIECE, _pieces

    line = "Now is the winter of our discontent, made glorious summer.\n\n  indented\n"
    text = line * (3 * ENCODE_PIECE // len(line))
    pieces = _pieces(text)
    assert len(pieces) >= 3 and "".join(pieces) == text
    assert all(piece.endswith("\n") for piece in pieces[:-1])
    ids = bpe.encode_text(text)
    assert bpe.decode_text(ids) == text
    assert np.array_equal(ids, bpe.encode_text(text)), "deterministic"
