"""`crystalline bench`: training throughput of the engine, its thread scaling, and its cost.

The configs are the sizes S, M and L of engine.sizes, each with the batch it trains on here.
For each config and thread count it reports training tokens/s (median whole step,
optimizer included, after warm-up steps, on random token data), parallel efficiency, achieved
GFLOP/s and MFU over the forward, backward and gradient reduction (the step less its update
phase) against this machine's measured single-precision matmul peak at that thread count, the
share of the step each phase takes (forward, backward, reduction, update: clipping and the
optimizer, and the rest: the workers' hand-offs; engine StepStats), and memory per worker.
Then, for the state directory the command was given (crawler/bench/your_model.py), the model
it trains and the time to one pass over its stored text. --arch chooses the
architecture and optimizer: the product's default (`crystalline run`'s [model] and [train]:
rotary positions, Muon for the matrices) or GPT-2 with AdamW (the engine's own defaults).
Once per run it times numba's cold compile and warm (cached) start in a subprocess. With
--compare-torch it trains the same model in PyTorch eager mode on the same batches and reports
the engine/torch ratio measured side by side.

crawler.bench.report writes the report out. Not a test: nothing here asserts a speed. The
helpers (`flops_per_token`, `measure_matmul_peak`, `time_steps`, `measure_start_time`) are small
and tested in tests/unit/crawler/test_bench.py. Relies on the engine, numpy and threadpoolctl;
on torch only with --compare-torch.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np

from engine import BYTE_VOCAB_SIZE, ConfigError, ModelConfig, TrainConfig, count_parameters
from engine.sizes import SIZES, ModelSize

from .report import format_table, machine_info


ARCHES = ("product", "gpt2")


def arch_settings(arch: str) -> tuple[dict, dict]:
    """The [model] and [train] settings beyond the shape that --arch adds: the product's
    defaults (crawler.config.DAEMON_DEFAULTS less the size, the batch and the schedule), or none
    (GPT-2, AdamW)."""
    if arch == "gpt2":
        return {}, {}
    from ..config import DAEMON_DEFAULTS

    shape = ("d_model", "n_layer", "n_head")
    timing = ("schedule", "warmup_steps")
    model = {k: v for k, v in DAEMON_DEFAULTS["model"].items() if k not in shape}
    train = {k: v for k, v in DAEMON_DEFAULTS["train"].items() if k not in timing}
    return model, train


@dataclass(frozen=True)
class BenchConfig:
    """One row group of the report: a model shape (a size of engine.sizes) and the batch it
    trains on."""

    name: str
    d_model: int
    n_layer: int
    n_head: int
    seq_len: int
    batch_size: int

    @classmethod
    def of(cls, size: ModelSize, seq_len: int, batch_size: int) -> BenchConfig:
        return cls(size.name, size.d_model, size.n_layer, size.n_head, seq_len, batch_size)

    def model_config(self, arch: str = "gpt2") -> ModelConfig:
        return ModelConfig(
            vocab_size=BYTE_VOCAB_SIZE,
            context_length=self.seq_len,
            d_model=self.d_model,
            n_layer=self.n_layer,
            n_head=self.n_head,
            **arch_settings(arch)[0],
        ).validate()

    def train_config(self, threads: int, arch: str = "gpt2") -> TrainConfig:
        # constant rate, no warm-up: the schedule costs nothing and the torch twin matches it.
        return TrainConfig(
            batch_size=self.batch_size,
            seq_len=self.seq_len,
            threads=threads,
            schedule="constant",
            warmup_steps=0,
            **arch_settings(arch)[1],
        ).validate(self.model_config(arch))


# engine.sizes' S, M and L with the window and batch each trains on here: S the daemon's (T=128,
# B=16), M and L longer windows in smaller batches, every step 2,048 tokens
CONFIGS = {name: BenchConfig.of(SIZES[name], seq_len, batch_size)
           for name, seq_len, batch_size in (("S", 128, 16), ("M", 256, 8), ("L", 256, 8))}
# not offered in --help: a config small enough for the test suite.
HIDDEN_CONFIGS = {
    "tiny": BenchConfig("tiny", d_model=16, n_layer=1, n_head=2, seq_len=16, batch_size=4),
}

# Run in a subprocess to time numba's start: import, build a tiny Trainer, one step.
START_SNIPPET = """
import numpy as np
from engine import BYTE_VOCAB_SIZE, ModelConfig, TrainConfig, Trainer
model = ModelConfig(vocab_size=BYTE_VOCAB_SIZE, context_length=16, d_model=16, n_layer=1, n_head=2).validate()
train = TrainConfig(batch_size=2, seq_len=16, threads=1).validate(model)
tokens = np.zeros((2, 16), dtype=np.int32)
with Trainer(model, train) as trainer:
    trainer.step(tokens, tokens)
