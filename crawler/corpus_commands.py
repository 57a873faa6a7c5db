"""`crystalline ingest` and `crystalline status`: the corpus store from the command line.

Both resolve the same configuration as the daemon (`--state-dir`, `--config`, CRYSTALLINE_*
variables) and open the same database. `ingest` exits non-zero only on a hard error (bad
configuration, a database that cannot be opened or written); a file that cannot be ingested is
counted and reported with its reason, never fatal. Wired into the parser by crawler/cli.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from engine import ConfigError

from .config import DATABASE_FILE, Config, load_config
from .ingest import IngestSummary, Ingestor, iter_files
from .logging import get_logger
from .progress import IngestProgress, on_terminal


def add_commands(commands: Any, state: dict) -> None:
    """Register `ingest` and `status` on the CLI's subparsers."""
    common = {"--state-dir": dict(state, default=None), "--config": dict(default=None, metavar="FILE",
              help="TOML configuration (default: STATE_DIR/crystalline.toml when present)")}
    ingest = commands.add_parser("ingest", help="add files and folders to the corpus queue")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    ingest.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    for flag, kw in common.items():
        ingest.add_argument(flag, **kw)
    ingest.set_defaults(handler=command_ingest)

    status = commands.add_parser("status", help="whether a daemon runs, and what the corpus queue holds")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--health", action="store_true",
                        help="exit 1 unless a daemon holds the state directory and reports fresh figures")
    for flag, kw in common.items():
        status.add_argument(flag, **kw)
    status.set_defaults(handler=command_status)


def resolve_config(args: argparse.Namespace) -> Config:
    return load_config(args.config, state_dir=args.state_dir)


def open_queue(config: Config):
    """Open (creating or upgrading) the database and its queue."""
    from storage import CorpusQueue, open_database

    config.state_dir.mkdir(parents=True, exist_ok=True)
    database = open_database(config.storage_config())
    return database, CorpusQueue(database)


def _state_tokenizer(config: Config):
    from .tokenizer import load_state_tokenizer

    return load_state_tokenizer(config.state_dir)


def ingest_paths(paths, queue, tokenizer, config: Config, log, level: str = "debug",
                 progress_stream=None) -> IngestSummary:
    """Store every file under `paths` in the queue (`ingest`, and `train` before it trains):
    one event per file (file_skipped at info, file_failed at warning, file_ingested at `level`).
    With a terminal as progress_stream (default stderr), a bar shows bytes and files walked."""
    summary = IngestSummary()
    ingestor = Ingestor(queue, tokenizer, config.extract)
    emit = getattr(log, level)
    stream = progress_stream if progress_stream is not None else sys.stderr
    files, sizes = iter_files(paths), {}
    if on_terminal(stream):  # the bar needs the totals: walk first (off a terminal, walk as we go)
        files = list(files)
        sizes = {os.path.abspath(f): _size(f) for f, _ in files}
    progress = IngestProgress(len(sizes), sum(sizes.values()), stream=stream)
    try:
        for outcome in ingestor.ingest_files(files):
            summary.add(outcome)
            progress.update(sizes.get(outcome.path, 0), summary.counts)
            _log_outcome(outcome, log, emit)
    finally:
        progress.close()
    return summary


def _size(path) -> int:
    try:
        return os.lstat(path).st_size
    except OSError:
        return 0


def _log_outcome(outcome, log, emit) -> None:
    if outcome.status == "skipped":
        log.info("file_skipped", path=outcome.path, reason=outcome.reason, detail=outcome.detail)
    elif outcome.status == "failed":
        log.warning("file_failed", path=outcome.path, error=outcome.detail)
    elif outcome.status in ("ingested", "duplicate"):
        emit("file_ingested", path=outcome.path, doc_id=outcome.document_id, bytes=outcome.bytes,
             tokens=outcome.tokens, ms=round(outcome.ms, 2), duplicate=outcome.status == "duplicate")


