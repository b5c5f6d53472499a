"""Sharing files and URLs between real aiortc peers, with real files on disk."""

from __future__ import annotations

import os
import signal
import time
import subprocess
import sys

import pytest

from ivisit_nb.protocol.sharing import content_hash as hash_bytes
from ivisit_nb.sharing.hashing import hash_file
from ivisit_nb.protocol.urls import BadURL
from helpers import make_file, sparse_file, wait_until
from rogue import Rogue


def next_offer(session, timeout: float = 10.0):
    return wait_until(lambda: session.pending_offers and session.pending_offers[0], timeout)


def test_receiving_off_refuses_at_once(pair, tmp_path):
    alice, bob = pair
    bob.receiving = False
    t = alice.send_file(make_file(tmp_path / "a.txt", 100), to="bob")
    assert t.wait(10) == "refused"
    assert t.reason == "bob is not receiving files and URLs"
    assert bob.pending_offers == []
    assert bob.policy_log.iloc[-1].decided_by == "receiving off"


def test_the_four_choices(pair, tmp_path):
    alice, bob = pair
    f1 = make_file(tmp_path / "one.txt", 1000)

    # Accept this file: received, and the next file asks again
    t = alice.send_file(f1, to="bob")
    offer = next_offer(bob)
    assert (offer.sender, offer.name, offer.size) == ("alice", "one.txt", 1000)
    offer.accept()
    assert t.wait(20) == "done"
    received = tmp_path / "inbox" / "bob" / "alice" / "one.txt"
    assert received.read_bytes() == f1.read_bytes()
    assert oct(received.stat().st_mode & 0o777) == oct(0o644)

    # Refuse this file: refused, setting unchanged, next one asks again
    t = alice.send_file(make_file(tmp_path / "two.txt", 10), to="bob")
    next_offer(bob).refuse()
    assert t.wait(10) == "refused"
    assert "refused" in t.reason
    assert not (tmp_path / "inbox" / "bob" / "alice" / "two.txt").exists()
    assert not bob.settings.has_own("alice", "files")

    # Accept always from alice: saved, and the next file needs no dialog
    t = alice.send_file(make_file(tmp_path / "three.txt", 10), to="bob")
    next_offer(bob).accept(always=True)
    assert t.wait(10) == "done"
    assert bob.settings["alice"].files == "accept"
    t = alice.send_file(make_file(tmp_path / "four.txt", 10), to="bob")
    assert t.wait(10) == "done"
    assert bob.transfers.iloc[-1].decided_by == "setting"

    # Refuse always from alice
    bob.settings["alice"].files = "ask"
    t = alice.send_file(make_file(tmp_path / "five.txt", 10), to="bob")
    next_offer(bob).refuse(always=True)
    assert t.wait(10) == "refused"
    assert bob.settings["alice"].files == "refuse"
    t = alice.send_file(make_file(tmp_path / "six.txt", 10), to="bob")
    assert t.wait(10) == "refused"
    assert t.reason == "bob refuses files from alice"
    decided = list(bob.policy_log.decided_by)
    assert decided == ["user", "user", "user (always)", "setting", "user (always)", "setting"]


