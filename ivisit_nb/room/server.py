"""The room server: rooms, presence and relay of signalling between named users.

It only relays signalling (``docs/protocol.md`` section 1); chat text and file
bytes go peer to peer and never pass through it.

Three layers, from the inside out:

* :class:`RoomHub` -- pure state and decisions (rooms, users, presence, relay,
  rate limits, validation). No sockets: it is fed frames and returns what to
  send to whom, already serialised, plus whether to close the sender.
* :class:`RoomApp` and :func:`serve` -- the aiohttp server around a hub, on the
  caller's event loop (the CLI uses :func:`serve`).
* :class:`RoomServer` -- the same, embedded in a background daemon thread with
  its own event loop, for notebooks and tests.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import itertools
import json
import logging
import socket
import threading
import time
import unicodedata
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from aiohttp import WSMsgType, web

log = logging.getLogger("ivisit_nb.room")

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("hello", "signal", "ping", "leave")
NAME_MAX = 64
MAX_DROPPED = 500  # rate-limited frames before the connection is closed
HEARTBEAT = 20.0  # websocket ping after 20 s of silence, dropped 10 s later without a pong
HELLO_TIMEOUT = 10.0
CLOSE_TIMEOUT = 2.0  # how long to wait for a client's close frame
MAX_BACKLOG = 8 * 1024 * 1024  # unsent bytes queued for one client before it is dropped

# Close codes (see docs/protocol.md).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_BAD_HELLO = 4000
CLOSE_BAD_TOKEN = 4001
CLOSE_NAME_TAKEN = 4002
CLOSE_ROOM_FULL = 4003
CLOSE_NOT_JOINED = 4004
CLOSE_RATE_LIMITED = 4008

EventCallback = Callable[[dict[str, Any]], None]


def _dumps(message: dict[str, Any]) -> str:
    # ensure_ascii: output is plain ASCII, so even a lone surrogate smuggled in as a
    # "\ud800" escape cannot make the UTF-8 encoding of an outgoing frame fail.
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def name_problem(value: Any, field_name: str = "user") -> str | None:
    """Why ``value`` is not a valid user or room name, or ``None`` if it is.

    Valid: a string of 1-64 characters, no control characters, not only spaces.
    """
    if not isinstance(value, str):
        return f"'{field_name}' must be a string, not {type(value).__name__}"
    if not value:
        return f"'{field_name}' must not be empty"
    if len(value) > NAME_MAX:
        return f"'{field_name}' is {len(value)} characters long; the limit is {NAME_MAX}"
    if not value.strip():
        return f"'{field_name}' must not be only spaces"
    for c in value:
        category = unicodedata.category(c)
        if category == "Cc":
            return f"'{field_name}' must not contain control characters"
        if category == "Cs":
            return f"'{field_name}' must be valid Unicode (it has a lone surrogate)"
    return None


def _frame_size(frame: str | bytes) -> int:
    if isinstance(frame, str):
        return len(frame) if frame.isascii() else len(frame.encode("utf-8"))
    return len(frame)


class TokenBucket:
    """Classic token bucket: ``burst`` tokens, refilled at ``rate`` per second."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self.rate, self.burst = float(rate), float(burst)
        self.tokens, self.stamp = float(burst), now

    def take(self, now: float) -> bool:
        """Spend one token if there is one; ``False`` means over the limit."""
        elapsed = now - self.stamp
        if elapsed > 0:
            self.tokens = min(self.burst, self.tokens + elapsed * self.rate)
            self.stamp = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        return False


class Peer:
    """One client connection as the hub sees it.

    ``link`` is an opaque handle owned by the I/O layer (the hub never touches it).
    """

    __slots__ = ("id", "remote", "user", "room", "joined", "closed", "bucket", "dropped", "link")

    def __init__(self, peer_id: int, remote: str, bucket: TokenBucket) -> None:
        self.id = peer_id
        self.remote = remote
        self.user: str | None = None
        self.room: str | None = None
        self.joined = False
        self.closed = False
        self.bucket = bucket
        self.dropped = 0
        self.link: Any = None

    def __repr__(self) -> str:
        return f"<Peer #{self.id} {self.user or '(no hello)'} room={self.room!r} from {self.remote}>"


@dataclass
class Outcome:
    """What the I/O layer must do after a hub call.

    ``sends`` is a list of ``(recipients, text)``: the same serialised frame goes
    to every recipient. If ``close`` is set, the sender's connection is closed
    with that code (and ``reason`` as the close reason) after its frames are sent.
    """

    sends: list[tuple[Sequence[Peer], str]] = field(default_factory=list)
    close: int | None = None
    reason: str = ""


