"""HTML main-content extraction on the desk's manuals: the product's extractor against libraries
made for it, side by side on one sample of pages.

The sample is fixed: for each family (python, postgresql, django, linux), `--per-family` pages
drawn by a seeded RNG from the sorted list of that manual's *.html files under the desk (the
Debian documentation unpacked at /work/desk). Every extractor gets every page, one page at a
time in turn, so machine load falls on all of them alike. For each extractor it reports:

  speed       pages/s and MB/s of HTML in (the product's row is `extract_file(path)`, which also
              opens, reads, decodes and hashes the file; the others get the decoded text)
  boilerplate the share of output bytes in lines that recur in 5 or more pages of the sample, and
              lines that are known navigation ("Prev Up Next", "Show Source", "Created using
              Sphinx", "© Copyright", ...): per page, and the share of pages with any
  content     every family: the page's paragraphs and list items (<p> and innermost <li> of 80
              characters or more, outside <nav> and the navigation and search roles) whose words
              the output keeps in order, and the pages that lose any; for pages whose Sphinx
              source (_sources/PAGE.rst.txt) is on the desk (python and linux): recall, the share
              of the source's 3-word shingles found in the output, after rst roles and directives
              are unwrapped (`:func:\\`x\\`` -> x); precision, the share of the output's
              shingles found in the source
  code        the page's <pre> blocks whose words survive in order, and whose lines survive in
              order with their relative indentation
  headings    the source's section titles found as a line of their own; and found twice (a
              table of contents)
  failures    exceptions and empty outputs

The extractors: `product` (crawler.ingest.extract.extract_file, the stdlib HTMLParser's visible
text), `landmarks` (the product's html_text on the page's <main> or role=main, with <nav> and
the navigation, search, banner and contentinfo roles and DocBook's navheader/navfooter removed
first: no heuristics, selectolax for the tree), trafilatura (default, and fast=True),
resiliparse (main_content=True; `resiliparse+product`: its main content as minimal HTML through
the product's html_text; `resiliparse-all`: every visible text, for speed), readability-lxml
(its summary through html_text), justext (English stoplist) and boilerpy3 (ArticleExtractor).

With --probe, a child process per extractor reports its import time and memory (RSS after the
import, peak after the largest pages of the sample): what a sandboxed extractor process would
pay. A library that is not installed is reported and left out.

    python bench/html_extract.py [--desk /work/desk] [--per-family 100] [--seed 0]
                                 [--extractors product,trafilatura,...] [--probe] [--allow-dirty]

Not a test. Records one row to bench/results/html_extract.jsonl (crawler.bench.results); exits
with a message, recording nothing, when the desk is absent. Relies on the standard library,
crawler.bench.results, crawler.ingest (the product's extractor, and its html_text for the
extractors that return HTML) and whichever extraction libraries are installed.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import itertools
import json
import random
import re
import subprocess
import sys
import textwrap
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from html.parser import HTMLParser
from pathlib import Path

from crawler.bench.results import REPO, DirtyTree, ResultLog, add_result_flags

DEFAULT_DESK = Path("/work/desk")
# family -> (its HTML folder under the desk, whether _sources/ there holds the pages' rst)
FAMILIES = {
    "python": ("python3.11-doc/usr/share/doc/python3.11/html", True),
    "postgresql": ("postgresql-doc-15/usr/share/doc/postgresql-doc-15/html", False),
    "django": ("python-django-doc/usr/share/doc/python-django-doc/html", False),
    "linux": ("linux-doc-6.1/usr/share/doc/linux-doc-6.1/html", True),
}
RECURRING_PAGES = 5  # a line in this many pages of the sample counts as repeated
# whole lines of navigation, footers and page chrome that these manuals repeat on every page
NAVIGATION = re.compile("|".join([
    r"Prev\s+Up\b.*\bNext", r"Prev(ious)?\s+Next", r"Previous topic", r"Next topic", r"This Page",
    r"Show Source", r"Report a Bug", r"Navigation", r"Table of Contents", r"Quick search",
    r"(Created|Built) (using|with) Sphinx.*", r"© Copyright.*", r"Last update(d on|:).*",
    r".*Please donate\.", r"«?\s*previous\s*\|\s*up\s*\|\s*next\s*»?", r"(index|modules|next|previous)\s*\|",
    r"Home \| Table of contents \| Index \| Modules", r"Python »", r"3\.11\.\d+ Documentation »",
    r"Django [\d.]+ documentation", r"The Linux Kernel",
]), re.IGNORECASE)
PARAGRAPH_CHARS = 80  # shorter <p> and <li> are mostly page chrome ("Previous topic") or labels
PROBE_PAGES = 50  # the largest pages of the sample, for the memory peak


@dataclass(frozen=True)
class Page:
    family: str
    path: Path
    source: Path | None  # the page's rst source, where the desk has it


# ---------------------------------------------------------------------------------------------
# the extractors: name -> factory; a factory imports its library and returns (path, html) -> text


def _product() -> Callable[[Path, str], str]:
    from crawler.ingest.extract import extract_file

    return lambda path, html: extract_file(path).text


def _landmarks() -> Callable[[Path, str], str]:
    """The product's html_text on the page's main landmark, navigation landmarks removed."""
    from selectolax.lexbor import LexborHTMLParser

    from crawler.ingest.formats import html_text

    drop = ("nav, [role=navigation], [role=search], [role=banner], [role=contentinfo], "
            ".navheader, .navfooter")

    def run(path: Path, html: str) -> str:
        tree = LexborHTMLParser(html)
        for node in tree.css(drop):
            node.decompose()
        main = tree.css_first("main") or tree.css_first("[role=main]") or tree.css_first("article")
        return html_text((main or tree.body or tree.root).html or "")
    return run


def _trafilatura(fast: bool) -> Callable[[], Callable[[Path, str], str]]:
    def factory() -> Callable[[Path, str], str]:
        import trafilatura

        return lambda path, html: trafilatura.extract(html, fast=fast, include_comments=False,
                                                      include_tables=True, output_format="txt") or ""
    return factory


def _resiliparse(main_content: bool) -> Callable[[], Callable[[Path, str], str]]:
    def factory() -> Callable[[Path, str], str]:
        from resiliparse.extract.html2text import extract_plain_text

        return lambda path, html: extract_plain_text(html, main_content=main_content, preserve_formatting=True,
                                                     list_bullets=True, alt_texts=False, links=False,
                                                     form_fields=False, noscript=False)
    return factory


def _resiliparse_product() -> Callable[[Path, str], str]:
    """resiliparse's main content as minimal HTML, made text by the product's html_text."""
    from resiliparse.extract.html2text import extract_plain_text

    from crawler.ingest.formats import html_text

    return lambda path, html: html_text(extract_plain_text(
        html, main_content=True, preserve_formatting="minimal_html", list_bullets=False, alt_texts=False,
        links=False, form_fields=False, noscript=False))


def _readability() -> Callable[[Path, str], str]:
    import logging

    from readability import Document

    from crawler.ingest.formats import html_text

    logging.getLogger("readability.readability").setLevel(logging.ERROR)
    return lambda path, html: html_text(Document(html).summary(html_partial=True))


def _justext() -> Callable[[Path, str], str]:
    import justext

    stoplist = justext.get_stoplist("English")
    return lambda path, html: "\n\n".join(paragraph.text for paragraph in justext.justext(html, stoplist)
                                          if not paragraph.is_boilerplate)


def _boilerpy3() -> Callable[[Path, str], str]:
    from boilerpy3 import extractors

    extractor = extractors.ArticleExtractor(raise_on_failure=False)
    return lambda path, html: extractor.get_content(html) or ""


EXTRACTORS: dict[str, tuple[Callable[[], Callable[[Path, str], str]], tuple[str, ...]]] = {
    # name: (factory, the distributions it needs, for their versions)
    "product": (_product, ()),
    "landmarks": (_landmarks, ("selectolax",)),
    "trafilatura": (_trafilatura(fast=False), ("trafilatura", "lxml")),
    "trafilatura-fast": (_trafilatura(fast=True), ("trafilatura", "lxml")),
    "resiliparse": (_resiliparse(main_content=True), ("resiliparse",)),
    "resiliparse+product": (_resiliparse_product, ("resiliparse",)),
    "resiliparse-all": (_resiliparse(main_content=False), ("resiliparse",)),
    "readability": (_readability, ("readability-lxml", "lxml")),
    "justext": (_justext, ("justext", "lxml")),
    "boilerpy3": (_boilerpy3, ("boilerpy3",)),
}


def library_versions(names: list[str]) -> dict[str, str]:
    found = {}
    for name in names:
        for dist in EXTRACTORS[name][1]:
            try:
                found[dist] = importlib.metadata.version(dist)
            except importlib.metadata.PackageNotFoundError:
                pass
    return found


# ---------------------------------------------------------------------------------------------
# the sample and its ground truth


def sample_pages(desk: Path, families: list[str], per_family: int, seed: int) -> list[Page]:
    """`per_family` pages of each family, drawn by Random(seed) from its sorted *.html files."""
    pages = []
    for family in families:
        folder, has_sources = FAMILIES[family]
        root = desk / folder
        files = sorted(p for p in root.rglob("*.html") if "_sources" not in p.parts)
        for path in random.Random(f"{seed}:{family}").sample(files, min(per_family, len(files))):
            source = root / "_sources" / path.relative_to(root).with_suffix(".rst.txt")
            pages.append(Page(family, path, source if has_sources and source.exists() else None))
    return pages


_SEPARATING = frozenset({"p", "div", "dt", "dd", "li", "br", "td", "th", "tr", "table", "ul", "ol", "dl",
                         "h1", "h2", "h3", "h4", "h5", "h6", "blockquote", "section"})


class _Blocks(HTMLParser):
    """The text of each <pre>, <p> and innermost <li> of a page, outside <nav> and the navigation
    and search roles (what a page declares is not its content)."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.found: dict[str, list[str]] = {"pre": [], "p": [], "li": []}
        self.open: list[tuple[str, list[str], list[bool]]] = []  # (tag, pieces, [holds an li])
        self.skipping: list[str] = []  # the tags open since a navigation landmark began

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if self.skipping or tag == "nav" or dict(attrs).get("role") in ("navigation", "search"):
            self.skipping.append(tag)
            return
        if tag in _SEPARATING and self.open and self.open[-1][0] != "pre":
            self.open[-1][1].append(" ")  # a block boundary separates words
        if tag == "li":
            for entry in self.open:
                entry[2][0] = entry[2][0] or entry[0] == "li"
        if tag in self.found:
            self.open.append((tag, [], [False]))

    def handle_endtag(self, tag: str) -> None:
        if self.skipping:
            if tag in self.skipping:
                del self.skipping[len(self.skipping) - 1 - self.skipping[::-1].index(tag):]
            return
        if not any(entry[0] == tag for entry in self.open):
            return
        while self.open:  # a block left open (an implied </p>) ends with its container
            name, pieces, holds_li = self.open.pop()
            text = "".join(pieces)
            if not (name == "li" and holds_li[0]):
                self.found[name].append(text)
            if self.open:
                self.open[-1][1].append(text)
            if name == tag:
                break

    def handle_data(self, data: str) -> None:
        if self.open and not self.skipping:
            self.open[-1][1].append(data)


