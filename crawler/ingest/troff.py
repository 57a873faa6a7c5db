r"""Man pages: troff source (man(7) macros) in, the text a reader of `man` sees out.

`troff_text` reads a page line by line, as troff does, and writes what the page says without
the markup that only shapes it. The model learns the manual as a reader sees it, so:

Kept, as lines:
- `.TH` as the title line `NAME(SECTION)`; `.SH` and `.SS` headings as lines of their own (with
  no argument, the next line is the heading), each after a blank line;
- text in fill mode as one line per paragraph (source lines joined by a space, `\c` joins with
  none); a paragraph ends at `.PP` `.LP` `.P` `.HP` `.IP` `.TP` `.sp`, a blank source line or a
  heading (a blank line between), or at `.br` `.RS` `.RE` `.in` `.ti` and a line that starts
  with a blank (a new line only);
- `.nf`/`.fi` and `.EX`/`.EE`: those lines as they are;
- `.TP` (and `.TQ`): its tag on a line of its own, the body on the next; `.IP tag`: the tag
  opens the paragraph, a space before its text;
- the font macros `.B .I .SM .SB` (arguments joined by spaces) and `.BR .BI .IB .IR .RB .RI`
  (joined with nothing between, as the fonts alternate), without their fonts; `.UR`/`.UE`,
  `.MT`/`.ME` as `text <address>`; `.SY`/`.OP`/`.YS` synopses as `cmd [opt arg]`;
- tbl tables (`.TS` ... `.TE`): one line per row, the text of its cells joined by one tab (empty
  cells, rules and span marks dropped, `T{ ... T}` blocks as one cell);
- what troff computes in nroff mode: strings the page defines (`.ds`, `.as`), its own macros
  (`.de`, `.am`, `.als`, with their arguments; pod2man's `.Vb`, DocBook's and asciidoctor's
  helpers), character translations (`.tr`), and conditions (`.if`/`.ie`/`.el` on `n`, `t`, `!`,
  string comparisons, numbers and groff's `.g`; any other register is false);
- inline escapes as `crawler.ingest.troff_inline` renders them (named characters, dashes).

Dropped: comments (`.\"`, `\"`, `\#`), ignored blocks (`.ig`), `.so` includes (the page they
name is a file of its own; an alias page that is only `.so` is empty), and every other request
(spacing, fonts, registers, hyphenation, traps), whose effect is layout; so are the page header
and footer `man` draws. mdoc(7) macros (`.Dd`, `.Sh`, `.Nm`, ...) are not interpreted: their
text lines stay, their macro lines go. Pure; logs nothing. Relies on `crawler.ingest.troff_inline`.
"""

from __future__ import annotations

import re

from .troff_inline import (
    PREDEFINED_STRINGS,
    arguments,
    escape_pairs,
    render,
    strip_comment,
)

__all__ = ["troff_text"]

_REQUEST = re.compile(r"[.'][ \t]*([^ \t\\]*)[ \t]*(.*)", re.DOTALL)
_FONT_WORDS = frozenset(("B", "I", "SM", "SB"))
_FONT_ALTERNATING = frozenset(("BR", "BI", "IB", "IR", "RB", "RI"))
_PARAGRAPHS = frozenset(("PP", "LP", "P", "HP", "sp"))
_BREAKS = frozenset(("br", "RS", "RE", "in", "ti", "ce", "bp", "YS"))
_NO_FILL = frozenset(("nf", "EX"))
_FILL = frozenset(("fi", "EE"))
_DEFINITIONS = frozenset(("de", "de1", "am", "am1", "ig", "dei", "ami"))
# what request() interprets itself; a page's own definition of one of these is not used
_NATIVE = _FONT_WORDS | _FONT_ALTERNATING | _PARAGRAPHS | _BREAKS | _NO_FILL | _FILL | _DEFINITIONS | frozenset((
    "TH", "SH", "SS", "TP", "TQ", "IP", "UR", "UE", "MT", "ME", "SY", "OP", "TS", "ds", "ds1", "as", "as1",
    "if", "ie", "el", "nop", "als", "tr"))
_MAX_EXPANDED = 100_000  # lines a page's macros may expand to: a macro that calls itself stops here
_COPY_BACKSLASH = re.compile(r"\\(.)", re.DOTALL)
_MACRO_ARGUMENT = re.compile(r"\\\$(?:([1-9])|\(([0-9]{2})|\[([0-9]+)\]|([*@#]))")
_TABLE_END = re.compile(r"[.'][ \t]*TE\b")
_FORMAT = re.compile(r"[ \t]*[lrcnastLRCNAST^_=|][A-Za-z0-9 ,.|_=^()\-]*$")  # tbl key letters, modifiers
_BLOCK_END = re.compile(r"[.'][ \t]*\.[ \t]*$")


