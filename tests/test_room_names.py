"""User and room names on the room server: refused characters and look-alike skeletons."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given, settings, strategies as st

from ivisit_nb.room.names import NAME_MAX, BadName, canonical_name, skeleton

BIDI = "\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069\u200e\u200f\u061c"


@pytest.mark.parametrize("name", ["alice", "Zoë 🙂", "x" * NAME_MAX, "Ж", "李小龍", "a b", "...", "o'neil", "❤️"])
def test_ordinary_names_are_kept(name: str) -> None:
    assert canonical_name(name) == name


def test_names_are_put_in_nfc() -> None:
    decomposed = "Zoe\u0301"
    assert canonical_name(decomposed) == "Zoé" == unicodedata.normalize("NFC", decomposed)
    # the limit counts characters after NFC
    assert canonical_name("e\u0301" * NAME_MAX) == "é" * NAME_MAX


@pytest.mark.parametrize(
    "name, words",
    [
        *[(f"carol{c}", ["bidirectional", f"U+{ord(c):04X}"]) for c in BIDI],
        ("carol\u200b", ["U+200B ZERO WIDTH SPACE", "invisible"]),
        ("car\u200dol", ["U+200D ZERO WIDTH JOINER", "invisible"]),
        ("\ufeffcarol", ["U+FEFF", "invisible"]),
        ("carol\u00ad", ["U+00AD SOFT HYPHEN", "invisible"]),
        ("carol\u2060", ["U+2060 WORD JOINER", "invisible"]),
        ("carol\u3164", ["U+3164 HANGUL FILLER", "invisible"]),
        ("\u115fcarol", ["U+115F", "invisible"]),
        ("carol\u034f", ["U+034F", "invisible"]),
        ("ali\nce", ["U+000A", "control"]),
        ("ali\x00ce", ["U+0000", "control"]),
        ("alice\x7f", ["U+007F", "control"]),
        ("ali\u0085ce", ["U+0085", "control"]),
        ("ali\ud800ce", ["U+D800", "surrogate"]),
        ("ali\ue000ce", ["U+E000", "private-use"]),
        ("ali\U000f0000ce", ["U+F0000", "private-use"]),
        ("ali\u0378ce", ["U+0378", "not an assigned"]),
        ("ali\u2028ce", ["U+2028 LINE SEPARATOR", "line"]),
        ("ali\u2029ce", ["U+2029 PARAGRAPH SEPARATOR", "paragraph"]),
        ("a/b", ["'/'", "folder"]),
        ("a\\b", ["'\\\\'", "folder"]),
        (".", ["'.'", "folder"]),
        ("..", ["'..'", "folder"]),
        (" carol", ["starts or ends with a space"]),
        ("carol ", ["starts or ends with a space"]),
        ("carol\u00a0", ["starts or ends with a space"]),
        ("carol\u3000", ["starts or ends with a space"]),
        ("   ", ["only spaces"]),
        ("", ["empty"]),
        ("x" * (NAME_MAX + 1), [f"{NAME_MAX + 1} characters", f"limit is {NAME_MAX}"]),
    ],
)
def test_refused_names_say_which_character_and_why(name: str, words: list[str]) -> None:
    with pytest.raises(BadName) as err:
        canonical_name(name)
    assert err.value.code == "bad-name"
    for word in words:
        assert word in err.value.message, (name, err.value.message)


@pytest.mark.parametrize("value", [None, 5, ["alice"], b"alice", {"n": 1}])
def test_a_name_that_is_not_a_string_is_a_bad_message(value: object) -> None:
    with pytest.raises(BadName) as err:
        canonical_name(value, "room")
    assert err.value.code == "bad-message"
    assert "'room' must be a string" in err.value.message


@pytest.mark.parametrize(
    "lookalike",
    [
        "carol", "Carol", "CAROL", "cArOl",
        "c\u0430rol",  # Cyrillic а
        "car\u043el",  # Cyrillic о
        "\u0441arol",  # Cyrillic с
        "carοl",  # Greek omicron
        "caro1", "caroI", "caro|", "car0l",
        "carol.", ".carol", "carol,",
        "\uff43\uff41\uff52\uff4f\uff4c",  # fullwidth
        "\U0001d41c\U0001d41a\U0001d42b\U0001d428\U0001d425",  # mathematical bold
        "carol\ufe0f",  # a variation selector is allowed, but ignored
    ],
)
def test_lookalikes_share_a_skeleton(lookalike: str) -> None:
    assert skeleton(lookalike) == skeleton("carol")


@pytest.mark.parametrize(
    "a, b",
    [
        ("mallory", "rnallory"),
        ("william", "vvilliam"),
        ("ivan", "Ivan"),
        ("ivan", "\u0399van"),  # Greek capital iota
        ("PAUL", "\u0420\u0410UL"),  # Cyrillic Р А
        ("TOKYO", "\u03a4\u039f\u039a\u03a5\u039f"),  # all Greek capitals
        ("a b", "a  b"),
        ("a b", "a\u00a0b"),
        ("ss", "ß"),
    ],
)
def test_more_lookalikes(a: str, b: str) -> None:
    assert skeleton(a) == skeleton(b)


@pytest.mark.parametrize("a, b", [("carol", "karol"), ("carol", "caro"), ("zoe", "zoé"), ("bob", "bobby"), ("ann", "anne")])
def test_different_names_stay_different(a: str, b: str) -> None:
    assert skeleton(a) != skeleton(b)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=20))
def test_names_and_skeletons_are_total_and_stable(text: str) -> None:
    try:
        name = canonical_name(text)
    except BadName as exc:
        assert exc.code == "bad-name" and exc.message
    else:
        assert canonical_name(name) == name  # the canonical form is a fixed point
        assert 1 <= len(name) <= NAME_MAX
    key = skeleton(text)
    assert skeleton(key) == key
