"""Reading the stream at any size: replay windows drawn per second, a tiny model's training
tokens/s, and peak RSS, from a small store and a large one side by side.

Builds two SQLite stores of synthetic byte text (random ids 0..255 stored through
CorpusQueue.add_documents in documents of DOC_TOKENS: no files, no extraction; kept under
--work between runs). Every reader draws as the training loop does: crawler.training.batches.
TrainedText with the default replay_memory_mb (256: 128M byte tokens), so the small store is held
in memory and the large one is read from its token file (STATE_DIR/stream.tokens,
storage.StreamCache), a batch of B windows of T + 1 tokens from the whole stream at a time, with
a freshly seeded generator as each step has. Child processes:

- one a store (so each peak RSS is its own): the first draw (the small store read into memory,
  the large one's token file built from the store), the draws for --seconds, the first draw of a
  second TrainedText on the same state ("reopened": the token file checked against the store,
  not read again), for the large store the same draws through CorpusQueue.sample_replay (a query
  a window: what training past replay_memory_mb did before the token file), --steps steps of the
  XS model; peak RSS (ru_maxrss) after the draws and at the end (the model included);
- one for both stores side by side: windows drawn/s in 0.25 s bursts alternating between the
  stores for --seconds each, then training tokens/s of one XS model (B=16, T=128, one thread)
  taking --steps steps on each store, alternating, the draw included: the ratios printed;
- one for the design not taken: the large store's draws from a memory map of the same token
  file (np.memmap), and that child's peak RSS.

    python bench/stream_scale.py [--small-mb 4] [--large-mb 1000] [--seconds 5] [--steps 30]
                                 [--work DIR] [--allow-dirty]

Records one row in bench/results/stream_scale.jsonl (refused from a dirty tree unless
--allow-dirty). Not a test.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from crawler.bench.results import DirtyTree, ResultLog, add_result_flags
from crawler.ingest.tokenizer import ByteTokenizer
from crawler.training.batches import STREAM_CACHE_FILE, TrainedText
from storage import (
    CorpusQueue,
    HoldoutSplit,
    NewDocument,
    StorageConfig,
    draw_window_starts,
    open_database,
)

DOC_TOKENS = 1 << 24  # tokens a synthetic document (16 MB of byte text)
B, T = 16, 128  # the batch drawn: the daemon's default size S's
REPLAY_MEMORY_MB = 256  # [daemon] replay_memory_mb's default


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


# --- the stores -------------------------------------------------------------------------------------


def build_store(folder: Path, megabytes: int) -> str:
    """A store of `megabytes` million byte tokens under `folder` (reused when already complete)."""
    folder.mkdir(parents=True, exist_ok=True)
    url, done = f"sqlite:///{folder / 'corpus.db'}", folder / "complete"
    if done.exists():
        return url
    tokens = megabytes * 1_000_000
    identity = ByteTokenizer().identity_string()
    t0 = time.perf_counter()
    with CorpusQueue(open_database(StorageConfig(url=url).validate())) as queue:
        queue.holdout(HoldoutSplit())
        rng = np.random.default_rng(megabytes)
        for start in range(queue.stream_end(), tokens, DOC_TOKENS):
            text = rng.integers(0, 256, min(DOC_TOKENS, tokens - start), dtype=np.uint8)
            queue.add_documents([NewDocument(f"/synthetic/{start}.txt", hashlib.sha256(text.tobytes()).hexdigest(),
                                             text.size, 0.0, "text", text)], tokenizer=identity)
    print(f"built {folder.name}: {tokens:,} tokens in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    done.touch()
    return url


# --- one store, in a child process ------------------------------------------------------------------


def draws_per_second(draw, seconds: float) -> float:
    n, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        n += draw(np.random.default_rng(n)).shape[0]
    return n / (time.perf_counter() - t0)


def opened(url: str, state: Path):
    """(database, queue, mask, stream end, a fresh TrainedText as the training loop builds it)."""
    database = open_database(StorageConfig(url=url).validate())
    queue = CorpusQueue(database)
    mask = queue.stream_mask(queue.holdout(HoldoutSplit()))
    text = TrainedText(queue, TrainedText.limit_of(REPLAY_MEMORY_MB, 257), 257, cache=state / STREAM_CACHE_FILE)
    return database, queue, mask, queue.stream_end(), text


def tiny_trainer():
    from engine import TrainConfig, Trainer
    from engine.sizes import parse_size

    return Trainer(parse_size("XS").model_config(context_length=T, vocab_size=257),
                   TrainConfig(batch_size=B, seq_len=T, threads=1))


def measure(url: str, state: Path, seconds: float, steps: int) -> dict:
    """One store's one-off times and peak RSS, as a training process would reach them."""
    state.mkdir(parents=True, exist_ok=True)
    (state / STREAM_CACHE_FILE).unlink(missing_ok=True)  # the first draw builds it afresh
    database, queue, mask, end, text = opened(url, state)
    t0 = time.perf_counter()
    text.sample(B, T, np.random.default_rng(0), end, mask)
    first_s = time.perf_counter() - t0
    draws_per_second(lambda rng: text.sample(B, T, rng, end, mask), seconds)
    text.close()
    database.close()
    database, queue, mask, end, text = opened(url, state)
    t0 = time.perf_counter()
    text.sample(B, T, np.random.default_rng(0), end, mask)
    out = {"tokens": end, "in_memory": text.file is None, "first_draw_s": round(first_s, 3),
           "reopened_s": round(time.perf_counter() - t0, 3)}
    if text.file is not None:  # the draws past replay_memory_mb before the token file: a query a window
        store = draws_per_second(lambda rng: queue.sample_replay(B, T, rng, end=end, holdout=mask), min(seconds, 3.0))
        out["store_windows_per_s"] = round(store)
    out["peak_rss_draws_mb"] = round(peak_rss_mb(), 1)
    if steps:
        trainer = tiny_trainer()
        for i in range(steps + 1):
            windows = text.sample(B, T, np.random.default_rng(i), end, mask)
            trainer.step(windows[:, :-1], windows[:, 1:])
        trainer.close()
    text.close()
    database.close()
    out["peak_rss_mb"] = round(peak_rss_mb(), 1)
    return out


