"""What the Prometheus endpoint costs training: the daemon with [metrics] on and off, side by side.

Runs `python -m crawler run` on a copy of the shared corpus (idle "replay", so it always trains),
alternating off/on/off/on (--rounds pairs), each for --seconds after its first train_step; with
the endpoint on, a scraper reads /metrics every --scrape-every seconds, as Prometheus would.
Reports the median tokens_per_s of the train_step events of each run (after --warmup seconds),
the on/off ratio, and the scrape latency.

    python bench/metrics_cost.py [--rounds 2] [--seconds 90] [--json]
Not a test; needs ../shared/corpus/shakespeare/train.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "shakespeare" / "train"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_once(work: Path, metrics: bool, seconds: float, warmup: float, scrape_every: float) -> dict:
    state, inbox = work / "state", work / "inbox"
    shutil.rmtree(work, ignore_errors=True)
    shutil.copytree(CORPUS, inbox)
    state.mkdir(parents=True)
    port = free_port()
    (state / "crystalline.toml").write_text(
        f'[watch]\nroots = ["{inbox}"]\n\n[daemon]\nidle = "replay"\n\n'
        + (f'[metrics]\nlisten = "127.0.0.1:{port}"\n' if metrics else ""))
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "crawler", "run", "--state-dir", str(state)], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    steps: list[tuple[float, float]] = []
    started = threading.Event()

    def read() -> None:
        for line in proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "train_step":
                steps.append((time.monotonic(), event["tokens_per_s"]))
                started.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    if not started.wait(300):
        proc.kill()
        raise SystemExit("no train_step within 300 s")
    t0, latencies = time.monotonic(), []
    while time.monotonic() - t0 < seconds:
        if metrics:
            t = time.perf_counter()
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
            latencies.append((time.perf_counter() - t) * 1e3)
        time.sleep(scrape_every)
    proc.send_signal(signal.SIGTERM)
    proc.wait(timeout=120)
    reader.join(timeout=5)
    rates = [rate for at, rate in steps if at - t0 >= warmup]
    return {"metrics": metrics, "tokens_per_s": statistics.median(rates), "events": len(rates),
            "scrape_ms_median": statistics.median(latencies) if latencies else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes (Prometheus: 15-30)")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not CORPUS.is_dir():
        raise SystemExit(f"needs the shared corpus at {CORPUS}")
    work = Path(tempfile.mkdtemp(prefix="crystalline-metrics-cost-"))
    runs = []
    try:
        for _ in range(args.rounds):
            for metrics in (False, True):
                runs.append(run_once(work / "run", metrics, args.seconds, args.warmup, args.scrape_every))
                print(json.dumps(runs[-1]), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    off = statistics.median(r["tokens_per_s"] for r in runs if not r["metrics"])
    on = statistics.median(r["tokens_per_s"] for r in runs if r["metrics"])
    result = {"off_tokens_per_s": round(off), "on_tokens_per_s": round(on), "on_over_off": round(on / off, 4),
              "scrape_ms_median": round(statistics.median(r["scrape_ms_median"] for r in runs if r["metrics"]), 2),
              "runs": runs}
    print(json.dumps(result) if args.json else
          f"metrics on/off: {result['on_over_off']}x ({on:,.0f} / {off:,.0f} tokens/s), "
          f"scrape {result['scrape_ms_median']} ms median, every {args.scrape_every} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
