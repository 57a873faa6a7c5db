"""The corpus rules on the desk: what boilerplate dropping and near-duplicate skipping store.

Ingests a subset of the desk corpus (Debian's documentation packages unpacked at ../desk) three
times, through the product's Ingestor (what `crystalline ingest` runs), into fresh SQLite stores
side by side: without the rules, with the boilerplate rule alone ([store] drop_boilerplate),
and with both (and skip_near_duplicates: the defaults). The subset, in the order the product walks each folder:
  python-html, python-rst  python3.11-doc's HTML manual and its .rst.txt sources (html/_sources)
  postgresql-html          postgresql-doc-15's HTML manual
  django-html              python-django-doc's HTML manual
  manpages                 manpages-dev's man pages (gzip)
Tokens are the byte tokenizer's (a document's UTF-8 bytes and one separator), so stored tokens
are stored bytes. Reported per store and per source: files by outcome, stored tokens, the share
of stored bytes in lines that repeat across 5 or more stored documents, the ingest's wall time;
for the rules: the near-duplicate pairs found (Python page/source counterparts, and the others
by source), and, over every pair of Python documents of the store without the rules (their
boilerplate lines dropped by the final line counts), how many counterparts and how many distinct
pages reach each Jaccard threshold (the near-duplicate rule's false-positive rate). With
--plays, the plays are ingested too (with the rules, into their own store) and every line they
lose is listed. With --scan, no store: the extracted texts run through the line rule at other
thresholds (SCAN), the counts kept in memory, to show what each threshold drops.

    python bench/desk_cleaning.py [--desk ../desk] [--plays ../shared/corpus/shakespeare/train]
                                  [--sources python-html,python-rst,...] [--scan] [--allow-dirty]
Not a test; needs the desk corpus. One row per run in bench/results/desk_cleaning.jsonl.
"""

from __future__ import annotations

import argparse
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import numpy as np
import sqlalchemy as sa

from crawler.bench.harness import RunFailed, record_each
from crawler.bench.results import REPO, ResultLog, add_result_flags
from crawler.ingest import cleaning
from crawler.ingest.pipeline import Ingestor, iter_files
from crawler.ingest.reading import SkippedFile, read_file
from crawler.ingest.tokenizer import ByteTokenizer
from storage import CorpusQueue, StorageConfig, open_database
from storage.models import corpus_lines, document_signatures, documents

PYTHON = "python3.11-doc/usr/share/doc/python3.11/html"
SOURCES: dict[str, tuple[str, Callable[[Path], bool]]] = {  # name: (folder under the desk, which files)
    "python-html": (PYTHON, lambda p: p.suffix == ".html" and "/_sources/" not in str(p)),
    "python-rst": (PYTHON, lambda p: p.name.endswith(".rst.txt")),
    "postgresql-html": ("postgresql-doc-15/usr/share/doc/postgresql-doc-15/html", lambda p: p.suffix == ".html"),
    "django-html": ("python-django-doc/usr/share/doc/python-django-doc/html", lambda p: p.suffix == ".html"),
    "manpages": ("manpages-dev/usr/share/man", lambda p: p.is_file()),
}
REPEATED_IN = 5  # documents: the line share reported is of lines in at least this many
NEAR = re.compile(r"near duplicate of document (\d+) \((.*)\): estimated shingle Jaccard ([0-9.]+)$")


def source_of(path: str, sources: list[str]) -> str:
    for name in sources:
        folder, wanted = SOURCES[name]
        if f"/{folder}/" in path and wanted(Path(path)):
            return name
    return "other"


def subset(desk: Path, sources: list[str]) -> list[tuple[Path, Path]]:
    """(file, root) of every file of the sources, each folder walked once in the product's order."""
    files, folders = [], []
    for name in sources:
        folder = desk / SOURCES[name][0]
        if not folder.is_dir():
            raise RunFailed(f"{folder} is not there: unpack the desk corpus, or pass --desk")
        if folder not in folders:
            folders.append(folder)
    for folder in folders:
        files += [(path, root) for path, root in iter_files([folder]) if source_of(str(path), sources) != "other"]
    return files