"""


# ---------------------------------------------------------------------------------------------
# pure helpers


def flops_per_token(config: ModelConfig, T: int) -> float:
    """Training FLOPs per token (forward + backward), the estimate of nanoGPT's estimate_mfu.

    6 * N + 12 * L * T * C, where N counts the weights that take part in a matmul: per layer
    qkvw (3C*C), attprojw (C*C), fcw and fcprojw (H*C each), plus the tied head wte (V*C). The
    token and position lookups are not matmuls and are left out. 6 = 2 FLOPs per multiply-add
    times 3 (the forward, and the backward's two matmuls). The attention term counts q @ k^T and
    att @ v over the full T x T square (2 * 2 * T * C per token per layer, times 3): causal
    masking would halve it, and this convention (PaLM's, nanoGPT's, llm.c's) does not. Biases,
    LayerNorm, GELU, softmax and AdamW are not counted.
    """
    V, C, L = config.vocab_size, config.d_model, config.n_layer
    H = config.mlp_ratio * C
    matmul_weights = L * (3 * C * C + C * C + 2 * H * C) + V * C
    return 6.0 * matmul_weights + 12.0 * L * T * C


def measure_matmul_peak(threads: int, size: int = 2048, repeats: int = 3, rounds: int = 2) -> float:
    """The machine's float32 matmul rate in GFLOP/s with `threads` workers, the best of `rounds`.

    Each worker is a Python thread multiplying its own (size, size) float32 matrices with numpy
    (sgemm releases the GIL), BLAS held to one thread, the way the engine runs one single-threaded
    BLAS per worker. A round is timed from a shared barrier until the last worker finishes.
    Blocks for about rounds * repeats sgemm calls; joins every thread it starts.
    """
    from threadpoolctl import threadpool_limits

    rng = np.random.default_rng(0)
    operands = [
        (rng.standard_normal((size, size), dtype=np.float32), rng.standard_normal((size, size), dtype=np.float32))
        for _ in range(threads)
    ]
    flops = threads * repeats * 2.0 * size**3
    best = 0.0
    with threadpool_limits(limits=1, user_api="blas"):
        for a, b in operands:  # warm up each thread's operands and BLAS's buffers
            np.matmul(a, b)
        for _ in range(rounds):
            barrier = threading.Barrier(threads + 1)

            def work(a, b):
                out = np.empty_like(a)
                barrier.wait()
                for _ in range(repeats):
                    np.matmul(a, b, out=out)

            workers = [threading.Thread(target=work, args=ab, name=f"peak-{i}") for i, ab in enumerate(operands)]
            for worker in workers:
                worker.start()
            barrier.wait()
            start = time.perf_counter()
            for worker in workers:
                worker.join()
            best = max(best, flops / (time.perf_counter() - start) / 1e9)
    return best


def time_steps(
    step: Callable[[int], object], steps: int, warmup: int, clock: Callable[[], float] = time.perf_counter
) -> list[float]:
    """Call step(i) `warmup` times untimed, then `steps` times; returns each timed call's seconds."""
    for i in range(warmup):
        step(i)
    durations = []
    for i in range(warmup, warmup + steps):
        start = clock()
        step(i)
        durations.append(clock() - start)
    return durations


def random_batches(vocab_size: int, B: int, T: int, count: int, seed: int = 0) -> list[tuple]:
    """`count` (inputs, targets) pairs of int32 (B, T) ids, targets shifted by one position."""
    rng = np.random.default_rng(seed)
    batches = []
    for _ in range(count):
        tokens = rng.integers(0, vocab_size, size=(B, T + 1), dtype=np.int32)
        batches.append((np.ascontiguousarray(tokens[:, :-1]), np.ascontiguousarray(tokens[:, 1:])))
    return batches


def measure_start_time(cache_dir: str, snippet: str = START_SNIPPET, timeout: float = 900.0) -> float:
    """Wall seconds of a fresh interpreter running `snippet` with NUMBA_CACHE_DIR=cache_dir.

    Includes the interpreter's own start-up. Raises RuntimeError with the child's stderr when it
    fails, subprocess.TimeoutExpired after `timeout` seconds.
    """
    env = dict(os.environ, NUMBA_CACHE_DIR=cache_dir)
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-c", snippet], env=env, capture_output=True, text=True, timeout=timeout
    )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"start-time subprocess failed ({done.returncode}): {done.stderr.strip()}")
    return seconds


