"""`crystalline ingest`, `status` and `forget`: the corpus store from the command line.

Both resolve the same configuration as the daemon (`--state-dir`, `--config`, CRYSTALLINE_*
variables) and open the same database. `ingest` exits non-zero only on a hard error (bad
configuration, a database that cannot be opened or written); a file that cannot be ingested is
counted and reported with its reason, never fatal. Wired into the parser by crawler/cli/main.py.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from .. import ConfigError
from ..config import Config
from ..ingest.archives import MEMBER_SEPARATOR
from ..ingest.pipeline import Ingestor, IngestSummary, iter_files
from ..logging import get_logger
from ..service.opening import open_queue
from ..service.status import count_text as _count
from ..service.status import duration_text as _duration
from ..service.status import seconds_to_train, status_report, tokens_untrained
from ..state.disk import PROCESSED_DIR
from .opener import add_state_flags, command_config
from .progress import IngestProgress, on_terminal


def add_commands(commands: Any) -> None:
    """Register `ingest` and `status` on the CLI's subparsers."""
    ingest = commands.add_parser("ingest", help="add files and folders to the corpus queue")
    ingest.add_argument("paths", nargs="+", metavar="PATH", help="files or folders (recursive)")
    ingest.add_argument("--json", action="store_true", help="print the summary as one JSON object")
    add_state_flags(ingest)
    ingest.set_defaults(handler=command_ingest)

    status = commands.add_parser("status", help="whether a daemon runs, and what the corpus queue holds")
    status.add_argument("--json", action="store_true", help="print one JSON object")
    status.add_argument("--health", action="store_true",
                        help="exit 1 unless a daemon holds the state directory and reports fresh figures")
    add_state_flags(status)
    status.set_defaults(handler=command_status)

    forget = commands.add_parser("forget", help="remove a file's text from the corpus and from all future training")
    forget.add_argument("targets", nargs="+", metavar="PATH|DOC_ID",
                        help="a file as it was ingested (or its copy under STATE_DIR/processed; an archive: "
                             "every member stored from it, ARCHIVE!member), a folder (everything under it), or "
                             "a document id from the logs")
    forget.add_argument("--dry-run", action="store_true", help="say what would be removed; change nothing")
    forget.add_argument("--json", action="store_true", help="print the result as one JSON object")
    add_state_flags(forget)
    forget.set_defaults(handler=command_forget)


def resolve_config(args: argparse.Namespace) -> Config:
    return command_config(args)


def _state_tokenizer(config: Config):
    from ..ingest.tokenizer import load_state_tokenizer

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
    def unreadable(folder: Path, error: OSError) -> None:  # as the daemon's watcher says it
        log.warning("folder_unreadable", path=str(folder), error=error.strerror or type(error).__name__,
                    action="give this user read and execute permission on it, then ingest it again")

    files, sizes = iter_files(paths, on_unreadable=unreadable), {}
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
             tokens=outcome.tokens, ms=round(outcome.ms, 2), duplicate=outcome.status == "duplicate",
             offset=outcome.offset, withdrawn_tokens=outcome.withdrawn)


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


def forget_forms(target: str, config: Config) -> tuple[list[str], list[str], list[int]]:
    """What a `forget` argument may name: (paths, folder prefixes, document ids). A number that
    is not an existing file is an id; a folder (or a name ending in "/") names everything under
    it; a path under STATE_DIR/processed also names the file it was moved from."""
    if target.isdigit() and not os.path.lexists(target):
        return [], [], [int(target)]
    path = os.path.abspath(target)
    candidates = [path]
    processed = os.path.abspath(config.state_dir / PROCESSED_DIR)
    if path.startswith(processed + os.sep):
        name, _, rest = path[len(processed) + 1:].partition(os.sep)
        for root in config.watch.roots:
            root = os.path.abspath(root)
            if os.path.basename(root) == name:
                candidates.append(os.path.join(root, rest) if rest else root)
    if target.endswith("/") or os.path.isdir(path):
        return [], [c.rstrip(os.sep) + os.sep for c in candidates], []
    return candidates, [], []


