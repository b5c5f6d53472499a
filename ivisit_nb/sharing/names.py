"""Turn names a peer sends us into one safe path component.

A sender chooses the file name (and, through the room server, its user name).
Both end up as parts of paths on our disk, so they are treated as hostile:
``safe_name("../../etc/passwd") == "passwd"``, ``safe_name("CON.txt") == "_CON.txt"``.

The rules (applied until nothing changes, so the result is idempotent):

1. Control, format (bidi, zero-width) and separator characters are removed,
   then the text is put in Unicode NFC.
2. ``/`` and ``\\`` separate components on some OS; only the last non-empty
   component is kept, and a drive prefix like ``C:`` is dropped.
3. Characters Windows forbids (``<>:"|?*``) become ``_``.
4. Leading and trailing spaces and dots go (no hidden files, no ``.``/``..``).
5. Windows device names (``CON``, ``NUL``, ``COM1``, ``lpt3.txt`` ...) get a ``_`` prefix.
6. At most 255 bytes of UTF-8: the stem is shortened, the extension kept.

:func:`safe_name` and :func:`safe_user_dir` are total: any ``str`` (including lone surrogates such as
``"sur\\ud800rogate"``, which are removed like other unsafe characters) gives a
safe, non-empty name; only a non-``str`` argument (``TypeError``) or an unusable
``fallback`` (``ValueError``, a programming error) raise.

They are not one-to-one: ``"carol."``, ``".carol"`` and ``"carol\\u200b"`` all
become ``carol``. Where distinct names must get distinct folders (senders in
the inbox), use :meth:`ivisit_nb.sharing.store.Store.sender_dir`, which records
each exact name and tells colliding ones apart with :func:`tagged_name`.
"""

from __future__ import annotations

import re
import unicodedata

MAX_BYTES = 255
MAX_EXT_BYTES = 64  # a longer "extension" is not treated as one

# Unicode categories removed: controls (C0, DEL, C1), format characters (bidi
# controls, zero-width characters, soft hyphen, BOM), lone surrogates, and the
# line/paragraph separators.
_REMOVED_CATEGORIES = {"Cc", "Cf", "Cs", "Zl", "Zp"}
_WINDOWS_ILLEGAL = str.maketrans({c: "_" for c in '<>:"|?*'})
_DRIVE = re.compile(r"^[A-Za-z]:")
_DIGITS = "0123456789\u00b9\u00b2\u00b3"  # Windows also reserves COM¹ .. COM³
_RESERVED = {"CON", "PRN", "AUX", "NUL", "CONIN$", "CONOUT$", "CLOCK$"} | {
    f"{dev}{d}" for dev in ("COM", "LPT") for d in _DIGITS
}


def _remove_unsafe_chars(text: str) -> str:
    return "".join(c for c in text if unicodedata.category(c) not in _REMOVED_CATEGORIES)


def _strip_ends(text: str) -> str:
    """Remove leading and trailing whitespace and dots."""
    start, end = 0, len(text)
    while start < end and (text[start] == "." or text[start].isspace()):
        start += 1
    while end > start and (text[end - 1] == "." or text[end - 1].isspace()):
        end -= 1
    return text[start:end]


def _split_ext(name: str) -> tuple[str, str]:
    """``("report", ".pdf")``; no extension if the dot is first or the extension is huge."""
    dot = name.rfind(".")
    if dot <= 0 or len(name[dot:].encode("utf-8")) > MAX_EXT_BYTES:
        return name, ""
    return name[:dot], name[dot:]


def _truncate_utf8(text: str, limit: int) -> str:
    """The longest prefix of ``text`` that fits in ``limit`` bytes, never splitting a code point."""
    return text.encode("utf-8")[: max(limit, 0)].decode("utf-8", errors="ignore")


def _fit(stem: str, ext: str, limit: int = MAX_BYTES) -> str:
    return _truncate_utf8(stem, limit - len(ext.encode("utf-8"))) + ext


def _clean_once(name: str) -> str:
    text = unicodedata.normalize("NFC", _remove_unsafe_chars(name))
    parts = [p for p in text.replace("\\", "/").split("/") if p.strip()]
    text = parts[-1] if parts else ""
    text = _DRIVE.sub("", text)
    text = _strip_ends(text.translate(_WINDOWS_ILLEGAL))
    if not text:
        return ""
    device = text.split(".", 1)[0].rstrip(" ").upper()
    if device in _RESERVED:
        text = "_" + text
    return _strip_ends(_fit(*_split_ext(text)))


def _clean(name: str) -> str:
    # Each rule can expose work for another (NFC after truncation, a dot revealed
    # by stripping ...), so repeat until stable; in practice one or two passes.
    for _ in range(8):
        cleaned = _clean_once(name)
        if cleaned == name:
            break
        name = cleaned
    return name


def safe_name(name: str, *, fallback: str = "file") -> str:
    """Make a sender-supplied file name into one safe path component.

    The result is non-empty, has no path separators, control or bidi characters,
    is not ``.`` or ``..``, is at most 255 bytes of UTF-8, and
    ``safe_name(safe_name(x)) == safe_name(x)``. If nothing usable is left,
    ``fallback`` (itself cleaned) is returned. Never raises for a ``str`` name.
    """
    if not isinstance(name, str):
        raise TypeError(f"a file name must be a str, not {type(name).__name__}")
    cleaned = _clean(name)
    if cleaned:
        return cleaned
    cleaned_fallback = _clean(fallback)
    if not cleaned_fallback:
        raise ValueError(f"fallback name {fallback!r} is not usable as a file name; pass a plain name like 'file'")
    return cleaned_fallback


def safe_user_dir(user: str) -> str:
    """Make a user name into the name of that sender's folder in the inbox.

    Same rules as :func:`safe_name`; a name with nothing usable becomes ``unknown``.
    The result never starts with a dot, so it cannot clash with the inbox's
    hidden ``.parts`` folder or index files. Never raises for a ``str``.

    Different users can get the same folder name (``"../bob"`` and ``"bob"``);
    the inbox itself uses :meth:`Store.sender_dir <ivisit_nb.sharing.store.Store.sender_dir>`,
    which gives every exact user name a folder of its own.
    """
    return safe_name(user, fallback="unknown")


def numbered_name(name: str, n: int) -> str:
    """``"report (2).pdf"`` for ``numbered_name("report.pdf", 2)``, still at most 255 bytes.

    ``name`` should already be safe; the number survives truncation of a long stem.
    """
    stem, ext = _split_ext(name)
    suffix = f" ({n}){ext}"
    return _fit(stem, suffix)


def tagged_name(name: str, tag: str) -> str:
    """``"carol~3f9a2c"`` for ``tagged_name("carol", "3f9a2c")``, still at most 255 bytes.

    ``name`` should already be safe and ``tag`` plain ASCII letters and digits;
    the tag survives truncation of a long name. Used to tell apart different
    senders whose names clean up to the same folder name.
    """
    return _fit(name, f"~{tag}")
