"""Data-parallel training step on worker threads. Knows nothing of storage or files.

A step has three phases separated by barriers:
  1. compute: each worker runs forward and backward on its rows of the global batch, in
     micro-batches, accumulating into its own gradient row G[w] (thread-local: no other thread
     touches G[w] in this phase);
  2. reduce: the rows are summed along the 12-fold tree (below), one barrier per tree level;
     within a level each worker sums one disjoint segment of the flat gradient for its group;
  3. update: each worker adds the sum of squares of one disjoint segment of the final gradient
     (row 0) to the global norm (a per-worker slot, summed by every worker in the same fixed
     order, so all agree bit for bit); after a barrier it clips and updates the part of the
     buffer its update task owns (`update_plan`): flat ranges updated elementwise (AdamW), and,
     with Muon, whole matrices, since orthogonalising a matrix needs all of it at once.
Invariant: in phases 2 and 3 the segments, and the update tasks' ranges and matrices, are
disjoint, so nothing takes a lock; the barriers are the only synchronisation. Summation orders
and the plans are fixed, so a run is deterministic for a given thread count, and a matrix's
update is computed by one thread alone, so it is the same bits whichever worker owns it.

Timing: each worker writes into its own slot of `reduce_seconds` the time its reduce_rows calls
took in the last training job, barrier waits left out (they are the time spent waiting for the
slowest worker, not summing). A perf_counter reading either side of a kernel call, per tree
level: cheap enough to leave on, and nothing the arithmetic sees.

The update plan: matrices go whole to workers by longest-processing-time-first on their cost
(for Muon, the Newton-Schulz flops): largest first, each to the least-loaded worker, ties to the
lower index. The rest of the buffer is split evenly, by element count, into aligned ranges.

The 12-fold tree: workers form groups of up to 12 under a coordinator (the group's first
worker, whose row receives the group's sum). With more than 12 workers the coordinators form
groups of 12 in turn, recursively, until one root (worker 0) remains. At each level the work of
summing a group's rows is split among all workers of that group's subtree.
"""

from __future__ import annotations

import math
import threading
import time
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
class UpdateTask:
    matrices: np.ndarray  # int64 indices into the plan's matrix list: whole matrices to update
    ranges: tuple[tuple[int, int], ...]  # flat (start, stop) ranges to update elementwise


def update_plan(n_workers: int, size: int, matrices: np.ndarray | None = None,
                costs: list[float] | None = None, align: int = ALIGN) -> list[UpdateTask]:
    """Each worker's share of the update of a flat buffer of `size` elements. `matrices` (k, 3)
    holds (offset, rows, cols) of disjoint blocks that must each be updated by one worker, with
    `costs` their relative work. Every element is owned by exactly one task; without matrices,
    worker w's one range is split(size, n_workers)[w]."""
    matrices = np.zeros((0, 3), np.int64) if matrices is None else np.asarray(matrices, np.int64)
    costs = [float(r * c) for _, r, c in matrices] if costs is None else list(costs)
    # 1: whole matrices, longest first, each to the least-loaded worker
    load = [0.0] * n_workers
    owned: list[list[int]] = [[] for _ in range(n_workers)]
    for k in sorted(range(len(matrices)), key=lambda k: (-costs[k], k)):
        w = min(range(n_workers), key=lambda w: (load[w], w))
        owned[w].append(k)
        load[w] += costs[k]
    # 2: the gaps between matrices, as one virtual range split evenly
    gaps, position = [], 0
    for offset, rows, cols in sorted(matrices.tolist()):
        if offset > position:
            gaps.append((position, offset))
        position = offset + rows * cols
    if position < size:
        gaps.append((position, size))
    total = sum(b - a for a, b in gaps)
    tasks = []
    for w, (lo, hi) in enumerate(split(total, n_workers, align)):
        ranges, seen = [], 0  # seen: virtual position of the current gap's start
        for a, b in gaps:
            start, stop = max(lo, seen), min(hi, seen + b - a)
            if start < stop:
                ranges.append((a + start - seen, a + stop - seen))
            seen += b - a
        tasks.append(UpdateTask(np.array(sorted(owned[w]), dtype=np.int64), tuple(ranges)))
    return tasks


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
    reduction, the norm and `update(worker, grad_norm)`, which updates the part of the buffer
    the caller's update_plan gives that worker. `run` blocks the calling thread until every
    worker has finished the job."""

    def __init__(self, n_workers: int, size: int, name: str = "engine"):
        self.n = n_workers
        self.size = size
        self.plan = reduction_plan(n_workers, size)
        self.segments = split(size, n_workers)
        self.partial_norms = np.zeros(n_workers, dtype=np.float64)
        # worker w's seconds in reduce_rows during the last training job (row w: written by w alone)
        self.reduce_seconds = np.zeros(n_workers, dtype=np.float64)
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
            update: Callable[[int, float], None] | None = None,
            across: Callable[[], None] | None = None) -> float:
        """Run one job on all workers. With G and update: reduce G along the tree, then (with
        `across`) let worker 0 alone call across() on the sum in G[0] (the sum over processes,
        engine/distributed.py) while the others wait, compute the global gradient norm, then call
        update(worker, norm) on every worker; returns the norm (else 0.0)."""
        if self._closed or self._error is not None:
            raise WorkerError("the worker pool is closed or broken")
        self._job = (compute, G, update, across)
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
            compute, G, update, across = job
            try:
                compute(w)
                if G is not None:
                    self._inner.wait()
                    reducing = 0.0
                    for level in self.plan:
                        task = level[w]
                        if task is not None:
                            started = time.perf_counter()
                            reduce_rows(G, task.rows, task.start, task.stop)
                            reducing += time.perf_counter() - started
                        self._inner.wait()
                    self.reduce_seconds[w] = reducing
                    if across is not None:
                        if w == 0:
                            across()
                        self._inner.wait()
                    a, b = self.segments[w]
                    self.partial_norms[w] = sum_squares(G[0], a, b)
                    self._inner.wait()
                    # every worker sums the slots in the same order: all see the same norm
                    norm = math.sqrt(self.partial_norms.sum())
                    update(w, norm)
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
