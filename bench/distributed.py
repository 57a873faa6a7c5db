"""Cost of training across processes: the cross-rank gradient sum, a step split into compute and
communication, and the scaling it projects to more machines.

Run under mpiexec (each rank one engine thread, so N ranks use N cores of this machine):

    mpiexec -n 2 python bench/distributed.py [--configs S,M,L] [--steps 6] [--repeats 10]
    mpiexec -n 3 python bench/distributed.py ...

Per config (crawler/bench/throughput.py's S, M, L): the flat gradient's size; the time of
Communicator.sum_into on it (the deterministic sum: Alltoallv, an ordered add, Allgatherv),
median of --repeats after one warm-up; and a "sync" training step's time with its
communication share (StepStats.comm_seconds), median over --steps after two warm-up steps.

The projection (printed by rank 0): a machine's compute time per step C is the measured step
time less its communication; the sum moves 2 (N-1)/N of the gradient's bytes in and out of each
machine (the volume of a ring all-reduce), so over a link of W bit/s it costs
t(N) = 2 (N-1)/N * 4P * 8 / W + N * 50 us (a per-message latency). Efficiency, the share of a
step spent computing: "sync" C / (C + t(N)); "local" with H steps between averages
C / (C + t(N) / H). Assumes one rank per machine, a switch with full bisection bandwidth, no
overlap of communication with the backward (the engine does not overlap yet), and C unchanged
(each machine keeps its batch). Not a test.
"""

from __future__ import annotations

import argparse
import statistics
import time

import numpy as np

from crawler.bench.throughput import CONFIGS
from engine import DistributedConfig, Trainer
from engine.distributed import world

LATENCY_S = 50e-6  # per message, a LAN's order of magnitude


def projected(compute_s: float, params: int, machines: int, bits_per_s: float, every: int = 1) -> float:
    """The share of a step spent computing on `machines` machines (module docstring)."""
    if machines == 1:
        return 1.0
    moved = 2 * (machines - 1) / machines * 4 * params * 8 / bits_per_s + machines * LATENCY_S
    return compute_s / (compute_s + moved / every)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default="S,M,L")
    p.add_argument("--steps", type=int, default=6)
    p.add_argument("--repeats", type=int, default=10)
    p.add_argument("--sync-every", type=int, default=32, help="H of the projection's local mode")
    args = p.parse_args(argv)
    comm = world()
    lead = comm.rank == 0
    rows = []
    for name in args.configs.split(","):
        bench = CONFIGS[name]
        model, train = bench.model_config(), bench.train_config(1)
        trainer = Trainer(model, train, comm=comm, distributed=DistributedConfig(mode="sync"))
        P = trainer.params.size
        grad = np.random.default_rng(comm.rank).standard_normal(P).astype(np.float32)
        times = []
        for i in range(args.repeats + 1):
            comm.barrier()
            t0 = time.perf_counter()
            comm.sum_into(grad)
            if i:
                times.append(time.perf_counter() - t0)
            grad /= np.float32(comm.size)  # keep the numbers finite
        rng = np.random.default_rng([comm.rank, 7])
        steps, comms = [], []
        for i in range(args.steps + 2):
            batch = rng.integers(0, model.vocab_size, (train.batch_size, train.seq_len + 1))
            comm.barrier()
            stats = trainer.step(batch[:, :-1], batch[:, 1:])
            if i >= 2:
                steps.append(stats.seconds)
                comms.append(stats.comm_seconds)
        trainer.close()
        step_s, comm_s = statistics.median(steps), statistics.median(comms)
        rows.append((name, P, statistics.median(times), step_s, comm_s))
    if not lead:
        return
    print(f"ranks={comm.size} (one engine thread each, loopback, this machine)")
    print(f"{'config':6} {'params':>10} {'MB':>7} {'sum_into ms':>12} {'step ms':>9} {'comm ms':>8} {'comm %':>7}")
    for name, P, sum_s, step_s, comm_s in rows:
        print(f"{name:6} {P:>10,} {4 * P / 1e6:>7.1f} {sum_s * 1e3:>12.2f} {step_s * 1e3:>9.1f} "
              f"{comm_s * 1e3:>8.2f} {100 * comm_s / step_s:>6.1f}%")
    print(f"\nprojected efficiency (compute share of a step), sync / local H={args.sync_every}:")
    print(f"{'config':6} {'link':>8} " + " ".join(f"{n:>13}" for n in (2, 4, 8, 16)))
    for name, P, _, step_s, comm_s in rows:
        compute = step_s - comm_s
        for gbit in (1, 10):
            cells = [f"{projected(compute, P, n, gbit * 1e9):.2f} / {projected(compute, P, n, gbit * 1e9, args.sync_every):.2f}"
                     for n in (2, 4, 8, 16)]
            print(f"{name:6} {gbit:>5} Gb " + " ".join(f"{c:>13}" for c in cells))


if __name__ == "__main__":
    main()
