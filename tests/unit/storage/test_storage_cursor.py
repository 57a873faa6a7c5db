"""The cursor has one writer (training_state._set_cursor), and the documents' statuses follow it
whichever command moves it: a document in the stream is 'trained' exactly when it ends at or
before the cursor."""

import ast
from pathlib import Path

import sqlalchemy as sa

import storage
from storage.models import documents

STORAGE = Path(storage.__file__).parent


def statuses(queue) -> dict[int, str]:
    with queue.database.read() as connection:
        query = sa.select(documents.c.stream_end, documents.c.status).where(documents.c.stream_end.is_not(None))
        return {int(end): status for end, status in connection.execute(query)}


def assert_statuses_follow_the_cursor(queue):
    position = queue.cursor().stream_position
    assert statuses(queue) == {end: "trained" if end <= position else "queued" for end in statuses(queue)}


def test_every_cursor_write_moves_the_statuses_with_it(queue, add):
    ends = [add(queue, f"/{name}.txt", [i + 1] * 10).stream_end for i, name in enumerate("abc")]  # 10, 20, 30
    queue.commit_checkpoint(step=5, path="cp5", stream_position=ends[1], tokens_trained=20)
    assert_statuses_follow_the_cursor(queue)
    # a restored file behind the newest row: the row at step 5 (position 20) stays, its id lower
    queue.restore_checkpoint(step=9, path="cp9", stream_position=ends[0], tokens_trained=10)
    assert_statuses_follow_the_cursor(queue)
    # rewinding to that row moves the cursor forward: what lies behind it is trained
    queue.rewind_to(next(c.id for c in queue.checkpoints() if c.step == 5))
    assert queue.cursor().stream_position == ends[1]
    assert_statuses_follow_the_cursor(queue)
    queue.commit_checkpoint(step=12, path="cp12", stream_position=ends[2], tokens_trained=30)
    assert_statuses_follow_the_cursor(queue)
    queue.reset_training()
    assert queue.cursor().stream_position == 0
    assert_statuses_follow_the_cursor(queue)


def cursor_writes() -> list[str]:
    """module:function of every training_cursor.update/insert/delete in storage/*.py."""
    found = []
    for path in sorted(STORAGE.glob("*.py")):
        for function in ast.walk(ast.parse(path.read_text())):
            if isinstance(function, ast.FunctionDef):
                found += [f"{path.stem}:{function.name}" for node in ast.walk(function)
                          if isinstance(node, ast.Attribute) and node.attr in ("update", "insert", "delete")
                          and isinstance(node.value, ast.Name) and node.value.id == "training_cursor"]
    return found


def test_only_set_cursor_writes_the_cursor_row():
    assert cursor_writes() == ["training_state:_set_cursor"]
