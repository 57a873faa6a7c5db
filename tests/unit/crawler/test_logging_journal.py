"""The journal's `<N>` priority prefix: only when the log stream is the file JOURNAL_STREAM names.

The same check under a real systemd: tests/deploy/test_systemd.py (`journalctl -p warning`).
"""

import io
import json
import os

import structlog

from crawler.logging import configure_logging, get_logger, is_journal


def teardown_function():
    structlog.reset_defaults()


def _stream_id(path) -> str:
    st = os.stat(path)
    return f"{st.st_dev}:{st.st_ino}"


def _log_three(path) -> list[str]:
    with open(path, "w", encoding="utf-8") as stream:
        configure_logging("info", stream=stream)
        log = get_logger("daemon")
        log.info("daemon_ready", seconds=0.5)
        log.warning("notify_failed", error="ENOENT")
        log.error("config_reload_failed", error="bad value")
        try:
            raise RuntimeError("boom")
        except RuntimeError:
            log.exception("daemon_failed")
    return path.read_text(encoding="utf-8").splitlines()


def test_lines_to_the_journal_carry_their_syslog_priority(tmp_path, monkeypatch):
    out = tmp_path / "stdout"
    out.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _stream_id(out))
    lines = _log_three(out)
    assert [line[:3] for line in lines if line.startswith("<")] == ["<6>", "<4>", "<3>", "<3>"]
    # after the prefix, each line is still the JSON object it was
    records = [json.loads(line[3:]) for line in lines if line.startswith("<")]
    assert [r["event"] for r in records] == ["daemon_ready", "notify_failed", "config_reload_failed", "daemon_failed"]


def test_no_prefix_when_the_journal_is_another_file(tmp_path, monkeypatch):
    # systemd sets JOURNAL_STREAM for the service; a child whose stdout was redirected inherits it
    other = tmp_path / "journal"
    other.touch()
    monkeypatch.setenv("JOURNAL_STREAM", _stream_id(other))
    out = tmp_path / "stdout"
    lines = _log_three(out)
    assert lines and all(line.startswith("{") for line in lines[:3]), lines


def test_no_prefix_without_journal_stream_or_with_a_malformed_one(tmp_path, monkeypatch):
    out = tmp_path / "stdout"
    monkeypatch.delenv("JOURNAL_STREAM", raising=False)
    assert all(line.startswith("{") for line in _log_three(out)[:3])
    for value in ("", "12", "a:b", "1:2:3"):
        monkeypatch.setenv("JOURNAL_STREAM", value)
        with open(out, encoding="utf-8") as stream:
            assert not is_journal(stream)


def test_a_stream_without_a_file_is_never_the_journal():
    assert not is_journal(io.StringIO(), environ={"JOURNAL_STREAM": "1:2"})
