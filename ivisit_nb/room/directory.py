"""Who is on the room server: name claims, room members, and where each user is.

The :class:`~ivisit_nb.room.hub.RoomHub` keeps no name, room or routing state of
its own; it asks a :class:`Directory`. :class:`MemoryDirectory` serves one
server process. The interface is shaped so that a directory shared by several
server processes (for example one on Redis) can replace it without touching
the hub:

* **Names are claimed under a lease.** :meth:`Directory.claim` takes a *key*
  (the name's look-alike skeleton, so look-alikes exclude each other) for a
  *name*, owned by an :class:`Address`, until ``now + lease_s``; the hub renews
  the leases of its live connections well before they run out. If a server
  process dies, its names come free when their leases end. (Redis: ``SET key
  value NX PX lease`` to claim, a compare-and-extend script to renew, a
  compare-and-delete script to release.)
* **Routing is by address.** :meth:`Directory.route` answers with an
  :class:`Address`: the id of the server process (``instance``) holding the
  user's connection, plus the connection id that process gave it. A hub
  delivers to addresses of its own instance; a multi-process directory would
  carry the rest to their instance (Redis pub/sub on a channel per instance).
* **Rooms are member lists** in joining order, with an atomic size limit in
  :meth:`Directory.join`. (Redis: a sorted set per room, scored by join time,
  updated by a script that checks the size.)

The methods are synchronous so the hub stays a plain state machine. Every
method that depends on leases takes ``now`` (the caller's monotonic clock);
a shared directory may use its own clock instead.

A directory shared by several processes also implements :class:`SharedDirectory`:
its I/O is asynchronous, so the I/O layer awaits :meth:`SharedDirectory.admit`
for each ``hello`` before feeding it to the hub, and the synchronous methods
answer from a local replica (``ivisit_nb.room.redis_directory``).
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable, Protocol, runtime_checkable

ConnId = str | int
"""An opaque connection id, assigned by the I/O layer (unique within one instance)."""


@dataclass(frozen=True)
class Address:
    """Where a user's connection lives: server process ``instance``, connection ``conn`` there."""

    instance: str
    conn: ConnId


@runtime_checkable
class Directory(Protocol):
    """Name claims, room members and routing for one or more room-server processes.

    :meth:`rooms` and :meth:`names` may be called from any thread; the rest are
    called from the hub's thread. Names given to a directory are canonical
    (already checked and in NFC); keys are the hub's look-alike skeletons.
    """

    def claim(self, name: str, key: str, owner: Address, lease_s: float, now: float) -> bool:
        """Take ``key`` for ``name`` owned by ``owner`` until ``now + lease_s``.

        ``False`` if another owner holds ``key`` under a lease that has not ended.
        Atomic: of two concurrent claims of one key, at most one succeeds.
        """
        ...

    def renew(self, key: str, owner: Address, lease_s: float, now: float) -> bool:
        """Extend ``owner``'s claim on ``key`` to ``now + lease_s``; ``False`` if it is no longer theirs."""
        ...

    def release(self, key: str, owner: Address) -> bool:
        """Give up ``key`` if ``owner`` holds it, lease ended or not.

        ``True`` if it was ``owner``'s; ``False`` (and nothing changes) if someone
        else holds it or nobody does. Idempotent.
        """
        ...

    def holder(self, key: str, now: float) -> str | None:
        """The name holding ``key`` under a live lease, or ``None``."""
        ...

    def route(self, name: str, now: float) -> Address | None:
        """Where user ``name`` (exactly this canonical name) is connected, or ``None``."""
        ...

    def join(self, room: str, name: str, limit: int) -> bool:
        """Add ``name`` to ``room`` unless it already has ``limit`` members (then ``False``)."""
        ...

    def leave(self, room: str, name: str) -> None:
        """Remove ``name`` from ``room``; a room with no members stops existing. Idempotent."""
        ...

    def members(self, room: str) -> list[str]:
        """The members of ``room``, in joining order (empty if there is no such room)."""
        ...

    def rooms(self) -> dict[str, list[str]]:
        """Every non-empty room and its members in joining order, as a fresh copy."""
        ...

    def names(self) -> list[str]:
        """Every claimed name, in claiming order (a lapsed lease counts until it is claimed again)."""
        ...


class Unavailable(RuntimeError):
    """The shared directory cannot be reached right now; new joins must wait (code ``unavailable``)."""


PresenceCallback = Callable[[str, str, bool], None]
"""``on_presence(room, user, joined)``: the replica saw ``user`` join (True) or leave ``room``."""
FrameCallback = Callable[[str, str], None]
"""``on_frame(conn, text)``: a frame forwarded from another instance for local connection ``conn``
(the id as text)."""


