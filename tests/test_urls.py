"""Shared URLs are checked before they are offered, shown or opened (ivisit_nb.protocol.urls)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings, strategies as st

from ivisit_nb.protocol import urls
from ivisit_nb.protocol.urls import ALLOWED_SCHEMES, MAX_URL_BYTES, BadURL, check_url

GOOD_URLS = [
    ("https://example.org/", "https://example.org/"),
    ("  http://example.org/a?b=c#d \n", "http://example.org/a?b=c#d"),
    ("HTTPS://Example.ORG/Path", "https://example.org/Path"),
    ("http://user:Pw@Host:8080/x", "http://user:Pw@host:8080/x"),
    ("http://[::1]:8888/lab", "http://[::1]:8888/lab"),
    ("https://xn--bcher-kva.example/", "https://xn--bcher-kva.example/"),
    ("https://bücher.example/straße", "https://bücher.example/straße"),
]

BAD_URLS = [
    ("javascript:alert(1)", "'javascript' is not allowed; only http:// and https://"),
    ("JavaScript:alert(1)", "'javascript'"),
    ("data:text/html,<script>alert(1)</script>", "'data'"),
    ("file:///etc/passwd", "'file'"),
    ("ftp://example.org/x", "'ftp' is not allowed; only http:// and https://"),
    ("vbscript:msgbox", "'vbscript'"),
    ("ws://example.org/", "'ws'"),
    ("example.org", "no scheme; only http:// and https://"),
    ("//example.org/x", "no scheme"),
    ("http:///path", "no host"),
    ("https://", "no host"),
    ("", "empty"),
    ("   ", "empty"),
    ("http://example.org/a b", "whitespace"),
    ("http://example.org/\x00", "control"),
    ("http://example.org/\u202egpj.exe", "control"),
    ("http://example.org/\u200b", "U\\+200B"),
    ("java\tscript:alert(1)", "whitespace"),
    ("http://evil.com\\@good.com/", "backslash"),
    ("http://example.org:99999/", "cannot be parsed"),
    ("http://[::1/", "cannot be parsed"),
    ("https://example.org/" + "a" * 8200, "8220 bytes long .*at most 8192 bytes"),
    ("http://example.org/\ud800", "not valid text"),
]


@pytest.mark.parametrize("url, expected", GOOD_URLS)
def test_good_urls(url: str, expected: str) -> None:
    assert check_url(url) == expected
    assert check_url(expected) == expected


@pytest.mark.parametrize("url, reason", BAD_URLS)
def test_bad_urls(url: str, reason: str) -> None:
    with pytest.raises(BadURL, match=reason) as info:
        check_url(url)
    assert isinstance(info.value, ValueError)


def test_one_limit_in_bytes_of_utf8() -> None:
    assert MAX_URL_BYTES == 8192
    assert "8192 bytes of UTF-8" in (urls.__doc__ or "")
    base = "https://example.org/"
    exact = base + "a" * (MAX_URL_BYTES - len(base))
    assert check_url(exact) == exact
    with pytest.raises(BadURL, match="8193 bytes long"):
        check_url(exact + "a")
    # 2-byte characters: fewer than 8192 characters, more than 8192 bytes
    wide = base + "é" * ((MAX_URL_BYTES - len(base)) // 2 + 1)
    assert len(wide) < MAX_URL_BYTES
    with pytest.raises(BadURL, match=f"{len(wide.encode())} bytes long .*at most 8192 bytes"):
        check_url(wide)


def test_surrounding_whitespace_does_not_count() -> None:
    base = "https://example.org/"
    exact = base + "a" * (MAX_URL_BYTES - len(base))
    assert check_url("  " + exact + "\n") == exact


@pytest.mark.parametrize("value", [None, 42, b"https://example.org/", ["https://example.org/"]])
def test_url_not_a_string(value: object) -> None:
    with pytest.raises(BadURL, match="must be text"):
        check_url(value)  # type: ignore[arg-type]


def test_only_http_and_https() -> None:
    assert ALLOWED_SCHEMES == ("http", "https")


def test_sharing_urls_re_exports_the_same_objects() -> None:
    from ivisit_nb.sharing import urls as old

    assert old.check_url is check_url and old.BadURL is BadURL and old.MAX_URL_BYTES == MAX_URL_BYTES


@settings(max_examples=300, deadline=None)
@given(st.one_of(st.text(), st.text().map(lambda s: "https://example.org/" + s), st.from_regex(r"\Ahttps?://[a-zA-Z0-9.:@\[\]/?#%-]*\Z")))
def test_check_url_only_raises_bad_url_and_is_idempotent(url: str) -> None:
    try:
        good = check_url(url)
    except BadURL as exc:
        str(exc).encode("utf-8")  # the reason is always showable
        return
    assert check_url(good) == good
    assert len(good.encode("utf-8")) <= MAX_URL_BYTES
    assert good.split(":", 1)[0] in ALLOWED_SCHEMES
