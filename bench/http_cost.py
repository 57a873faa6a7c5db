"""What the daemon's page and API cost training: tokens/s with [http] off, with the page open and
polling, and while completions run back to back, side by side.

Runs `python -m crawler run` on a copy of the shared corpus (idle "replay", so it always trains)
at the default model size: first with `--http off` (--rounds x --seconds after --warmup), then
with it on, in --rounds rounds of three phases of --seconds each, taken in turn so that a shared
machine's drift falls on all three alike: (1) no client; (2) a page's idle load: the event stream
open and read, /api/status and /api/history fetched every --poll-every seconds (as the page
polls); (3) completions of --tokens tokens one after another (POST /api/generate), as a person
sending prompts without pause would. Reports the median tokens_per_s of the train_step events of
each phase and their ratios; the on/off ratio compares two runs one after the other, so it
carries the machine's drift, and the phases' ratios to "no client" are the steadier figures.

    python bench/http_cost.py [--seconds 20] [--rounds 3] [--warmup 20] [--json]
Not a test; needs ../shared/corpus/shakespeare/train (or --corpus FOLDER).
"""

from __future__ import annotations

import argparse
import http.client
import json
import statistics
import sys
import threading
import time
from pathlib import Path

from crawler.bench.harness import DEFAULT_CORPUS, BenchDaemon, corpus_or_exit, free_port, running


def daemon(corpus: Path, listen: str):
    """A daemon on a fresh copy of `corpus`, `--http LISTEN`, once it has trained a first step."""
    return running({"daemon": {"idle": "replay"}}, corpus, args=["--http", listen], ready="train_step")


def rate(d: BenchDaemon, spans: list[tuple[float, float]]) -> float:
    """Median tokens/s of the train_step events received in any of the (start, end) spans."""
    return statistics.median(r for start, end in spans for r in d.rates(start, end))


def get(address: str, path: str) -> None:
    connection = http.client.HTTPConnection(address, timeout=30)
    connection.request("GET", path)
    connection.getresponse().read()
    connection.close()


def idle_page(address: str, until: float, poll_every: float) -> int:
    """The page's idle load until `until`: the event stream read, status and history polled."""
    stream = http.client.HTTPConnection(address, timeout=30)
    stream.request("GET", "/api/events")
    response = stream.getresponse()
    threading.Thread(target=lambda: [None for _ in iter(lambda: response.fp.readline(), b"")], daemon=True).start()
    polls = 0
    while time.monotonic() < until:
        get(address, "/api/status")
        get(address, "/api/history?since=0")
        polls += 1
        time.sleep(poll_every)
    stream.close()
    return polls


def completions(address: str, until: float, tokens: int) -> int:
    done = 0
    while time.monotonic() < until:
        connection = http.client.HTTPConnection(address, timeout=300)
        body = json.dumps({"prompt": "ROMEO:", "max_new_tokens": tokens, "seed": done})
        connection.request("POST", "/api/generate", body, {"Content-Type": "application/json"})
        connection.getresponse().read()
        connection.close()
        done += 1
    return done


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="each phase")
    parser.add_argument("--rounds", type=int, default=3, help="quiet / idle page / completions, in turn")
    parser.add_argument("--warmup", type=float, default=20.0)
    parser.add_argument("--poll-every", type=float, default=5.0, help="seconds between status+history polls (the page: 5)")
    parser.add_argument("--tokens", type=int, default=512, help="max_new_tokens of each completion")
    parser.add_argument("--corpus", default=str(DEFAULT_CORPUS / "train"), help="the folder the daemon is given")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    corpus = corpus_or_exit(args.corpus, "bench/http_cost.py", splits=())
    phases: dict[str, list[tuple[float, float]]] = {"quiet": [], "idle_page": [], "generating": []}
    polls = count = 0
    with daemon(corpus, "off") as off:
        t0 = time.perf_counter() + args.warmup
        time.sleep(args.warmup + args.seconds * args.rounds)
        rate_off = rate(off, [(t0, t0 + args.seconds * args.rounds)])
    address = f"127.0.0.1:{free_port()}"
    with daemon(corpus, address) as on:
        time.sleep(args.warmup)
        for _ in range(args.rounds):  # in turn, so that the machine's drift falls on every phase alike
            t = time.perf_counter()
            time.sleep(args.seconds)
            phases["quiet"].append((t, time.perf_counter()))
            t = time.perf_counter()
            polls += idle_page(address, time.monotonic() + args.seconds, args.poll_every)
            phases["idle_page"].append((t, time.perf_counter()))
            t = time.perf_counter()
            count += completions(address, time.monotonic() + args.seconds, args.tokens)
            phases["generating"].append((t, time.perf_counter()))
        rates = {name: rate(on, spans) for name, spans in phases.items()}
        generated = on.find("generation_finished")
    tokens = sum(g["tokens"] for g in generated)
    seconds = sum(g["seconds"] for g in generated)
    result = {"off_tokens_per_s": round(rate_off)} | {f"{k}_tokens_per_s": round(v) for k, v in rates.items()} | {
        "quiet_over_off": round(rates["quiet"] / rate_off, 4),
        "idle_page_over_quiet": round(rates["idle_page"] / rates["quiet"], 4),
        "generating_over_quiet": round(rates["generating"] / rates["quiet"], 4),
        "idle_page_over_off": round(rates["idle_page"] / rate_off, 4),
        "generating_over_off": round(rates["generating"] / rate_off, 4),
        "polls": polls, "completions": count, "completion_tokens_per_s": round(tokens / max(seconds, 1e-9), 1),
        "completion_cpu_share": round(sum(g["cpu_seconds"] for g in generated) / max(seconds, 1e-9), 3)}
    print(json.dumps(result) if args.json else
          f"training tokens/s: off {rate_off:,.0f}; on, no client {rates['quiet']:,.0f}; page idle-polling "
          f"{rates['idle_page']:,.0f} ({result['idle_page_over_quiet']}x); completions running "
          f"{rates['generating']:,.0f} ({result['generating_over_quiet']}x, {count} completions at "
          f"{result['completion_tokens_per_s']} tokens/s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