def test_blocking_refuses_files_and_urls(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    bob.settings["alice"].blocked = True
    t = alice.send_file(make_file(tmp_path / "x.bin", 10), to="bob")
    u = alice.send_url("https://example.org/", to="bob")
    assert t.wait(10) == "refused" and u.wait(10) == "refused"
    assert t.reason == "bob has blocked files and URLs from alice"
    bob.settings["alice"].blocked = False
    assert alice.send_file(tmp_path / "x.bin", to="bob").wait(10) == "done"


def test_unanswered_offer_is_refused_after_the_timeout(server, make_session, tmp_path):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob", offer_timeout=1.0)
    bob.wait_for_peers(timeout=30).wait()
    alice.wait_for_peers(timeout=30).wait()
    bob.receiving = True
    t = alice.send_file(make_file(tmp_path / "x.bin", 10), to="bob")
    assert t.wait(10) == "refused"
    assert t.reason == "bob did not answer within 1 s"
    assert bob.pending_offers == []
    assert bob.policy_log.iloc[-1].decided_by == "no answer"


def test_a_user_rule_decides_before_the_settings(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "refuse"
    bob.policy.rule = lambda offer: "accept" if offer.name.endswith(".csv") else None
    assert alice.send_file(make_file(tmp_path / "ok.csv", 10), to="bob").wait(10) == "done"
    t = alice.send_file(make_file(tmp_path / "no.exe", 10), to="bob")
    assert t.wait(10) == "refused"
    log = bob.policy_log
    assert list(log.decided_by) == ["rule", "setting"]

    # replay: what would a stricter rule have decided?
    bob.policy.rule = lambda offer: "refuse"
    replay = bob.policy.replay(log)
    assert list(replay.old_decision) == ["accept", "refuse"]
    assert list(replay.new_decision) == ["refuse", "refuse"]
    assert list(replay.changed) == [True, False]


def test_dedup_sends_no_payload_bytes(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    f = make_file(tmp_path / "big.bin", 2_000_000)
    assert alice.send_file(f, to="bob").wait(30) == "done"
    link = bob.peers["alice"].link
    before = link.data_lane.bytes_received
    t = alice.send_file(f, to="bob")
    assert t.wait(10) == "done"
    assert link.data_lane.bytes_received == before  # counters: nothing crossed the data channel
    assert t.lane == "dedup" and t.bytes_transferred == 0
    row = bob.transfers.iloc[-1]
    assert (row.lane, row.bytes_transferred) == ("dedup", 0)
    # the same content under another name and from another folder appears at once
    copy = tmp_path / "copy.bin"
    copy.write_bytes(f.read_bytes())
    assert alice.send_file(copy, to="bob").wait(10) == "done"
    assert link.data_lane.bytes_received == before
    assert (tmp_path / "inbox" / "bob" / "alice" / "copy.bin").read_bytes() == f.read_bytes()
    assert len(bob.inbox.items) == 3


def test_progress_text_reads_like_ivisit(pair, tmp_path):
    alice, bob = pair
    seen = []
    bob.on(lambda e: seen.append(e.text) if type(e).__name__ == "TransferProgress" else None)
    bob.settings["alice"].files = "accept"
    t = alice.send_file(make_file(tmp_path / "report.pdf", 1_228_800), to="bob")
    assert t.wait(30) == "done"
    assert seen[-1] == "Transferring report.pdf from alice, 100% of 1200K received"
    assert all(s.startswith("Transferring report.pdf from alice, ") for s in seen)
    assert len(bob.progress_log) >= 1


def _slow_transfer(alice, bob, tmp_path, size=256 << 20):
    """256 MiB on the data channel (several seconds); tests/test_direct.py does the direct lane."""
    bob.settings["alice"].files = "accept"
    bob.settings["alice"].lane = "datachannel"
    t = alice.send_file(sparse_file(tmp_path / "slow.bin", size), to="bob")
    incoming = wait_until(lambda: [x for x in bob.sharing.transfers.values() if x.direction == "in" and x.received > 0], 20)[0]
    return t, incoming


def _nothing_in_view(bob, tmp_path):
    folder = tmp_path / "inbox" / "bob" / "alice"
    return not folder.exists() or not any(folder.iterdir())


def test_cancel_by_stop(pair, tmp_path):
    alice, bob = pair
    t, incoming = _slow_transfer(alice, bob, tmp_path)
    incoming.cancel("bob pressed Stop")
    assert incoming.wait(10) == "cancelled"
    assert t.wait(10) == "cancelled"
    assert t.reason == "bob pressed Stop"
    assert _nothing_in_view(bob, tmp_path)


def test_cancel_by_closing_the_viewer(pair, tmp_path):
    alice, bob = pair
    t, incoming = _slow_transfer(alice, bob, tmp_path)
    bob.inbox.close()
    assert incoming.wait(10) == "cancelled"
    assert t.wait(10) == "cancelled"
    assert "closed the Sharing viewer" in t.reason
    assert _nothing_in_view(bob, tmp_path)


def test_cancel_by_disconnecting(pair, tmp_path):
    alice, bob = pair
    t, incoming = _slow_transfer(alice, bob, tmp_path)
    bob.disconnect("alice")
    assert incoming.wait(10) == "cancelled"
    assert t.wait(10) == "cancelled"
    assert incoming.reason == t.reason == "bob disconnected from alice"
    assert _nothing_in_view(bob, tmp_path)


def test_sender_cancel(pair, tmp_path):
    alice, bob = pair
    t, incoming = _slow_transfer(alice, bob, tmp_path)
    t.cancel("alice changed her mind")
    assert incoming.wait(10) == "cancelled"
    assert incoming.reason == "alice changed her mind"
    assert _nothing_in_view(bob, tmp_path)


def test_resume_after_the_sender_is_killed(server, make_session, tmp_path):
    bob = make_session(server.url, "bob")
    bob.receiving = True
    bob.settings.defaults.files = "accept"
    bob.settings.defaults.lane = "datachannel"  # tests/test_direct.py kills a sender on the direct lane
    size = 256 << 20  # far too large to finish before the kill lands
    f = sparse_file(tmp_path / "movie.bin", size)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "_sender.py"),
         server.url, "lab", "zed", str(tmp_path / "zed"), "bob", str(f)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "offered"
        incoming = wait_until(lambda: [x for x in bob.sharing.transfers.values() if x.received > (1 << 20)], 60)[0]
        proc.send_signal(signal.SIGKILL)
        assert incoming.wait(10) == "failed"
    finally:
        proc.kill()
        proc.wait()
    held = incoming.received
    assert 0 < held < size
    assert not (tmp_path / "inbox" / "bob" / "zed" / "movie.bin").exists()

    alice = make_session(server.url, "alice")
    alice.wait_for_peers(["bob"], timeout=30).wait()
    t = alice.send_file(f, to="bob")
    assert t.wait(60) == "done"
    resumed = bob.sharing.transfers[t.transfer_id]
    assert resumed.resumed_from > 0
    assert resumed.bytes_transferred == size - resumed.resumed_from
    assert resumed.bytes_transferred < size
    got = tmp_path / "inbox" / "bob" / "alice" / "movie.bin"
    assert hash_file(got) == hash_file(f)


# -- hostile peers: a rogue called alice (tests/rogue.py) says whatever a test wants ------

@pytest.fixture
def bob_and_rogue(server, make_session):
    """make(**session_kwargs) -> (bob, rogue): bob receiving, and a rogue peer called alice linked to him."""
    rogues: list[Rogue] = []

    def make(**kw):
        kw.setdefault("offer_timeout", 30)
        bob = make_session(server.url, "bob", **kw)
        bob.receiving = True
        rogue = Rogue(server.url, "alice").start()
        rogues.append(rogue)
        rogue.wait_connected("bob")
        wait_until(lambda: "alice" in bob.peers and bob.peers["alice"].state == "connected", 30)
        return bob, rogue

    yield make
    for rogue in rogues:
        rogue.close()


def _incoming(bob, tid):
    return wait_until(lambda: bob.sharing.transfers.get(tid), 10)


def _accepted(bob, rogue, name, data, **fields):
    """The rogue offers ``data`` as ``name`` (``fields`` override the offer's); bob accepts it."""
    tid = rogue.run(rogue.offer("bob", name, data, **fields))
    t = _incoming(bob, tid)
    wait_until(lambda: t.status == "transferring", 10)
    return tid, t


def test_lying_hash_is_discarded(bob_and_rogue, tmp_path):
    bob, rogue = bob_and_rogue()
    bob.settings["alice"].files = "accept"
    data = b"A" * 5000
    tid, t = _accepted(bob, rogue, "evil.txt", data, hash=hash_bytes(b"something else"))
    rogue.run(rogue.send_data("bob", tid, 0, data))
    assert t.wait(10) == "failed"
    assert "hash" in t.reason
    assert _nothing_in_view(bob, tmp_path)
    assert not list((tmp_path / "inbox" / "bob" / ".parts").glob("*.part"))


def test_more_bytes_than_declared_abort(bob_and_rogue, tmp_path):
    bob, rogue = bob_and_rogue()
    bob.settings["alice"].files = "accept"
    data = b"B" * 100
    tid, t = _accepted(bob, rogue, "short.txt", data)
    rogue.run(rogue.send_data("bob", tid, 0, data[:60] + b"X" * 500))
    assert t.wait(10) == "failed"
    assert "more bytes than declared" in t.reason
    assert _nothing_in_view(bob, tmp_path)


def test_fewer_bytes_then_silence_is_not_shown(bob_and_rogue, tmp_path):
    bob, rogue = bob_and_rogue(stall_timeout=1.5)
    bob.settings["alice"].files = "accept"
    data = b"C" * 1000
    tid, t = _accepted(bob, rogue, "partial.txt", data)
    rogue.run(rogue.send_data("bob", tid, 0, data[:400]))
    wait_until(lambda: t.received == 400, 10)
    assert t.status == "transferring"
    assert _nothing_in_view(bob, tmp_path)
    assert t.wait(10) == "failed"  # the stall watchdog ends it
    assert t.reason.startswith("no progress from alice for")
    assert _nothing_in_view(bob, tmp_path)


HOSTILE_NAMES = [
    ("../../../etc/passwd", "passwd"),
    ("..\\..\\boot.ini", "boot.ini"),
    ("/abs/path.txt", "path.txt"),
    ("C:\\Windows\\system32\\x.dll", "x.dll"),
    ("con.txt", "_con.txt"),
    ("evil\u202egnp.exe", "evilgnp.exe"),
    ("nul\x00byte.txt", "nulbyte.txt"),
    (".hidden", "hidden"),
    ("..", "file"),
    ("a" * 300 + ".txt", "a" * 251 + ".txt"),
]


@pytest.mark.parametrize("name, expected", HOSTILE_NAMES)
def test_hostile_file_names_stay_in_the_senders_folder(bob_and_rogue, tmp_path, name, expected):
    bob, rogue = bob_and_rogue()
    bob.settings["alice"].files = "accept"
    data = f"payload for {name!r}".encode()
    tid, t = _accepted(bob, rogue, name, data)
    rogue.run(rogue.send_data("bob", tid, 0, data))
    assert t.wait(10) == "done"
    inbox = (tmp_path / "inbox" / "bob").resolve()
    path = (inbox / "alice" / expected)
    assert path.read_bytes() == data
    assert os.path.realpath(t.path) == str(path)
    roots = [inbox, (tmp_path / "config").resolve()]
    outside = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent != tmp_path
               and not any(r in p.resolve().parents for r in roots)]
    assert outside == []
    assert [p.name for p in (inbox / "alice").iterdir()] == [expected]


@pytest.mark.parametrize("url", ["javascript:alert(1)", "data:text/html,<b>x</b>", "file:///etc/passwd", "ftp://x.org/f",
                                 "https://x.org/" + "a" * 9000])
def test_url_schemes_are_refused(bob_and_rogue, url):
    bob, rogue = bob_and_rogue()
    with pytest.raises(BadURL):
        bob.send_url(url, to="alice")
    # a hostile sender that skips its own checks is refused by the receiver
    bob.settings["alice"].urls = "accept"
    before = len(bob.sharing.violations)
    tid = rogue.run(rogue.offer_url("bob", url))
    assert rogue.answer("bob", tid)["t"] == "refuse"
    wait_until(lambda: len(bob.sharing.violations) > before, 10)
    assert bob.sharing.violations[-1]["peer"] == "alice"
    assert len(bob.inbox.items) == 0 and tid not in bob.sharing.transfers


def test_urls_are_kept_not_fetched(pair):
    alice, bob = pair
    bob.settings["alice"].urls = "accept"
    assert alice.send_url("https://jupyter.org/", to="bob").wait(10) == "done"
    item = bob.inbox.current
    assert (item.kind, item.url, item.path) == ("url", "https://jupyter.org/", None)


def test_offer_flood_is_capped(bob_and_rogue):
    bob, rogue = bob_and_rogue(max_pending_offers=5)
    tids = [rogue.run(rogue.offer("bob", f"f{i}.txt", bytes([i]))) for i in range(12)]
    wait_until(lambda: len(bob.policy_log) >= 7, 10)
    assert len(bob.pending_offers) == 5
    log = bob.policy_log
    flooded = log[log.decided_by == "flood limit"]
    assert len(flooded) == 7
    assert all("too many pending offers from alice" in r for r in flooded.reason)
    answers = [rogue.answer("bob", tid) for tid in tids[5:]]
    assert {(a["t"], a["reason"]) for a in answers} == {("refuse", "too many pending offers from alice")}


def test_room_send_to_three_receivers_with_mixed_decisions(server, make_session, tmp_path):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob")
    carol = make_session(server.url, "carol")
    dave = make_session(server.url, "dave")
    for s in (alice, bob, carol, dave):
        s.wait_for_peers(timeout=60).wait()
    bob.receiving = carol.receiving = True
    bob.settings["alice"].files = "accept"
    carol.settings["alice"].files = "refuse"  # dave is not receiving
    rt = alice.send_file(make_file(tmp_path / "notes.txt", 5000))
    assert rt.wait(20) == "refused"
    assert rt.results == {"bob": "done", "carol": "refused", "dave": "refused"}
    assert "dave is not receiving" in rt.reason
    assert (tmp_path / "inbox" / "bob" / "alice" / "notes.txt").exists()


def test_history_survives_a_restart(server, make_session, tmp_path):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob")
    bob.wait_for_peers(timeout=30).wait()
    alice.wait_for_peers(timeout=30).wait()
    bob.receiving = True
    bob.settings["alice"].files = bob.settings["alice"].urls = "accept"
    assert alice.send_file(make_file(tmp_path / "a.txt", 10), to="bob").wait(10) == "done"
    assert alice.send_url("https://example.org/x", to="bob").wait(10) == "done"
    bob.leave()
    again = make_session(server.url, "bob")
    items = again.inbox.items
    assert list(items.kind) == ["file", "url"]
    assert again.inbox.current.url == "https://example.org/x"
    assert again.inbox.back().name == "a.txt"


def test_full_disk_gives_a_clear_error_and_no_corrupt_file(server, make_session, tmp_path):
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)]).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        alice = make_session(server.url, "alice")
        bob = make_session(server.url, "bob", inbox=mnt / "inbox")
        bob.wait_for_peers(timeout=30).wait()
        alice.wait_for_peers(timeout=30).wait()
        bob.receiving = True
        bob.settings["alice"].files = "accept"
        # declared too big for the disk: refused before any byte moves
        t = alice.send_file(make_file(tmp_path / "big.bin", 3_000_000), to="bob")
        assert t.wait(10) == "refused"
        assert "free" in t.reason
        # fits when offered, but the disk fills up while it arrives
        bob.sharing.store.reserve = 0

        def fill_disk(event):  # runs on bob's engine thread at the first progress event
            if type(event).__name__ == "TransferProgress" and not (mnt / "filler").exists():
                with open(mnt / "filler", "wb") as f:
                    try:
                        while True:
                            f.write(b"\0" * 4096)
                            f.flush()
                    except OSError:
                        pass

        bob.on(fill_disk)
        t = alice.send_file(make_file(tmp_path / "mid.bin", 700_000), to="bob")
        assert t.wait(20) == "failed"
        assert "full" in t.reason.lower() or "space" in t.reason.lower()
        assert not (mnt / "inbox" / "alice" / "mid.bin").exists()
        assert not list((mnt / "inbox" / ".parts").glob("*.part"))
    finally:
        subprocess.run(["umount", "-l", str(mnt)])


