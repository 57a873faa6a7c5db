"""What the Prometheus endpoint costs training: the daemon with [metrics] on and off, side by side.

Runs `python -m crawler run` on a copy of the shared corpus (idle "replay", so it always trains),
alternating off/on/off/on (--rounds pairs), each for --seconds after its first train_step; with
the endpoint on, a scraper reads /metrics every --scrape-every seconds, as Prometheus would.
Reports the median tokens_per_s of the train_step events of each run (after --warmup seconds),
the on/off ratio, and the scrape latency.

    python bench/metrics_cost.py [--rounds 2] [--seconds 90] [--json]
Not a test; needs ../shared/corpus/shakespeare/train (or --corpus FOLDER).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
import urllib.request
from pathlib import Path

from crawler.bench.harness import DEFAULT_CORPUS, corpus_or_exit, free_port, running


def run_once(corpus: Path, metrics: bool, seconds: float, warmup: float, scrape_every: float) -> dict:
    """One daemon on a fresh copy of `corpus`, [metrics] on or off, for `seconds` after its first step."""
    port = free_port()
    sections = {"daemon": {"idle": "replay"}} | ({"metrics": {"listen": f"127.0.0.1:{port}"}} if metrics else {})
    latencies = []
    with running(sections, corpus, ready="train_step") as d:
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < seconds:
            if metrics:
                t = time.perf_counter()
                urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read()
                latencies.append((time.perf_counter() - t) * 1e3)
            time.sleep(scrape_every)
        rates = d.rates(t0 + warmup)
    return {"metrics": metrics, "tokens_per_s": statistics.median(rates), "events": len(rates),
            "scrape_ms_median": statistics.median(latencies) if latencies else None}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--seconds", type=float, default=90.0)
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--scrape-every", type=float, default=1.0, help="seconds between scrapes (Prometheus: 15-30)")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS / "train"), help="the folder the daemon is given")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    corpus = corpus_or_exit(args.corpus, "bench/metrics_cost.py", splits=())
    runs = []
    for _ in range(args.rounds):
        for metrics in (False, True):
            runs.append(run_once(corpus, metrics, args.seconds, args.warmup, args.scrape_every))
            print(json.dumps(runs[-1]), file=sys.stderr)
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
