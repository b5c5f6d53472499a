"""Hostile file and user names made safe (URLs: tests/test_urls.py)."""

from __future__ import annotations

import unicodedata
from pathlib import Path

import pytest
from hypothesis import given, settings, strategies as st

from ivisit_nb.sharing.names import numbered_name, safe_name, safe_user_dir, tagged_name

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"

HOSTILE = [
    ("../../etc/passwd", "passwd"),
    ("..\\..\\windows\\system32\\cmd.exe", "cmd.exe"),
    ("C:\\x\\y.txt", "y.txt"),
    ("C:", "file"),
    ("C:evil.txt", "evil.txt"),
    ("\\\\server\\share", "share"),
    ("\\\\?\\C:\\secret.txt", "secret.txt"),
    ("/etc/shadow", "shadow"),
    ("dir/", "dir"),
    ("..", "file"),
    (".", "file"),
    ("...", "file"),
    ("", "file"),
    ("   ", "file"),
    (".bashrc", "bashrc"),
    ("..parts", "parts"),
    (".parts/x.part", "x.part"),
    ("name.txt.", "name.txt"),
    ("  name.txt  ", "name.txt"),
    ("na\x00me.txt", "name.txt"),
    ("na\x1bme\x7f.txt", "name.txt"),
    ("a\x85b\x9f.txt", "ab.txt"),  # C1 controls
    ("evil\u202etxt.exe", "eviltxt.exe"),  # right-to-left override spoofing ".exe"
    ("photo\u2066gpj.exe", "photogpj.exe"),
    ("zero\u200bwidth\ufeff.txt", "zerowidth.txt"),
    ("line\u2028break.txt", "linebreak.txt"),
    ("CON", "_CON"),
    ("con.txt", "_con.txt"),
    ("Nul.tar.gz", "_Nul.tar.gz"),
    ("COM1", "_COM1"),
    ("lpt9.log", "_lpt9.log"),
    ("COM\u00b9", "_COM\u00b9"),
    ("AUX .txt", "_AUX .txt"),
    ("CONSOLE.txt", "CONSOLE.txt"),
    ("COM10", "COM10"),
    ('a<b>c:d"e|f?g*h.txt', "a_b_c_d_e_f_g_h.txt"),
    ("file.txt:secret", "file.txt_secret"),  # NTFS alternate data stream
    ("e\u0301te\u0301.txt", "\u00e9t\u00e9.txt"),  # NFC
    ("\ud800lone.txt", "lone.txt"),  # lone surrogate cannot be stored
]


@pytest.mark.parametrize("hostile, expected", HOSTILE)
def test_hostile_names(hostile: str, expected: str) -> None:
    assert safe_name(hostile) == expected
    assert safe_name(expected) == expected


def test_long_name_keeps_extension_and_code_points() -> None:
    name = "é" * 300 + ".pdf"  # é is 2 bytes
    safe = safe_name(name)
    assert safe.endswith(".pdf")
    assert len(safe.encode("utf-8")) <= 255
    assert set(safe[:-4]) == {"é"}  # no half code point left


def test_long_name_with_4_byte_characters() -> None:
    safe = safe_name("\U0001f600" * 100 + ".txt")
    assert len(safe.encode("utf-8")) <= 255 and safe.endswith(".txt")
    assert safe[:-4] == "\U0001f600" * 62


def test_long_extension_is_not_kept_whole() -> None:
    safe = safe_name("a." + "b" * 400)
    assert len(safe.encode("utf-8")) == 255 and safe.startswith("a.")


def test_fallback() -> None:
    assert safe_name("../..", fallback="download") == "download"
    with pytest.raises(ValueError, match="fallback"):
        safe_name("", fallback="..")
    with pytest.raises(TypeError, match="must be a str"):
        safe_name(b"bytes")  # type: ignore[arg-type]


def test_safe_user_dir() -> None:
    assert safe_user_dir("alice") == "alice"
    assert safe_user_dir("../bob") == "bob"
    assert safe_user_dir(".parts") == "parts"
    assert safe_user_dir("\u202e") == "unknown"
    assert safe_user_dir("con") == "_con"


def test_lone_surrogates_never_raise() -> None:
    assert safe_user_dir("sur\ud800rogate") == "surrogate"
    assert safe_user_dir("\udcff\ud800") == "unknown"
    assert safe_name("a\udfff.txt\ud83d") == "a.txt"


def test_user_dirs_collide_which_is_why_the_store_tells_them_apart() -> None:
    assert {safe_user_dir(n) for n in ("carol", "carol.", ".carol", "carol\u200b", "carol\u202e", "../carol")} == {"carol"}
    assert {safe_user_dir(n) for n in (".", "..", "")} == {"unknown"}


def test_tagged_name() -> None:
    assert tagged_name("carol", "3f9a2c") == "carol~3f9a2c"
    long = safe_user_dir("x" * 300)
    tagged = tagged_name(long, "0" * 64)
    assert tagged.endswith("~" + "0" * 64) and len(tagged.encode("utf-8")) <= 255
    assert safe_user_dir(tagged) == tagged


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(exclude_categories=()), max_size=300), st.text("0123456789abcdef", min_size=6, max_size=64))
def test_safe_user_dir_is_total_and_tags_stay_safe(user: str, tag: str) -> None:
    folder = safe_user_dir(user)  # never raises, whatever the text
    assert folder and not folder.startswith(".") and len(folder.encode("utf-8")) <= 255
    assert safe_user_dir(folder) == folder
    tagged = tagged_name(folder, tag)
    assert tagged.endswith("~" + tag) and len(tagged.encode("utf-8")) <= 255
    assert len(Path(tagged).parts) == 1 and not tagged.startswith(".")


def test_numbered_name() -> None:
    assert numbered_name("report.pdf", 2) == "report (2).pdf"
    assert numbered_name("README", 3) == "README (3)"
    long = safe_name("x" * 300 + ".txt")
    numbered = numbered_name(long, 12)
    assert numbered.endswith(" (12).txt") and len(numbered.encode("utf-8")) <= 255
    assert safe_name(numbered) == numbered


def _no_bad_chars(name: str) -> bool:
    return all(
        unicodedata.category(c) not in ("Cc", "Cf", "Cs", "Zl", "Zp") and c not in BIDI + '/\\<>:"|?*'
        for c in name
    )


@settings(max_examples=600, deadline=None)
@given(
    st.text(alphabet=st.characters(exclude_categories=()), max_size=400)
    | st.text(st.sampled_from("./\\:. \x00\u202eCONaux1é\u0301"), max_size=30)
)
def test_safe_name_properties(name: str) -> None:
    safe = safe_name(name)
    assert safe and safe not in (".", "..")
    assert len(safe.encode("utf-8")) <= 255
    assert _no_bad_chars(safe)
    assert not safe.startswith(".") and safe == safe.strip() and not safe.endswith(".")
    assert safe_name(safe) == safe
    root = Path("/srv/inbox")
    resolved = Path(root, safe).resolve()
    assert resolved.parent == root.resolve()
    assert len(Path(safe).parts) == 1


@settings(max_examples=200, deadline=None)
@given(st.text(max_size=300), st.integers(min_value=2, max_value=10**6))
def test_numbered_name_properties(name: str, n: int) -> None:
    numbered = numbered_name(safe_name(name), n)
    assert len(numbered.encode("utf-8")) <= 255
    assert f" ({n})" in numbered
    assert safe_name(numbered) == numbered
