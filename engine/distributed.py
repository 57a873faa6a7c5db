"""Training across processes: one model replica per MPI rank, kept in step by MPI (mpi4py).

Knows nothing of storage or files: the trainer calls a Communicator at fixed points of a step,
and the caller (crawler/training/team.py) hands each rank its rows of the batch. Two modes
(DistributedConfig.mode):

- "sync": after the worker threads have summed their gradients (parallel.py), worker 0 sums
  the flat gradient across ranks (`Communicator.sum_into`), then every rank clips and updates
  from the same sum. The sum is deterministic and the same bits on every rank: the buffer is
  cut into one segment per rank (parallel.split); rank r receives segment r from every rank
  (Alltoallv), adds the N copies in rank order 0, 1, ..., N-1, and the sums are gathered back
  to every rank (Allgatherv). No rank trusts the MPI library's own reduction order, which the
  standard leaves open. Each rank's loss is scaled by 1/N, so N ranks with B rows each take
  the step one process takes with N*B rows (equal up to float summation order).
- "local": each rank steps on its own rows for `sync_every` steps, then the ranks average their
  parameters the same way (and, with `outer_momentum` > 0 or `outer_lr` != 1, take an outer
  Nesterov step on the averaged change, as DiLoCo does). The optimizer state stays per rank.
  One small sum per step keeps the ranks' step counts aligned when one of them sees a
  non-finite loss (all skip that update).

Invariant: every rank calls the same collectives in the same order; the caller keeps it so by
stepping every rank once per command from rank 0. Without mpi4py, or in one process, the
Communicator is the single-process one and every call is free.
"""

from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, fields

import numpy as np

from .config import ConfigError

MODES = ("sync", "local")


@dataclass(frozen=True)
class DistributedConfig:
    mode: str = "sync"  # "sync": gradients summed every step; "local": parameters averaged every sync_every steps
    # "local": the steps each rank takes between two averages (H). 8: with Muon, 2 ranks at H = 8
    # ended 0.5 % above one process after the same tokens, at H = 32 2.1 % (docs/BENCHMARKS.md)
    sync_every: int = 8
    outer_lr: float = 1.0  # "local": the outer step on the averaged change (1.0 with momentum 0: plain averaging)
    outer_momentum: float = 0.0  # "local": Nesterov momentum of the outer step (DiLoCo uses 0.9 with lr 0.7)
    average_state: bool = False  # "local": average the optimizer's moments too (three times the traffic)
    timeout_seconds: float = 600.0  # how long a follower waits for rank 0's first command before it ends the job

    def validate(self) -> "DistributedConfig":
        """Returns self; raises ConfigError naming the field and its allowed values."""
        if self.mode not in MODES:
            raise ConfigError(f"distributed mode ({self.mode!r}) must be one of {', '.join(MODES)}")
        if not isinstance(self.sync_every, int) or self.sync_every < 1:
            raise ConfigError(f"distributed sync_every ({self.sync_every!r}) must be an integer >= 1")
        if not self.outer_lr > 0 or not 0 <= self.outer_momentum < 1:
            raise ConfigError(f"distributed outer_lr ({self.outer_lr}) must be > 0 and outer_momentum "
                              f"({self.outer_momentum}) in [0, 1)")
        if not self.timeout_seconds > 0:
            raise ConfigError(f"distributed timeout_seconds ({self.timeout_seconds}) must be > 0")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "DistributedConfig":
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names}).validate()


class Communicator:
    """One process alone: rank 0 of 1; every collective returns its input."""

    rank = 0
    size = 1

    def sum_into(self, x: np.ndarray) -> None:
        """x (P,) float32, in place: the sum of every rank's x, the same bits on every rank."""

    def sum_scalars(self, values: np.ndarray) -> np.ndarray:
        """float64 (k,) summed over ranks in rank order; the same on every rank."""
        return np.asarray(values, np.float64).copy()

    def bcast_array(self, x: np.ndarray, root: int = 0) -> np.ndarray:
        """Rank `root`'s array, on every rank (others pass an array of the same shape and dtype)."""
        return x

    def bcast_json(self, value=None, root: int = 0):
        """Rank `root`'s JSON-able value, on every rank (sent as UTF-8 JSON bytes: never pickled)."""
        return value

    def scatter_rows(self, rows: np.ndarray | None, shape: tuple[int, ...], dtype) -> np.ndarray:
        """Rank 0's rows (size * n, ...) cut into `size` equal parts; part r to rank r, as `shape`."""
        return rows

    def bcast_idle(self, x: np.ndarray, root: int = 0, timeout: float | None = None) -> np.ndarray:
        """bcast_array for a wait of any length (a rank waiting for rank 0's next command):
        polls with short sleeps instead of spinning, so a waiting rank costs no CPU. Raises
        TimeoutError when `timeout` seconds pass first (the job is then broken: end it)."""
        return self.bcast_array(x, root)

    def barrier(self) -> None:
        """Wait until every rank is here."""

    def abort(self, code: int = 1) -> None:
        """End every rank of the job now (MPI_Abort); one process: nothing to do."""


