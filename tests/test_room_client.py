"""RoomClient against a real room server on 127.0.0.1: canonical names, refusals, reconnecting."""

from __future__ import annotations

import asyncio
import time
from typing import Any, Awaitable, Callable

import aiohttp
import pytest

from ivisit_nb.room import RoomServer
from ivisit_nb.room.app import STALE_AFTER
from ivisit_nb.room.client import BACKOFF_MAX, NAME_TAKEN_GRACE, JoinRefused, RoomClient

pytestmark = pytest.mark.timeout(60)


class Inbox:
    """A RoomClient handler that records messages and lets a test wait for one."""

    def __init__(self, on_message: Callable[[dict[str, Any]], Awaitable[None]] | None = None) -> None:
        self.messages: list[dict[str, Any]] = []
        self.on_message = on_message
        self._changed = asyncio.Event()

    async def __call__(self, message: dict[str, Any]) -> None:
        self.messages.append(message)
        self._changed.set()
        if self.on_message is not None:
            await self.on_message(message)

    def types(self) -> list[str]:
        return [m["type"] for m in self.messages]

    async def wait_for(self, kind: str, timeout: float = 10.0) -> dict[str, Any]:
        async def wait() -> dict[str, Any]:
            while True:
                for m in self.messages:
                    if m["type"] == kind:
                        return m
                self._changed.clear()
                await self._changed.wait()

        return await asyncio.wait_for(wait(), timeout)


async def in_thread(fn: Callable[[], Any]) -> Any:
    """Run a blocking call (starting or closing a RoomServer) without blocking the loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn)


async def squat(session: aiohttp.ClientSession, url: str, user: str) -> aiohttp.ClientWebSocketResponse:
    """Join ``user`` with a bare websocket, as another client would."""
    ws = await session.ws_connect(url)
    await ws.send_json({"type": "hello", "version": 1, "user": user, "room": "lab"})
    reply = await ws.receive_json(timeout=5)
    assert reply["type"] == "welcome", reply
    return ws


async def wait_until(check: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        assert time.monotonic() < deadline, "timed out"
        await asyncio.sleep(0.02)


def test_grace_outlasts_the_servers_stale_connection_timeout() -> None:
    assert NAME_TAKEN_GRACE > STALE_AFTER


def test_connect_adopts_the_canonical_name() -> None:
    with RoomServer() as server:

        async def main() -> None:
            inbox = Inbox()
            client = RoomClient(server.url, "Zoe\u0301", "lab", inbox)
            welcome = await client.connect()
            try:
                assert welcome["user"] == "Zoé" and client.user == "Zoé"
                assert server.rooms == {"lab": ["Zoé"]}
            finally:
                await client.close()

        asyncio.run(main())


def test_first_connect_raises_for_refusals() -> None:
    with RoomServer() as server:

        async def main() -> None:
            async with aiohttp.ClientSession() as s:
                carol = await squat(s, server.url, "carol")
                with pytest.raises(JoinRefused) as err:
                    await RoomClient(server.url, "c\u0430rol", "lab", Inbox()).connect()
                assert err.value.code == "name-taken" and "too similar to 'carol'" in err.value.message
                with pytest.raises(JoinRefused) as err:
                    await RoomClient(server.url, "dave\u200b", "lab", Inbox()).connect()
                assert err.value.code == "bad-name" and "U+200B ZERO WIDTH SPACE" in err.value.message
                await carol.close()

        asyncio.run(main())


def test_fatal_refusal_on_reconnect_is_reported_and_stops_retrying() -> None:
    server = RoomServer()
    port = server.port

    async def main() -> None:
        inbox = Inbox()
        client = RoomClient(server.url, "alice", "lab", inbox)
        await client.connect()
        try:
            # the server comes back, but now wants a token alice does not have
            await in_thread(server.close)
            with RoomServer(port=port, token="new-secret") as again:
                refused = await inbox.wait_for("refused")
                assert refused == {"type": "refused", "code": "bad-token", "message": refused["message"]}
                assert "token" in refused["message"]
                assert inbox.types() == ["disconnected", "refused"]
                assert client.refused is not None and client.refused.code == "bad-token"
                assert not client.connected
                attempts = again.hub.accepted
                assert attempts >= 1
                await asyncio.sleep(BACKOFF_MAX + 1.0)
                assert again.hub.accepted == attempts, "the client kept trying after a fatal refusal"
                assert inbox.types() == ["disconnected", "refused"]
        finally:
            await client.close()

    asyncio.run(main())


def test_transient_failures_keep_retrying_until_the_server_is_back() -> None:
    server = RoomServer()
    port = server.port

    async def main() -> None:
        inbox = Inbox()
        client = RoomClient(server.url, "alice", "lab", inbox)
        await client.connect()
        try:
            await in_thread(server.close)
            await inbox.wait_for("disconnected")
            await asyncio.sleep(3.0)  # nothing listens: every attempt is refused by the OS
            assert inbox.types() == ["disconnected"] and client.refused is None
            with RoomServer(port=port) as again:
                welcome = await inbox.wait_for("welcome", timeout=BACKOFF_MAX + 5.0)
                assert welcome["user"] == "alice" and client.connected
                assert again.rooms == {"lab": ["alice"]}
        finally:
            await client.close()

    asyncio.run(main())


def _restart_with_squatter(grace: float, squatter_leaves: bool) -> list[str]:
    """Lose the server; while alice is away, someone else takes a look-alike of her name.

    Returns the types of the messages alice's handler got.
    """
    server = RoomServer()
    port = server.port
    again: list[RoomServer] = []

    async def main() -> list[str]:
        async with aiohttp.ClientSession() as s:
            squatter: list[aiohttp.ClientWebSocketResponse] = []
            closed = asyncio.Event()

            async def on_message(message: dict[str, Any]) -> None:
                # runs before the client starts rejoining: the look-alike gets in first
                if message["type"] == "disconnected":
                    await closed.wait()  # until the old server has let go of the port
                    again.append(await in_thread(lambda: RoomServer(port=port)))
                    squatter.append(await squat(s, again[0].url, "Alice"))

            inbox = Inbox(on_message)
            client = RoomClient(server.url, "alice", "lab", inbox, name_taken_grace=grace)
            await client.connect()
            try:
                await in_thread(server.close)
                closed.set()
                await wait_until(lambda: bool(again) and again[0].hub.accepted >= 3)  # squatter + 2 refused tries
                if squatter_leaves:
                    await squatter[0].close()
                    await inbox.wait_for("welcome")
                    assert again[0].rooms == {"lab": ["alice"]}
                else:
                    refused = await inbox.wait_for("refused")
                    assert refused["code"] == "name-taken"
                    assert "too similar to 'Alice'" in refused["message"]
                return inbox.types()
            finally:
                await client.close()

    try:
        return asyncio.run(main())
    finally:
        for srv in again:
            srv.close()


def test_name_taken_on_rejoin_is_retried_within_the_grace() -> None:
    assert _restart_with_squatter(grace=30.0, squatter_leaves=True) == ["disconnected", "welcome"]


def test_name_taken_on_rejoin_is_fatal_after_the_grace() -> None:
    assert _restart_with_squatter(grace=1.0, squatter_leaves=False) == ["disconnected", "refused"]
