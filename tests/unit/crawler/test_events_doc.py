"""Every event the crawler logs is documented in docs/EVENTS.md, by the name it is logged under."""

import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[3]
LOGGED = re.compile(r"""\b(?:log|_log|logger)\.(?:debug|info|warning|error|exception)\(\s*["']([a-z_]+)["']""")


def logged_events() -> set[str]:
    names = set()
    for path in (REPO / "crawler").rglob("*.py"):
        names |= set(LOGGED.findall(path.read_text(encoding="utf-8")))
    return names


def test_every_logged_event_is_documented():
    documented = set(re.findall(r"`([a-z_]+)`", (REPO / "docs" / "EVENTS.md").read_text(encoding="utf-8")))
    names = logged_events()
    assert {"eval_finished", "training_plateaued", "best_checkpoint_saved", "file_ingested"} <= names
    assert sorted(names - documented) == []
