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
Not a test; needs ../shared/corpus/shakespeare/train.
"""

from __future__ import annotations

import argparse
import http.client
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
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CORPUS = ROOT.parent / "shared" / "corpus" / "shakespeare" / "train"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


class Daemon:
    """One daemon on a fresh copy of the corpus; train_step rates collected with their time."""

    def __init__(self, work: Path, listen: str):
        state, inbox = work / "state", work / "inbox"
        shutil.rmtree(work, ignore_errors=True)
        shutil.copytree(CORPUS, inbox)
        state.mkdir(parents=True)
        (state / "crystalline.toml").write_text(f'[watch]\nroots = ["{inbox}"]\n\n[daemon]\nidle = "replay"\n')
        self.proc = subprocess.Popen([sys.executable, "-m", "crawler", "run", "--state-dir", str(state),
                                      "--http", listen], cwd=ROOT, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True, env=dict(os.environ, PYTHONUNBUFFERED="1"))
        self.steps: list[tuple[float, float]] = []
        self.generations: list[dict] = []
        self.started = threading.Event()
        threading.Thread(target=self._read, daemon=True).start()
        if not self.started.wait(300):
            self.proc.kill()
            raise SystemExit("no train_step within 300 s")

    def _read(self) -> None:
        for line in self.proc.stdout:
            try:
                event = json.loads(line)
            except json.JSONDecodeError:
                continue
            if event.get("event") == "train_step":
                self.steps.append((time.monotonic(), event["tokens_per_s"]))
                self.started.set()
            elif event.get("event") == "generation_finished":
                self.generations.append(event)

    def rate(self, start: float, end: float) -> float:
        """Median tokens/s of the train_step events logged in [start, end)."""
        return statistics.median(r for at, r in self.steps if start <= at < end)

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=120)


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
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    if not CORPUS.is_dir():
        raise SystemExit(f"needs the shared corpus at {CORPUS}")
    work = Path(tempfile.mkdtemp(prefix="crystalline-http-cost-"))
    phases: dict[str, list[tuple[float, float]]] = {"quiet": [], "idle_page": [], "generating": []}
    polls = count = 0
    try:
        off = Daemon(work / "off", "off")
        t0 = time.monotonic() + args.warmup
        time.sleep(args.warmup + args.seconds * args.rounds)
        rate_off = off.rate(t0, t0 + args.seconds * args.rounds)
        off.stop()

        address = f"127.0.0.1:{free_port()}"
        on = Daemon(work / "on", address)
        time.sleep(args.warmup)
        for _ in range(args.rounds):  # in turn, so that the machine's drift falls on every phase alike
            t = time.monotonic()
            time.sleep(args.seconds)
            phases["quiet"].append((t, time.monotonic()))
            t = time.monotonic()
            polls += idle_page(address, t + args.seconds, args.poll_every)
            phases["idle_page"].append((t, time.monotonic()))
            t = time.monotonic()
            count += completions(address, t + args.seconds, args.tokens)
            phases["generating"].append((t, time.monotonic()))
        rates = {name: statistics.median(r for at, r in on.steps if any(a <= at < b for a, b in spans))
                 for name, spans in phases.items()}
        generated = list(on.generations)
        on.stop()
    finally:
        shutil.rmtree(work, ignore_errors=True)
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