class _Page:
    """The text being written: finished lines, and the line being filled."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.line: list[str] = []
        self.fill = True
        self.glue = False  # the next text joins the line with no space (\c)
        self.nospace = True  # after a heading (and at the start) a paragraph adds no blank line
        self.pending: str | None = None  # "heading" or "tag": what the next text is
        self.translation: dict[int, str] = {}  # .tr: characters output as others

    def text(self, piece: str, glue_after: bool = False) -> None:
        piece = piece.translate(self.translation) if self.translation else piece
        if self.pending is not None and piece.strip():
            kind, self.pending = self.pending, None
            if kind == "heading":
                self.heading(piece)
            else:
                self.own_line(piece)
            return
        if not self.fill and not self.glue:
            self.brk()
        if piece:
            if self.fill and self.line and not self.glue:
                self.line.append(" ")
            self.line.append(piece)
            self.nospace = False
        self.glue = glue_after

    def brk(self) -> None:
        if self.line:
            self.lines.append("".join(self.line).rstrip())
            self.line = []
        self.glue = False

    def blank(self) -> None:
        self.brk()
        if not self.nospace and self.lines and self.lines[-1]:
            self.lines.append("")

    def heading(self, text: str) -> None:
        text = text.translate(self.translation) if self.translation else text
        self.nospace = False
        self.blank()
        self.lines.append(text.strip())
        self.nospace = True

    def own_line(self, text: str) -> None:
        text = text.translate(self.translation) if self.translation else text
        self.brk()
        self.lines.append(text.rstrip())
        self.nospace = False

    def result(self) -> str:
        self.brk()
        text = "\n".join(self.lines)
        return re.sub(r"\n{3,}", "\n\n", text).strip("\n")


class _Reader:
    """One page's interpreter: the source lines, the page, the strings and `.ie` results."""

    def __init__(self, source: str):
        self.source = source.replace("\r\n", "\n").split("\n")
        self.at = 0
        self.expansions: list[str] = []  # lines of called macros still to read, the next one last
        self.page = _Page()
        self.strings = dict(PREDEFINED_STRINGS)
        self.conditions: list[bool] = []  # the results of .ie, for their .el
        self.link = ""  # the address of an open .UR or .MT
        self.macros: dict[str, list[str]] = {}  # the page's own (.de), as written
        self.expanded = 0

    def next_line(self) -> str | None:
        """The next input line (a called macro's first), with escaped newlines joined."""
        if self.expansions:
            return self.expansions.pop()
        if self.at >= len(self.source):
            return None
        line = self.source[self.at]
        self.at += 1
        while (len(line) - len(line.rstrip("\\"))) % 2 and self.at < len(self.source):
            line = line[:-1] + self.source[self.at]
            self.at += 1
        return line

    def run(self) -> str:
        while (line := self.next_line()) is not None:
            self.line(line)
        return self.page.result()

    def line(self, line: str) -> None:
        line = strip_comment(line)
        if line[:1] in (".", "'"):
            match = _REQUEST.match(line)
            self.request(match.group(1), match.group(2))
            return
        page = self.page
        if not line.strip():
            if page.fill:
                page.blank()
            else:
                page.own_line("")
            return
        if page.fill and line[0] in " \t":
            page.brk()
        pairs = escape_pairs(line)
        glue = bool(pairs) and pairs[-1].end() == len(line.rstrip()) and pairs[-1].group(1) == "c"
        text = render(line, self.strings)
        page.text(text.rstrip() if page.fill and not glue else text, glue_after=glue)

    # -----------------------------------------------------------------------------------------
    # Requests and macros

    def request(self, name: str, rest: str) -> None:
        page = self.page
        if not name:
            return
        if name in _FONT_WORDS or name in _FONT_ALTERNATING:
            if text := self.font_text(name, rest):
                page.text(text)
        elif name == "TH":
            args = [render(arg, self.strings) for arg in arguments(rest)]
            if args:
                page.heading(f"{args[0]}({args[1]})" if len(args) > 1 else args[0])
        elif name in ("SH", "SS"):
            title = " ".join(render(arg, self.strings) for arg in arguments(rest))
            page.brk()
            if title.strip():
                page.heading(title)
            else:
                page.pending = "heading"
        elif name in _PARAGRAPHS:
            page.blank()
        elif name in ("TP", "TQ"):  # .TQ: one more tag of the same body
            if name == "TP":
                page.blank()
            page.brk()
            page.pending = "tag"
        elif name == "IP":
            page.blank()
            args = arguments(rest)
            tag = render(args[0], self.strings).strip() if args else ""
            if tag:
                page.text(tag)
        elif name in _BREAKS:
            page.brk()
        elif name in _NO_FILL or name in _FILL:
            page.brk()
            page.fill = name in _FILL
        elif name in ("UR", "MT"):
            args = arguments(rest)
            self.link = render(args[0], self.strings) if args else ""
        elif name in ("UE", "ME"):
            after = " ".join(render(arg, self.strings) for arg in arguments(rest))
            if self.link:
                page.text(f"<{self.link}>{after}")
            elif after:
                page.text(after)
            self.link = ""
        elif name == "SY":
            page.brk()
            page.text(" ".join(render(arg, self.strings) for arg in arguments(rest)))
        elif name == "OP":
            page.text("[" + " ".join(render(arg, self.strings) for arg in arguments(rest)) + "]")
        elif name == "TS":
            self.table()
        elif name in _DEFINITIONS:
            self.define(name, arguments(rest))
        elif name == "als":
            new, old = (arguments(rest) + ["", ""])[:2]
            if old in self.macros and new not in _NATIVE:
                self.macros[new] = self.macros[old]
        elif name == "tr":  # pairs: the first of each is output as the second
            pairs = render(rest.strip(), self.strings)
            pairs += " " if len(pairs) % 2 else ""
            page.translation.update({ord(pairs[i]): pairs[i + 1] for i in range(0, len(pairs), 2)})
        elif name == "nop":
            if rest.strip():
                self.line(rest)
        elif name in ("ds", "ds1", "as", "as1"):
            key, _, value = rest.partition(" ")
            value = value.lstrip(" \t")
            value = value.removeprefix('"')
            self.strings[key] = (self.strings.get(key, "") if name.startswith("as") else "") + value
        elif name in ("if", "ie"):
            result, body = self.condition(rest)
            if name == "ie":
                self.conditions.append(result)
            self.branch(result, body)
        elif name == "el":
            result = self.conditions.pop() if self.conditions else True
            self.branch(not result, rest)
        elif name in self.macros:
            self.call(name, arguments(rest))
        # everything else (.so, .PD, .ad, .ft, .nr, .ta, .hy, ...) shapes the page or names a
        # file, and says nothing

    def font_text(self, name: str, rest: str) -> str:
        """The text of a font macro line: its arguments joined by spaces (.B .I .SM .SB), or by
        nothing (.BR and the other alternating ones)."""
        return (" " if name in _FONT_WORDS else "").join(render(arg, self.strings) for arg in arguments(rest))

    # -----------------------------------------------------------------------------------------
    # The page's own macros

    def define(self, request: str, args: list[str]) -> None:
        """Read a `.de`/`.am` block (up to `..` or its end name) into the page's macros; an
        `.ig` block, or one that redefines what request() interprets, is passed over."""
        end = (args[0] if args else ".") if request == "ig" else (args[1] if len(args) > 1 else ".")
        closing = _BLOCK_END if end == "." else re.compile(rf"[.'][ \t]*{re.escape(end)}(?=[ \t]|$)")
        body: list[str] = []
        while (line := self.next_line()) is not None and not closing.match(line):
            body.append(line)
        if request in ("de", "de1", "am", "am1") and args and args[0] not in _NATIVE:
            self.macros[args[0]] = (self.macros.get(args[0], []) if request.startswith("am") else []) + body

    def call(self, name: str, args: list[str]) -> None:
        """Expand a page macro in place: its lines, read in copy mode (`\\\\` is `\\`) with
        `\\$1`... `\\$*` `\\$@` `\\$#` replaced by the arguments, are read next."""
        body = self.macros[name]
        if self.expanded + len(body) > _MAX_EXPANDED:
            return
        self.expanded += len(body)

        def argument(match: re.Match) -> str:
            number, two, bracketed, special = match.groups()
            if special is not None:
                return {"*": " ".join(args), "@": " ".join(f'"{arg}"' for arg in args),
                        "#": str(len(args))}[special]
            index = int(number or two or bracketed) - 1
            return args[index] if 0 <= index < len(args) else ""

        lines = [_MACRO_ARGUMENT.sub(argument, _COPY_BACKSLASH.sub(_copy, line)) for line in body]
        self.expansions.extend(reversed(lines))

    # -----------------------------------------------------------------------------------------
    # Conditions, as nroff decides them

    def condition(self, rest: str) -> tuple[bool, str]:
        """(whether the condition at the start of `rest` holds, the body after it)."""
        rest = rest.lstrip(" \t")
        negate = rest.startswith("!")
        rest = rest[1:] if negate else rest
        result = False
        if (letter := re.match(r"([ntoev])(?=[ \t\\]|$)", rest)) is not None:
            result, rest = letter.group(1) in "no", rest[1:]  # nroff; an odd page
        elif (named := re.match(r"([drcmFS])[ \t]+(\S+)", rest)) is not None:
            result, rest = named.group(1) == "d" and named.group(2) in self.strings, rest[named.end():]
        elif rest[:1] and not rest[0].isalnum() and rest[0] not in "\\(+-":
            parts = rest[1:].split(rest[0], 2)  # 'one'two': equal once rendered
            if len(parts) == 3:
                result = render(parts[0], self.strings) == render(parts[1], self.strings)
                rest = parts[2]
        else:  # a number, or a register: only .g (this is groff) is known, and true
            token = re.match(r"[^ \t]*", rest).group(0)
            known = token.isdigit() and int(token) > 0 or token in ("\\n(.g", "\\n[.g]")
            result, rest = known, rest[len(token):]
        return result != negate, rest.lstrip(" \t")

    def branch(self, result: bool, body: str) -> None:
        """Run a condition's body, or pass over it and its `\\{ ... \\}` block."""
        body = body.lstrip(" \t")
        block = body.startswith("\\{")
        if block:
            body = body[2:]
        if result:
            if body.strip() and body.strip() != "\\}":
                self.line(body)
            return
        depth = _brace_depth(body) + (1 if block else 0)
        while depth > 0 and (line := self.next_line()) is not None:
            depth += _brace_depth(line)

    # -----------------------------------------------------------------------------------------
    # tbl

    def table(self) -> None:
        """The rows of a tbl table, each a line of its cells' text joined by one tab."""
        self.page.brk()
        line = self.next_line()
        tab = "\t"
        if line is not None and line.rstrip().endswith(";"):  # the options line
            found = re.search(r"tab\s*\((.)\)", line)
            tab = found.group(1) if found else tab
            line = self.next_line()
        line = self.skip_format(line)
        while line is not None and not _TABLE_END.match(line):
            if re.match(r"[.'][ \t]*T&", line):
                line = self.skip_format(self.next_line())
                continue
            if line[:1] not in (".", "'") and (cells := self.cells(strip_comment(line), tab)):
                self.page.own_line("\t".join(cells))
            line = self.next_line()

    def skip_format(self, line: str | None) -> str | None:
        """The first line after a table's format lines (up to the one that ends in "."); a
        table that lacks them (groff reads it all the same) starts with its data."""
        while line is not None and _FORMAT.match(line):
            ended = line.rstrip().endswith(".")
            line = self.next_line()
            if ended:
                break
        return line

    def cells(self, line: str, tab: str) -> list[str]:
        found: list[str] = []
        while True:
            parts = line.split(tab)
            if parts[-1].strip() != "T{":
                found += parts
                break
            found += parts[:-1]
            block: list[str] = []
            while (inner := self.next_line()) is not None and not inner.startswith("T}"):
                inner = strip_comment(inner)
                request = _REQUEST.match(inner) if inner[:1] in (".", "'") else None
                if request is None:
                    block.append(inner.strip())
                elif request.group(1) in _FONT_WORDS or request.group(1) in _FONT_ALTERNATING:
                    block.append(self.font_text(request.group(1), request.group(2)))
            found.append(" ".join(piece for piece in block if piece))
            rest = inner[2:] if inner is not None else ""
            if not rest.startswith(tab):
                break
            line = rest[len(tab):]
        rendered = (render(cell, self.strings).strip() for cell in found)
        return [cell for cell in rendered if cell and cell not in ("_", "=")]


def _copy(match: re.Match) -> str:
    return "\\" if match.group(1) == "\\" else match.group(0)  # copy mode reads \\ as \


def _brace_depth(line: str) -> int:
    """Opening minus closing `\\{ \\}` braces in a line."""
    pairs = [match.group(1) for match in escape_pairs(line)]
    return pairs.count("{") - pairs.count("}")


def troff_text(text: str) -> str:
    """The text a reader sees of a man page's troff source (see the module docstring)."""
    return _Reader(text).run()
