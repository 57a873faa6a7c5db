"""Learning per wall-clock second: the engine against PyTorch eager, on real text.

Trains size S of engine.sizes (byte tokenizer, V=257, d=128, L=4, H=4, T=128, B=16; GPT-2 with
AdamW betas (0.9, 0.95),
weight decay 0.1 on the engine's DECAYED tensors, global-norm clip 1.0, linear warmup then cosine
or constant) twice from the SAME initial parameters on the SAME batches (WindowSampler over
CORPUS/train, fixed seed): once with engine.Trainer, once with PyTorch eager (TorchGPT,
torch.optim.AdamW with the same param groups, lr set every step from engine.schedule.learning_rate,
clip_grad_norm_). Both use --threads threads. They run alternately in chunks of --eval-every
steps (engine chunk, torch chunk, ...), so both see the same machine load.

At step 0, after every chunk and at the end, each model is evaluated on all of CORPUS/val
(crawler.bench.harness.held_out: every target once, windows of 128): bits per byte = summed nats
/ ln 2 / target bytes (EOD targets count 0 bytes). Seconds are training time
only: evaluation is excluded, and one untimed warm-up step on a throwaway copy of each model
(numba compile or cache load, torch's first-call allocations) runs before the clock starts.

Summary: at equal steps, the relative difference of the final bpb; at equal wall-clock time,
both bpbs at t = the engine's total training time when torch took longer (torch's bpb linearly
interpolated in training seconds between its two eval points around t), else at torch's total
(the engine's curve interpolated the same way).

Not a test; needs PyTorch (pip install -e '.[bench]'). Exit 2 when the corpus or torch is missing.
    python bench/learning.py --steps 1000 --threads 2 --eval-every 100
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from crawler.bench.harness import DEFAULT_CORPUS, corpus_folder, held_out, load_tokens
from crawler.ingest.data import DataError, WindowSampler
from crawler.ingest.tokenizer import ByteTokenizer
from engine import ConfigError, ModelConfig, TrainConfig, Trainer, init_parameters
from engine.sizes import SIZES


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description="Held-out bits per byte vs training time: engine and PyTorch.")
    parser.add_argument("--steps", type=int, default=1000, help="optimizer steps for each (default 1000)")
    parser.add_argument("--threads", type=int, default=2, help="engine workers and torch threads (default 2)")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="folder with train/ and val/")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--warmup", type=int, default=100)
    parser.add_argument("--schedule", choices=("cosine", "constant"), default="cosine")
    parser.add_argument("--eval-every", type=int, default=100, help="chunk length and eval interval")
    parser.add_argument("--json", action="store_true", help="print one JSON object instead of a table")
    # not in --help: shrink size S for smoke runs.
    for flag, default in (("--d-model", SIZES["S"].d_model), ("--layers", SIZES["S"].n_layer),
                          ("--heads", SIZES["S"].n_head), ("--context", 128), ("--batch-size", 16)):
        parser.add_argument(flag, type=int, default=default, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def value_at(curve: list[tuple[float, float]], t: float) -> float:
    """The bpb of a (seconds, bpb) curve at time t: linear between the two points around t."""
    for (t0, b0), (t1, b1) in zip(curve, curve[1:]):
        if t0 <= t <= t1:
            return b1 if t1 == t0 else b0 + (b1 - b0) * (t - t0) / (t1 - t0)
    return curve[-1][1]


def torch_side(model_config: ModelConfig, train: TrainConfig, params):
    """(step(x, y, s), nats(x, y)) closures over a TorchGPT and its AdamW."""
    from crawler.bench.torch_reference import TorchGPT, torch_optimizer, train_step
    from engine.schedule import learning_rate

    model = TorchGPT.from_flat(model_config, params)
    optimizer = torch_optimizer(model, train)  # AdamW: the recipe's optimizer

    def step(x, y, s):
        train_step(model, optimizer, x, y, train.grad_clip, learning_rate(train, s))

    return step, model.nats


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        corpus = corpus_folder(args.corpus)
    except ValueError as exc:
        print(f"bench/learning.py: {exc}", file=sys.stderr)
        return 2
    try:
        import torch
    except ImportError:
        print("bench/learning.py: PyTorch is needed: pip install -e '.[bench]'", file=sys.stderr)
        return 2
    try:
        if min(args.steps, args.threads, args.eval_every) < 1:
            raise ConfigError("--steps, --threads and --eval-every must be at least 1")
        model_config = ModelConfig(vocab_size=ByteTokenizer.vocab_size, context_length=args.context,
                                   d_model=args.d_model, n_layer=args.layers, n_head=args.heads).validate()
        train = TrainConfig(batch_size=args.batch_size, seq_len=args.context, learning_rate=args.lr,
                            warmup_steps=args.warmup, schedule=args.schedule, total_steps=args.steps,
                            threads=args.threads).validate(model_config)
        train_tokens = load_tokens(corpus, "train")
        val = held_out(load_tokens(corpus, "val"), train.seq_len, train.batch_size)
        sampler = WindowSampler(train_tokens, train.seq_len, train.batch_size, train.seed)
    except (ConfigError, DataError) as exc:
        print(f"bench/learning.py: {exc}", file=sys.stderr)
        return 2
    params = init_parameters(model_config)
    bpb = val.bits_per_byte

    # untimed warm-up on throwaway copies: numba's compile (or cache load), torch's first call.
    x0, y0 = sampler.batch(0)
    with Trainer(model_config, train, params=params) as scratch:
        scratch.step(x0, y0)
        scratch.evaluate(x0[:1], y0[:1])
    torch.set_num_threads(args.threads)
    scratch_step, _ = torch_side(model_config, train, params)
    scratch_step(x0, y0, 0)

    trainer = Trainer(model_config, train, params=params)
    torch.set_num_threads(args.threads)  # again, in case the engine's BLAS limit touched torch's pool
    torch_step, torch_nats = torch_side(model_config, train, params)
    engine_s = torch_s = 0.0
    start_bpb = (bpb(lambda x, y: trainer.evaluate(x, y)[0]), bpb(torch_nats))
    rows = [{"step": 0, "engine_s": 0.0, "engine_bpb": start_bpb[0], "torch_s": 0.0, "torch_bpb": start_bpb[1]}]
    marks = list(range(0, args.steps, args.eval_every)) + [args.steps]
    try:
        for first, stop in zip(marks, marks[1:]):
            for s in range(first, stop):
                x, y = sampler.batch(s)
                t0 = time.perf_counter()
                trainer.step(x, y)
                engine_s += time.perf_counter() - t0
            engine_bpb = bpb(lambda x, y: trainer.evaluate(x, y)[0])
            for s in range(first, stop):
                x, y = sampler.batch(s)
                t0 = time.perf_counter()
                torch_step(x, y, s)
                torch_s += time.perf_counter() - t0
            rows.append({"step": stop, "engine_s": engine_s, "engine_bpb": engine_bpb,
                         "torch_s": torch_s, "torch_bpb": bpb(torch_nats)})
            if not args.json:
                print(f"step {stop}: engine {engine_s:.1f} s {engine_bpb:.4f}, torch {torch_s:.1f} s "
                      f"{rows[-1]['torch_bpb']:.4f}", file=sys.stderr, flush=True)
    finally:
        trainer.close()

    final = rows[-1]
    engine_curve = [(r["engine_s"], r["engine_bpb"]) for r in rows]
    torch_curve = [(r["torch_s"], r["torch_bpb"]) for r in rows]
    if torch_s >= engine_s:
        at, how = engine_s, "torch took longer: torch's bpb at the engine's total time, linear in seconds"
    else:
        at, how = torch_s, "engine took longer: the engine's bpb at torch's total time, linear in seconds"
    summary = {
        "final_engine_bpb": final["engine_bpb"],
        "final_torch_bpb": final["torch_bpb"],
        "equal_steps_relative_difference": (final["engine_bpb"] - final["torch_bpb"]) / final["torch_bpb"],
        "torch_over_engine_seconds": torch_s / engine_s if engine_s else None,
        "equal_time_s": at,
        "equal_time_engine_bpb": value_at(engine_curve, at),
        "equal_time_torch_bpb": value_at(torch_curve, at),
        "equal_time_method": how,
    }
    report = {
        "config": {**model_config.to_dict(), "batch_size": train.batch_size, "seq_len": train.seq_len,
                   "lr": train.learning_rate, "warmup": train.warmup_steps, "schedule": train.schedule,
                   "weight_decay": train.weight_decay, "grad_clip": train.grad_clip, "data_seed": train.seed},
        "threads": args.threads, "torch_threads": torch.get_num_threads(), "torch": torch.__version__,
        "steps": args.steps, "eval_every": args.eval_every, "corpus": str(corpus),
        "train_tokens": int(train_tokens.size), "val_bytes": val.n_bytes, "rows": rows, "summary": summary,
    }
    if args.json:
        print(json.dumps(report, indent=2))
        return 0
    print(f"{'step':>6}  {'engine s':>9}  {'engine bpb':>10}  {'torch s':>9}  {'torch bpb':>10}")
    for r in rows:
        print(f"{r['step']:>6}  {r['engine_s']:>9.1f}  {r['engine_bpb']:>10.4f}  {r['torch_s']:>9.1f}  {r['torch_bpb']:>10.4f}")
    ratio = summary["torch_over_engine_seconds"]
    print(f"\nat {args.steps} steps: engine {final['engine_bpb']:.4f} vs torch {final['torch_bpb']:.4f} bpb "
          f"({100 * summary['equal_steps_relative_difference']:+.2f}% relative); "
          f"torch/engine training time {'-' if ratio is None else f'{ratio:.2f}x'}")
    print(f"after the same wall-clock time ({at:.1f} s): engine {summary['equal_time_engine_bpb']:.4f} vs "
          f"torch {summary['equal_time_torch_bpb']:.4f} bpb ({how})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
