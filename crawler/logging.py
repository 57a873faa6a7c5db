"""Structured logging setup: the only module that calls `structlog.configure`.

Every event carries `timestamp` (ISO-8601, UTC), `level` and `event` (a snake_case noun and
past-tense verb, such as `checkpoint_saved`); variable data goes in fields. Off a TTY each event
is one JSON line (orjson when installed, else the standard json module); on a TTY it is rendered
for people by structlog's console renderer. Events go to stdout by default; commands whose stdout
is their result (`generate`, `eval --json`) pass stderr instead. When that stream is the journal
(systemd's JOURNAL_STREAM names its device and inode), each line starts with its syslog priority,
`<4>` for a warning, so that `journalctl -p warning` selects by level; nowhere else.
It is not an event catalogue: the modules that log choose their own events.
"""

from __future__ import annotations

import json as _json
import logging as _stdlib_logging
import os
import sys
from pathlib import PurePath
from typing import IO, Any

import structlog

try:  # optional: faster, and serializes numpy scalars natively
    import orjson
except ImportError:  # pragma: no cover - depends on the environment
    orjson = None

LEVELS = ("debug", "info", "warning", "error", "critical")

# syslog priorities (sd-daemon(3)'s <N> prefixes) by structlog method name; anything else is info
JOURNAL_PRIORITY = {"debug": 7, "info": 6, "msg": 6, "warning": 4, "warn": 4, "error": 3, "exception": 3,
                    "critical": 2, "fatal": 2}


def _default(value: Any) -> Any:
    """JSON fallback for values the serializer does not know: numpy scalars and arrays, paths."""
    if hasattr(value, "item") and getattr(value, "ndim", 1) == 0:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, PurePath):
        return str(value)
    return repr(value)


def _lead_with_event(logger: Any, method: str, event_dict: dict) -> dict:
    """Put timestamp, level and event first, so a JSON line reads like a console line."""
    lead = {key: event_dict.pop(key) for key in ("timestamp", "level", "event") if key in event_dict}
    return {**lead, **event_dict}


def _serialize(event_dict: dict, **_: Any) -> str:
    if orjson is not None:
        option = orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_NON_STR_KEYS
        return orjson.dumps(event_dict, default=_default, option=option).decode()
    return _json.dumps(event_dict, default=_default, ensure_ascii=False)


# fields every event of this process carries (the MPI rank under --distributed)
_process_fields: dict[str, Any] = {}


def set_process_fields(**fields: Any) -> None:
    """Add these fields to every event this process logs from now on (configure_logging's
    processors read them at each event, so the order of the two calls does not matter)."""
    _process_fields.update(fields)


def _add_process_fields(logger: Any, method: str, event_dict: dict) -> dict:
    for key, value in _process_fields.items():
        event_dict.setdefault(key, value)
    return event_dict


def configure_logging(
    level: str = "info", json: bool | None = None, stream: IO[str] | None = None, drop: tuple[str, ...] = (),
    observer: Any = None,
) -> None:
    """Configure structlog for the whole process; safe to call again (the last call wins).

    `json=None` picks JSON lines when `stream` (default stdout) is not a TTY, console output when
    it is. Events named in `drop` are not written (a progress bar shows them instead). An
    `observer` (a structlog processor: the metrics) sees every event from info up, whatever the
    level, before the level decides what is written. Raises ValueError for a level not in LEVELS.
    """
    if level.lower() not in LEVELS:
        raise ValueError(f"log level ({level!r}) must be one of {', '.join(LEVELS)}")
    stream = stream if stream is not None else sys.stdout
    isatty = getattr(stream, "isatty", None)
    on_tty = bool(isatty is not None and isatty())
    if json is None:
        json = not on_tty
    processors: list[Any] = [
        structlog.contextvars.merge_contextvars,
        _add_process_fields,
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True),
        structlog.processors.StackInfoRenderer(),
    ]
    levels = _stdlib_logging.getLevelNamesMapping()
    produced = levels[level.upper()]
    if observer is not None:  # produce info and up for the observer, then write from `level` up
        produced = min(produced, levels["INFO"])
        processors += [observer, _level_gate(levels[level.upper()])]
    if drop:
        processors.insert(0, _dropper(frozenset(drop)))
    if json:
        processors += [
            structlog.processors.format_exc_info,
            _lead_with_event,
            structlog.processors.JSONRenderer(serializer=_serialize),
        ]
    else:
        processors.append(structlog.dev.ConsoleRenderer(colors=on_tty))
    if is_journal(stream):
        processors.append(_journal_prefix)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(produced),
        logger_factory=structlog.PrintLoggerFactory(file=stream),
        # not cached, so a later configure_logging (or structlog.testing.capture_logs) applies
        # to loggers that already exist
        cache_logger_on_first_use=False,
    )


def is_journal(stream: IO[str], environ: Any = None) -> bool:
    """True when `stream` is connected to the journal: JOURNAL_STREAM ("DEVICE:INODE", set by
    systemd for a service's stdout and stderr) names the file `stream` writes to."""
    value = (os.environ if environ is None else environ).get("JOURNAL_STREAM", "")
    try:
        device, inode = (int(part) for part in value.split(":"))
        st = os.fstat(stream.fileno())
    except (ValueError, OSError, AttributeError):  # unset or malformed; a stream with no file
        return False
    return (st.st_dev, st.st_ino) == (device, inode)


def _journal_prefix(logger: Any, method: str, rendered: str) -> str:
    """After the renderer: `<N>` before the line, read (and removed) by journald as its priority."""
    return f"<{JOURNAL_PRIORITY.get(method, 6)}>{rendered}"


def _level_gate(least: int):
    levels = _stdlib_logging.getLevelNamesMapping()

    def gate(logger: Any, method: str, event_dict: dict) -> dict:
        if levels.get(method.upper(), levels["INFO"]) < least:
            raise structlog.DropEvent
        return event_dict

    return gate


def _dropper(names: frozenset[str]):
    def drop_named(logger: Any, method: str, event_dict: dict) -> dict:
        if event_dict.get("event") in names:
            raise structlog.DropEvent
        return event_dict

    return drop_named


def get_logger(component: str) -> Any:
    """A structlog logger with `component=` bound (watcher, ingest, trainer, storage, cli...)."""
    return structlog.get_logger().bind(component=component)
