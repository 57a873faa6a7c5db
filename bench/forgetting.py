"""What the daemon forgets: the plays' held-out figure before and after a large foreign corpus.

The issue "Grows with its text" asks that what the model learned stays learned: the 34 plays
trained for an hour (or to plateau), then the desk dropped into the same inbox, then 30 minutes
more; the plays' figure (val/ bits per byte of the best checkpoint, by `crystalline eval`) may
rise by at most 3 % relative.

  1. The plays. With --state STATE, a state directory that has trained on them already (a copy
     is taken; STATE is left as it is), for example the state bench/daemon_learning.py keeps with
     --keep-state. Without it, a fresh state: `crystalline run` on the defaults plus --set, the
     files of PLAYS/train copied into its inbox, --plays-minutes daemon minutes, SIGTERM.
  2. Before: `crystalline eval` of PLAYS/val and of FOREIGN_VAL (when given) with the best
     checkpoint and with --latest (bench/daemon_learning.py's evaluate_state).
  3. The foreign corpus: the daemon started again on the state, watching a fresh inbox (its
     crystalline.toml rewritten: the inbox, JSON events, the --set settings), and once it is
     ready every file of FOREIGN copied into INBOX/<FOREIGN's name>/; the clock starts at the copy.
  4. At each --at minute up to --minutes: SIGTERM, the same evals, the daemon started again.
     Minutes are daemon minutes, as in bench/daemon_learning.py (stops and evals not counted).

Recorded (one JSON line per invocation in --results, default bench/results/forgetting.jsonl):
the before figures, each horizon's figures with the plays' rise relative to before (best
checkpoint against best checkpoint), and from the events: steps, tokens, the last
`eval_finished` (with its per-source figures), `model_grown` events and the files stored.

    python bench/forgetting.py --state /tmp/plays60-state --foreign /tmp/growth-corpus/train/desk \
        --foreign-val /tmp/growth-corpus/val/desk --minutes 30 --at 10,30
    python bench/forgetting.py --plays-minutes 60 --foreign ... --set growth.enabled=true
Not a test: the machine should otherwise be quiet. Exit 2 for a missing folder or a dirty tree
without --allow-dirty, 1 when the run failed (nothing is recorded).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from functools import partial
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from daemon_learning import Segment, evaluate_state, event_figures, parse_minutes  # noqa: E402

from crawler.bench.harness import (  # noqa: E402
    DEFAULT_CORPUS,
    BenchDaemon,
    CorpusMissing,
    copy_files,
    corpus_folder,
    parse_settings,
    record_each,
    watching,
    with_settings,
)
from crawler.bench.results import ResultLog, add_result_flags  # noqa: E402


def figures_of(evaluation: dict) -> dict:
    """bits per byte of the best and the newest checkpoint from evaluate_state's result."""
    return {"best": (evaluation.get("best") or {}).get("bits_per_byte"),
            "latest": (evaluation.get("latest") or {}).get("bits_per_byte")}


def measure(state: Path, plays_val: Path, foreign_val: Path | None) -> dict:
    out = {"plays": evaluate_state(state, plays_val)}
    if foreign_val is not None:
        out["foreign"] = evaluate_state(state, foreign_val)
    return out


def rise(before: float | None, after: float | None) -> float | None:
    """Relative change of a figure, in percent (positive: worse)."""
    if before is None or after is None:
        return None
    return round(100.0 * (after - before) / before, 3)


