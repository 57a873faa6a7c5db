"""The extractor processes: hard wall time, hard memory limit, crashes, recycling, shutdown.

The misbehaving parsers come from sandbox_hooks.py, which only these tests hand to a pool (its
`initializer`). No assertion reads a clock: a hang is infinite, so any budget proves the kill.
"""

import os
import resource
import signal
import subprocess
import sys
import zipfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest

from crawler.ingest.extract import ExtractionFailed, ExtractLimits, Skipped, extract_in_process
from crawler.ingest.sandbox import ExtractorPool

pytestmark = pytest.mark.skipif(sys.platform == "win32", reason="extractor processes need a Unix")

HOOKS = str(Path(__file__).with_name("sandbox_hooks.py"))
W = 'xmlns:w="http://schemas.openxmlformats.org/wordprocessingml/2006/main"'


def write_docx(path, text):
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("word/document.xml", f'<w:document {W}><w:body><w:p><w:r><w:t>{text}</w:t>'
                                              f'</w:r></w:p></w:body></w:document>')
    return path


@pytest.fixture
def pool():
    with ExtractorPool(size=1, initializer=HOOKS) as pool:
        yield pool
    assert pool.alive == 0


def test_a_good_document_comes_back_as_the_in_process_extractor_makes_it(tmp_path, pool):
    path = write_docx(tmp_path / "good.docx", "Plain words")
    fields = pool.extract(path, ExtractLimits())
    assert fields == extract_in_process(path).__dict__
    assert fields["text"] == "Plain words" and fields["kind"] == "docx"
    assert pool.extract(path, ExtractLimits())["text"] == "Plain words"
    assert pool.started == 1  # the child is reused


def test_a_hung_parser_is_killed_as_timeout_and_the_next_document_extracts(tmp_path, pool):
    hung = write_docx(tmp_path / "hung.docx", "HANG on this page")
    with pytest.raises(Skipped) as caught:
        pool.extract(hung, ExtractLimits(time_budget_seconds=2.0))
    assert caught.value.reason == "timeout"
    assert "2 s time budget; the extractor process was stopped" in caught.value.detail
    assert pool.started == 1 and pool.alive == 0  # killed, and reaped
    good = write_docx(tmp_path / "good.docx", "Next document")
    assert pool.extract(good, ExtractLimits(time_budget_seconds=2.0))["text"] == "Next document"
    assert pool.started == 2  # replaced


def test_a_parser_over_the_memory_limit_is_too_large_and_this_process_is_unharmed(tmp_path, pool):
    before = resource.getrlimit(resource.RLIMIT_AS)
    hoard = write_docx(tmp_path / "hoard.docx", "HOARD memory")
    with pytest.raises(Skipped) as caught:
        pool.extract(hoard, ExtractLimits(max_memory_bytes=256 * 2**20))
    assert caught.value.reason == "too_large"
    assert "max_memory_bytes (268435456 bytes)" in caught.value.detail
    assert resource.getrlimit(resource.RLIMIT_AS) == before  # the limit was the child's alone
    # the same file under a limit it fits: the limit, not the hook, made it too_large
    fields = pool.extract(hoard, ExtractLimits(max_memory_bytes=2 * 2**30))
    assert fields["text"] == f"HOARD memory ({2**29} bytes held)"
    assert pool.started == 2  # the child that ran out of memory was replaced


def test_a_crashed_parser_fails_that_file_only(tmp_path, pool):
    crash = write_docx(tmp_path / "crash.docx", "CRASH here")
    with pytest.raises(ExtractionFailed) as caught:
        pool.extract(crash, ExtractLimits())
    assert "the extractor process died (killed by SIGKILL)" in caught.value.detail
    good = write_docx(tmp_path / "good.docx", "Still fine")
    assert pool.extract(good, ExtractLimits())["text"] == "Still fine"


def test_skips_and_failures_from_the_child_keep_the_child(tmp_path, pool):
    (tmp_path / "broken.docx").write_bytes(b"PK\x03\x04 not really a zip")
    with pytest.raises(ExtractionFailed, match="bad zip"):
        pool.extract(tmp_path / "broken.docx", ExtractLimits())
    with pytest.raises(Skipped) as caught:
        pool.extract(tmp_path / "missing.docx", ExtractLimits())
    assert caught.value.reason == "vanished"
    assert pool.extract(write_docx(tmp_path / "ok.docx", "ok"), ExtractLimits())["text"] == "ok"
    assert pool.started == 1


