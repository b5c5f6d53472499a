"""Check a URL someone shares before it is offered, shown or opened.

Only ``http`` and ``https`` URLs with a host are accepted; ``javascript:``,
``data:``, ``file:`` and every other scheme are refused, because opening them
can run code or read local files.

There is one length limit for URLs everywhere, :data:`MAX_URL_BYTES`:
8192 bytes of UTF-8, counted after trimming surrounding whitespace. The sharing
protocol uses the same constant for a URL offer's ``name``, which is the URL itself.

Sans I/O and self-contained: stdlib only.
"""

from __future__ import annotations

import unicodedata
from urllib.parse import urlsplit, urlunsplit

#: The longest URL accepted, in bytes of UTF-8.
MAX_URL_BYTES = 8192
#: The only schemes accepted (lower case).
ALLOWED_SCHEMES = ("http", "https")

_ALLOWED = "only http:// and https:// URLs can be shared"


class BadURL(ValueError):
    """A shared URL was refused; the message says why."""


def _has_unsafe_char(text: str) -> str | None:
    """The first control, format or whitespace character in ``text``, if any."""
    for c in text:
        if c.isspace() or unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zs", "Zl", "Zp"):
            return c
    return None


def check_url(url: str) -> str:
    """Return ``url`` normalised (trimmed, lower-case scheme and host) or raise :class:`BadURL`.

    Refused: anything but ``http``/``https``, no host, more than
    :data:`MAX_URL_BYTES` (8192) bytes of UTF-8, control, format (bidi) or
    whitespace characters inside, lone surrogates, backslashes, a bad port.
    """
    if not isinstance(url, str):
        raise BadURL(f"a URL must be text, not {type(url).__name__}")
    url = url.strip()
    if not url:
        raise BadURL("the URL is empty")
    try:
        size = len(url.encode("utf-8"))
    except UnicodeEncodeError:
        raise BadURL("the URL is not valid text (it holds a lone surrogate)") from None
    if size > MAX_URL_BYTES:
        raise BadURL(f"the URL is {size} bytes long (UTF-8); at most {MAX_URL_BYTES} bytes are allowed")
    bad = _has_unsafe_char(url)
    if bad is not None:
        raise BadURL(f"the URL contains a control or whitespace character (U+{ord(bad):04X})")
    if "\\" in url:
        raise BadURL("the URL contains a backslash, which browsers read differently; use '/'")
    try:
        parts = urlsplit(url)
        hostname = parts.hostname
        parts.port  # raises ValueError for a port out of range
    except ValueError as exc:
        raise BadURL(f"the URL cannot be parsed: {exc}") from None
    scheme = parts.scheme.lower()
    if not scheme:
        raise BadURL(f"the URL has no scheme; {_ALLOWED}")
    if scheme not in ALLOWED_SCHEMES:
        raise BadURL(f"the scheme {scheme!r} is not allowed; {_ALLOWED}")
    if not hostname:
        raise BadURL("the URL has no host; expected something like https://example.org/")
    userinfo, at, hostport = parts.netloc.rpartition("@")
    netloc = userinfo + at + hostport.lower()
    return urlunsplit((scheme, netloc, parts.path, parts.query, parts.fragment))