def compare(stores: list[tuple[str, Path]], seconds: float, steps: int) -> list[dict]:
    """Windows/s and training tokens/s of each store, side by side in one process: short bursts
    of draws, and training steps, alternating between the stores, so a change in the machine's
    load falls on both."""
    opens = [opened(url, state) for url, state in stores]
    for _, _, mask, end, text in opens:
        text.sample(B, T, np.random.default_rng(0), end, mask)  # into memory, or the token file checked
    counts, spent = np.zeros(len(opens)), np.zeros(len(opens))
    for burst in range(max(1, int(seconds / 0.25)) * len(opens)):
        i = burst % len(opens)
        _, _, mask, end, text = opens[i]
        t0 = time.perf_counter()
        while time.perf_counter() - t0 < 0.25:
            counts[i] += text.sample(B, T, np.random.default_rng(int(counts[i])), end, mask).shape[0]
        spent[i] += time.perf_counter() - t0
    out = [{"windows_per_s": round(c / s)} for c, s in zip(counts, spent)]
    if steps:
        trainer, step_time = tiny_trainer(), np.zeros(len(opens))
        for k in range((steps + 1) * len(opens)):
            i = k % len(opens)
            _, _, mask, end, text = opens[i]
            t0 = time.perf_counter()
            windows = text.sample(B, T, np.random.default_rng(k), end, mask)
            trainer.step(windows[:, :-1], windows[:, 1:])
            if k >= len(opens):  # each store's first step compiles
                step_time[i] += time.perf_counter() - t0
        trainer.close()
        for figures, seconds_spent in zip(out, step_time):
            figures["train_tokens_per_s"] = round(steps * B * T / seconds_spent)
    for database, *_, text in opens:
        text.close()
        database.close()
    return out


def measure_map(url: str, state: Path, seconds: float) -> dict:
    """The design not taken: the same draws from a memory map of the token file `measure` left."""
    database = open_database(StorageConfig(url=url).validate())
    queue = CorpusQueue(database)
    mask = queue.stream_mask(queue.holdout(HoldoutSplit()))
    end = queue.stream_end()
    database.close()
    tokens = np.memmap(state / STREAM_CACHE_FILE, np.uint16, mode="r")  # (end,)
    assert tokens.size == end, "run the large store's measurement first"
    offsets = np.arange(T + 1)

    def draw(rng):
        starts = draw_window_starts(rng, end - T, B, T, mask)  # (B,)
        return tokens[starts[:, None] + offsets].astype(np.int32)  # (B, T + 1)

    rate = draws_per_second(draw, seconds)
    return {"windows_per_s": round(rate), "peak_rss_mb": round(peak_rss_mb(), 1)}