def test_children_are_replaced_after_max_tasks_per_child(tmp_path):
    path = write_docx(tmp_path / "a.docx", "words")
    with ExtractorPool(size=1, max_tasks_per_child=2) as pool:
        for _ in range(5):
            assert pool.extract(path, ExtractLimits())["text"] == "words"
        assert pool.started == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the inherited peak is a Linux behaviour")
def test_a_child_of_a_large_parent_is_not_retired_for_the_parents_memory(tmp_path):
    # Linux keeps ru_maxrss across fork and exec: a child of a large daemon must measure its own
    # address space, or it is retired (and a new one started) after every file
    ballast = np.ones(320 * 2**20 // 8)  # 320 MiB, touched, in this (parent) process
    path = write_docx(tmp_path / "a.docx", "words")
    with ExtractorPool(size=1, retire_rss_bytes=256 * 2**20) as pool:
        for _ in range(3):
            assert pool.extract(path, ExtractLimits())["text"] == "words"
        assert pool.started == 1
    del ballast


def test_a_child_killed_while_idle_is_replaced_without_failing_a_file(tmp_path, pool):
    path = write_docx(tmp_path / "a.docx", "words")
    pool.extract(path, ExtractLimits())
    (child,) = pool._idle
    os.kill(child.process.pid, signal.SIGKILL)
    child.process.wait()
    assert pool.extract(path, ExtractLimits())["text"] == "words"
    assert pool.started == 2


def test_a_child_that_cannot_start_says_why(tmp_path):
    broken = tmp_path / "broken_hooks.py"
    broken.write_text("raise SystemExit('no parser for you')\n")
    with ExtractorPool(size=1, initializer=str(broken)) as pool:
        with pytest.raises(ExtractionFailed, match=r"did not start \(exit status 1\): no parser for you"):
            pool.extract(write_docx(tmp_path / "a.docx", "words"), ExtractLimits())
        assert pool.alive == 0


def test_close_ends_the_children_and_refuses_new_work(tmp_path):
    pool = ExtractorPool(size=1)
    path = write_docx(tmp_path / "a.docx", "words")
    pool.extract(path, ExtractLimits())
    (child,) = pool._idle
    pool.close()
    assert child.process.poll() == 0  # it read end of file and exited by itself
    assert pool.alive == 0
    pool.close()  # idempotent
    with pytest.raises(ExtractionFailed, match="closed"):
        pool.extract(path, ExtractLimits())


def test_a_child_whose_parent_is_gone_exits(tmp_path):
    # the child's stdin reaches end of file when the parent dies (even by SIGKILL): it exits
    from crawler.ingest import sandbox

    process = subprocess.Popen([sys.executable, "-P", "-c", sandbox._BOOT, sandbox._PACKAGE_ROOT],
                               stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    assert b'"ready"' in process.stdout.readline()
    process.stdin.close()
    assert process.wait(timeout=60) == 0
    process.stdout.close()


def test_no_process_to_be_had_fails_the_file_in_words(tmp_path, monkeypatch):
    def refuse(*args, **kwargs):
        raise BlockingIOError(11, "Resource temporarily unavailable")

    monkeypatch.setattr(subprocess, "Popen", refuse)
    with ExtractorPool(size=1) as pool:
        with pytest.raises(ExtractionFailed, match="could not start an extractor process: .*temporarily"):
            pool.extract(write_docx(tmp_path / "a.docx", "words"), ExtractLimits())
        assert pool.alive == 0


def test_threads_share_at_most_size_children(tmp_path):
    paths = [write_docx(tmp_path / f"{i}.docx", f"document {i}") for i in range(8)]
    with ExtractorPool(size=2) as pool, ThreadPoolExecutor(max_workers=4) as threads:
        texts = list(threads.map(lambda path: pool.extract(path, ExtractLimits())["text"], paths))
        assert texts == [f"document {i}" for i in range(8)]
        assert pool.started <= 2


def test_a_stop_signal_to_the_whole_group_does_not_fail_the_file(tmp_path, pool):
    # systemd's stop and a terminal's ^C reach every process of the group; the daemon stops
    # gracefully, and its extractor process must not die under the file in flight
    path = write_docx(tmp_path / "a.docx", "words")
    pool.extract(path, ExtractLimits())
    (child,) = pool._idle
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        os.kill(child.process.pid, sig)  # ignored signals are discarded as they are sent
    assert pool.extract(path, ExtractLimits())["text"] == "words"
    assert pool.started == 1 and child.process.poll() is None
