"""JSON lines off a TTY, console on one; ISO-8601 UTC timestamps; level filtering."""

import io
import json
from datetime import datetime, timezone

import numpy as np
import structlog

from crawler.logging import configure_logging, get_logger


class FakeTTY(io.StringIO):
    def isatty(self) -> bool:
        return True


def teardown_function():
    structlog.reset_defaults()


def test_json_lines_carry_event_level_timestamp_and_fields():
    stream = io.StringIO()
    configure_logging("info", stream=stream)  # a StringIO is not a TTY: JSON
    log = get_logger("trainer")
    log.info("train_step", step=3, loss=np.float32(1.5), tokens=np.int64(2048))
    log.debug("hidden_below_info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["event"] == "train_step" and record["level"] == "info"
    assert record["component"] == "trainer"
    assert record["step"] == 3 and record["loss"] == 1.5 and record["tokens"] == 2048
    stamp = datetime.fromisoformat(record["timestamp"].replace("Z", "+00:00"))
    assert stamp.utcoffset() == timezone.utc.utcoffset(None)
    assert abs((datetime.now(timezone.utc) - stamp).total_seconds()) < 60


def test_console_rendering_on_a_tty_and_debug_level():
    stream = FakeTTY()
    configure_logging("debug", stream=stream)
    get_logger("cli").debug("checkpoint_saved", step=7)
    text = stream.getvalue()
    assert "checkpoint_saved" in text and "step" in text
    assert not text.lstrip().startswith("{"), "console output, not JSON, on a terminal"
