"""Time to a target: daemon wall-clock until the model it hands out first reaches a held-out figure.

The speedrun's measure on our product: `crystalline run` on a fresh state directory (the daemon's
own defaults, plus a run's recipe), the 34 plays of CORPUS/train copied into its inbox, the clock
started at the copy. Every `best_checkpoint_saved` event (a cooled copy that beat the best so far
on the daemon's held-out split) has its file copied aside at once, stamped with the daemon second
of the event. After MAX daemon minutes the daemon is stopped (measuring during the run would take
its cores) and the snapshots are measured on all of CORPUS/val with
`crystalline eval`, oldest first, until one is at or under TARGET bits per byte: its second is
the time to target. Runs go one after the other, never two at once; each appends one JSON line to
--results (bench/results/time_to_target.jsonl), and a later invocation skips the keys already
there. A row records the commit it was measured on (crawler.bench.results); from a tree with
uncommitted changes the script refuses to start unless given --allow-dirty, and marks the rows
dirty.

Evaluation is made more frequent than the daemon's default ([daemon] eval_every_seconds = --every,
the same for every run), so that the time is resolved to about that many seconds; the cool-downs
and evaluations this costs are inside the measured time, as they are for a user.

    python bench/time_to_target.py --runs default,default+rope --target 2.26 --max 10 \
        --recipes rope=model.positions=rope
Not a test: the machine should otherwise be quiet. Exit 2 when the corpus is missing or the tree
is dirty without --allow-dirty; 1 when a run failed (it is not recorded).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

from crawler.bench.harness import (
    DEFAULT_CORPUS,
    BenchDaemon,
    RunFailed,
    copy_files,
    corpus_folder,
    evaluate,
    parse_recipes,
    record_each,
    watching,
    with_settings,
)
from crawler.bench.results import ResultLog, add_result_flags


def run_one(name: str, recipe: tuple, args, corpus: Path) -> dict:
    recipe = recipe + (("daemon", "eval_every_seconds", args.every),)
    taken: list[tuple[float, int, float, Path]] = []  # (daemon s, step, held-out bpb, file)
    with tempfile.TemporaryDirectory(prefix="crystalline-time-to-target-") as work:
        state, inbox, snaps = Path(work) / "state", Path(work) / "inbox", Path(work) / "snapshots"
        for folder in (inbox, snaps):
            folder.mkdir()
        best = state / "checkpoints" / "best.safetensors"
        daemon = BenchDaemon(state, with_settings(watching(inbox), recipe))
        try:
            daemon.first("daemon_ready")
            start = time.perf_counter()  # the clock starts at the copy
            copy_files(corpus / "train", inbox)
            seen = 0
            deadline = start + 60 * args.max
            while time.perf_counter() < deadline:
                if daemon.proc.poll() is not None:
                    raise RunFailed(f"daemon exited {daemon.proc.returncode}:\n{daemon.tail()}")
                with daemon.cond:
                    daemon.cond.wait(0.5)
                    new = [e for e in daemon.events[seen:] if e.get("event") == "best_checkpoint_saved"]
                    seen = len(daemon.events)
                for event in new:  # the next one comes an evaluation later: seconds away
                    second = event["_received"] - start
                    target = snaps / f"{len(taken):04d}.safetensors"
                    shutil.copyfile(best, target)
                    taken.append((second, event.get("step"), event.get("val_bits_per_byte"), target))
                    print(f"{name}: {second:6.1f} s step {event.get('step')}: held-out "
                          f"{event.get('val_bits_per_byte'):.4f}", file=sys.stderr, flush=True)
            daemon.stop()
        finally:
            daemon.kill()
        steps = max((e.get("step", 0) for e in daemon.find("train_step")), default=0)
        measured, reached = [], None
        for second, step, held_out, path in taken:
            measure = Path(work) / "measure"
            shutil.rmtree(measure, ignore_errors=True)
            (measure / "checkpoints").mkdir(parents=True)
            shutil.copyfile(path, measure / "checkpoints" / "best.safetensors")
            result, error = evaluate(measure, corpus / "val")
            if result is None:
                raise RunFailed(f"eval of the snapshot at {second:.1f} s failed: {error}")
            bpb = result["bits_per_byte"]
            measured.append({"daemon_s": round(second, 1), "step": step, "held_out_bpb": held_out, "val_bpb": bpb})
            print(f"{name}: snapshot at {second:6.1f} s: val {bpb:.4f}", file=sys.stderr, flush=True)
            if bpb <= args.target:
                reached = measured[-1]
                break
    return {"key": f"{name}:{args.target:g}:{args.max:g}", "run": name, "target": args.target,
            "max_minutes": args.max, "eval_every_seconds": args.every,
            "recipe": [f"{s}.{k}={v}" for s, k, v in recipe],
            "seconds_to_target": None if reached is None else reached["daemon_s"],
            "steps_to_target": None if reached is None else reached["step"],
            "final_steps": steps, "snapshots": measured}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--runs", default="default", help="comma-separated default[+RECIPE...], in this order")
    p.add_argument("--recipes", default="", help="NAME=section.key=value/...,...: settings a run adds with +NAME")
    p.add_argument("--target", type=float, default=2.26, help="val bits per byte (default 2.26)")
    p.add_argument("--max", type=float, default=10.0, help="daemon minutes at most (default 10)")
    p.add_argument("--every", type=float, default=20.0, help="[daemon] eval_every_seconds of the runs (default 20)")
    p.add_argument("--corpus", default=str(DEFAULT_CORPUS), help="a folder with train/ and val/")
    add_result_flags(p, "time_to_target.jsonl")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        corpus = corpus_folder(args.corpus)
        recipes = parse_recipes(args.recipes)
        runs = []
        for text in (t.strip() for t in args.runs.split(",") if t.strip()):
            base, *extra = text.split("+")
            if base != "default" or any(r not in recipes for r in extra):
                raise ValueError(f"run {text!r}: default[+RECIPE...] with recipes from --recipes")
            runs.append((text, tuple(item for r in extra for item in recipes[r])))
    except ValueError as exc:
        print(f"bench/time_to_target.py: {exc}", file=sys.stderr)
        return 2
    log = ResultLog(args.results, allow_dirty=args.allow_dirty)
    done = log.latest()
    todo = []
    for name, recipe in runs:
        key = f"{name}:{args.target:g}:{args.max:g}"
        if key in done and not args.force:
            print(f"{key}: already in {args.results}, skipped", file=sys.stderr)
        else:
            todo.append((key, partial(run_one, name, recipe, args, corpus)))
    return record_each(log, todo, "bench/time_to_target.py", corpus=str(corpus))


if __name__ == "__main__":
    sys.exit(main())
