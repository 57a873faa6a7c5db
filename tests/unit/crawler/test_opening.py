"""One way to open a state directory: crawler/service/opening.py, used by every command.

The rule is read in the source (ast), so a command that grows its own way in fails here: in
crawler/, only opening.py constructs the state directory's lock or the training lock, opens the
database, or joins the ranks. Then the opener itself: its steps in order, and close() undoing
them, newest first.
"""

import ast
import contextlib
from pathlib import Path

import pytest

from crawler.config import load_config
from crawler.service.opening import OpenedState
from crawler.state.health import DaemonAlreadyRunning

CRAWLER = Path(__file__).resolve().parents[3] / "crawler"
OPENER = CRAWLER / "service" / "opening.py"
# what only the opener may call: the lock, the store, the training lock, the MPI join
OPENING_CALLS = {"DaemonLock", "open_database", "TrainingLock", "join"}


def opening_calls(path: Path, base: Path = CRAWLER.parent) -> list[str]:
    """Calls of OPENING_CALLS names in one module (a method `.join(` of a string or a thread is
    not one: only bare names count, and `join` only where crawler.training.team's is imported)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    team_join = any(isinstance(n, ast.ImportFrom) and (n.module or "").endswith("team")
                    and any(a.name == "join" for a in n.names) for n in ast.walk(tree))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in OPENING_CALLS:
            if node.func.id != "join" or team_join:
                found.append(f"{path.relative_to(base)}:{node.lineno} {node.func.id}(")
    return found


def test_only_the_opener_locks_opens_the_store_or_joins_the_ranks():
    found = [hit for path in sorted(CRAWLER.rglob("*.py")) if path != OPENER for hit in opening_calls(path)]
    assert found == []
    assert {hit.split()[-1] for hit in opening_calls(OPENER)} == {f"{name}(" for name in OPENING_CALLS}


def test_the_rule_can_fail(tmp_path):
    stray = tmp_path / "stray.py"
    stray.write_text("from storage import open_database\n\ndef f(c):\n    return open_database(c)\n")
    assert opening_calls(stray, tmp_path) == ["stray.py:4 open_database("]


def test_steps_in_order_and_close_undoes_them(tmp_path):
    config = load_config(env={}, state_dir=tmp_path / "state")
    with contextlib.closing(OpenedState(config)) as opened:
        assert opened.join(distributed=False) is False and opened.team is None
        opened.lock()
        database, queue = opened.open_store()
        assert (tmp_path / "state" / "corpus.db").is_file() and sum(queue.stats().documents.values()) == 0
        assert opened.hold_training("test") is None  # SQLite: the state directory's lock is it
        with pytest.raises(DaemonAlreadyRunning):  # a second opener of the same state is refused
            OpenedState(config).lock()
    assert opened.state_lock is None and opened.database is None
    again = OpenedState(config)
    again.lock()  # released by close(): a new opener may take it
    again.close()
    again.close()  # idempotent