def parse_list(text: str, allowed: dict | None = None, what: str = "value") -> list:
    """Split "S,M" into names (checked against `allowed`) or "1,2" into positive ints."""
    items = [item.strip() for item in text.split(",") if item.strip()]
    if not items:
        raise ValueError(f"no {what} given")
    if allowed is not None:
        unknown = [item for item in items if item not in allowed]
        if unknown:
            public = ", ".join(name for name in allowed if name not in HIDDEN_CONFIGS)
            raise ValueError(f"unknown {what} {', '.join(unknown)}: choose from {public}")
        return items
    values = [int(item) for item in items]
    if any(value < 1 for value in values):
        raise ValueError(f"{what} ({text}) must be positive integers")
    return values


# ---------------------------------------------------------------------------------------------
# the two trainers


PHASES = ("forward", "backward", "reduce", "update")  # StepStats' <phase>_seconds, in step order


def phase_shares(stats: list) -> dict:
    """Each phase's share of the steps' time (engine StepStats: the slowest worker's forward,
    backward, reduction and update), and "rest", what is left: the barriers' hand-offs, the waits
    between the reduction's levels, the gradient norm and the step's Python. Shares of the summed
    time of all `stats`, not of a median step, so that they add up to 1."""
    total = sum(s.seconds for s in stats)
    shares = {phase: sum(getattr(s, f"{phase}_seconds") for s in stats) / total for phase in PHASES}
    shares["rest"] = max(0.0, 1.0 - sum(shares.values()))
    return shares


def measure_trainer(model_config: ModelConfig, train_config: TrainConfig, batches: list, steps: int,
                    warmup: int) -> dict:
    """A Trainer's tokens/s (median whole step), the median forward + backward + reduction (the
    step less its update phase), each phase's median and share of the step, and memory per worker."""
    from engine import Trainer

    stats = []
    with Trainer(model_config, train_config) as trainer:
        durations = time_steps(lambda i: stats.append(trainer.step(*batches[i % len(batches)])), steps, warmup)
        memory = trainer.memory_per_thread_mb
    timed = stats[warmup:]
    median = statistics.median(durations)
    result = {
        "tokens_per_s": train_config.batch_size * train_config.seq_len / median,
        "step_ms_median": median * 1e3,
        "compute_ms_median": statistics.median(s.seconds - s.update_seconds for s in timed) * 1e3,
    }
    for phase in PHASES:
        result[f"{phase}_ms_median"] = statistics.median(getattr(s, f"{phase}_seconds") for s in timed) * 1e3
    result["shares"] = phase_shares(timed)
    result["memory_per_thread_mb"] = memory
    return result


def measure_engine(bench: BenchConfig, threads: int, batches: list, steps: int, warmup: int,
                   arch: str = "gpt2") -> dict:
    """measure_trainer on one config at `threads` worker threads."""
    return measure_trainer(bench.model_config(arch), bench.train_config(threads, arch), batches, steps, warmup)


def measure_torch(bench: BenchConfig, threads: int, batches: list, steps: int, warmup: int,
                  arch: str = "gpt2") -> dict:
    """PyTorch eager tokens/s (median step) for the same model, optimizer and clipping recipe."""
    from engine import init_parameters

    from .torch_reference import TorchGPT, require_torch, torch_optimizer, train_step

    torch = require_torch()
    model_config, train = bench.model_config(arch), bench.train_config(threads, arch)
    model = TorchGPT.from_flat(model_config, init_parameters(model_config))
    optimizer = torch_optimizer(model, train)

    def step(i):
        train_step(model, optimizer, *batches[i % len(batches)], train.grad_clip)

    previous = torch.get_num_threads()
    torch.set_num_threads(threads)
    try:
        durations = time_steps(step, steps, warmup)
    finally:
        torch.set_num_threads(previous)
    median = statistics.median(durations)
    return {"tokens_per_s": bench.batch_size * bench.seq_len / median, "step_ms_median": median * 1e3}


# ---------------------------------------------------------------------------------------------
# the report


