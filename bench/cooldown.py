"""Does a short cool-down pay? Held-out bits per byte of the live weights against a cooled copy.

The daemon trains with a constant rate after warmup (it never knows when it will stop). A
cool-down is a copy of the live weights (and AdamW state) trained K more steps with the rate
decayed linearly from the live rate to 0, as in warmup-stable-decay schedules; the live model
continues undisturbed. This script trains size S of engine.sizes (byte tokenizer, d=128, L=4,
H=4, T=128, B=16; GPT-2 with AdamW, the engine's defaults) with engine.Trainer on CORPUS/train (WindowSampler, fixed seed) at
a constant --lr, and at each of --at steps measures CORPUS/val bits per byte (the first
--val-tokens tokens, every target once) of the live weights and of a cooled copy for each K in
--cooldowns (cool-down batches drawn from the same sampler with another seed), and of an
exponential moving average of the live weights for each decay in --ema (updated after every
step: the cheap alternative, no extra steps). Reported: bpb live, bpb per K and per EMA, and
the gain. Not a test; run on a quiet machine.

    python bench/cooldown.py --at 1000,2000,4000 --cooldowns 100,250,500 --lr 1e-3
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import numpy as np

from crawler.bench.harness import DEFAULT_CORPUS, HeldOut, corpus_folder, held_out, load_tokens
from crawler.ingest.data import DataError, WindowSampler
from engine import TrainConfig, Trainer
from engine.sizes import SIZES


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--at", default="1000,2000,4000", help="live steps at which to measure and cool down")
    p.add_argument("--cooldowns", default="100,250,500", help="cool-down lengths K in steps")
    p.add_argument("--ema", default="", help="EMA decays to track, e.g. 0.999,0.9995 (empty: none)")
    p.add_argument("--lr", type=float, default=1e-3)
    p.add_argument("--warmup", type=int, default=100)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--size", default="S", choices=SIZES, help="a size of engine.sizes (default S)")
    p.add_argument("--val-tokens", type=int, default=131072)
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="a folder with train/ and val/")
    p.add_argument("--json", action="store_true")
    return p.parse_args(argv)


def measure(trainer: Trainer, val: HeldOut) -> float:
    return val.bits_per_byte(lambda x, y: trainer.evaluate(x, y)[0])


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        corpus = corpus_folder(args.corpus)
        train_tokens = load_tokens(corpus, "train")
        val_tokens = load_tokens(corpus, "val")[: args.val_tokens + 1]
    except (ValueError, DataError) as exc:
        print(f"bench/cooldown.py: {exc}", file=sys.stderr)
        return 2
    model = SIZES[args.size].model_config()
    recipe = TrainConfig(learning_rate=args.lr, warmup_steps=args.warmup, schedule="constant",
                         threads=args.threads).validate(model)
    sampler = WindowSampler(train_tokens, recipe.seq_len, recipe.batch_size, recipe.seed)
    cool_sampler = WindowSampler(train_tokens, recipe.seq_len, recipe.batch_size, recipe.seed + 1)
    val = held_out(val_tokens, recipe.seq_len, recipe.batch_size)
    marks = sorted(int(x) for x in args.at.split(","))
    lengths = sorted(int(x) for x in args.cooldowns.split(",") if x)
    decays = [float(x) for x in args.ema.split(",") if x]
    rows = []
    with Trainer(model, recipe) as trainer:
        started = time.perf_counter()
        emas = [trainer.params.copy() for _ in decays]
        for mark in marks:
            while trainer.step_count < mark:
                trainer.step(*sampler.batch(trainer.step_count))
                for ema, decay in zip(emas, decays):
                    ema *= decay
                    ema += (1.0 - decay) * trainer.params
            live = measure(trainer, val)
            saved = (trainer.params.copy(), trainer.m.copy(), trainer.v.copy(), trainer.step_count)
            row = {"step": mark, "live": live, "seconds": time.perf_counter() - started}
            for K in lengths:
                for i in range(K):
                    lr = args.lr * (1.0 - i / K)  # linear to 0 over K steps
                    trainer.step(*cool_sampler.batch(mark * 10 + i), lr=lr)
                row[f"cooled_{K}"] = measure(trainer, val)
                np.copyto(trainer.params, saved[0])
                np.copyto(trainer.m, saved[1])
                np.copyto(trainer.v, saved[2])
                trainer.step_count = saved[3]
            for ema, decay in zip(emas, decays):
                with trainer.parameters_of(ema):
                    row[f"ema_{decay}"] = measure(trainer, val)
            rows.append(row)
            line = "  ".join(f"K={K}: {row[f'cooled_{K}']:.4f} ({row[f'cooled_{K}'] - live:+.4f})" for K in lengths)
            line += "".join(f"  ema {d}: {row[f'ema_{d}']:.4f} ({row[f'ema_{d}'] - live:+.4f})" for d in decays)
            print(f"step {mark}: live {live:.4f}  {line}", flush=True)
    if args.json:
        print(json.dumps({"lr": args.lr, "rows": rows}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
