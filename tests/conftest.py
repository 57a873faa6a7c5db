import threading

import pytest


@pytest.fixture(autouse=True)
def no_leaked_threads():
    """Fail any test that leaves a thread running (the watchdog project's guard)."""
    before = set(threading.enumerate())
    yield
    leaked = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    for t in leaked:
        t.join(timeout=2.0)
    leaked = [t for t in leaked if t.is_alive()]
    assert not leaked, f"test leaked threads: {[t.name for t in leaked]}"


@pytest.fixture(autouse=True)
def structlog_restored():
    """Put back the logging configuration after each test: a command run in a test (`main()`)
    points structlog at the sys.stderr of that moment, a capture stream pytest closes after it."""
    import structlog

    saved = structlog.get_config()
    yield
    structlog.configure(**saved)