def _words(text: str) -> str:
    return " " + " ".join(re.findall(r"\w+", text.lower())) + " "


def blocks(html: str) -> tuple[list[str], list[str], list[str]]:
    """(pre, paragraphs, list items) of a page: the <pre> blocks that hold any text, without their
    first and last newline; the <p> and innermost <li> of PARAGRAPH_CHARS or more, as their
    lower-cased words."""
    parser = _Blocks()
    parser.feed(html)
    parser.close()
    long = {name: [_words(text) for text in parser.found[name] if len(" ".join(text.split())) >= PARAGRAPH_CHARS]
            for name in ("p", "li")}
    return [block.strip("\n") for block in parser.found["pre"] if block.strip()], long["p"], long["li"]


_ROLE = re.compile(r":[\w.+:-]+:`([^`]*)`")
_LITERAL = re.compile(r"``(.+?)``")
_REFERENCE = re.compile(r"`([^`]*)`_{1,2}")
_ADORNMENT = re.compile(r"([=\-~^\"'`#*+:._<>])\1{2,}\s*")
_DIRECTIVE = re.compile(r"(\s*)\.\.\s+([\w:-]+)::\s*(.*)")
_EXPLICIT = re.compile(r"(\s*)\.\.(?:\s+(.*))?")  # a comment, target, footnote or substitution
_FIELD = re.compile(r"(\s*):[^:`\s][^:`]*:(?=\s|$)")
# directives whose whole block is not shown on the page, and those whose argument is not
_HIDDEN_BLOCKS = {"toctree", "index", "testsetup", "testcleanup", "include", "literalinclude", "raw",
                  "tabularcolumns", "meta", "kernel-doc", "kernel-include", "kernel-abi", "kernel-feat",
                  "moduleauthor", "sectionauthor", "codeauthor", "c:namespace", "c:namespace-push",
                  "c:namespace-pop", "highlight", "cssclass"}
