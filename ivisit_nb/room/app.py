"""The room server's I/O: an aiohttp websocket app around a :class:`RoomHub`.

:class:`RoomApp` gives each websocket a connection id, feeds the hub what the
socket receives, and carries out the hub's :class:`~ivisit_nb.room.hub.Outcome`:
frames go to the connections' outbound queues, closes follow them. It runs on
the caller's event loop; :mod:`ivisit_nb.room.server` runs it in a thread.
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import logging
import socket
import time
from typing import Any

from aiohttp import WSMsgType, web

from .directory import Address, ConnId, Directory, SharedDirectory, Unavailable
from .hub import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL,
    CLOSE_NORMAL,
    RENEW_EVERY,
    EventCallback,
    Outcome,
    RoomHub,
    WelcomeExtras,
)

log = logging.getLogger("ivisit_nb.room")

HEARTBEAT = 20.0  # websocket ping after 20 s of silence, dropped 10 s later without a pong
STALE_AFTER = HEARTBEAT * 1.5  # so a silent connection is gone at most 30 s after its last frame
HELLO_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # how long to wait for a client's close frame
MAX_BACKLOG = 8 * 1024 * 1024  # unsent bytes queued for one client before it is dropped


class _Link:
    """The I/O side of one websocket: an outbound queue drained by a writer task.

    Relaying never waits for a recipient's socket, so a client that reads slowly
    only delays itself; past ``max_backlog`` unsent bytes it is dropped.
    """

    __slots__ = ("ws", "transport", "queue", "backlog", "max_backlog", "wake", "close_code", "reason")

    def __init__(self, ws: web.WebSocketResponse, transport: asyncio.BaseTransport | None, max_backlog: int) -> None:
        self.ws = ws
        self.transport = transport
        self.queue: collections.deque[str] = collections.deque()
        self.backlog = 0
        self.max_backlog = max_backlog
        self.wake = asyncio.Event()
        self.close_code: int | None = None
        self.reason = ""

    def push(self, text: str) -> None:
        if self.close_code is not None:
            return
        self.backlog += len(text)
        if self.backlog > self.max_backlog:
            log.warning("dropping a client that does not read its frames (%d bytes queued)", self.backlog)
            self.abort()
            return
        self.queue.append(text)
        self.wake.set()

    def finish(self, code: int, reason: str = "") -> None:
        """Send what is queued, then close with ``code``."""
        if self.close_code is None:
            self.close_code, self.reason = code, reason
            self.wake.set()

    def abort(self) -> None:
        self.close_code = self.close_code or CLOSE_INTERNAL
        self.queue.clear()
        self.backlog = 0
        self.wake.set()
        if self.transport is not None:
            self.transport.abort()  # type: ignore[attr-defined]

    async def run(self) -> None:
        ws = self.ws
        try:
            while True:
                while self.queue:
                    text = self.queue.popleft()
                    self.backlog -= len(text)
                    await ws.send_str(text)
                if self.close_code is not None:
                    break
                self.wake.clear()
                await self.wake.wait()
            if not ws.closed:
                await ws.close(code=self.close_code, message=self.reason.encode())
        except Exception as exc:  # the socket went away under us: drop the connection
            log.debug("writer stopped: %r", exc)
            self.abort()


class RoomApp:
    """The aiohttp room server around a :class:`RoomHub`, on the running event loop.

    ``await app.start()`` binds and listens (port 0 picks a free port, see
    :attr:`port`); ``await app.stop()`` closes every client and the listener.
    ``directory`` and ``welcome_extras`` are passed to the hub (default directory: a fresh
    in-memory one). A :class:`~ivisit_nb.room.directory.SharedDirectory` (a cluster,
    e.g. :class:`~ivisit_nb.room.redis_directory.RedisDirectory`) is started and
    stopped with the app; each ``hello`` is admitted by it before the hub sees it.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        token: str | None = None,
        max_members: int = 50,
        rate: float = 50.0,
        burst: int = 100,
        max_message: int = 65536,
        hello_timeout: float = HELLO_TIMEOUT,
        max_backlog: int = MAX_BACKLOG,
        on_event: EventCallback | None = None,
        backlog: int = 1024,
        directory: Directory | None = None,
        welcome_extras: WelcomeExtras | None = None,
    ) -> None:
        self.hub = RoomHub(
            token=token, max_members=max_members, rate=rate, burst=burst,
            max_message=max_message, on_event=on_event, directory=directory,
            welcome_extras=welcome_extras,
        )
        self.host = host
        self.port = port
        self.hello_timeout = hello_timeout
        self.max_backlog = max_backlog
        self._listen_backlog = backlog
        self._runner: web.AppRunner | None = None
        self._links: dict[ConnId, _Link] = {}
        self._handlers: set[asyncio.Task[Any]] = set()
        self._ids = itertools.count(1)
        self._ticker: asyncio.Task[None] | None = None
        shared = self.hub.directory
        self._shared: SharedDirectory | None = shared if isinstance(shared, SharedDirectory) else None

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind (with SO_REUSEADDR) and start serving; raises ``OSError`` if the port is taken.

        With a shared directory, joins the cluster first (and raises what its
        ``start`` raises, e.g. :class:`~ivisit_nb.room.redis_directory.ClusterError`).
        """
        if self._shared is not None:
            await self._shared.start(
                self.hub.instance, token=self.hub.token, on_presence=self._on_presence,
                on_frame=self._on_frame, on_lost=self._on_lost,
            )
        app = web.Application()
        app.router.add_get("/", self._handle)
        app.router.add_get("/health", self._health)
        runner = web.AppRunner(app, access_log=None, shutdown_timeout=1.0)
        await runner.setup()
        try:
            family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                sock.bind((self.host, self.port))
            except BaseException:
                sock.close()
                raise
            site = web.SockSite(runner, sock, backlog=self._listen_backlog)
            await site.start()
        except BaseException:
            await runner.cleanup()
            if self._shared is not None:
                await self._shared.stop()
            raise
        self.port = sock.getsockname()[1]
        self._runner = runner
        self._ticker = asyncio.ensure_future(self._tick_forever())
        log.info("room server listening on %s", self.url)

    async def stop(self) -> None:
        """Close every client (code 1001) and stop listening. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        if self._ticker is not None:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
        for link in list(self._links.values()):
            link.finish(CLOSE_GOING_AWAY, "server-shutdown")
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=CLOSE_TIMEOUT + 1.0)
        for link in list(self._links.values()):
            link.abort()
        await runner.cleanup()
        if self._shared is not None:
            await self._shared.stop()
        log.info("room server on port %d stopped", self.port)

    async def _health(self, request: web.Request) -> web.Response:
        shared = self._shared
        if shared is not None and not getattr(shared, "available", True):
            problem = getattr(shared, "problem", "") or "the shared directory is away"
            return web.Response(status=503, text=f"unavailable: {problem}\n")
        return web.Response(text="ok")

    # -- a shared directory's callbacks (on this loop) ---------------------------------

    def _on_presence(self, room: str, user: str, joined: bool) -> None:
        self._dispatch(self.hub.presence(room, user, joined, time.monotonic()))

    def _on_frame(self, conn: str, text: str) -> None:
        conn_id = int(conn) if conn.isascii() and conn.isdigit() else conn  # our ids are ints
        self._dispatch(self.hub.deliver(conn_id, text))

    def _on_lost(self) -> None:
        self._dispatch(self.hub.tick(time.monotonic()))  # closes the connections that lost their names

    async def _admit(self, conn: ConnId, frame: str | bytes) -> Outcome | None:
        """With a shared directory: have it admit the name of a ``hello`` before the hub sees it.

        Returns the outcome to dispatch, or ``None`` if this frame is not such a
        ``hello`` (the hub handles it as usual).
        """
        shared, hub = self._shared, self.hub
        if shared is None or hub.joined(conn):
            return None
        hello = hub.admission(conn, frame)
        if hello is None:
            return None
        owner = Address(hub.instance, conn)
        try:
            await shared.admit(hello.user, hello.key, hello.room, owner, hub.max_members, hub.name_lease)
        except Unavailable as exc:
            return hub.unavailable(conn, str(exc))
        out = hub.receive(conn, frame, time.monotonic())
        if not hub.joined(conn):
            shared.release(hello.key, owner)  # refused after all: give the claim back
        return out

    async def _tick_forever(self) -> None:
        """Keep the names of live connections claimed (see :meth:`RoomHub.tick`)."""
        while True:
            await asyncio.sleep(RENEW_EVERY)
            try:
                self._dispatch(self.hub.tick(time.monotonic()))
            except Exception:
                log.exception("renewing name claims")

    def _dispatch(self, out: Outcome) -> None:
        for conn, text in out.sends:
            link = self._links.get(conn)
            if link is not None:
                link.push(text)
        for conn, code, reason in out.closes:
            link = self._links.get(conn)
            if link is not None:
                link.finish(code, reason)
        if out.forwards and self._shared is not None:
            for address, text in out.forwards:
                self._shared.forward(address, text)

    async def _handle(self, request: web.Request) -> web.StreamResponse:
        ws = web.WebSocketResponse(
            heartbeat=HEARTBEAT, max_msg_size=4 * self.hub.max_message, timeout=CLOSE_TIMEOUT
        )
        if not ws.can_prepare(request).ok:
            return web.Response(
                status=426,
                text="This is an ivisit_nb room server: connect a websocket client to this URL "
                "(GET /health answers 'ok').\n",
            )
        if self._runner is None:
            return web.Response(status=503, text="the room server is shutting down\n")
        await ws.prepare(request)
        hub = self.hub
        loop = asyncio.get_running_loop()
        conn = next(self._ids)
        link = _Link(ws, request.transport, self.max_backlog)
        task = asyncio.current_task()
        assert task is not None
        self._links[conn] = link
        self._handlers.add(task)
        hub.connect(conn, request.remote or "?", time.monotonic())
        writer = asyncio.ensure_future(link.run())
        deadline = loop.time() + self.hello_timeout
        try:
            while link.close_code is None:
                timeout = None if hub.joined(conn) else max(deadline - loop.time(), 0.001)
                try:
                    msg = await ws.receive(timeout=timeout)
                except asyncio.TimeoutError:
                    out = hub.expire(conn, time.monotonic())
                else:
                    if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                        admitted = None if self._shared is None else await self._admit(conn, msg.data)
                        out = admitted if admitted is not None else hub.receive(conn, msg.data, time.monotonic())
                    else:  # CLOSE / CLOSING / CLOSED / ERROR (e.g. over aiohttp's size cap)
                        if msg.type is WSMsgType.ERROR:
                            log.info("connection %d: websocket error %r", conn, msg.data)
                        break
                self._dispatch(out)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %d failed; closing it", conn)
            link.finish(CLOSE_INTERNAL, "internal-error")
        finally:
            try:
                self._dispatch(hub.disconnect(conn, time.monotonic()))
            except Exception:
                log.exception("cleaning up connection %d", conn)
            link.finish(CLOSE_NORMAL)
            try:
                await asyncio.wait_for(writer, CLOSE_TIMEOUT + 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                link.abort()
            except Exception:
                log.exception("closing connection %d", conn)
            self._links.pop(conn, None)
            self._handlers.discard(task)
        return ws
