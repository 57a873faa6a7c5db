"""Man pages: troff source becomes the text a reader of `man` sees, on its own, in a file, in a
.gz; the requests, macros and escapes one at a time."""

import gzip

import pytest

from crawler.ingest.extract import Skipped, detect_kind, extract_file
from crawler.ingest.troff import troff_text
from crawler.ingest.troff_inline import arguments, render

PAGE = r""".\" Copyright (c) 2024 The Authors
.\" SPDX-License-Identifier: MIT
.TH WC 1 "2024-03-01" "textutils 9.4" "User Commands"
.SH NAME
wc \- print newline, word, and byte counts for each file
.SH SYNOPSIS
.B wc
[\fIOPTION\fR]... [\fIFILE\fR]...
.SH DESCRIPTION
Print newline, word, and byte counts for each
.IR FILE ,
and a total line if more than one
.I FILE
is specified.
A word is a non\-zero\-length sequence of characters \(em delimited by white space.
.PP
With no \fIFILE\fR, or when \fIFILE\fR is \fB\-\fR,
read standard input.
.SS Options
.TP
\fB\-c\fR, \fB\-\-bytes\fR
print the byte counts
.TP
.B \-l
print the newline counts \" the most used one
.IP \(bu 2
counts are printed in the order: newline, word, byte
.IP \(bu 2
each count is right\-aligned
.SH EXAMPLES
.nf
wc \-l *.txt
  find . \-name '*.c' | xargs wc
.fi
.SH "SEE ALSO"
.BR cat (1),
.BR head (1)
"""

EXPECTED = """WC(1)

NAME
wc - print newline, word, and byte counts for each file

SYNOPSIS
wc [OPTION]... [FILE]...

DESCRIPTION
Print newline, word, and byte counts for each FILE, and a total line if more than one FILE is \
specified. A word is a non-zero-length sequence of characters — delimited by white space.

With no FILE, or when FILE is -, read standard input.

Options
-c, --bytes
print the byte counts

-l
print the newline counts

• counts are printed in the order: newline, word, byte

• each count is right-aligned

EXAMPLES
wc -l *.txt
  find . -name '*.c' | xargs wc

SEE ALSO
cat(1), head(1)"""


def test_a_man_page_becomes_the_text_a_reader_sees():
    assert troff_text(PAGE) == EXPECTED


def test_a_man_page_file_plain_and_gzipped(tmp_path):
    plain = tmp_path / "wc.1"
    plain.write_text(PAGE)
    packed = tmp_path / "wc.1.gz"
    packed.write_bytes(gzip.compress(PAGE.encode()))
    assert (extract_file(plain).kind, extract_file(plain).text) == ("man", EXPECTED)
    assert (extract_file(packed).kind, extract_file(packed).text) == ("man+gzip", EXPECTED)
    assert detect_kind(packed, packed.read_bytes()[:8192]) == "man+gzip"


def test_man_pages_are_found_by_name_and_content(tmp_path):
    cases = [
        ("printf.3p", ".TH PRINTF 3P\n.SH NAME\nprintf\n", "man"),
        ("Carp.3pm", '.\\" generated\n.de Sp\n..\n.TH Carp 3pm\n', "man"),
        ("page", ".TH PAGE 8\n.SH NAME\npage\n", "man"),  # no suffix: the .TH line says it
        ("alias.3", ".so man3/other.3\n", "man"),
        ("README.1st", "Read me first.\n.TH is not a request here\n", "text"),  # prose: not a page
        ("notes.txt", ".TH A 1\n.SH NAME\n", "text"),  # the extension decides a known kind
    ]
    assert [detect_kind(tmp_path / name, body.encode()) for name, body, _ in cases] == [kind for *_, kind in cases]


def test_a_page_that_only_includes_another_is_empty(tmp_path):
    path = tmp_path / "alias.3.gz"
    path.write_bytes(gzip.compress(b".so man3/other.3\n"))
    with pytest.raises(Skipped) as caught:
        extract_file(path)
    assert caught.value.reason == "empty"


