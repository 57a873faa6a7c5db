"""Test-only parser hooks, run in an extractor process through `ExtractorPool(initializer=...)`.

Only tests/unit/crawler/test_sandbox.py names this file; the daemon's pool takes no initializer.
It wraps the DOCX parser: a document whose text holds one of the words below misbehaves the way
a pathological file makes a real parser misbehave.
"""

import os
import signal
import time

from crawler.ingest import inprocess

_docx_text = inprocess._BYTES_PARSERS["docx"]


def _docx_with_hooks(data, limits, check_time):
    text = _docx_text(data, limits, check_time)
    if "HANG" in text:  # one page that never ends: no check_time() is ever reached
        while True:
            time.sleep(3600)
    if "HOARD" in text:  # 512 MiB at once, as a decompressor trusting a header would ask for
        hoard = bytes(2**29)  # calloc'd, so without a limit it costs address space, not memory
        text = text.rstrip() + f" ({len(hoard)} bytes held)"
    if "CRASH" in text:  # a fault in C code
        os.kill(os.getpid(), signal.SIGKILL)
    return text


inprocess._BYTES_PARSERS["docx"] = _docx_with_hooks
