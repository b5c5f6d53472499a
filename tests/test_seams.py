"""The seams, end to end on real parts: send_file returns at once, hashes once, one URL limit,
an exact wait_for_peers, fatal refusals that stop reconnecting, and bad signalling that
leaves a one-line reason instead of a traceback."""

from __future__ import annotations

import asyncio
import json
import logging
import os

import aiohttp
import pytest

from helpers import make_file, wait_until
from ivisit_nb import RoomServer
from ivisit_nb import events as ev
from ivisit_nb.protocol.urls import MAX_URL_BYTES, BadURL
from ivisit_nb.sharing import hashing


def test_send_file_returns_at_once_and_hashes_an_unchanged_file_once(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    small = make_file(tmp_path / "small.bin", 50_000)
    before = hashing.cache_info()
    assert alice.send_file(small, to="bob").wait(30) == "done"
    assert alice.send_file(small, to="bob").wait(30) == "done"  # bob has it: dedup
    after = hashing.cache_info()
    assert after.misses - before.misses == 1 and after.hits - before.hits >= 1
    os.utime(small, ns=(1, 1))  # touched: read again
    assert alice.send_file(small, to="bob").wait(30) == "done"
    assert hashing.cache_info().misses - after.misses == 1

    big = tmp_path / "big.bin"
    with open(big, "wb") as f:  # 2 GiB, sparse: hashing it takes a while, creating it does not
        f.truncate(2 << 30)
    t = alice.send_file(big, to="bob")
    assert t.status == "hashing"  # returned before the file was read
    t.cancel("changed my mind")
    assert t.wait(60) == "cancelled"


def test_send_file_from_async_code_does_not_block_the_loop(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    f = make_file(tmp_path / "async.bin", 300_000)

    async def main() -> tuple[str, str]:
        t = alice.send_file(f, to="bob")
        first = t.status
        return first, await t

    first, last = asyncio.run(main())
    assert first == "hashing" and last == "done"


def test_one_url_limit_checked_on_both_sides(pair):
    alice, bob = pair
    bob.settings["alice"].urls = "accept"
    url = "https://example.org/" + "a" * (5000 - 20)
    assert alice.send_url(url, to="bob").wait(30) == "done"
    assert bob.inbox.current.url == url
    too_long = "https://example.org/" + "a" * MAX_URL_BYTES
    with pytest.raises(BadURL, match=f"at most {MAX_URL_BYTES} bytes"):
        alice.send_url(too_long, to="bob")


def test_wait_for_peers_knows_who_joined_before_it_was_called(server, make_session):
    """alice joined first; bob's join has returned, so alice's wait must include bob,
    even if alice has not yet heard that bob joined."""
    for _ in range(5):
        alice = make_session(server.url, "alice")
        bob = make_session(server.url, "bob")
        peers = alice.wait_for_peers(timeout=30).wait()
        assert set(peers) == {"bob"} and peers["bob"].state == "connected"
        alice.leave()
        bob.leave()


def test_a_fatal_refusal_on_reconnect_stops_and_says_why(tmp_path, make_session):
    srv = RoomServer()
    port = srv.port
    alice = make_session(srv.url, "alice", room="lab")
    events: list[ev.Event] = []
    alice.on(events.append)
    srv.close()
    srv = RoomServer(port=port, token="a new secret alice does not have")
    try:
        fatal = wait_until(lambda: [e for e in events if isinstance(e, ev.ServerError) and e.fatal], 30)[0]
        assert fatal.code == "bad-token"
        assert alice.refused and "bad-token" in alice.refused
        assert not alice.connected
    finally:
        srv.close()


@pytest.mark.parametrize(
    "data, expected",
    [
        ({"kind": "offer", "link": "room", "sdp": "garbage"}, "unusable offer"),
        # aiortc takes this one (no media at all); the candidates after it are what it refuses
        ({"kind": "offer", "link": "room", "sdp": "v=0\r\nthis is not sdp\r\n"}, "unusable candidate"),
        ({"kind": "offer", "link": "room", "sdp": 42}, "unusable offer"),
    ],
)
def test_garbage_signalling_gives_a_one_line_reason(server, make_session, caplog, data, expected):
    bob = make_session(server.url, "bob")

    async def mallory() -> None:
        async with aiohttp.ClientSession() as http:
            async with http.ws_connect(server.url) as ws:
                await ws.send_str(json.dumps({"type": "hello", "version": 1, "user": "mallory", "room": "lab"}))
                assert json.loads((await ws.receive()).data)["type"] == "welcome"
                await ws.send_str(json.dumps({"type": "signal", "to": "bob", "data": data}))
                for bad in (12345, "candidate:garbage", {"x": 1}):
                    await ws.send_str(json.dumps({"type": "signal", "to": "bob",
                                                  "data": {"kind": "candidate", "candidate": bad}}))
                await ws.send_str(json.dumps({"type": "ping"}))
                while json.loads((await ws.receive()).data)["type"] != "pong":
                    pass
                wait_until(lambda: any(expected in r.getMessage() for r in caplog.records), 15)

    with caplog.at_level(logging.WARNING):
        asyncio.run(mallory())
    mine = [r for r in caplog.records if r.name.startswith("ivisit_nb")]
    assert any(expected in r.getMessage() for r in mine)
    assert all(r.exc_info is None for r in mine), [r.getMessage() for r in mine if r.exc_info]
    assert all("\n" not in r.getMessage() for r in mine)
    assert bob.connected