# ---------------------------------------------------------------------------------------------
# Escapes and arguments


@pytest.mark.parametrize("source, seen", [
    (r"\fBbold\fR \fIitalic\fP \f(CWcode\fR \f[B]long\f[]", "bold italic code long"),
    (r"a\-b \(em \(en \(aq\(dq \(lqq\(rq \(bu \(co", "a-b — – '\" “q” • ©"),
    (r"back\eslash and \\ too", "back\\slash and \\ too"),
    (r"zero\&width non\~breaking escaped\ space", "zerowidth non breaking escaped space"),
    (r"\s-1SMALL\s0 \s+2big\s-2", "SMALL big"),
    (r"caf\('e \[u00FC]ber \[em]", "café über —"),
    (r"\*R \*(Tm \*[lq]x\*[rq]", "® ™ “x”"),
    (r"\h'-2'\(bu\h'+1'item", "• item"),
    (r"unknown \q escape", "unknown q escape"),
])
def test_escapes(source, seen):
    assert render(source) == seen


def test_arguments_split_as_troff_splits_them():
    assert arguments(r'one "two words" "say ""hi""" four\ five') == ["one", "two words", 'say "hi"', r"four\ five"]
    assert arguments("  ") == []


# ---------------------------------------------------------------------------------------------
# Requests and macros


def test_font_macros_join_alternating_arguments_without_spaces():
    source = ".B one two\n.BR ls (1),\n.IR file .\n.RB [ \\-x ]\n.BI \\-o \" file\"\n.SM SMALL CAPS\n"
    assert troff_text(source) == "one two ls(1), file. [-x] -o file SMALL CAPS"


def test_headings_without_arguments_take_the_next_line():
    assert troff_text(".SH\nNAME\nx \\- y\n.SS\n.B Sub\ntext\n") == "NAME\nx - y\n\nSub\ntext"


def test_breaks_spaces_and_continued_lines():
    source = "one\n.br\ntwo\n.sp\nthree\\c\nfour\n five\n\nsix\n"
    assert troff_text(source) == "one\ntwo\n\nthreefour\n five\n\nsix"


def test_example_blocks_keep_their_lines():
    source = "Run:\n.EX\n$ make\n\n$ make test\n.EE\nthen stop.\n"
    assert troff_text(source) == "Run:\n$ make\n\n$ make test\nthen stop."


def test_comments_definitions_and_unknown_requests_are_dropped():
    source = ('.\\" a comment line\ntext \\" a trailing comment\n.ig\nignored text\n..\n'
              ".ad l\n.nh\n.PD 0\n.ft B\nmore\n")
    assert troff_text(source) == "text more"


def test_strings_conditions_and_macros_resolve_as_nroff_would():
    source = r""".ie n .ds Q "quoted
.el .ds Q 'typeset
.if t .ds Q never
.if !n \{\
.ds Q never either
.\}
.de Vb
.nf
..
.de Ve
.fi
..
.de Xr
\\$1(\\$2)\\$3
..
Say \*Q, see
.Xr ls 1 .
.Vb
  verbatim   line
.Ve
"""
    assert troff_text(source) == 'Say quoted, see ls(1).\n  verbatim   line'  # .ds drops one leading quote


def test_a_macro_that_calls_itself_stops():
    assert troff_text(".de X\nloop\n.X\n..\n.X\n").startswith("loop loop")


def test_tables_keep_their_cells():
    source = """Before.
.TS
allbox tab(:);
l l
l l.
Name:Meaning
_
\\fB\\-a\\fR:T{
all of them,
.B really
all
T}
:empty first cell
.TE
After.
"""
    assert troff_text(source) == "Before.\nName\tMeaning\n-a\tall of them, really all\nempty first cell\nAfter."


def test_links_and_synopsis_macros():
    source = (".UR https://example.org/\nthe site\n.UE .\n.SY grep\n.OP \\-i\n.OP \\-e pattern\n.YS\n")
    assert troff_text(source) == "the site <https://example.org/>.\ngrep [-i] [-e pattern]"
