"""The whole desk through the daemon: a user copies a documentation tree into the watched folder
of a daemon that is already training, and waits until every file is accounted for.

One run: `python -m crawler run --state-dir STATE --http off` (crawler.bench.harness's daemon) on
its defaults, with only `[watch] roots` (a fresh inbox) and `[log] format = "json"` set, on a fresh
state dir under WORK. The inbox holds one seed text (the checkout's README.md, so that the trainer
has something to train on); once `daemon_ready` and the first `train_step` are in, the trainer runs
--idle-seconds (60) alone: its `train_step` tokens_per_s (harmonic mean) and steps per second are the
idle figures. Then every top-level entry of --desk but .debs and VERSIONS is copied into the inbox
with `cp -a` (the copy's own time counts), and the events are followed until each file the
watcher offers has a terminal event (`file_ingested`, duplicate or not; `file_skipped`;
`file_failed`), or --deadline (2400) s after the copy started.

Files expected: what the watcher offers, walked on the inbox after the copy: regular files and
symlinks (a symlink is offered as a file: it is stored through its target, or skipped as
`outside_root`, or its dangling target is reported `vanished`), hidden and temporary names and
hidden folders passed over (crawler.ingest.reading.is_ignored_name), symlinks to folders neither
entered nor offered. An event for a path outside that set is counted as unexpected.

Recorded: copy seconds; wall seconds from the copy's start to the last terminal event; files/s
and MB/s (bytes of the regular files copied); counts by outcome and by skip reason (regular files
and symlinks apart); files with no terminal event or more than one (a few named); the daemon's
peak RSS (VmHWM of /proc/PID/status, and the largest sampled sum of VmRSS over the daemon and
its child processes); training tokens/s and steps/s while the desk is read, against the idle
figures. After a SIGTERM stop (exit 0 required): `crystalline status` and `crystalline generate
PROMPT` on the state dir, printed. The state dir is kept under WORK; the inbox copy is removed.

    python bench/desk_daemon.py [--desk /work/desk] [--work DIR] [--set daemon.ingest_share=1] [--allow-dirty]
Not a test (about 15 minutes); its row goes to bench/results/desk_daemon.jsonl, its figures to
docs/BENCHMARKS.md.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

from crawler.bench.harness import (
    BenchDaemon,
    RunFailed,
    mean_rate,
    parse_settings,
    record_each,
    with_settings,
)
from crawler.config import DaemonConfig
from crawler.bench.results import REPO, ResultLog, add_result_flags
from crawler.ingest.reading import is_ignored_name

TERMINAL = ("file_ingested", "file_skipped", "file_failed")
LEFT_OUT = (".debs", "VERSIONS")


def expected_files(inbox: Path) -> tuple[dict[str, str], int, int]:
    """{path: "file" | "symlink"} the watcher offers under `inbox`, the bytes of its regular
    files, and how many names were passed over as hidden or temporary."""
    offered: dict[str, str] = {}
    size = hidden = 0
    for folder, dirs, files in os.walk(inbox, followlinks=False):
        kept = []
        for name in dirs:
            path = os.path.join(folder, name)
            if is_ignored_name(name):
                hidden += 1
            elif not os.path.islink(path):
                kept.append(name)
        dirs[:] = kept  # a symlinked folder is in `dirs`: neither entered nor offered
        for name in files:
            path = os.path.join(folder, name)
            if is_ignored_name(name):
                hidden += 1
                continue
            st = os.lstat(path)
            if os.path.islink(path):
                offered[path] = "symlink"
            else:
                offered[path] = "file"
                size += st.st_size
    return offered, size, hidden


class Memory(threading.Thread):
    """Polls /proc every `every` s: the daemon's VmHWM and the largest sum of VmRSS over it and its
    descendants, in MB."""

    def __init__(self, pid: int, every: float = 0.5):
        super().__init__(daemon=True, name="desk-daemon-memory")
        self.pid, self.every, self.stopped = pid, every, threading.Event()
        self.hwm_mb = self.tree_mb = 0.0

    @staticmethod
    def field(pid: int, name: str) -> float:
        try:
            for line in Path(f"/proc/{pid}/status").read_text().splitlines():
                if line.startswith(name + ":"):
                    return int(line.split()[1]) / 1024
        except OSError:
            pass
        return 0.0

    def tree(self) -> list[int]:
        pids, todo = [], [self.pid]
        while todo:
            pid = todo.pop()
            pids.append(pid)
            try:
                for task in os.listdir(f"/proc/{pid}/task"):
                    todo += [int(c) for c in Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
            except OSError:
                pass
        return pids

    def run(self) -> None:
        while not self.stopped.wait(self.every):
            self.hwm_mb = max(self.hwm_mb, self.field(self.pid, "VmHWM"))
            self.tree_mb = max(self.tree_mb, sum(self.field(p, "VmRSS") for p in self.tree()))


def events_since(d: BenchDaemon, start: float) -> list[dict]:
    """The events received at or after `start` (perf_counter)."""
    with d.cond:
        return [e for e in d.events if e["_received"] >= start]


def train_figures(d: BenchDaemon, start: float, end: float) -> dict:
    """tokens/s (harmonic mean of train_step tokens_per_s) and steps/s (first to last event's
    step over their arrival times) of the train_step events received in [start, end)."""
    steps = [e for e in d.find("train_step") if start <= e["_received"] < end]
    rate = mean_rate([e["tokens_per_s"] for e in steps if e.get("tokens_per_s")])
    per_s = None
    if len(steps) > 1 and steps[-1]["_received"] > steps[0]["_received"]:
        per_s = (steps[-1]["step"] - steps[0]["step"]) / (steps[-1]["_received"] - steps[0]["_received"])
    return {"tokens_per_s": round(rate, 1) if rate else None, "steps_per_s": round(per_s, 4) if per_s else None,
            "events": len(steps)}


def measure(args, work: Path) -> dict:
    inbox, state = (work / "inbox").resolve(), work / "state"
    inbox.mkdir(parents=True)
    shutil.copyfile(REPO / "README.md", inbox / "seed-readme.md")
    sections = with_settings({"watch": {"roots": [str(inbox)]}, "log": {"format": "json"}}, args.settings)
    d = BenchDaemon(state, sections, ["--http", "off"])
    memory = Memory(d.proc.pid)
    memory.start()
    try:
        ready = d.first("daemon_ready")
        print(f"ready after {ready['_received'] - d.launched:.1f} s; waiting for training", file=sys.stderr, flush=True)
        first_step = d.first("train_step", timeout=600)
        idle_start = first_step["_received"]
        d.run_until(idle_start + args.idle_seconds)
        idle = train_figures(d, idle_start, idle_start + args.idle_seconds)
        print(f"idle training: {idle}", file=sys.stderr, flush=True)

        sources = sorted(p for p in args.desk.iterdir() if p.name not in LEFT_OUT)
        copy_start = time.perf_counter()
        subprocess.run(["cp", "-a", *map(str, sources), str(inbox) + "/"], check=True)
        copy_s = time.perf_counter() - copy_start
        offered, source_bytes, hidden = expected_files(inbox)
        offered.pop(str(inbox / "seed-readme.md"), None)
        print(f"copied in {copy_s:.1f} s: {len(offered)} files offered ({source_bytes / 1e6:.1f} MB), "
              f"{hidden} hidden names passed over", file=sys.stderr, flush=True)

        deadline = copy_start + args.deadline
        done_at, report = None, copy_start + 30
        while time.perf_counter() < deadline:
            if d.proc.poll() is not None:
                raise RunFailed(f"daemon exited {d.proc.returncode} during ingest:\n{d.tail()}")
            finished = {e["path"] for e in events_since(d, copy_start) if e.get("event") in TERMINAL}
            left = len(offered.keys() - finished)
            if not left:
                done_at = time.perf_counter()
                break
            if time.perf_counter() >= report:
                report += 30
                print(f"{time.perf_counter() - copy_start:.0f} s: {left} files left", file=sys.stderr, flush=True)
            time.sleep(2.0)
        time.sleep(args.grace)  # events that come late (a second event for a file) still count
        terminal = [e for e in events_since(d, copy_start) if e.get("event") in TERMINAL]
        end = max((e["_received"] for e in terminal if e["path"] in offered), default=copy_start)
        ingest = train_figures(d, copy_start, end)
        status_events = d.find("status")
        d.stop()
    finally:
        memory.stopped.set()
        d.kill()
        shutil.rmtree(inbox, ignore_errors=True)

    per_path: dict[str, list[dict]] = {}
    for e in terminal:
        per_path.setdefault(e["path"], []).append(e)

    def outcome(e: dict) -> str:
        if e["event"] == "file_ingested":
            return "ingested_duplicate" if e.get("duplicate") else ("ingested_grown" if e.get("offset") else "ingested")
        return "skipped" if e["event"] == "file_skipped" else "failed"

    outcomes = {kind: Counter() for kind in ("file", "symlink")}
    reasons = {kind: Counter() for kind in ("file", "symlink")}
    for path, kind in offered.items():
        for e in per_path.get(path, [])[:1]:
            outcomes[kind][outcome(e)] += 1
            if e["event"] == "file_skipped":
                reasons[kind][e.get("reason")] += 1
    none = sorted(p for p in offered if p not in per_path)
    many = sorted(p for p in offered if len(per_path.get(p, [])) > 1)
    members = sorted(p for p in per_path if p not in offered and p.split("!", 1)[0] in offered)  # ARCHIVE!member
    unexpected = sorted(p for p in per_path if p not in offered and p != str(inbox / "seed-readme.md")
                        and p.split("!", 1)[0] not in offered)
    failed = [{"path": e["path"], "error": str(e.get("error"))[:200]} for e in terminal if e["event"] == "file_failed"]
    samples = {}
    for e in terminal:
        if e["event"] == "file_skipped":
            samples.setdefault(e.get("reason"), []).append(f"{e['path'].removeprefix(str(inbox))}: {e.get('detail')}")
    wall_s = end - copy_start
    stored = sum(1 for p in offered if per_path.get(p) and per_path[p][0]["event"] == "file_ingested")
    problems = Counter(e["event"] for e in d.events if e.get("level") in ("warning", "error")
                       and e.get("event") not in TERMINAL)
    ratio = (ingest["tokens_per_s"] / idle["tokens_per_s"]) if ingest["tokens_per_s"] and idle["tokens_per_s"] else None
    step_ratio = (ingest["steps_per_s"] / idle["steps_per_s"]) if ingest["steps_per_s"] and idle["steps_per_s"] else None
    rss = [e["rss_mb"] for e in status_events if e.get("rss_mb") is not None]
    last_status = status_events[-1] if status_events else {}
    return {
        "key": "desk_daemon", "desk": str(args.desk), "left_out": list(LEFT_OUT), "state_dir": str(state),
        "files_offered": len(offered), "symlinks_offered": sum(1 for k in offered.values() if k == "symlink"),
        "hidden_names_passed_over": hidden, "source_bytes": source_bytes,
        "copy_s": round(copy_s, 1), "wall_s": round(wall_s, 1), "complete": done_at is not None,
        "files_per_s": round(len(per_path.keys() & offered.keys()) / wall_s, 1) if wall_s else None,
        "mb_per_s": round(source_bytes / 1e6 / wall_s, 2) if wall_s else None,
        "stored_files": stored,
        "outcomes": {k: dict(v) for k, v in outcomes.items()},
        "skip_reasons": {k: dict(v.most_common()) for k, v in reasons.items()},
        "skip_samples": {r: s[:3] for r, s in samples.items()},
        "no_terminal_event": len(none), "no_terminal_event_sample": none[:10],
        "several_terminal_events": len(many),
        "several_terminal_events_sample": {p: [outcome(e) for e in per_path[p]] for p in many[:10]},
        "archive_members": len(members), "unexpected_paths": len(unexpected), "unexpected_sample": unexpected[:10],
        "failed": failed[:10], "warnings_and_errors": dict(problems),
        "idle_training": idle, "ingest_training": ingest,
        "training_ratio_tokens": round(ratio, 3) if ratio else None,
        "training_ratio_steps": round(step_ratio, 3) if step_ratio else None,
        "peak_rss_mb": round(memory.hwm_mb, 1), "peak_tree_rss_mb": round(memory.tree_mb, 1),
        "status_rss_mb_max": max(rss) if rss else None,
        "last_status": {k: last_status.get(k) for k in ("step", "tokens_trained", "queue_documents", "queue_tokens",
                                                        "tokens_per_s", "epoch", "plateaued", "idle")},
        "target_10_min": done_at is not None and wall_s <= 600,
        "target_80_percent": ratio is not None and ratio >= 0.8,
    }


def crystalline(*args: str, timeout: float = 600.0) -> subprocess.CompletedProcess:
    """`python -m crawler ARGS` in the checkout; output decoded with errors replaced (a byte-level
    model's completion need not be valid UTF-8)."""
    try:
        return subprocess.run([sys.executable, "-m", "crawler", *args], cwd=REPO, capture_output=True, text=True, check=False,
                              errors="replace", timeout=timeout)
    except subprocess.TimeoutExpired:
        raise RunFailed(f"crystalline {' '.join(args)} took over {timeout:.0f} s") from None


def after(state: Path, prompt: str) -> dict:
    """`crystalline status` and `crystalline generate PROMPT` on the stopped daemon's state dir."""
    status = crystalline("status", "--state-dir", str(state), timeout=300)
    generated = crystalline("generate", prompt, "--state-dir", str(state), "--max-new-tokens", "200", "--seed", "1")
    if generated.returncode != 0:  # no best checkpoint yet: the newest one
        generated = crystalline("generate", prompt, "--latest", "--state-dir", str(state),
                                "--max-new-tokens", "200", "--seed", "1")
    for name, done in (("status", status), ("generate", generated)):
        print(f"--- crystalline {name} (exit {done.returncode}) ---\n{done.stdout}{done.stderr[-2000:]}", flush=True)
    return {"status_exit": status.returncode, "generate_exit": generated.returncode,
            "generate_text": generated.stdout[-1500:]}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--desk", type=Path, default=Path("/work/desk"))
    parser.add_argument("--work", type=Path, help="work folder, kept (default: a new one under /tmp)")
    parser.add_argument("--idle-seconds", type=float, default=60.0)
    parser.add_argument("--deadline", type=float, default=2400.0, help="seconds after the copy starts")
    parser.add_argument("--grace", type=float, default=10.0, help="seconds of events kept after the last file")
    parser.add_argument("--prompt", default="The SELECT statement")
    parser.add_argument("--set", default="", help="settings beside the defaults: section.key=value/section.key=value")
    add_result_flags(parser, "desk_daemon.jsonl")
    args = parser.parse_args(argv)
    try:
        args.settings = parse_settings(args.set) if args.set else ()
    except ValueError as exc:
        parser.error(str(exc))
    work = args.work or Path(tempfile.mkdtemp(prefix="crystalline-desk-"))

    def run() -> dict:
        row = measure(args, work)
        print(json.dumps(row, indent=1), flush=True)
        return row | after(Path(row["state_dir"]), args.prompt)

    key = "desk_daemon" + (f":{args.set}" if args.set else "")
    return record_each(ResultLog(args.results, args.allow_dirty), [(key, run)], "desk_daemon.py",
                       ingest_share=dict(((s, k), v) for s, k, v in args.settings).get(
                           ("daemon", "ingest_share"), DaemonConfig().ingest_share))


if __name__ == "__main__":
    sys.exit(main())
