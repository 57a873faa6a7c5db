"""Learning-rate schedules: linear warmup, then cosine decay or a constant rate.

"constant" is the schedule for continuous training (warm up once, then hold; Ibrahim et al. 2024
found this "infinite" schedule better than repeated cosine cycles).
"""

import math

from .config import TrainConfig


def learning_rate(config: TrainConfig, step: int) -> float:
    """The rate for 0-based optimizer step `step`."""
    lr = config.learning_rate
    if step < config.warmup_steps:
        return lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return lr
    min_lr = lr * config.min_lr_ratio
    span = max(1, config.total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / span)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (lr - min_lr)
