"""Ingest throughput, memory and window-read speed of the corpus store.

Runs the real `crystalline ingest` in a subprocess per case, so the peak RSS reported is the
child's own (ru_maxrss of the finished child), and times it from the outside:
  shakespeare-x20  the shared corpus's train/ copied 20 times, each copy made unique by a
                   first line naming the copy (identical copies would be deduplicated): MB/s
  small-files      10,000 files of about 500 bytes: files/s
  1gb              about 1 GB of generated text in 200 files: MB/s and peak RSS
for the byte tokenizer and, with --bpe, a BPE of 8,192 (trained first, not timed), on SQLite
and, with --postgres URL, on PostgreSQL. Then it reads training windows of `crystalline bench`'s
config M (T=256, batches of 8) from the store, to compare windows/s with what the engine
consumes at M.

    python bench/ingest.py [--corpus ../shared/corpus/shakespeare] [--bpe] [--postgres URL]
                           [--skip-1gb] [--json]
Not a test; needs the shared corpus for the first case.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from crawler.bench.throughput import CONFIGS

WORDS = ("the quick brown fox jumps over a lazy dog while seven wizards quietly hex "
         "every jovial bystander near the old mill and river bank").split()


def make_shakespeare_copies(corpus: Path, out: Path, copies: int = 20) -> int:
    total = 0
    for c in range(copies):
        folder = out / f"copy{c:02d}"
        folder.mkdir(parents=True)
        for src in sorted((corpus / "train").glob("*.txt")):
            data = f"copy {c}\n".encode() + src.read_bytes()
            (folder / src.name).write_bytes(data)
            total += len(data)
    return total


def make_small_files(out: Path, count: int = 10_000, seed: int = 0) -> int:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    total = 0
    for i in range(count):
        words = rng.choice(WORDS, size=80)
        data = f"note {i}: {' '.join(words)}\n".encode()
        (out / f"n{i:05d}.txt").write_bytes(data)
        total += len(data)
    return total


def make_big_text(out: Path, total_bytes: int = 1 << 30, files: int = 200, seed: int = 1) -> int:
    rng = np.random.default_rng(seed)
    out.mkdir(parents=True)
    per_file = total_bytes // files
    vocab = np.array([w.encode() for w in WORDS], dtype=object)
    block = b" ".join(rng.choice(vocab, size=200_000)) + b"\n"
    written = 0
    for i in range(files):
        with open(out / f"big{i:03d}.txt", "wb") as f:
            f.write(f"file {i}\n".encode())  # unique content per file
            n = 0
            while n < per_file:
                f.write(block)
                n += len(block)
            written += n
    return written


# runs the CLI in the child and reports the child's own peak RSS on its last stderr line
_CHILD = """
import resource, runpy, sys
sys.argv = ["crystalline"] + sys.argv[1:]
try:
    runpy.run_module("crawler", run_name="__main__")
finally:
    print("RSS_KB=%d" % resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr)
"""


def run_ingest(paths: list[Path], state: Path, env: dict) -> dict:
    cmd = [sys.executable, "-c", _CHILD, "--log-level", "warning", "ingest", *map(str, paths),
           "--state-dir", str(state), "--json"]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"ingest failed: {proc.stderr.strip()}")
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    rss = [line for line in proc.stderr.splitlines() if line.startswith("RSS_KB=")]
    report["wall_seconds"] = round(seconds, 2)
    report["peak_rss_mb"] = round(int(rss[-1].split("=")[1]) / 1024, 1) if rss else None
    return report


def window_rate(state: Path, env: dict, seq_len: int = CONFIGS["M"].seq_len, batch: int = CONFIGS["M"].batch_size,
                seconds: float = 3.0) -> float:
    code = f"""
import time
from crawler.config import load_config
from storage import CorpusQueue, open_database
config = load_config(state_dir={str(state)!r})
db = open_database(config.storage_config()); q = CorpusQueue(db)
total = q.stats().tokens_total
pos, n, t0 = 0, 0, time.perf_counter()
while time.perf_counter() - t0 < {seconds}:
    w, pos = q.read_windows(pos, {batch}, {seq_len})
    if w.shape[0] == 0:
        pos = 0
        continue
    n += w.shape[0]
print(n / (time.perf_counter() - t0))
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr)
    return float(proc.stdout.strip())


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--corpus", default="../shared/corpus/shakespeare")
    parser.add_argument("--bpe", action="store_true", help="also measure a BPE of 8,192")
    parser.add_argument("--postgres", default=None, metavar="URL", help="also measure on PostgreSQL")
    parser.add_argument("--skip-1gb", action="store_true")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    corpus = Path(args.corpus)
    if not (corpus / "train").is_dir():
        print(f"corpus not found: {corpus}", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="crystalline-ingest-bench-"))
    results = []
    try:
        data = {"shakespeare-x20": (work / "shakespeare", make_shakespeare_copies(corpus, work / "shakespeare")),
                "small-files": (work / "small", make_small_files(work / "small"))}
        if not args.skip_1gb:
            data["1gb"] = (work / "big", make_big_text(work / "big"))
        tokenizers = ["byte"] + (["bpe8192"] if args.bpe else [])
        backends = ["sqlite"] + (["postgresql"] if args.postgres else [])
        for backend in backends:
            for tok in tokenizers:
                for name, (folder, nbytes) in data.items():
                    if name == "1gb" and (tok != "byte" or backend != "sqlite"):
                        continue
                    state = work / f"state-{backend}-{tok}-{name}"
                    state.mkdir()
                    env = dict(os.environ)
                    # the copies differ in one line: the near-duplicate rule would keep one of each,
                    # and this measures throughput, not cleaning (bench/desk_cleaning.py does that)
                    env["CRYSTALLINE_STORE_SKIP_NEAR_DUPLICATES"] = "false"
                    if backend == "postgresql":
                        env["CRYSTALLINE_STORE_URL"] = args.postgres
                        _reset_postgres(args.postgres)
                    if tok == "bpe8192":
                        subprocess.run([sys.executable, "-m", "crawler", "tokenizer", "train", str(corpus / "train"),
                                        "--vocab-size", "8192", "--state-dir", str(state)],
                                       check=True, capture_output=True, env=env)
                    report = run_ingest([folder], state, env)
                    files = sum(report["files"].values())
                    row = {"backend": backend, "tokenizer": tok, "case": name, "files": files,
                           "mb": round(nbytes / 1e6, 1), "seconds": report["wall_seconds"],
                           "mb_per_s": round(nbytes / 1e6 / report["wall_seconds"], 1),
                           "files_per_s": round(files / report["wall_seconds"], 0),
                           "peak_rss_mb": report["peak_rss_mb"], "tokens": report["tokens"]}
                    if name == "shakespeare-x20" and tok == "byte":
                        row["windows_per_s_T256"] = round(window_rate(state, env), 0)
                    results.append(row)
                    print(json.dumps(row), file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps({"results": results}))
    else:
        keys = ["backend", "tokenizer", "case", "files", "mb", "seconds", "mb_per_s", "files_per_s", "peak_rss_mb", "windows_per_s_T256"]
        print("\t".join(keys))
        for row in results:
            print("\t".join(str(row.get(k, "")) for k in keys))
    return 0


def _reset_postgres(url: str) -> None:
    from sqlalchemy import create_engine, text

    engine = create_engine(url)
    with engine.begin() as conn:
        conn.execute(text("DROP SCHEMA public CASCADE"))
        conn.execute(text("CREATE SCHEMA public"))
    engine.dispose()


if __name__ == "__main__":
    raise SystemExit(main())
