"""The README's Layout section names every module of the product, so a newcomer finds each room.

A module counts as named when its stem appears in backquotes in the section (`supervisor`,
`queue.py`, `crawler/service/http/`'s modules by their stems). Migrations are history, not
modules a reader needs, and package __init__ files are named by their folder.
"""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("engine", "storage", "crawler")


def layout_section() -> str:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    start = text.index("\n## Layout")
    end = text.find("\n## ", start + 1)
    return text[start:] if end < 0 else text[start:end]


def named(section: str) -> set[str]:
    """Every name in backquotes, and each path segment and stem of a backquoted path."""
    names = set()
    for quoted in re.findall(r"`([^`]+)`", section):
        for part in re.split(r"[/\s,]+", quoted):
            if part:
                names.add(part)
                names.add(part.removesuffix(".py"))
    return names


def test_every_module_is_named_in_the_layout():
    section = named(layout_section())
    missing = sorted(str(path.relative_to(ROOT)) for package in PACKAGES for path in (ROOT / package).rglob("*.py")
                     if path.stem != "__init__" and "migrations" not in path.parts and path.stem not in section)
    assert missing == []


def test_the_check_sees_a_missing_module():
    assert "queue" in named("- `storage/` the store: `queue.py` the front")
    assert "reads" not in named("- `storage/` the store: `queue.py` the front")