def ingest(files: list[tuple[Path, Path]], state: Path, lines: bool, near: bool) -> tuple[CorpusQueue, list, float]:
    state.mkdir(parents=True)
    config = StorageConfig(url=f"sqlite:///{state / 'corpus.db'}", drop_boilerplate=lines, skip_near_duplicates=near)
    queue = CorpusQueue(open_database(config.validate()))
    t0 = time.perf_counter()
    outcomes = list(Ingestor(queue, ByteTokenizer()).ingest_files(files))
    return queue, outcomes, time.perf_counter() - t0


def stored_texts(queue: CorpusQueue) -> dict[str, str]:
    query = sa.select(documents.c.source_path, documents.c.stream_start, documents.c.stream_end).where(
        documents.c.status.in_(("queued", "trained")))
    with queue.database.read() as connection:
        rows = connection.execute(query).all()
    decode = ByteTokenizer().decode
    return {path: decode(queue.read_tokens(start, end)).decode("utf-8", "surrogateescape") for path, start, end in rows}


def repeated_share(texts: dict[str, str], sources: list[str]) -> dict[str, float]:
    """Per source (and "all"): the share of stored bytes in non-blank lines that REPEATED_IN or
    more stored documents hold (lines keyed as the rules key them)."""
    holders: Counter = Counter()
    for text in texts.values():
        holders.update({cleaning.line_key(line) for line in text.split("\n") if line.strip()})
    total, repeated = Counter(), Counter()
    for path, text in texts.items():
        name = source_of(path, sources)
        for line in text.split("\n"):
            size = len(line.encode("utf-8", "surrogateescape")) + 1
            for key in (name, "all"):
                total[key] += size
                if line.strip() and holders[cleaning.line_key(line)] >= REPEATED_IN:
                    repeated[key] += size
    return {key: round(repeated[key] / total[key], 4) for key in total}


def lines_dropped(plain: dict[str, str], kept: dict[str, str], sources: list[str], top: int = 10) -> dict:
    """Per source: the lines the boilerplate rule took out (in the store without the rules, not in
    the one with it alone), most frequent first, and how many in all."""
    gone: dict[str, Counter] = {}
    for path, text in plain.items():
        before = Counter(line for line in text.split("\n") if line.strip())
        after = Counter(line for line in kept.get(path, "").split("\n") if line.strip())
        gone.setdefault(source_of(path, sources), Counter()).update(before - after)
    return {name: {"lines": sum(c.values()), "top": c.most_common(top)} for name, c in sorted(gone.items())}


def stem(path: str) -> str:
    """A Python page and its source by one name: library/bisect for both."""
    return re.sub(r"(\.rst\.txt|\.html)$", "", path.split("/html/")[-1].replace("_sources/", ""))


def summary(outcomes: list, texts: dict[str, str], sources: list[str], seconds: float) -> dict:
    files = Counter(f"{o.status}:{o.reason}" if o.reason else o.status for o in outcomes)
    tokens = Counter()
    for path, text in texts.items():
        tokens[source_of(path, sources)] += len(text.encode("utf-8", "surrogateescape")) + 1
    return {"files": dict(sorted(files.items())), "stored_tokens": sum(tokens.values()),
            "stored_tokens_by_source": dict(sorted(tokens.items())), "seconds": round(seconds, 1),
            "ms_per_file": round(seconds * 1e3 / max(len(outcomes), 1), 2),
            "repeated_line_share": repeated_share(texts, sources)}


def near_pairs(outcomes: list, sources: list[str]) -> dict:
    pairs, examples = Counter(), []
    counterparts = 0
    for o in outcomes:
        if o.reason != cleaning.NEAR_DUPLICATE:
            continue
        _, kept, similar = NEAR.match(o.detail).groups()
        a, b = source_of(kept, sources), source_of(o.path, sources)
        if {a, b} == {"python-html", "python-rst"} and stem(kept) == stem(o.path):
            counterparts += 1
            continue
        pairs[f"{a} ~ {b}"] += 1
        examples.append(f"{similar} {kept.split('/usr/share/')[-1]} ~ {o.path.split('/usr/share/')[-1]}")
    return {"near_duplicates": sum(pairs.values()) + counterparts, "python_counterparts": counterparts,
            "other_pairs": dict(pairs.most_common()), "examples": examples[:12]}


