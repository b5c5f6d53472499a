"""The room server, ready to run: :func:`serve` on the current event loop, or
:class:`RoomServer` in a background thread of its own.

It only relays signalling (``docs/protocol.md`` section 1); chat text and file
bytes go peer to peer and never pass through it. The layers, from the inside out:

* :mod:`ivisit_nb.room.names` -- which user and room names are allowed, and when
  two look alike.
* :mod:`ivisit_nb.room.directory` -- name claims, room members and routes
  (:class:`MemoryDirectory` for one process).
* :mod:`ivisit_nb.room.hub` -- :class:`RoomHub`, the decisions: pure, no sockets.
* :mod:`ivisit_nb.room.app` -- :class:`RoomApp`, the aiohttp websocket server.
* this module -- :func:`serve` (the CLI's ``server`` command) and
  :class:`RoomServer` (notebooks and tests).
"""

from __future__ import annotations

import asyncio
import logging
import threading
from typing import Any, Callable

from .app import HELLO_TIMEOUT, MAX_BACKLOG, RoomApp
from .directory import Directory
from .hub import RoomHub, WelcomeExtras

log = logging.getLogger("ivisit_nb.room")

__all__ = ["RoomServer", "serve", "RoomApp", "RoomHub"]


async def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    *,
    on_listening: Callable[[str], None] | None = None,
    **options: Any,
) -> None:
    """Run a room server on the current event loop until cancelled.

    ``options`` are those of :class:`RoomApp` (``token``, ``max_members``, ``rate``,
    ``burst``, ``max_message``, ``hello_timeout``, ``on_event``...).
    ``on_listening(url)`` is called once the socket is bound.
    """
    app = RoomApp(host, port, **options)
    await app.start()
    try:
        if on_listening is not None:
            on_listening(app.url)
        await asyncio.Event().wait()
    finally:
        await app.stop()


class RoomServer:
    """A room server running in a background daemon thread with its own event loop.

    Starts on construction and returns once it is listening::

        with RoomServer() as server:
            print(server.url)       # ws://127.0.0.1:PORT/
            print(server.rooms)     # {"lab": ["alice", "bob"]}

    ``port=0`` picks a free port. ``close()`` stops it (idempotent). Raises
    ``OSError`` if the port cannot be bound.
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
        directory: Directory | None = None,
        welcome_extras: WelcomeExtras | None = None,
    ) -> None:
        self._app = RoomApp(
            host, port, token=token, max_members=max_members, rate=rate, burst=burst,
            max_message=max_message, hello_timeout=hello_timeout, max_backlog=max_backlog,
            directory=directory, welcome_extras=welcome_extras,
        )
        self._loop = asyncio.new_event_loop()
        self._started = threading.Event()
        self._error: BaseException | None = None
        self._close_lock = threading.Lock()
        self._closed = False
        self._thread = threading.Thread(target=self._main, name="ivisit-nb-room-server", daemon=True)
        self._thread.start()
        self._started.wait()
        if self._error is not None:
            self._thread.join()
            self._closed = True
            raise self._error

    def _main(self) -> None:
        loop = self._loop
        asyncio.set_event_loop(loop)
        try:
            loop.run_until_complete(self._app.start())
        except BaseException as exc:
            self._error = exc
            loop.close()
            self._started.set()
            return
        self._started.set()
        try:
            loop.run_forever()
        finally:
            try:
                loop.run_until_complete(self._app.stop())
                pending = [t for t in asyncio.all_tasks(loop) if not t.done()]
                for t in pending:
                    t.cancel()
                if pending:
                    loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
                loop.run_until_complete(loop.shutdown_asyncgens())
            except Exception:
                log.exception("stopping the room server")
            finally:
                loop.close()

    @property
    def host(self) -> str:
        """The address it listens on."""
        return self._app.host

    @property
    def port(self) -> int:
        """The port it listens on (the real one when started with ``port=0``)."""
        return self._app.port

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/``, what clients connect to."""
        return self._app.url

    @property
    def rooms(self) -> dict[str, list[str]]:
        """Snapshot of room -> member names (joining order). Safe from any thread."""
        return self._app.hub.snapshot()

    @property
    def hub(self) -> RoomHub:
        """The server's hub, for inspection from other threads: only :meth:`RoomHub.snapshot`,
        :attr:`~RoomHub.rooms`, :attr:`~RoomHub.users`, :attr:`~RoomHub.connections` and
        :attr:`~RoomHub.accepted` are safe to use from outside the server's thread."""
        return self._app.hub

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has been called."""
        return self._closed

    def close(self, timeout: float = 10.0) -> None:
        """Close every client connection, stop listening and join the thread. Idempotent."""
        with self._close_lock:
            if self._closed:
                return
            if threading.current_thread() is self._thread:
                raise RuntimeError("RoomServer.close() cannot be called from the server's own thread")
            self._closed = True
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout)
        if self._thread.is_alive():
            log.warning("room server thread did not stop within %.1f s", timeout)

    def __enter__(self) -> "RoomServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else "running"
        return f"<RoomServer {self.url} {state}>"
