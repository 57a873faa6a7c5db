"""Single compressed files: a gzip, bzip2 or xz stream in, the bytes it inflates to out.

A single compressed file (`ls.1.gz`, `notes.txt.xz`, `paper.tex.bz2`) is its content: the
extractor types it by its inner name (the name without `.gz`, `.bz2`, `.xz`) and by the head of
what it inflates to, and parses what it inflates to. This module recognises the three stream
formats by their signatures (`codec_of`), names the inner file (`inner_name`), inflates a head
for sniffing (`inflate_head`, lenient) and a whole stream (`inflate`, strict).

`inflate` obeys the limits zipped formats obey (`ExtractLimits.max_uncompressed_bytes` and
`max_compression_ratio` past `RATIO_FLOOR_BYTES`), checked while inflating, a bounded chunk at a
time, so a bomb costs at most one chunk past its limit: Skipped("decompression_bomb"). A stream
that ends early or fails its checksum is Skipped("corrupt"). Concatenated streams (gzip members,
bzip2 streams, xz streams) inflate to their concatenation, as gzip(1) does; bytes after the last
stream that start no other stream are ignored, as gzip(1) ignores them. An archive inside (a
.tar.gz) is no document: what it inflates to is binary, and the kinds say so.

It does not open files, decide kinds or decode text, and it logs nothing. Relies on the standard
library's zlib, bz2 and lzma, and `crawler.ingest.terms`.
"""

from __future__ import annotations

import bz2
import lzma
import os
import zlib
from collections.abc import Callable

from .terms import RATIO_FLOOR_BYTES, CheckTime, ExtractLimits, Skipped

__all__ = ["COMPRESSIONS", "codec_of", "inner_name", "inflate_head", "inflate"]

# (compression, signature at offset 0, the suffixes that name it)
_FORMATS = (
    ("gzip", b"\x1f\x8b\x08", (".gz", ".gzip")),
    ("bzip2", b"BZh", (".bz2", ".bz")),
    ("xz", b"\xfd7zXZ\x00", (".xz",)),
)
COMPRESSIONS = tuple(name for name, _, _ in _FORMATS)
_SIGNATURE = {name: magic for name, magic, _ in _FORMATS}
_SUFFIXES = {suffix: name for name, _, suffixes in _FORMATS for suffix in suffixes}
_CHUNK = 2**20  # bytes inflated between two checks of the limits and the clock


def codec_of(head: bytes) -> str | None:
    """The compression whose signature starts `head` (one of COMPRESSIONS), or None. bzip2's
    `BZh` must be followed by a block size digit, so text that starts "BZh" is not bzip2."""
    for name, magic, _ in _FORMATS:
        if head.startswith(magic) and (name != "bzip2" or b"1" <= head[3:4] <= b"9"):
            return name
    return None


def inner_name(path: str | os.PathLike[str], codec: str) -> str:
    """The name of what the file at `path` inflates to: `ls.1.gz` -> `ls.1`. A name without
    a suffix of `codec` stays as it is (a gzip stream named `ls.1` is a man page still)."""
    name = os.fsdecode(os.fspath(path))
    root, suffix = os.path.splitext(name)
    return root if _SUFFIXES.get(suffix.lower()) == codec else name


# ---------------------------------------------------------------------------------------------
# Decompressors behind one shape: feed(data, max_length) -> bytes, with eof, needs_input and
# unused_data as bz2 and lzma have them (zlib's decompressobj keeps its input in unconsumed_tail)

class _Gzip:
    def __init__(self) -> None:
        self._z = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)  # one gzip member, header and CRC checked

    def feed(self, data: bytes, max_length: int) -> bytes:
        return self._z.decompress(self._z.unconsumed_tail + data if data else self._z.unconsumed_tail, max_length)

    @property
    def eof(self) -> bool:
        return self._z.eof

    @property
    def needs_input(self) -> bool:
        return not self._z.unconsumed_tail

    @property
    def unused_data(self) -> bytes:
        return self._z.unused_data


