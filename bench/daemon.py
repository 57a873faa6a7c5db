"""The daemon as a user sees it: start-up, drop-to-ingested latency, training overhead, RSS, idle CPU.

Each measurement runs `python -m crawler run --state-dir TMP` as a subprocess on a fresh temporary
state dir with its own STATE_DIR/crystalline.toml, follows its JSON events on stdout (the harness's
daemon, crawler.bench.harness, on crawler.service.child as tests/e2e does), stops it with SIGTERM
and checks it exits 0. Model: size S of engine.sizes (d=128, L=4, H=4; --size picks another),
T=128, batch 16, 2 threads, lr 1e-3, warmup 100, constant, the daemon's architecture and
optimizer, unless flags change them.

  ready     launch -> `daemon_ready` received, warm numba cache: one untimed run, then --runs (5);
            each, the median, and the `seconds` the event reports.
  latency   empty inbox, settle_seconds --settle (1.0), idle "sleep": --files (50) files --interval
            (0.2) s apart, written to a hidden temp name and renamed in, then as many written in
            place (open/write/close). Latency = the file_ingested event's timestamp (UTC) - the wall
            clock right after the rename or close: p50/p99/max and beyond settle (- settle_seconds).
            Then --burst (1000) small files written in place at once: per-file p50/p99, and first
            drop -> last file_ingested.
  overhead  tokens/s, daemon vs `crystalline train` at the same config, daemon/train/daemon/train.
            Daemon: idle "replay" on a copy of --corpus; once every file is ingested, --warmup-seconds
            (30), then its train_step events over --window (60) s. Train: `crystalline train CORPUS
            --steps N`, N lasting about warm-up + window at the daemon's rate; its train_step events
            (stderr) after the first --warmup-seconds. A rate is tokens / seconds over the events
            (harmonic mean of tokens_per_s; each event covers log_every steps). The daemon's is wall
            clock (store reads, replay, logging, checkpoints included); train's is Trainer.step time.
  soak      idle "replay" on a copy of --corpus, `status` every --status-interval (10) s for
            --minutes (30): rss_mb first/min/max/last, least-squares slope in MB/h after the first
            2 minutes; --csv PATH writes (seconds, rss_mb).
  idle      idle "sleep", 5 files ingested and trained on, trainer idle: the daemon's CPU time
            (utime + stime from /proc/PID/stat) over --idle-seconds (60), as % of one core.

    python bench/daemon.py ready latency overhead idle [--json]
    python bench/daemon.py soak --minutes 30 --csv soak.csv
Not a test; `overhead` and `soak` need the shared corpus.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import datetime
from pathlib import Path

import numpy as np

from crawler.bench.harness import (
    DEFAULT_CORPUS,
    BenchDaemon,
    RunFailed,
    json_events,
    mean_rate,
    running,
)
from crawler.service.child import ChildFailed
from engine.sizes import parse_size

LOG_EVERY = 10
MEASUREMENTS = ("ready", "latency", "overhead", "soak", "idle")
WORDS = "river stone light crystal north wind alpha beta gamma delta the of and to".split()


def daemon(args, idle="sleep", settle=1.0, status=30.0, corpus: Path | None = None):
    """A ready daemon (crawler.bench.harness.running) of this run's size and recipe."""
    sections = {
        "daemon": {"idle": idle, "status_interval_seconds": float(status), "log_every": LOG_EVERY},
        "model": {"context_length": args.context, **args.size.shape()},
        "train": {"batch_size": args.batch_size, "seq_len": args.context, "learning_rate": 0.001, "warmup_steps": 100,
                  "schedule": "constant", "threads": args.threads},
        "log": {"level": "info"},
    }
    return running(sections, corpus, settle_seconds=settle)


def wall(event: dict) -> float:
    return datetime.fromisoformat(event["timestamp"]).timestamp()


