"""Result rows of the bench/ scripts: one JSON line a finished run, naming the commit it was
measured on.

A row records `revision` (the commit, HEAD) and `dirty` (whether a tracked file differed from it
before or after the run, or HEAD moved in between). `ResultLog` refuses a row from a dirty tree
unless the script was told --allow-dirty; changes under bench/results/, the rows themselves, do
not count. Rows written before this module recorded "COMMIT+dirty" in `revision`; `is_dirty`
reads both. Relies on git (a subprocess) and the standard library only.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # the checkout: bench/ beside crawler/
RESULTS = REPO / "bench" / "results"




@dataclass(frozen=True)
class Revision:
    """The commit a tree is at, and whether it has uncommitted changes (bench/results/ aside)."""

    commit: str | None  # None where git cannot say (not a checkout, no git)
    dirty: bool


def read_revision(repo: Path = REPO) -> Revision:
    """The checkout's HEAD and whether a tracked file differs from it. Untracked files and
    bench/results/ do not count; a tree git cannot read counts as dirty."""
    def git(*args: str) -> str:
        return subprocess.run(["git", *args], cwd=repo, capture_output=True, text=True, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        changes = git("status", "--porcelain", "--untracked-files=no", "--", ".", ":(exclude)bench/results")
    except (OSError, subprocess.CalledProcessError):
        return Revision(None, True)
    return Revision(commit, bool(changes))


def is_dirty(row: Mapping[str, Any]) -> bool:
    """Whether a row was measured on a dirty tree: `dirty`, or an older row's "+dirty" revision."""
    return bool(row.get("dirty")) or str(row.get("revision") or "").endswith("+dirty")


class DirtyTree(Exception):
    """A row measured on a tree with uncommitted changes, without --allow-dirty."""


class ResultLog:
    """A JSON-lines file of result rows, one a finished run, keyed by `key` (later rows win).

    `check()` before a run and `append(row, before)` after it: the row records the commit and
    `dirty`, which is true when the tree had changes at either look or HEAD moved in between.
    Both raise DirtyTree for a dirty tree unless `allow_dirty`. An append is flushed and fsynced.
    """

    def __init__(self, path: str | os.PathLike[str], allow_dirty: bool = False, repo: Path = REPO):
        self.path, self.allow_dirty, self.repo = Path(path), allow_dirty, repo

    def check(self) -> Revision:
        """The tree as it is now; DirtyTree when it has changes and dirty rows are not allowed."""
        revision = read_revision(self.repo)
        if revision.dirty and not self.allow_dirty:
            raise DirtyTree(f"{self.repo} has uncommitted changes (git status): commit them, or pass "
                            "--allow-dirty to record rows marked dirty")
        return revision

    def append(self, row: dict[str, Any], before: Revision) -> dict[str, Any]:
        """Write `row` with `revision` and `dirty`; returns what was written."""
        after = read_revision(self.repo)
        dirty = before.dirty or after.dirty or after.commit != before.commit
        if dirty and not self.allow_dirty:
            raise DirtyTree(f"the tree changed during the run (at {before.commit}, now {after.commit}"
                            f"{' with uncommitted changes' if after.dirty else ''}): not recorded without --allow-dirty")
        written = row | {"revision": before.commit, "dirty": dirty}
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.path, "a") as f:
            f.write(json.dumps(written) + "\n")
            f.flush()
            os.fsync(f.fileno())
        return written

    def rows(self) -> list[dict[str, Any]]:
        """Every row in file order; a line that is not a JSON object is reported and left out."""
        rows = []
        if self.path.exists():
            for number, line in enumerate(self.path.read_text().splitlines(), 1):
                with contextlib.suppress(json.JSONDecodeError):
                    if isinstance(row := json.loads(line), dict):
                        rows.append(row)
                        continue
                if line.strip():
                    print(f"{self.path}:{number}: not a result row, left out", file=sys.stderr)
        return rows

    def latest(self, key: str = "key") -> dict[str, dict[str, Any]]:
        """The last row of each `key` value."""
        return {row[key]: row for row in self.rows() if key in row}


def add_result_flags(parser: argparse.ArgumentParser, file: str) -> None:
    """--results (default bench/results/FILE), --force and --allow-dirty."""
    parser.add_argument("--results", type=Path, default=RESULTS / file,
                        help=f"JSON-lines results file (default bench/results/{file})")
    parser.add_argument("--force", action="store_true", help="run keys already in the results again")
    parser.add_argument("--allow-dirty", action="store_true",
                        help="record rows measured on a tree with uncommitted changes, marked dirty")
