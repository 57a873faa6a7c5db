"""Which model size learns most per CPU-minute here: held-out bits per byte after equal training time.

Each candidate (default XS d=64 L=2 H=2; S d=128 L=4 H=4; S+ d=192 L=4 H=6; M d=256 L=6 H=8;
all T=128, batch 16, lr 1e-3, warmup 100, constant schedule: the daemon's recipe; --threads 2)
is trained with engine.Trainer on CORPUS/train (byte tokenizer, crawler.ingest.data.load_corpus and
WindowSampler with the same seed, so every candidate draws the same batch sequence) for the same
--seconds (180) of training time: wall clock inside Trainer.step, evaluation not counted. One
untimed step on a throwaway trainer first (numba cache load, first-call allocations).

Held-out bits per byte on CORPUS/val (crawler.ingest.data.eval_windows, every target once, windows of
T; summed nats / ln 2 / target bytes by ByteTokenizer.token_bytes) at step 0, after every
--seconds/--evals (3) of training time and at the end, so the curves show; --val-windows N keeps
N evenly spaced windows of the val split (0, the default: all of it). Candidates run one after
another, so the machine should otherwise be quiet. Winner: the lowest final bpb at equal time.

    python bench/model_size.py --seconds 180 --threads 2 [--json]
    python bench/model_size.py --configs XS:64:2:2,S:128:4:4,M:256:6:8 --seconds 300
Not a test; exit 2 when the corpus is missing.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np

from crawler.ingest.data import DataError, WindowSampler, eval_windows, load_corpus
from crawler.ingest.tokenizer import ByteTokenizer
from engine import ConfigError, ModelConfig, TrainConfig, Trainer

LN2 = math.log(2.0)
DATA_SEED = TrainConfig().seed  # the daemon's and `train`'s default
DEFAULT_CONFIGS = "XS:64:2:2,S:128:4:4,S+:192:4:6,M:256:6:8"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--configs", default=DEFAULT_CONFIGS, help=f"NAME:d_model:layers:heads,... (default {DEFAULT_CONFIGS})")
    p.add_argument("--seconds", type=float, default=180.0, help="training time per candidate (default 180)")
    p.add_argument("--evals", type=int, default=3, help="evaluations during the budget, the last at its end (default 3)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--context", type=int, default=128)
    p.add_argument("--batch-size", type=int, default=16)
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--corpus", default="../shared/corpus/shakespeare", help="a folder with train/ and val/")
    p.add_argument("--val-windows", type=int, default=0, help="evenly spaced val windows to use; 0 = all")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    return p.parse_args(argv)


def parse_configs(text: str) -> list[tuple[str, int, int, int]]:
    out = []
    for item in text.split(","):
        try:
            name, d, layers, heads = item.split(":")
            out.append((name, int(d), int(layers), int(heads)))
        except ValueError:
            raise ConfigError(f"--configs item {item!r} must be NAME:d_model:layers:heads") from None
    return out


def val_batches(tokens: np.ndarray, T: int, B: int, keep: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """All of eval_windows, or `keep` evenly spaced full windows of it, in batches of B."""
    batches = list(eval_windows(tokens, T, B))
    if not keep:
        return batches
    full = [b for b in batches if b[0].shape[1] == T]
    x, y = np.concatenate([b[0] for b in full]), np.concatenate([b[1] for b in full])
    rows = np.unique(np.linspace(0, x.shape[0] - 1, min(keep, x.shape[0])).astype(np.int64))
    return [(x[rows[i:i + B]], y[rows[i:i + B]]) for i in range(0, rows.size, B)]


def run_candidate(args, name, d, layers, heads, sampler, batches, val_bytes) -> dict:
    model = ModelConfig(vocab_size=ByteTokenizer.vocab_size, context_length=args.context,
                        d_model=d, n_layer=layers, n_head=heads).validate()
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
            nats = sum(trainer.evaluate(x, y)[0] for x, y in batches)
            curve.append({"seconds": round(trained, 2), "step": steps, "bpb": nats / LN2 / val_bytes,
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
    return {"config": name, "d_model": d, "n_layer": layers, "n_head": heads, "params": params, "steps": steps,
            "train_seconds": round(trained, 2), "tokens_per_s": round(steps * args.batch_size * args.context / trained, 1),
            "val_bpb": curve[-1]["bpb"], "curve": curve}


def main(argv=None) -> int:
    args = parse_args(argv)
    corpus = Path(args.corpus)
    if not (corpus / "train").is_dir() or not (corpus / "val").is_dir():
        print(f"bench/model_size.py: corpus not found: {corpus} needs train/ and val/ folders", file=sys.stderr)
        return 2
    try:
        if min(args.seconds, args.evals, args.threads) <= 0:
            raise ConfigError("--seconds, --evals and --threads must be positive")
        configs = parse_configs(args.configs)
        train_tokens = load_corpus([corpus / "train"]).tokens
        val_tokens = load_corpus([corpus / "val"]).tokens
        sampler = WindowSampler(train_tokens, args.context, args.batch_size, seed=DATA_SEED)
        batches = val_batches(val_tokens, args.context, args.batch_size, args.val_windows)
        val_bytes = sum(ByteTokenizer().token_bytes(y) for _, y in batches)
        rows = [run_candidate(args, *c, sampler, batches, val_bytes) for c in configs]
    except (ConfigError, DataError) as exc:
        print(f"bench/model_size.py: {exc}", file=sys.stderr)
        return 2
    winner = min(rows, key=lambda r: r["val_bpb"])
    report = {"recipe": {"context": args.context, "batch_size": args.batch_size, "lr": args.lr, "warmup": args.warmup,
                         "schedule": "constant", "threads": args.threads, "data_seed": DATA_SEED},
              "seconds": args.seconds, "corpus": str(corpus), "train_tokens": int(train_tokens.size),
              "val_bytes": int(val_bytes), "rows": rows, "winner": winner["config"]}
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
          f"({winner['val_bpb']:.4f} bpb on {val_bytes:,} val bytes)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