def command_forget(args: argparse.Namespace) -> int:
    config = resolve_config(args)
    log = get_logger("forget")
    forms = {target: forget_forms(target, config) for target in args.targets}
    paths = [p for f in forms.values() for p in f[0]]
    prefixes = [p for f in forms.values() for p in f[1]]
    ids = [i for f in forms.values() for i in f[2]]
    # an archive's documents are its members, stored as ARCHIVE!member: naming it names them too
    # (a prefix that names nothing is no error: most files are no archive)
    members = [path + MEMBER_SEPARATOR for path in paths]
    database, queue = open_queue(config)
    try:
        result = queue.forget(paths=paths, prefixes=prefixes + members, document_ids=ids, dry_run=args.dry_run)
        if not args.dry_run and result.documents:
            _blank_token_copy(config, queue)
    finally:
        database.close()
    missing = set(result.not_found)
    unknown = [t for t, (p, f, i) in forms.items() if all(str(x) in missing for x in (*p, *f, *i))]
    report = {"dry_run": args.dry_run, "documents": result.documents, "paths": result.paths,
              "tokens": result.tokens, "sharing": result.sharing, "already_forgotten": result.already,
              "not_found": unknown}
    if not args.dry_run and result.documents:
        log.info("text_forgotten", documents=result.documents, paths=result.paths, tokens=result.tokens,
                 sharing=result.sharing)
    if args.json:
        print(json.dumps(report, sort_keys=True))
    else:
        print(describe_forget(report))
    return 1 if unknown and not result.documents else 0


def _blank_token_copy(config: Config, queue) -> None:
    """The forgotten text leaves the training loop's copy of the stream (STATE_DIR/stream.tokens)
    now: when no daemon or `train` holds the state, by opening the copy, which zeroes every
    withdrawn range durably (storage/cache.py); a running trainer does it itself within a second."""
    from storage import StreamCache

    from ..service.opening import OpenedState
    from ..state.health import DaemonAlreadyRunning
    from ..training.batches import STREAM_CACHE_FILE

    path = config.state_dir / STREAM_CACHE_FILE
    if not path.exists():
        return
    opened = OpenedState(config)
    try:
        opened.lock()
    except DaemonAlreadyRunning:
        return  # its trainer blanks the text itself
    try:
        StreamCache.open(path, queue, _state_tokenizer(config).vocab_size).close()
    finally:
        opened.close()


def describe_forget(report: dict) -> str:
    """What `forget` did (or would do), for a person: the documents, the files, what the model keeps."""
    verb = "would remove" if report["dry_run"] else "removed"
    lines = []
    if report["documents"]:
        n = len(report["documents"])
        lines.append(f"{verb} the text of {n} document{'s' if n > 1 else ''} ({report['tokens']:,} tokens) "
                     f"from the corpus, its held-out set and all future training:")
        lines += [f"  {path}" for path in report["paths"]]
        if report["sharing"]:
            lines.append("the same text was also stored for these files, and goes with it:")
            lines += [f"  {path}" for path in report["sharing"]]
        lines.append("The model keeps what it has already learned from this text: `crystalline reset "
                     "--keep-corpus` trains a new model on what the corpus still holds. Your files are not "
                     "touched; an unchanged file is not ingested again.")
    for doc in report["already_forgotten"]:
        lines.append(f"document {doc}: no text stored (already forgotten, or a skipped file)")
    for target in report["not_found"]:
        lines.append(f"{target}: no document of that name or id (see `crystalline status`, or the "
                     f"file_ingested events for paths and doc_id)")
    return "\n".join(lines) or "nothing to forget"


def _megabytes(size: int | None) -> str:
    return "-" if size is None else f"{size / 1e6:.1f} MB"


def _disk_line(disk: dict) -> str:
    """`database 1.2 MB, checkpoints 48.0 MB (cap 100.0 MB), ...; 20.1 GB free`."""
    parts = [f"database {_megabytes(disk['database']['bytes'])}"]
    for part in ("checkpoints", "processed", "quarantine"):
        figures = disk[part]
        cap = f" (cap {_megabytes(figures['cap_bytes'])})" if figures["cap_bytes"] else ""
        parts.append(f"{part} {_megabytes(figures['bytes'])}{cap}")
    free = disk["free_bytes"]
    return ", ".join(parts) + ("" if free is None else f"; {free / 1e9:.1f} GB free")


GROWTH_SHOWN = {"off": "growth off", "depth_set": "growth off: the depth was set by hand",
                "max_layers": "growth at max_layers already"}


def _forecast_lines(forecast: dict | None) -> list[str]:
    """`forecast   checkpoints 0.5 MB now, about 8.0 MB at 16 layers (after 4 growths; 2 kept and
    best.safetensors, 2.7 MB each); over the cap of 5.0 MB`: the folder now, measured, and what
    retention keeps at the deepest shape growth reaches (crawler/training/forecast.py), against
    the cap; then a warning line with what to change when it would not fit."""
    if not forecast:
        return []
    largest, depths = forecast["largest"], forecast["depths"]
    grows = len(depths) - 1
    how = (f"after {grows} growth{'s' if grows > 1 else ''}" if forecast["growth"] == "on"
           else GROWTH_SHOWN.get(forecast["growth"], forecast["growth"]))
    line = (f"forecast   checkpoints {_megabytes(forecast['used_bytes'])} now, about "
            f"{_megabytes(largest['bytes'])} at {largest['n_layer']} layers ({how}; {forecast['keep']} kept and "
            f"best.safetensors, {_megabytes(largest['file_bytes'])} each)")
    if forecast["fits"] is None:
        return [line]
    cap = _megabytes(forecast["cap_bytes"])
    if forecast["fits"]:
        return [line + f"; within the cap of {cap}"]
    change = "lower [daemon] keep_checkpoints" + (" or [growth] max_layers" if grows else "")
    return [line + f"; over the cap of {cap}",
            f"warning    at {largest['n_layer']} layers the checkpoints kept would take about "
            f"{_megabytes(largest['bytes'])}, over checkpoints_max_mb ({cap}): the cap would delete some that "
            f"keep_checkpoints keeps; raise [daemon] checkpoints_max_mb, or {change}"]


