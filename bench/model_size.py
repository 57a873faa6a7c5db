"""Which model size learns most per CPU-minute here: held-out bits per byte after equal training time.

Each candidate (--sizes, of engine.sizes: default XS d=64 L=2 H=2; S d=128 L=4 H=4; d192x4
d=192 L=4 H=6; M d=256 L=6 H=8; all T=128, batch 16, GPT-2 with AdamW at lr 1e-3, warmup 100,
constant schedule: the daemon's recipe of issue 4; --threads 2) is trained with engine.Trainer on
CORPUS/train (byte tokenizer, WindowSampler with the same seed, so every candidate draws the
same batch sequence) for the same
--seconds (180) of training time: wall clock inside Trainer.step, evaluation not counted. One
untimed step on a throwaway trainer first (numba cache load, first-call allocations).

Held-out bits per byte on CORPUS/val (crawler.bench.harness.held_out: every target once, windows
of T; summed nats / ln 2 / target bytes) at step 0, after every
--seconds/--evals (3) of training time and at the end, so the curves show; --val-windows N keeps
N evenly spaced windows of the val split (0, the default: all of it). Candidates run one after
another, so the machine should otherwise be quiet. Winner: the lowest final bpb at equal time.

    python bench/model_size.py --seconds 180 --threads 2 [--json]
    python bench/model_size.py --sizes XS,S,M,128:6:4 --seconds 300
Not a test; exit 2 when the corpus is missing.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from crawler.bench.harness import DEFAULT_CORPUS, HeldOut, corpus_folder, held_out, load_tokens
from crawler.ingest.data import DataError, WindowSampler
from crawler.ingest.tokenizer import ByteTokenizer
from engine import ConfigError, TrainConfig, Trainer
from engine.sizes import ModelSize, parse_size

DATA_SEED = TrainConfig().seed  # the daemon's and `train`'s default
DEFAULT_SIZES = "XS,S,d192x4,M"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default=DEFAULT_SIZES,
                   help=f"sizes of engine.sizes or d_model:layers:heads, comma-separated (default {DEFAULT_SIZES})")
    p.add_argument("--seconds", type=float, default=180.0, help="training time per candidate (default 180)")
    p.add_argument("--evals", type=int, default=3, help="evaluations during the budget, the last at its end (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="a folder with train/ and val/")
    p.add_argument("--val-windows", type=int, default=0, help="evenly spaced val windows to use; 0 = all")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def run_candidate(args, size: ModelSize, sampler: WindowSampler, val: HeldOut) -> dict:
    name = size.name
    model = size.model_config(vocab_size=ByteTokenizer.vocab_size, context_length=args.context)
    train = TrainConfig(batch_size=args.batch_size, seq_len=args.context, learning_rate=args.lr,
                        warmup_steps=args.warmup, schedule="constant", total_steps=10**9,
                        threads=args.threads).validate(model)
    x0, y0 = sampler.batch(0)
    with Trainer(model, train) as scratch:  # untimed: numba cache load, first-call allocations
        scratch.step(x0, y0)
        scratch.evaluate(x0[:1], y0[:1])
    curve, trained, steps = [], 0.0, 0
    with Trainer(model, train) as trainer:

        def evaluate() -> None:
            t0 = time.perf_counter()
            bpb = val.bits_per_byte(lambda x, y: trainer.evaluate(x, y)[0])
            curve.append({"seconds": round(trained, 2), "step": steps, "bpb": bpb,
                          "eval_s": round(time.perf_counter() - t0, 1)})
            if not args.json:
                print(f"{name}: {trained:.1f} s, step {steps}, val {curve[-1]['bpb']:.4f} bpb", file=sys.stderr, flush=True)

        evaluate()
        marks = [args.seconds * k / args.evals for k in range(1, args.evals + 1)]
        while marks:
            x, y = sampler.batch(steps)
            t0 = time.perf_counter()
            trainer.step(x, y)
            trained += time.perf_counter() - t0
            steps += 1
            crossed = 0
            while marks and trained >= marks[0]:
                marks.pop(0)
                crossed += 1
            if crossed:
                evaluate()
                curve.extend(dict(curve[-1]) for _ in range(crossed - 1))  # one step past several marks
        params = int(trainer.params.size)
    return {"config": name, **size.shape(), "params": params, "steps": steps,
            "train_seconds": round(trained, 2), "tokens_per_s": round(steps * args.batch_size * args.context / trained, 1),
            "val_bpb": curve[-1]["bpb"], "curve": curve}


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        corpus = corpus_folder(args.corpus)
        if min(args.seconds, args.evals, args.threads) <= 0:
            raise ConfigError("--seconds, --evals and --threads must be positive")
        sizes = [parse_size(text) for text in args.sizes.split(",") if text]
        train_tokens = load_tokens(corpus, "train")
        sampler = WindowSampler(train_tokens, args.context, args.batch_size, seed=DATA_SEED)
        val = held_out(load_tokens(corpus, "val"), args.context, args.batch_size, keep=args.val_windows)
        rows = [run_candidate(args, size, sampler, val) for size in sizes]
    except (ValueError, DataError) as exc:
        print(f"bench/model_size.py: {exc}", file=sys.stderr)
        return 2
    winner = min(rows, key=lambda r: r["val_bpb"])
    report = {"recipe": {"context": args.context, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                         "schedule": "constant", "threads": args.threads, "data_seed": DATA_SEED},
              "seconds": args.seconds, "corpus": str(corpus), "train_tokens": int(train_tokens.size),
              "val_bytes": val.n_bytes, "rows": rows, "winner": winner["config"]}
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    heads = [f"bpb@{args.seconds * k / args.evals:.0f}s" for k in range(args.evals + 1)]
    print(f"{'config':<8}{'params':>10}{'steps':>8}{'tokens/s':>10}  " + "".join(f"{h:>11}" for h in heads)
          + f"{'val bpb':>10}")
    for r in rows:
        print(f"{r['config']:<8}{r['params']:>10,}{r['steps']:>8}{r['tokens_per_s']:>10.0f}  "
              + "".join(f"{c['bpb']:>11.4f}" for c in r["curve"]) + f"{r['val_bpb']:>10.4f}")
    print("\n(bpb@: after that much training time, or the first step past it; exact times in --json)")
    print(f"winner after {args.seconds:.0f} s of training on {args.threads} threads: {winner['config']} "
          f"({winner['val_bpb']:.4f} bpb on {val.n_bytes:,} val bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
