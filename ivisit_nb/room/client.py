"""The room-server client a session uses: join, presence, signalling, reconnect.

It runs on the session's engine loop. After the server goes away it reconnects
with backoff and reports the room roster again, so the mesh can be re-formed.
A refusal that retrying cannot fix (wrong token, room full, a name the server
does not accept or that someone else holds) ends the reconnecting and is
reported once, as ``{"type": "refused", ...}``.

Given several URLs (the instances of a cluster, ``docs/room.md``), it tries
them in turn: the one that worked last first, then the others.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any, Awaitable, Callable

import aiohttp

log = logging.getLogger("ivisit_nb.room.client")

# Refusals that the same hello would get again: stop reconnecting. ("unavailable", a
# cluster instance without its Redis, and "rate-limited" are worth retrying.)
FATAL_CODES = frozenset({"bad-token", "name-taken", "room-full", "bad-name", "bad-message"})

# After a network blip the server may still hold our old connection, and so our
# name, until it notices the connection is dead: at most 30 s after our last
# frame (ivisit_nb.room.app.STALE_AFTER). "name-taken" within this many seconds
# of losing the connection is therefore retried, not fatal.
NAME_TAKEN_GRACE = 35.0

BACKOFF_FIRST = 0.2  # seconds before the first reconnect attempt; doubles up to...
BACKOFF_MAX = 2.0


class JoinRefused(RuntimeError):
    """The room server refused to let us in (wrong token, name taken, room full...).

    ``code`` is the protocol's error code, ``message`` the server's explanation.
    """

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{message} [{code}]")
        self.code = code
        self.message = message


class RoomClient:
    """One websocket to the room server.

    ``handler(message)`` gets every server frame after ``welcome`` (``joined``,
    ``left``, ``signal``, ``error``), plus synthetic messages:

    * ``{"type": "disconnected", "reason": ...}`` when the connection is lost;
      the client then reconnects with backoff (0.2 s, doubling, at most 2 s)
      for as long as the failures are transient (refused connections,
      timeouts, a server that is restarting);
    * a fresh ``{"type": "welcome", ...}`` after each reconnect;
    * ``{"type": "refused", "code": ..., "message": ...}`` when the server
      refuses a reconnect for good (a code in :data:`FATAL_CODES`, e.g. it was
      restarted with a token we do not have). Reconnecting stops there;
      :attr:`refused` holds the refusal. One exception: ``name-taken`` is
      retried for :data:`NAME_TAKEN_GRACE` seconds after the connection was
      lost, because the server may still hold our old connection until it
      sees that it is dead; after that it is fatal too.

    The first :meth:`connect` raises :class:`JoinRefused` for any refusal
    instead (no grace there: nobody else held our name before).

    ``url`` is one room-server URL or a list of them (instances of one
    cluster). :meth:`connect` tries them in order until one welcomes us; a
    server that cannot be reached or answers ``unavailable`` counts as a
    failure to try the next one, any other refusal is raised at once. Each
    reconnect round tries the URL that worked last first, then the others in
    order, and backs off only after a whole round failed. :attr:`url` is the
    URL in use (or last used), :attr:`urls` all of them.

    :attr:`user` is the name we asked for until the server welcomes us, then
    the server's canonical form of it (``welcome["user"]``, NFC), which later
    reconnects also use.
    """

    def __init__(
        self,
        url: str | list[str] | tuple[str, ...],
        user: str,
        room: str | None,
        handler: Callable[[dict[str, Any]], Awaitable[None]],
        token: str | None = None,
        *,
        name_taken_grace: float = NAME_TAKEN_GRACE,
    ) -> None:
        urls = [url] if isinstance(url, str) else list(url)
        if not urls or not all(isinstance(u, str) and u for u in urls):
            raise ValueError(f"url must be a room-server URL or a non-empty list of them, not {url!r}")
        self.urls: list[str] = urls
        self.url = urls[0]
        self.user, self.room, self.token = user, room, token
        self.name_taken_grace = name_taken_grace
        self._handler = handler
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._task: asyncio.Task[None] | None = None
        self._closing = False
        self.connected = False
        self.refused: JoinRefused | None = None

    async def connect(self, timeout: float = 10.0) -> dict[str, Any]:
        """Join and return the ``welcome``; raises :class:`JoinRefused` or ``OSError``.

        With several URLs, ``timeout`` is for the whole round; the error raised
        when none of them welcomed us is the last one's.
        """
        self._http = aiohttp.ClientSession()
        try:
            welcome = await asyncio.wait_for(self._first_join(), timeout)
        except BaseException:
            await self._http.close()
            raise
        self._task = asyncio.ensure_future(self._run())
        return welcome

    async def _first_join(self) -> dict[str, Any]:
        error: BaseException | None = None
        for url in self.urls:
            try:
                return await self._open(url)
            except JoinRefused as exc:
                if exc.code != "unavailable":
                    raise
                error = exc
            except (OSError, aiohttp.ClientError, ConnectionError) as exc:
                error = exc
            if len(self.urls) > 1:
                log.info("room server %s: %s; trying the next one", url, error)
        assert error is not None
        raise error

    def _rotation(self) -> list[str]:
        """The URLs for one reconnect round: the one that worked last first."""
        return [self.url] + [u for u in self.urls if u != self.url]

    async def _open(self, url: str | None = None) -> dict[str, Any]:
        """One join attempt at ``url`` (default :attr:`url`): connect, hello, and the server's answer."""
        assert self._http is not None
        url = self.url if url is None else url
        ws = await self._http.ws_connect(url, heartbeat=15.0, max_msg_size=1 << 20)
        try:
            hello: dict[str, Any] = {"type": "hello", "version": 1, "user": self.user, "room": self.room}
            if self.token is not None:
                hello["token"] = self.token
            await ws.send_str(json.dumps(hello))
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise ConnectionError(f"room server closed the connection during join ({msg.type.name})")
            try:
                reply = json.loads(msg.data)
            except ValueError:
                raise ConnectionError("room server answered hello with something that is not JSON") from None
            if not isinstance(reply, dict):
                raise ConnectionError("room server answered hello with something that is not a JSON object")
            if reply.get("type") == "error":
                raise JoinRefused(str(reply.get("code", "error")), str(reply.get("message", "refused")))
            if reply.get("type") != "welcome":
                raise ConnectionError(f"room server sent {reply.get('type')!r} instead of welcome")
        except Exception:
            await ws.close()
            raise
        if isinstance(reply.get("user"), str):
            self.user = reply["user"]  # the canonical form of our name
        self.url = url
        self._ws = ws
        self.connected = True
        return reply

    async def _run(self) -> None:
        while not self._closing:
            await self._pump()
            if self._closing:
                break
            self.connected = False
            lost_at = asyncio.get_running_loop().time()
            await self._deliver({"type": "disconnected", "reason": "lost the room server"})
            refusal = await self._rejoin(lost_at)
            if refusal is not None:
                self.refused = refusal
                log.warning("room server refused to let us back in: %s", refusal)
                await self._deliver({"type": "refused", "code": refusal.code, "message": refusal.message})
                return

    async def _rejoin(self, lost_at: float) -> JoinRefused | None:
        """Reconnect with backoff until welcomed (``None``) or fatally refused (the refusal)."""
        loop = asyncio.get_running_loop()
        delay = BACKOFF_FIRST
        while not self._closing:
            await asyncio.sleep(delay)
            delay = min(delay * 2, BACKOFF_MAX)
            for url in self._rotation():
                if self._closing:
                    return None
                try:
                    welcome = await asyncio.wait_for(self._open(url), 5.0)
                except JoinRefused as exc:
                    if exc.code == "name-taken" and loop.time() - lost_at < self.name_taken_grace:
                        log.info("rejoin refused, probably by our own old connection; retrying: %s", exc)
                        continue
                    if exc.code in FATAL_CODES:
                        return exc
                    log.info("rejoin at %s refused; retrying: %s", url, exc)  # unavailable, rate-limited
                    continue
                except (OSError, asyncio.TimeoutError, aiohttp.ClientError, ConnectionError):
                    continue  # this server is not back yet
                await self._deliver(welcome)
                return None
        return None

    async def _deliver(self, message: dict[str, Any]) -> None:
        try:
            await self._handler(message)
        except Exception:
            log.exception("handling %s from the room server", message.get("type"))

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
                if isinstance(data, dict):
                    await self._deliver(data)
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
