"""The daemon as a child process (crawler.service.child), on a stand-in child that writes a few
lines and then waits: which lines become events, the waits (from the start, after an event, a
child that exits first, a time that runs out) and the stop."""

import signal
import sys
import textwrap

import pytest

from crawler.service.child import ChildFailed, DaemonChild

LINES = textwrap.dedent("""
    import json, signal, sys
    print("a console line, not JSON")
    print(json.dumps({"event": "a", "n": 1}))
    print("[1, 2]")  # JSON, but no event
    print(json.dumps({"event": "b"}))
    print(json.dumps({"event": "a", "n": 2}), flush=True)
    if sys.argv[1:] != ["--exit"]:
        signal.pause()  # until the test's stop or kill
""")


class StandIn(DaemonChild):
    def command(self, args):
        return [sys.executable, "-c", LINES, *args]


@pytest.fixture
def child(tmp_path):
    started = StandIn(tmp_path)
    yield started
    started.kill()


def test_json_objects_become_events_and_every_line_is_kept(child):
    first, second = child.wait_for("a", timeout=30, count=2)
    assert (first["n"], second["n"]) == (1, 2) and first["_received"] <= second["_received"]
    assert [e["event"] for e in child.events] == ["a", "b", "a"]
    assert child.raw[0] == "a console line, not JSON\n" and len(child.raw) == 5
    assert child.find("a", n=2) == [second] and child.find("c") == []
    assert child.wait_for_after(first, "a", timeout=30) is second
    assert child.wait_for_after(child.find("b")[0], "a", n=2, timeout=30) is second


def test_a_wait_names_what_it_waited_for_when_the_time_runs_out(child):
    child.wait_for("a", count=2, timeout=30)
    with pytest.raises(ChildFailed, match=r"no 1 x c \{'n': 3\} within 0 s:\n(.|\n)*\"event\": \"b\""):
        child.wait_for("c", timeout=0, n=3)


def test_a_wait_ends_when_the_child_exits_first(tmp_path):
    child = StandIn(tmp_path, args=["--exit"])
    try:
        with pytest.raises(ChildFailed, match="daemon exited 0 before 1 x never {}"):
            child.wait_for("never", timeout=60)
        assert isinstance(ChildFailed("x"), AssertionError)  # a test reports it as a failure
    finally:
        assert child.stop() == 0


def test_stop_signals_once_and_returns_the_status(child):
    child.wait_for("b", timeout=30)
    assert child.stop(signal.SIGTERM, timeout=30) == -signal.SIGTERM
    assert not child.reader.is_alive()
    assert child.stop() == -signal.SIGTERM  # exited already: nothing is sent again