def run_config(bench: BenchConfig, threads: list[int], peaks: dict, args) -> dict:
    """Every measurement for one config, one entry per thread count."""
    arch = args.arch
    model_config = bench.model_config(arch)
    per_token = flops_per_token(model_config, bench.seq_len)
    batches = random_batches(BYTE_VOCAB_SIZE, bench.batch_size, bench.seq_len, count=args.steps + args.warmup)
    results = []
    for n in threads:
        entry: dict = {"threads": n}
        try:
            entry.update(measure_engine(bench, n, batches, args.steps, args.warmup, arch))
        except ConfigError as exc:  # a thread count the train config rejects
            entry["skipped"] = str(exc)
            results.append(entry)
            continue
        # model FLOPs over the forward, backward and reduction; the update phase on its own
        tokens = bench.batch_size * bench.seq_len
        entry["gflops"] = per_token * tokens / entry["compute_ms_median"] / 1e6
        entry["mfu"] = entry["gflops"] / peaks[n]
        if args.compare_torch:
            theirs = measure_torch(bench, n, batches, args.steps, args.warmup, arch)
            entry["torch_tokens_per_s"] = theirs["tokens_per_s"]
            entry["torch_step_ms_median"] = theirs["step_ms_median"]
            entry["engine_vs_torch"] = entry["tokens_per_s"] / theirs["tokens_per_s"]
        results.append(entry)
    single = next((r["tokens_per_s"] for r in results if r["threads"] == 1 and "tokens_per_s" in r), None)
    for entry in results:
        # efficiency needs the 1-thread rate measured in this run; without it, None.
        if single and "tokens_per_s" in entry:
            entry["parallel_efficiency"] = entry["tokens_per_s"] / (entry["threads"] * single)
        else:
            entry["parallel_efficiency"] = None
    return {
        "name": bench.name,
        "arch": arch,
        "d_model": bench.d_model,
        "n_layer": bench.n_layer,
        "n_head": bench.n_head,
        "seq_len": bench.seq_len,
        "batch_size": bench.batch_size,
        "parameters": count_parameters(model_config),
        "flops_per_token": per_token,
        "results": results,
    }


def measure_start_times() -> dict:
    """numba cold compile (empty cache dir) and warm start (the same dir again), in seconds."""
    with tempfile.TemporaryDirectory(prefix="crystalline-numba-cache-") as cache_dir:
        cold = measure_start_time(cache_dir)
        warm = measure_start_time(cache_dir)
    return {"cold_s": cold, "warm_s": warm}


# ---------------------------------------------------------------------------------------------
# command line


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Register the bench flags on `parser` (a subparser of the crystalline CLI)."""
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    parser.add_argument(
        "--compare-torch", action="store_true", help="also train with PyTorch eager and report the ratio"
    )
    parser.add_argument(
        "--arch", choices=ARCHES, default="product",
        help="product: the daemon's default architecture and optimizer (rotary positions, Muon); "
        "gpt2: learned positions and AdamW (default product)",
    )
    parser.add_argument("--configs", default="S,M,L", help="comma-separated configs from S, M, L (default S,M,L)")
    parser.add_argument("--threads", default="1,2", help="comma-separated worker thread counts (default 1,2)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps per measurement (default 10)")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps before timing (default 2)")
    parser.add_argument(
        "--skip-start-time", action="store_true", help="skip timing numba's cold compile and warm start"
    )
    parser.add_argument(
        "--skip-your-model", action="store_true",
        help="skip timing the state directory's model and the time to one pass over its stored text",
    )
    # matrix size of the peak measurement; tests shrink it.
    parser.add_argument("--peak-size", type=int, default=2048, help=argparse.SUPPRESS)


def main(args: argparse.Namespace, yours=None) -> int:
    """Run the benchmark and print the report; returns the process exit status. With `yours`
    (crawler/bench/your_model.py's YourModel for the state directory the CLI resolved, which the
    CLI hands in so that this module does not import that one, which imports it), the report ends
    with the model that state directory trains; its store is read first, so a store error stops
    the command before the long part."""
    peak_size = getattr(args, "peak_size", 2048)
    skip_start = getattr(args, "skip_start_time", False)
    if getattr(args, "skip_your_model", False):
        yours = None
    try:
        names = parse_list(args.configs, {**CONFIGS, **HIDDEN_CONFIGS}, "config")
        threads = parse_list(args.threads, what="threads")
        if args.steps < 1 or args.warmup < 0:
            raise ValueError(f"steps ({args.steps}) must be >= 1 and warmup ({args.warmup}) >= 0")
        if args.compare_torch:
            from .torch_reference import require_torch

            require_torch()
    except (ValueError, ImportError) as exc:
        print(f"crystalline bench: {exc}", file=sys.stderr)
        return 2

    if yours is not None:
        yours.read()
    peaks = {n: measure_matmul_peak(n, size=peak_size) for n in threads}
    report = {
        "machine": machine_info(),
        "arch": args.arch,
        "compare_torch": bool(args.compare_torch),
        "steps": args.steps,
        "warmup": args.warmup,
        "peak_gflops": [{"threads": n, "gflops": peaks[n]} for n in threads],
        "start_time": None if skip_start else measure_start_times(),
        "configs": [],
    }
    for name in names:
        bench = CONFIGS.get(name) or HIDDEN_CONFIGS[name]
        report["configs"].append(run_config(bench, threads, peaks, args))
    report["your_model"] = None
    if yours is not None:
        report["your_model"] = yours.measure(peaks, args.steps, args.warmup,
                                             lambda n: measure_matmul_peak(n, size=peak_size))
    print(json.dumps(report, indent=2) if args.json else format_table(report))
    return 0
