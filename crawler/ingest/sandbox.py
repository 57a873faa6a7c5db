"""Extractor processes: PDF, DOCX, EPUB, compressed files and archives parsed in child
interpreters under hard limits.

Untrusted documents go through PDFium (pypdfium2), zipfile, expat and the decompressors, where one
pathological page can spin for minutes and one crafted stream can allocate gigabytes. `ExtractorPool` runs
`crawler.ingest.inprocess.extract_in_process` on a path in a separate Python process, so a hang or a
memory blow-up costs that process and never the daemon:

- wall time: the parent waits `time_budget_seconds` plus a grace for the answer, then kills the
  child (SIGKILL) and raises Skipped("timeout"); the cooperative check between pages usually
  answers first, with the same reason;
- memory: the child sets its own RLIMIT_AS to `max_memory_bytes` before each file, so an
  allocation past it fails in the child (MemoryError: Skipped("too_large"));
- a child that dies (a crash in C code, an abort) raises ExtractionFailed naming the signal;
- a child is replaced after any of these, after `max_tasks_per_child` files, and once its peak
  memory passes `retire_rss_bytes` (a parser's peak stays with the process that had it).

Children are fresh interpreters (`subprocess` fork+exec, what multiprocessing calls `spawn`):
nothing of the parent's numba, watchdog or database threads, locks or file descriptors is
copied. They are started on the first file that needs one, never at daemon start. The protocol
is one JSON line per request on the child's stdin and a JSON header line on its stdout, plus the
text as raw UTF-8 (surrogatepass, so any str round-trips); no pickle. An archive's answer is
one header too, listing its members, and their texts one after another as the payload. A child whose parent dies
reads end-of-file and exits; a spinning orphan is ended by its RLIMIT_CPU (twice the wall
limit); under systemd, stopping the unit ends every process of its control group. Children
ignore SIGINT, SIGTERM and SIGHUP, which a terminal or the service manager sends the whole
group: the daemon's graceful stop lets the file in flight finish, then ends its children.

Setting the limits needs the prlimit64 system call (glibc's setrlimit uses it), which systemd's
@system-service filter allows (it is in @default); the unit's `~@resources` removes only the old
setrlimit call. Where a limit cannot be set, the child carries on without it.

It is not the extractor (crawler.ingest.inprocess parses; crawler.ingest.extract, above this
module, decides which files come here) and logs nothing. Unix only (select, resource).
Relies on the standard library, and in the child on crawler.ingest.inprocess.
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict

from .terms import ExtractionFailed, ExtractLimits, Skipped

__all__ = ["ExtractorPool", "START_TIMEOUT_SECONDS", "child_main"]

START_TIMEOUT_SECONDS = 60.0  # a child's interpreter start and imports (~0.1 s; slow disks far more)
_PACKAGE_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))  # above crawler/
# the child's command: first deaf to the signals a terminal or a service manager sends the whole
# group (the parent's graceful stop must not fail the file in flight; the parent ends its
# children itself), then no implicit sys.path entry (-P: not the daemon's working directory)
# but this checkout's root, so the child runs the same code as the parent
_BOOT = ("import signal, sys; [signal.signal(s, signal.SIG_IGN) for s in (signal.SIGINT, signal.SIGTERM, "
         "signal.SIGHUP)]; sys.path.insert(0, sys.argv[1]); from crawler.ingest.sandbox import child_main; "
         "child_main(sys.argv[2:])")


def grace_seconds(budget: float) -> float:
    """Time past the budget before the child is killed: the cooperative check answers first."""
    return 1.0 + 0.1 * budget


# ---------------------------------------------------------------------------------------------
# The parent's side

class _Child:
    """One extractor process and the read end of its answers."""

    def __init__(self, initializer: str | None):
        argv = [sys.executable, "-P", "-c", _BOOT, _PACKAGE_ROOT]
        if initializer is not None:
            argv += ["--initializer", initializer]
        # stderr goes to a file, read only to explain a crash (a pipe nobody drains could block)
        self.stderr = tempfile.TemporaryFile()
        try:
            self.process = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                            stderr=self.stderr, bufsize=0, close_fds=True)
        except BaseException:
            self.stderr.close()
            raise
        self.poller = select.poll()  # not select(): the daemon may hold more than 1024 descriptors
        self.poller.register(self.process.stdout.fileno(), select.POLLIN)
        self.buffer = bytearray()
        self.tasks = 0
        self.retire = False

    def wait_ready(self, timeout: float) -> None:
        try:
            header = self.read_header(time.monotonic() + timeout)
        except (EOFError, ValueError):  # it exited, or wrote something other than the protocol
            self.reap()
            header = None
        if header is None or "ready" not in header:
            self.kill()
            why = self.death()
            self.close_files()
            raise ExtractionFailed(f"the extractor process did not start{why}")

    def send(self, request: dict) -> bool:
        try:
            self.process.stdin.write(json.dumps(request).encode() + b"\n")
            return True
        except (BrokenPipeError, OSError):
            return False

    def _fill(self, deadline: float) -> bool:
        """Read what the child has written: False at the deadline, EOFError at end of file."""
        fd = self.process.stdout.fileno()
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            if self.poller.poll(max(1, int(remaining * 1000))):  # readable, or hung up
                chunk = os.read(fd, 1 << 20)
                if not chunk:
                    raise EOFError
                self.buffer += chunk
                return True

    def read_header(self, deadline: float) -> dict | None:
        """The next JSON line, or None at the deadline; EOFError when the child is gone."""
        while (end := self.buffer.find(b"\n")) < 0:
            if not self._fill(deadline):
                return None
        line = bytes(self.buffer[:end])
        del self.buffer[:end + 1]
        return json.loads(line)

    def read_payload(self, size: int, deadline: float) -> bytes | None:
        while len(self.buffer) < size:
            if not self._fill(deadline):
                return None
        payload = bytes(self.buffer[:size])
        del self.buffer[:size]
        return payload

    def reap(self, timeout: float = 5.0) -> None:
        """Wait for a child that closed its stdout to finish exiting (then kill() finds it dead)."""
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            pass

    def death(self) -> str:
        """Why the child ended, in words (for a process that is dead or just killed)."""
        code = self.process.poll()
        if code is None:
            return ""
        if code < 0:
            try:
                why = f" (killed by {signal.Signals(-code).name})"
            except ValueError:
                why = f" (killed by signal {-code})"
        else:
            why = f" (exit status {code})"
        self.stderr.seek(0, os.SEEK_END)
        self.stderr.seek(max(0, self.stderr.tell() - 2000))
        lines = [line for line in self.stderr.read().decode("utf-8", "replace").splitlines() if line.strip()]
        return why + (f": {lines[-1].strip()}" if lines else "")

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
        self.process.wait()

    def stop(self, timeout: float = 2.0) -> None:
        """End of input: an idle child exits at once; one that does not is killed."""
        try:
            self.process.stdin.close()
            self.process.wait(timeout)
        except (OSError, subprocess.TimeoutExpired):
            pass
        self.kill()
        self.close_files()

    def close_files(self) -> None:
        for stream in (self.process.stdin, self.process.stdout, self.stderr):
            try:
                stream.close()
            except OSError:
                pass


class ExtractorPool:
    """Up to `size` extractor processes, started on demand and reused.

    `extract(path, limits)` blocks the calling thread until a child is free (when `size` are
    busy), then for at most the child's start-up plus limits.time_budget_seconds plus
    `grace_seconds`. Thread-safe. `close()` ends every child; a closed pool refuses new work.
    `initializer` is the path of a Python file each child runs after its imports, before its
    first file: a hook for tests only (the daemon never passes one). The deadlines are real time
    (poll() waits on the child's answer), so there is no clock to inject.
    """

    def __init__(self, size: int = 2, max_tasks_per_child: int = 1000, retire_rss_bytes: int = 512 * 2**20,
                 initializer: str | None = None):
        if size < 1:
            raise ValueError(f"size ({size}) must be >= 1")
        self.size, self.max_tasks_per_child = size, max_tasks_per_child
        self.retire_rss_bytes, self.initializer = retire_rss_bytes, initializer
        self._idle: list[_Child] = []
        self._count = 0  # children alive, idle or busy
        self._closed = False
        self._changed = threading.Condition()
        self.started = 0  # children started so far (a replaced child counts again)

    def __enter__(self) -> "ExtractorPool":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _acquire(self) -> _Child:
        with self._changed:
            while not self._idle and self._count >= self.size and not self._closed:
                self._changed.wait()
            if self._closed:
                raise ExtractionFailed("the extractor pool is closed (the daemon is stopping)")
            while self._idle:
                child = self._idle.pop()
                if child.process.poll() is None:
                    return child
                self._count -= 1  # died while idle (killed from outside): start another
                child.kill()
                child.close_files()
            self._count += 1
            self.started += 1
        try:
            try:
                child = _Child(self.initializer)
            except OSError as exc:  # no process or no temporary file to be had (EAGAIN, ENOMEM, ENOSPC)
                raise ExtractionFailed(f"could not start an extractor process: {exc}") from None
            child.wait_ready(START_TIMEOUT_SECONDS)
        except BaseException:
            with self._changed:
                self._count -= 1
                self._changed.notify()
            raise
        return child

    def _release(self, child: _Child) -> None:
        alive = child.process.poll() is None
        keep = alive and not child.retire and child.tasks < self.max_tasks_per_child
        with self._changed:
            if keep and not self._closed:
                self._idle.append(child)
                self._changed.notify()
                return
        child.stop()  # outside the lock: ending a child can take a moment
        with self._changed:
            self._count -= 1
            self._changed.notify()

    def extract(self, path: str | os.PathLike[str], limits: ExtractLimits) -> dict:
        """The fields of an `Extraction` for the file at `path` (text, kind, size, mtime,
        content_hash), or for an archive those of an `ArchiveExtraction` (its `members`, each
        with its extraction's text). Raises Skipped or ExtractionFailed, as the extractor does,
        and also Skipped("timeout") when the child overran the budget and was killed."""
        child = self._acquire()
        try:
            return self._ask(child, path, limits)
        finally:
            self._release(child)

    def _ask(self, child: _Child, path: str | os.PathLike[str], limits: ExtractLimits) -> dict:
        child.tasks += 1
        budget = limits.time_budget_seconds
        wall = time.monotonic() + budget + grace_seconds(budget)
        request = {"path": os.fsencode(path).hex(), "limits": asdict(limits)}
        try:
            if not child.send(request):
                raise EOFError
            header = child.read_header(wall)
            payload = b""
            if header is not None and ("ok" in header or "archive" in header):
                payload = child.read_payload(header.get("ok", header.get("archive"))["text_bytes"], wall)
        except EOFError:
            child.reap()
            child.kill()
            raise ExtractionFailed(f"the extractor process died{child.death()}") from None
        except (ValueError, KeyError, TypeError) as exc:  # not the protocol: never trust that child again
            child.kill()
            raise ExtractionFailed(f"the extractor process answered out of protocol ({exc})") from None
        if header is None or payload is None:  # the deadline passed
            child.kill()
            raise Skipped("timeout", f"over the {budget:g} s time budget; the extractor process was stopped")
        child.retire = header.get("maxrss", 0) > self.retire_rss_bytes or header.get("retire", False)
        if "skipped" in header:
            raise Skipped(*header["skipped"])
        if "failed" in header:
            raise ExtractionFailed(header["failed"])
        if "archive" in header:
            return _archive_fields(header["archive"], payload)
        fields = dict(header["ok"])
        del fields["text_bytes"]
        fields["text"] = payload.decode("utf-8", "surrogatepass")
        return fields

    def close(self) -> None:
        """End the idle children now and the busy ones when their file is done. Idempotent."""
        with self._changed:
            self._closed = True
            idle, self._idle = self._idle, []
            self._count -= len(idle)
            self._changed.notify_all()
        for child in idle:
            child.stop()

    @property
    def alive(self) -> int:
        """Children running now, idle or busy."""
        with self._changed:
            return self._count


# ---------------------------------------------------------------------------------------------
# The child's side

def _set_limits(limits: ExtractLimits) -> None:
    """RLIMIT_AS at max_memory_bytes and RLIMIT_CPU a generous backstop past the wall limit
    (it ends an orphan that spins); the hard limits stay as they are, so the next file may
    set other values."""
    import resource

    cpu_used = sum(os.times()[:2])
    wall = limits.time_budget_seconds + grace_seconds(limits.time_budget_seconds)
    for which, soft in ((resource.RLIMIT_AS, limits.max_memory_bytes),
                        (resource.RLIMIT_CPU, int(cpu_used + 2 * wall) + 1)):
        try:
            _, hard = resource.getrlimit(which)
            if hard != resource.RLIM_INFINITY:
                soft = min(soft, hard)
            resource.setrlimit(which, (soft, hard))
        except (OSError, ValueError):  # a refused call (EPERM under a seccomp filter), or macOS
            pass


def _max_rss_bytes() -> int:
    """This process's own peak resident memory. On Linux from /proc/self/status (VmHWM, the high
    water mark of this address space): getrusage's ru_maxrss survives exec, so a child started
    by a daemon of 600 MB would report 600 MB and be retired after every file."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    import resource

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes on macOS, KiB on Linux


def _text_bytes(text: str) -> bytes:
    return text.encode("utf-8", "surrogatepass")  # any str round-trips, lone surrogates too


def _archive_answer(fields: dict) -> tuple[dict, bytes]:
    """An archive's answer: its fields (ArchiveExtraction.to_fields) with every member's text
    moved into the payload, in member order, and its length left in its place."""
    texts = []
    for member in fields["members"]:
        extraction = member["extraction"]
        if extraction is not None:
            texts.append(_text_bytes(extraction.pop("text")))
            extraction["text_bytes"] = len(texts[-1])
    payload = b"".join(texts)
    return {"archive": {**fields, "text_bytes": len(payload)}}, payload


def _archive_fields(header: dict, payload: bytes) -> dict:
    """`_archive_answer` inverted: the fields of an ArchiveExtraction, texts back in place."""
    fields = dict(header)
    del fields["text_bytes"]
    offset = 0
    for member in fields["members"]:
        extraction = member["extraction"]
        if extraction is not None:
            size = extraction.pop("text_bytes")
            extraction["text"] = payload[offset:offset + size].decode("utf-8", "surrogatepass")
            offset += size
    return fields


def _answer(out, header: dict, payload: bytes = b"") -> None:
    out.write(json.dumps(header).encode() + b"\n" + payload)
    out.flush()


def child_main(argv: list[str]) -> None:
    """The extractor process: answer requests from stdin until end of file."""
    import logging

    # the protocol owns the real stdout; anything a library prints goes to stderr instead
    out = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    logging.disable(logging.WARNING)  # parsers warn about every quirk; the parent decides what to log
    # the child's side alone parses: the parent's never loads the extractor (charset-normalizer)
    from .inprocess import extract_in_process

    if argv[:1] == ["--initializer"]:
        import runpy

        runpy.run_path(argv[1])
    _answer(out, {"ready": os.getpid()})
    for line in sys.stdin.buffer:
        request = json.loads(line)
        limits = ExtractLimits(**request["limits"])
        path = os.fsdecode(bytes.fromhex(request["path"]))
        _set_limits(limits)
        header: dict
        payload = b""
        try:
            extraction = extract_in_process(path, limits)
            if hasattr(extraction, "members"):  # an archive of documents (inprocess.ArchiveExtraction)
                header, payload = _archive_answer(extraction.to_fields())
            else:
                payload = _text_bytes(extraction.text)
                header = {"ok": {"kind": extraction.kind, "size": extraction.size, "mtime": extraction.mtime,
                                 "content_hash": extraction.content_hash, "text_bytes": len(payload)}}
            del extraction
        except Skipped as skip:
            header = {"skipped": [skip.reason, skip.detail]}
        except ExtractionFailed as exc:
            header = {"failed": exc.detail}
        except MemoryError:  # the frames holding the big objects are gone once we are out here
            header = {"skipped": ["too_large", f"the parser needed more than max_memory_bytes "
                                  f"({limits.max_memory_bytes} bytes) of memory"], "retire": True}
        except RecursionError:
            header = {"failed": "the document nests too deeply for the parser"}
        except Exception as exc:  # noqa: BLE001 - any parser fault is this file's, not the process's
            header = {"failed": f"{type(exc).__name__}: {exc}"}
        header["maxrss"] = _max_rss_bytes()
        _answer(out, header, payload)
