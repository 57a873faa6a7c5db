"""HTML to text for the extractor: a page's visible text, its main content where it says which.

`html_text` is one pass of the standard library's HTMLParser. It keeps the text a reader sees,
with block structure as newlines and the layout of <pre> kept, and it leaves out what the page
itself declares is not its content, by structure alone, with no heuristics on words:

- navigation landmarks: <nav>, and elements whose role is navigation, search, banner or
  contentinfo; DocBook's page headers and footers (class navheader, navfooter: PostgreSQL's
  manual). Sphinx's sidebar and its "related" links bar carry role=navigation, and go with it.
  Ids and class names are not read otherwise, so a section whose id says "related" or
  "hidden" (Sphinx makes ids of section titles) stays.
- when the page has a main landmark (the first <main>, else the first element with
  role=main), everything outside it; a main landmark with no text gives way to the whole page.

That is the rule `bench/html_extract.py` measured as `landmarks` on 400 manual pages
(docs/BENCHMARKS.md, "HTML main content on the desk"): repeated lines and navigation nearly
gone, every paragraph, list item and code layout kept. Complementary content (<aside>) stays,
as it did there. Two differences from that prototype: it took the first <article> where there
was no main landmark (no page measured has one, and a page of several articles would keep only
the first), and an empty main landmark gave an empty page. Elements end where their end tag, or
the end tag of an element around them, says (an unclosed <nav> ends with its parent), as a
browser's tree would have it for these cases. This module is not a main-content extractor in the trafilatura sense (those
delete documentation whose ids look like page chrome), it opens no file and logs nothing.
Relies on the standard library only; `crawler.ingest.formats` uses it for HTML and EPUB.
"""

from __future__ import annotations

from html.parser import HTMLParser

_INVISIBLE = frozenset({"script", "style", "head", "template", "noscript"})
_HEAD_CONTENT = frozenset({"title", "meta", "link", "base", "style", "script", "noscript", "template"})
# blocks set off by a blank line, and blocks that only start a new line
_PARAGRAPHS = frozenset({"p", "h1", "h2", "h3", "h4", "h5", "h6", "pre", "blockquote", "ul", "ol", "dl",
                         "table", "hr", "figure", "section", "article", "header", "footer", "main",
                         "nav", "aside", "address", "details", "form", "fieldset"})
_LINES = frozenset({"div", "li", "dt", "dd", "tr", "caption", "figcaption", "summary", "body", "legend"})
# elements that never have content or an end tag, so they are never open
_VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "param",
                   "source", "track", "wbr"})
# elements a start tag of the same name ends when one is the innermost open element (<li><li>),
# so a list of unclosed siblings does not pile up on the open stack; and the blocks whose start
# ends an open <p>, as a browser ends it (<p>intro<main>: the <main> is not inside the <p>)
_SIBLINGS = frozenset({"p", "li", "dt", "dd", "tr", "td", "th", "option"})
_ENDS_P = frozenset({"address", "article", "aside", "blockquote", "details", "div", "dl", "fieldset",
                     "figcaption", "figure", "footer", "form", "h1", "h2", "h3", "h4", "h5", "h6",
                     "header", "hr", "main", "nav", "ol", "p", "pre", "section", "table", "ul"})
# what the page says is navigation: ARIA landmark roles, and DocBook XSL's page header and footer
_CHROME_ROLES = frozenset({"navigation", "search", "banner", "contentinfo"})
_CHROME_CLASSES = frozenset({"navheader", "navfooter"})


def _landmark(tag: str, attrs: list[tuple[str, str | None]]) -> str | None:
    """"chrome" for navigation to leave out, "main" for <main>, "role" for role=main, else None."""
    if tag == "nav":
        return "chrome"
    role = classes = None
    for name, value in attrs:
        if name == "role":
            role = (value or "").strip().lower()
        elif name == "class":
            classes = value
    if role in _CHROME_ROLES or (classes and not _CHROME_CLASSES.isdisjoint(classes.split())):
        return "chrome"
    if tag == "main":
        return "main"
    return "role" if role == "main" else None


