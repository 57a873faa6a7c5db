"""The event feed: every log event the window observes, numbered, for the page's event stream.

Whichever thread logs publishes into a ring of the last RING_EVENTS events (as the JSON lines'
text); each GET /api/events reader waits on the ring's condition and is written the events after
its cursor as server-sent events, so a page that reconnects with Last-Event-ID misses nothing
the ring still holds. At most MAX_STREAMS readers at once.
Not the log itself (crawler/logging.py renders and writes events; the window only observes
them), not the request's checks or headers (handler.py). Relies on crawler.logging's serializer,
so a streamed event reads exactly as its logged line.
"""

from __future__ import annotations

import threading
from collections import deque
from typing import BinaryIO

from ...logging import _serialize

RING_EVENTS = 1000  # events kept for a stream that (re)connects with a cursor
MAX_STREAMS = 16  # event streams at once
KEEPALIVE_SECONDS = 15.0


class EventFeed:
    """The last RING_EVENTS events as JSON text, numbered; readers wait on the condition."""

    def __init__(self) -> None:
        self.ring: deque[tuple[int, str]] = deque(maxlen=RING_EVENTS)
        self.seq = 0
        self.cond = threading.Condition()
        self.closed = False
        self.readers = threading.BoundedSemaphore(MAX_STREAMS)

    def publish(self, event: dict) -> None:
        """Called by whichever thread logs: never blocks beyond a short lock."""
        line = _serialize(event)
        with self.cond:
            self.seq += 1
            self.ring.append((self.seq, line))
            self.cond.notify_all()

    def after(self, seq: int, timeout: float) -> list[tuple[int, str]]:
        """Events numbered above `seq`, waiting up to `timeout` for one; [] on timeout or close."""
        with self.cond:
            if self.seq <= seq and not self.closed:
                self.cond.wait(timeout)
            return [item for item in self.ring if item[0] > seq]

    def close(self) -> None:
        """Wake every reader; the window closes the feed when it stops."""
        with self.cond:
            self.closed = True
            self.cond.notify_all()

    def write_stream(self, out: BinaryIO, seq: int, stopping: threading.Event) -> None:
        """Write the events after `seq` to `out` as server-sent events until `stopping` is set,
        with a comment line every KEEPALIVE_SECONDS of quiet; OSError when the reader goes away."""
        out.write(b"retry: 2000\n\n")
        out.flush()
        while not stopping.is_set():
            items = self.after(seq, KEEPALIVE_SECONDS)
            if not items:
                out.write(b": keepalive\n\n")
            for seq, line in items:
                out.write(f"id: {seq}\ndata: {line}\n\n".encode("utf-8"))
            out.flush()
