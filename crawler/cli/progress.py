"""Progress bars on a terminal: what `ingest` and `train` show while they run (tqdm).

A bar is drawn only when its stream is a terminal; elsewhere nothing is drawn, and the JSON event
lines are the whole output, unchanged. While a bar is shown, log lines go through `BarSafeStream`
(tqdm.write clears the bar, prints the line and redraws it), so an event never tears the bar, and
`train_step` events are left to the bar that shows the same figures. Knows nothing of storage or
the engine: it is handed counts and figures.
"""

from __future__ import annotations

import sys
from typing import IO, Any

from tqdm import tqdm

# tqdm's monitor thread only rescues bars that stall between updates; ours update on every step
tqdm.monitor_interval = 0

# events a bar shows in its own line, so they are not printed as log lines while it is drawn
SHOWN_BY_BARS = ("train_step",)


def on_terminal(stream: IO[str]) -> bool:
    isatty = getattr(stream, "isatty", None)
    return bool(isatty is not None and isatty())


class BarSafeStream:
    """A text stream for log lines that writes each complete line with tqdm.write."""

    def __init__(self, stream: IO[str]) -> None:
        self.stream = stream
        self._partial = ""

    def write(self, text: str) -> int:
        self._partial += text
        *lines, self._partial = self._partial.split("\n")
        for line in lines:
            tqdm.write(line, file=self.stream)
        return len(text)

    def flush(self) -> None:
        self.stream.flush()

    def isatty(self) -> bool:
        return on_terminal(self.stream)


class IngestProgress:
    """Bytes of the files walked so far against the total (rate and ETA), and the outcomes."""

    def __init__(self, files: int, total_bytes: int, stream: IO[str] | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.files = files
        self.enabled = on_terminal(stream)
        self.bar = tqdm(total=total_bytes, unit="B", unit_scale=True, unit_divisor=1024, desc="ingest",
                        file=stream, disable=not self.enabled, mininterval=0.2, dynamic_ncols=True)

    def update(self, size: int, counts: Any) -> None:
        """One more file walked (`size` bytes on disk); counts: status -> files so far."""
        if not self.enabled:
            return
        done = sum(counts.values())
        outcomes = ", ".join(f"{status} {counts[status]}" for status in
                             ("ingested", "duplicate", "unchanged", "skipped", "failed") if counts[status])
        self.bar.set_postfix_str(f"{done}/{self.files} files" + (f": {outcomes}" if outcomes else ""), refresh=False)
        self.bar.update(size)

    def close(self) -> None:
        self.bar.close()


class TrainProgress:
    """Steps against the target (when there is one), with loss, tokens/s and the held-out figure."""

    def __init__(self, first_step: int, total_steps: int | None, stream: IO[str] | None = None) -> None:
        stream = stream if stream is not None else sys.stderr
        self.enabled = on_terminal(stream)
        self.bar = tqdm(total=total_steps, initial=first_step, unit="step", desc="train", file=stream,
                        disable=not self.enabled, mininterval=0.5, dynamic_ncols=True)

    def update(self, figures: Any) -> None:
        """Catch up with the trainer's figures (step, loss, tokens_per_s, val_bits_per_byte)."""
        if not self.enabled or figures.step <= self.bar.n:
            return
        parts = []
        if figures.loss is not None:
            parts.append(f"loss {figures.loss:.3f}")
        if figures.tokens_per_s:
            parts.append(f"{figures.tokens_per_s / 1e3:.1f}k tok/s")
        if figures.val_bits_per_byte is not None:
            parts.append(f"held-out {figures.val_bits_per_byte:.3f} bits/byte")
        self.bar.set_postfix_str(", ".join(parts), refresh=False)
        self.bar.update(figures.step - self.bar.n)

    def close(self) -> None:
        self.bar.close()
