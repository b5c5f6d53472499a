"""Text from a peer is made valid before it is stored, logged or shown (ivisit_nb.protocol.text)."""

from __future__ import annotations

import json
import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from ivisit_nb.protocol.text import REPLACEMENT, clean_line, clean_text, is_clean

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"
ZERO_WIDTH = "\u200b\u200c\u200d\u2060\ufeff\u00ad"

# any code point, surrogates included (hypothesis' text() leaves them out by default)
any_text = st.text(alphabet=st.characters(exclude_categories=()), max_size=200)
any_text = st.one_of(any_text, st.lists(st.sampled_from(["\ud800", "\udc00", "\ud83d", "\ude00", "a", "e", "\u0301",
                                                        "\n", "\r", "\t", "\x00", "\u202e", "\u2028", "\ufeff", "ﬀ"]),
                                       max_size=30).map("".join))
max_chars = st.integers(min_value=0, max_value=250)


def _strict(s: str) -> None:
    s.encode("utf-8")  # raises UnicodeEncodeError on any surrogate


def test_lone_surrogate_from_json_becomes_replacement() -> None:
    name = json.loads('"sur\\ud800rogate.txt"')
    with pytest.raises(UnicodeEncodeError):
        name.encode("utf-8")
    assert clean_line(name, 100) == f"sur{REPLACEMENT}rogate.txt"
    assert clean_text(name, 100) == f"sur{REPLACEMENT}rogate.txt"


def test_surrogates() -> None:
    assert clean_text("\ud83d\ude00", 10) == "😀"  # a raw pair is the character it encodes
    assert clean_text("\ude00\ud83d", 10) == REPLACEMENT * 2  # wrong order: two lone halves
    assert clean_text("x\udbff", 10) == "x" + REPLACEMENT
    assert clean_text("\ud800" * 5, 3) == REPLACEMENT * 3


def test_clean_text_keeps_lines_and_tabs_only() -> None:
    assert clean_text("a\nb\tc", 100) == "a\nb\tc"
    assert clean_text("a\r\nb\rc\x85d\u2028e\u2029f", 100) == "a\nb\nc\nd\ne\nf"
    assert clean_text("a\x00b\x07c\x1bd\x7fe\x9ff\x0bg\x0ch", 100) == "abcdefgh"
    assert clean_text("\u200fRTL mark kept", 100) == "\u200fRTL mark kept"  # format characters stay in text


def test_clean_line_is_one_plain_line() -> None:
    assert clean_line("a\nb\tc\r\nd\u2028e", 100) == "a b c d e"
    assert clean_line("evil\u202etxt.exe", 100) == "eviltxt.exe"
    assert clean_line("".join(f"{c}x" for c in BIDI + ZERO_WIDTH), 100) == "x" * len(BIDI + ZERO_WIDTH)
    assert clean_line(" bob ", 100) == " bob "  # spaces at the ends are part of a name
    assert clean_line("a\x00b\x9bc", 100) == "abc"


def test_nfc_and_cut() -> None:
    assert clean_text("e\u0301", 10) == "é"
    assert clean_text("e\x00\u0301", 10) == "é"  # removing a control can bring a mark to its base
    assert clean_line("e\u200b\u0301", 10) == "é"
    assert clean_text("abcdef", 3) == "abc"
    assert clean_text("abc", 0) == ""
    assert clean_text("😀" * 5, 2) == "😀😀"  # code points, not UTF-16 units or bytes


def test_misuse() -> None:
    with pytest.raises(TypeError):
        clean_text(None, 10)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        clean_line(b"x", 10)  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        clean_text("x", -1)


def test_is_clean() -> None:
    assert is_clean("hello\nworld") and not is_clean("hello\nworld", line=True)
    assert is_clean("é") and not is_clean("e\u0301")
    assert not is_clean("a\ud800") and not is_clean("a\x00") and not is_clean(None)  # type: ignore[arg-type]
    assert is_clean("a\u202eb") and not is_clean("a\u202eb", line=True)


def test_long_input() -> None:
    s = ("a\x00\u202e\ud800" * 250_000) + "end"
    assert clean_line(s, 10) == ("a" + REPLACEMENT) * 5
    assert len(clean_text(s, 2_000_000)) == 750_003


@settings(max_examples=1000, deadline=None)
@given(any_text, max_chars)
def test_clean_text_properties(s: str, n: int) -> None:
    out = clean_text(s, n)
    _strict(out)
    assert len(out) <= n
    assert clean_text(out, n) == out
    assert is_clean(out)
    assert unicodedata.is_normalized("NFC", out)
    assert all(c in "\n\t" or unicodedata.category(c) != "Cc" for c in out)


@settings(max_examples=1000, deadline=None)
@given(any_text, max_chars)
def test_clean_line_properties(s: str, n: int) -> None:
    out = clean_line(s, n)
    _strict(out)
    assert len(out) <= n
    assert clean_line(out, n) == out
    assert is_clean(out, line=True) and is_clean(out)
    assert unicodedata.is_normalized("NFC", out)
    assert not any(unicodedata.category(c) in ("Cc", "Cf", "Cs", "Zl", "Zp") for c in out)
    assert not set(out) & set(BIDI + ZERO_WIDTH + "\n\r\t")
    assert out.splitlines() in ([], [out])
