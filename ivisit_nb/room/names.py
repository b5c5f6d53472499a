"""User and room names on the room server: what is allowed, and when two look alike.

Names are shown to people, who pick whom to trust by how a name looks. So:

* :func:`canonical_name` puts a name in Unicode NFC (the form used everywhere
  after ``hello``) and refuses characters that hide or disguise text:
  invisible (format) characters such as zero-width spaces and joiners, bidi
  controls, control characters, lone surrogates, private-use and unassigned
  code points, line/paragraph separators, ``/``, ``\\``, leading or trailing
  whitespace, and the names ``.`` and ``..``.
* :func:`skeleton` maps a name to a key under which look-alikes are equal, in
  the spirit of Unicode TR39 "confusable skeletons": NFKC, case folding, no
  default-ignorable code points, and a small table of frequent Latin,
  Cyrillic, Greek and Armenian look-alikes. The server keeps names unique by
  skeleton, so ``"carol"``, ``"Carol"``, ``"cаrol"`` (Cyrillic ``а``),
  ``"caro1"`` and ``"carol."`` cannot be present at the same time.

The skeleton is deliberately coarse: ``i``, ``l``, ``1`` and ``|`` are one
letter, as are ``o`` and ``0``, and ``rn`` equals ``m``. Two names that really
do look different may collide ("eli" and "ell"); the second one then simply
picks another name. Missing a real look-alike would be worse.

Pure functions, no I/O; results depend on the Unicode version of the Python
running the server (``unicodedata.unidata_version``).
"""

from __future__ import annotations

import unicodedata
from typing import Any

NAME_MAX = 64  # code points, counted after NFC

# Bidirectional controls: they reorder how text is displayed ("carol\u202e" and
# friends), so a name could be made to read as another.
BIDI_CONTROLS = frozenset(
    "\u202a\u202b\u202c\u202d\u202e"  # LRE RLE PDF LRO RLO
    "\u2066\u2067\u2068\u2069"  # LRI RLI FSI PDI
    "\u200e\u200f\u061c"  # LRM RLM ALM
)

# Default-ignorable code points that are not format (Cf) characters: invisible
# fillers and joiners. Variation selectors are in the skeleton's list below but
# allowed in names, since emoji such as "❤️" need them.
_INVISIBLE_EXTRA = frozenset(
    "\u034f"  # COMBINING GRAPHEME JOINER
    "\u115f\u1160\u3164\uffa0"  # HANGUL (CHOSEONG/JUNGSEONG/HALFWIDTH) FILLER
    "\u17b4\u17b5"  # KHMER VOWEL INHERENT AQ/AA
    "\u180b\u180c\u180d\u180f"  # MONGOLIAN FREE VARIATION SELECTORS
)
_VARIATION_SELECTORS = ((0xFE00, 0xFE0F), (0xE0100, 0xE01EF))

# Refused by category: (why it is refused).
_BAD_CATEGORIES = {
    "Cc": "it is a control character, invisible or able to move the text",
    "Cf": "it is an invisible format character, so the name would look like one without it",
    "Cs": "it is a lone surrogate, which is not valid Unicode",
    "Co": "it is a private-use character, which has no agreed look",
    "Cn": "it is not an assigned Unicode character, so no font shows it",
    "Zl": "it is a line separator, which breaks the name over two lines",
    "Zp": "it is a paragraph separator, which breaks the name over two lines",
}

# Look-alikes, applied before case folding (so capitals map to capitals).
_CONFUSABLE_CASED = str.maketrans({
    # Cyrillic capitals
    "А": "A", "В": "B", "Е": "E", "К": "K", "М": "M", "Н": "H", "О": "O", "Р": "P",
    "С": "C", "Т": "T", "У": "Y", "Х": "X", "Ѕ": "S", "І": "I", "Ј": "J", "Ԛ": "Q",
    "Ԝ": "W", "Ү": "Y", "Ӏ": "I", "Ѵ": "V",
    # Cyrillic small letters
    "а": "a", "е": "e", "о": "o", "р": "p", "с": "c", "у": "y", "х": "x", "ѕ": "s",
    "і": "i", "ј": "j", "ԛ": "q", "ԝ": "w", "һ": "h", "ӏ": "l", "ү": "y", "ԁ": "d",
    "ѵ": "v", "к": "k",
    # Greek capitals
    "Α": "A", "Β": "B", "Ε": "E", "Ζ": "Z", "Η": "H", "Ι": "I", "Κ": "K", "Μ": "M",
    "Ν": "N", "Ο": "O", "Ρ": "P", "Τ": "T", "Υ": "Y", "Χ": "X", "Ϲ": "C", "Ϳ": "J",
    # Greek small letters
    "α": "a", "ι": "i", "κ": "k", "ν": "v", "ο": "o", "ρ": "p", "υ": "u", "ϲ": "c",
    "ϳ": "j", "γ": "y", "η": "n",
    # Armenian small letters
    "օ": "o", "ս": "u", "հ": "h", "ո": "n", "զ": "q",
    # Latin variants
    "ı": "i", "ɩ": "i", "ǀ": "l", "ɑ": "a", "ɡ": "g",
})
# Applied after case folding: letters and digits that look the same in common fonts.
_CONFUSABLE_FOLDED = str.maketrans({"i": "l", "1": "l", "|": "l", "0": "o"})
_CONFUSABLE_PAIRS = (("rn", "m"), ("vv", "w"))
_EDGE_MARKS = ".,'`\u00b7\u02d9"  # small marks easily missed at either end ("carol.")