def run(args) -> dict:
    plays, foreign = args.plays, args.foreign
    marks = sorted({m for m in args.at if m < args.minutes} | {args.minutes})
    segments: list[Segment] = []
    horizons = []

    def progress(d: BenchDaemon) -> None:
        step = d.last("train_step") or {}
        counted = segments[-1].seconds(time.perf_counter())
        print(f"forgetting: {counted / 60:.1f}/{args.minutes:g} daemon min after the drop, step "
              f"{step.get('step', '-')}, loss {step.get('loss', '-')}", file=sys.stderr, flush=True)

    with tempfile.TemporaryDirectory(prefix="crystalline-forgetting-") as work:
        state, inbox = Path(work) / "state", Path(work) / "inbox"
        inbox.mkdir()
        sections = with_settings(watching(inbox), args.set)
        plays_run = None
        if args.state is not None:
            shutil.copytree(args.state, state, symlinks=True)
        else:
            daemon = BenchDaemon(state, sections)
            try:
                daemon.first("daemon_ready")
                start = time.perf_counter()
                copy_files(plays / "train", inbox)
                segment = Segment(daemon, offset=0.0, start=start)
                daemon.run_until(start + 60 * args.plays_minutes)
                segment.end = time.perf_counter()
                daemon.stop()
            finally:
                daemon.kill()
            plays_run = event_figures([segment])
            if args.keep_state is not None:
                shutil.copytree(state, args.keep_state / "plays", symlinks=True)
        before = measure(state, plays / "val", args.foreign_val)
        print(f"forgetting: before the drop: plays best {figures_of(before['plays'])['best']}", file=sys.stderr,
              flush=True)
        daemon = BenchDaemon(state, sections)  # the inbox of this run, whatever STATE watched before
        try:
            daemon.first("daemon_ready")
            start = time.perf_counter()
            files = copy_files(foreign, inbox / foreign.name)
            for i, mark in enumerate(marks):
                offset = segments[-1].seconds(segments[-1].end) if segments else 0.0
                segment = Segment(daemon, offset=offset, start=start)
                segments.append(segment)
                daemon.run_until(start + 60 * mark - segment.offset, progress)
                segment.end = time.perf_counter()
                daemon.stop()
                after = measure(state, plays / "val", args.foreign_val)
                figures = event_figures(segments)
                grown = [{k: e.get(k) for k in ("step", "reason", "old", "new", "val_bits_per_byte_before",
                                                "val_bits_per_byte_after")}
                         for s in segments for e in s.daemon.events if e.get("event") == "model_grown"]
                stored = sum(1 for s in segments for e in s.daemon.events if e.get("event") == "file_ingested")
                plays_before, plays_after = figures_of(before["plays"]), figures_of(after["plays"])
                horizons.append({"minutes": mark, "daemon_s": round(segment.seconds(segment.end), 1),
                                 "plays": plays_after, "plays_rise_percent": rise(plays_before["best"],
                                                                                 plays_after["best"]),
                                 "foreign": figures_of(after["foreign"]) if "foreign" in after else None,
                                 "evaluations": after, "files_stored": stored, "model_grown": grown,
                                 **{k: figures.get(k) for k in ("steps", "tokens_trained", "tokens_per_s",
                                                                 "eval_finished", "plateaued")}})
                print(f"forgetting: at {mark:g} min: plays best {plays_after['best']} "
                      f"({horizons[-1]['plays_rise_percent']} %), foreign best "
                      f"{(horizons[-1]['foreign'] or {}).get('best')}", file=sys.stderr, flush=True)
                if i + 1 < len(marks):
                    daemon = BenchDaemon(state)
                    start = daemon.first("daemon_ready")["_received"]
        finally:
            daemon.kill()
        if args.keep_state is not None:
            shutil.copytree(state, args.keep_state / "final", symlinks=True)
    return {"key": args.key, "state": None if args.state is None else str(args.state),
            "plays_minutes": None if args.state is not None else args.plays_minutes, "plays_run": plays_run,
            "foreign": str(foreign), "foreign_files": files, "minutes": args.minutes, "at": marks,
            "settings": [f"{a}.{b}={c}" for a, b, c in args.set],
            "before": {"plays": figures_of(before["plays"]),
                       "foreign": figures_of(before["foreign"]) if "foreign" in before else None,
                       "evaluations": before},
            "horizons": horizons}


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--plays", default=str(DEFAULT_CORPUS), help="a folder with train/ and val/ (the plays)")
    p.add_argument("--state", type=Path, default=None, help="a state dir trained on the plays (copied)")
    p.add_argument("--plays-minutes", type=float, default=60.0, help="without --state: daemon minutes on the plays")
    p.add_argument("--foreign", type=Path, required=True, help="the folder of foreign text to drop")
    p.add_argument("--foreign-val", type=Path, default=None, help="held-out text of the foreign kind, also scored")
    p.add_argument("--minutes", type=float, default=30.0, help="daemon minutes after the drop (default 30)")
    p.add_argument("--at", default="10,30", help="daemon minutes after the drop to evaluate at")
    p.add_argument("--set", action="append", default=[], help="section.key=value for crystalline.toml (repeatable)")
    p.add_argument("--key", default="forgetting", help="the row's key (default forgetting)")
    p.add_argument("--keep-state", type=Path, default=None,
                   help="copy the state here: DIR/plays after the plays (when trained here), DIR/final at the end")
    add_result_flags(p, "forgetting.jsonl")
    return p.parse_args(argv)


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        args.plays = corpus_folder(args.plays)
        for folder in (args.foreign, args.foreign_val, args.state):
            if folder is not None and not folder.is_dir():
                raise ValueError(f"{folder} is not a folder")
        if args.keep_state is not None and args.keep_state.exists():
            raise ValueError(f"--keep-state {args.keep_state} exists already")
        args.at = [parse_minutes(m, "--at") for m in args.at.split(",") if m.strip()]
        args.set = [s for item in args.set for s in parse_settings(item)]
    except (CorpusMissing, ValueError) as exc:
        print(f"bench/forgetting.py: {exc}", file=sys.stderr)
        return 2
    log = ResultLog(args.results, allow_dirty=args.allow_dirty)
    return record_each(log, [(args.key, partial(run, args))], "bench/forgetting.py", plays=str(args.plays))


if __name__ == "__main__":
    sys.exit(main())
