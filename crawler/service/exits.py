"""How the daemon ends: its exit statuses, DaemonError, and the one line that says why a part
could not start.

Every exit after daemon_started is logged as daemon_stopped with a reason and one of the EXIT_*
statuses; a refusal to start is a DaemonError whose message is one line naming the cause and the
way out. Not the stop itself (supervisor.py) nor the command line that prints the line and exits
(crawler/cli/). Relies on crawler/state/writable.py to tell a full disk or a read-only state
directory from any other failure.
"""

from __future__ import annotations

from ..state.writable import DISK_FULL, STATE_UNWRITABLE, classify

# exit statuses: which way the daemon ended (daemon_stopped says it too)
EXIT_STOPPED = 0  # a stop signal, as asked
EXIT_FAILED = 1  # the supervisor itself failed: a bug (daemon_failed holds the traceback)
EXIT_WORKER_FAILED = 3  # a worker could not start: a setting, a checkpoint (one line says which)
EXIT_STORAGE_FAILED = 4  # the store or the state directory could not be opened at start
EXIT_AT_ONCE = 130  # the second stop signal


class DaemonError(RuntimeError):
    """The daemon could not start, or its supervisor failed; logged as daemon_stopped with
    `reason` first. `status` is the exit status (EXIT_STORAGE_FAILED, EXIT_WORKER_FAILED,
    EXIT_FAILED); the message is one line naming the cause and the way out."""

    def __init__(self, message: str, status: int, reason: str):
        super().__init__(message)
        self.status, self.reason = status, reason


def one_line(exc: BaseException) -> str:
    """An exception as one line: the first line of its text (a database error's SQL and
    background link dropped), with the file an OSError names."""
    text = str(exc).strip().splitlines()[0].strip() if str(exc).strip() else ""
    if isinstance(exc, OSError) and exc.filename and str(exc.filename) not in text:
        text = f"{exc.filename}: {text}"
    return text or type(exc).__name__


_START_WAY_OUT = {
    DISK_FULL: "free space on the state directory's file system, then start again",
    STATE_UNWRITABLE: "make the state directory writable by the daemon's user, then start again",
}


def start_failure(what: str, exc: BaseException, status: int, reason: str) -> DaemonError:
    """A DaemonError for a part that could not start; a full disk or read-only state says so."""
    blocked = classify(exc)
    if blocked is None:
        return DaemonError(f"{what}: {one_line(exc)}", status, reason)
    return DaemonError(f"{blocked}: {what}: {one_line(exc)}; {_START_WAY_OUT[blocked]}", status, reason)
