"""Generation speed: tokens/s of the engine's KV-cache generator against PyTorch's, batch 1.

For each size (crystalline bench's S, M, L shapes, byte vocabulary, the architecture of the
daemon's defaults unless --gpt2) and each thread count, both sides get the same random weights
and feed the same context_length token ids one at a time from an empty cache, and the time per
token is the median over --rounds passes (one untimed pass first). The engine side is
`engine.sample.Generator.feed` (what `crystalline generate` and the daemon's page run; numpy
float32 with the BLAS threads limited by threadpoolctl); the PyTorch side is
`TorchGPT.next_logits` (crawler/bench/torch_reference.py) under torch.inference_mode() with
torch.set_num_threads. The last logits of both are compared, so that the two compute the same
thing. Sampling (a softmax and a draw over 257 values) is left out of both.

    python bench/generation.py [--sizes S,M,L] [--threads 1,2] [--rounds 5]
Not a test: the machine should otherwise be quiet.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import time

import numpy as np
from threadpoolctl import threadpool_limits

from crawler.bench.throughput import CONFIGS
from crawler.bench.torch_reference import TorchGPT, require_torch
from crawler.config import Config
from engine.layout import init_parameters
from engine.sample import Generator


def model_for(name: str, gpt2: bool):
    config = CONFIGS[name].model_config()
    if not gpt2:  # the daemon's architecture options, at this size
        daemon = Config().model
        options = {f: getattr(daemon, f) for f in ("positions", "norm", "qk_norm", "activation", "logit_softcap",
                                                    "tie_head", "zero_init_proj")}
        config = dataclasses.replace(config, **options).validate()
    return config


def time_engine(config, params, tokens, rounds: int) -> tuple[float, np.ndarray]:
    generator = Generator(config, params)
    times = []
    for r in range(rounds + 1):
        generator.reset()
        t0 = time.perf_counter()
        for token in tokens:
            logits = generator.feed([int(token)])
        if r:
            times.append((time.perf_counter() - t0) / len(tokens))
    return statistics.median(times), logits


def time_torch(config, params, tokens, rounds: int) -> tuple[float, np.ndarray]:
    torch = require_torch()
    model = TorchGPT.from_flat(config, params)
    times = []
    with torch.inference_mode():
        for r in range(rounds + 1):
            cache = model.new_cache()
            t0 = time.perf_counter()
            for token in tokens:
                logits = model.next_logits(int(token), cache)
            if r:
                times.append((time.perf_counter() - t0) / len(tokens))
    return statistics.median(times), logits.numpy()


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sizes", default="S,M,L")
    p.add_argument("--threads", default="1,2")
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--gpt2", action="store_true", help="GPT-2's architecture instead of the daemon's defaults")
    args = p.parse_args(argv)
    torch = require_torch()
    print("| size | params | threads | engine tokens/s | torch tokens/s | engine/torch | max logit diff |")
    print("|---|---|---|---|---|---|---|")
    for name in args.sizes.split(","):
        config = model_for(name, args.gpt2)
        params = init_parameters(config)
        params += np.random.default_rng(0).standard_normal(params.size).astype(np.float32) * np.float32(0.02)
        tokens = np.random.default_rng(1).integers(0, config.vocab_size, config.context_length)
        for threads in (int(t) for t in args.threads.split(",")):
            torch.set_num_threads(threads)
            with threadpool_limits(limits=threads):
                ours, ours_logits = time_engine(config, params, tokens, args.rounds)
            theirs, their_logits = time_torch(config, params, tokens, args.rounds)
            diff = float(np.max(np.abs(ours_logits - their_logits)))
            print(f"| {name} | {params.size:,} | {threads} | {1 / ours:,.0f} | {1 / theirs:,.0f} | "
                  f"{theirs / ours:.2f}x | {diff:.1e} |", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
