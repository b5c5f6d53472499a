"""The room server against real sockets: raw aiohttp websocket clients, no mocks.

Every test starts its own :class:`RoomServer` (a thread with its own loop) and
talks to it over 127.0.0.1 exactly as a foreign client would.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import re
import select
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

import aiohttp
import pytest

import ivisit_nb.room
from ivisit_nb.room import RoomServer

pytestmark = pytest.mark.timeout(30)

TEXT = aiohttp.WSMsgType.TEXT
CLOSING_TYPES = (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING, aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR)
_names = itertools.count(1)


def fresh(prefix: str) -> str:
    """A user/room name no other test uses."""
    return f"{prefix}{next(_names)}"


def run(test: Callable[[aiohttp.ClientSession], Awaitable[None]]) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await test(session)

    asyncio.run(main())


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == TEXT, f"expected a text frame, got {msg.type.name} {msg.data!r} (close code {ws.close_code})"
    data = json.loads(msg.data)
    assert isinstance(data, dict)
    return data


async def closed_with(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3.0) -> int | None:
    """Read until the server closes; return its close code. Fails on unexpected text frames."""
    msg = await ws.receive(timeout=timeout)
    assert msg.type in CLOSING_TYPES, f"expected the server to close, got {msg.type.name} {msg.data!r}"
    if msg.type == aiohttp.WSMsgType.CLOSE:
        return int(msg.data)
    return ws.close_code


async def expect_error(
    ws: aiohttp.ClientWebSocketResponse, code: str, *, fatal: bool, close: int | None = None
) -> dict[str, Any]:
    err = await recv(ws)
    assert err["type"] == "error", err
    assert err["code"] == code, err
    assert err["fatal"] is fatal, err
    assert isinstance(err["message"], str) and len(err["message"]) > 15, err
    if close is not None:
        assert await closed_with(ws) == close
    return err


async def connect(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(url, max_msg_size=1 << 22)


async def join(
    session: aiohttp.ClientSession,
    url: str,
    user: str,
    room: str | None = "lab",
    **extra: Any,
) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    ws = await connect(session, url)
    await ws.send_json({"type": "hello", "version": 1, "user": user, "room": room, **extra})
    return ws, await recv(ws)


async def joined(session: aiohttp.ClientSession, url: str, user: str, room: str | None = "lab", **extra: Any) -> aiohttp.ClientWebSocketResponse:
    ws, welcome = await join(session, url, user, room, **extra)
    assert welcome["type"] == "welcome", welcome
    return ws


async def ping(ws: aiohttp.ClientWebSocketResponse) -> None:
    await ws.send_json({"type": "ping"})
    assert await recv(ws) == {"type": "pong"}


async def check_serving(session: aiohttp.ClientSession, url: str, **extra: Any) -> None:
    """A fresh, well-behaved pair can still join, see each other and relay."""
    room, a_name, b_name = fresh("room"), fresh("ok-a"), fresh("ok-b")
    a = await joined(session, url, a_name, room, **extra)
    b, welcome = await join(session, url, b_name, room, **extra)
    assert welcome["members"] == [a_name]
    assert await recv(a) == {"type": "joined", "room": room, "user": b_name}
    await a.send_json({"type": "signal", "to": b_name, "data": {"sdp": "v=0", "n": 1}})
    assert await recv(b) == {"type": "signal", "from": a_name, "data": {"sdp": "v=0", "n": 1}}
    await a.close()
    await b.close()


@pytest.fixture
def server() -> Iterator[RoomServer]:
    with RoomServer() as s:
        yield s


# -- joining and presence --------------------------------------------------------


def test_join_welcome_and_presence(server: RoomServer) -> None:
    assert re.fullmatch(r"ws://127\.0\.0\.1:\d+/", server.url)
    assert server.url == f"ws://{server.host}:{server.port}/"

    async def test(s: aiohttp.ClientSession) -> None:
        alice, w = await join(s, server.url, "alice", "lab")
        assert w == {"type": "welcome", "user": "alice", "room": "lab", "members": [], "max_message": 65536}
        bob, w = await join(s, server.url, "bob", "lab")
        assert w["members"] == ["alice"]
        assert await recv(alice) == {"type": "joined", "room": "lab", "user": "bob"}
        carol, w = await join(s, server.url, "carol", "lab")
        assert w["members"] == ["alice", "bob"]
        for ws in (alice, bob):
            assert await recv(ws) == {"type": "joined", "room": "lab", "user": "carol"}
        solo, w = await join(s, server.url, "solo", None)
        assert w == {"type": "welcome", "user": "solo", "room": None, "members": [], "max_message": 65536}
        assert server.rooms == {"lab": ["alice", "bob", "carol"]}

        await bob.send_json({"type": "leave"})
        assert await closed_with(bob) == 1000
        for ws in (alice, carol):
            assert await recv(ws) == {"type": "left", "room": "lab", "user": "bob"}
        await carol.close()  # just hanging up counts as leaving too
        assert await recv(alice) == {"type": "left", "room": "lab", "user": "carol"}
        assert server.rooms == {"lab": ["alice"]}
        # the name is free again once its owner left
        bob2 = await joined(s, server.url, "bob", "lab")
        assert await recv(alice) == {"type": "joined", "room": "lab", "user": "bob"}
        for ws in (alice, bob2, solo):
            await ws.close()
        for _ in range(100):
            if not server.rooms:
                break
            await asyncio.sleep(0.01)
        assert server.rooms == {}

    run(test)


def test_unicode_and_longest_names_accepted(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        long_name = "x" * 64
        a = await joined(s, server.url, long_name, "Zoë's room 🙂")
        b, w = await join(s, server.url, "Zoë 🙂", "Zoë's room 🙂")
        assert w["members"] == [long_name]
        assert await recv(a) == {"type": "joined", "room": "Zoë's room 🙂", "user": "Zoë 🙂"}
        await b.send_json({"type": "signal", "to": long_name, "data": {"text": "héllo"}})
        assert await recv(a) == {"type": "signal", "from": "Zoë 🙂", "data": {"text": "héllo"}}

    run(test)


# -- relay -------------------------------------------------------------------------


def test_signal_relay_across_rooms_and_no_such_user(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        alice = await joined(s, server.url, "alice", "lab")
        bob = await joined(s, server.url, "bob", "kitchen")
        dave = await joined(s, server.url, "dave", None)
        data = {"kind": "offer", "sdp": "v=0\r\n" * 50, "nested": {"list": [1, 2.5, None, True]}}
        await alice.send_json({"type": "signal", "to": "bob", "data": data, "extra": "ignored"})
        assert await recv(bob) == {"type": "signal", "from": "alice", "data": data}
        await bob.send_json({"type": "signal", "to": "dave", "data": {}})
        assert await recv(dave) == {"type": "signal", "from": "bob", "data": {}}

        await alice.send_json({"type": "signal", "to": "nobody", "data": {}})
        err = await expect_error(alice, "no-such-user", fatal=False)
        assert err["to"] == "nobody"
        await ping(alice)  # non-fatal: still connected

        # presence stays inside a room: bob (kitchen) must not hear about carol (lab)
        carol = await joined(s, server.url, "carol", "lab")
        assert await recv(alice) == {"type": "joined", "room": "lab", "user": "carol"}
        await carol.send_json({"type": "signal", "to": "bob", "data": {"n": 2}})
        assert await recv(bob) == {"type": "signal", "from": "carol", "data": {"n": 2}}

        # someone who left cannot be signalled any more
        await dave.close()
        for _ in range(100):
            await bob.send_json({"type": "signal", "to": "dave", "data": {}})
            await bob.send_json({"type": "ping"})
            replies = [await recv(bob)]
            if replies[0]["type"] != "pong":
                replies.append(await recv(bob))
            if replies[0].get("code") == "no-such-user":
                assert replies[1] == {"type": "pong"}
                break
            assert replies == [{"type": "pong"}]
            await asyncio.sleep(0.01)
        else:
            pytest.fail("dave was still reachable after closing his connection")

    run(test)


# -- refusals ------------------------------------------------------------------------


def test_duplicate_name_refused_anywhere_on_the_server(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        alice = await joined(s, server.url, "alice", "lab")
        for room in ("lab", "elsewhere", None):
            ws, reply = await join(s, server.url, "alice", room)
            assert reply["type"] == "error" and reply["code"] == "name-taken" and reply["fatal"] is True
            assert "alice" in reply["message"]
            assert await closed_with(ws) == 4002
        await ping(alice)  # the original is untouched
        assert server.rooms == {"lab": ["alice"]}
        await check_serving(s, server.url)

    run(test)


def test_lookalike_and_disguised_names_are_refused(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        carol = await joined(s, server.url, "carol", "lab")
        for lookalike in ("Carol", "c\u0430rol", "caro1", "carol."):  # Cyrillic а in the second
            ws, reply = await join(s, server.url, lookalike, "lab")
            assert reply["code"] == "name-taken" and reply["fatal"] is True, reply
            assert "too similar to 'carol', who is already here" in reply["message"]
            assert await closed_with(ws) == 4002
        for disguised, char in (("carol\u200b", "U+200B"), ("carol\u202e", "U+202E"), ("\u2066carol", "U+2066")):
            ws, reply = await join(s, server.url, disguised, "lab")
            assert reply["code"] == "bad-name" and reply["fatal"] is True, reply
            assert char in reply["message"] and "not allowed" in reply["message"]
            assert await closed_with(ws) == 4005
        assert server.rooms == {"lab": ["carol"]}
        await ping(carol)

    run(test)


def test_welcome_carries_the_canonical_name(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        ws, welcome = await join(s, server.url, "Zoe\u0301", "Cafe\u0301")
        assert welcome["user"] == "Zoé" and welcome["room"] == "Café"
        bob, welcome = await join(s, server.url, "bob", "Café")
        assert welcome["members"] == ["Zoé"]
        assert await recv(ws) == {"type": "joined", "room": "Café", "user": "bob"}
        await bob.send_json({"type": "signal", "to": "Zoe\u0301", "data": {"n": 1}})
        assert await recv(ws) == {"type": "signal", "from": "bob", "data": {"n": 1}}

    run(test)


def test_token_required_and_checked() -> None:
    with RoomServer(token="s3cret") as server:

        async def test(s: aiohttp.ClientSession) -> None:
            for extra in ({}, {"token": "wrong"}, {"token": ""}, {"token": 12345}, {"token": "s3cret "}):
                ws, reply = await join(s, server.url, fresh("eve"), "lab", **extra)
                assert reply["type"] == "error" and reply["code"] == "bad-token", (extra, reply)
                assert reply["fatal"] is True
                assert await closed_with(ws) == 4001
            assert server.rooms == {}
            ws = await joined(s, server.url, "alice", "lab", token="s3cret")
            await ping(ws)
            await check_serving(s, server.url, token="s3cret")

        run(test)


def test_room_full() -> None:
    with RoomServer(max_members=2) as server:

        async def test(s: aiohttp.ClientSession) -> None:
            a = await joined(s, server.url, "a", "small")
            b = await joined(s, server.url, "b", "small")
            assert await recv(a) == {"type": "joined", "room": "small", "user": "b"}
            ws, reply = await join(s, server.url, "c", "small")
            assert reply["code"] == "room-full" and reply["fatal"] is True
            assert "small" in reply["message"]
            assert await closed_with(ws) == 4003
            assert server.rooms == {"small": ["a", "b"]}
            # other rooms and 1:1 users are not limited by it
            await joined(s, server.url, "c", "big")
            await joined(s, server.url, "d", None)
            # a place frees up when someone leaves
            await b.close()
            assert await recv(a) == {"type": "left", "room": "small", "user": "b"}
            e = await joined(s, server.url, "e", "small")
            await ping(e)
            await check_serving(s, server.url)

        run(test)


@pytest.mark.parametrize(
    "hello, code, close",
    [
        ({"type": "hello", "version": 1, "room": "lab"}, "bad-message", 4000),  # no user
        ({"type": "hello", "version": 1, "user": "", "room": "lab"}, "bad-name", 4005),
        ({"type": "hello", "version": 1, "user": "   ", "room": "lab"}, "bad-name", 4005),
        ({"type": "hello", "version": 1, "user": "ali\nce", "room": "lab"}, "bad-name", 4005),
        ({"type": "hello", "version": 1, "user": "x" * 65, "room": "lab"}, "bad-name", 4005),
        ({"type": "hello", "version": 1, "user": ["alice"], "room": "lab"}, "bad-message", 4000),
        ({"type": "hello", "version": 1, "user": "alice", "room": ""}, "bad-name", 4005),
        ({"type": "hello", "version": 1, "user": "alice", "room": "lab\u202e"}, "bad-name", 4005),
        ({"type": "hello", "version": 1, "user": "alice", "room": 7}, "bad-message", 4000),
        ({"type": "hello", "version": 2, "user": "alice", "room": "lab"}, "bad-message", 4000),
        ({"type": "hello", "user": "alice", "room": "lab"}, "bad-message", 4000),  # no version
    ],
)
def test_bad_hello_is_fatal(server: RoomServer, hello: dict[str, Any], code: str, close: int) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        ws = await connect(s, server.url)
        await ws.send_json(hello)
        await expect_error(ws, code, fatal=True, close=close)
        assert server.rooms == {}
        await check_serving(s, server.url)

    run(test)


def test_anything_before_hello_is_not_joined(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        for first in ({"type": "signal", "to": "x", "data": {}}, {"type": "ping"}, {"type": "leave"}, {"type": "nope"}, {}):
            ws = await connect(s, server.url)
            await ws.send_json(first)
            await expect_error(ws, "not-joined", fatal=True, close=4004)
        # bad JSON before hello is not fatal: hello still works afterwards
        ws = await connect(s, server.url)
        await ws.send_str("{oops")
        await expect_error(ws, "bad-json", fatal=False)
        await ws.send_json({"type": "hello", "version": 1, "user": "late", "room": "lab"})
        assert (await recv(ws))["type"] == "welcome"
        await check_serving(s, server.url)

    run(test)


def test_silent_connection_is_closed_after_hello_timeout() -> None:
    with RoomServer(hello_timeout=0.3) as server:

        async def test(s: aiohttp.ClientSession) -> None:
            t0 = time.monotonic()
            ws = await connect(s, server.url)
            await expect_error(ws, "not-joined", fatal=True, close=4004)
            assert 0.2 < time.monotonic() - t0 < 2.5
            await check_serving(s, server.url)

        run(test)


# -- bad input after joining ------------------------------------------------------------


BAD_FRAMES: list[tuple[str | bytes, str]] = [
    ("not json", "bad-json"),
    ("{oops", "bad-json"),
    ("[1, 2]", "bad-json"),
    ('"a string"', "bad-json"),
    ("42", "bad-json"),
    ('{"type": "ping", "n": NaN}', "bad-json"),
    ("[" * 10_000 + "]" * 10_000, "bad-json"),  # nested too deeply
    (b'{"type": "ping"}', "bad-json"),  # binary frame
    ("{}", "unknown-type"),
    ('{"type": "dance"}', "unknown-type"),
    ('{"type": 5}', "unknown-type"),
    ('{"type": "signal", "to": "bob"}', "bad-message"),
    ('{"type": "signal", "to": "bob", "data": [1]}', "bad-message"),
    ('{"type": "signal", "to": "bob", "data": "x"}', "bad-message"),
    ('{"type": "signal", "to": 5, "data": {}}', "bad-message"),
    ('{"type": "signal", "data": {}}', "bad-message"),
    ('{"type": "signal", "to": "' + "b" * 65 + '", "data": {}}', "bad-message"),
    ('{"type": "hello", "version": 1, "user": "mallory2", "room": "lab"}', "bad-message"),  # second hello
]


def test_bad_frames_after_joining_are_not_fatal(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        mallory = await joined(s, server.url, "mallory", "lab")
        bob = await joined(s, server.url, "bob", "lab")
        assert await recv(mallory) == {"type": "joined", "room": "lab", "user": "bob"}
        for frame, code in BAD_FRAMES:
            if isinstance(frame, bytes):
                await mallory.send_bytes(frame)
            else:
                await mallory.send_str(frame)
            err = await expect_error(mallory, code, fatal=False)
            assert err.get("code") == code, (frame[:40], err)
        await ping(mallory)
        await mallory.send_json({"type": "signal", "to": "bob", "data": {"ok": True}})
        assert await recv(bob) == {"type": "signal", "from": "mallory", "data": {"ok": True}}
        assert server.rooms == {"lab": ["mallory", "bob"]}
        await check_serving(s, server.url)

    run(test)


def test_oversized_frames_close_the_sender_only(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        alice = await joined(s, server.url, "alice", "lab")
        bob = await joined(s, server.url, "bob", "lab")
        assert await recv(alice) == {"type": "joined", "room": "lab", "user": "bob"}
        # exactly at the limit: relayed
        head = '{"type":"signal","to":"bob","data":{"pad":"'
        tail = '"}}'
        frame = head + "p" * (65536 - len(head) - len(tail)) + tail
        assert len(frame.encode()) == 65536
        await alice.send_str(frame)
        got = await recv(bob)
        assert got["from"] == "alice" and len(got["data"]["pad"]) == 65536 - len(head) - len(tail)
        # one byte over (counted in UTF-8 bytes, not characters): error, then close 1009
        over = head + "é" * ((65536 - len(head) - len(tail)) // 2) + "pp" + tail
        assert len(over) < 65536 < len(over.encode())
        await alice.send_str(over)
        await expect_error(alice, "too-large", fatal=True, close=1009)
        assert await recv(bob) == {"type": "left", "room": "lab", "user": "alice"}
        # far over: the websocket layer itself closes with 1009
        carol = await joined(s, server.url, "carol", "lab")
        assert await recv(bob) == {"type": "joined", "room": "lab", "user": "carol"}
        await carol.send_str("x" * (1 << 20))
        msg = await carol.receive(timeout=3)
        while msg.type == TEXT:  # a too-large error may or may not come first
            assert json.loads(msg.data)["code"] == "too-large"
            msg = await carol.receive(timeout=3)
        assert msg.type in CLOSING_TYPES and carol.close_code == 1009
        assert await recv(bob) == {"type": "left", "room": "lab", "user": "carol"}
        await ping(bob)
        await check_serving(s, server.url)

    run(test)


# -- flooding and slow readers --------------------------------------------------------------


def test_flood_is_rate_limited_while_others_are_served(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        flooder = await joined(s, server.url, "flooder", "lab")
        a = await joined(s, server.url, "a", "calm")
        b = await joined(s, server.url, "b", "calm")
        assert await recv(a) == {"type": "joined", "room": "calm", "user": "b"}

        async def flood() -> tuple[int, int, float]:
            t0 = time.monotonic()
            for _ in range(300):
                await flooder.send_str('{"type":"ping"}')
            pongs = limited = 0
            while pongs + limited < 300:
                reply = await recv(flooder)
                if reply["type"] == "pong":
                    pongs += 1
                else:
                    assert reply["code"] == "rate-limited" and reply["fatal"] is False, reply
                    limited += 1
            return pongs, limited, time.monotonic() - t0

        async def calm() -> float:
            worst = 0.0
            for i in range(30):
                t0 = time.monotonic()
                await a.send_json({"type": "signal", "to": "b", "data": {"i": i}})
                assert await recv(b) == {"type": "signal", "from": "a", "data": {"i": i}}
                worst = max(worst, time.monotonic() - t0)
            return worst

        (pongs, limited, took), worst = await asyncio.gather(flood(), calm())
        # bursts of 100 (hello took one), then 50/s: only ~99 + 50*took frames get through
        assert 99 <= pongs <= 99 + 50 * took + 2, (pongs, took)
        assert limited == 300 - pongs and limited >= 150
        assert worst < 1.0, f"a calm client waited {worst:.3f} s during the flood"
        await asyncio.sleep(0.1)  # the bucket refills...
        await ping(flooder)  # ...and the flooder was never disconnected
        await check_serving(s, server.url)

    run(test)


def test_endless_flood_is_disconnected_after_500_dropped_frames(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        flooder = await joined(s, server.url, "flooder", "lab")
        watcher = await joined(s, server.url, "watcher", "lab")
        for _ in range(800):
            await flooder.send_str('{"type":"ping"}')
        errors: list[dict[str, Any]] = []
        while True:
            msg = await flooder.receive(timeout=5)
            if msg.type != TEXT:
                break
            reply = json.loads(msg.data)
            if reply["type"] == "error":
                errors.append(reply)
        assert flooder.close_code == 4008
        assert len(errors) == 500
        assert all(e["code"] == "rate-limited" for e in errors)
        assert [e["fatal"] for e in errors] == [False] * 499 + [True]
        assert await recv(watcher) == {"type": "left", "room": "lab", "user": "flooder"}
        await check_serving(s, server.url)

    run(test)


def test_client_that_never_reads_is_dropped_without_stalling_others() -> None:
    with RoomServer(rate=10_000, burst=10_000, max_backlog=256 * 1024) as server:

        async def test(s: aiohttp.ClientSession) -> None:
            sloth = await joined(s, server.url, "sloth", "lab")  # never reads again
            watcher = await joined(s, server.url, "watcher", "lab")
            sender = await joined(s, server.url, "sender", None)
            blob = {"type": "signal", "to": "sloth", "data": {"pad": "z" * 60_000}}
            text = json.dumps(blob)
            for sent in range(1, 3000):  # at most ~180 MB, far more than kernel buffers hold
                await sender.send_str(text)
                if sent % 20 == 0:
                    await sender.send_json({"type": "ping"})
                    reply = await recv(sender, timeout=5)
                    if reply.get("code") == "no-such-user":
                        break
                    assert reply == {"type": "pong"}, reply
            else:
                pytest.fail("a client that never reads was never dropped")
            assert await recv(watcher) == {"type": "left", "room": "lab", "user": "sloth"}
            await ping(watcher)
            await check_serving(s, server.url)
            del sloth

        run(test)


# -- lifecycle ----------------------------------------------------------------------------


def test_close_then_reopen_on_the_same_port() -> None:
    server = RoomServer()
    port = server.port
    with pytest.raises(OSError):
        RoomServer(port=port)  # in use while the first one runs

    async def before(s: aiohttp.ClientSession) -> None:
        ws = await joined(s, server.url, "alice", "lab")
        await asyncio.get_running_loop().run_in_executor(None, server.close)
        assert await closed_with(ws) == 1001  # going away

    run(before)
    assert server.closed
    server.close()  # idempotent
    with RoomServer(port=port) as again:
        assert again.port == port and again.url == server.url

        async def after(s: aiohttp.ClientSession) -> None:
            ws = await joined(s, again.url, "alice", "lab")  # the name was freed with the old server
            await ping(ws)
            await check_serving(s, again.url)

        run(after)


def test_health_and_plain_http(server: RoomServer) -> None:
    async def test(s: aiohttp.ClientSession) -> None:
        base = f"http://127.0.0.1:{server.port}"
        async with s.get(base + "/health") as r:
            assert r.status == 200 and (await r.text()) == "ok"
        async with s.get(base + "/") as r:
            assert r.status == 426 and "websocket" in (await r.text())

    run(test)


# -- command line ---------------------------------------------------------------------------------


def _cli(*args: str) -> subprocess.Popen[str]:
    root = Path(ivisit_nb.room.__file__).parents[2]  # where this ivisit_nb was imported from
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
    return subprocess.Popen(
        [sys.executable, "-m", "ivisit_nb", *args],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=root,
    )


def _line(proc: subprocess.Popen[str], timeout: float = 30.0) -> str:
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], timeout)
    if not ready:
        proc.kill()
        pytest.fail(f"no output from the CLI within {timeout} s; stderr: {proc.stderr.read() if proc.stderr else ''}")
    return proc.stdout.readline()


def _stop(proc: subprocess.Popen[str]) -> int:
    proc.terminate()
    try:
        return proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise


@pytest.mark.timeout(60)  # starting Python and importing the package can be slow on a busy machine
def test_cli_server_prints_its_url_and_serves() -> None:
    proc = _cli("server", "--port", "0")
    try:
        line = _line(proc)
        m = re.fullmatch(r"listening on (ws://127\.0\.0\.1:(\d+)/)\n", line)
        assert m, repr(line)
        assert int(m.group(2)) > 0

        async def test(s: aiohttp.ClientSession) -> None:
            await check_serving(s, m.group(1))

        run(test)
    finally:
        assert _stop(proc) == 0  # SIGTERM is a clean shutdown


@pytest.mark.timeout(60)  # starting Python and importing the package can be slow on a busy machine
def test_cli_server_json_events_and_token() -> None:
    proc = _cli("--json", "server", "--port", "0", "--token", "tok", "--max-members", "1")
    try:
        first = json.loads(_line(proc))
        assert first["event"] == "listening" and re.fullmatch(r"ws://127\.0\.0\.1:\d+/", first["url"])
        url = first["url"]

        async def test(s: aiohttp.ClientSession) -> None:
            ws, reply = await join(s, url, "alice", "lab")
            assert reply["code"] == "bad-token"
            ws = await joined(s, url, "alice", "lab", token="tok")
            assert json.loads(_line(proc)) == {"event": "joined", "user": "alice", "room": "lab"}
            other, reply = await join(s, url, "bob", "lab", token="tok")
            assert reply["code"] == "room-full"  # --max-members 1
            await ws.send_json({"type": "leave"})
            assert await closed_with(ws) == 1000
            assert json.loads(_line(proc)) == {"event": "left", "user": "alice", "room": "lab"}

        run(test)
    finally:
        assert _stop(proc) == 0


@pytest.mark.timeout(60)  # starting Python and importing the package can be slow on a busy machine
def test_cli_refuses_a_port_in_use(server: RoomServer) -> None:
    proc = _cli("server", "--port", str(server.port), "--json")
    out, _ = proc.communicate(timeout=30)
    assert proc.returncode == 1
    event = json.loads(out.splitlines()[0])
    assert event["event"] == "error" and "--port" in event["message"]


@pytest.mark.timeout(60)  # starting Python and importing the package can be slow on a busy machine
def test_cli_server_keeps_serving_when_nobody_reads_its_stdout() -> None:
    proc = _cli("--json", "server", "--port", "0")
    try:
        url = json.loads(_line(proc))["url"]  # ...and never read stdout again

        async def test(s: aiohttp.ClientSession) -> None:
            room = "r" * 64
            # ~165-byte presence lines: 300 joins + 300 leaves overflow a 64 KiB pipe
            for i in range(300):
                ws = await joined(s, url, f"{i:04d}" + "u" * 60, room)
                await ws.close()
            await check_serving(s, url)

        t0 = time.monotonic()
        run(test)
        assert time.monotonic() - t0 < 20
    finally:
        assert _stop(proc) == 0