class MpiCommunicator(Communicator):
    """COMM_WORLD through mpi4py: deterministic sums, buffer broadcasts, no pickling."""

    def __init__(self, comm=None):
        from mpi4py import MPI

        self.MPI = MPI
        self.comm = comm if comm is not None else MPI.COMM_WORLD
        self.rank = self.comm.Get_rank()
        self.size = self.comm.Get_size()
        self._plans: dict[int, tuple] = {}

    def _plan(self, n: int):
        """Segment counts and offsets of an n-element buffer, one segment per rank."""
        if n not in self._plans:
            from .parallel import split  # (not at import: crawler.config imports this module)

            segments = split(n, self.size)
            counts = np.array([b - a for a, b in segments], np.int64)
            displs = np.array([a for a, _ in segments], np.int64)
            self._plans[n] = (counts, displs)
        return self._plans[n]

    def sum_into(self, x: np.ndarray) -> None:
        MPI, N = self.MPI, self.size
        counts, displs = self._plan(x.size)
        mine = int(counts[self.rank])
        parts = np.empty((N, mine), x.dtype)  # (N, mine): segment `rank` of every rank's x
        kind = MPI.FLOAT if x.dtype == np.float32 else MPI.DOUBLE
        self.comm.Alltoallv([x, (counts, displs), kind],
                            [parts, (np.full(N, mine), np.arange(N) * mine), kind])
        total = parts[0].copy()
        for r in range(1, N):  # rank order: the same bits wherever it is computed
            total += parts[r]
        self.comm.Allgatherv([total, kind], [x, (counts, displs), kind])

    def sum_scalars(self, values: np.ndarray) -> np.ndarray:
        values = np.ascontiguousarray(values, np.float64)
        gathered = np.empty((self.size, values.size), np.float64)
        self.comm.Allgather(values, gathered)
        total = gathered[0].copy()
        for r in range(1, self.size):
            total += gathered[r]
        return total

    def bcast_array(self, x: np.ndarray, root: int = 0) -> np.ndarray:
        x = np.ascontiguousarray(x)
        self.comm.Bcast(x, root=root)
        return x

    def bcast_json(self, value=None, root: int = 0):
        data = json.dumps(value).encode() if self.rank == root else b""
        n = self.bcast_array(np.array([len(data)], np.int64), root)[0]
        buffer = np.frombuffer(data, np.uint8).copy() if self.rank == root else np.empty(int(n), np.uint8)
        return json.loads(self.bcast_array(buffer, root).tobytes().decode())

    def scatter_rows(self, rows: np.ndarray | None, shape: tuple[int, ...], dtype) -> np.ndarray:
        out = np.empty(shape, dtype)
        send = np.ascontiguousarray(rows, dtype) if self.rank == 0 else None
        self.comm.Scatter(send, out, root=0)
        return out

    def bcast_idle(self, x: np.ndarray, root: int = 0, timeout: float | None = None) -> np.ndarray:
        x = np.ascontiguousarray(x)
        request = self.comm.Ibcast(x, root=root)
        pause, deadline = 0.0, None if timeout is None else time.monotonic() + timeout
        while not request.Test():  # MPI's own wait polls a core; a sleep lets it rest
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"rank {root} sent nothing for {timeout:g} s")
            time.sleep(pause)
            pause = min(0.05, pause * 2 + 0.0002)
        return x

    def barrier(self) -> None:
        self.comm.Barrier()

    def abort(self, code: int = 1) -> None:
        self.comm.Abort(code)


def world() -> Communicator:
    """MPI's COMM_WORLD when mpi4py is installed and this process was started by mpiexec with
    more than one rank; else the single-process Communicator. Raises ConfigError naming the
    missing package when mpi4py cannot be imported."""
    try:
        from mpi4py import MPI  # noqa: F401 (initialises MPI, with threads: mpi4py's default "multiple")
    except ImportError as exc:
        raise ConfigError(f"--distributed needs mpi4py and an MPI library: pip install 'crystalline[distributed]' "
                          f"({exc})") from None
    communicator = MpiCommunicator()
    return communicator if communicator.size > 1 else Communicator()


class Averager:
    """The "local" mode's outer step: average the parameters over ranks, optionally with an
    outer Nesterov step on the averaged change since the last average (DiLoCo)."""

    def __init__(self, comm: Communicator, config: DistributedConfig, params: np.ndarray):
        self.comm, self.config = comm, config
        self.anchor = params.copy()  # the parameters after the last average (every rank's the same)
        self.velocity = np.zeros_like(params) if config.outer_momentum else None

    def average_moments(self, *moments: np.ndarray) -> None:
        """Each array (P,) in place: its average over ranks (the optimizer state, average_state)."""
        for x in moments:
            self.comm.sum_into(x)
            x /= np.float32(self.comm.size)

    def average(self, params: np.ndarray) -> None:
        """params (P,) in place: the average over ranks (then the outer step); the same bits on every rank."""
        total = params.copy()
        self.comm.sum_into(total)
        total /= np.float32(self.comm.size)
        cfg = self.config
        if cfg.outer_lr == 1.0 and self.velocity is None:
            np.copyto(params, total)
        else:
            delta = self.anchor - total  # (P,) the averaged change, as an outer "gradient"
            step = delta
            if self.velocity is not None:
                self.velocity *= np.float32(cfg.outer_momentum)
                self.velocity += delta
                step = delta + np.float32(cfg.outer_momentum) * self.velocity  # Nesterov
            np.copyto(params, self.anchor - np.float32(cfg.outer_lr) * step)
        np.copyto(self.anchor, params)


def all_finite(comm: Communicator, value: float) -> bool:
    """Whether `value` is finite on every rank (one small sum)."""
    bad = comm.sum_scalars(np.array([0.0 if math.isfinite(value) else 1.0]))
    return bool(bad[0] == 0.0)
