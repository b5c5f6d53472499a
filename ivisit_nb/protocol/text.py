"""Make text from a peer valid before it is stored, logged or shown.

JSON may carry strings that are not valid Unicode text: ``"\\ud800"`` is legal JSON
and gives Python a lone surrogate, which later raises ``UnicodeEncodeError`` in
pandas, pyarrow, widgets and log files. Peers also send control characters,
bidi overrides (``evil\\u202etxt.exe``) and text of any length.

Two total functions, one per use; neither raises on any ``str`` of any length:

* :func:`clean_text` for multi-line text (chat, reasons): keeps ``\\n`` and ``\\t``;
* :func:`clean_line` for one-line text (names, URLs, user and file names shown):
  no line breaks, tabs, bidi controls or other invisible format characters.

Both: lone surrogates become U+FFFD (a raw surrogate *pair* becomes the one
character it encodes), the result is in NFC, cut to ``max_chars`` code points,
encodes to UTF-8 strictly, and cleaning it again changes nothing.

Sans I/O and self-contained: stdlib only.
"""

from __future__ import annotations

import unicodedata

REPLACEMENT = "\ufffd"

# Line breaks of every kind; clean_text makes them "\n", clean_line a space.
_BREAKS = {"\r\n": "\n", "\r": "\n", "\x85": "\n", "\u2028": "\n", "\u2029": "\n"}
# Categories removed: Cc control (C0, DEL, C1), Cf format (bidi controls U+202A-202E,
# U+2066-2069, U+200E/F, U+061C, zero-width U+200B-200D, U+2060, BOM, soft hyphen ...),
# Zl/Zp line and paragraph separators, Cs surrogates (none are left by then).
_TEXT_DROP = frozenset({"Cc", "Cs"})
_LINE_DROP = frozenset({"Cc", "Cf", "Cs", "Zl", "Zp"})
_KEEP_IN_TEXT = frozenset("\n\t")


def _fix_surrogates(s: str) -> str:
    """``s`` with raw surrogate pairs joined and lone surrogates replaced by U+FFFD."""
    if s.isascii():
        return s
    try:
        s.encode("utf-8")
        return s
    except UnicodeEncodeError:
        return s.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")


def _finish(s: str, max_chars: int) -> str:
    # NFC after filtering (removing a control char can bring a base and a combining
    # mark together) and before cutting (a prefix of NFC text is NFC).
    if not s.isascii():
        s = unicodedata.normalize("NFC", s)
    return s[:max_chars]


def _check_max(max_chars: int) -> None:
    if max_chars < 0:
        raise ValueError(f"max_chars must be >= 0, not {max_chars}")


def clean_text(s: str, max_chars: int) -> str:
    """Multi-line text made valid: for chat messages and reasons from a peer.

    Lone surrogates become U+FFFD; ``\\r\\n``, ``\\r``, NEL, U+2028 and U+2029
    become ``\\n``; control characters other than ``\\n`` and ``\\t`` are removed;
    the text is put in NFC and cut to ``max_chars`` code points. Format characters
    (bidi marks a right-to-left writer may need) are kept.

    Raises ``TypeError`` if ``s`` is not a ``str``, ``ValueError`` for a negative
    ``max_chars``; never anything for a ``str``.
    """
    if not isinstance(s, str):
        raise TypeError(f"clean_text needs a str, not {type(s).__name__}")
    _check_max(max_chars)
    s = _fix_surrogates(s)
    if not s.isprintable():  # fast path: nothing to remove
        for old, new in _BREAKS.items():
            s = s.replace(old, new)
        s = "".join(c for c in s if c in _KEEP_IN_TEXT or unicodedata.category(c) not in _TEXT_DROP)
    return _finish(s, max_chars)


def clean_line(s: str, max_chars: int) -> str:
    """One line of text made valid and plain: for names, URLs and user names shown.

    Like :func:`clean_text`, but tabs and line breaks become a space and every
    control, format (bidi controls, zero-width characters, BOM, soft hyphen) and
    line or paragraph separator character is removed. Spaces at either end are kept.
    """
    if not isinstance(s, str):
        raise TypeError(f"clean_line needs a str, not {type(s).__name__}")
    _check_max(max_chars)
    s = _fix_surrogates(s)
    if not s.isprintable():
        for old in _BREAKS:
            s = s.replace(old, " ")
        s = "".join(" " if c in "\n\t" else c for c in s if c in "\n\t" or unicodedata.category(c) not in _LINE_DROP)
    return _finish(s, max_chars)


def is_clean(s: str, *, line: bool = False) -> bool:
    """True if cleaning ``s`` (as a line if ``line``, without cutting) leaves it unchanged."""
    if not isinstance(s, str):
        return False
    return (clean_line if line else clean_text)(s, len(s)) == s