def python_pairs(plain: dict[str, str], counts: dict[int, int], sources: list[str]) -> dict:
    """Every pair of Python documents: the store without the rules' texts, less their boilerplate
    lines by the final line counts; estimated Jaccard of each pair; at each threshold, the
    page/source counterparts that reach it and the distinct pages that do."""
    signatures = {}
    for path, text in plain.items():
        if source_of(path, sources) in ("python-html", "python-rst"):
            doc = cleaning.DocumentLines.of(text)
            before = {h: max(counts.get(h, 0) - 1, 0) for h in doc.candidates()}
            drop = cleaning.boilerplate(doc, before)
            sig = cleaning.signature(cleaning.without(doc, drop) if drop else text)
            if sig is not None:
                signatures[path] = sig
    paths = sorted(signatures)
    matrix = np.stack([signatures[p].values for p in paths])  # (n, PERMUTATIONS)
    names = [stem(p) for p in paths]
    counterpart_pairs = len(paths) - len(set(names))
    reached = {t: [0, 0] for t in (0.3, 0.4, 0.5, 0.6, 0.7, 0.8)}
    for i in range(len(paths)):
        similar = (matrix[i + 1:] == matrix[i]).mean(axis=1)  # (n - i - 1,)
        for j in np.nonzero(similar >= 0.3)[0]:
            same = names[i] == names[i + 1 + j]
            for t in reached:
                if similar[j] >= t:
                    reached[t][0 if same else 1] += 1
    return {"documents": len(paths), "pairs": len(paths) * (len(paths) - 1) // 2, "counterpart_pairs": counterpart_pairs,
            "at_threshold": {str(t): {"counterparts": c, "distinct_pages": d} for t, (c, d) in reached.items()}}


def plays_case(plays: Path, state: Path) -> dict:
    files = list(iter_files([plays]))
    queue, outcomes, seconds = ingest(files, state, lines=True, near=True)
    with queue:
        texts = stored_texts(queue)
    lost = Counter()
    for path, _ in files:
        extracted = Counter(line for line in read_file(path).text.split("\n") if line.strip())
        stored = Counter(line for line in texts.get(str(path), "").split("\n") if line.strip())
        lost.update(extracted - stored)
    return {"plays": len(files), "files": dict(Counter(o.status for o in outcomes)),
            "lines_lost": dict(lost.most_common()), "seconds": round(seconds, 1)}


# --- --scan: the line rule's thresholds, side by side, without a store ------------------------------

SCAN = [  # (LINE_DOCUMENTS, BLOCK_LINES, edges, REPEAT_LINES); the first is the product's
    (cleaning.LINE_DOCUMENTS, cleaning.BLOCK_LINES, True, cleaning.REPEAT_LINES),
    (5, 4, True, 10), (10, 4, True, 10), (50, 4, True, 10), (20, 2, True, 10), (20, 3, True, 10),
    (20, 5, True, 10), (20, 4, False, 10), (20, 4, True, 0), (20, 4, True, 8),
    (5, 2, True, 10), (5, 3, True, 10), (5, 4, True, 6), (5, 4, True, 8), (2, 4, True, 10),
]


def simulate(texts: list[tuple[str, str]], sources: list[str], line_documents: int, block_lines: int,
             edges: bool, repeat_lines: int) -> tuple[dict[str, float], dict[str, Counter]]:
    """The line rule over texts in arrival order, the store's counts kept in memory (one file
    counts a line once): per source, the share of bytes dropped, and the lines dropped."""
    held, last = Counter(), {}
    total, dropped, lines = Counter(), Counter(), {}
    for path, text in texts:
        doc, path_key, before = cleaning.DocumentLines.of(text), cleaning.key_hash(path), {}
        for h in doc.candidates():
            if last.get(h) != path_key:
                held[h], last[h] = held[h] + 1, path_key
            before[h] = held[h] - 1
        drop = cleaning.boilerplate(doc, before, line_documents=line_documents, block_lines=block_lines,
                                    edges=edges, repeat_lines=repeat_lines)
        name = source_of(path, sources) if "/desk/" in path else "plays"
        total[name] += len(text.encode("utf-8", "surrogateescape")) + 1
        for i in drop:
            dropped[name] += len(doc.lines[doc.rows[i]].encode("utf-8", "surrogateescape")) + 1
            lines.setdefault(name, Counter())[doc.keys[i]] += 1
    return {name: round(dropped[name] / total[name], 4) for name in total}, lines


