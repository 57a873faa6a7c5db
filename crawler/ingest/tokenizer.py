"""Tokenizers: the fixed byte tokenizer and a trainable byte-level BPE, behind one interface.

This is the crawler's bridge from text to the token ids the engine trains on. It is not a text
normaliser: both tokenizers are lossless, so decode_text(encode_text(s)) == s for any valid str.

- ByteTokenizer: ids 0..255 are the byte values, 256 is the end-of-document separator (EOD).
  It never decodes UTF-8, so `encode(bytes)` round-trips any file byte for byte.
- BPETokenizer: a HuggingFace `tokenizers` byte-level BPE (GPT-2's scheme) whose 256 initial
  tokens cover every byte, plus one special token "<|endoftext|>" as EOD. It lives in
  STATE_DIR/tokenizer.json; its identity carries the sha256 of that file.

The common interface, which the ingest pipeline uses alone: encode_text, decode_text,
vocab_size, eod_id, identity, identity_string, token_bytes. A tokenizer is fixed for the life
of a model: every checkpoint records `identity()`, and `tokenizer_from_identity` refuses a state
directory whose tokenizer is not that one. Relies on numpy and `tokenizers`; decoding and byte
counts are vectorized table look-ups, with no loop per token.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import tokenizers
from tokenizers import decoders, models, pre_tokenizers, trainers

BYTE_KIND, BYTE_VERSION = "byte", 1
EOD = 256  # the byte tokenizer's end-of-document separator; the only id that is not a byte
# the 256 byte values and EOD: engine.config.BYTE_VOCAB_SIZE, the model's default, counted from
# this side (ingest knows nothing of the engine; test_tokenizer holds the two equal)
VOCAB_SIZE = EOD + 1
BPE_KIND, BPE_VERSION = "bpe", 1
EOD_TOKEN = "<|endoftext|>"
TOKENIZER_FILE = "tokenizer.json"  # the BPE's home in a state directory
# 256 byte tokens, EOD and a few merges: anything smaller is no BPE at all
MIN_BPE_VOCAB = VOCAB_SIZE + 3
MAX_BPE_VOCAB = 1 << 20
FIXED = "the tokenizer is fixed for the life of a model"


class TokenizerError(ValueError):
    """Ids out of the vocabulary, text that cannot be encoded, or a tokenizer identity this
    version cannot build or that does not match the state directory."""


def _byte_to_unicode() -> dict[int, str]:
    """GPT-2's reversible map from the 256 byte values to printable characters (the byte-level
    alphabet `tokenizers` uses)."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    printable += range(ord("®"), ord("ÿ") + 1)
    others = [b for b in range(256) if b not in printable]
    return {**{b: chr(b) for b in printable}, **{b: chr(256 + n) for n, b in enumerate(others)}}


UNICODE_TO_BYTE = {char: byte for byte, char in _byte_to_unicode().items()}