@runtime_checkable
class SharedDirectory(Directory, Protocol):
    """A :class:`Directory` shared by several server processes (a cluster).

    The hub's synchronous calls are answered from a local replica. What needs
    the shared store is asynchronous and driven by the I/O layer
    (:class:`~ivisit_nb.room.app.RoomApp`):

    * :meth:`start` connects and keeps the replica fed; it calls
      ``on_presence`` for *every* presence change, this instance's users
      included (so ``announces_presence`` is true and the hub leaves telling
      to :meth:`RoomHub.presence <ivisit_nb.room.hub.RoomHub.presence>`),
      ``on_frame`` for frames other instances forward to local connections,
      and ``on_lost()`` when names of local connections were taken away (the
      app then runs the hub's ``tick`` so they are closed).
    * :meth:`admit` claims a name (and a room place) before the hub sees the
      ``hello``; the hub's next :meth:`claim` and :meth:`join` of that name
      report its verdict.
    * :meth:`forward` carries a frame to a connection of another instance.
    """

    announces_presence: bool

    async def start(
        self, instance: str, *, token: str | None, on_presence: PresenceCallback,
        on_frame: FrameCallback, on_lost: Callable[[], None],
    ) -> None:
        """Connect and start the background tasks; raise if this instance must not join the cluster."""
        ...

    async def stop(self) -> None:
        """Leave the cluster: this instance's users leave everyone's presence at once."""
        ...

    async def admit(self, name: str, key: str, room: str | None, owner: Address, limit: int, lease_s: float) -> Any:
        """Claim ``key`` for ``name`` (and a place in ``room``) for ``owner``; raise :class:`Unavailable`."""
        ...

    def forward(self, address: Address, text: str) -> None:
        """Send ``text`` to connection ``address.conn`` of instance ``address.instance`` (best effort)."""
        ...


@dataclass
class _Claim:
    name: str
    owner: Address
    expires: float


class MemoryDirectory:
    """A :class:`Directory` in this process's memory, for a single server process.

    Thread-safe: every method takes one lock, so :meth:`rooms` and
    :meth:`names` can be read from other threads while the hub runs.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._claims: dict[str, _Claim] = {}  # key -> claim
        self._by_name: dict[str, str] = {}  # name -> key
        self._rooms: dict[str, dict[str, None]] = {}  # room -> members (an ordered set)

    def _live(self, key: str, now: float) -> _Claim | None:
        claim = self._claims.get(key)
        if claim is not None and claim.expires <= now:
            return None
        return claim

    def claim(self, name: str, key: str, owner: Address, lease_s: float, now: float) -> bool:
        with self._lock:
            current = self._live(key, now)
            if current is not None and current.owner != owner:
                return False
            stale = self._claims.pop(key, None)
            if stale is not None and self._by_name.get(stale.name) == key:
                del self._by_name[stale.name]
            self._claims[key] = _Claim(name, owner, now + lease_s)
            self._by_name[name] = key
            return True

    def renew(self, key: str, owner: Address, lease_s: float, now: float) -> bool:
        with self._lock:
            claim = self._claims.get(key)
            if claim is None or claim.owner != owner:
                return False
            claim.expires = now + lease_s
            return True

    def release(self, key: str, owner: Address) -> bool:
        with self._lock:
            claim = self._claims.get(key)
            if claim is None or claim.owner != owner:
                return False
            del self._claims[key]
            if self._by_name.get(claim.name) == key:
                del self._by_name[claim.name]
            return True

    def holder(self, key: str, now: float) -> str | None:
        with self._lock:
            claim = self._live(key, now)
            return None if claim is None else claim.name

    def route(self, name: str, now: float) -> Address | None:
        with self._lock:
            key = self._by_name.get(name)
            claim = None if key is None else self._live(key, now)
            return None if claim is None or claim.name != name else claim.owner

    def join(self, room: str, name: str, limit: int) -> bool:
        with self._lock:
            members = self._rooms.get(room, {})
            if name not in members and len(members) >= limit:
                return False
            self._rooms.setdefault(room, members)[name] = None
            return True

    def leave(self, room: str, name: str) -> None:
        with self._lock:
            members = self._rooms.get(room)
            if members is not None:
                members.pop(name, None)
                if not members:
                    del self._rooms[room]

    def members(self, room: str) -> list[str]:
        with self._lock:
            return list(self._rooms.get(room, ()))

    def rooms(self) -> dict[str, list[str]]:
        with self._lock:
            return {room: list(members) for room, members in self._rooms.items()}

    def names(self) -> list[str]:
        with self._lock:
            return list(self._by_name)