def command_status(args: argparse.Namespace) -> int:
    from ..state.health import check_health, lock_holder, read_health

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
    print(describe_status(report, config, time.time()))
    return 0


def _time_share(share: dict | None) -> str | None:
    """"training 84 % of the last 10 min (evaluation 15 %, checkpoints 0 %, idle 0 %, the loop 1 %)"
    from the daemon's TimeShare figures (crawler/training/figures.py); None without them."""
    if not share or not share.get("window_s"):
        return None
    minutes = share["window_s"] / 60

    def pct(key: str) -> str:
        return f"{100 * share.get(key, 0.0):.0f} %"

    span = f"{minutes:.0f} min" if minutes >= 1 else f"{share['window_s']:.0f} s"
    return (f"training {pct('train')} of the last {span} (evaluation {pct('evaluate')}, checkpoints "
            f"{pct('checkpoint')}, idle {pct('idle')}, the loop between steps {pct('other')})")


def _mix_line(shares: dict | None, replay: float | None) -> str | None:
    """"plays 28 %, desk 72 % (each source's weight); 28 % of each batch replayed": the daemon's
    mix of sources (crawler/training/mixing.py); None with one source."""
    if not shares or len(shares) < 2:
        return None
    ordered = sorted(shares.items(), key=lambda kv: -kv[1])
    shown = ", ".join(f"{name} {100 * w:.0f} %" for name, w in ordered[:6])
    if len(ordered) > 6:
        shown += f" and {len(ordered) - 6} more"
    line = f"{shown} (each source's weight)"
    if replay is not None:
        line += f"; {100 * replay:.0f} % of each batch replayed"
    return line


def describe_status(report: dict, config: Config, now: float) -> str:
    """The status report for a person: rounded figures with units, what the daemon is doing,
    the held-out figure and its trend (and each source's), ages, and the time to drain the queue
    at the current rate."""
    daemon = report["daemon"]
    h = (daemon.get("health") or {}) if daemon["running"] else {}
    lines = []
    if daemon["running"]:
        started = _age(h.get("started_at"), now)
        lines.append(f"daemon     running, pid {daemon['pid']}" + (f", up {started}" if started else "")
                     + f"; {_doing(h)}")
        if h.get("step") is not None:
            loss, rate = h.get("loss"), h.get("tokens_per_s")
            figures = [f"step {h['step']:,}"]
            if loss is not None:
                figures.append(f"loss {loss:.3f}")
            if rate:
                figures.append(f"{_count(rate)} tokens/s")
            updated = _age(h.get("updated_at"), now)
            lines.append("training   " + ", ".join(figures) + (f" (as of {updated} ago)" if updated else ""))
            if share := _time_share(h.get("time_share")):
                lines.append("time       " + share)
            if mix := _mix_line(h.get("source_shares"), h.get("replay_share")):
                lines.append("batches    " + mix)
    else:
        lines.append("daemon     not running")
    if report.get("exists"):
        docs = report["documents"]
        stored = docs.get("queued", 0) + docs.get("trained", 0)
        lines.append(f"documents  {stored:,} stored ({docs.get('trained', 0):,} trained, {docs.get('queued', 0):,} "
                     f"queued); {docs.get('duplicate', 0):,} duplicate, {docs.get('skipped', 0):,} skipped, "
                     f"{docs.get('failed', 0):,} failed")
        queued, withdrawn = tokens_untrained(report), report.get("tokens_withdrawn", 0)
        total = report["tokens_total"] - withdrawn
        text = f"text       {_count(total)} tokens stored, {_count(queued)} not yet trained"
        if withdrawn:
            text += f" ({_count(withdrawn)} withdrawn: forgotten, or earlier versions of rewritten files)"
        rate = h.get("tokens_per_s")
        if queued and rate:  # the share of a batch that is new text: the rest is replay
            replay = h.get("replay_share")
            seconds = seconds_to_train(queued, rate, replay if replay is not None else config.daemon.replay_fraction)
            text += f" (about {_duration(seconds)} to train at the current rate)"
        lines.append(text)
        last = report["last_checkpoint"]
        if last is None:
            lines.append("checkpoint none yet")
        else:
            age = _age(last["created_at"], now)
            lines.append(f"checkpoint step {last['step']:,}" + (f", {age} ago" if age else "") + f" ({last['path']})")
        if report.get("model"):
            lines.append(_model_line(report["model"], h))
        lines.append(_held_out_line(report["evaluation"], now))
        lines.extend(_source_lines(report["evaluation"]))
    lines.append(f"disk       {_disk_line(report['disk'])}")
    lines.extend(_forecast_lines(report.get("checkpoint_forecast")))
    lines.append(f"state dir  {report['state_dir']}")
    lines.append(f"database   {report['database']}" + ("" if report.get("exists") else "  (not created yet)"))
    return "\n".join(lines)


