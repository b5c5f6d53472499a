"""The direct TLS lane: chosen for large files, pinned at both ends, falling back to the data
channel, and carrying the same verification, resume, cancel and stall handling. Real sockets,
real TLS, real sessions and a real killed process."""

from __future__ import annotations

import asyncio
import os
import signal
import ssl
import subprocess
import sys
import threading

import pytest
import uvloop

from helpers import make_file, sparse_file, wait_until
from ivisit_nb.engine import direct
from ivisit_nb.sharing.hashing import hash_file

BIG = 256 << 20  # sparse: free to make, and a few hundred ms to a few s on the direct lane


def sparse(path, size=BIG):
    return sparse_file(path, size)


def _nothing_in_view(bob, tmp_path):
    folder = tmp_path / "inbox" / "bob" / "alice"
    return not folder.exists() or not any(folder.iterdir())


# -- the lane on its own: real sockets --------------------------------------------------


def run(coro):
    return asyncio.run(coro)


LOOPS = pytest.mark.parametrize("runner", [asyncio.run, uvloop.run], ids=["asyncio", "uvloop"])  # sessions use uvloop


async def _listener(receiver: direct.Identity, sender: direct.Identity):
    listener = direct.Listener(receiver, sender.cert_pem, "test")
    info = await listener.start(["127.0.0.1"])
    return listener, info


@LOOPS
def test_the_right_sender_gets_through_and_frames_arrive_in_order(runner):
    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        listener, info = await _listener(bob, alice)
        lane = await direct.connect(alice, info, "test")
        got: list[bytes] = []
        theirs = await listener.lane
        done = asyncio.Event()

        def on_frame(frame: bytes) -> None:
            got.append(frame)
            if len(got) == 3:
                done.set()

        async def ready() -> None:
            return None

        theirs.start_reading(on_frame, ready)
        for i in range(3):
            await lane.send_frame(bytes([i]) * (1000 + i))
        await asyncio.wait_for(done.wait(), 10)
        lane.close()
        return got

    assert runner(main()) == [bytes([i]) * (1000 + i) for i in range(3)]


@LOOPS
def test_frames_sent_before_the_receiver_reads_are_kept_in_order(runner):
    """The sender may start right after the ACK, before the receiver's lane reads: bytes the
    handshake stream already buffered, and whole frames, are handed on first and in order."""
    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        listener, info = await _listener(bob, alice)
        lane = await direct.connect(alice, info, "test")
        sizes = [5, 300_000, 1 << 20, 17]
        for i, n in enumerate(sizes):
            await lane.send_frame(bytes([i]) * n)
        theirs = await listener.lane
        await asyncio.sleep(0.2)  # let everything reach the receiver's socket and stream
        got: list[bytes] = []
        theirs.start_reading(lambda f: got.append(bytes(f)), lambda: None)
        while len(got) < len(sizes):
            await asyncio.sleep(0.01)
        lane.close()
        return got

    assert runner(main()) == [bytes([i]) * n for i, n in enumerate([5, 300_000, 1 << 20, 17])]


@LOOPS
def test_a_waiting_ready_pauses_reading_and_frames_arrive_once_it_is_done(runner):
    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        listener, info = await _listener(bob, alice)
        lane = await direct.connect(alice, info, "test")
        theirs = await listener.lane
        got: list[bytes] = []
        gate = asyncio.get_running_loop().create_future()

        def ready():
            return gate if len(got) == 1 else None  # the disk is slow after the first frame

        theirs.start_reading(lambda f: got.append(bytes(f)), ready)
        sender = asyncio.ensure_future(_send_all(lane, 40))  # 40 x 512 KiB: more than the socket buffers hold
        await asyncio.sleep(0.5)
        held = len(got)
        gate.set_result(None)
        await asyncio.wait_for(sender, 20)
        while len(got) < 40:
            await asyncio.sleep(0.01)
        lane.close()
        return held, got

    held, got = runner(main())
    assert held == 1  # nothing was read while ready() waited
    assert got == [bytes([i % 256]) * (512 << 10) for i in range(40)]


