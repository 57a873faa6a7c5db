"""Training-step time of two source trees side by side: before and after a change to the engine.

Each round runs one short subprocess per tree, in turn (A, B, A, B, ...), with PYTHONPATH set to
the tree, so both import their own engine (through its public API only: ModelConfig, TrainConfig,
Trainer) (and numba caches its kernels beside each tree's
sources). A subprocess builds a Trainer for each --configs entry (`crystalline bench`'s S, M
and L: engine.sizes' shapes with the bench's batches) at --threads, takes --warmup
untimed steps and then --steps timed ones on the same random batches, and prints the medians of
the whole step, of the forward + backward + reduction (the step less its update phase) and of
the update phase, and the trainer's memory per worker. Round 0 is a warm-up (numba may be
compiling) and is left out. The report gives, per config, the median over rounds of each tree's
figures and B/A of the step and compute times, each round's ratio taken between neighbours so
that a slow spell of the machine hits both sides alike.

    python bench/step_ab.py --a /path/to/main --b . --configs S,M --arch product --rounds 5
    python bench/step_ab.py --a . --b . --extra-b recompute_activation=true   # one tree, two settings

Not a test: the machine should otherwise be quiet.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from crawler.bench.throughput import CONFIGS, arch_settings

CHILD = r"""
import json, statistics, sys
import numpy as np
from engine import ModelConfig, TrainConfig, Trainer
spec = json.loads(sys.argv[1])
out = {}
rng = np.random.default_rng(0)
for name, shape in spec["configs"].items():
    model = ModelConfig(vocab_size=257, context_length=shape["T"], d_model=shape["d"], n_layer=shape["L"],
                        n_head=shape["H"], **spec["model"]).validate()
    train = TrainConfig(batch_size=shape["B"], seq_len=shape["T"], threads=spec["threads"], schedule="constant",
                        warmup_steps=0, **spec["train"]).validate(model)
    tokens = rng.integers(0, 257, size=(4, shape["B"], shape["T"] + 1), dtype=np.int32)
    batches = [(np.ascontiguousarray(t[:, :-1]), np.ascontiguousarray(t[:, 1:])) for t in tokens]
    stats = []
    with Trainer(model, train) as trainer:
        for i in range(spec["warmup"] + spec["steps"]):
            stats.append(trainer.step(*batches[i % 4]))
        memory = trainer.memory_per_thread_mb
    timed = stats[spec["warmup"]:]
    out[name] = {
        "step_ms": statistics.median(s.seconds for s in timed) * 1e3,
        "compute_ms": statistics.median(s.seconds - s.update_seconds for s in timed) * 1e3,
        "update_ms": statistics.median(s.update_seconds for s in timed) * 1e3,
        "memory_mb": memory,
    }
print(json.dumps(out))
"""


def parse_extra(text: str) -> dict:
    """`key=value,...` TrainConfig overrides; values are JSON (true, 3, 0.5) or plain strings."""
    extra = {}
    for item in filter(None, text.split(",")):
        key, _, value = item.partition("=")
        try:
            extra[key] = json.loads(value)
        except json.JSONDecodeError:
            extra[key] = value
    return extra


def run_tree(tree: Path, spec: dict) -> dict:
    env = dict(os.environ, PYTHONPATH=str(tree.resolve()))
    done = subprocess.run([sys.executable, "-c", CHILD, json.dumps(spec)], env=env, cwd=tree,
                          capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{tree}: the step run failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--a", type=Path, required=True, help="tree A (before)")
    p.add_argument("--b", type=Path, required=True, help="tree B (after)")
    p.add_argument("--extra-a", default="", help="TrainConfig overrides for A: key=value,...")
    p.add_argument("--extra-b", default="", help="TrainConfig overrides for B: key=value,...")
    p.add_argument("--configs", default="S,M,L")
    p.add_argument("--arch", default="product", choices=("product", "gpt2"))
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--rounds", type=int, default=5, help="timed rounds after the warm-up round")
    args = p.parse_args()
    # the child uses only the engine's public API, the same in both trees
    model, train = arch_settings(args.arch)
    names = args.configs.split(",")
    shapes = {n: {"d": CONFIGS[n].d_model, "L": CONFIGS[n].n_layer, "H": CONFIGS[n].n_head,
                  "T": CONFIGS[n].seq_len, "B": CONFIGS[n].batch_size} for n in names}
    base = {"configs": shapes, "model": model, "threads": args.threads, "steps": args.steps, "warmup": args.warmup}
    sides = {"A": (args.a, {**base, "train": {**train, **parse_extra(args.extra_a)}}),
             "B": (args.b, {**base, "train": {**train, **parse_extra(args.extra_b)}})}
    rounds: list[dict] = []
    for r in range(args.rounds + 1):
        result = {side: run_tree(tree, spec) for side, (tree, spec) in sides.items()}
        if r > 0:
            rounds.append(result)
        print(f"round {r}{' (warm-up)' if r == 0 else ''}: "
              + "; ".join(f"{name} B/A {result['B'][name]['step_ms'] / result['A'][name]['step_ms']:.3f}"
                          for name in names), flush=True)
    print(f"\nA = {args.a} {args.extra_a}  B = {args.b} {args.extra_b}  arch {args.arch}, {args.threads} threads, "
          f"{args.rounds} rounds of {args.steps} steps, medians")
    print("| config | A step ms | B step ms | B/A step | A compute ms | B compute ms | B/A compute "
          "| A update ms | B update ms | A MB/thread | B MB/thread |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for name in names:
        def med(side, key):
            return statistics.median(r[side][name][key] for r in rounds)

        def ratio(key):
            return statistics.median(r["B"][name][key] / r["A"][name][key] for r in rounds)

        print(f"| {name} | {med('A', 'step_ms'):.1f} | {med('B', 'step_ms'):.1f} | {ratio('step_ms'):.3f} "
              f"| {med('A', 'compute_ms'):.1f} | {med('B', 'compute_ms'):.1f} | {ratio('compute_ms'):.3f} "
              f"| {med('A', 'update_ms'):.1f} | {med('B', 'update_ms'):.1f} "
              f"| {med('A', 'memory_mb'):.1f} | {med('B', 'memory_mb'):.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())
