"""The optimizer step's share of a training step: AdamW against Muon, side by side in one run.

At the daemon's default size and architecture (crawler.config.DAEMON_DEFAULTS: size S of
engine.sizes, d=128, L=4, H=4, rotary positions; the byte tokenizer's V=257, T=128, batch 16) on
--threads (2) workers, one Trainer per variant (AdamW;
Muon at each of --ns-steps, default 5 and 3) steps on the same random byte batches, the variants
taking turns step by step so that a busy machine slows them alike. Two untimed steps each first
(numba cache load, first-call allocations). Per variant: mean step time (StepStats.seconds), mean
update phase (StepStats.update_seconds: the slowest worker's clip and optimizer update), its
share of the step, and the Newton-Schulz rate it implies (flops of the slowest worker's
matrices over the update time, an underestimate: the update also runs momentum and AdamW).

    python bench/muon_step.py [--steps 15] [--threads 2] [--ns-steps 5,3]
Not a test; a one-off measurement, under a minute on 2 cores.
"""

from __future__ import annotations

import argparse

import numpy as np

from crawler.config import DAEMON_DEFAULTS
from engine import BYTE_VOCAB_SIZE, ModelConfig, TrainConfig, Trainer
from engine.muon import orthogonalisation_flops


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--steps", type=int, default=15)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--ns-steps", default="5,3")
    args = p.parse_args(argv)

    model = ModelConfig(vocab_size=BYTE_VOCAB_SIZE, **DAEMON_DEFAULTS["model"])
    base = TrainConfig(**DAEMON_DEFAULTS["train"], threads=args.threads)
    # the daemon's default optimizer is Muon: the AdamW variant asks for AdamW by name
    variants = [("adamw", TrainConfig(**(base.to_dict() | {"optimizer": "adamw"})))] + [
        (f"muon ns={n}", TrainConfig(**(base.to_dict() | {"optimizer": "muon", "ns_steps": int(n)})))
        for n in args.ns_steps.split(",")
    ]
    trainers = [(name, Trainer(model, tc.validate(model))) for name, tc in variants]
    stats: dict[str, list] = {name: [] for name, _ in trainers}
    try:
        rng = np.random.default_rng(0)
        B, T = base.batch_size, base.seq_len
        for step in range(2 + args.steps):
            x = rng.integers(0, BYTE_VOCAB_SIZE, (B, T + 1)).astype(np.int32)
            for name, trainer in trainers:
                s = trainer.step(x[:, :-1], x[:, 1:])
                if step >= 2:
                    stats[name].append((s.seconds, s.update_seconds))
        print(f"d={model.d_model} L={model.n_layer} H={model.n_head} T={T} B={B} threads={args.threads}, "
              f"{args.steps} steps each, means:")
        for name, trainer in trainers:
            step_s, update_s = np.mean(stats[name], axis=0)
            owned = [trainer.matrices[task.matrices] for task in trainer.tasks]
            flops = max(sum(orthogonalisation_flops(r, c, trainer.train_config.ns_steps) for _, r, c in o)
                        for o in owned)
            rate = f", {flops / update_s / 1e9:.1f} GFLOP/s in the slowest worker's update" if flops else ""
            print(f"  {name:10s} step {step_s * 1e3:7.1f} ms, update {update_s * 1e3:6.2f} ms "
                  f"({100 * update_s / step_s:4.1f} % of the step){rate}")
    finally:
        for _, trainer in trainers:
            trainer.close()


if __name__ == "__main__":
    main()