def scan(desk: Path, sources: list[str], plays: Path | None) -> dict:
    """The extracted texts of the subset (and the plays, in a second, separate corpus), then the
    line rule at each SCAN setting: the share of each source dropped, and of the plays the
    lines dropped."""
    texts = [(str(path), text.text) for path, _ in subset(desk, sources)
             if not isinstance(text := read_file(path), SkippedFile)]
    play_texts = [] if plays is None else [(str(p), read_file(p).text) for p, _ in iter_files([plays])]
    rows = {}
    for setting in SCAN:
        names = ("line_documents", "block_lines", "edges", "repeat_lines")
        shares, lines = simulate(texts, sources, *setting)
        row = {"dropped_share": shares, "top": {n: c.most_common(8) for n, c in lines.items()}}
        if play_texts:
            play_share, play_lines = simulate(play_texts, sources, *setting)
            row |= {"plays_dropped_share": play_share.get("plays", 0.0),
                    "plays_lines_dropped": dict(play_lines.get("plays", Counter()).most_common())}
        rows["K={} R={} E={} B={}".format(*setting)] = row | dict(zip(names, setting))
        print(f"K={setting[0]} R={setting[1]} E={setting[2]} B={setting[3]}: {shares}"
              + (f" plays: {row['plays_lines_dropped']}" if play_texts else ""), flush=True)
    return {"key": "scan:" + ",".join(sources), "files_given": len(texts), "plays": len(play_texts), "scan": rows}


def measure(desk: Path, sources: list[str], plays: Path | None) -> dict:
    files = subset(desk, sources)
    print(f"{len(files)} files", file=sys.stderr, flush=True)
    row: dict = {"key": ",".join(sources), "files_given": len(files), "thresholds": {
        "line_documents": cleaning.LINE_DOCUMENTS, "block_lines": cleaning.BLOCK_LINES,
        "edges": True, "repeat_lines": cleaning.REPEAT_LINES,
        "near_jaccard": cleaning.NEAR_JACCARD, "min_shingles": cleaning.MIN_SHINGLES}}
    with tempfile.TemporaryDirectory(prefix="desk-cleaning-") as tmp:
        plain_queue, plain_outcomes, plain_seconds = ingest(files, Path(tmp) / "without", lines=False, near=False)
        with plain_queue:
            plain = stored_texts(plain_queue)
            row["without"] = summary(plain_outcomes, plain, sources, plain_seconds) | {
                "database_bytes": plain_queue.database.size_bytes()}
        print(f"without the rules: {plain_seconds:.0f} s", file=sys.stderr, flush=True)
        lines_queue, lines_outcomes, lines_seconds = ingest(files, Path(tmp) / "lines", lines=True, near=False)
        with lines_queue:
            kept = stored_texts(lines_queue)
        row["lines_only"] = summary(lines_outcomes, kept, sources, lines_seconds) | {
            "lines_dropped": lines_dropped(plain, kept, sources)}
        print(f"the boilerplate rule alone: {lines_seconds:.0f} s", file=sys.stderr, flush=True)
        queue, outcomes, seconds = ingest(files, Path(tmp) / "with", lines=True, near=True)
        with queue:
            texts = stored_texts(queue)
            with queue.database.read() as connection:
                lines = connection.execute(sa.select(sa.func.count()).select_from(corpus_lines)).scalar()
                signed = connection.execute(sa.select(sa.func.count()).select_from(document_signatures)).scalar()
                counts = dict(connection.execute(sa.select(corpus_lines.c.line_hash, corpus_lines.c.documents)).all())
            size = queue.database.size_bytes()
        row["with"] = summary(outcomes, texts, sources, seconds) | {
            "distinct_lines_counted": lines, "signatures": signed, "database_bytes": size}
        row["with"]["near"] = near_pairs(outcomes, sources)
        print(f"with the rules: {seconds:.0f} s", file=sys.stderr, flush=True)
        if {"python-html", "python-rst"} <= set(sources):
            row["python_pairs"] = python_pairs(plain, counts, sources)
        if plays is not None:
            row["plays"] = plays_case(plays, Path(tmp) / "plays")
    row["stored_tokens_ratio"] = round(row["with"]["stored_tokens"] / row["without"]["stored_tokens"], 4)
    return row


