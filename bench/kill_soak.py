"""Kill -9 soak: the daemon killed at random moments of ingest and training, with bad inputs mixed in.

Each cycle starts `python -m crawler run` on one state directory (a tiny model, a checkpoint every
5 steps, idle "replay" so that it always trains), drops 1-4 good text files and, at random, bad
inputs (binary, empty, too large, a symlink loop, a symlink out of the root, a FIFO, an editor
autosave, a file deleted at once; and a good file whose name is not UTF-8), waits a random 0.5-4 s, and SIGKILLs
it. A last daemon then runs until every good file is stored and stops with SIGTERM (exit 0 is
required). The check, on the database and the files:

  - every good file is stored exactly once (one in-stream document per name), no bad input is;
  - no text is stored twice (content hashes of in-stream documents are distinct);
  - the chunks tile the stream (no gap, no overlap) up to meta.stream_end;
  - the training cursor equals the newest checkpoint row (step, stream position), and that
    checkpoint file loads with the same step and position;
  - no temporary files are left in the checkpoints folder.

Each daemon is crawler.bench.harness's; what each one logged is written to DIR/logs/.

    python bench/kill_soak.py --cycles 100 [--seed 1] [--keep DIR] [--json]
Not a test (it takes about 10 minutes for 100 cycles); record its figures in docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import sqlite3
import sys
import tempfile
import time
from pathlib import Path

from crawler.bench.harness import BenchDaemon, RunFailed
from engine import load_checkpoint

WORDS = "river stone light crystal north wind alpha beta gamma delta the of and to".split()
IN_STREAM = ("queued", "trained")


def config(inbox: Path) -> dict[str, dict]:
    """A tiny model, a checkpoint every 5 steps, idle "replay" so that it always trains."""
    return {
        "watch": {"roots": [str(inbox)], "settle_seconds": 0.3, "rescan_interval_seconds": 5.0},
        "daemon": {"checkpoint_every_steps": 5, "keep_checkpoints": 3, "idle": "replay", "log_every": 5,
                   "status_interval_seconds": 1.0, "after_ingest": "keep"},
        "model": {"context_length": 32, "d_model": 32, "n_layer": 1, "n_head": 2},
        "train": {"batch_size": 4, "seq_len": 32, "warmup_steps": 5, "threads": 2},
        "extract": {"max_file_bytes": 50000},
        "log": {"level": "info", "format": "json"},
    }


def good_text(seed: int, size: int) -> str:
    rng = random.Random(seed)
    return f"document {seed}\n" + " ".join(rng.choice(WORDS) for _ in range(size // 6)) + "\n"


def drop_good(inbox: Path, name: str, seed: int, size: int) -> None:
    path = inbox / name
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name("." + path.name + ".part")
    tmp.write_text(good_text(seed, size))
    os.rename(tmp, path)


def drop_bad(inbox: Path, kind: str, n: int) -> str | None:
    """One bad input of `kind` in its own folder; returns the key (folder/name, as stored) of
    the one kind that must be stored all the same, the file whose name is not UTF-8."""
    folder = inbox / f"bad{n:03d}"
    folder.mkdir(parents=True, exist_ok=True)
    if kind == "binary":
        (folder / "bad.bin").write_bytes(bytes(range(256)) * 40)
    elif kind == "empty":
        (folder / "bad-empty.txt").write_bytes(b"")
    elif kind == "huge":
        (folder / "bad-huge.txt").write_text("x" * 60_000)
    elif kind == "name":  # a name that is not UTF-8: a good file all the same, stored (escaped) once
        with open(os.path.join(os.fsencode(folder), b"odd-\xff\xfename.txt"), "w") as f:
            f.write(good_text(10_000_000 + n, 2000))
    elif kind == "loop":
        os.symlink(folder / "bad-loop-b", folder / "bad-loop-a")
        os.symlink(folder / "bad-loop-a", folder / "bad-loop-b")
    elif kind == "outside":
        outside = inbox.parent / f"outside{n:03d}.txt"
        outside.write_text("text outside the watched folder\n")
        os.symlink(outside, folder / "bad-outside.txt")
    elif kind == "fifo":
        os.mkfifo(folder / "bad-pipe.txt")
    elif kind == "autosave":
        (folder / "#bad-notes.txt#").write_text("an editor's autosave\n")
    elif kind == "deleted":
        gone = folder / "bad-gone.txt"
        gone.write_text("here for a moment\n")
        gone.unlink()
    return f"{folder.name}/odd-%FF%FEname.txt" if kind == "name" else None


def key_of(source_path: str) -> str:
    """folder/name of a stored source path (names that are not UTF-8 are stored escaped)."""
    path = Path(source_path.removeprefix("escaped:"))
    return f"{path.parent.name}/{path.name}"


BAD_KINDS = ("binary", "empty", "huge", "name", "loop", "outside", "fifo", "autosave", "deleted")


def keep_log(daemon: BenchDaemon, log: Path) -> list[dict]:
    """Write what a daemon logged to `log` (for --keep); returns its events."""
    log.write_text("".join(daemon.raw))
    return daemon.events


def rows(state: Path) -> list[dict]:
    connection = sqlite3.connect(state / "corpus.db")
    connection.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in connection.execute("SELECT * FROM documents ORDER BY id")]
    finally:
        connection.close()


def check(state: Path, good: set[str]) -> dict:
    """The consistency checks; returns figures and a list of failures."""
    failures: list[str] = []
    documents = rows(state)
    in_stream = [r for r in documents if r["status"] in IN_STREAM]
    names = [key_of(r["source_path"]) for r in in_stream]
    missing = sorted(good - set(names))
    twice = sorted({n for n in names if names.count(n) > 1})
    bad = sorted(n for n in names if n not in good)
    hashes = [r["content_hash"] for r in in_stream]
    if missing:
        failures.append(f"good files not stored: {missing[:10]}")
    if twice:
        failures.append(f"files stored more than once: {twice[:10]}")
    if bad:
        failures.append(f"bad inputs stored: {bad[:10]}")
    if len(hashes) != len(set(hashes)):
        failures.append("the same text is stored twice")
    connection = sqlite3.connect(state / "corpus.db")
    try:
        spans = connection.execute("SELECT stream_start, token_count FROM chunks ORDER BY stream_start").fetchall()
        stream_end = int(connection.execute("SELECT value FROM meta WHERE key = 'stream_end'").fetchone()[0])
        cursor = connection.execute("SELECT stream_position, step FROM training_cursor").fetchone()
        latest = connection.execute(
            "SELECT step, path, stream_position FROM checkpoints ORDER BY id DESC LIMIT 1").fetchone()
    finally:
        connection.close()
    position = 0
    for start_, count in spans:
        if start_ != position:
            failures.append(f"the chunks do not tile the stream at {position} (next starts at {start_})")
            break
        position += count
    if position != stream_end:
        failures.append(f"the chunks end at {position}, meta.stream_end is {stream_end}")
    if latest is None or cursor is None or (latest[0], latest[2]) != (cursor[1], cursor[0]):
        failures.append(f"cursor {cursor} does not match the newest checkpoint row {latest}")
    else:
        path = Path(latest[1])
        if not path.is_absolute():
            path = state / "checkpoints" / path.name
        checkpoint = load_checkpoint(path)
        if (checkpoint.step, checkpoint.extra.get("stream_position")) != (latest[0], latest[2]):
            failures.append(f"checkpoint {path.name} holds step {checkpoint.step}, not {latest[0]}")
    debris = [p.name for p in (state / "checkpoints").iterdir() if p.name.endswith(".tmp") or p.name.startswith(".")]
    if debris:
        failures.append(f"temporary files left in checkpoints/: {debris}")
    return {"documents": len(documents), "in_stream": len(in_stream), "good_files": len(good),
            "stream_tokens": stream_end, "step": cursor[1] if cursor else None, "failures": failures}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--cycles", type=int, default=100)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--bad-share", type=float, default=0.6, help="chance of a bad input in a cycle")
    parser.add_argument("--keep", type=Path, help="work in this folder and keep it (default: a temporary one)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    rng = random.Random(args.seed)
    work = args.keep or Path(tempfile.mkdtemp(prefix="crystalline-kill-soak-"))
    state, inbox, logs = work / "state", work / "inbox", work / "logs"
    for folder in (state, inbox, logs):
        folder.mkdir(parents=True, exist_ok=True)
    sections = config(inbox)
    good: set[str] = set()
    bad_counts: dict[str, int] = {}
    last_events: dict[str, int] = {}
    t0 = time.monotonic()
    daemon = None
    try:
        for cycle in range(args.cycles):
            daemon = BenchDaemon(state, sections)
            for _ in range(rng.randint(1, 4)):
                name = f"good-{len(good):04d}.txt"
                drop_good(inbox / f"c{cycle:03d}", name, seed=len(good), size=rng.randint(500, 6000))
                good.add(f"c{cycle:03d}/{name}")
            if rng.random() < args.bad_share:
                kind = rng.choice(BAD_KINDS)
                if (stored := drop_bad(inbox, kind, cycle)) is not None:
                    good.add(stored)
                bad_counts[kind] = bad_counts.get(kind, 0) + 1
            time.sleep(rng.uniform(0.5, 4.0))
            daemon.kill()
            seen = keep_log(daemon, logs / f"cycle-{cycle:03d}.jsonl")
            last = seen[-1]["event"] if seen else "(nothing)"
            last_events[last] = last_events.get(last, 0) + 1
        daemon = BenchDaemon(state, sections)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            stored = {key_of(r["source_path"]) for r in rows(state) if r["status"] in IN_STREAM} \
                if (state / "corpus.db").exists() else set()
            if good <= stored and daemon.find("train_step"):
                break
            time.sleep(1.0)
        try:
            daemon.stop(timeout=120)
        except RunFailed:  # its exit status is one of the checks below
            daemon.kill()
        code = daemon.proc.returncode
        final = keep_log(daemon, logs / "final.jsonl")
        result = check(state, good)
        if code != 0:
            result["failures"].append(f"the last daemon exited {code} after SIGTERM")
        result |= {"cycles": args.cycles, "seed": args.seed, "bad_inputs": bad_counts,
                   "killed_after": dict(sorted(last_events.items(), key=lambda kv: -kv[1])),
                   "daemon_stopped": any(e.get("event") == "daemon_stopped" for e in final),
                   "minutes": round((time.monotonic() - t0) / 60, 1)}
    finally:
        if daemon is not None:
            daemon.kill()
        if args.keep is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))
    else:
        for key, value in result.items():
            print(f"{key:>16}: {value}")
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