def test_the_api_works_from_async_code(server, tmp_path):
    """The same handles are awaitable from any event loop (here: a plain asyncio.run)."""
    import asyncio

    from ivisit_nb import Session

    async def main():
        kw = {"config_dir": tmp_path / "cfg"}
        alice = await Session.join_async(server.url, "alice", "lab", inbox=tmp_path / "a", **kw)
        bob = await Session.join_async(server.url, "bob", "lab", inbox=tmp_path / "b", **kw)
        try:
            await bob.wait_for_peers(timeout=30)
            peers = await alice.wait_for_peers(timeout=30)
            assert peers["bob"].state == "connected"
            bob.receiving = True
            bob.settings["alice"].files = "accept"
            status = await alice.send_file(make_file(tmp_path / "x.txt", 1000), to="bob")
            assert status == "done"
            assert await alice.say("done?") == ["bob"]
        finally:
            alice.leave()
            bob.leave()
        return (tmp_path / "b" / "alice" / "x.txt").stat().st_size

    assert asyncio.run(main()) == 1000


def test_a_slow_disk_does_not_stall_heartbeats(pair, tmp_path):
    """Placing a received file (verify + fsync + rename) can take seconds on a real disk with a
    big file; the link must stay up meanwhile. A slow disk cannot be made on demand here, so
    the store's real finalize is wrapped to take 4.5 s, longer than the 3.5 s dead-peer limit."""
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    real_verify = bob.sharing.store.verify

    def slow_verify(*args):
        time.sleep(4.5)
        return real_verify(*args)

    bob.sharing.store.verify = slow_verify
    t = alice.send_file(make_file(tmp_path / "slow-disk.bin", 100_000), to="bob")
    assert t.wait(20) == "done"
    assert alice.peers["bob"].state == "connected"
    assert bob.peers["alice"].state == "connected"


def test_leaving_cancels_transfers_with_a_reason(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    bob.settings["alice"].lane = "datachannel"  # slow enough to leave mid-transfer
    t = alice.send_file(sparse_file(tmp_path / "big.bin", 256 << 20), to="bob")
    incoming = wait_until(lambda: [x for x in bob.sharing.transfers.values() if x.received > 0], 20)[0]
    alice.leave()
    assert t.status == "cancelled" and t.reason == "alice left"
    assert incoming.wait(10) == "cancelled"
    assert incoming.reason == "alice left"
