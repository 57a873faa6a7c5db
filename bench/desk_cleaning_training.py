"""What the corpus rules buy the model: the desk trained with and without the cleaning, both
models scored on the same cleaned held-out documents.

Two state directories are filled from the same subset of the desk corpus (Debian's documentation
packages unpacked at ../desk; the sources of bench/desk_cleaning.py) by `crystalline ingest`: one
with the rules off ([store] drop_boilerplate = false, skip_near_duplicates = false), one on its
defaults (both on). About one document in twenty is held out, chosen by a hash of its page key:
the path under its source folder without the suffixes, so Python's HTML page and its .rst.txt
source are held out together and neither model trains on the twin of a held-out page. The
held-out documents' text as the cleaned store holds it (boilerplate lines dropped; a page's
near-duplicate source not stored) is written to plain files, and the held-out documents are then
forgotten (`crystalline forget`) in both stores before any training.

Both models then train for the same number of steps with `crystalline train` on the product's
defaults, side by side, one thread each (the same load on both, whatever else the machine runs),
and `crystalline eval --json` scores each best checkpoint on the held-out files. The row records
stored tokens of each store, steps, wall time and both figures; the difference is what cleaning
buys per byte of the same text.

    python bench/desk_cleaning_training.py [--desk ../desk] [--steps 6000] [--work DIR]
Not a test; needs the desk corpus. One row per run in bench/results/desk_cleaning_training.jsonl.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from crawler.bench.harness import (
    RunFailed,
    crystalline,
    evaluate,
    record_each,
    toml_text,
)
from crawler.bench.results import REPO, ResultLog, add_result_flags

sys.path.insert(0, str(Path(__file__).resolve().parent))
from desk_cleaning import SOURCES

HELD_OUT_ONE_IN = 20
RULES_OFF = {"store": {"drop_boilerplate": False, "skip_near_duplicates": False}}


def page_key(relative: Path) -> str:
    """A document's page: its path under the source folder without suffixes or the _sources/ tree,
    so library/os.html and _sources/library/os.rst.txt are one page."""
    parts = [p for p in relative.parts if p != "_sources"]
    return "/".join(parts[:-1] + [parts[-1].split(".")[0]])


def held_out(key: str) -> bool:
    return int(hashlib.sha256(key.encode()).hexdigest(), 16) % HELD_OUT_ONE_IN == 0


def chosen_files(desk: Path, sources: list[str]) -> tuple[list[Path], list[Path]]:
    """(every file of the subset, the held-out ones), by source, in path order."""
    files, held = [], []
    for name in sources:
        folder, wanted = SOURCES[name]
        root = desk / folder
        for path in sorted(p for p in root.rglob("*") if p.is_file() and wanted(p)):
            files.append(path)
            if held_out(f"{name.split('-')[0]}:{page_key(path.relative_to(root))}"):
                held.append(path)
    return files, held


def run_checked(*args: str, timeout: float = 7200) -> subprocess.CompletedProcess:
    done = crystalline(*args, timeout=timeout)
    if done.returncode != 0:
        raise RunFailed(f"crystalline {' '.join(args[:3])}... exit {done.returncode}: {done.stderr[-2000:]}")
    return done


def stored_text(state: Path, path: Path) -> str | None:
    """The text the store holds for `path` (`crystalline show --json`), None when it holds none."""
    done = crystalline("show", str(path), "--json", "--state-dir", str(state))
    if done.returncode != 0:
        return None
    shown = json.loads(done.stdout.strip().splitlines()[-1])
    return shown.get("text") or None


def measure(desk: Path, sources: list[str], steps: int, work: Path) -> dict:
    files, held = chosen_files(desk, sources)
    print(f"{len(files)} files, {len(held)} held out", flush=True)
    states = {"raw": work / "raw", "clean": work / "clean"}
    listing = work / "files.txt"
    listing.write_text("".join(f"{p}\n" for p in files))
    row: dict = {"sources": sources, "files": len(files), "held_out_files": len(held), "steps": steps}
    for name, state in states.items():
        state.mkdir(parents=True)
        if name == "raw":
            (state / "crystalline.toml").write_text(toml_text(RULES_OFF))
        started = time.monotonic()
        for at in range(0, len(files), 2000):  # argv stays short
            run_checked("ingest", *map(str, files[at : at + 2000]), "--state-dir", str(state))
        row[f"{name}_ingest_s"] = round(time.monotonic() - started, 1)
        print(f"{name}: ingested in {row[f'{name}_ingest_s']} s", flush=True)
    split = work / "held-out"
    split.mkdir()
    kept = 0
    for number, path in enumerate(held):
        text = stored_text(states["clean"], path)
        if text:
            (split / f"{number:05d}.txt").write_text(text)
            kept += 1
    row["held_out_documents"] = kept
    row["held_out_bytes"] = sum(p.stat().st_size for p in split.iterdir())
    for state in states.values():
        for at in range(0, len(held), 2000):
            run_checked("forget", *map(str, held[at : at + 2000]), "--state-dir", str(state))
        status = json.loads(run_checked("status", "--json", "--state-dir", str(state)).stdout.strip().splitlines()[-1])
        row[f"{state.name}_tokens"] = status["tokens_total"] - status["tokens_withdrawn"]
        row[f"{state.name}_documents"] = status["documents"]
    empty = work / "nothing"
    empty.mkdir()
    started = time.monotonic()
    with contextlib.ExitStack() as outputs:
        children = {name: subprocess.Popen(
            [sys.executable, "-m", "crawler", "train", str(empty), "--steps", str(steps), "--threads", "1",
             "--state-dir", str(state)], cwd=REPO, stdout=outputs.enter_context(open(work / f"{name}.out", "w")),
            stderr=outputs.enter_context(open(work / f"{name}.err", "w"))) for name, state in states.items()}
        for name, child in children.items():
            if child.wait() != 0:
                raise RunFailed(f"train {name} exit {child.returncode}: {(work / f'{name}.err').read_text()[-2000:]}")
    row["train_wall_s"] = round(time.monotonic() - started, 1)
    for name, state in states.items():
        result, error = evaluate(state, split)
        if result is None:
            raise RunFailed(f"eval {name}: {error}")
        row[f"{name}_bits_per_byte"] = result["bits_per_byte"]
        row[f"{name}_eval_step"] = result["step"]
        print(f"{name}: {result['bits_per_byte']:.4f} bits/byte at step {result['step']}", flush=True)
    return row


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--desk", type=Path, default=REPO.parent / "desk")
    parser.add_argument("--sources", default=",".join(SOURCES))
    parser.add_argument("--steps", type=int, default=6000)
    parser.add_argument("--work", type=Path, default=None, help="keep the states here (default: a temporary folder)")
    add_result_flags(parser, "desk_cleaning_training.jsonl")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]

    def run() -> dict:
        if args.work is not None:
            args.work.mkdir(parents=True, exist_ok=False)
            return measure(args.desk, sources, args.steps, args.work)
        with tempfile.TemporaryDirectory(prefix="desk-training-") as work:
            return measure(args.desk, sources, args.steps, Path(work))

    key = f"{','.join(sources)}:{args.steps}"
    return record_each(ResultLog(args.results, allow_dirty=args.allow_dirty), [(key, run)], "desk_cleaning_training")


if __name__ == "__main__":
    sys.exit(main())
