"""The sharing history behind the viewer: order, pause, persistence, closing, threads."""

from __future__ import annotations

import json
import threading
from dataclasses import asdict
from pathlib import Path

import pytest

from ivisit_nb.sharing.inbox import COLUMNS, Inbox, Item


def item(n: int, kind: str = "file") -> Item:
    if kind == "url":
        return Item(time=float(n), sender="bob", kind="url", name=f"https://x.org/{n}", path=None,
                    url=f"https://x.org/{n}", hash=None, size=0, lane="url")
    return Item(time=float(n), sender="alice", kind="file", name=f"f{n}.txt", path=f"/inbox/alice/f{n}.txt",
                url=None, hash="blake3:" + "0" * 64, size=n, lane="file")


def test_empty(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    assert inbox.current is None and inbox.index is None and len(inbox) == 0
    assert inbox.back() is None and inbox.forward() is None
    frame = inbox.items
    assert list(frame.columns) == COLUMNS and len(frame) == 0


def test_add_moves_to_newest_and_navigates(tmp_path: Path) -> None:
    changes = []
    inbox = Inbox(tmp_path, on_change=lambda: changes.append(1))
    for n in range(3):
        inbox.add(item(n))
    assert inbox.current == item(2) and inbox.index == 2
    assert inbox.back() == item(1)
    assert inbox.back() == item(0)
    assert inbox.back() == item(0)  # stays at the oldest
    assert inbox.forward() == item(1)
    inbox.add(item(3, "url"))
    assert inbox.current == item(3, "url")
    assert inbox.forward() == item(3, "url")  # stays at the newest
    assert len(changes) == 3 + 3 + 1  # adds, real moves, add
    frame = inbox.items
    assert list(frame.columns) == COLUMNS
    assert list(frame["name"]) == ["f0.txt", "f1.txt", "f2.txt", "https://x.org/3"]
    assert frame.iloc[3]["url"] == "https://x.org/3"


def test_pause_queues_then_forward(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    inbox.add(item(0))
    inbox.paused = True
    inbox.add(item(1))
    inbox.add(item(2))
    assert inbox.current == item(0) and inbox.queued == 2
    assert inbox.forward() == item(1)
    inbox.paused = False
    assert inbox.current == item(1)  # unpausing does not move
    inbox.add(item(3))
    assert inbox.current == item(3) and inbox.queued == 0


def test_first_item_shows_even_when_paused(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    inbox.paused = True
    inbox.add(item(0))
    assert inbox.current == item(0)


def test_history_persists(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    inbox.add(item(0))
    inbox.add(item(1, "url"))
    again = Inbox(tmp_path)
    assert len(again) == 2 and again.current == item(1, "url") and again.index == 1
    lines = (tmp_path / ".history.jsonl").read_text().splitlines()
    assert [json.loads(line) for line in lines] == [asdict(item(0)), asdict(item(1, "url"))]


def test_corrupt_lines_are_skipped(tmp_path: Path) -> None:
    history = tmp_path / ".history.jsonl"
    good = json.dumps(asdict(item(0)))
    history.write_bytes(
        (good + "\n{not json\n" + json.dumps({"time": 1}) + "\n"
         + json.dumps({**asdict(item(2)), "kind": "exe"}) + "\n").encode() + b"\xff\xfe\n"
        + json.dumps(asdict(item(5))).encode() + b"\n"
    )
    with pytest.warns(RuntimeWarning) as record:
        inbox = Inbox(tmp_path)
    assert [str(w.message).split(" of ")[0] for w in record] == [f"skipped line {n}" for n in (2, 3, 4, 5)]
    assert [i.time.timestamp() for i in inbox.items.itertuples()] == [0.0, 5.0]
    inbox.add(item(6))  # appending still works after damage
    with pytest.warns(RuntimeWarning):
        assert [i.time.timestamp() for i in Inbox(tmp_path).items.itertuples()] == [0.0, 5.0, 6.0]


def test_open_local_file(tmp_path: Path) -> None:
    f = tmp_path / "notes.md"
    f.write_text("# hi")
    inbox = Inbox(tmp_path / "inbox")
    inbox.add(item(0))
    inbox.paused = True
    opened = inbox.open(f)
    assert inbox.current == opened  # shown at once, even when paused
    assert (opened.sender, opened.lane, opened.kind, opened.hash) == ("local", "local", "file", None)
    assert opened.path == str(f.resolve()) and opened.size == 4 and opened.name == "notes.md"
    with pytest.raises(FileNotFoundError, match="not a file"):
        inbox.open(tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError):
        inbox.open(tmp_path)


def test_close_runs_callbacks(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    calls = []

    @inbox.on_close
    def cancel_receives() -> None:
        calls.append("cancel")

    def broken() -> None:
        raise RuntimeError("boom")

    inbox.on_close(broken)
    inbox.on_close(lambda: calls.append("second"))
    inbox.close()
    assert calls == ["cancel", "second"]  # a failing callback does not stop the others
    assert inbox.closed
    inbox.add(item(0))
    assert not inbox.closed  # a new item reopens the viewer


def test_bad_items(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    with pytest.raises(TypeError, match="takes an Item"):
        inbox.add({"name": "x"})  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="'file' or 'url'"):
        Item(time=0, sender="a", kind="exe", name="x", path=None, url=None, hash=None, size=0, lane="x")


def test_thread_safe(tmp_path: Path) -> None:
    inbox = Inbox(tmp_path)
    errors = []

    def writer(k: int) -> None:
        for n in range(100):
            inbox.add(item(k * 1000 + n))

    def reader() -> None:
        try:
            for _ in range(200):
                inbox.current
                inbox.back()
                inbox.forward()
                frame = inbox.items
                assert list(frame.columns) == COLUMNS
        except Exception as exc:  # pragma: no cover - only on failure
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(k,)) for k in range(4)] + [threading.Thread(target=reader)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert len(inbox) == 400
    assert len(Inbox(tmp_path)) == 400  # every line was written whole


def test_torn_last_line_does_not_swallow_the_next_item(tmp_path: Path) -> None:
    history = tmp_path / ".history.jsonl"
    history.write_text(json.dumps(asdict(item(0))) + "\n" + '{"time": 1, "sen')  # crashed mid-write
    with pytest.warns(RuntimeWarning, match="skipped line 2"):
        inbox = Inbox(tmp_path)
    inbox.add(item(2))
    with pytest.warns(RuntimeWarning, match="skipped line 2"):
        assert [i.time.timestamp() for i in Inbox(tmp_path).items.itertuples()] == [0.0, 2.0]


def test_odd_characters_round_trip(tmp_path: Path) -> None:
    odd = Item(time=1.0, sender="b\u00f6b\ud800", kind="file", name="\u202eexe.txt", path=None,
               url=None, hash=None, size=0, lane="file")
    Inbox(tmp_path).add(odd)
    assert Inbox(tmp_path).current == odd
