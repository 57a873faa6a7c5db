"""Data-parallel training step on worker threads. Knows nothing of storage or files.

A step has three phases separated by barriers:
  1. compute: each worker runs forward and backward on its rows of the global batch, in
     micro-batches, accumulating into its own gradient row G[w] (thread-local: no other thread
     touches G[w] in this phase);
  2. reduce: the rows are summed along the 12-fold tree (below), one barrier per tree level;
     within a level each worker sums one disjoint segment of the flat gradient for its group;
  3. update: each worker owns one disjoint segment of the final gradient (row 0): it adds its
     sum of squares to the global norm (a per-worker slot, summed by every worker in the same
     fixed order, so all agree bit for bit), then clips and applies AdamW to that segment.
Invariant: in phases 2 and 3 the segments are disjoint, so the reduction takes no lock; the
barriers are the only synchronisation. Summation orders are fixed, so a run is deterministic for
a given thread count.

The 12-fold tree: workers form groups of up to 12 under a coordinator (the group's first
worker, whose row receives the group's sum). With more than 12 workers the coordinators form
groups of 12 in turn, recursively, until one root (worker 0) remains. At each level the work of
summing a group's rows is split among all workers of that group's subtree.
"""

from __future__ import annotations

import math
import threading
from dataclasses import dataclass
from typing import Callable

import numpy as np
from numba import njit

GROUP_SIZE = 12
ALIGN = 16  # segment boundaries on 64-byte lines, so two workers never write one cache line


@njit(cache=True, nogil=True)
def reduce_rows(G, rows, start, stop):
    """G[rows[0], start:stop] += G[rows[k], start:stop] for k = 1.. in order; the summed source
    segments are zeroed, ready for the next step."""
    dst = G[rows[0]]
    for k in range(1, rows.shape[0]):
        src = G[rows[k]]
        for i in range(start, stop):
            dst[i] += src[i]
            src[i] = np.float32(0.0)


@njit(cache=True, nogil=True)
def sum_squares(x, start, stop):
    """Sum of x[start:stop]**2 in float64."""
    total = 0.0
    for i in range(start, stop):
        total += np.float64(x[i]) * np.float64(x[i])
    return total


def split(size: int, parts: int, align: int = ALIGN) -> list[tuple[int, int]]:
    """`parts` contiguous, disjoint, aligned (start, stop) ranges covering [0, size)."""
    bounds = [min(size, (size * i // parts) // align * align) for i in range(parts)] + [size]
    return [(bounds[i], bounds[i + 1]) for i in range(parts)]


@dataclass(frozen=True)
class ReduceTask:
    rows: np.ndarray  # int64 rows of G to sum, the first is the destination
    start: int
    stop: int


def reduction_plan(n_workers: int, size: int, group: int = GROUP_SIZE) -> list[list[ReduceTask | None]]:
    """For each tree level, each worker's task (or None). After the last level G[0] holds the
    sum of all rows."""
    levels: list[list[ReduceTask | None]] = []
    # holders: (row that holds a partial sum, workers whose rows it covers)
    holders = [(w, [w]) for w in range(n_workers)]
    while len(holders) > 1:
        tasks: list[ReduceTask | None] = [None] * n_workers
        next_holders = []
        for g in range(0, len(holders), group):
            members = holders[g : g + group]
            subtree = [w for _, ws in members for w in ws]
            next_holders.append((members[0][0], subtree))
            if len(members) == 1:
                continue
            rows = np.array([row for row, _ in members], dtype=np.int64)
            for worker, (a, b) in zip(subtree, split(size, len(subtree))):
                tasks[worker] = ReduceTask(rows, a, b)
        levels.append(tasks)
        holders = next_holders
    return levels


class WorkerError(RuntimeError):
    """A worker thread raised; the pool is broken and must be closed."""


class WorkerPool:
    """N threads started once, each running `compute(worker)` then, for training jobs, the
    reduction and `update(worker, start, stop, grad_norm)` on its segment. `run` blocks the
    calling thread until every worker has finished the job."""

    def __init__(self, n_workers: int, size: int, name: str = "engine"):
        self.n = n_workers
        self.size = size
        self.plan = reduction_plan(n_workers, size)
        self.segments = split(size, n_workers)
        self.partial_norms = np.zeros(n_workers, dtype=np.float64)
        self._start = threading.Barrier(n_workers + 1)
        self._end = threading.Barrier(n_workers + 1)
        self._inner = threading.Barrier(n_workers)
        self._job: tuple | None = None
        self._error: BaseException | None = None
        self._closed = False
        self._threads = [
            threading.Thread(target=self._loop, args=(w,), name=f"{name}-worker-{w}", daemon=True)
            for w in range(n_workers)
        ]
        for t in self._threads:
            t.start()

    def run(self, compute: Callable[[int], None], G: np.ndarray | None = None,
            update: Callable[[int, int, int, float], None] | None = None) -> float:
        """Run one job on all workers. With G and update: reduce G along the tree and call
        update on each segment; returns the global gradient norm (else 0.0)."""
        if self._closed or self._error is not None:
            raise WorkerError("the worker pool is closed or broken")
        self._job = (compute, G, update)
        try:
            self._start.wait()
            self._end.wait()
        except threading.BrokenBarrierError:
            error = self._error
            raise WorkerError(f"a worker thread failed: {error!r}") from error
        return float(math.sqrt(self.partial_norms.sum())) if G is not None else 0.0

    def _loop(self, w: int) -> None:
        while True:
            try:
                self._start.wait()
            except threading.BrokenBarrierError:
                return
            job = self._job
            if job is None:
                return
            compute, G, update = job
            try:
                compute(w)
                if G is not None:
                    self._inner.wait()
                    for level in self.plan:
                        task = level[w]
                        if task is not None:
                            reduce_rows(G, task.rows, task.start, task.stop)
                        self._inner.wait()
                    a, b = self.segments[w]
                    self.partial_norms[w] = sum_squares(G[0], a, b)
                    self._inner.wait()
                    # every worker sums the slots in the same order: all see the same norm
                    norm = math.sqrt(self.partial_norms.sum())
                    update(w, a, b, norm)
                self._end.wait()
            except threading.BrokenBarrierError:
                return
            except BaseException as exc:  # noqa: BLE001 - handed to the caller of run()
                if self._error is None:
                    self._error = exc
                for barrier in (self._inner, self._end, self._start):
                    barrier.abort()
                return

    def close(self) -> None:
        """Stop and join every worker thread; idempotent."""
        if self._closed:
            return
        self._closed = True
        self._job = None
        if self._error is None:
            try:
                self._start.wait(timeout=10)
            except threading.BrokenBarrierError:
                pass
        else:
            self._start.abort()
        for t in self._threads:
            t.join(timeout=10)
