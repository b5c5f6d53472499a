"""The room server's decisions, without I/O: validation, presence, relay, rate limits.

:class:`RoomHub` is fed events about connections (``connect``, ``receive`` a
frame, ``expire``, ``disconnect``, a periodic ``tick``) and answers each with an
:class:`Outcome`: which serialised frames to send to which connection ids, and
which connections to close. Connections are opaque ids chosen by the I/O layer
(:class:`~ivisit_nb.room.app.RoomApp`); the hub never sees a socket. Names,
rooms and routes live in a :class:`~ivisit_nb.room.directory.Directory`; the hub
keeps only per-connection state (rate limit, who it joined as). The caller
passes the time (``now``, a monotonic clock in seconds) on every call.

The wire protocol is ``docs/protocol.md`` section 1.
"""

from __future__ import annotations

import hmac
import json
import logging
import uuid
from dataclasses import dataclass, field
from typing import Any, Callable

from .directory import Address, ConnId, Directory, MemoryDirectory
from .names import BadName, canonical_name, skeleton

log = logging.getLogger("ivisit_nb.room")

PROTOCOL_VERSION = 1
MESSAGE_TYPES = ("hello", "signal", "ping", "leave")
MAX_DROPPED = 500  # rate-limited frames before the connection is closed
NAME_LEASE = 60.0  # seconds a name claim lasts unless renewed by tick()
RENEW_EVERY = NAME_LEASE / 3  # how often the I/O layer should call tick()

# Close codes (see docs/protocol.md).
CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL = 1011
CLOSE_TRY_AGAIN = 1013  # "unavailable": a clustered server lost its shared directory for now
CLOSE_BAD_HELLO = 4000
CLOSE_BAD_TOKEN = 4001
CLOSE_NAME_TAKEN = 4002
CLOSE_ROOM_FULL = 4003
CLOSE_NOT_JOINED = 4004
CLOSE_BAD_NAME = 4005
CLOSE_RATE_LIMITED = 4008

EventCallback = Callable[[dict[str, Any]], None]
WelcomeExtras = Callable[[str], dict[str, Any]]  # user -> extra welcome fields (e.g. TURN credentials)


def dumps(message: dict[str, Any]) -> str:
    """One compact JSON frame. ASCII only, so even a lone surrogate smuggled in
    as a ``"\\ud800"`` escape cannot make the UTF-8 encoding of a frame fail."""
    return json.dumps(message, separators=(",", ":"), allow_nan=False)


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not valid JSON")


def _hello_close(code: str) -> int:
    return CLOSE_BAD_NAME if code == "bad-name" else CLOSE_BAD_HELLO


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


@dataclass
class Outcome:
    """What the I/O layer must do after a hub call, in this order.

    ``sends``: ``(connection id, text)`` pairs, each a serialised frame for that
    connection (one ``str`` object may be shared by many pairs). ``closes``:
    ``(connection id, close code, reason)``, each to be closed once the frames
    queued for it have been sent. ``forwards``: ``(address, text)`` frames for
    connections of *other* server processes, to be handed to a shared
    directory (:meth:`~ivisit_nb.room.directory.SharedDirectory.forward`);
    always empty with a single-process directory.
    """

    sends: list[tuple[ConnId, str]] = field(default_factory=list)
    closes: list[tuple[ConnId, int, str]] = field(default_factory=list)
    forwards: list[tuple[Address, str]] = field(default_factory=list)


@dataclass(frozen=True)
class Hello:
    """A ``hello`` that passed every check up to the name: what a shared directory must admit."""

    user: str  # canonical name
    key: str  # its look-alike skeleton
    room: str | None  # canonical room name, or None for no room


class _Conn:
    """One connection as the hub sees it."""

    __slots__ = ("id", "remote", "bucket", "dropped", "user", "key", "room", "joined", "closed", "extras_at")

    def __init__(self, conn_id: ConnId, remote: str, bucket: TokenBucket) -> None:
        self.id = conn_id
        self.remote = remote
        self.bucket = bucket
        self.dropped = 0
        self.user: str | None = None  # canonical name, once joined
        self.key: str | None = None  # its look-alike skeleton, claimed in the directory
        self.room: str | None = None
        self.joined = False
        self.closed = False  # a fatal error was sent; frames are ignored from now on
        self.extras_at = 0.0  # when this connection last got the welcome extras

    def __repr__(self) -> str:
        return f"<connection {self.id!r} {self.user or '(no hello)'} room={self.room!r} from {self.remote}>"