def _model_line(model: dict, h: dict) -> str:
    """`model      8 layers, d_model 128, 4 heads (1.62M parameters); grown twice, from 2 layers`: the
    last checkpoint's model, or a running daemon's live depth when it grew since."""
    layers, parameters, growths = model["n_layer"], model["parameters"], model.get("growths") or []
    if isinstance(h.get("n_layer"), int) and h["n_layer"] != layers:  # grown since the checkpoint
        layers, parameters = h["n_layer"], h.get("parameters") or parameters
    line = (f"model      {layers} layers, d_model {model['d_model']}, {model['n_head']} heads "
            f"({_count(parameters)} parameters)")
    count = max(len(growths), h.get("growths") or 0)
    if count:
        times = {1: "once", 2: "twice"}.get(count, f"{count} times")
        first = growths[0]["from"] if growths else None
        line += f"; grown {times}" + (f", from {first} layers" if first else "")
    return line


def _doing(h: dict) -> str:
    """What the daemon does now, from its health report."""
    if h.get("state") != "ready":
        return str(h.get("state") or "starting")
    if h.get("blocked"):
        return f"writes blocked ({h['blocked']}): training goes on in memory, ingest waits"
    if h.get("paused"):
        return "training paused by the operator (`crystalline resume` lets it go on); ingesting"
    if h.get("plateaued"):
        return "idle: the held-out figure stopped improving; waits for new text"
    if h.get("idle"):
        return "idle: waiting for text"
    if h.get("queue_tokens"):
        return "training on new text"
    return "training on earlier text (every stored token has been trained on once)"


def _held_out_line(evaluation: dict, now: float) -> str:
    latest, best, recent = evaluation["latest"], evaluation["best"], evaluation.get("recent") or []
    if latest is None:
        return "held-out   not measured yet"
    age = _age(latest["created_at"], now)
    line = (f"held-out   {latest['val_bits_per_byte']:.3f} bits/byte at step {latest['step']:,}"
            + (f", {age} ago" if age else "") + f"; best {best['val_bits_per_byte']:.3f} at step {best['step']:,}")
    if best.get("remeasured"):
        line += " (measured again on today's held-out text)"
    # the trend compares like with like: the recent evaluations on the latest's held-out set (new
    # text and new sources add blocks to it, and harder text is no regression)
    same = [r for r in recent if r["holdout_tokens"] == latest["holdout_tokens"]]
    if len(same) >= 2:
        change = same[-1]["val_bits_per_byte"] - same[0]["val_bits_per_byte"]
        trend = "improving" if change < -0.001 else "worse" if change > 0.001 else "flat"
        line += f"; {trend} ({change:+.3f} over the last {len(same)} evaluations)"
    elif len(recent) >= 2:
        line += "; its held-out text grew since the evaluation before"
    return line


def _source_lines(evaluation: dict) -> list[str]:
    """The latest evaluation's figure per source, one line each (when there are two or more), with
    its change over the recent evaluations that scored the same held-out tokens of that source."""
    latest, recent = evaluation["latest"], evaluation.get("recent") or []
    sources = (latest or {}).get("sources") or {}
    if len(sources) < 2:
        return []
    width = max(len(name) for name in sources)
    lines = []
    for name, figure in sorted(sources.items()):
        line = (f"  {name:<{width}}  {figure['val_bits_per_byte']:.3f} bits/byte on "
                f"{_count(figure['holdout_tokens'])} held-out tokens")
        same = [r["sources"][name]["val_bits_per_byte"] for r in recent
                if ((r.get("sources") or {}).get(name) or {}).get("holdout_tokens") == figure["holdout_tokens"]]
        if len(same) >= 2:
            line += f"; {same[-1] - same[0]:+.3f} over the last {len(same)} evaluations"
        lines.append(line)
    return lines


def _age(timestamp: Any, now: float) -> str | None:
    """How long ago an ISO time (or a datetime's str()) was, for a person; None if unreadable."""
    from datetime import datetime, timezone

    try:
        when = datetime.fromisoformat(str(timestamp).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return _duration(now - when.timestamp())