_HIDDEN_ARGUMENTS = {"code-block", "sourcecode", "code", "module", "currentmodule", "py:module",
                     "py:currentmodule", "only", "image", "figure", "doctest", "testcode", "testoutput"}


def _unwrap_inline(line: str) -> str:
    def role(match: re.Match) -> str:
        inner = match.group(1)
        named = re.fullmatch(r"(.*?)\s*<[^<>]*>", inner, re.DOTALL)
        inner = named.group(1) if named and named.group(1) else inner
        return inner.split(".")[-1] if inner.startswith("~") else inner.lstrip("!")
    line = _ROLE.sub(role, line)
    line = _LITERAL.sub(r"\1", line)
    return _REFERENCE.sub(lambda m: re.sub(r"\s*<[^<>]*>$", "", m.group(1)), line)


def rst_text(source: str) -> str:
    """What a Sphinx page shows of its rst source, near enough for shingles: heading adornments,
    comments, targets and hidden directives removed; roles, literals and references unwrapped;
    field names dropped, their values kept."""
    out = []
    skip_deeper_than: int | None = None
    for line in source.split("\n"):
        indent = len(line) - len(line.lstrip())
        if skip_deeper_than is not None:
            if not line.strip() or indent > skip_deeper_than:
                continue
            skip_deeper_than = None
        if _ADORNMENT.fullmatch(line):
            continue
        directive = _DIRECTIVE.fullmatch(line)
        if directive:
            name = directive.group(2)
            if name in _HIDDEN_BLOCKS:
                skip_deeper_than = indent
            elif name not in _HIDDEN_ARGUMENTS:
                out.append(_unwrap_inline(directive.group(3)))
            continue
        explicit = _EXPLICIT.fullmatch(line)
        if explicit:
            footnote = re.match(r"\[[^\]]*\]\s*(.*)", explicit.group(2) or "")
            if footnote:
                out.append(_unwrap_inline(footnote.group(1)))
            else:
                skip_deeper_than = indent  # a comment runs on in its indented lines
            continue
        out.append(_unwrap_inline(_FIELD.sub(r"\1", line)))
    return "\n".join(out)