def run_child(mode: str, paths: list, args):
    command = [sys.executable, __file__, mode, *map(str, paths), "--seconds", str(args.seconds),
               "--steps", str(args.steps)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"child {mode} {paths} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- the run ----------------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small-mb", type=int, default=4, help="the small store, in MB of byte text (4)")
    parser.add_argument("--large-mb", type=int, default=1000, help="the large store, in MB of byte text (1000)")
    parser.add_argument("--seconds", type=float, default=5.0, help="seconds of draws a store (5)")
    parser.add_argument("--steps", type=int, default=30, help="timed training steps a store; 0: none (30)")
    parser.add_argument("--work", type=Path, default=Path(tempfile.gettempdir()) / "crystalline-stream-scale",
                        help="where the stores are built and kept between runs")
    parser.add_argument("--child", nargs=2, metavar=("URL", "STATE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-map", nargs=2, metavar=("URL", "STATE"), help=argparse.SUPPRESS)
    parser.add_argument("--child-compare", nargs=4, metavar=("URL", "STATE", "URL", "STATE"), help=argparse.SUPPRESS)
    add_result_flags(parser, "stream_scale.jsonl")
    args = parser.parse_args()
    if args.child:
        print(json.dumps(measure(args.child[0], Path(args.child[1]), args.seconds, args.steps)))
        return
    if args.child_map:
        print(json.dumps(measure_map(args.child_map[0], Path(args.child_map[1]), args.seconds)))
        return
    if args.child_compare:
        paths = args.child_compare
        pairs = [(paths[0], Path(paths[1])), (paths[2], Path(paths[3]))]
        print(json.dumps(compare(pairs, args.seconds, args.steps)))
        return
    log = ResultLog(args.results, allow_dirty=args.allow_dirty)
    try:
        before = log.check()
    except DirtyTree as exc:
        raise SystemExit(str(exc)) from None
    stores = {name: (build_store(args.work / f"{mb}mb", mb), args.work / f"{mb}mb" / "state")
              for name, mb in (("small", args.small_mb), ("large", args.large_mb))}
    small, large = (run_child("--child", stores[name], args) for name in ("small", "large"))
    mapped = run_child("--child-map", stores["large"], args)
    side = run_child("--child-compare", [*stores["small"], *stores["large"]], args)
    small, large = small | side[0], large | side[1]
    print(f"{'':28}{'small':>14}{'large':>14}")
    rows = [("stream tokens", "tokens"), ("held in memory", "in_memory"), ("first draw, s", "first_draw_s"),
            ("windows drawn/s", "windows_per_s"), ("reopened, s", "reopened_s"),
            ("store windows/s (old path)", "store_windows_per_s"), ("training tokens/s (XS)", "train_tokens_per_s"),
            ("peak RSS after draws, MB", "peak_rss_draws_mb"), ("peak RSS, MB", "peak_rss_mb")]
    for label, key in rows:
        print(f"{label:28}{small.get(key, '-')!s:>14}{large.get(key, '-')!s:>14}")
    ratio = large["windows_per_s"] / small["windows_per_s"]
    print(f"windows/s large vs small: {ratio:.2f}x")
    if "store_windows_per_s" in large:
        print(f"windows/s token file vs store (large): {large['windows_per_s'] / large['store_windows_per_s']:.1f}x")
    if "train_tokens_per_s" in small:
        print(f"training tokens/s large vs small: {large['train_tokens_per_s'] / small['train_tokens_per_s']:.2f}x")
    print(f"peak RSS large - small: {large['peak_rss_mb'] - small['peak_rss_mb']:+.1f} MB")
    print(f"large, a memory map of the token file instead (not taken): {mapped['windows_per_s']} windows/s, "
          f"peak RSS {mapped['peak_rss_mb']} MB")
    row = {"key": f"stream_scale:{args.small_mb}:{args.large_mb}", "small_mb": args.small_mb,
           "large_mb": args.large_mb, "seconds": args.seconds, "steps": args.steps,
           "small": small, "large": large, "memory_map": mapped, "windows_ratio": round(ratio, 3)}
    written = log.append(row, before)
    print(f"recorded in {args.results} (revision {written['revision']}, dirty {written['dirty']})")


if __name__ == "__main__":
    main()