@LOOPS
def test_frame_buffers_are_reused_only_once_nobody_holds_them(runner):
    """The receiving lane recycles frame buffers: a frame still held (by the disk writer, here
    by this test) is never overwritten, and released ones are reused."""
    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        listener, info = await _listener(bob, alice)
        lane = await direct.connect(alice, info, "test")
        theirs = await listener.lane
        held: list = []
        theirs.start_reading(held.append, lambda: None)  # keeps every frame's view
        await _send_all(lane, 20)
        while len(held) < 20:
            await asyncio.sleep(0.01)
        intact = [bytes(f) for f in held] == [bytes([i]) * (512 << 10) for i in range(20)]
        pool_while_held = len(theirs._pool)
        held.clear()  # the writer lets go
        released: list = []
        theirs._on_frame = lambda f: released.append(bytes(f))  # copies, holds no view
        await _send_all(lane, 20)
        while len(released) < 20:
            await asyncio.sleep(0.01)
        lane.close()
        return intact, pool_while_held, len(theirs._pool), released

    intact, pool_while_held, pool_after, released = runner(main())
    assert intact  # 20 frames held at once, more than the pool keeps: none was overwritten
    assert pool_while_held == pool_after == direct.POOL_BUFFERS  # released buffers were reused, not added
    assert released == [bytes([i]) * (512 << 10) for i in range(20)]


async def _send_all(lane, n):
    for i in range(n):
        await lane.send_frame(bytes([i % 256]) * (512 << 10))


def test_a_wrong_token_is_refused():
    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        listener, info = await _listener(bob, alice)
        with pytest.raises(direct.DirectLaneError, match="could not open"):
            await direct.connect(alice, dict(info, token="00" * 32), "test")
        assert not listener.lane.done() and listener.attempts == 1
        lane = await direct.connect(alice, info, "test")  # the real one still gets in
        assert (await listener.lane).open
        lane.close()

    run(main())


def test_a_wrong_certificate_is_refused_on_both_sides():
    async def main():
        alice, bob, mallory = (direct.Identity.generate() for _ in range(3))
        listener, info = await _listener(bob, alice)
        # mallory has the token but not alice's key: the listener wants alice's certificate
        with pytest.raises(direct.DirectLaneError):
            await direct.connect(mallory, info, "test")
        # a listener presenting another certificate than the pinned one
        with pytest.raises(direct.DirectLaneError, match="certificate verify failed"):
            await direct.connect(alice, dict(info, cert=mallory.cert_pem), "test")
        assert not listener.lane.done()
        listener.close()

    run(main())


def test_a_second_connection_is_refused():
    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        listener, info = await _listener(bob, alice)
        first = await direct.connect(alice, info, "test")
        with pytest.raises(direct.DirectLaneError):
            await direct.connect(alice, info, "test")  # the listener closed after the first
        assert (await listener.lane).open
        first.close()

    run(main())


def test_a_scanner_that_never_completes_tls_closes_the_listener_after_max_attempts():
    """Connections that fail the TLS handshake never reach the token check; they count all the
    same, so a scanner cannot keep a listener busy: after MAX_ATTEMPTS it closes."""

    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        listener, info = await _listener(bob, alice)
        host, port = info["candidates"][0]
        for _ in range(direct.MAX_ATTEMPTS + 1):
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(b"\x16\x03\x01\x00\x05hello")  # not a TLS ClientHello
            await asyncio.wait_for(reader.read(), direct.HELLO_TIMEOUT + 5)  # the listener drops it
            writer.close()
        await asyncio.sleep(0.1)
        assert listener.connections == direct.MAX_ATTEMPTS + 1
        assert listener.lane.cancelled()
        with pytest.raises(direct.DirectLaneError):
            await direct.connect(alice, info, "test")  # closed: even the right sender is too late

    run(main())


def test_silent_and_plaintext_connections_are_dropped():
    """A port scanner (plain bytes), a slow-loris (TLS, then nothing) and a connection that sends
    nothing at all: each is dropped, and the real sender still gets in."""

    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        listener, info = await _listener(bob, alice)
        host, port = info["candidates"][0]
        r1, w1 = await asyncio.open_connection(host, port)
        w1.write(b"GET / HTTP/1.0\r\n\r\n")  # a scanner
        r2, w2 = await asyncio.open_connection(host, port)  # says nothing
        ctx = alice.client_context(info["cert"])
        r3, w3 = await asyncio.open_connection(host, port, ssl=ctx)  # TLS, then no token
        for reader in (r1, r2, r3):
            assert await asyncio.wait_for(reader.read(), direct.HELLO_TIMEOUT + 5) == b""  # closed by the listener
        lane = await direct.connect(alice, info, "test")
        assert (await listener.lane).open
        lane.close()
        for w in (w1, w2, w3):
            w.close()

    run(main())