def rst_titles(source: str) -> list[str]:
    """The section titles of an rst source (a line underlined by an adornment), roles unwrapped."""
    lines = source.split("\n")
    titles = []
    for line, below in itertools.pairwise(lines):
        if (line.strip() and not line[0].isspace() and not _ADORNMENT.fullmatch(line)
                and _ADORNMENT.fullmatch(below) and len(below.rstrip()) >= len(line.rstrip()) - 2):
            titles.append(" ".join(_unwrap_inline(line).split()))
    return [title for title in titles if title]


def shingles(text: str) -> set[int]:
    """Hashes of the 3-word shingles of `text` (words: \\w+ runs, lower-cased)."""
    words = re.findall(r"\w+", text.lower())
    return {hash((words[i], words[i + 1], words[i + 2])) for i in range(len(words) - 2)}


# ---------------------------------------------------------------------------------------------
# one run: every page through every extractor, then the figures


def run_extractors(pages: list[Page], names: list[str]) -> dict[str, dict]:
    """{name: {"seconds": [...], "texts": [...], "errors": [...], "import_s": s}} in page order; a
    failed page has text "" and its error."""
    runners, results = {}, {}
    for name in names:
        started = time.perf_counter()
        runners[name] = EXTRACTORS[name][0]()
        results[name] = {"seconds": [], "texts": [], "errors": [], "import_s": time.perf_counter() - started}
    for number, page in enumerate(pages, 1):
        html = page.path.read_bytes().decode("utf-8", errors="replace")
        for name in names:
            started = time.perf_counter()
            try:
                text, error = runners[name](page.path, html), None
            except Exception as exc:  # noqa: BLE001 - a library's failure on a page is a figure
                text, error = "", f"{type(exc).__name__}: {exc}"[:200]
            results[name]["seconds"].append(time.perf_counter() - started)
            results[name]["texts"].append(text)
            results[name]["errors"].append(error)
        if number % 50 == 0:
            print(f"  {number}/{len(pages)} pages", file=sys.stderr)
    return results


