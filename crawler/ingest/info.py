"""GNU info files: the decoded text of a makeinfo output in, the text its reader shows out.

An info file is plain text with a little machinery that the `info` reader hides: a unit
separator (^_, U+001F) before each node, index and image markers wrapped in `^@^H[` and `^@^H]`
(whose NUL bytes would otherwise make the file look binary), and, at the end, a tag table and
an indirect table of byte offsets and an Emacs "Local Variables" block. This module removes
exactly those and keeps everything else as it is: each node's header line (`File: ..., Node:
..., Next: ...`, which the reader shows at the top of the node), menus (`* Menu:`), cross
references (`*Note ...::`) and the text itself, so the model learns the manual as a reader sees
it. It is not a Texinfo (.texi source) parser: that is text, read as written.
Relies on the standard library.
"""

from __future__ import annotations

import re

__all__ = ["info_text"]

_MARKER = re.compile("\x00\x08\\[[^\x00]*\x00\x08\\]")  # ^@^H[index^@^H], ^@^H[image src=...^@^H]
# the tables makeinfo writes for the reader: byte offsets of nodes and of the parts of a split
# manual; each is a separator, a title line, and lines up to the next separator
_TABLES = re.compile("\x1f\n(?:Tag Table:|Indirect:|Local Variables:)\n[^\x1f]*(?:\x1f\nEnd Tag Table\n?)?")


def info_text(text: str) -> str:
    """The text of an info file without node separators, index and image markers, and the tag,
    indirect and local-variables tables; node header lines, menus and cross references stay."""
    text = _MARKER.sub("", text.replace("\r\n", "\n"))
    text = _TABLES.sub("", text)
    text = text.replace("\x1f\n", "\n").replace("\x1f", "").replace("\x7f", "")
    return re.sub("\n{3,}", "\n\n", text).strip("\n")