def text_of(name: str, seed: int, size: int) -> str:
    """Unique text: the name first, then `size` bytes or so of words."""
    return f"document {name}\n" + " ".join(np.random.default_rng(seed).choice(WORDS, size=size // 6)) + "\n"


def drop(path: Path, text: str, rename: bool) -> float:
    """Write a file into the inbox; the wall-clock time it is complete there."""
    if rename:
        tmp = path.with_name("." + path.name + ".part")
        tmp.write_text(text)
        os.rename(tmp, path)
    else:
        with open(path, "w") as f:
            f.write(text)
    return time.time()


def ingested_times(d: BenchDaemon, names: list[str], timeout: float) -> dict[str, float]:
    want = set(names)

    def done(events):
        seen = {}
        for e in events:
            name = Path(e.get("path", "")).name if e.get("event") == "file_ingested" else None
            if name in want and name not in seen:
                seen[name] = wall(e)
        return seen if len(seen) == len(want) else None

    return d.wait(done, timeout, f"file_ingested for {len(want)} files")


def pct(values, *qs) -> list[float]:
    return [round(float(np.percentile(values, q)), 4) for q in qs]


def measure_ready(args) -> dict:
    launches, reported = [], []
    for run in range(args.runs + 1):  # run 0 warms the numba cache and the page cache
        with daemon(args) as d:
            ready = d.find("daemon_ready")[0]
            if run:
                launches.append(round(ready["_received"] - d.launched, 3))
                reported.append(ready["seconds"])
    return {"launch_to_ready_s": launches, "median_s": float(np.median(launches)),
            "event_seconds": reported, "event_seconds_median": float(np.median(reported))}


def latencies(d: BenchDaemon, prefix: str, count: int, size: int, rename: bool, interval: float, timeout: float):
    """Drop `count` files; (latencies, drop times, ingested times), in seconds of wall clock."""
    dropped = {}
    for i in range(count):
        name = f"{prefix}-{i:05d}.txt"
        dropped[name] = drop(d.inbox / name, text_of(name, i, size), rename)
        time.sleep(interval)
    times = ingested_times(d, list(dropped), timeout)
    return [times[n] - t for n, t in dropped.items()], dropped, times


def measure_latency(args) -> dict:
    out = {"settle_seconds": args.settle}
    with daemon(args, settle=args.settle) as d:
        for variant, rename in (("renamed", True), ("in_place", False)):
            lat, _, _ = latencies(d, variant, args.files, 2000, rename, args.interval, 120 + 2 * args.settle)
            figures = dict(zip(("p50_s", "p99_s", "max_s"), pct(lat, 50, 99, 100)))
            out[variant] = {"files": args.files, **figures,
                            **{f"beyond_settle_{k}": round(v - args.settle, 4) for k, v in figures.items()}}
        lat, dropped, times = latencies(d, "burst", args.burst, 300, False, 0.0, 600)
        first = min(dropped.values())
        out["burst"] = {"files": args.burst, "write_s": round(max(dropped.values()) - first, 3),
                        **dict(zip(("p50_s", "p99_s"), pct(lat, 50, 99))),
                        "first_drop_to_last_ingested_s": round(max(times.values()) - first, 3)}
    return out


def rate(events: list[dict]) -> float | None:
    """Tokens over seconds across train_step events (each covers log_every steps)."""
    return mean_rate([e["tokens_per_s"] for e in events if e.get("tokens_per_s")])


def daemon_rate(args, corpus: Path) -> dict:
    n_files = sum(1 for p in corpus.rglob("*") if p.is_file() and not p.name.startswith("."))
    with daemon(args, idle="replay", corpus=corpus) as d:
        d.wait(lambda ev: sum(e.get("event") in ("file_ingested", "file_skipped", "file_failed") for e in ev) >= n_files,
               600, f"{n_files} corpus files ingested")
        start = time.perf_counter() + args.warmup_seconds
        time.sleep(args.warmup_seconds + args.window)
        end = time.perf_counter()
        # the first event's window opens at the trainer's start, idle time included: left out
        steps = [e for e in d.find("train_step")[1:] if start <= e["_received"] <= end]
    return {"tokens_per_s": round(rate(steps) or 0.0, 1), "events": len(steps),
            "replay_only_events": sum(e.get("new_windows") == 0 for e in steps)}


def train_rate(args, corpus: Path, tokens_per_s: float) -> dict:
    steps = max(2 * LOG_EVERY, int(tokens_per_s * (args.warmup_seconds + args.window) / (args.batch_size * args.context)))
    with tempfile.TemporaryDirectory(prefix="crystalline-train-bench-") as state:
        cmd = [sys.executable, "-m", "crawler", "train", str(corpus), "--steps", str(steps), "--state-dir", state,
               "--threads", str(args.threads), "--context", str(args.context), "--d-model", str(args.size.d_model),
               "--layers", str(args.size.n_layer), "--heads", str(args.size.n_head), "--batch-size", str(args.batch_size),
               "--lr", "0.001", "--warmup", "100", "--schedule", "constant", "--log-every", str(LOG_EVERY)]
        proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RunFailed(f"crystalline train exited {proc.returncode}:\n{proc.stderr[-3000:]}")
    events = json_events(proc.stderr)
    started = wall(next(e for e in events if e.get("event") == "train_started"))
    steps_ev = [e for e in events if e.get("event") == "train_step"]
    kept = [e for e in steps_ev if wall(e) >= started + args.warmup_seconds] or steps_ev[1:] or steps_ev
    return {"tokens_per_s": round(rate(kept) or 0.0, 1), "events": len(kept), "steps": steps}


def measure_overhead(args) -> dict:
    corpus = Path(args.corpus)
    runs = []
    for _ in range(2):
        d = daemon_rate(args, corpus)
        if not d["tokens_per_s"]:
            raise RunFailed("no train_step events from the daemon in the window (a longer --window?)")
        runs.append({"daemon": d, "train": train_rate(args, corpus, d["tokens_per_s"])})
        print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    daemon = float(np.mean([r["daemon"]["tokens_per_s"] for r in runs]))
    train = float(np.mean([r["train"]["tokens_per_s"] for r in runs]))
    return {"runs": runs, "daemon_tokens_per_s": round(daemon, 1), "train_tokens_per_s": round(train, 1),
            "ratio_daemon_over_train": round(daemon / train, 4), "overhead_percent": round(100 * (1 - daemon / train), 2)}


def measure_soak(args) -> dict:
    with daemon(args, idle="replay", status=args.status_interval, corpus=Path(args.corpus)) as d:
        end = time.perf_counter() + 60 * args.minutes
        while (left := end - time.perf_counter()) > 0:
            time.sleep(min(60.0, left))
            status = d.find("status")
            if status and not args.json:
                print(f"soak: {(time.perf_counter() - d.launched) / 60:.1f} min, rss {status[-1]['rss_mb']} MB, "
                      f"step {status[-1].get('step')}", file=sys.stderr, flush=True)
        samples = [(round(e["_received"] - d.launched, 1), e["rss_mb"]) for e in d.find("status")]
    if not samples:
        raise RunFailed("no status events (a longer --minutes or a shorter --status-interval?)")
    if args.csv:
        Path(args.csv).write_text("seconds,rss_mb\n" + "".join(f"{t},{r}\n" for t, r in samples))
    late = [(t, r) for t, r in samples if t >= 120.0]
    slope = float(np.polyfit(*zip(*late), 1)[0]) * 3600 if len(late) >= 2 else None
    rss = [r for _, r in samples]
    return {"samples": len(samples), "seconds": samples[-1][0], "first_mb": rss[0], "min_mb": min(rss),
            "max_mb": max(rss), "last_mb": rss[-1], "slope_mb_per_hour_after_2min": None if slope is None else round(slope, 2)}


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()  # from field 3 (state) on
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")  # utime, stime


def measure_idle(args) -> dict:
    with daemon(args, settle=args.settle) as d:
        names = [f"idle-{i}.txt" for i in range(5)]
        for i, name in enumerate(names):
            drop(d.inbox / name, text_of(name, i, 3000), True)
        ingested_times(d, names, 120)

        def idle_after_ingest(events):  # idle again after the files (or, if it went idle between
            # them, after the first, with 30 s of quiet since the last)
            ingested, idle = ([i for i, e in enumerate(events) if e.get("event") == name]
                              for name in ("file_ingested", "trainer_idle"))
            quiet = time.perf_counter() - events[ingested[-1]]["_received"] > 30
            return bool(idle) and (idle[-1] > ingested[-1] or (idle[-1] > ingested[0] and quiet))

        d.wait(idle_after_ingest, 600, "trainer_idle after the files")
        time.sleep(2.0)
        count0, cpu0, t0 = len(d.events), cpu_seconds(d.proc.pid), time.perf_counter()
        time.sleep(args.idle_seconds)
        cpu1, t1 = cpu_seconds(d.proc.pid), time.perf_counter()
        logged = sorted({e.get("event") for e in d.events[count0:]})
    return {"seconds": round(t1 - t0, 1), "cpu_seconds": round(cpu1 - cpu0, 3),
            "cpu_percent_of_one_core": round(100 * (cpu1 - cpu0) / (t1 - t0), 3), "events_logged": logged}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("measurements", nargs="+", choices=MEASUREMENTS, metavar="MEASUREMENT",
                   help=f"one or more of: {', '.join(MEASUREMENTS)}")
    p.add_argument("--json", action="store_true", help="print one JSON object instead of tables")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS / "train"), help="overhead and soak: a folder")
    p.add_argument("--size", type=parse_size, default="S",
                   help="a size of engine.sizes (XS, S, d192x4, d192x6, M, L) or d_model:layers:heads (default S)")
    for flag, default in (("--threads", 2), ("--context", 128), ("--batch-size", 16), ("--runs", 5), ("--files", 50),
                          ("--burst", 1000)):
        p.add_argument(flag, type=int, default=default, help=f"default {default}")
    for flag, default in (("--settle", 1.0), ("--interval", 0.2), ("--warmup-seconds", 30.0), ("--window", 60.0),
                          ("--minutes", 30.0), ("--status-interval", 10.0), ("--idle-seconds", 60.0)):
        p.add_argument(flag, type=float, default=default, help=f"default {default}")
    p.add_argument("--csv", default=None, metavar="PATH", help="soak: write the RSS samples here")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    if {"overhead", "soak"} & set(args.measurements) and not Path(args.corpus).is_dir():
        print(f"bench/daemon.py: corpus not found: {args.corpus}", file=sys.stderr)
        return 2
    report = {"config": {"size": args.size.name, **args.size.shape(), "context": args.context,
                         "batch_size": args.batch_size, "threads": args.threads, "cpus": os.cpu_count()}}
    for name in dict.fromkeys(args.measurements):
        report[name] = globals()[f"measure_{name}"](args)
        if not args.json:
            print(f"\n{name}")
            for key, value in report[name].items():  # overhead's runs: one JSON line each
                rows = [(f"{key}[{i}]", json.dumps(v)) for i, v in enumerate(value)] if key == "runs" else [(key, value)]
                for label, v in rows:
                    print(f"  {label}: " + (", ".join(f"{a} {b}" for a, b in v.items()) if isinstance(v, dict) else str(v)))
            sys.stdout.flush()
    if args.json:
        print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except (ChildFailed, RunFailed) as exc:  # the daemon exited early or a wait ran out: its last lines say why
        sys.exit(str(exc))
