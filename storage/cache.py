"""A copy of the token stream in one flat file beside the store, for reading windows at any size.

The file (its caller names it; the training loop keeps STATE_DIR/stream.tokens) holds stream
tokens [0, size) as raw little-endian integers of one width (cache_dtype: uint16, or int32 for a
vocabulary above 65,536 ids), token i at byte i * width. Its record, the same name + ".json",
says which stream and width they are, how many are valid, and which ranges are zeros. It is a
derived cache, never the truth: the database is, every token here was read from it, and the
file may be deleted at any time (the next open reads the stream again).

- Reads: one pread a window (`windows`), through the page cache, so the reader's memory does not
  grow with the stream. A memory map would: each first touch maps a whole large folio of the
  file (up to 2 MB) into the process, and random windows soon map all of it
  (docs/STORAGE.md, "Reading the stream at any size").
- Writes: `extend` reads the store SLICE_TOKENS at a time (one query each) and writes with pwrite.
- After a crash: the record is replaced atomically (temp file, fsync, rename, directory fsync)
  only after the tokens it counts were fsynced, so it never counts a token not on disk. `open`
  checks it against the store: the stream (the identity of the document at offset 0) and the
  width, else it is read again from the start; the length (never past the file's end); that the
  stream still reaches its last token and the document holding it is the one recorded (not so
  after a database restored from an older backup, which may have taken other text since), else
  it is read again from the start; and CHECK_BLOCKS blocks spread over it, the last at its end:
  from the first block that differs from the store, the tokens are read again.
- Withdrawn text is zeros: every withdrawn range known (the store's stream_mask on open, `blank`
  after) is overwritten with zeros, durably before `blank` returns, so a forgotten document's
  text leaves this file as soon as its holder learns of the withdrawal (a running trainer within
  a second; else the next open); a range the store no longer withdraws (a restored backup) is
  read again. The zeros are not text: readers skip withdrawn windows with the
  StreamMask as before.

Not which windows to read (the caller draws them, e.g. holdout.draw_window_starts). One writer
at a time: the training job, which holds the corpus's TrainingLock; nothing here locks. Relies
on CorpusQueue's read_tokens, stream_end, stream_mask and document_identity (reads.py,
withdrawal.py), and on mask.merge_ranges.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
from pathlib import Path

import numpy as np

from .mask import merge_ranges

FORMAT = 1  # the record's layout; any other value is a file to read again
SLICE_TOKENS = 1 << 22  # tokens read from the store, or zeroed, at a time (16 MB as int32)
COMMIT_TOKENS = 1 << 24  # the record is rewritten once this many new tokens are written, and at close
CHECK_TOKENS = 1 << 16  # the length of a block compared with the store on open
CHECK_BLOCKS = 8  # blocks compared on open, evenly spread, the last ending at the kept length


def cache_dtype(vocab_size: int) -> np.dtype:
    """The width a vocabulary of `vocab_size` ids needs: uint16 up to 65,536 ids, else int32."""
    return np.dtype("<u2" if vocab_size <= 1 << 16 else "<i4")


def subtract_ranges(starts, ends, minus_starts, minus_ends) -> tuple[np.ndarray, np.ndarray]:
    """The parts of the ranges [starts[i], ends[i]) outside every [minus_starts[j], minus_ends[j]),
    both sets disjoint and ascending (merge_ranges' form): int64 (R,) each, in the same form."""
    ms, me = np.asarray(minus_starts, np.int64).tolist(), np.asarray(minus_ends, np.int64).tolist()
    out_s, out_e, j = [], [], 0
    for s, e in zip(np.asarray(starts, np.int64).tolist(), np.asarray(ends, np.int64).tolist()):
        while j < len(ms) and me[j] <= s:  # ascending: a range ending before s ends before every later s
            j += 1
        k = j
        while s < e:
            if k < len(ms) and ms[k] < e:
                if ms[k] > s:
                    out_s.append(s)
                    out_e.append(ms[k])
                s, k = max(s, me[k]), k + 1
            else:
                out_s.append(s)
                out_e.append(e)
                break
    return np.array(out_s, np.int64), np.array(out_e, np.int64)


def _pairs(starts: np.ndarray, ends: np.ndarray) -> list[list[int]]:
    return [[int(s), int(e)] for s, e in zip(starts.tolist(), ends.tolist())]


def _ranges(pairs) -> tuple[np.ndarray, np.ndarray]:
    array = np.asarray(pairs if pairs else np.empty((0, 2)), np.int64).reshape(-1, 2)  # (R, 2)
    return merge_ranges(array[:, 0], array[:, 1])


# --------------------------------------------------------------------------------------------------


class StreamCache:
    """Stream tokens [0, size) in a file, checked against the store by `open`."""

    def __init__(self, path: Path, queue, dtype: np.dtype, fd: int):
        self.path, self.queue, self.dtype, self.fd = path, queue, dtype, fd
        self.record_path = path.with_name(path.name + ".json")
        self.size = 0  # tokens [0, size) are in the file
        self.kept = 0  # of those, how many `open` found valid (the rest were read from the store)
        self.identity: str | None = None
        self._committed = 0  # tokens the record counts: all fsynced
        self._withdrawn = _ranges([])  # ranges that are zeros over [0, size): (starts, ends)

    @classmethod
    def open(cls, path: str | os.PathLike[str], queue, vocab_size: int) -> StreamCache:
        """The cache at `path` (created if absent) for `queue`'s stream, checked against the store
        and brought up to date with its withdrawals (see the module docstring). Reads at most a
        few blocks of the store, plus any range withdrawn or given back since the last run.
        Raises OSError where the file cannot be made, read or written."""
        path = Path(path)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)  # the corpus's text: the owner's only
        cache = cls(path, queue, cache_dtype(vocab_size), fd)
        try:
            cache._take_up(cache._read_record())
        except BaseException:
            os.close(fd)
            raise
        return cache

    # --- reads -------------------------------------------------------------------------------------

    def windows(self, starts: np.ndarray, seq_len: int) -> np.ndarray:
        """The windows of seq_len + 1 tokens at these stream offsets, in their order: int32
        (n, seq_len + 1), one pread each. Raises ValueError for a window past `size`."""
        starts = np.asarray(starts, np.int64).reshape(-1)  # (n,)
        if starts.size == 0:
            return np.empty((0, seq_len + 1), np.int32)
        if int(starts.min()) < 0 or int(starts.max()) + seq_len + 1 > self.size:
            raise ValueError(f"windows must lie within the cached stream [0, {self.size})")
        width, length = self.dtype.itemsize, (seq_len + 1) * self.dtype.itemsize
        data = b"".join([os.pread(self.fd, length, offset) for offset in (starts * width).tolist()])
        if len(data) != starts.size * length:
            raise OSError(errno.EIO, f"{self.path}: short read (the file shrank?)")
        return np.frombuffer(data, self.dtype).reshape(starts.size, seq_len + 1).astype(np.int32)

    def tokens(self, start: int, stop: int) -> np.ndarray:
        """Cached tokens [start, stop) as int32 (stop - start,); withdrawn ones are 0."""
        if not 0 <= start <= stop <= self.size:
            raise ValueError(f"range [{start}, {stop}) must lie within the cached stream [0, {self.size})")
        width = self.dtype.itemsize
        data = os.pread(self.fd, (stop - start) * width, start * width)
        if len(data) != (stop - start) * width:
            raise OSError(errno.EIO, f"{self.path}: short read (the file shrank?)")
        return np.frombuffer(data, self.dtype).astype(np.int32)

    # --- writes ------------------------------------------------------------------------------------

    def extend(self, end: int) -> None:
        """Read stream tokens [size, end) from the store into the file (nothing when end <= size).
        One store read a slice of SLICE_TOKENS; the record is rewritten every COMMIT_TOKENS.
        Raises ValueError for an `end` beyond the stream, OSError when the file cannot be written."""
        if self.identity is None:  # the stream was empty when opened
            self.identity = self.queue.document_identity(0)
        while self.size < end:
            stop = min(end, self.size + SLICE_TOKENS)
            tokens = self.queue.read_tokens(self.size, stop, missing=0)  # (stop - size,) forgotten: 0
            self._zero_withdrawn(tokens, self.size)
            self._write(self.size, tokens)
            self.size = stop
            if self.size - self._committed >= COMMIT_TOKENS:
                self._commit()

    def blank(self, starts: np.ndarray, ends: np.ndarray) -> None:
        """Zero the withdrawn ranges [starts[i], ends[i]) (with those known before: withdrawals
        only add), durably: the record names them pending until the zeros are on disk, so a crash
        in between zeroes them again on open. OSError when the file cannot be written."""
        given = merge_ranges(np.asarray(starts, np.int64), np.asarray(ends, np.int64))
        new = subtract_ranges(*given, *self._withdrawn)
        if new[0].size == 0:
            return
        self._write_record(pending=new)
        for start, end in zip(*(a.tolist() for a in new)):
            self._fill_zeros(start, min(end, self.size))
        self._withdrawn = merge_ranges(np.concatenate([self._withdrawn[0], given[0]]),
                                       np.concatenate([self._withdrawn[1], given[1]]))
        self._commit()

    def close(self) -> None:
        """Record what was written since the last commit, and close the file. Idempotent."""
        if self.fd < 0:
            return
        try:
            if self.size != self._committed:
                self._commit()
        finally:
            os.close(self.fd)
            self.fd = -1

    # --- on open -----------------------------------------------------------------------------------

    def _read_record(self) -> dict | None:
        try:
            record = json.loads(self.record_path.read_text())
        except (OSError, ValueError):
            return None
        return record if isinstance(record, dict) else None

    def _take_up(self, record: dict | None) -> None:
        """Decide how much of the file is valid, bring its zeros up to date, and check blocks."""
        queue, width = self.queue, self.dtype.itemsize
        self.identity = queue.document_identity(0)
        end = queue.stream_end()
        mask = queue.stream_mask(None)
        current = (mask.starts, mask.ends)
        kept, recorded, pending = 0, _ranges([]), _ranges([])
        try:
            if (record and record.get("format") == FORMAT and record.get("dtype") == self.dtype.str
                    and self.identity is not None and record.get("identity") == self.identity):
                tokens = int(record["tokens"])
                # the document holding the last token is the one it was; a stream now shorter, or
                # another document there, is a restored backup, perhaps with new text since: read it all
                tail = queue.document_identity(tokens - 1) if 0 < tokens <= end else None
                same = tokens == 0 or (tail is not None and record.get("tail") == tail)
                kept = min(tokens, os.fstat(self.fd).st_size // width) if same else 0
                recorded, pending = _ranges(record.get("withdrawn")), _ranges(record.get("pending"))
        except (TypeError, ValueError, KeyError):  # a record not written by this module
            kept = 0
        self.size, self._withdrawn = kept, current
        if kept:
            # given back since (a restored backup), or perhaps half zeroed: read from the store again
            either = merge_ranges(np.concatenate([recorded[0], pending[0]]), np.concatenate([recorded[1], pending[1]]))
            for start, stop in zip(*(a.tolist() for a in subtract_ranges(*either, *current))):
                self._reread(start, min(stop, kept))
            # withdrawn since (a `forget` while nothing had this file open): zeroed now
            for start, stop in zip(*(a.tolist() for a in subtract_ranges(*current, *recorded))):
                self._fill_zeros(start, min(stop, kept))
        self.size = self.kept = self._first_difference(kept)
        os.ftruncate(self.fd, self.size * width)
        self._commit()

    def _first_difference(self, kept: int) -> int:
        """`kept`, or the start of the first of the CHECK_BLOCKS blocks that differs from the store."""
        if kept == 0:
            return 0
        length = min(CHECK_TOKENS, kept)
        for start in np.unique(np.linspace(0, kept - length, CHECK_BLOCKS).astype(np.int64)).tolist():
            want = self.queue.read_tokens(start, start + length, missing=0)  # (length,)
            self._zero_withdrawn(want, start)
            if not np.array_equal(self.tokens(start, start + length), want):
                return start
        return kept

    def _reread(self, start: int, stop: int) -> None:
        for low in range(start, stop, SLICE_TOKENS):
            high = min(stop, low + SLICE_TOKENS)
            tokens = self.queue.read_tokens(low, high, missing=0)
            self._zero_withdrawn(tokens, low)
            self._write(low, tokens)

    # --- the file and its record -------------------------------------------------------------------

    def _zero_withdrawn(self, tokens: np.ndarray, start: int) -> None:
        """Zero the known withdrawn ranges inside `tokens`, stream tokens [start, start + len)."""
        starts, ends = self._withdrawn
        stop = start + len(tokens)
        i = int(np.searchsorted(ends, start, side="right"))  # the first range ending after start
        while i < starts.size and starts[i] < stop:
            tokens[max(int(starts[i]), start) - start : min(int(ends[i]), stop) - start] = 0
            i += 1

    def _fill_zeros(self, start: int, stop: int) -> None:
        for low in range(start, stop, SLICE_TOKENS):
            self._write(low, np.zeros(min(stop, low + SLICE_TOKENS) - low, self.dtype))

    def _write(self, start: int, tokens: np.ndarray) -> None:
        data = memoryview(np.ascontiguousarray(tokens, self.dtype).tobytes())
        offset = start * self.dtype.itemsize
        while data:
            written = os.pwrite(self.fd, data, offset)
            data, offset = data[written:], offset + written

    def _commit(self) -> None:
        """fsync the tokens, then record them: the record never counts a token not on disk."""
        os.fsync(self.fd)
        self._committed = self.size
        self._write_record()

    def _write_record(self, pending: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        tokens = self._committed
        record = {"format": FORMAT, "dtype": self.dtype.str, "identity": self.identity, "tokens": tokens,
                  "tail": self.queue.document_identity(tokens - 1) if tokens else None,
                  "withdrawn": _pairs(*self._withdrawn), "pending": _pairs(*pending) if pending else []}
        temp = self.record_path.with_name(self.record_path.name + ".tmp")
        with open(temp, "w") as f:
            f.write(json.dumps(record))
            f.flush()
            os.fsync(f.fileno())
        os.replace(temp, self.record_path)
        with contextlib.suppress(OSError):  # a file system that cannot fsync a directory
            folder = os.open(self.record_path.parent, os.O_RDONLY)
            try:
                os.fsync(folder)
            finally:
                os.close(folder)
