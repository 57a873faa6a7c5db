"""Is a daemon running on this state directory, and is it healthy? The files that answer it.

Two files in STATE_DIR, both written only by the daemon:
- `daemon.lock`: an exclusive flock(2) held for the daemon's whole life, with the holder's pid
  written inside. The kernel drops the lock when the process dies, even by SIGKILL, so a lock
  file left behind by a killed daemon is not mistaken for a running one: the lock, not the
  file, is the truth. A second daemon on the same state directory fails at once with
  `DaemonAlreadyRunning`.
- `health.json`: a small JSON report the daemon replaces atomically (temp file + os.replace)
  every status interval. It is a liveness report, not data, so it is not fsynced. When the
  replace fails (a full disk has no block for the temp file; a state directory the daemon may
  no longer write), the file is rewritten in place: that needs no new block and no right on the
  directory, so the report can still say why writes fail.

`check_health` joins the two for `crystalline status --health` (and Docker's HEALTHCHECK), a
store outage the daemon reports in health.json (`store_unavailable`) included. It also looks
at the state directory's file system itself (read-only, or less free space than the daemon's
write probe needs), without writing anything: a daemon that cannot write its state
cannot always say so in health.json, and the checker must fail with the reason all the same.
Not a supervisor: nothing here restarts anything. Relies on Linux flock(2), /proc for the
memory and thread counts (with a fallback elsewhere), and the standard library only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import resource
import stat
import threading
import time
from collections.abc import Callable, Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from .disk import MB
from .writable import ACTIONS, DISK_FULL, PROBE_BYTES, STATE_UNWRITABLE

LOCK_FILE = "daemon.lock"
HEALTH_FILE = "health.json"
STATES = ("starting", "ready", "stopping")
# the keys of health.json, in the order they are written; missing values are written as null
FIELDS = ("pid", "started_at", "updated_at", "state", "step", "tokens_trained", "queue_documents",
          "queue_tokens", "loss", "tokens_per_s", "last_checkpoint_step", "last_checkpoint_age_s",
          "rss_mb", "threads", "last_error", "blocked", "blocked_parts", "unwatched_roots", "store_unavailable")
# acquire() retries this long: `lock_holder` probes by taking a shared lock for an instant, and
# a daemon starting in that instant must not be told that another daemon runs.
ACQUIRE_GRACE_S = 0.25


class DaemonAlreadyRunning(RuntimeError):
    """Another process holds STATE_DIR/daemon.lock; `pid` is the one it wrote (None if unread)."""

    def __init__(self, path: Path, pid: int | None):
        self.path, self.pid = path, pid
        holder = f"pid {pid}" if pid else "another process (pid not yet written)"
        super().__init__(f"a daemon is already running on {path.parent}: {holder} holds {path}")


def _read_pid(fd: int) -> int | None:
    try:
        text = os.pread(fd, 32, 0).decode("ascii", errors="replace").strip()
    except OSError:
        return None
    return int(text) if text.isdigit() and int(text) > 0 else None


def utc_iso(seconds: float) -> str:
    """A wall-clock time (seconds since the epoch) as health.json writes it: ISO 8601 in UTC, to
    the millisecond, "2023-11-14T22:13:20.000+00:00"."""
    return datetime.fromtimestamp(seconds, timezone.utc).isoformat(timespec="milliseconds")


# ---------------------------------------------------------------------------------------------
# the lock


class DaemonLock:
    """The exclusive lock on STATE_DIR/daemon.lock, held from acquire() to release().

    The file is opened close-on-exec, so child processes do not inherit the lock. The file is
    never deleted: removing it while another process has it open would let two daemons lock two
    different files of the same name.
    """

    def __init__(self, state_dir: str | Path, sleep: Callable[[float], None] = time.sleep):
        self.path = Path(state_dir) / LOCK_FILE
        self._sleep = sleep
        self._fd: int | None = None

    @property
    def held(self) -> bool:
        return self._fd is not None

    def acquire(self) -> None:
        """Take the lock and write our pid into the file; creates the state directory.
        Raises DaemonAlreadyRunning (within ACQUIRE_GRACE_S) when another process holds it."""
        if self._fd is not None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            deadline = time.monotonic() + ACQUIRE_GRACE_S
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise DaemonAlreadyRunning(self.path, _read_pid(fd)) from None
                    self._sleep(0.01)
            # truncate, then write: a reader sees an empty file or the whole pid, never a mix
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd

    def release(self) -> None:
        """Empty the file and drop the lock; idempotent."""
        if self._fd is None:
            return
        fd, self._fd = self._fd, None
        try:
            os.ftruncate(fd, 0)  # before unlocking: afterwards it could erase a new holder's pid
        finally:
            os.close(fd)  # closing the last descriptor releases the flock

    def __enter__(self) -> "DaemonLock":
        self.acquire()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def lock_holder(state_dir: str | Path, pid_wait_s: float = 0.2) -> int | None:
    """The pid of the daemon holding STATE_DIR/daemon.lock, or None when no process holds it.

    Creates nothing. flock(2) has no "test" operation, so this takes a shared lock for an
    instant and drops it (DaemonLock.acquire tolerates that). Returns 0 when the lock is held
    but the holder has not written its pid within `pid_wait_s` (it is starting).
    """
    path = Path(state_dir) / LOCK_FILE
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            deadline = time.monotonic() + pid_wait_s
            while (pid := _read_pid(fd)) is None and time.monotonic() < deadline:
                time.sleep(0.01)
            return pid if pid is not None else 0
        fcntl.flock(fd, fcntl.LOCK_UN)
        return None
    finally:
        os.close(fd)


# ---------------------------------------------------------------------------------------------
# the health report


def process_stats(status_file: str | Path = "/proc/self/status") -> dict[str, float | int]:
    """This process's resident memory in MB (10^6 bytes, as `rss_mb` is everywhere: the status
    event, health.json, the metrics' bytes) and its thread count, from /proc on Linux. Elsewhere
    the memory is the peak, not the current (the best the portable API offers), and the threads
    are Python's own. The one reader of the process's memory: the daemon's status asks it."""
    stats: dict[str, float | int] = {}
    try:
        with open(status_file, encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key == "VmRSS":  # "  123456 kB", where a kB is 1024 bytes
                    stats["rss_mb"] = round(int(value.split()[0]) * 1024 / MB, 1)
                elif key == "Threads":
                    stats["threads"] = int(value)
    except (OSError, ValueError, IndexError):
        pass
    if "rss_mb" not in stats:  # ru_maxrss is in KiB on Linux
        stats["rss_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / MB, 1)
    if "threads" not in stats:
        stats["threads"] = threading.active_count()
    return stats


class HealthFile:
    """Writes STATE_DIR/health.json; `started_at` is when this object was made. `writes` (a
    crawler.state.writable.WriteState) hears of every failed replace."""

    def __init__(self, state_dir: str | Path, clock: Callable[[], float] = time.time, writes: Any = None):
        self.path = Path(state_dir) / HEALTH_FILE
        self._clock = clock
        self._writes = writes
        self.started_at = utc_iso(clock())

    def write(self, report: Mapping[str, Any]) -> dict[str, Any]:
        """Replace health.json atomically with `report` over the defaults and return what was
        written. pid, started_at and updated_at are filled in; rss_mb and threads are measured
        when not given; other missing FIELDS are null; extra keys are kept after them. When the
        atomic replace fails, the failure goes to `writes` and the file is rewritten in place.
        Raises ValueError for a state not in STATES, OSError when neither way works."""
        state = report.get("state", "starting")
        if state not in STATES:
            raise ValueError(f"state ({state!r}) must be one of {', '.join(STATES)}")
        data: dict[str, Any] = dict.fromkeys(FIELDS)
        data.update(pid=os.getpid(), started_at=self.started_at)
        data.update(report)
        if data["rss_mb"] is None or data["threads"] is None:
            measured = process_stats()
            for key in ("rss_mb", "threads"):
                data[key] = measured[key] if data[key] is None else data[key]
        data.update(state=state, updated_at=utc_iso(self._clock()))
        text = (json.dumps(data, default=str) + "\n").encode("utf-8")
        temp = self.path.with_name(f".{HEALTH_FILE}.{os.getpid()}.{threading.get_ident()}.tmp")
        try:
            temp.write_bytes(text)
            os.replace(temp, self.path)
        except OSError as exc:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            if self._writes is not None:
                self._writes.report("health", exc)
            self._rewrite_in_place(text, exc)
        except BaseException:
            with contextlib.suppress(OSError):
                temp.unlink(missing_ok=True)
            raise
        return data

    def _rewrite_in_place(self, text: bytes, cause: OSError) -> None:
        """Overwrite the existing file from its start: its blocks are already allocated (a
        report is far smaller than one block), and no directory entry changes. A reader may catch
        it half-written and see no report for an instant; the replace is the normal way."""
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CLOEXEC)  # never creates: that needs a block
        except OSError:
            raise cause from None
        try:
            os.pwrite(fd, text, 0)
            os.ftruncate(fd, len(text))
        except OSError:
            raise cause from None
        finally:
            os.close(fd)


def read_health(state_dir: str | Path) -> dict[str, Any] | None:
    """The last health.json, or None when it is missing or not a JSON object."""
    try:
        data = json.loads((Path(state_dir) / HEALTH_FILE).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _age_s(updated_at: Any, now: float) -> float | None:
    try:
        stamp = datetime.fromisoformat(str(updated_at))
    except ValueError:
        return None
    if stamp.tzinfo is None:
        stamp = stamp.replace(tzinfo=timezone.utc)
    return max(0.0, now - stamp.timestamp())  # a clock step backwards reads as fresh


# ---------------------------------------------------------------------------------------------
# what is wrong with a folder: the state directory, a watch root


def state_dir_problem(state_dir: str | Path) -> str | None:
    """Why the daemon cannot write `state_dir`, seen without writing anything: "disk_full: ..."
    (less free space than the daemon's write probe needs), "state_unwritable: ..." (a read-only
    file system, or a folder its owner may not write, when the owner asks), or None."""
    state_dir = Path(state_dir)
    try:
        fs = os.statvfs(state_dir)
    except OSError:
        return None  # a missing folder is the lock's story, told by the caller
    if fs.f_flag & os.ST_RDONLY:
        return f"{STATE_UNWRITABLE}: {state_dir} is on a read-only file system; {ACTIONS[STATE_UNWRITABLE]}"
    try:
        owner = os.stat(state_dir).st_uid
    except OSError:
        owner = None
    # the space the daemon's user may fill: root (owning its state) may use the reserved blocks
    free = (fs.f_bfree if owner == 0 else fs.f_bavail) * fs.f_frsize
    if free < PROBE_BYTES:
        return (f"{DISK_FULL}: {free} bytes free on the file system of {state_dir}, the daemon needs at least "
                f"{PROBE_BYTES}; {ACTIONS[DISK_FULL]}")
    # only the owner's rights are the daemon's: root, or a reader in the group, would mislead
    if owner == os.geteuid() and not os.access(state_dir, os.W_OK | os.X_OK):
        return f"{STATE_UNWRITABLE}: {state_dir} is not writable by its owner; {ACTIONS[STATE_UNWRITABLE]}"
    return None


_KINDS = ((stat.S_ISREG, "a regular file"), (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
          (stat.S_ISFIFO, "a FIFO"), (stat.S_ISSOCK, "a socket"))


def root_problem(root: str | Path) -> str | None:
    """Why a watch root cannot be watched ("is a regular file, not a folder", "does not exist and
    cannot be created: /dev/null is not a folder", ...), or None when it is a readable folder."""
    root = Path(os.path.abspath(root))
    try:
        st = os.stat(root)
    except (FileNotFoundError, NotADirectoryError):  # missing, or a file on the way
        parent = root.parent
        while not os.path.lexists(parent) and parent != parent.parent:
            parent = parent.parent
        if not parent.is_dir():
            return f"does not exist and cannot be created: {parent} is not a folder"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"does not exist and cannot be created: {parent} is not writable"
        return "does not exist"
    except OSError as exc:  # ELOOP, EACCES
        return f"cannot be reached: {exc.strerror or exc}"
    if not stat.S_ISDIR(st.st_mode):
        kind = next((name for test, name in _KINDS if test(st.st_mode)), "not a folder")
        return f"is {kind}, not a folder"
    if not os.access(root, os.R_OK | os.X_OK):
        return "is a folder the daemon may not read"
    return None


# ---------------------------------------------------------------------------------------------
# the check


def check_health(state_dir: str | Path, max_age_s: float,
                 now: float | None = None) -> tuple[bool, str, dict[str, Any]]:
    """(healthy, reason, report) for the daemon on `state_dir`.

    Healthy when a live process holds daemon.lock, the state directory can be written (as far
    as can be seen without writing: `state_dir_problem`), health.json was written by that
    process within `max_age_s` seconds, it reports no store outage (`store_unavailable`: the
    store does not answer for now; while starting, "daemon is starting: store unavailable: ..."),
    no blocked writes and no watch root it cannot watch, and its state is "ready". `report` is health.json (empty when absent) plus `lock_pid`
    (None: no daemon, 0: pid not yet written) and `age_s`.
    """
    state_dir = Path(state_dir)
    now = time.time() if now is None else now
    try:
        holder = lock_holder(state_dir)
    except OSError as exc:  # for one, a state directory only the daemon's user may read
        return False, f"cannot test {state_dir / LOCK_FILE}: {exc.strerror or exc}", {}
    health = read_health(state_dir)
    report: dict[str, Any] = dict(health or {})
    age = _age_s(report.get("updated_at"), now) if health is not None else None
    report.update(lock_pid=holder, age_s=None if age is None else round(age, 1))

    if holder is None:
        return False, f"no daemon holds {state_dir / LOCK_FILE}", report
    problem = state_dir_problem(state_dir)
    if problem is not None:  # first: it is also why health.json may be old
        return False, problem, report
    if health is None:
        return False, f"daemon (pid {holder}) has not written {state_dir / HEALTH_FILE} yet", report
    if holder and health.get("pid") != holder:
        return False, (f"health.json was written by pid {health.get('pid')}, "
                       f"not by the daemon holding the lock (pid {holder})"), report
    if age is None:
        return False, f"health.json has no valid updated_at ({health.get('updated_at')!r})", report
    if age > max_age_s:
        return False, f"health.json is {age:.0f} s old (limit {max_age_s:g} s)", report
    store = health.get("store_unavailable")
    if store:  # the daemon retries by itself; health.json says so until the store answers
        error = store.get("error") if isinstance(store, dict) else store
        starting = "daemon is starting: " if health.get("state") == "starting" else ""
        return False, f"{starting}store unavailable: {error or 'see the log (store_unavailable)'}", report
    blocked = health.get("blocked")
    if blocked:
        parts = ", ".join(sorted(health.get("blocked_parts") or {})) or "?"
        return False, f"{blocked}: writes to {state_dir} fail ({parts}); {ACTIONS.get(blocked, 'see the log')}", report
    unwatched = health.get("unwatched_roots")
    if unwatched and isinstance(unwatched, dict):
        root, why = next(iter(unwatched.items()))
        more = f" (and {len(unwatched) - 1} more)" if len(unwatched) > 1 else ""
        return False, (f"watch root {root} {why}{more}; set [watch] roots (CRYSTALLINE_WATCH_ROOTS) "
                       "to folders the daemon can read"), report
    state = health.get("state")
    if state != "ready":
        return False, f"daemon is {state}", report
    return True, f"daemon (pid {health['pid']}) is ready at step {health.get('step')}", report