class RoomHub:
    """Rooms, users, presence and relay decisions for one server process. No I/O.

    ``directory`` holds names, rooms and routes (a fresh :class:`MemoryDirectory`
    by default); ``instance`` names this process in the directory's addresses
    (random by default); a name claim lasts ``name_lease`` seconds and
    :meth:`tick` renews it. ``welcome_extras(user)``, if given, returns fields added to
    each ``welcome`` (``ivisit_nb.room.turn`` uses it to hand out ``ice_servers``); if it
    has a ``refresh_every`` attribute (seconds, e.g. half a credential's lifetime),
    :meth:`tick` sends each user fresh extras in a ``refresh`` message that often.
    User names are canonical (NFC) and unique up to look-alikes, see
    :mod:`ivisit_nb.room.names`.

    Not thread-safe except :meth:`snapshot`, :attr:`rooms`, :attr:`users`,
    :attr:`connections` and :attr:`accepted`, which may be read from any thread. Everything else must run on one thread
    (the server's event loop).
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
        directory: Directory | None = None,
        instance: str | None = None,
        name_lease: float = NAME_LEASE,
        welcome_extras: WelcomeExtras | None = None,
    ) -> None:
        if max_members < 1:
            raise ValueError("max_members must be at least 1")
        if rate <= 0 or burst < 1:
            raise ValueError("rate must be > 0 and burst >= 1")
        if name_lease <= 0:
            raise ValueError("name_lease must be > 0 seconds")
        self.token = token
        self.max_members = max_members
        self.rate = rate
        self.burst = burst
        self.max_message = max_message
        self.on_event = on_event
        self.directory: Directory = MemoryDirectory() if directory is None else directory
        self.instance = uuid.uuid4().hex[:12] if instance is None else instance
        self.name_lease = name_lease
        # A shared directory announces every presence change to every instance, this one
        # included (see presence()); the hub then must not tell its members itself.
        self._announced = bool(getattr(self.directory, "announces_presence", False))
        self.welcome_extras = welcome_extras
        self._conns: dict[ConnId, _Conn] = {}
        self._accepted = 0

    # -- queries (any thread) -------------------------------------------------

    def snapshot(self) -> dict[str, list[str]]:
        """Room -> member names (in joining order), as a fresh copy."""
        return self.directory.rooms()

    @property
    def rooms(self) -> dict[str, list[str]]:
        """Same as :meth:`snapshot`."""
        return self.snapshot()

    @property
    def users(self) -> list[str]:
        """Every joined user, with or without a room."""
        return self.directory.names()

    @property
    def connections(self) -> int:
        """Connections open now (joined or not)."""
        return len(self._conns)

    @property
    def accepted(self) -> int:
        """Connections accepted since the hub was made (a count of attempts to join)."""
        return self._accepted

    def joined(self, conn: ConnId) -> bool:
        """Whether connection ``conn`` has been welcomed (and not left)."""
        c = self._conns.get(conn)
        return c is not None and c.joined

    # -- connection lifecycle -------------------------------------------------

    def connect(self, conn: ConnId, remote: str, now: float) -> None:
        """A new connection with id ``conn`` (unused so far); it must send ``hello`` next."""
        if conn in self._conns:
            raise ValueError(f"connection id {conn!r} is already in use; give each connection its own id")
        self._conns[conn] = _Conn(conn, remote, TokenBucket(self.rate, self.burst, now))
        self._accepted += 1

    def expire(self, conn: ConnId, now: float) -> Outcome:
        """Connection ``conn`` did not send ``hello`` in time."""
        out = Outcome()
        c = self._conns.get(conn)
        if c is not None and not c.joined and not c.closed:
            self._error(
                out, c, "not-joined",
                "no hello received in time; send hello as the first frame right after connecting",
                close=CLOSE_NOT_JOINED,
            )
        return out

    def disconnect(self, conn: ConnId, now: float) -> Outcome:
        """Connection ``conn`` is gone: free its name, tell its room. Idempotent."""
        out = Outcome()
        c = self._conns.pop(conn, None)
        if c is not None:
            c.closed = True
            self._leave(out, c, now)
        return out

    def tick(self, now: float) -> Outcome:
        """Renew the name leases of every joined connection; call every :data:`RENEW_EVERY` s.

        A connection whose name was lost (its lease ran out and someone else
        claimed the name) is closed with ``name-taken``.
        """
        out = Outcome()
        refresh_every = getattr(self.welcome_extras, "refresh_every", None)
        for c in list(self._conns.values()):
            if not c.joined or c.closed:
                continue
            assert c.key is not None and c.user is not None
            if not self.directory.renew(c.key, self._address(c), self.name_lease, now):
                self._error(
                    out, c, "name-taken",
                    f"this connection lost the name {c.user!r}: its claim lapsed and another "
                    "connection took it; reconnect under another name",
                    close=CLOSE_NAME_TAKEN,
                )
            elif self.welcome_extras is not None and refresh_every and now - c.extras_at >= refresh_every:
                out.sends.append((c.id, dumps({**self.welcome_extras(c.user), "type": "refresh"})))
                c.extras_at = now
        return out

    # -- a shared directory (several server processes) ------------------------------

    def admission(self, conn: ConnId, frame: str | bytes) -> Hello | None:
        """The :class:`Hello` in ``frame`` if :meth:`receive` would take it as far as the name
        check, else ``None``. Pure: changes nothing, spends no rate-limit token.

        With a shared directory the I/O layer asks the directory to admit this
        name (an awaited round trip) and then feeds the same frame to :meth:`receive`.
        """
        c = self._conns.get(conn)
        if c is None or c.closed or c.joined or not isinstance(frame, str):
            return None
        if _frame_size(frame) > self.max_message:
            return None
        try:
            msg = json.loads(frame, parse_constant=_reject_constant)
        except (ValueError, RecursionError):
            return None
        if not isinstance(msg, dict) or msg.get("type") != "hello":
            return None
        checked = self._check_hello(msg)
        return checked if isinstance(checked, Hello) else None

    def unavailable(self, conn: ConnId, message: str) -> Outcome:
        """Refuse connection ``conn``'s ``hello`` because the shared directory cannot be reached.

        A fatal ``unavailable`` error (close code 1013): the client should try again
        later or at another server of the cluster.
        """
        out = Outcome()
        c = self._conns.get(conn)
        if c is not None and not c.closed:
            self._refuse(out, c, "unavailable", message, CLOSE_TRY_AGAIN)
        return out

    def presence(self, room: str, user: str, joined: bool, now: float) -> Outcome:
        """``user`` joined (or left) ``room``, as announced by a shared directory:
        tell this hub's members of that room (never ``user`` itself)."""
        out = Outcome()
        kind = "joined" if joined else "left"
        names = [m for m in self.directory.members(room) if m != user]
        self._tell(out, names, dumps({"type": kind, "room": room, "user": user}), now)
        return out

    def deliver(self, conn: ConnId, text: str) -> Outcome:
        """A frame forwarded from another server process for connection ``conn`` of this one."""
        out = Outcome()
        c = self._conns.get(conn)
        if c is not None and c.joined and not c.closed:
            out.sends.append((conn, text))
        return out

    # -- frames ------------------------------------------------------------------

    def receive(self, conn: ConnId, frame: str | bytes, now: float) -> Outcome:
        """Handle one frame from connection ``conn``: what to send, what to close."""
        out = Outcome()
        c = self._conns.get(conn)
        if c is None or c.closed:
            return out
        if not c.bucket.take(now):
            c.dropped += 1
            if c.dropped >= MAX_DROPPED:
                self._error(
                    out, c, "rate-limited",
                    f"too many frames for too long: {c.dropped} frames dropped (limit "
                    f"{self.rate:g}/s, bursts of {self.burst}); closing the connection. "
                    "Reconnect and send less often.",
                    close=CLOSE_RATE_LIMITED,
                )
            else:
                self._error(
                    out, c, "rate-limited",
                    f"too many frames: the limit is {self.rate:g} per second (bursts of "
                    f"{self.burst}); this frame was dropped ({c.dropped} so far; the "
                    f"connection is closed after {MAX_DROPPED}). Slow down and resend.",
                )
            return out
        size = _frame_size(frame)
        if size > self.max_message:
            self._error(
                out, c, "too-large",
                f"frame of {size} bytes is over the {self.max_message}-byte limit; closing the "
                "connection. Send smaller frames.",
                close=CLOSE_TOO_BIG,
            )
            return out
        if isinstance(frame, (bytes, bytearray)):
            self._error(
                out, c, "bad-json",
                "binary frames are not part of the protocol; send each message as a JSON "
                "object in a text frame",
            )
            return out
        try:
            msg = json.loads(frame, parse_constant=_reject_constant)
        except (ValueError, RecursionError) as exc:
            reason = exc if isinstance(exc, ValueError) else "nested too deeply"
            self._error(out, c, "bad-json", f"frame is not valid JSON: {reason}; send one JSON object per text frame")
            return out
        if not isinstance(msg, dict):
            self._error(
                out, c, "bad-json",
                f"frame is JSON but not an object (got {type(msg).__name__}); send one JSON "
                'object per frame, like {"type": "ping"}',
            )
            return out
        kind = msg.get("type")
        if not c.joined:
            if kind == "hello":
                self._hello(out, c, msg, now)
            else:
                what = f"{kind!r}" if isinstance(kind, str) else "a frame without a 'type'"
                self._error(
                    out, c, "not-joined",
                    f"got {what} before joining; the first frame must be hello "
                    '({"type": "hello", "version": 1, "user": ..., "room": ...})',
                    close=CLOSE_NOT_JOINED,
                )
            return out
        if kind == "signal":
            self._signal(out, c, msg, now)
        elif kind == "ping":
            out.sends.append((c.id, '{"type":"pong"}'))
        elif kind == "leave":
            self._leave(out, c, now)
            c.closed = True
            out.closes.append((c.id, CLOSE_NORMAL, "leave"))
        elif kind == "hello":
            self._error(
                out, c, "bad-message",
                f"already joined as {c.user!r}; a connection joins once. Open a new "
                "connection to join under another name or room.",
            )
        else:
            what = "message has no 'type' field" if kind is None else f"unknown message type {kind!r}"
            self._error(out, c, "unknown-type", f"{what}; expected one of {', '.join(MESSAGE_TYPES)}")
        return out

    # -- the messages -------------------------------------------------------------

    def _check_hello(self, msg: dict[str, Any]) -> Hello | tuple[str, str, int]:
        """A ``hello``'s fields and token: the :class:`Hello`, or ``(code, message, close code)``."""
        version = msg.get("version")
        if version != PROTOCOL_VERSION or isinstance(version, bool):
            return (
                "bad-message",
                f"bad hello: 'version' must be {PROTOCOL_VERSION} (got {version!r}); this server speaks "
                f"protocol version {PROTOCOL_VERSION}",
                CLOSE_BAD_HELLO,
            )
        try:
            user = canonical_name(msg.get("user"), "user")
        except BadName as exc:
            return exc.code, f"bad hello: {exc.message}", _hello_close(exc.code)
        room = msg.get("room")
        if room is not None:
            try:
                room = canonical_name(room, "room")
            except BadName as exc:
                return exc.code, f"bad hello: {exc.message} (or null for no room)", _hello_close(exc.code)
        if self.token is not None:
            given = msg.get("token")
            if given is None:
                return "bad-token", "this server needs a token; pass the server's shared secret as 'token'", CLOSE_BAD_TOKEN
            if not isinstance(given, str) or not hmac.compare_digest(
                given.encode("utf-8", "surrogatepass"), self.token.encode("utf-8")
            ):
                return "bad-token", "wrong token; ask whoever runs the server for its --token", CLOSE_BAD_TOKEN
        return Hello(user, skeleton(user), room)

    def _hello(self, out: Outcome, c: _Conn, msg: dict[str, Any], now: float) -> None:
        checked = self._check_hello(msg)
        if not isinstance(checked, Hello):
            code, message, close = checked
            return self._refuse(out, c, code, message, close)
        user, key, room = checked.user, checked.key, checked.room
        address = Address(self.instance, c.id)
        if not self.directory.claim(user, key, address, self.name_lease, now):
            holder = self.directory.holder(key, now)
            if holder is None or holder == user:
                text = (
                    f"the name {user!r} is already connected to this server; pick another name, "
                    "or wait a moment if it is your own old connection"
                )
            else:
                text = (
                    f"the name {user!r} is too similar to {holder!r}, who is already here; "
                    "pick a name that looks clearly different"
                )
            return self._refuse(out, c, "name-taken", text, CLOSE_NAME_TAKEN)
        if room is not None and not self.directory.join(room, user, self.max_members):
            self.directory.release(key, address)
            return self._refuse(
                out, c, "room-full",
                f"room {room!r} is full ({self.max_members} members); try another room, or ask "
                "whoever runs the server to raise --max-members",
                CLOSE_ROOM_FULL,
            )
        c.user, c.key, c.room, c.joined = user, key, room, True
        others = [] if room is None else [m for m in self.directory.members(room) if m != user]
        welcome = {"type": "welcome", "user": user, "room": room, "members": others, "max_message": self.max_message}
        if self.welcome_extras is not None:
            welcome = {**self.welcome_extras(user), **welcome}  # extras never replace the core fields
            c.extras_at = now
        out.sends.append((c.id, dumps(welcome)))
        if not self._announced:
            self._tell(out, others, dumps({"type": "joined", "room": room, "user": user}), now)
        log.info("%s joined %s from %s", user, room if room is not None else "(no room)", c.remote)
        self._emit({"event": "joined", "user": user, "room": room})

    def _leave(self, out: Outcome, c: _Conn, now: float) -> None:
        """Free ``c``'s name and room place and tell the room (once)."""
        if not c.joined:
            return
        c.joined = False
        user, room = c.user, c.room
        assert user is not None and c.key is not None
        released = self.directory.release(c.key, self._address(c))
        if not released and self.directory.route(user, now) is not None:
            return  # the name had passed to another connection; the room place is its own now
        if room is not None:
            self.directory.leave(room, user)
            if not self._announced:
                self._tell(out, self.directory.members(room), dumps({"type": "left", "room": room, "user": user}), now)
        log.info("%s left %s", user, room if room is not None else "(no room)")
        self._emit({"event": "left", "user": user, "room": room})

    def _signal(self, out: Outcome, c: _Conn, msg: dict[str, Any], now: float) -> None:
        data = msg.get("data")
        try:
            to = canonical_name(msg.get("to"), "to")
        except BadName as exc:
            return self._error(out, c, "bad-message", f"bad signal: {exc.message}; 'to' names the recipient")
        if not isinstance(data, dict):
            return self._error(
                out, c, "bad-message", f"bad signal: 'data' must be a JSON object, not {type(data).__name__}"
            )
        address = self.directory.route(to, now)
        target = self._local(address)
        if target is None and (address is None or address.instance == self.instance):
            return self._error(
                out, c, "no-such-user",
                f"no user {to!r} is connected to this server; they may have left. Check the "
                "room's members and try again later.",
                to=to,
            )
        try:
            text = dumps({"type": "signal", "from": c.user, "data": data})
        except (ValueError, RecursionError):
            return self._error(out, c, "bad-message", "bad signal: 'data' is nested too deeply")
        if target is None:
            assert address is not None
            out.forwards.append((address, text))  # a user of another server process
        else:
            out.sends.append((target.id, text))

    # -- helpers ---------------------------------------------------------------------

    def _address(self, c: _Conn) -> Address:
        return Address(self.instance, c.id)

    def _local(self, address: Address | None) -> _Conn | None:
        """The live, joined connection of this hub at ``address``, if it is one.

        ``None`` for addresses of other instances too: frames for those go out
        as :attr:`Outcome.forwards`.
        """
        if address is None or address.instance != self.instance:
            return None
        c = self._conns.get(address.conn)
        return None if c is None or c.closed or not c.joined else c

    def _tell(self, out: Outcome, names: list[str], text: str, now: float) -> None:
        """Send ``text`` to each of ``names`` that is connected here."""
        for name in names:
            c = self._local(self.directory.route(name, now))
            if c is not None:
                out.sends.append((c.id, text))

    def _refuse(self, out: Outcome, c: _Conn, code: str, message: str, close: int) -> None:
        log.info("refused %s: %s", c, code)
        self._error(out, c, code, message, close=close)

    def _error(self, out: Outcome, c: _Conn, code: str, message: str, *, close: int | None = None, **extra: Any) -> None:
        frame = {"type": "error", "code": code, "message": message, "fatal": close is not None, **extra}
        out.sends.append((c.id, dumps(frame)))
        if close is not None:
            out.closes.append((c.id, close, code))
            c.closed = True
        log.debug("%s: %s %s", c, code, message)

    def _emit(self, event: dict[str, Any]) -> None:
        if self.on_event is None:
            return
        try:
            self.on_event(event)
        except Exception:
            log.exception("room event callback failed")