class _Stdlib:
    """bz2.BZ2Decompressor or lzma.LZMADecompressor, which already have the shape."""

    def __init__(self, make: Callable[[], object]):
        self._d = make()

    def feed(self, data: bytes, max_length: int) -> bytes:
        return self._d.decompress(data, max_length)

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def needs_input(self) -> bool:
        return self._d.needs_input

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data


_MAKERS: dict[str, Callable[[], object]] = {
    "gzip": _Gzip,
    "bzip2": lambda: _Stdlib(bz2.BZ2Decompressor),
    "xz": lambda: _Stdlib(lambda: lzma.LZMADecompressor(format=lzma.FORMAT_XZ)),
}
_ERRORS = (zlib.error, OSError, lzma.LZMAError, EOFError, ValueError)


def _streams(data: bytes, codec: str, limit: int, check: Callable[[int], None]) -> list[bytes]:
    """The inflated chunks of every stream in `data`, at most limit + 1 bytes in all. `check`
    sees the running total after each chunk. Raises the decompressors' errors and EOFError for
    a stream that ends early."""
    chunks: list[bytes] = []
    total = 0
    rest = data
    while rest:
        decompressor = _MAKERS[codec]()
        pending, stalls = rest, 0
        while not decompressor.eof:
            chunk = decompressor.feed(pending, min(_CHUNK, limit + 1 - total))
            pending = b""
            if chunk:
                chunks.append(chunk)
                total += len(chunk)
                check(total)
                if total > limit:
                    return chunks
            elif not decompressor.eof and (decompressor.needs_input or (stalls := stalls + 1) > 2):
                raise EOFError("the stream ends before its end marker (truncated)")
        rest = decompressor.unused_data
        if not rest.startswith(_SIGNATURE[codec]):
            break  # trailing bytes (padding, junk) after the last stream are ignored, as gzip(1) does
    return chunks


def inflate_head(data: bytes, codec: str, size: int) -> bytes:
    """At most `size` bytes from the start of what `data` inflates to, for sniffing its kind:
    whatever inflates before an error or the end of `data` (so a head cut from a longer file,
    or a broken stream, gives what it can; `inflate` judges the whole). Never raises."""
    decompressor = _MAKERS[codec]()
    try:
        return decompressor.feed(data, size)
    except _ERRORS:
        return b""


def inflate(data: bytes, codec: str, limits: ExtractLimits, check_time: CheckTime = lambda: None) -> bytes:
    """What the compressed file `data` inflates to, within the limits of zipped formats.

    Raises Skipped("decompression_bomb") past max_uncompressed_bytes, or past
    max_compression_ratio once RATIO_FLOOR_BYTES have inflated; Skipped("corrupt") for a stream
    that is truncated or fails its checks; and Skipped("timeout") through `check_time`, which is
    called between chunks of at most 1 MiB. Memory: the inflated bytes, twice at the end (join).
    """
    ratio_limit = limits.max_compression_ratio * max(len(data), 1)

    def check(total: int) -> None:
        if total > limits.max_uncompressed_bytes:
            raise Skipped("decompression_bomb", f"{codec} stream inflates past max_uncompressed_bytes "
                          f"({limits.max_uncompressed_bytes})")
        if total > RATIO_FLOOR_BYTES and total > ratio_limit:
            raise Skipped("decompression_bomb", f"{codec} stream of {len(data)} bytes inflates over "
                          f"{total} bytes, over max_compression_ratio ({limits.max_compression_ratio:g})")
        check_time()

    try:
        chunks = _streams(data, codec, limits.max_uncompressed_bytes, check)
    except EOFError as exc:
        raise Skipped("corrupt", f"{codec}: {exc}") from None
    except _ERRORS as exc:
        raise Skipped("corrupt", f"{codec}: {exc or type(exc).__name__}") from None
    return b"".join(chunks)