class _Interface:
    """What both tokenizers share: dtype, decode_text, the canonical identity string and the id
    range check, over each one's own decode(ids) -> bytes and identity() -> dict."""

    vocab_size: int

    @property
    def dtype(self) -> type:
        """uint16 while every id fits, else uint32."""
        return np.uint16 if self.vocab_size <= 1 << 16 else np.uint32

    def decode_text(self, ids: Iterable[int] | np.ndarray) -> str:
        """The text the ids stand for, EOD dropped; bytes that are not UTF-8 become U+FFFD."""
        return self.decode(ids).decode("utf-8", "replace")

    def identity_string(self) -> str:
        """identity() as canonical JSON (sorted keys, no spaces): the form stored and compared."""
        return json.dumps(self.identity(), sort_keys=True, separators=(",", ":"))

    def _as_array(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        array = ids if isinstance(ids, np.ndarray) else np.fromiter(ids, dtype=np.int64)
        array = array.reshape(-1)
        if array.size and (array.min() < 0 or array.max() >= self.vocab_size):
            raise TokenizerError(
                f"ids must be in [0, {self.vocab_size}); got min {array.min()} max {array.max()}"
            )
        return array


# ---------------------------------------------------------------------------------------------
# byte


class ByteTokenizer(_Interface):
    """Bytes in, uint16 ids out; vocab_size 257 (256 byte values plus EOD)."""

    kind = BYTE_KIND
    version = BYTE_VERSION
    vocab_size = VOCAB_SIZE
    eod = eod_id = EOD

    def encode(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """The ids of `data`, one per byte, as a fresh uint16 array (never contains EOD)."""
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

    def encode_text(self, text: str) -> np.ndarray:
        """The ids of the UTF-8 bytes of `text`. Raises TokenizerError for a lone surrogate."""
        return self.encode(_utf8(text))

    def decode(self, ids: Iterable[int] | np.ndarray, eod: bytes = b"") -> bytes:
        """The bytes the ids stand for. Each EOD is replaced by `eod`: dropped by default, or
        rendered as a separator such as b"\\n" when the caller shows several documents.

        Raises TokenizerError for an id outside [0, 257).
        """
        array = self._as_array(ids)
        if eod == b"" or not np.any(array == EOD):
            return array[array != EOD].astype(np.uint8).tobytes()
        # split on EOD and join the byte runs with the separator
        parts = np.split(array, np.flatnonzero(array == EOD))
        runs = [parts[0]] + [part[1:] for part in parts[1:]]  # every later part starts with EOD
        return eod.join(run.astype(np.uint8).tobytes() for run in runs)

    def token_bytes(self, ids: Iterable[int] | np.ndarray) -> int:
        """The number of source bytes the ids stand for: every byte id counts 1, EOD counts 0.

        This is the denominator of bits per byte.
        """
        array = self._as_array(ids)
        return int(np.count_nonzero(array != EOD))

    def identity(self) -> dict:
        """What a checkpoint records to rebuild this tokenizer."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "version": self.version}

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


def _utf8(text: str) -> bytes:
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise TokenizerError(f"text is not valid Unicode: {exc.reason} at index {exc.start}") from None


# ---------------------------------------------------------------------------------------------
# byte-level BPE


ENCODE_PIECE = 1 << 16  # characters per piece of a long text handed to encode_batch
_CUT = re.compile(r"\n(?=\S)")


def _pieces(text: str) -> list[str]:
    """`text` cut after a newline followed by a non-space, about every ENCODE_PIECE characters."""
    pieces, start = [], 0
    while len(text) - start > ENCODE_PIECE:
        match = _CUT.search(text, start + ENCODE_PIECE)
        if match is None:
            break
        pieces.append(text[start : match.end()])
        start = match.end()
    pieces.append(text[start:])
    return pieces


class BPETokenizer(_Interface):
    """A byte-level BPE read from its tokenizer.json bytes; the sha256 of those bytes is its name.

    `decode` and `token_bytes` look each id's bytes up in a table built once from the vocabulary
    (GPT-2's byte-to-character map reversed), so byte counts are exact even for ids that split a
    UTF-8 character; EOD stands for no bytes.
    """

    kind = BPE_KIND
    version = BPE_VERSION

    def __init__(self, serialized: bytes):
        try:
            config = json.loads(serialized)
            self._tokenizer = tokenizers.Tokenizer.from_str(serialized.decode("utf-8"))
        except Exception as exc:  # the Rust side raises plain Exception for a malformed file
            raise TokenizerError(f"not a tokenizer.json: {' '.join(str(exc).split())}") from None
        if not isinstance(config, dict):
            raise TokenizerError(f"not a tokenizer.json: a JSON {type(config).__name__}, not an object")
        kinds = (config.get("model") or {}).get("type"), (config.get("pre_tokenizer") or {}).get("type")
        if kinds != ("BPE", "ByteLevel"):
            raise TokenizerError(f"expected a byte-level BPE (BPE, ByteLevel), got {kinds}")
        self._tokenizer.encode_special_tokens = True  # "<|endoftext|>" in text is just text
        self.serialized = serialized
        self.sha256 = hashlib.sha256(serialized).hexdigest()
        vocab = self._tokenizer.get_vocab(with_added_tokens=True)  # token string -> id
        self.vocab_size = len(vocab)
        eod_id = vocab.get(EOD_TOKEN)
        if eod_id is None or sorted(vocab.values()) != list(range(self.vocab_size)):
            raise TokenizerError(f"the vocabulary must hold {EOD_TOKEN!r} and ids 0..{self.vocab_size - 1}")
        self.eod_id = eod_id
        pieces: list[bytes] = [b""] * self.vocab_size
        for token, token_id in vocab.items():
            if token_id != eod_id:
                try:
                    pieces[token_id] = bytes(UNICODE_TO_BYTE[char] for char in token)
                except KeyError:
                    raise TokenizerError(f"token {token!r} is not byte-level") from None
        if any(vocab.get(char) is None for char in UNICODE_TO_BYTE):
            raise TokenizerError("the vocabulary must hold all 256 byte tokens")
        self._lengths = np.array([len(piece) for piece in pieces], dtype=np.int64)  # (V,)
        self._starts = np.cumsum(self._lengths) - self._lengths  # (V,) offset of each id's bytes
        self._blob = np.frombuffer(b"".join(pieces), dtype=np.uint8)

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        """Read a tokenizer.json. Raises OSError if unreadable, TokenizerError if not a BPE."""
        return cls(Path(path).read_bytes())

    def save(self, path: str | os.PathLike) -> Path:
        """Write the tokenizer.json atomically (a temporary file in the same folder, fsynced,
        then os.replace), so a kill mid-write leaves the old file or the new one, never half."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        temporary = tempfile.NamedTemporaryFile(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False)
        with temporary as out:
            try:
                out.write(self.serialized)
                out.flush()
                os.fsync(out.fileno())
            except BaseException:
                os.unlink(out.name)
                raise
        os.replace(out.name, path)
        return path

    def encode_text(self, text: str) -> np.ndarray:
        """The ids of `text`, never EOD. Raises TokenizerError for a lone surrogate.

        A long text is cut into pieces of about ENCODE_PIECE characters, each ending with a
        newline that a non-space character follows, and the pieces are encoded together
        (encode_batch runs them on the library's thread pool: 1.6 -> 3.8 MB/s on 2 cores).
        The cut points depend only on the text, so the ids are deterministic; they can differ
        from encoding the text whole only in how a run of blank lines is merged at a cut.
        """
        try:
            if len(text) <= ENCODE_PIECE:
                ids = self._tokenizer.encode(text, add_special_tokens=False).ids
                return np.asarray(ids, dtype=self.dtype)
            encodings = self._tokenizer.encode_batch(_pieces(text), add_special_tokens=False)
        except TypeError:
            _utf8(text)  # names the offending character
            raise
        return np.fromiter((i for e in encodings for i in e.ids), dtype=self.dtype)

    def encode(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """The ids of UTF-8 `data`. Raises TokenizerError for bytes that are not UTF-8."""
        try:
            text = bytes(data).decode("utf-8")
        except UnicodeDecodeError as exc:
            raise TokenizerError(f"not UTF-8 text: {exc.reason} at byte {exc.start}") from None
        return self.encode_text(text)

    def decode(self, ids: Iterable[int] | np.ndarray) -> bytes:
        """The bytes the ids stand for, EOD dropped. Raises TokenizerError for an unknown id."""
        array = self._as_array(ids)
        lengths = self._lengths[array]  # (n,)
        ends = np.cumsum(lengths)
        # output byte k of id i reads blob[starts[i] + k]; k counts from the id's first byte
        total = int(ends[-1]) if ends.size else 0
        index = np.repeat(self._starts[array] - (ends - lengths), lengths) + np.arange(total)  # (total,)
        return self._blob[index].tobytes()

    def token_bytes(self, ids: Iterable[int] | np.ndarray) -> int:
        """The number of UTF-8 bytes the ids stand for (EOD counts 0): bits per byte's denominator."""
        return int(self._lengths[self._as_array(ids)].sum())

    def identity(self) -> dict:
        """What a checkpoint records: the sha256 names the exact tokenizer.json."""
        return {"kind": self.kind, "vocab_size": self.vocab_size, "version": self.version,
                "sha256": self.sha256}

    def __repr__(self) -> str:
        return f"BPETokenizer(vocab_size={self.vocab_size}, sha256={self.sha256[:12]})"


def train_bpe(texts: Iterable[str], vocab_size: int) -> BPETokenizer:
    """Train a byte-level BPE of at most `vocab_size` ids (EOD included) on `texts`.

    The vocabulary comes out smaller when the text offers fewer merges. Raises TokenizerError
    for a vocab_size outside [MIN_BPE_VOCAB, MAX_BPE_VOCAB].
    """
    is_int = isinstance(vocab_size, int) and not isinstance(vocab_size, bool)
    if not is_int or not MIN_BPE_VOCAB <= vocab_size <= MAX_BPE_VOCAB:
        raise TokenizerError(
            f"vocab_size ({vocab_size!r}) must be in [{MIN_BPE_VOCAB}, {MAX_BPE_VOCAB}]: "
            "256 byte tokens, EOD and at least 3 merges"
        )
    bpe = tokenizers.Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=[EOD_TOKEN], show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # every byte has a token
    )
    bpe.train_from_iterator(texts, trainer=trainer)
    return BPETokenizer(bpe.to_str().encode("utf-8"))


# ---------------------------------------------------------------------------------------------
# state directory and checkpoint identities

Tokenizer = ByteTokenizer | BPETokenizer


def load_state_tokenizer(state_dir: str | os.PathLike) -> Tokenizer:
    """The tokenizer of a fresh model: STATE_DIR/tokenizer.json if there is one, else bytes."""
    path = Path(state_dir) / TOKENIZER_FILE
    return BPETokenizer.load(path) if path.exists() else ByteTokenizer()


def _describe(identity: dict) -> str:
    return f"bpe sha256:{str(identity.get('sha256'))[:12]}" if identity.get("kind") == BPE_KIND else "byte"


def tokenizer_from_identity(identity: dict | None, state_dir: str | os.PathLike | None = None) -> Tokenizer:
    """The tokenizer a checkpoint's identity dict describes.

    With `state_dir`, the state directory's tokenizer (load_state_tokenizer) must be that one:
    a BPE is loaded from it and its sha256 checked. Raises TokenizerError naming both sides on
    a mismatch, and naming the kind (and the kinds known) when this version cannot build it.
    """
    if not isinstance(identity, dict):
        raise TokenizerError(f"tokenizer identity must be a dict, got {type(identity).__name__}")
    kind, version = identity.get("kind"), identity.get("version")
    if kind not in (BYTE_KIND, BPE_KIND):
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; this version knows: {BYTE_KIND}, {BPE_KIND}")
    expected = BYTE_VERSION if kind == BYTE_KIND else BPE_VERSION
    if version != expected:
        raise TokenizerError(f"{kind} tokenizer version {version!r} is not supported (this reads {expected})")
    if kind == BYTE_KIND and identity.get("vocab_size") != VOCAB_SIZE:
        raise TokenizerError(f"byte tokenizer vocab_size {identity.get('vocab_size')!r} must be {VOCAB_SIZE}")
    if kind == BPE_KIND and not isinstance(identity.get("sha256"), str):
        raise TokenizerError("bpe tokenizer identity must name its tokenizer.json by sha256")
    if state_dir is None:
        if kind == BPE_KIND:
            raise TokenizerError("a bpe tokenizer is read from its state directory; none was given")
        return ByteTokenizer()
    held = load_state_tokenizer(state_dir)
    if held.identity() != identity:
        holds = _describe(held.identity()) if held.kind == BPE_KIND else f"byte (no {TOKENIZER_FILE})"
        raise TokenizerError(
            f"checkpoint was trained with tokenizer {_describe(identity)}, the state directory "
            f"{state_dir} holds {holds}: {FIXED}"
        )
    return held
