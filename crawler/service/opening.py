"""Opening a state directory: one way for every command, `run`, `train` and the offline ones alike.

The steps, always in this order, each a method so the daemon can log and retry between them:
  1. join: under `mpiexec` (`--distributed`), rank 0 goes on and the other ranks follow rank
     0's steps (crawler/training/team.py); a follower opens nothing of the state.
  2. lock: the state directory's lock (crawler/state/health.py DaemonLock) for the commands that
     change the model or its training state: `run`, `train`, `repair`, `reset`. The commands
     that read (`generate`, `eval`, `export`, `status`) and those the store keeps consistent by
     itself (`ingest`, `forget`) take none, so they work beside a running daemon.
  3. open_store: the corpus database (created or upgraded) and its CorpusQueue.
  4. hold_training: the corpus's training lock (storage.TrainingLock), taken by every command
     that trains: a PostgreSQL advisory lock, so one job trains a corpus however many state
     directories share it; on SQLite the state directory's lock already is that lock.
close() undoes what was done, in reverse order, and ends the followers. The configuration
comes resolved (load_config through crawler/cli/opener.py or run_daemon). Knows nothing of
models, the supervisor or the command line; raises what the steps raise (DaemonAlreadyRunning,
storage errors, TrainingLocked) for the caller to report its own way.
"""

from __future__ import annotations

import os
import socket
from typing import Any

from ..config import Config
from ..state.health import DaemonLock


class OpenedState:
    """The parts of one state directory a command holds (`with contextlib.closing(...)` closes them)."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.team = self.comm = None  # the Team on rank 0 of several; the communicator
        self.state_lock: DaemonLock | None = None
        self.database = self.queue = None
        self.training_lock = None

    def join(self, distributed: bool) -> bool:
        """Step 1. True when this process is a follower (rank > 0 under mpiexec): it must run
        follow() and open nothing. Raises engine.ConfigError when mpi4py is missing."""
        if not distributed:
            return False
        from ..training.team import join

        self.team, self.comm = join(self.config.distributed)
        return self.comm.rank > 0

    def follow(self, log: Any) -> int:
        """A follower's whole life: rank 0's steps until it stops; returns the exit status."""
        from ..training.team import follow

        return follow(self.comm, log, self.config.distributed.timeout_seconds)

    def lock(self) -> DaemonLock:
        """Step 2: the state directory's lock, created with the directory. Raises
        DaemonAlreadyRunning (naming the holder) or OSError."""
        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        lock = DaemonLock(self.config.state_dir)
        lock.acquire()
        self.state_lock = lock
        return lock

    def open_store(self) -> tuple[Any, Any]:
        """Step 3: (database, CorpusQueue). Raises the store's errors (storage.StoreUnavailable:
        transient or not)."""
        from storage import CorpusQueue, open_database

        self.config.state_dir.mkdir(parents=True, exist_ok=True)
        self.database = open_database(self.config.storage_config())
        self.queue = CorpusQueue(self.database)
        return self.database, self.queue

    def hold_training(self, command: str) -> Any:
        """Step 4: the corpus's training lock, held as "crystalline COMMAND on HOST, pid N"; None
        for a SQLite corpus, which lives in one state directory whose lock (step 2) already
        keeps a second trainer out. Raises storage.TrainingLocked naming the job that holds it."""
        from storage import TrainingLock

        if getattr(self.database, "dialect", None) != "postgresql":
            return None
        holder = f"crystalline {command} on {socket.gethostname()}, pid {os.getpid()}"
        lock = TrainingLock(self.database, holder)
        lock.acquire()
        self.training_lock = lock
        return lock

    def end_ranks(self) -> None:
        """The followers end (after rank 0's last step, its final checkpoint). Idempotent."""
        if self.team is not None:
            self.team.stop()
            self.team = None

    def release_training(self) -> None:
        """Step 4 undone. Idempotent."""
        if self.training_lock is not None:
            self.training_lock.release()
            self.training_lock = None

    def close_store(self) -> None:
        """Step 3 undone: the database's connections closed. Idempotent."""
        if self.database is not None:
            self.database.close()
            self.database = self.queue = None

    def release_lock(self) -> None:
        """Step 2 undone. Idempotent."""
        if self.state_lock is not None:
            self.state_lock.release()
            self.state_lock = None

    def close(self) -> None:
        """Release what the steps took, newest first, and end the followers. Idempotent."""
        self.end_ranks()
        self.release_training()
        self.close_store()
        self.release_lock()


def open_queue(config: Config) -> tuple[Any, Any]:
    """Steps 3 alone, for a command that takes no lock: (database, CorpusQueue); the caller closes
    the database."""
    return OpenedState(config).open_store()