def report(row: dict) -> None:
    a, m, b = row["without"], row["lines_only"], row["with"]
    print(f"stored tokens: without {a['stored_tokens']:,}, boilerplate rule alone {m['stored_tokens']:,}, both rules "
          f"{b['stored_tokens']:,}: {row['stored_tokens_ratio']}x")
    print(f"  {'source':16s} {'tokens: without':>16s} {'lines rule':>11s} {'both':>11s}   repeated-line share: "
          "without, lines rule, both")
    for name in sorted(a["stored_tokens_by_source"]):
        print(f"  {name:16s} {a['stored_tokens_by_source'][name]:>16,} {m['stored_tokens_by_source'].get(name, 0):>11,} "
              f"{b['stored_tokens_by_source'].get(name, 0):>11,}   {a['repeated_line_share'].get(name)}, "
              f"{m['repeated_line_share'].get(name)}, {b['repeated_line_share'].get(name)}")
    print(f"repeated-line share (lines in >= {REPEATED_IN} documents), all: {a['repeated_line_share']['all']}, "
          f"{m['repeated_line_share']['all']}, {b['repeated_line_share']['all']}")
    for name, dropped in m["lines_dropped"].items():
        print(f"  dropped from {name}: {dropped['lines']} lines, most: {[(k[:40], n) for k, n in dropped['top'][:6]]}")
    print(f"time, boilerplate rule alone: {m['seconds']} s ({m['ms_per_file']} ms/file)")
    print(f"files without: {a['files']}\nfiles with:    {b['files']}")
    print(f"database: without {a['database_bytes']:,} bytes, with {b['database_bytes']:,} ({b['distinct_lines_counted']:,} "
          f"lines counted, {b['signatures']:,} signatures)")
    print(f"time: with {b['seconds']} s ({b['ms_per_file']} ms/file) vs without {a['seconds']} s "
          f"({a['ms_per_file']} ms/file): {b['seconds'] / max(a['seconds'], 1e-9):.2f}x")
    print(f"near duplicates: {b['near']['near_duplicates']} ({b['near']['python_counterparts']} Python page/source "
          f"counterparts), others by source: {b['near']['other_pairs']}")
    for example in b["near"]["examples"]:
        print(f"  {example}")
    if "python_pairs" in row:
        pairs = row["python_pairs"]
        print(f"Python pairs: {pairs['pairs']:,} among {pairs['documents']} documents, {pairs['counterpart_pairs']} "
              f"counterparts; at each Jaccard threshold: {pairs['at_threshold']}")
    if "plays" in row:
        print(f"plays: {row['plays']}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--desk", type=Path, default=REPO.parent / "desk")
    parser.add_argument("--plays", type=Path, default=None, help="a folder of plays to check too")
    parser.add_argument("--sources", default=",".join(SOURCES), help=f"comma-separated, of {', '.join(SOURCES)}")
    parser.add_argument("--scan", action="store_true", help="the line rule at other thresholds, without a store")
    add_result_flags(parser, "desk_cleaning.jsonl")
    args = parser.parse_args(argv)
    sources = [s for s in args.sources.split(",") if s]
    unknown = [s for s in sources if s not in SOURCES]
    if unknown:
        parser.error(f"unknown sources {unknown}; known: {', '.join(SOURCES)}")
    rows: list[dict] = []

    def run() -> dict:
        if args.scan:
            rows.append(scan(args.desk, sources, args.plays))
        else:
            rows.append(measure(args.desk, sources, args.plays))
            report(rows[-1])
        return rows[-1]

    key = ("scan:" if args.scan else "") + ",".join(sources)
    return record_each(ResultLog(args.results, allow_dirty=args.allow_dirty), [(key, run)], "desk_cleaning")


if __name__ == "__main__":
    sys.exit(main())
