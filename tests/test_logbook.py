"""The logbook (ivisit_nb/logbook.py): logs appended to SQLite as they happen, read back after a
restart or a crash, and exported by ``ivisit-nb logs``."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time

import pandas as pd
import pytest

from ivisit_nb import cli, events as ev
from ivisit_nb.listeners import Listeners
from ivisit_nb.logbook import LOGS, Logbook, load, logbook_path, read_rows
from helpers import make_file, wait_until


class FakeSession:
    """What a logbook follows: ``on`` and the lists of rows the logs append to."""

    def __init__(self) -> None:
        self.events: Listeners = Listeners("event")
        self.progress: list[dict] = []
        self.policy: list[dict] = []
        self.messages: list[dict] = []

    def emit(self, event: ev.Event) -> None:
        self.events(event)


def follow(path):
    book, s = Logbook(path), FakeSession()
    book.follow(s.events.add, progress_log=s.progress, policy_log=s.policy, messages=s.messages)
    return book, s


def test_rows_are_written_on_the_next_event_and_read_back_as_earlier(tmp_path):
    path = tmp_path / "cfg" / "bob" / "logs.sqlite"
    book, s = follow(path)
    s.messages.append({"time": 1.0, "sender": "bob", "to": None, "text": "hi", "decision": "sent"})
    assert not path.exists()  # nothing is written before an event; no file for a silent session
    s.emit(ev.MessageReceived(sender="alice", to=None, text=None, decision="refuse"))
    assert book.flush()
    assert [r["text"] for r in read_rows(path)["messages"]] == ["hi"]
    for i in range(3):
        s.progress.append({"time": 2.0 + i, "transfer_id": "t", "bytes": i, "total": 2})
    s.emit(ev.Disconnected(reason="any event will do"))
    del s.progress[:2]  # the session prunes its oldest rows
    s.progress.append({"time": 9.0, "transfer_id": "t", "bytes": 2, "total": 2})
    s.emit(ev.Disconnected(reason="any event will do"))
    book.close()
    again = Logbook(path)
    assert [r["bytes"] for r in again.earlier["progress_log"]] == [0, 1, 2, 2]  # each row once
    assert again.earlier["messages"][0] == {"time": 1.0, "sender": "bob", "to": None, "text": "hi", "decision": "sent"}
    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


def test_events_never_wait_for_the_disk(tmp_path):
    """Rows are written on the logbook's own thread: with the file locked by another process's
    transaction, events still return, and the rows land once the lock is gone."""
    path = tmp_path / "logs.sqlite"
    book, s = follow(path)
    s.messages.append({"time": 1.0, "sender": "bob", "to": None, "text": "first", "decision": "sent"})
    s.emit(ev.Disconnected(reason="creates the file"))
    assert book.flush()
    other = sqlite3.connect(path, isolation_level=None)
    other.execute("BEGIN EXCLUSIVE")  # the disk is "stuck" for the logbook's writer
    try:
        for i in range(50):
            s.messages.append({"time": 2.0 + i, "sender": "bob", "to": None, "text": f"m{i}", "decision": "sent"})
            s.emit(ev.Disconnected(reason="an event"))  # returns although nothing can be written
        assert not book.flush(timeout=0.3)  # the writer is waiting for the lock
    finally:
        other.execute("ROLLBACK")
        other.close()
    assert book.flush()
    book.close()
    assert [r["text"] for r in read_rows(path)["messages"]] == ["first"] + [f"m{i}" for i in range(50)]


def test_close_writes_what_no_event_followed(tmp_path):
    path = tmp_path / "logs.sqlite"
    book, s = follow(path)
    s.policy.append({"time": 1.0, "transfer_id": "t", "sender": "mallory", "kind": "file", "name": "x", "size": 1,
                     "hash": "", "url": None, "decision": "refuse", "decided_by": "flood limit", "reason": "too many"})
    book.close()
    book.close()
    assert [r["decided_by"] for r in read_rows(path)["policy_log"]] == ["flood limit"]
    s.emit(ev.Disconnected(reason="after close: ignored"))


def test_a_damaged_logbook_is_moved_aside(tmp_path):
    path = tmp_path / "logs.sqlite"
    path.write_bytes(b"this is not sqlite" * 100)
    with pytest.warns(RuntimeWarning, match="was unreadable"):
        book = Logbook(path)
    assert book.earlier == {name: [] for name in LOGS}
    assert not path.exists() and len(list(tmp_path.glob("logs.sqlite.corrupt-*"))) == 1


def test_logs_survive_a_restart_with_their_dtypes(server, make_session, tmp_path):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob")
    bob.wait_for_peers(timeout=30).wait()
    alice.wait_for_peers(timeout=30).wait()
    bob.receiving = True
    bob.settings["alice"].files = "accept"
    assert alice.send_file(make_file(tmp_path / "a.bin", 300_000), to="bob").wait(30) == "done"
    bob.settings["alice"].urls = "refuse"
    assert alice.send_url("https://example.org/", to="bob").wait(10) == "refused"
    alice.say("hello").wait(5)
    wait_until(lambda: len(bob.messages) == 1, 10)
    bob.say("hi alice").wait(5)  # a sent message: no event follows it; leave() writes it
    before = {name: getattr(bob, name) for name in ("transfers", "progress_log", "policy_log", "messages")}
    assert bob.logbook.path == logbook_path(tmp_path / "config", "bob")
    bob.leave()

    again = make_session(server.url, "bob")
    for name, old in before.items():
        now = getattr(again, name)
        assert len(now) == len(old) and len(old) > 0, name
        assert dict(now.dtypes) == dict(old.dtypes), name
        pd.testing.assert_frame_equal(now, old, check_categorical=False, obj=name)
    assert list(again.messages.decision) == ["accept", "sent"]
    assert (again.transfers.finished_at < pd.Timestamp(again.logbook.opened_at, unit="s", tz="UTC")).all()
    assert [len(r) for r in (again.logbook.earlier["items"],)] == [1]  # the file (the URL was refused)


def test_a_killed_session_keeps_its_logs(server, make_session, peer_script, tmp_path):
    """Rows reach the disk as events happen: a SIGKILL loses nothing already logged."""
    alice = make_session(server.url, "alice")
    config = tmp_path / "zed"
    proc = subprocess.Popen([sys.executable, peer_script, server.url, "lab", "zed", str(config)],
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        alice.wait_for_peers(["zed"], timeout=30).wait()
        alice.say("before the crash", to="zed").wait(5)
        # zed is not receiving: its policy refuses at once, which ends the transfer on both sides
        assert alice.send_file(make_file(tmp_path / "x.bin", 1000), to="zed").wait(20) == "refused"
        path = logbook_path(config, "zed")
        wait_until(lambda: path.exists() and len(read_rows(path)["transfers"]) == 1, 10)
        wait_until(lambda: len(read_rows(path)["messages"]) == 1, 10)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    logs = load(config, "zed")
    assert list(logs["messages"].text) == ["before the crash"]
    assert list(logs["policy_log"].decided_by) == ["receiving off"]
    assert list(logs["transfers"].status) == ["refused"]


def test_the_logs_command_exports_every_log(tmp_path, capsys):
    path = logbook_path(tmp_path / "cfg", "bob")
    book, s = follow(path)
    s.messages.append({"time": time.time(), "sender": "alice", "to": None, "text": "x,\"y\"\nz", "decision": "accept"})
    book.close()
    assert cli.main(["logs", "--config-dir", str(tmp_path / "cfg"), "--user", "bob", "--csv", str(tmp_path / "csv")]) == 0
    assert sorted(p.name for p in (tmp_path / "csv").iterdir()) == sorted(f"{name}.csv" for name in LOGS)
    assert pd.read_csv(tmp_path / "csv" / "messages.csv").text.tolist() == ["x,\"y\"\nz"]
    assert "messages: 1 rows" in capsys.readouterr().out
    assert cli.main(["logs", "--json", "--config-dir", str(tmp_path / "cfg"), "--user", "bob",
                     "--parquet", str(tmp_path / "pq")]) == 0
    back = pd.read_parquet(tmp_path / "pq" / "messages.parquet")
    assert str(back.time.dt.tz) == "UTC" and back.decision.dtype == "category"
    assert cli.main(["logs", "--config-dir", str(tmp_path / "cfg"), "--user", "nobody", "--csv", str(tmp_path / "x")]) == 1
    assert "no logbook for 'nobody'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["logs", "--user", "bob"])  # --csv or --parquet is required
