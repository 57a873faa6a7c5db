"""The corpus of the growth measurements (issue "Grows with its text"): the 34 plays and about
100 MB of the desk, as a folder with train/ and val/ for bench/daemon_learning.py --corpus.

train/plays/   every play of ../shared/corpus/shakespeare/train
train/desk/    python3.11-doc's HTML manual and its .rst.txt sources, postgresql-doc-15's and
               python-django-doc's HTML manuals and manpages-dev's man pages (the sources of
               bench/desk_cleaning.py; 3,601 files, 105.9 MB, symlinked files left out as the
               daemon leaves them), less the held-out pages
val/plays/     ../shared/corpus/shakespeare/val
val/desk/      one page in twenty of the desk sources, chosen by bench/desk_cleaning_training.py's
               page key (a Python page and its source together), so no trained page has its twin
               held out (220 files, 7.5 MB)

Files keep their folder structure under each source's name. Copies, not links: the daemon refuses
a symlink that leads out of its watched folder.

    python bench/growth_corpus.py DEST [--desk ../desk] [--plays ../shared/corpus/shakespeare]
Not a test; needs the desk and the plays.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from desk_cleaning import SOURCES  # noqa: E402  one definition of the subset
from desk_cleaning_training import held_out, page_key  # noqa: E402

from crawler.bench.results import REPO  # noqa: E402


def build(dest: Path, desk: Path, plays: Path) -> dict:
    counts = {"train": 0, "val": 0, "train_bytes": 0, "val_bytes": 0}
    for split in ("train", "val"):
        for path in sorted((plays / split).iterdir()):
            target = dest / split / "plays" / path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            counts[split] += 1
            counts[f"{split}_bytes"] += path.stat().st_size
    for name, (folder, wanted) in SOURCES.items():
        root = desk / folder
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink() and wanted(p)):
            relative = path.relative_to(root)
            split = "val" if held_out(f"{name.split('-')[0]}:{page_key(relative)}") else "train"
            target = dest / split / "desk" / name / relative
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)
            counts[split] += 1
            counts[f"{split}_bytes"] += path.stat().st_size
    return counts


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("dest", type=Path)
    parser.add_argument("--desk", type=Path, default=REPO.parent / "desk")
    parser.add_argument("--plays", type=Path, default=REPO.parent / "shared" / "corpus" / "shakespeare")
    args = parser.parse_args(argv)
    if args.dest.exists():
        parser.error(f"{args.dest} exists: give a new folder")
    for needed in (args.desk, args.plays / "train", args.plays / "val"):
        if not needed.is_dir():
            print(f"bench/growth_corpus.py: {needed} is missing (../shared/corpus/desk/fetch.sh DEST unpacks the desk)",
                  file=sys.stderr)
            return 2
    counts = build(args.dest, args.desk, args.plays)
    print(f"{args.dest}: train {counts['train']} files, {counts['train_bytes'] / 1e6:.1f} MB; "
          f"val {counts['val']} files, {counts['val_bytes'] / 1e6:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