class BadName(ValueError):
    """A name the server refuses. ``code`` is the protocol error code.

    ``bad-message`` for a value that is not a string at all, ``bad-name`` for a
    string the name rules refuse. The message says what is wrong and why.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def is_invisible(char: str) -> bool:
    """Whether ``char`` is invisible: a format (Cf) character or another default-ignorable one.

    Variation selectors count as visible here (they only choose a glyph's style).
    """
    return unicodedata.category(char) == "Cf" or char in _INVISIBLE_EXTRA


def _is_default_ignorable(char: str) -> bool:
    code = ord(char)
    return is_invisible(char) or any(lo <= code <= hi for lo, hi in _VARIATION_SELECTORS) or (
        0xE0000 <= code <= 0xE0FFF  # tags and reserved
    )


def describe(char: str) -> str:
    """``U+200B ZERO WIDTH SPACE``: a character named so a person can find it."""
    name = unicodedata.name(char, "")
    return f"U+{ord(char):04X} {name}" if name else f"U+{ord(char):04X}"


def _char_problem(char: str) -> str | None:
    """Why ``char`` may not appear in a name, or ``None``."""
    if char in ("/", "\\"):
        return "it separates folders in paths, and names become folder names"
    if char in BIDI_CONTROLS:
        return "it is a bidirectional control that reorders how the name is shown, so it could make the name read as another"
    category = unicodedata.category(char)
    if category in _BAD_CATEGORIES:
        return _BAD_CATEGORIES[category]
    if char in _INVISIBLE_EXTRA:
        return "it is invisible, so the name would look like one without it"
    return None


def canonical_name(value: Any, field: str = "user") -> str:
    """The canonical (NFC) form of a user or room name; raises :class:`BadName`.

    Allowed: a string of 1-64 characters (after NFC) with none of the refused
    characters listed in the module docstring, no leading or trailing
    whitespace, not only whitespace, and not ``.`` or ``..``.
    """
    if not isinstance(value, str):
        raise BadName("bad-message", f"'{field}' must be a string, not {type(value).__name__}")
    name = unicodedata.normalize("NFC", value)
    if not name:
        raise BadName("bad-name", f"'{field}' must not be empty; give a name of 1-{NAME_MAX} characters")
    if len(name) > NAME_MAX:
        raise BadName("bad-name", f"'{field}' is {len(name)} characters long; the limit is {NAME_MAX}, pick a shorter name")
    for char in name:
        why = _char_problem(char)
        if why is not None:
            shown = repr(char) if char in "/\\" else describe(char)
            raise BadName("bad-name", f"'{field}' contains {shown}, which is not allowed: {why}; pick a name without it")
    if name.isspace():
        raise BadName("bad-name", f"'{field}' must not be only spaces; use at least one visible character")
    if name[0].isspace() or name[-1].isspace():
        raise BadName(
            "bad-name", f"'{field}' {name!r} starts or ends with a space, which nobody can see; remove the space"
        )
    if name in (".", ".."):
        raise BadName("bad-name", f"'{field}' must not be {name!r}: it means a folder, not a person or room; pick another name")
    return name


def skeleton(name: str) -> str:
    """The key under which look-alike names are equal (see the module docstring).

    ``skeleton("Cаrol.") == skeleton("caro1") == skeleton("carol")``. Defined for
    any string; idempotent.
    """
    text = unicodedata.normalize("NFKC", name)
    text = "".join(c for c in text if not _is_default_ignorable(c))
    text = unicodedata.normalize("NFD", text).translate(_CONFUSABLE_CASED)
    text = unicodedata.normalize("NFD", text.casefold()).translate(_CONFUSABLE_FOLDED)
    for pair, single in _CONFUSABLE_PAIRS:
        text = text.replace(pair, single)
    text = " ".join(text.split())  # any run of whitespace looks like one space
    text = text.strip(_EDGE_MARKS + " ")
    return unicodedata.normalize("NFC", text)
