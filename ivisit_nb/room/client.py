"""The room-server client a session uses: join, presence, signalling, reconnect.

It runs on the session's engine loop. After the server goes away it reconnects
with backoff and reports the room roster again, so the mesh can be re-formed.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

import aiohttp

log = logging.getLogger("ivisit_nb.room.client")

FATAL_CODES = {"bad-token", "name-taken", "room-full", "not-joined", "bad-message"}


class JoinRefused(RuntimeError):
    """The room server refused to let us in (wrong token, name taken, room full...)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code


class RoomClient:
    """One websocket to the room server.

    ``handler(message)`` gets every server frame after ``welcome`` (``joined``,
    ``left``, ``signal``, ``error``), plus synthetic ``{"type": "disconnected"}``
    and, after a reconnect, a fresh ``{"type": "welcome", ...}``.
    """

    def __init__(
        self,
        url: str,
        user: str,
        room: str | None,
        handler: Callable[[dict[str, Any]], Awaitable[None]],
        token: str | None = None,
    ) -> None:
        self.url, self.user, self.room, self.token = url, user, room, token
        self._handler = handler
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Join and return the ``welcome``; raises :class:`JoinRefused` or ``OSError``."""
        self._http = aiohttp.ClientSession()
        try:
            welcome = await asyncio.wait_for(self._open(), timeout)
        except BaseException:
            await self._http.close()
            raise
        self._task = asyncio.ensure_future(self._run())
        return welcome

    async def _open(self) -> dict[str, Any]:
        assert self._http is not None
        ws = await self._http.ws_connect(self.url, heartbeat=15.0, max_msg_size=1 << 20)
        hello: dict[str, Any] = {"type": "hello", "version": 1, "user": self.user, "room": self.room}
        if self.token is not None:
            hello["token"] = self.token
        await ws.send_str(json.dumps(hello))
        msg = await ws.receive()
        if msg.type != aiohttp.WSMsgType.TEXT:
            await ws.close()
            raise ConnectionError(f"room server closed the connection during join ({msg.type.name})")
        reply = json.loads(msg.data)
        if reply.get("type") == "error":
            await ws.close()
            raise JoinRefused(reply.get("code", "error"), reply.get("message", "refused"))
        if reply.get("type") != "welcome":
            await ws.close()
            raise ConnectionError(f"room server sent {reply.get('type')!r} instead of welcome")
        self._ws = ws
        self.connected = True
        return reply

    async def _run(self) -> None:
        delay = 0.2
        while not self._closing:
            await self._pump()
            if self._closing:
                break
            self.connected = False
            await self._handler({"type": "disconnected", "reason": "lost the room server"})
            while not self._closing:  # reconnect with backoff
                await asyncio.sleep(delay)
                delay = min(delay * 2, 2.0)
                try:
                    welcome = await asyncio.wait_for(self._open(), 5.0)
                except JoinRefused as exc:
                    # e.g. the server still holds our old connection for a moment
                    log.info("rejoin refused: %s", exc)
                    continue
                except (OSError, asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
                    continue
                delay = 0.2
                await self._handler(welcome)
                break

    async def _pump(self) -> None:
        ws = self._ws
        assert ws is not None
        try:
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    continue
                try:
                    data = json.loads(msg.data)
                except ValueError:
                    log.warning("room server sent invalid JSON")
                    continue
                try:
                    await self._handler(data)
                except Exception:
                    log.exception("handling %s from the room server", data.get("type"))
        except (aiohttp.ClientError, ConnectionError, asyncio.TimeoutError):
            pass

    async def send(self, message: dict[str, Any]) -> bool:
        """Send one frame; False if we are not connected right now."""
        ws = self._ws
        if ws is None or ws.closed or not self.connected:
            return False
        try:
            await ws.send_str(json.dumps(message))
            return True
        except (ConnectionError, aiohttp.ClientError, RuntimeError):
            return False

    async def signal(self, to: str, data: dict[str, Any]) -> bool:
        """Relay ``data`` to user ``to`` through the server."""
        return await self.send({"type": "signal", "to": to, "data": data})

    async def close(self) -> None:
        """Leave the server and stop reconnecting."""
        self._closing = True
        if self._ws is not None and not self._ws.closed:
            await self.send({"type": "leave"})
            await self._ws.close()
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        if self._http is not None:
            await self._http.close()
        self.connected = False
