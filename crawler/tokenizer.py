"""Byte-level tokenizer: ids 0..255 are the byte values, id 256 is the end-of-document separator.

This is the crawler's bridge from raw bytes to the token ids the engine trains on. It is not a
text normaliser: it never decodes UTF-8, so any file round-trips exactly, byte for byte.
A tokenizer is recorded in every checkpoint by its `identity()` dict; `tokenizer_from_identity`
turns that dict back into a tokenizer, and refuses kinds this version does not know (a BPE kind
comes later). Relies only on numpy; encode and decode are vectorized, with no loop per byte.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

BYTE_KIND = "byte"
BYTE_VERSION = 1
EOD = 256  # end-of-document separator; the only id that is not a byte
VOCAB_SIZE = 257


class TokenizerError(ValueError):
    """Ids out of the vocabulary, or a tokenizer identity this version cannot build."""


class ByteTokenizer:
    """Bytes in, uint16 ids out; vocab_size 257 (256 byte values plus EOD)."""

    kind = BYTE_KIND
    version = BYTE_VERSION
    vocab_size = VOCAB_SIZE
    eod = EOD

    def encode(self, data: bytes | bytearray | memoryview) -> np.ndarray:
        """The ids of `data`, one per byte, as a fresh uint16 array (never contains EOD)."""
        return np.frombuffer(data, dtype=np.uint8).astype(np.uint16)

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

    def _as_array(self, ids: Iterable[int] | np.ndarray) -> np.ndarray:
        array = ids if isinstance(ids, np.ndarray) else np.fromiter(ids, dtype=np.int64)
        array = array.reshape(-1)
        if array.size and (array.min() < 0 or array.max() >= VOCAB_SIZE):
            raise TokenizerError(
                f"ids must be in [0, {VOCAB_SIZE}); got min {array.min()} max {array.max()}"
            )
        return array

    def __repr__(self) -> str:
        return f"ByteTokenizer(vocab_size={self.vocab_size})"


def tokenizer_from_identity(identity: dict | None) -> ByteTokenizer:
    """The tokenizer a checkpoint's identity dict describes.

    Raises TokenizerError naming the kind (and the kinds known) when this version cannot build it.
    """
    if not isinstance(identity, dict):
        raise TokenizerError(f"tokenizer identity must be a dict, got {type(identity).__name__}")
    kind = identity.get("kind")
    if kind != BYTE_KIND:
        raise TokenizerError(f"unknown tokenizer kind {kind!r}; this version knows: {BYTE_KIND}")
    version = identity.get("version")
    if version != BYTE_VERSION:
        raise TokenizerError(
            f"byte tokenizer version {version!r} is not supported (this reads {BYTE_VERSION})"
        )
    vocab_size = identity.get("vocab_size")
    if vocab_size != VOCAB_SIZE:
        raise TokenizerError(f"byte tokenizer vocab_size {vocab_size!r} must be {VOCAB_SIZE}")
    return ByteTokenizer()
