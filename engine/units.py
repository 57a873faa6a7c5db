"""Units of the loss: the engine's losses are in nats (natural logarithms); a held-out figure is
reported in bits per byte of text, so that models with different tokenizers compare directly.

The one definition of ln 2 for the engine, the crawler and the benchmarks. The bytes are the
tokenizer's to count (crawler.ingest.tokenizer's `token_bytes`); this module knows only the
arithmetic.
"""

from __future__ import annotations

import math

LN2 = math.log(2.0)  # nats per bit


def bits_per_byte(nats: float, n_bytes: int) -> float:
    """Summed nats over the targets, as bits per byte of the text they stand for."""
    return nats / LN2 / n_bytes