class RoomHub:
    """Rooms, users, presence and relay decisions for one server. No I/O.

    Not thread-safe except :meth:`snapshot`/:attr:`rooms`/:attr:`users`, which
    may be called from any thread. Everything else must run on one thread (the
    server's event loop).
    """

    def __init__(
        self,
        *,
        token: str | None = None,
        max_members: int = 50,
        rate: float = 50.0,
        burst: int = 100,
        max_message: int = 65536,
        on_event: EventCallback | None = None,
    ) -> None:
        if max_members < 1:
            raise ValueError("max_members must be at least 1")
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        self.token = token
        self.max_members = max_members
        self.rate = rate
        self.burst = burst
        self.max_message = max_message
        self.on_event = on_event
        self._users: dict[str, Peer] = {}
        self._rooms: dict[str, dict[str, Peer]] = {}
        self._lock = threading.Lock()  # guards _users/_rooms against snapshot() from other threads
        self._ids = itertools.count(1)

    # -- queries (any thread) -------------------------------------------------

    def snapshot(self) -> dict[str, list[str]]:
        """Room -> member names (in joining order), as a fresh copy."""
        with self._lock:
            return {room: list(members) for room, members in self._rooms.items()}

    @property
    def rooms(self) -> dict[str, list[str]]:
        """Same as :meth:`snapshot`."""
        return self.snapshot()

    @property
    def users(self) -> list[str]:
        """Every joined user, with or without a room."""
        with self._lock:
            return list(self._users)

    # -- connection lifecycle -------------------------------------------------

    def connect(self, remote: str = "?", now: float | None = None) -> Peer:
        """A new connection; it must send ``hello`` next."""
        now = time.monotonic() if now is None else now
        return Peer(next(self._ids), remote, TokenBucket(self.rate, self.burst, now))

    def expire(self, peer: Peer) -> Outcome:
        """The connection did not send ``hello`` in time."""
        out = Outcome()
        if not peer.joined and not peer.closed:
            self._error(
                out, peer, "not-joined",
                "no hello received in time; send hello as the first frame right after connecting",
                close=CLOSE_NOT_JOINED,
            )
        return out

    def disconnect(self, peer: Peer) -> Outcome:
        """The connection is gone (or leaving): free the name, tell the room. Idempotent."""
        peer.closed = True
        out = Outcome()
        if not peer.joined:
            return out
        peer.joined = False
        user, room = peer.user, peer.room
        assert user is not None
        others: list[Peer] = []
        with self._lock:
            if self._users.get(user) is peer:
                del self._users[user]
            if room is not None:
                members = self._rooms.get(room)
                if members is not None and members.get(user) is peer:
                    del members[user]
                    others = list(members.values())
                    if not members:
                        del self._rooms[room]
        if others:
            out.sends.append((others, _dumps({"type": "left", "room": room, "user": user})))
        log.info("%s left %s", user, room if room is not None else "(no room)")
        self._emit({"event": "left", "user": user, "room": room})
        return out

    # -- frames ------------------------------------------------------------------

    def receive(self, peer: Peer, frame: str | bytes, now: float | None = None) -> Outcome:
        """Handle one frame from ``peer`` and say what to send and whether to close."""
        out = Outcome()
        if peer.closed:
            return out
        now = time.monotonic() if now is None else now
        if not peer.bucket.take(now):
            peer.dropped += 1
            if peer.dropped >= MAX_DROPPED:
                self._error(
                    out, peer, "rate-limited",
                    f"too many frames for too long: {peer.dropped} frames dropped (limit "
                    f"{self.rate:g}/s, bursts of {self.burst}); closing the connection. "
                    "Reconnect and send less often.",
                    close=CLOSE_RATE_LIMITED,
                )
            else:
                self._error(
                    out, peer, "rate-limited",
                    f"too many frames: the limit is {self.rate:g} per second (bursts of "
                    f"{self.burst}); this frame was dropped ({peer.dropped} so far; the "
                    f"connection is closed after {MAX_DROPPED}). Slow down and resend.",
                )
            return out
        size = _frame_size(frame)
        if size > self.max_message:
            self._error(
                out, peer, "too-large",
                f"frame of {size} bytes is over the {self.max_message}-byte limit; closing the "
                "connection. Send smaller frames.",
                close=CLOSE_TOO_BIG,
            )
            return out
        if isinstance(frame, (bytes, bytearray)):
            self._error(
                out, peer, "bad-json",
                "binary frames are not part of the protocol; send each message as a JSON "
                "object in a text frame",
            )
            return out
        try:
            msg = json.loads(frame, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            reason = exc if isinstance(exc, ValueError) else "nested too deeply"
            self._error(
                out, peer, "bad-json",
                f"frame is not valid JSON: {reason}; send one JSON object per text frame",
            )
            return out
        if not isinstance(msg, dict):
            self._error(
                out, peer, "bad-json",
                f"frame is JSON but not an object (got {type(msg).__name__}); send one JSON "
                'object per frame, like {"type": "ping"}',
            )
            return out
        kind = msg.get("type")
        if not peer.joined:
            if kind == "hello":
                self._hello(out, peer, msg)
            else:
                what = f"{kind!r}" if isinstance(kind, str) else "a frame without a 'type'"
                self._error(
                    out, peer, "not-joined",
                    f"got {what} before joining; the first frame must be hello "
                    '({"type": "hello", "version": 1, "user": ..., "room": ...})',
                    close=CLOSE_NOT_JOINED,
                )
            return out
        if kind == "signal":
            self._signal(out, peer, msg)
        elif kind == "ping":
            out.sends.append(((peer,), '{"type":"pong"}'))
        elif kind == "leave":
            out.sends.extend(self.disconnect(peer).sends)
            out.close, out.reason = CLOSE_NORMAL, "leave"
        elif kind == "hello":
            self._error(
                out, peer, "bad-message",
                f"already joined as {peer.user!r}; a connection joins once. Open a new "
                "connection to join under another name or room.",
            )
        else:
            self._unknown_type(out, peer, kind)
        return out

    def _unknown_type(self, out: Outcome, peer: Peer, kind: Any) -> None:
        if kind is None:
            text = "message has no 'type' field"
        else:
            text = f"unknown message type {kind!r}"
        self._error(out, peer, "unknown-type", f"{text}; expected one of {', '.join(MESSAGE_TYPES)}")

    def _hello(self, out: Outcome, peer: Peer, msg: dict[str, Any]) -> None:
        version = msg.get("version")
        if version != PROTOCOL_VERSION or isinstance(version, bool):
            return self._bad_hello(
                out, peer,
                f"'version' must be {PROTOCOL_VERSION} (got {version!r}); this server speaks "
                f"protocol version {PROTOCOL_VERSION}",
            )
        user = msg.get("user")
        problem = name_problem(user, "user")
        if problem:
            return self._bad_hello(out, peer, f"{problem}; pick a user name of 1-{NAME_MAX} characters")
        room = msg.get("room")
        if room is not None:
            problem = name_problem(room, "room")
            if problem:
                return self._bad_hello(
                    out, peer, f"{problem}; use a room name of 1-{NAME_MAX} characters, or null for no room"
                )
        if self.token is not None:
            given = msg.get("token")
            if given is None:
                return self._refuse(
                    out, peer, "bad-token",
                    "this server needs a token; pass the server's shared secret as 'token'",
                    CLOSE_BAD_TOKEN,
                )
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode("utf-8"), self.token.encode("utf-8")
            ):
                return self._refuse(
                    out, peer, "bad-token",
                    "wrong token; ask whoever runs the server for its --token",
                    CLOSE_BAD_TOKEN,
                )
        assert isinstance(user, str)
        taken = full = False
        others: list[Peer] = []
        with self._lock:
            if user in self._users:
                taken = True
            else:
                members = self._rooms.get(room, {}) if room is not None else {}
                full = len(members) >= self.max_members
                if not full:
                    others = list(members.values())
                    self._users[user] = peer
                    if room is not None:
                        self._rooms.setdefault(room, {})[user] = peer
        if taken:
            return self._refuse(
                out, peer, "name-taken",
                f"the name {user!r} is already connected to this server; pick another name, "
                "or wait a moment if it is your own old connection",
                CLOSE_NAME_TAKEN,
            )
        if full:
            return self._refuse(
                out, peer, "room-full",
                f"room {room!r} is full ({self.max_members} members); try another room, or ask "
                "whoever runs the server to raise --max-members",
                CLOSE_ROOM_FULL,
            )
        peer.user, peer.room, peer.joined = user, room, True
        out.sends.append((
            (peer,),
            _dumps({
                "type": "welcome", "user": user, "room": room,
                "members": [p.user for p in others], "max_message": self.max_message,
            }),
        ))
        if others:
            out.sends.append((others, _dumps({"type": "joined", "room": room, "user": user})))
        log.info("%s joined %s from %s", user, room if room is not None else "(no room)", peer.remote)
        self._emit({"event": "joined", "user": user, "room": room})

    def _bad_hello(self, out: Outcome, peer: Peer, message: str) -> None:
        self._refuse(out, peer, "bad-message", f"bad hello: {message}", CLOSE_BAD_HELLO)

    def _refuse(self, out: Outcome, peer: Peer, code: str, message: str, close: int) -> None:
        log.info("refused %s: %s", peer, code)
        self._error(out, peer, code, message, close=close)

    def _signal(self, out: Outcome, peer: Peer, msg: dict[str, Any]) -> None:
        to, data = msg.get("to"), msg.get("data")
        problem = name_problem(to, "to")
        if problem:
            return self._error(out, peer, "bad-message", f"bad signal: {problem}; 'to' names the recipient")
        if not isinstance(data, dict):
            return self._error(
                out, peer, "bad-message",
                f"bad signal: 'data' must be a JSON object, not {type(data).__name__}",
            )
        target = self._users.get(to)
        if target is None or target.closed:
            return self._error(
                out, peer, "no-such-user",
                f"no user {to!r} is connected to this server; they may have left. Check the "
                "room's members and try again later.",
                to=to,
            )
        try:
            text = _dumps({"type": "signal", "from": peer.user, "data": data})
        except (ValueError, RecursionError):
            return self._error(out, peer, "bad-message", "bad signal: 'data' is nested too deeply")
        out.sends.append(((target,), text))

    def _error(self, out: Outcome, peer: Peer, code: str, message: str, *, close: int | None = None, **extra: Any) -> None:
        frame = {"type": "error", "code": code, "message": message, "fatal": close is not None, **extra}
        out.sends.append(((peer,), _dumps(frame)))
        if close is not None:
            out.close, out.reason = close, code
            peer.closed = True
        log.debug("%s: %s %s", peer, code, message)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            log.exception("room event callback failed")


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
    ) -> None:
        self.hub = RoomHub(
            token=token, max_members=max_members, rate=rate, burst=burst,
            max_message=max_message, on_event=on_event,
        )
        self.host = host
        self.port = port
        self.hello_timeout = hello_timeout
        self.max_backlog = max_backlog
        self._listen_backlog = backlog
        self._runner: web.AppRunner | None = None
        self._links: set[_Link] = set()
        self._handlers: set[asyncio.Task[Any]] = set()

    @property
    def url(self) -> str:
        """``ws://HOST:PORT/``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"ws://{host}:{self.port}/"

    async def start(self) -> None:
        """Bind (with SO_REUSEADDR) and start serving; raises ``OSError`` if the port is taken."""
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
            raise
        self.port = sock.getsockname()[1]
        self._runner = runner
        log.info("room server listening on %s", self.url)

    async def stop(self) -> None:
        """Close every client (code 1001) and stop listening. Idempotent."""
        runner, self._runner = self._runner, None
        if runner is None:
            return
        for link in list(self._links):
            link.finish(CLOSE_GOING_AWAY, "server-shutdown")
        if self._handlers:
            await asyncio.wait(list(self._handlers), timeout=CLOSE_TIMEOUT + 1.0)
        for link in list(self._links):
            link.abort()
        await runner.cleanup()
        log.info("room server on port %d stopped", self.port)

    async def _health(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    def _dispatch(self, out: Outcome) -> None:
        for recipients, text in out.sends:
            for peer in recipients:
                link = peer.link
                if link is not None:
                    link.push(text)

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
        peer = hub.connect(request.remote or "?")
        link = _Link(ws, request.transport, self.max_backlog)
        peer.link = link
        task = asyncio.current_task()
        assert task is not None
        self._links.add(link)
        self._handlers.add(task)
        writer = asyncio.ensure_future(link.run())
        deadline = loop.time() + self.hello_timeout
        try:
            while link.close_code is None:
                timeout = None if peer.joined else max(deadline - loop.time(), 0.001)
                try:
                    msg = await ws.receive(timeout=timeout)
                except asyncio.TimeoutError:
                    out = hub.expire(peer)
                else:
                    if msg.type is WSMsgType.TEXT or msg.type is WSMsgType.BINARY:
                        out = hub.receive(peer, msg.data)
                    else:  # CLOSE / CLOSING / CLOSED / ERROR (e.g. over aiohttp's size cap)
                        if msg.type is WSMsgType.ERROR:
                            log.info("%s: websocket error %r", peer, msg.data)
                        break
                self._dispatch(out)
                if out.close is not None:
                    link.finish(out.close, out.reason)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("connection %s failed; closing it", peer)
            link.finish(CLOSE_INTERNAL, "internal-error")
        finally:
            try:
                self._dispatch(hub.disconnect(peer))
            except Exception:
                log.exception("cleaning up %s", peer)
            link.finish(CLOSE_NORMAL)
            try:
                await asyncio.wait_for(writer, CLOSE_TIMEOUT + 1.0)
            except (asyncio.TimeoutError, asyncio.CancelledError):
                link.abort()
            except Exception:
                log.exception("closing %s", peer)
            self._links.discard(link)
            self._handlers.discard(task)
        return ws


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
    ) -> None:
        self._app = RoomApp(
            host, port, token=token, max_members=max_members, rate=rate, burst=burst,
            max_message=max_message, hello_timeout=hello_timeout, max_backlog=max_backlog,
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
