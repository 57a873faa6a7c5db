"""What file claims cost the daemon's ingest worker on PostgreSQL: small files/s with and without.

Runs the real IngestWorker in this process (the byte tokenizer) on N small files, each case in a
fresh schema of the server given, alternating with and without a ClaimGate (crawler/ingest/claiming.py),
and prints files/s per run and the median ratio. On SQLite the daemon uses no claims, so there
is nothing to compare there (bench/ingest.py measures its ingest).

    python bench/claims.py --postgres postgresql+psycopg://postgres@127.0.0.1:5432/test [--files 2000] [--runs 3]
Not a test.
"""

from __future__ import annotations

import argparse
import queue as queue_module
import statistics
import tempfile
import time
import uuid
from pathlib import Path

import sqlalchemy as sa
import structlog

from crawler.config import Config
from crawler.ingest.claiming import ClaimGate
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.service.ingest_worker import IngestWorker
from storage import CorpusQueue, FileClaims, StorageConfig, open_database


def one_run(url: str, folder: Path, files: list[Path], claims: bool) -> float:
    """files/s of one worker ingesting `files` into a fresh schema."""
    schema = f"bench_claims_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(url)
    with admin.begin() as connection:
        connection.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    scoped = sa.make_url(url).update_query_dict({"options": f"-csearch_path={schema}"})
    database = open_database(StorageConfig(url=scoped.render_as_string(hide_password=False)))
    try:
        queue = CorpusQueue(database)
        log = structlog.get_logger()
        gate = ClaimGate(FileClaims(database, "bench:/state"), queue, log) if claims else None
        inbox: queue_module.Queue = queue_module.Queue()
        worker = IngestWorker(Config(state_dir=folder.parent / "state"), queue, ByteTokenizer(), inbox, log, gate=gate)
        worker.initialize()
        for path in files:
            inbox.put((path, folder))
        t0 = time.perf_counter()
        while sum(worker.counts.values()) < len(files):
            worker.run_once(time.monotonic())
        seconds = time.perf_counter() - t0
        worker.shutdown()
        assert worker.counts["ingested"] == len(files), worker.counts
        return len(files) / seconds
    finally:
        database.close()
        with admin.begin() as connection:
            connection.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--postgres", required=True, metavar="URL")
    parser.add_argument("--files", type=int, default=2000)
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    structlog.configure(logger_factory=structlog.ReturnLoggerFactory())  # events cost nothing here
    with tempfile.TemporaryDirectory() as temporary:
        folder = Path(temporary) / "inbox"
        folder.mkdir()
        files = []
        for i in range(args.files):
            path = folder / f"f{i:05d}.txt"
            path.write_text(f"small file {i}: " + "the quick brown fox jumps over the lazy dog " * 10)
            files.append(path)
        rates: dict[bool, list[float]] = {False: [], True: []}
        for run in range(args.runs):
            for claims in (False, True):
                rate = one_run(args.postgres, folder, files, claims)
                rates[claims].append(rate)
                print(f"run {run} claims={'on ' if claims else 'off'} {rate:8.0f} files/s", flush=True)
    off, on = statistics.median(rates[False]), statistics.median(rates[True])
    print(f"median: off {off:.0f} files/s, on {on:.0f} files/s, ratio on/off {on / off:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