def _lines(text: str) -> list[str]:
    return [" ".join(line.split()) for line in text.split("\n") if line.strip()]


def _layout_kept(block: str, lines: list[str]) -> bool:
    """Whether the non-blank lines of a <pre> block stand in `lines` (non-blank, right-stripped)
    in order and with their relative indentation: an extractor may indent the whole block."""
    want = textwrap.dedent("\n".join(line.rstrip() for line in block.split("\n") if line.strip()))
    first, count = want.split("\n")[0].strip(), want.count("\n") + 1
    return any(textwrap.dedent("\n".join(lines[i:i + count])) == want
               for i, line in enumerate(lines) if line.strip() == first)


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


def figures(pages: list[Page], result: dict, html_bytes: list[int], truth: list[dict]) -> dict:
    """The figures of one extractor over the sample (see the module docstring)."""
    texts = result["texts"]
    outputs = [shingles(text) for text in texts]
    words = [_words(text) for text in texts]
    seconds = sum(result["seconds"])
    page_lines = [_lines(text) for text in texts]
    in_pages = Counter(line for lines in page_lines for line in set(lines))
    out_bytes = sum(len(text.encode()) for text in texts)
    recurring = sum(len(line.encode()) + 1 for lines in page_lines for line in lines
                    if in_pages[line] >= RECURRING_PAGES)
    navigation = [sum(1 for line in lines if NAVIGATION.fullmatch(line)) for lines in page_lines]
    row = {
        "pages_per_s": len(pages) / seconds, "mb_per_s": sum(html_bytes) / 2**20 / seconds,
        "ms_per_page_median": sorted(result["seconds"])[len(pages) // 2] * 1000,
        "kb_out_per_page": out_bytes / 1024 / len(pages),
        "recurring_line_share": recurring / max(out_bytes, 1),
        "navigation_lines_per_page": sum(navigation) / len(pages),
        "pages_with_navigation": sum(1 for n in navigation if n) / len(pages),
        "failures": sum(1 for error in result["errors"] if error),
        "empty": sum(1 for text, error in zip(texts, result["errors"]) if not error and not text.strip()),
        "import_s": result["import_s"],
    }
    for family in sorted({page.family for page in pages}):
        chosen = [i for i, page in enumerate(pages) if page.family == family]
        family_bytes = sum(len(texts[i].encode()) for i in chosen)
        family_recurring = sum(len(line.encode()) + 1 for i in chosen for line in page_lines[i]
                               if in_pages[line] >= RECURRING_PAGES)
        row[f"recurring_line_share:{family}"] = family_recurring / max(family_bytes, 1)
        for kind in ("paragraphs", "items"):
            wanted = [(i, block) for i in chosen for block in truth[i][kind]]
            lost = [i for i, block in wanted if block not in words[i]]
            row[f"{kind}_kept:{family}"] = 1 - len(lost) / max(len(wanted), 1)
            row[f"pages_losing_{kind}:{family}"] = len(set(lost))
        recall, precision = [], []
        for i in chosen:
            if truth[i]["source"] is None:
                continue
            out = outputs[i]
            src = truth[i]["source"]
            recall.append(len(src & out) / max(len(src), 1))
            precision.append(len(src & out) / max(len(out), 1))
        if recall:
            row[f"recall:{family}"] = _mean(recall)
            row[f"precision:{family}"] = _mean(precision)
            row[f"low_recall_pages:{family}"] = sum(1 for r in recall if r < 0.5)
            row[f"source_pages:{family}"] = len(recall)
    pre_total = pre_words = pre_layout = titles_total = titles_kept = titles_twice = 0
    for text, lines, page_truth in zip(texts, page_lines, truth):
        flat = " ".join(text.split())
        code_lines = [line.rstrip() for line in text.split("\n") if line.strip()]
        for block in page_truth["pre"]:
            pre_total += 1
            pre_words += " ".join(block.split()) in flat
            pre_layout += _layout_kept(block, code_lines)
        # a title counts where a line is the title, or ends with it after a section number
        bare = [line.replace("¶", "").strip() for line in lines]
        for title in page_truth["titles"]:
            found = sum(1 for line in bare if line == title or line.endswith(" " + title))
            titles_total += 1
            titles_kept += found >= 1
            titles_twice += found >= 2
    row |= {"pre_blocks": pre_total, "pre_words_kept": pre_words / max(pre_total, 1),
            "pre_layout_kept": pre_layout / max(pre_total, 1), "titles": titles_total,
            "titles_kept": titles_kept / max(titles_total, 1), "titles_twice": titles_twice / max(titles_total, 1)}
    return row


# ---------------------------------------------------------------------------------------------
# import time and memory, in a child process per extractor


def _memory_kb() -> dict[str, int]:
    found = {}
    with open("/proc/self/status") as status:
        for line in status:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM"):
                found[key] = int(value.split()[0])
    return found


def probe(name: str, pages: list[Page]) -> dict:
    """In this process (a fresh child): the extractor's import time, RSS after it, and the peak
    RSS after the largest PROBE_PAGES pages of the sample."""
    base = _memory_kb()["VmRSS"]
    started = time.perf_counter()
    run = EXTRACTORS[name][0]() if name != "none" else None
    import_s = time.perf_counter() - started
    imported = _memory_kb()["VmRSS"]
    if run is not None:
        for page in sorted(pages, key=lambda p: p.path.stat().st_size)[-PROBE_PAGES:]:
            try:
                run(page.path, page.path.read_bytes().decode("utf-8", errors="replace"))
            except Exception:  # noqa: BLE001 - failures are the main run's figure
                pass
    return {"import_s": import_s, "rss_base_mb": base / 1024, "rss_imported_mb": imported / 1024,
            "rss_peak_mb": _memory_kb()["VmHWM"] / 1024}


def probe_in_child(name: str, args: argparse.Namespace) -> dict:
    command = [sys.executable, str(Path(__file__).resolve()), "--probe-one", name, "--desk", str(args.desk),
               "--per-family", str(args.per_family), "--seed", str(args.seed), "--families", args.families]
    done = subprocess.run(command, capture_output=True, text=True, cwd=REPO, timeout=1800, check=False)
    if done.returncode != 0:
        return {"error": done.stderr.strip().splitlines()[-1:] or ["failed"]}
    return json.loads(done.stdout.strip().splitlines()[-1])


# ---------------------------------------------------------------------------------------------
# the report


def _cell(value: float | None, kind: str) -> str:
    if value is None:
        return ""
    return {"pct": f"{100 * value:.1f} %", "f1": f"{value:.1f}", "f2": f"{value:.2f}", "int": f"{value:,.0f}",
            "ms": f"{1000 * value:.0f}"}[kind]


def print_tables(rows: dict[str, dict], families: list[str], probes: dict[str, dict]) -> None:
    def table(title: str, columns: list[tuple[str, str, str]]) -> None:
        print(f"\n{title}\n| extractor | " + " | ".join(c[0] for c in columns) + " |")
        print("|---|" + "---|" * len(columns))
        for name, row in rows.items():
            print(f"| {name} | " + " | ".join(_cell(row.get(key), kind) for _, key, kind in columns) + " |")

    table("Speed, boilerplate and failures (all families)", [
        ("pages/s", "pages_per_s", "f1"), ("MB/s", "mb_per_s", "f2"), ("median ms", "ms_per_page_median", "f1"),
        ("KB out/page", "kb_out_per_page", "f1"), ("bytes in lines in >=5 pages", "recurring_line_share", "pct"),
        ("nav lines/page", "navigation_lines_per_page", "f1"), ("pages with nav", "pages_with_navigation", "pct"),
        ("failures", "failures", "int"), ("empty", "empty", "int")])
    table("Repeated-line share by family", [(family, f"recurring_line_share:{family}", "pct") for family in families])
    for kind, what in (("paragraphs", "Paragraphs (<p>"), ("items", "List items (innermost <li>")):
        table(f"{what} of {PARAGRAPH_CHARS}+ characters, outside navigation) whose words the output keeps in order; "
              "pages losing any", [c for family in families for c in (
                  (family, f"{kind}_kept:{family}", "pct"), (f"pages {family}", f"pages_losing_{kind}:{family}", "int"))])
    sourced = [f for f in families if FAMILIES[f][1]]
    table("Content kept: source shingles recalled / output shingles from the source; code; headings",
          [c for f in sourced for c in ((f"recall {f}", f"recall:{f}", "pct"), (f"precision {f}", f"precision:{f}", "pct"),
                                        (f"recall<50% {f}", f"low_recall_pages:{f}", "int"))]
          + [("pre words kept", "pre_words_kept", "pct"), ("pre layout kept", "pre_layout_kept", "pct"),
             ("rst titles kept", "titles_kept", "pct"), ("titles twice", "titles_twice", "pct")])
    if probes:
        base = probes.get("none", {})
        print("\nImport and memory, each in a fresh child process (peak: after the "
              f"{PROBE_PAGES} largest pages)\n| extractor | import ms | RSS after import MB | peak RSS MB |\n|---|---|---|---|")
        if base:
            print(f"| (bare interpreter + this script) | | {base['rss_imported_mb']:.0f} | {base['rss_peak_mb']:.0f} |")
        for name, found in probes.items():
            if name != "none":
                print(f"| {name} | " + (f"{1000 * found['import_s']:.0f} | {found['rss_imported_mb']:.0f} | "
                                        f"{found['rss_peak_mb']:.0f} |" if "error" not in found else f"{found['error']} | | |"))


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--desk", type=Path, default=DEFAULT_DESK, help="the unpacked documentation (default /work/desk)")
    p.add_argument("--families", default=",".join(FAMILIES), help=f"comma-separated, of {', '.join(FAMILIES)}")
    p.add_argument("--per-family", type=int, default=100, help="pages drawn from each family (default 100)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--extractors", default=",".join(EXTRACTORS), help=f"comma-separated, of {', '.join(EXTRACTORS)}")
    p.add_argument("--probe", action="store_true", help="also measure import time and memory in child processes")
    p.add_argument("--probe-one", metavar="NAME", help=argparse.SUPPRESS)
    p.add_argument("--dump", type=Path, help="write each extractor's output per page under this folder")
    add_result_flags(p, "html_extract.jsonl")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    families = [f.strip() for f in args.families.split(",") if f.strip()]
    unknown = [f for f in families if f not in FAMILIES]
    if unknown:
        print(f"bench/html_extract.py: unknown families {unknown}; known: {', '.join(FAMILIES)}", file=sys.stderr)
        return 2
    present = [f for f in families if (args.desk / FAMILIES[f][0]).is_dir()]
    if not present:
        print(f"bench/html_extract.py: no manual of {families} under {args.desk}: the desk is absent, "
              "nothing measured (give its path with --desk)", file=sys.stderr)
        return 0
    if len(present) < len(families):
        print(f"bench/html_extract.py: {sorted(set(families) - set(present))} absent under {args.desk}, left out",
              file=sys.stderr)
    pages = sample_pages(args.desk, present, args.per_family, args.seed)
    if args.probe_one:
        print(json.dumps(probe(args.probe_one, pages)))
        return 0

    names = []
    for name in (n.strip() for n in args.extractors.split(",") if n.strip()):
        if name not in EXTRACTORS:
            print(f"bench/html_extract.py: unknown extractor {name!r}; known: {', '.join(EXTRACTORS)}", file=sys.stderr)
            return 2
        try:
            EXTRACTORS[name][0]()
            names.append(name)
        except ImportError as exc:
            print(f"{name}: not installed ({exc.name}), left out", file=sys.stderr)
    log = ResultLog(args.results, allow_dirty=args.allow_dirty)
    try:
        before = log.check()
    except DirtyTree as exc:
        print(f"bench/html_extract.py: {exc}", file=sys.stderr)
        return 2

    html_bytes, truth = [], []
    for page in pages:
        html = page.path.read_bytes().decode("utf-8", errors="replace")
        html_bytes.append(len(html.encode()))
        source = page.source.read_text(errors="replace") if page.source else None
        pre, paragraphs, items = blocks(html)
        truth.append({"pre": pre, "paragraphs": paragraphs, "items": items, "source": shingles(rst_text(source)) if source else None,
                      "titles": rst_titles(source) if source else []})
    print(f"{len(pages)} pages ({', '.join(f'{f}: {sum(p.family == f for p in pages)}' for f in present)}), "
          f"{sum(html_bytes) / 2**20:.1f} MB of HTML, {sum(t['source'] is not None for t in truth)} with an rst "
          f"source; extractors: {', '.join(names)}", file=sys.stderr)
    results = run_extractors(pages, names)
    rows = {name: figures(pages, results[name], html_bytes, truth) for name in names}
    if args.dump:
        for name in names:
            for page, text in zip(pages, results[name]["texts"]):
                target = args.dump / name / page.family / page.path.relative_to(args.desk / FAMILIES[page.family][0])
                target.with_suffix(".txt").parent.mkdir(parents=True, exist_ok=True)
                target.with_suffix(".txt").write_text(text)
    probes = {}
    if args.probe:
        for name in ["none", *names]:
            print(f"  probing {name}", file=sys.stderr)
            probes[name] = probe_in_child(name, args)
    print_tables(rows, present, probes)

    sample_id = hashlib.sha256("\n".join(str(p.path) for p in pages).encode()).hexdigest()[:12]
    key = f"html:{','.join(present)}:{args.per_family}:{args.seed}"
    written = log.append({"key": key, "date": datetime.now(UTC).isoformat(timespec="seconds"),
                          "desk": str(args.desk), "pages": len(pages), "sample": sample_id,
                          "libraries": library_versions(names), "python": sys.version.split()[0],
                          "extractors": rows, "probes": probes}, before)
    print(f"\nrecorded {key} in {args.results} (revision {written['revision']}, dirty={written['dirty']})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
