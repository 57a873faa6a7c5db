import io
import json
from collections import Counter
from types import SimpleNamespace

from crawler.cli.progress import BarSafeStream, IngestProgress, TrainProgress
from crawler.logging import configure_logging, get_logger


class Terminal(io.StringIO):
    def isatty(self):
        return True


def test_the_ingest_bar_shows_bytes_and_files_on_a_terminal():
    stream = Terminal()
    progress = IngestProgress(files=3, total_bytes=3000, stream=stream)
    counts = Counter()
    for status in ("ingested", "ingested", "skipped"):
        counts[status] += 1
        progress.update(1000, counts)
    progress.close()
    text = stream.getvalue()
    assert "3/3 files: ingested 2, skipped 1" in text
    assert "2.93k/2.93kB" in text or "2.93k/2.93k" in text  # bytes, in units of 1024


def test_no_bar_is_drawn_off_a_terminal():
    stream = io.StringIO()
    progress = IngestProgress(files=1, total_bytes=10, stream=stream)
    progress.update(10, Counter(ingested=1))
    progress.close()
    train = TrainProgress(0, 5, stream=stream)
    train.update(SimpleNamespace(step=5, loss=1.0, tokens_per_s=1000.0, val_bits_per_byte=None))
    train.close()
    assert stream.getvalue() == ""


def test_the_train_bar_shows_the_trainers_figures():
    stream = Terminal()
    progress = TrainProgress(first_step=10, total_steps=20, stream=stream)
    progress.update(SimpleNamespace(step=15, loss=2.3456, tokens_per_s=21500.0, val_bits_per_byte=2.25))
    progress.close()
    text = stream.getvalue()
    assert "15/20" in text and "loss 2.346" in text and "21.5k tok/s" in text and "held-out 2.250 bits/byte" in text


def test_log_lines_pass_whole_through_the_bar_safe_stream():
    stream = Terminal()
    safe = BarSafeStream(stream)
    safe.write("first line\nsecond ")
    safe.write("line\n")
    assert stream.getvalue() == "first line\nsecond line\n"
    assert safe.isatty()


def test_dropped_events_are_not_written_and_others_are():
    stream = io.StringIO()
    try:
        configure_logging("info", json=True, stream=stream, drop=("train_step",))
        log = get_logger("test")
        log.info("train_step", step=1)
        log.info("checkpoint_saved", step=1)
    finally:
        configure_logging("info")
    assert [json.loads(line)["event"] for line in stream.getvalue().splitlines()] == ["checkpoint_saved"]