class _HTMLText(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)  # entities arrive unescaped in handle_data
        self.lines: list[str] = []  # finished lines; "" is a blank line
        self.line: list[str] = []  # pieces of the line being built
        self.space = False  # collapsed whitespace is pending before the next word
        self.hidden: list[str] = []  # open invisible elements
        self.pre = 0  # depth of <pre>, inside which whitespace is kept
        self.open: list[str] = []  # the open elements, outermost first
        self.chrome: tuple[int, str] | None = None  # (depth in open, tag) of the navigation left out
        # "main" and "role": [depth in open, first line, end line (None while open)] of the first one
        self.mains: dict[str, list] = {}

    def handle_starttag(self, tag: str, attrs: list) -> None:
        if "head" in self.hidden and tag not in _HEAD_CONTENT:
            self.hidden.clear()  # <head> ends implicitly where the body content starts
        innermost = self.open[-1] if self.open else None
        if (innermost == tag and tag in _SIBLINGS) or (innermost == "p" and tag in _ENDS_P):
            self._close(len(self.open) - 1)
        if tag not in _VOID:
            self.open.append(tag)
        if self.chrome is not None:
            return
        if tag in _INVISIBLE:
            self.hidden.append(tag)
            return
        if self.hidden:
            return  # invisible content shapes no lines either
        landmark = _landmark(tag, attrs)
        if landmark == "chrome" and tag not in _VOID:
            self._boundary(tag)
            self.chrome = (len(self.open) - 1, tag)
        elif tag == "br":
            self._end_line(force=True)
        elif tag in ("td", "th") and self.line:
            self.line.append("\t")
            self.space = False
        else:
            self._block(tag)
            if tag == "pre":
                self.pre += 1
        if landmark in ("main", "role") and landmark not in self.mains and tag not in _VOID:
            self._end_line()
            self.mains[landmark] = [len(self.open) - 1, len(self.lines), None]

    def handle_endtag(self, tag: str) -> None:
        if self.chrome is None:
            if tag in _INVISIBLE:
                if tag in self.hidden:
                    del self.hidden[len(self.hidden) - 1 - self.hidden[::-1].index(tag):]
            elif tag != "br" and not self.hidden:
                if tag == "pre" and self.pre:
                    self.pre -= 1
                self._block(tag)
        if tag in self.open:
            self._close(len(self.open) - 1 - self.open[::-1].index(tag))

    def handle_data(self, data: str) -> None:
        if self.hidden or self.chrome is not None:
            return
        if self.pre:
            first, *rest = data.split("\n")
            self.line.append(first)
            for piece in rest:
                self._end_line(force=True)
                self.line.append(piece)
            return
        words = data.split()
        if not words:
            self.space = self.space or bool(data)
            return
        if (self.space or data[0].isspace()) and self.line:
            self.line.append(" ")
        self.line.append(" ".join(words))
        self.space = data[-1].isspace()

    def text(self) -> str:
        """The main landmark's text, or the whole page's where there is none or it has no text."""
        self._end_line()
        page = "\n".join(self.lines).strip("\n")
        for kind in ("main", "role"):  # a <main> first, as the measured rule chose it
            if kind in self.mains:
                _, first, end = self.mains[kind]
                main = "\n".join(self.lines[first:end]).strip("\n")
                return main if main.strip() else page
        return page

    def _close(self, depth: int) -> None:
        """The elements open from `depth` inward end: by an end tag, or implicitly by one that
        ends an element around them, or by a sibling's start tag."""
        del self.open[depth:]
        if self.chrome is not None and depth <= self.chrome[0]:
            self._boundary(self.chrome[1])
            self.chrome = None
        for span in self.mains.values():
            if span[2] is None and depth <= span[0]:
                self._end_line()
                span[2] = len(self.lines)

    def _boundary(self, tag: str) -> None:
        """Where an element left out starts or ends: a line ends there, as around any block."""
        self._block(tag)
        self._end_line()

    def _block(self, tag: str) -> None:
        if tag in _PARAGRAPHS:
            self._end_line()
            if self.lines and self.lines[-1]:
                self.lines.append("")
        elif tag in _LINES:
            self._end_line()

    def _end_line(self, force: bool = False) -> None:
        text = "".join(self.line).rstrip(" ")
        if text or force:
            self.lines.append(text)
        self.line = []
        self.space = False


def html_text(text: str) -> str:
    """Visible text of an HTML or XHTML document: no script, style, head, template or noscript;
    no navigation landmarks, and only the main landmark where the page has one with text (the
    module docstring says which elements); whitespace collapsed as a browser would (kept inside
    <pre>); blocks on their own lines and paragraphs separated by a blank line; table cells
    joined by tabs; entities unescaped."""
    parser = _HTMLText()
    parser.feed(text)
    parser.close()
    return parser.text()