def test_refusing_candidates_fail_fast_and_clearly():
    async def main():
        alice, bob = direct.Identity.generate(), direct.Identity.generate()
        _, info = await _listener(bob, alice)
        with pytest.raises(direct.DirectLaneError, match="Connect call failed"):
            await direct.connect(alice, dict(info, candidates=[["127.0.0.1", 1]]), "test")

    run(main())


@pytest.mark.parametrize(
    "info",
    [None, {}, {"candidates": "x"}, {"candidates": [["not-an-ip", 80]], "cert": "x", "token": "00" * 32},
     {"candidates": [["127.0.0.1", 99999]], "cert": "x", "token": "00" * 32}],
)
def test_malformed_details_are_refused(info):
    with pytest.raises(direct.DirectLaneError):
        direct.check_info(info)


# -- sessions ------------------------------------------------------------------------------


def test_large_files_take_the_direct_lane_small_ones_the_data_channel(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    big = sparse(tmp_path / "big.bin", 32 << 20)
    small = make_file(tmp_path / "small.bin", 100_000)
    t_big, t_small = alice.send_file(big, to="bob"), alice.send_file(small, to="bob")
    assert t_big.wait(60) == "done" and t_small.wait(60) == "done"
    assert t_big.lane == "direct" and t_small.lane == "datachannel"
    lanes = bob.transfers.set_index("name")["lane"]
    assert lanes["big.bin"] == "direct" and lanes["small.bin"] == "datachannel"
    assert hash_file(tmp_path / "inbox" / "bob" / "alice" / "big.bin") == hash_file(big)
    again = alice.send_file(big, to="bob")
    assert again.wait(30) == "done" and again.lane == "dedup"


def test_falls_back_to_the_data_channel_when_no_tcp_path_exists(pair, tmp_path, monkeypatch):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    monkeypatch.setenv(direct.CANDIDATES_ENV, "127.0.0.1:1")  # bob advertises a port that refuses
    f = make_file(tmp_path / "fallback.bin", 12 << 20)
    t = alice.send_file(f, to="bob")
    assert t.wait(60) == "done"
    assert t.lane == "datachannel"
    incoming = bob.sharing.transfers[t.transfer_id]
    assert incoming.lane == "datachannel" and incoming.status == "done"
    assert hash_file(tmp_path / "inbox" / "bob" / "alice" / "fallback.bin") == hash_file(f)


def test_forcing_a_lane(pair, tmp_path, monkeypatch):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    small = make_file(tmp_path / "small.bin", 50_000)
    alice.settings["bob"].lane = "direct"  # for teaching: even a small file goes direct
    t = alice.send_file(small, to="bob")
    assert t.wait(30) == "done" and t.lane == "direct"

    monkeypatch.setenv(direct.CANDIDATES_ENV, "127.0.0.1:1")
    t = alice.send_file(make_file(tmp_path / "other.bin", 50_000), to="bob")
    assert t.wait(30) == "failed"
    assert "direct lane" in t.reason and "data channel is turned off" in t.reason

    alice.settings["bob"].lane = "auto"
    bob.settings["alice"].lane = "datachannel"  # the receiver may refuse direct connections
    t = alice.send_file(sparse(tmp_path / "big.bin", 16 << 20), to="bob")
    assert t.wait(60) == "done" and t.lane == "datachannel"

    alice.settings["bob"].lane = "direct"  # and then no lane is left
    t = alice.send_file(make_file(tmp_path / "third.bin", 50_000), to="bob")
    assert t.wait(30) == "refused" and "no lane both allow" in t.reason


def _direct_transfer(alice, bob, tmp_path, size=BIG):
    bob.settings["alice"].files = "accept"
    t = alice.send_file(sparse(tmp_path / "big.bin", size), to="bob")
    incoming = wait_until(lambda: [x for x in bob.sharing.transfers.values() if x.direction == "in" and x.received > 0], 30)[0]
    assert incoming.lane == "direct"
    return t, incoming


def test_random_bytes_arrive_intact_through_reused_buffers(pair, tmp_path):
    """Both ends of the direct lane recycle frame buffers (the sender reads the file into
    them, the receiver decrypts into them). With random bytes, every frame differs, so a
    buffer reused while still in use would break the hash: the file must verify."""
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    f = make_file(tmp_path / "random.bin", 48 << 20)
    t = alice.send_file(f, to="bob")
    assert t.wait(60) == "done", t.reason
    assert t.lane == "direct"
    got = tmp_path / "inbox" / "bob" / "alice" / "random.bin"
    assert hash_file(got) == hash_file(f)


@pytest.mark.parametrize("how", ["stop", "viewer", "disconnect", "sender"])
def test_cancel_on_the_direct_lane(pair, tmp_path, how):
    alice, bob = pair
    t, incoming = _direct_transfer(alice, bob, tmp_path, 1 << 30)
    if how == "stop":
        incoming.cancel("bob pressed Stop")
    elif how == "viewer":
        bob.inbox.close()
    elif how == "disconnect":
        bob.disconnect("alice")
    else:
        t.cancel("alice changed her mind")
    assert incoming.wait(20) == "cancelled"
    assert t.wait(20) == "cancelled"
    assert _nothing_in_view(bob, tmp_path)
    assert not bob.sharing._direct and not alice.sharing._direct  # every lane and listener closed


def test_the_stall_watchdog_on_the_direct_lane(pair, tmp_path):
    """A receiver whose disk stops taking bytes stops reading the lane (backpressure); the sender's
    stall timer then ends the transfer. The disk is stopped by holding bob's part writer."""
    alice, bob = pair
    alice.sharing.stall_timeout = 1.5
    bob.sharing.stall_timeout = 1.5
    bob.settings["alice"].files = "accept"
    t = alice.send_file(sparse(tmp_path / "big.bin", 1 << 30), to="bob")
    writer = wait_until(lambda: next(iter(bob.sharing._parts.values()), None), 30)
    real_write, disk_back = writer.part.write, threading.Event()

    def stuck(*args):
        disk_back.wait(60)
        return real_write(*args)

    writer.part.write = stuck  # the disk hangs
    try:
        assert t.wait(30) == "failed"
        assert "no progress from" in t.reason  # whichever side's timer fired first
        assert _nothing_in_view(bob, tmp_path)
    finally:
        disk_back.set()


def test_a_killed_sender_on_the_direct_lane_leaves_a_resumable_part(server, make_session, tmp_path):
    bob = make_session(server.url, "bob")
    bob.receiving = True
    bob.settings.defaults.files = "accept"
    size = 1 << 30
    f = sparse(tmp_path / "movie.bin", size)
    proc = subprocess.Popen(
        [sys.executable, os.path.join(os.path.dirname(__file__), "_sender.py"),
         server.url, "lab", "zed", str(tmp_path / "zed"), "bob", str(f)],
        stdout=subprocess.PIPE, text=True,
    )
    try:
        assert proc.stdout.readline().strip() == "offered"
        incoming = wait_until(lambda: [x for x in bob.sharing.transfers.values() if x.received > 0], 60)[0]
        assert incoming.lane == "direct"
        proc.send_signal(signal.SIGKILL)
        assert incoming.wait(20) == "failed"
    finally:
        proc.kill()
        proc.wait()
    held = incoming.received
    assert 0 < held < size
    assert not (tmp_path / "inbox" / "bob" / "zed").exists() or not any((tmp_path / "inbox" / "bob" / "zed").iterdir())
    assert len(bob.inbox) == 0

    alice = make_session(server.url, "alice")
    alice.wait_for_peers(["bob"], timeout=30).wait()
    t = alice.send_file(f, to="bob")
    assert t.wait(120) == "done" and t.lane == "direct"
    resumed = bob.sharing.transfers[t.transfer_id]
    assert resumed.resumed_from > 0
    assert resumed.bytes_transferred == size - resumed.resumed_from
    assert hash_file(tmp_path / "inbox" / "bob" / "alice" / "movie.bin") == hash_file(f)


def test_chat_stays_responsive_during_a_direct_transfer(pair, tmp_path):
    """Chat goes on the WebRTC control channel, not behind the file's bytes: messages keep
    arriving while a large direct transfer runs. (Round trips are measured in bench/compare.py.)"""
    alice, bob = pair
    t, incoming = _direct_transfer(alice, bob, tmp_path, 1 << 30)
    sent = 0
    while not t.ended and sent < 20:
        alice.say(f"ping {sent}", to="bob").wait(10)
        sent += 1
    assert t.wait(120) == "done"
    got = wait_until(lambda: len(bob.messages[bob.messages.sender == "alice"]) >= sent, 10)
    assert got and sent > 0
    assert list(bob.messages[bob.messages.sender == "alice"].text)[:sent] == [f"ping {i}" for i in range(sent)]
