"""Held-out bits per byte after the same tokens: one process against N ranks in each mode.

Each variant is one `crystalline train CORPUS/train --steps S` on a fresh state directory with
the product's defaults (the daemon's model, optimizer and schedule) and its own
crystalline.toml: the variant's settings, plus a held-out evaluation only at the end. "1" runs one
process with batch B*N on --threads threads; the others run `mpiexec -n N crystalline train
--distributed` with batch B per rank and one thread per rank, so every variant takes the same
tokens per step and the same steps. The figure is `train_finished`'s val_bits_per_byte: the
loop's own held-out split, measured on the model `generate` would use (the cooled copy).

    python bench/local_mode.py --variants 1,sync,local8,local8-o125 --steps 600
    python bench/local_mode.py --summary

Variants: NAME=section.key=value/section.key=value,... added to (or replacing) the built-in ones
below; a name starting with "1" runs one process, any other N ranks. Each finished variant
appends one JSON line to --results (bench/results/local_mode.jsonl) naming the commit it was
measured on; from a tree with uncommitted changes only with --allow-dirty, which marks the row
dirty (crawler.bench.results). A later invocation skips the names already there (--force runs
them again). Not a test: the machine should otherwise be quiet.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from crawler.bench.harness import (
    DEFAULT_CORPUS,
    RunFailed,
    corpus_folder,
    json_events,
    parse_settings,
    record_each,
    toml_text,
)
from crawler.bench.results import REPO, ResultLog, add_result_flags

BUILTIN = {
    "1": "",
    "sync": "distributed.mode=sync",
    "local2": "distributed.mode=local/distributed.sync_every=2",
    "local8": "distributed.mode=local/distributed.sync_every=8",
    "local8-o125": "distributed.mode=local/distributed.sync_every=8/distributed.outer_lr=1.25",
    "local8-o150": "distributed.mode=local/distributed.sync_every=8/distributed.outer_lr=1.5",
    "local8-state": "distributed.mode=local/distributed.sync_every=8/distributed.average_state=true",
}


def config_toml(settings: str, steps: int) -> str:
    sections: dict[str, dict] = {"log": {"format": "json"}, "daemon": {"eval_every_steps": steps}}
    for section, key, value in parse_settings(settings):
        sections.setdefault(section, {})[key] = value
    return toml_text(sections)


def run_variant(name: str, settings: str, args) -> dict:
    with tempfile.TemporaryDirectory(prefix="crystalline-local-mode-") as folder:
        work = Path(folder)
        (work / "crystalline.toml").write_text(config_toml(settings, args.steps))
        common = [str(args.corpus / "train"), "--steps", str(args.steps), "--state-dir", str(work)]
        if name.startswith("1"):
            command = [sys.executable, "-m", "crawler", "train", *common,
                       "--batch-size", str(args.batch * args.ranks), "--threads", str(args.threads)]
        else:
            mpiexec = shutil.which("mpiexec", path=str(Path(sys.executable).parent)) or "mpiexec"
            command = [mpiexec, "-n", str(args.ranks), sys.executable, "-m", "crawler", "train", *common,
                       "--distributed", "--batch-size", str(args.batch), "--threads", "1"]
        started = time.perf_counter()
        proc = subprocess.run(command, cwd=REPO, capture_output=True, text=True, env=dict(os.environ))
        seconds = time.perf_counter() - started
    if proc.returncode != 0:
        raise RunFailed(f"{name}: exit {proc.returncode}\n{proc.stderr[-3000:]}")
    finished = [e for e in json_events(proc.stdout + "\n" + proc.stderr)
                if e.get("event") == "train_finished" and e.get("rank", 0) == 0]
    if not finished:
        raise RunFailed(f"{name}: no train_finished event\n{proc.stderr[-3000:]}")
    return {"name": name, "settings": settings, "steps": args.steps, "ranks": 1 if name.startswith("1") else args.ranks,
            "batch_per_rank": args.batch * args.ranks if name.startswith("1") else args.batch,
            "val_bits_per_byte": finished[-1].get("val_bits_per_byte"), "seconds": round(seconds, 1)}


def summary(results: list[dict]) -> str:
    last = {r["name"]: r for r in results}
    base = last.get("1", {}).get("val_bits_per_byte")
    lines = ["| variant | settings | ranks | val bpb | against 1 process | seconds |", "|---|---|---|---|---|---|"]
    for r in last.values():
        value = r["val_bits_per_byte"]
        against = f"{100 * (value / base - 1):+.1f} %" if base and value else ""
        lines.append(f"| {r['name']} | {r['settings'] or '(defaults)'} | {r['ranks']} | {value:.6f} | {against} "
                     f"| {r['seconds']} |")
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--variants", default="1,sync,local8,local8-o125,local8-o150")
    p.add_argument("--define", action="append", default=[], help="NAME=section.key=value/... (repeatable)")
    p.add_argument("--steps", type=int, default=600)
    p.add_argument("--batch", type=int, default=8, help="windows per rank (one process takes batch x ranks)")
    p.add_argument("--ranks", type=int, default=2)
    p.add_argument("--threads", type=int, default=2, help="threads of the one-process run")
    p.add_argument("--corpus", type=Path, default=DEFAULT_CORPUS, help="a folder with train/")
    p.add_argument("--summary", action="store_true", help="print the results file as a table; run nothing")
    add_result_flags(p, "local_mode.jsonl")
    args = p.parse_args()
    variants = dict(BUILTIN)
    for item in args.define:
        name, _, settings = item.partition("=")
        variants[name] = settings
    log = ResultLog(args.results, allow_dirty=args.allow_dirty)
    status = 0
    if not args.summary:
        try:
            args.corpus = corpus_folder(args.corpus, splits=("train",))
            unknown = [name for name in args.variants.split(",") if name not in variants]
            if unknown:
                raise ValueError(f"no variant {unknown[0]!r}: choose from {', '.join(variants)} or --define it")
        except ValueError as exc:
            print(f"bench/local_mode.py: {exc}", file=sys.stderr)
            return 2
        done = log.latest("name")
        todo = [(name, partial(run_variant, name, variants[name], args)) for name in args.variants.split(",")
                if args.force or name not in done]
        status = record_each(log, todo, "bench/local_mode.py")
    if status in (0, 1) and (rows := log.rows()):
        print(summary(rows))
    return status


if __name__ == "__main__":
    sys.exit(main())
