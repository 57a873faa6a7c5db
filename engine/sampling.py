"""The settings of a completion, defined once: their defaults, their bounds and their check.

`crystalline generate` builds its flags from them, the daemon's POST /api/generate checks a
request against them, and sample.py checks them again before it draws. One set of bounds; two
sets of defaults, because the two places ask for different things: a terminal prints the model
as it is (temperature 1, 256 tokens), the page's prompt box a shorter, slightly cooler completion
that reads well while training goes on (0.8, 200).
Not the sampler (sample.py draws the tokens) and not a server's limits (the daemon caps a page's
completion at `[http] max_new_tokens`, below the bound here). Relies on the standard library and
config.py's ConfigError only, so the command line reads it without loading numpy or numba.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields

from .config import ConfigError


@dataclass(frozen=True)
class Bound:
    """The values a setting may take: [low, high], or (low, high] when low_open."""

    low: float
    high: float = math.inf
    low_open: bool = False

    def admits(self, value: float) -> bool:
        """Is `value` inside? NaN never is."""
        above = value > self.low if self.low_open else value >= self.low
        return above and value <= self.high

    def below(self, cap: float) -> Bound:
        """The same bound with its top lowered to `cap` (a server's own limit)."""
        return Bound(self.low, min(self.high, cap), self.low_open)

    def __str__(self) -> str:
        low = f"{'>' if self.low_open else '>='} {_number(self.low)}"
        if math.isinf(self.high):
            return low
        return f"in {'(' if self.low_open else '['}{_number(self.low)}, {_number(self.high)}]"


def _number(value: float) -> str:
    return str(value) if isinstance(value, int) else f"{value:g}"


BOUNDS = {
    "max_new_tokens": Bound(0),  # 0 adds nothing to the prompt
    "temperature": Bound(0.0, 10.0),  # 0 is greedy; beyond 10 every token is about equally likely
    "top_k": Bound(0, 1 << 20),  # 0 is off, and so is any k >= V (a tokenizer has at most 2**20 ids)
    "top_p": Bound(0.0, 1.0, low_open=True),  # 1 is off
    "seed": Bound(0, 2**63 - 1),  # one signed 64-bit integer, as a JSON client can send it
}
MEANING = {"temperature": " (0 means greedy)", "top_k": " (0 means off)", "top_p": " (1 means off)"}


def check_setting(name: str, value: float, bound: Bound | None = None) -> None:
    """ConfigError (a ValueError) naming the setting and its bound, BOUNDS[name] unless `bound`
    is given, when `value` lies outside it."""
    bound = BOUNDS[name] if bound is None else bound
    if not bound.admits(value):
        raise ConfigError(f"{name} ({value}) must be {bound}{MEANING.get(name, '')}")


@dataclass(frozen=True)
class SampleConfig:
    """What one completion asks for. The defaults are the terminal's; PAGE_SAMPLING has the page's."""

    max_new_tokens: int = 256
    temperature: float = 1.0  # the model's own distribution
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0  # the same checkpoint, prompt and seed give the same completion

    def validate(self, max_new_tokens: int | None = None) -> SampleConfig:
        """self when every field is inside BOUNDS, and max_new_tokens at most the caller's cap
        when one is given; ConfigError naming the first field that is not."""
        for field in fields(self):
            bound = BOUNDS[field.name]
            if field.name == "max_new_tokens" and max_new_tokens is not None:
                bound = bound.below(max_new_tokens)
            check_setting(field.name, getattr(self, field.name), bound)
        return self


TERMINAL_SAMPLING = SampleConfig()  # `crystalline generate`
PAGE_SAMPLING = SampleConfig(max_new_tokens=200, temperature=0.8)  # POST /api/generate, the page's prompt box
