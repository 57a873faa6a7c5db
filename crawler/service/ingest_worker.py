"""The daemon's ingest worker: files the watcher made ready, from the inbox into the store.

One worker of the initialize() / run_once(now) / shutdown() shape, run on its own thread by
crawler/service/threads.py. Takes batches from the inbox queue, has the ingest pipeline
(crawler/ingest/pipeline.py) extract, tokenize and store them, logs one event per file, and
never loses one: what the store could not take is held and retried, or handed back. Not the
watcher (crawler/ingest/watcher.py offers the files), not the supervisor (supervisor.py starts,
restarts and stops it), not the judge of "store unavailable" (outage.py) or of "disk full"
(crawler/state/writable.py), which it only reports to and asks. Relies on the store's
transient errors being storage.StoreUnavailable, and on each file's commit being atomic.
"""

from __future__ import annotations

import os
import queue as queue_module
import shutil
import time
from pathlib import Path
from typing import Callable

from ..config import Config
from ..ingest.extract import shutdown_pool
from ..ingest.pipeline import ARCHIVE, Ingestor, display_path
from ..state.disk import PROCESSED_DIR
from ..state.writable import WriteState
from .outage import StoreOutage, is_transient


class IngestWorker:
    """Takes ready files from the inbox queue and ingests them in batches; never loses one.

    A per-file fault is that file's own outcome (Ingestor). A storage error that stops a batch
    holds the files not yet stored, in one list, when it is one that passes by itself: a
    transient store error (storage.StoreUnavailable: a lock held past busy_timeout_ms, a lost
    connection, a full database disk) is reported to the daemon's StoreOutage (`outage`), and
    ingest waits out its backoff and then retries them before anything new; a blocked write of
    the state directory (`writes` says disk full or read-only) pauses ingest while
    `writes.blocked` (re-checking it), and they are retried once writing works again
    (`writes.generation` grew). Held files stay offered: none is failed for the store's sake. Any
    other error is retried one file at a time, so the file whose write fails alone gets
    `file_failed` and its neighbours are stored. Nothing is stored twice: a committed file is
    never retried, and a retried file whose version is already stored is `unchanged`. If the
    worker dies anyway, `shutdown` hands the files it held back through `release` (the daemon
    passes `Watcher.reoffer`), else the inbox. With a `gate` (PostgreSQL), it reads only the
    files this daemon claims; a file another daemon holds waits for that daemon's lease
    (crawler/ingest/claiming.py); a claim the store cannot take for now hands the batch back.
    """

    name = "ingest"
    BATCH_FILES = 256
    BLOCKED_PAUSE_SECONDS = 1.0  # between re-checks while writes are blocked
    MAX_REST_SECONDS = 60.0  # the longest rest after one batch, whatever it cost

    def __init__(self, config: Config, queue, tokenizer, inbox: queue_module.Queue, log, *,
                 writes: WriteState | None = None, release: Callable[[list], None] | None = None, gate=None,
                 outage: StoreOutage | None = None, training: Callable[[], bool] | None = None,
                 clock: Callable[[], float] = time.monotonic):
        self.config, self.queue, self.tokenizer, self.inbox = config, queue, tokenizer, inbox
        # whether the trainer is taking steps now: then ingest rests ([daemon] ingest_share)
        self.training = training if training is not None else (lambda: False)
        self.clock = clock
        self.gate = gate  # crawler.ingest.claiming.ClaimGate on PostgreSQL: several daemons may watch one folder
        self.log = log.bind(component="ingest")
        self.writes = writes if writes is not None else WriteState(config.state_dir, self.log)
        self.outage = outage if outage is not None else StoreOutage(self.log)  # the daemon's, shared
        self.release = release
        self.ingestor: Ingestor | None = None
        self.counts = {"ingested": 0, "duplicate": 0, "skipped": 0, "failed": 0, "unchanged": 0}
        self.held: list[tuple[Path, Path]] = []  # files a blocked write could not store, in order
        self._in_flight: list[tuple[Path, Path]] = []  # the batch being ingested, less what is done
        self._isolating: list[tuple[Path, Path]] = []  # after a storage error: retried one at a time

    def initialize(self) -> None:
        self.ingestor = Ingestor(self.queue, self.tokenizer, self.config.extract)

    def run_once(self, now: float) -> float:
        if self.writes.blocked and not self.writes.recheck(now):
            return self.BLOCKED_PAUSE_SECONDS  # paused: the inbox fills and the watcher keeps the rest
        if self.outage.retry_in(self.name, now) > 0:  # the store is unavailable: wait for the next try
            return min(self.outage.retry_in(self.name, now), self.BLOCKED_PAUSE_SECONDS)
        if self.held:  # writing works again, or the store may answer: every held file, before anything new
            batch, self.held = self.held, []
            if not self.outage.failing(self.name):  # (a store retry says store_available once it works)
                self.log.info("ingest_resumed", files=len(batch), generation=self.writes.generation)
        else:
            try:
                batch = [self.inbox.get(timeout=0.5)]
            except queue_module.Empty:
                if self.gate is None or not self.gate.deferred:
                    return 0.0
                batch = []  # files another daemon held may be due
            while len(batch) < self.BATCH_FILES:
                try:
                    batch.append(self.inbox.get_nowait())
                except queue_module.Empty:
                    break
            if self.gate is not None:  # only the files this daemon claims; the rest wait or are failed
                self._in_flight = list(batch)  # handed back by shutdown if claiming fails
                try:
                    batch, self._in_flight = self.gate.admit(batch, now, self.counts), []
                except Exception as exc:
                    if not is_transient(exc):
                        raise
                    self.outage.report(self.name, exc, now)  # nothing was claimed: offered again later
                    unclaimed, self._in_flight = self._in_flight, []
                    self._hand_back(unclaimed)
                    return min(self.outage.retry_in(self.name, now), self.BLOCKED_PAUSE_SECONDS)
                if not batch:
                    return 0.0
        self._ingest(batch, now)
        if self.gate is not None:
            self.gate.finish([item for item in batch if item not in self.held])
        retry = min(self.outage.retry_in(self.name, now), self.BLOCKED_PAUSE_SECONDS)  # 0 unless held for the store
        return max(retry, self.rest(self.clock() - now))

    def rest(self, busy: float) -> float:
        """The pause after a batch that took `busy` seconds: while the trainer takes steps,
        enough that ingest works at most [daemon] ingest_share of the time (capped at
        MAX_REST_SECONDS); none while it is paused or idle, or with a share of 1. The training
        threads meet at a barrier each step, so a core taken by ingest slows all of them."""
        share = self.config.daemon.ingest_share
        if share >= 1 or busy <= 0 or not self.training():
            return 0.0
        return min(busy * (1 - share) / share, self.MAX_REST_SECONDS)

    def _ingest(self, batch: list[tuple[Path, Path]], now: float) -> None:
        """Ingest a batch; on a storage error hold, isolate or fail what is left (see the class)."""
        failure = self._attempt(batch)
        if failure is None:
            self.outage.recovered(self.name, now)  # (logs store_available when it was unavailable)
            return
        exc, left = failure
        if self._hold(exc, left, now):
            return
        if len(batch) == 1:
            self._failed(batch[0], exc)
            return
        self._isolating = left  # find the file at fault: each of the rest on its own
        while self._isolating:
            failure = self._attempt(self._isolating[:1])
            if failure is not None:
                if self._hold(failure[0], self._isolating, now):  # unavailable meanwhile: hold the rest too
                    self._isolating = []
                    return
                self._failed(self._isolating[0], failure[0])
            del self._isolating[0]

    def _hold(self, exc: Exception, files: list[tuple[Path, Path]], now: float) -> bool:
        """Keep `files` for a retry when `exc` passes by itself: a transient store error (the
        outage's backoff says when to retry; logged once as store_unavailable) or a blocked write
        of the state directory (the WriteState's probe says when; logged once as disk_full /
        state_unwritable). False for any other error, which stays the caller's."""
        if is_transient(exc):
            self.outage.report(self.name, exc, now)
        elif not self.writes.report("ingest", exc):
            return False
        self.held.extend(files)
        return True

    def _attempt(self, batch: list[tuple[Path, Path]]) -> tuple[Exception, list] | None:
        """Ingest and report each file; None, or the storage error with the files not stored."""
        self._in_flight = list(batch)
        try:
            for outcome in self.ingestor.ingest_files(batch):
                for i, (path, _) in enumerate(self._in_flight):
                    if os.path.abspath(path) == outcome.path:
                        del self._in_flight[i]
                        break
                self._report(outcome, batch)
        except Exception as exc:  # noqa: BLE001 - a storage error: the caller decides, never fatal
            left, self._in_flight = self._in_flight, []
            return exc, left
        self._in_flight = []  # (kept on a BaseException: shutdown hands it back)
        return None

    def _failed(self, item: tuple[Path, Path], exc: Exception) -> None:
        """A file whose storage write fails on its own: reported once, retried when it changes."""
        self.counts["failed"] += 1
        self.log.warning("file_failed", path=display_path(os.path.abspath(item[0])),
                         error=f"{type(exc).__name__}: {exc}")

    def _report(self, outcome, batch: list) -> None:
        self.counts[outcome.status] += 1
        path = display_path(outcome.path)
        # what may move: a file of the batch, not an archive's member (ARCHIVE!member, inside it);
        # the archive itself moves with its own outcome, after its members' (pipeline.py)
        movable = self.config.daemon.after_ingest == "move" and any(
            os.path.abspath(p) == outcome.path for p, _ in batch)
        if outcome.status in ("ingested", "duplicate"):
            self.log.info("file_ingested", path=path, doc_id=outcome.document_id, bytes=outcome.bytes,
                          tokens=outcome.tokens, ms=round(outcome.ms, 1), duplicate=outcome.status == "duplicate",
                          offset=outcome.offset, withdrawn_tokens=outcome.withdrawn)
            if movable:
                self._move(Path(outcome.path), batch)
        elif outcome.status == "skipped":
            self.log.info("file_skipped", path=path, reason=outcome.reason, detail=outcome.detail)
            if movable and outcome.reason == ARCHIVE:
                self._move(Path(outcome.path), batch)
        elif outcome.status == "failed":
            self.log.warning("file_failed", path=path, error=outcome.detail)

    def _move(self, path: Path, batch: list) -> None:
        """Move an ingested file (its tokens are durably committed) under STATE_DIR/processed."""
        root = next((Path(r) for p, r in batch if Path(os.path.abspath(p)) == path and r), path.parent)
        target = Path(self.config.state_dir) / PROCESSED_DIR / root.name / path.relative_to(Path(os.path.abspath(root)))
        try:
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(str(path), str(target))
        except (OSError, ValueError) as exc:
            self.log.warning("file_move_failed", path=display_path(path), error=str(exc))

    def shutdown(self) -> None:
        """Hand back what was not stored: through `release` (offered again), else into the inbox;
        what fits nowhere is found by the next start's scan (unstored files are never seen).
        The extractor processes end too (a busy one after its file)."""
        shutdown_pool()
        unfinished = list(dict.fromkeys(self.held + self._in_flight + self._isolating))
        self.held, self._in_flight, self._isolating = [], [], []
        if self.gate is not None:  # others may take these over at once; the deferred go back too
            unfinished = self.gate.shutdown(unfinished)
        self._hand_back(unfinished)

    def _hand_back(self, files: list) -> None:
        """Offer files again through `release`, else put them back into the inbox (what does not
        fit is found by the next start's scan)."""
        if not files:
            return
        if self.release is not None:
            self.release(files)
            return
        for item in files:
            try:
                self.inbox.put_nowait(item)
            except queue_module.Full:
                break