def command_ingest(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    log = get_logger("ingest")
    missing = [p for p in args.paths if not Path(p).exists() and not Path(p).is_symlink()]
    if missing:
        raise ConfigError(f"no such file or folder: {missing[0]}")
    database, queue = open_queue(config)
    t0 = time.perf_counter()
    try:
        summary = ingest_paths(args.paths, queue, _state_tokenizer(config), config, log)
    finally:
        database.close()
    seconds = time.perf_counter() - t0
    report = summary.to_dict() | {"seconds": round(seconds, 3),
                                  "mb_per_s": round(summary.bytes / 1e6 / max(seconds, 1e-9), 2)}
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        files = summary.counts
        print(f"ingested {files['ingested']}, duplicate {files['duplicate']}, unchanged {files['unchanged']}, "
              f"skipped {files['skipped']}, failed {files['failed']}; {summary.bytes / 1e6:.1f} MB, "
              f"{summary.tokens} tokens in {seconds:.1f} s")
        for (status, reason), count in sorted(summary.reasons.items()):
            print(f"  {status} {reason}: {count}")
    return 0


def status_report(config: Config) -> dict:
    """The corpus queue's figures as a JSON-able dict; does not create a database."""
    report: dict[str, Any] = {"state_dir": str(config.state_dir), "database": _display_url(config.database_url)}
    if not config.store.url and not (config.state_dir / DATABASE_FILE).exists():
        return report | {"exists": False}
    database, queue = open_queue(config)
    try:
        stats = queue.stats()
        last = stats.last_checkpoint
        report |= {
            "exists": True,
            "documents": dict(stats.documents),
            "tokens_total": stats.tokens_total,
            "tokens_queued": stats.tokens_queued,
            "tokens_trained": stats.tokens_trained,
            "database_bytes": stats.database_bytes,
            "tokenizer": queue.tokenizer(),
            "last_checkpoint": None if last is None else {
                "step": last.step, "path": last.path, "tokens_trained": last.tokens_trained,
                "loss": last.loss, "created_at": str(last.created_at)},
            "evaluation": {"latest": _evaluation(queue.latest_evaluation()),
                           "best": _evaluation(queue.best_evaluation())},
        }
    finally:
        database.close()
    return report


def _evaluation(record) -> dict | None:
    if record is None:
        return None
    return {"step": record.step, "epoch": round(record.epoch, 3), "val_bits_per_byte": record.val_bits_per_byte,
            "train_bits_per_byte": record.train_bits_per_byte, "holdout_tokens": record.holdout_tokens,
            "created_at": str(record.created_at)}


def _display_url(url: str) -> str:
    """The URL without a password."""
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


def command_status(args: argparse.Namespace) -> int:
    from .health import check_health, lock_holder, read_health

    config = resolve_config(args)
    if args.health:  # for container health checks: cheap, no database
        healthy, reason, _ = check_health(config.state_dir, config.daemon.health_max_age_seconds)
        print(("healthy: " if healthy else "unhealthy: ") + reason)
        return 0 if healthy else 1
    report = status_report(config)
    pid = lock_holder(config.state_dir)
    report["daemon"] = {"running": pid is not None, "pid": pid,
                        "health": read_health(config.state_dir) if pid is not None else None}
    if args.json:
        print(json.dumps(report, sort_keys=True, default=str))
        return 0
    daemon = report["daemon"]
    if daemon["running"]:
        h = daemon["health"] or {}
        loss, rate = h.get("loss"), h.get("tokens_per_s")
        print(f"daemon     running, pid {daemon['pid']}, {h.get('state', '?')}; step {h.get('step')}, "
              f"loss {'-' if loss is None else f'{loss:.4f}'}, {'-' if rate is None else f'{rate:,.0f}'} tokens/s "
              f"(as of {h.get('updated_at')})")
    else:
        print("daemon     not running")
    print(f"state dir  {report['state_dir']}")
    print(f"database   {report['database']}" + ("" if report.get("exists") else "  (not created yet)"))
    if report.get("exists"):
        docs = ", ".join(f"{k} {v}" for k, v in sorted(report["documents"].items())) or "none"
        print(f"documents  {docs}")
        print(f"tokens     {report['tokens_queued']} queued, {report['tokens_trained']} trained, "
              f"{report['tokens_total']} in all")
        print(f"size       {report['database_bytes'] / 1e6:.1f} MB")
        last = report["last_checkpoint"]
        print("checkpoint " + ("none" if last is None else f"step {last['step']} at {last['created_at']} ({last['path']})"))
        latest, best = report["evaluation"]["latest"], report["evaluation"]["best"]
        if latest is None:
            print("held-out   not measured yet")
        else:
            print(f"held-out   {latest['val_bits_per_byte']:.4f} bits/byte at step {latest['step']} "
                  f"(epoch {latest['epoch']:.2f}); best {best['val_bits_per_byte']:.4f} at step {best['step']}")
        h = (daemon.get("health") or {}) if daemon["running"] else {}
        if h.get("plateaued"):
            print("training   plateaued: idle until new text arrives")
    return 0
