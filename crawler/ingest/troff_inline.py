r"""Troff's inline escapes: one line of man page source in, the characters a reader sees out.

The back half of `crawler.ingest.troff`, which handles requests and macros line by line and
hands every piece of text here. `render` interprets the escapes of groff(7):

- kept as the character they print: `\-` `\e` `\\` `\.` `\~` `\ ` `\0` `\t`; named characters
  `\(xx`, `\[name]`, `\C'name'` and `\[uXXXX]` (a small table of the common ones: dashes, quotes,
  bullets, arrows, signs, Latin accents; an unknown name prints nothing); strings `\*x`,
  `\*(xx`, `\*[name]` (those a page defines with `.ds`, and the few groff's man(7) predefines);
  a move forward, `\h'3n'`, as one space;
- dropped, as they only set type or position: fonts `\fB` `\fI` `\fR` `\fP` `\f(XX` `\f[..]`,
  sizes `\s±N`, colours, other motions and drawings (`\h'-1'` `\v` `\l` `\L` `\D`, ...),
  zero-width marks (`\&` `\|` `\^` `\%` `\:` `\)` `\/` `\,`), number registers `\n`, macro
  arguments `\$`, conditional braces `\{` `\}`, and `\c` (the caller joins the next line);
- an unknown escape prints its character, as troff does.

`strip_comment` removes `\"` and `\#` comments; `arguments` splits a request's arguments as
troff does (blanks, double quotes, `""` for a quote inside quotes). Pure functions of their
input; they log nothing. Relies on the standard library.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["render", "strip_comment", "arguments", "escape_pairs", "PREDEFINED_STRINGS"]

# groff_char(7): the common named characters; the two-letter names also work as \[xx]
_CHARACTERS = {
    "em": "—", "en": "–", "hy": "-", "mi": "-", "aq": "'", "dq": '"', "lq": "“", "rq": "”", "oq": "‘",
    "cq": "’", "Bq": "„", "bq": "‚", "Fo": "«", "Fc": "»", "fo": "‹", "fc": "›", "ga": "`", "aa": "´",
    "ha": "^", "ti": "~", "rs": "\\", "sl": "/", "ba": "|", "br": "|", "or": "|", "ul": "_", "ru": "_",
    "bu": "•", "ci": "○", "sq": "□", "de": "°", "dg": "†", "dd": "‡", "sc": "§", "ps": "¶",
    "co": "©", "rg": "®", "tm": "™", "Eu": "€", "eu": "€", "Po": "£", "Ye": "¥", "ct": "¢",
    "mu": "×", "di": "÷", "+-": "±", "pl": "+", "eq": "=", "**": "∗", "<=": "≤", ">=": "≥",
    "!=": "≠", "==": "≡", "~=": "≅", "ap": "∼", "~~": "≈", "if": "∞", "no": "¬", "tf": "∴",
    "->": "→", "<-": "←", "<>": "↔", "ua": "↑", "da": "↓", "rA": "⇒", "lA": "⇐", "hA": "⇔",
    "lh": "☜", "rh": "☞", "fm": "′", "sd": "″", "12": "½", "14": "¼", "34": "¾", "ss": "ß",
    "AE": "Æ", "ae": "æ", "OE": "Œ", "oe": "œ", "o/": "ø", "O/": "Ø", "-D": "Đ", "Sd": "ð",
    "TP": "Þ", "Tp": "þ", ".i": "ı", "r!": "¡", "r?": "¿", "mc": "µ", "*a": "α", "*b": "β",
    "*g": "γ", "*d": "δ", "*e": "ε", "*l": "λ", "*m": "μ", "*p": "π", "*s": "σ", "*W": "Ω",
    "at": "@", "sh": "#", "Do": "$", "lB": "[", "rB": "]", "lC": "{", "rC": "}", "la": "⟨", "ra": "⟩",
}
# Latin letters with an accent: \('e, \(:u, \(^o, \(`a, \(~n, \(,c, \(oa
_ACCENTS = {"'": "\u0301", "`": "\u0300", "^": "\u0302", "~": "\u0303", ":": "\u0308", ",": "\u0327",
            "o": "\u030a", "v": "\u030c"}
PREDEFINED_STRINGS = {"R": "®", "Tm": "™", "lq": "“", "rq": "”", "``": "“", "''": "”"}  # groff's man(7) has these

# one-character escapes: what each prints (unknown ones print their character)
_SINGLE = {
    "-": "-", "e": "\\", "E": "\\", "\\": "\\", ".": ".", "~": " ", " ": " ", "0": " ", "t": "\t",
    "'": "´", "`": "`", "&": "", "|": "", "^": "", "%": "", ":": "", ")": "", "/": "", ",": "",
    "c": "", "p": "", "a": "", "d": "", "u": "", "r": "", "{": "", "}": "", "z": "", "\n": "",
}

_ESCAPE = re.compile(r"""\\(?:
    (?P<char>\((?P<c2>..)|\[(?P<cl>[^\]\n]{0,64})\])                   # \(xx \[name]
  | \*(?:\((?P<s2>..)|\[(?P<sl>[^\]\n]{0,64})\]|(?P<s1>.))             # \*(xx \*[name] \*x
  | C(?P<cd>.)(?P<cq>.{0,64}?)(?P=cd)                                   # \C'name'
  | s(?:[-+]?(?:\(\d\d|\[[^\]\n]{0,64}\]|'[^'\n]{0,64}'|[1-3]\d|\d)|\([-+]\d\d)
  | [fFnmMgkVY$](?:[-+](?=[\[(\w]))?(?:\[[^\]\n]{0,64}\]|\(..|.)       # \fB \f(CW \n[x] \$1 ...
  | h(?P<hd>.)(?P<hq>.{0,64}?)(?P=hd)                                   # \h'3n': a space forward
  | [vwolLDXZbxNRAOSH](?P<d>.).{0,200}?(?P=d)                           # \v'1' \w'..' \D'l 1 2'
  | (?P<single>.)
)""", re.VERBOSE | re.DOTALL)  # bounded repeats: a line of unclosed escapes stays linear
_PAIR = re.compile(r"\\(.)", re.DOTALL)
_DEPTH = 8  # strings that name strings: deeper is a loop


def _named(name: str) -> str:
    if name in _CHARACTERS:
        return _CHARACTERS[name]
    if name.startswith("u") and len(name) >= 5:  # \[u00E9], \[u0065_0301]
        try:
            return "".join(chr(int(part, 16)) for part in name[1:].split("_"))
        except (ValueError, OverflowError):
            return ""
    if len(name) == 2 and name[0] in _ACCENTS and name[1].isalpha():
        return unicodedata.normalize("NFC", name[1] + _ACCENTS[name[0]])
    return ""


def render(text: str, strings: dict[str, str] | None = None, depth: int = 0) -> str:
    """The characters a reader sees of `text` (one line of troff, without its newline); `strings`
    are the page's `.ds` definitions."""
    if "\\" not in text:
        return text
    strings = PREDEFINED_STRINGS if strings is None else strings

    def replace(match: re.Match) -> str:
        if match.group("char") is not None:
            return _named(match.group("c2") or match.group("cl"))
        name = match.group("s2") or match.group("sl") or match.group("s1")
        if name is not None:
            value = strings.get(name, "")
            return render(value, strings, depth + 1) if depth < _DEPTH else ""
        if match.group("cd") is not None:
            return _named(match.group("cq"))
        if match.group("hd") is not None:  # a move forward reads as a space; backward as nothing
            distance = match.group("hq").lstrip("+")
            return " " if distance[:1] not in ("-", "") and distance.strip("0.un|") else ""
        single = match.group("single")
        if single is not None:
            return _SINGLE.get(single, single)
        return ""  # fonts, sizes, registers, arguments, motions and drawings

    return _ESCAPE.sub(replace, text)


def escape_pairs(text: str) -> list[re.Match]:
    """Every `\\x` pair of `text`, left to right, so an escaped backslash is never a prefix."""
    return list(_PAIR.finditer(text))


def strip_comment(line: str) -> str:
    """The line without its `\\"` or `\\#` comment (groff's `\\#` also joins the next line;
    here it ends the line like the other)."""
    if "\\" not in line:
        return line
    for match in _PAIR.finditer(line):
        if match.group(1) in ('"', "#"):
            return line[:match.start()]
    return line


def arguments(text: str) -> list[str]:
    """A request's arguments: separated by blanks, a double quote opens an argument that ends
    at the next lone double quote (`""` inside it is one quote); escapes stay for `render`."""
    found: list[str] = []
    i, n = 0, len(text)
    while i < n:
        while i < n and text[i] in " \t":
            i += 1
        if i >= n:
            break
        piece: list[str] = []
        if text[i] == '"':
            i += 1
            while i < n:
                if text[i] == '"':
                    if text[i + 1:i + 2] == '"':
                        piece.append('"')
                        i += 2
                        continue
                    i += 1
                    break
                step = 2 if text[i] == "\\" else 1
                piece.append(text[i:i + step])
                i += step
        else:
            while i < n and text[i] not in " \t":
                step = 2 if text[i] == "\\" else 1
                piece.append(text[i:i + step])
                i += step
        found.append("".join(piece))
    return found
