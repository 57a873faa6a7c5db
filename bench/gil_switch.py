"""What a busy Python thread costs the training step, by GIL switch interval, against the same
work in another process.

The engine's worker threads run numba kernels without the GIL and take it back between every
two kernels; a thread that runs Python (the daemon's ingest: parsing, cleaning, SQL) holds it
whenever it runs, and a waiting thread gets it only when the holder drops it, at the latest
after sys.getswitchinterval(). One process, one Trainer of size S (byte vocabulary, rotary
positions, Muon, B=16, T=128, --threads), fixed random batches; in each round, in turn, for
--seconds each: the step alone; beside a thread running a pure-Python loop (regular
expressions and a dict, as a parser does) at each --intervals switch interval; beside a process
running the same loop. Steps/s per case, the median over --rounds rounds, and its ratio to
alone; the daemon's choice (crawler/service/daemon.py GIL_SWITCH_SECONDS) rests on it.

    python bench/gil_switch.py [--seconds 6] [--rounds 3] [--threads 2] [--intervals 5,0.5,0.1,0.02]
Not a test. One row per run in bench/results/gil_switch.jsonl.
"""

from __future__ import annotations

import argparse
import multiprocessing
import re
import sys
import threading
import time

import numpy as np

from crawler.bench.harness import record_each
from crawler.bench.results import ResultLog, add_result_flags


def python_work(stop) -> None:
    """Pure Python until `stop` is set: what holds the GIL in a parser."""
    words = re.compile(r"\w+")
    text = "the quick brown fox jumps over the lazy dog " * 200
    while not stop.is_set():
        {w: hash(w) for w in words.findall(text)}


def measure(args) -> dict:
    from engine import Trainer
    from engine.config import ModelConfig, TrainConfig
    from engine.sizes import SIZES

    model = ModelConfig(**SIZES["S"].shape(), vocab_size=257, positions="rope").validate()
    recipe = TrainConfig(batch_size=16, seq_len=128, threads=args.threads, optimizer="muon").validate(model)
    rng = np.random.default_rng(0)
    x = rng.integers(0, 257, size=(16, 128), dtype=np.int32)
    y = rng.integers(0, 257, size=(16, 128), dtype=np.int32)
    cases = ["alone"] + [f"thread {ms:g} ms" for ms in args.intervals] + ["process"]
    rates: dict[str, list[float]] = {case: [] for case in cases}
    default = sys.getswitchinterval()
    with Trainer(model, recipe) as trainer:
        for _ in range(5):
            trainer.step(x, y)
        for round_ in range(args.rounds):
            for case in cases:
                worker = stop = None
                if case.startswith("thread"):
                    sys.setswitchinterval(float(case.split()[1]) / 1e3)
                    stop = threading.Event()
                    worker = threading.Thread(target=python_work, args=(stop,), daemon=True)
                elif case == "process":
                    stop = multiprocessing.Event()
                    worker = multiprocessing.Process(target=python_work, args=(stop,), daemon=True)
                if worker is not None:
                    worker.start()
                    time.sleep(0.2)
                started, steps = time.perf_counter(), 0
                while time.perf_counter() - started < args.seconds:
                    trainer.step(x, y)
                    steps += 1
                rates[case].append(steps / (time.perf_counter() - started))
                if worker is not None:
                    stop.set()
                    worker.join()
                sys.setswitchinterval(default)
                print(f"round {round_}: {case}: {rates[case][-1]:.2f} steps/s", file=sys.stderr, flush=True)
    alone = float(np.median(rates["alone"]))
    row = {"threads": args.threads, "seconds": args.seconds, "rounds": args.rounds,
           "steps_per_s": {case: round(float(np.median(r)), 3) for case, r in rates.items()},
           "vs_alone": {case: round(float(np.median(r)) / alone, 3) for case, r in rates.items()}}
    for case in cases:
        print(f"{case:16s} {row['steps_per_s'][case]:7.2f} steps/s  {row['vs_alone'][case]:.2f}x of alone")
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=6.0)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--intervals", default="5,0.5,0.1,0.02", help="switch intervals in ms, comma-separated")
    add_result_flags(parser, "gil_switch.jsonl")
    args = parser.parse_args(argv)
    args.intervals = [float(v) for v in args.intervals.split(",") if v]
    key = f"gil_switch:{args.threads}:{','.join(f'{v:g}' for v in args.intervals)}"
    return record_each(ResultLog(args.results, allow_dirty=args.allow_dirty), [(key, lambda: measure(args))],
                       "gil_switch")


if __name__ == "__main__":
    sys.exit(main())
