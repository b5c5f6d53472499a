"""The mesh: who is in our room, and one PeerLink to each of them (and to 1:1 callers).

In a room, the member whose name sorts first makes the WebRTC offer, so offers never
cross and the mesh re-forms the same way after a room-server restart. A maintenance
tick re-offers to room-mates whose link failed. Runs on the session's engine loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from typing import Any, Callable, Iterable

from . import events as ev
from .engine.linkproto import LinkProtocol
from .engine.loop import spawn
from .engine.peerlink import PeerLink
from .listeners import Listeners
from .room.client import RoomClient

log = logging.getLogger("ivisit_nb.mesh")

MESH_RETRY = 3.0  # seconds between offers to a room-mate whose link failed
MESH_TICK = 1.0
SAS_GRACE = 5.0  # wait_for gives a connected link this long to agree on its SAS


class Peer:
    """What we know about another user: link ``state``, ``rtt`` (s) and ``sas``.

    ``state`` uses aiortc's words: new, connecting, connected, failed, closed.
    ``sas`` is the short authentication string: compare it aloud with the other
    user; if it differs, someone is in the middle of your connection.
    """

    def __init__(self, name: str, member: bool) -> None:
        self.name = name
        self.member = member
        self.link: PeerLink | None = None

    @property
    def state(self) -> str:
        return self.link.state if self.link else "new"

    @property
    def reason(self) -> str:
        return self.link.reason if self.link else ""

    @property
    def rtt(self) -> float | None:
        return self.link.rtt if self.link else None

    @property
    def sas(self) -> str | None:
        return self.link.sas if self.link else None

    def __repr__(self) -> str:
        rtt = f"{self.rtt * 1000:.1f} ms" if self.rtt is not None else "-"
        return f"<Peer {self.name} {self.state} rtt={rtt} sas={self.sas}>"


class Mesh:
    """Room presence and peer links for one user.

    ``link_protocols(name)`` gives the protocols to plug into a new link to ``name``.
    ``may_link(sender, offer)`` says whether an offer from someone who is not a
    room-mate is covered by a call we accepted. ``link_changed`` listeners hear every
    link state change of a current link.
    """

    def __init__(
        self,
        user: str,
        client: RoomClient,
        *,
        ice_servers: list[Any] | None,
        relay_only: bool = False,
        emit: Callable[[ev.Event], None],
        link_protocols: Callable[[str], Iterable[LinkProtocol]],
        may_link: Callable[[str, dict[str, Any]], bool],
    ) -> None:
        self.user = user
        self.client = client
        self.ice_servers = list(ice_servers or [])
        self.server_ice: list[Any] = []  # short-lived TURN credentials from the room server's welcome
        self.relay_only = relay_only
        self._emit = emit
        self._link_protocols = link_protocols
        self._may_link = may_link
        self.link_changed: Listeners[Callable[[PeerLink], None]] = Listeners("link state")
        self.lock = threading.RLock()  # guards members and peers against readers on other threads
        self.members: set[str] = set()
        self.peers: dict[str, Peer] = {}
        self.hung_up: set[str] = set()  # users we hung up on (or who hung up): no re-link until a new call
        self._last_attempt: dict[str, float] = {}
        self._syncs: list[asyncio.Future[None]] = []
        self._changed: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None

    # -- room presence (engine thread) ---------------------------------------------------
    def start(self) -> None:
        self._changed = asyncio.Event()
        self._task = spawn(self._maintain(), f"mesh {self.user}")

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def changed(self) -> None:
        """Wake :meth:`wait_for` (call after any event)."""
        if self._changed is not None:
            self._changed.set()

    def use_server_ice(self, ice_servers: Any) -> None:
        """Take the room server's ICE servers (TURN credentials) for the links made from now on:
        from the ``welcome``, and from each ``refresh`` before the credentials expire."""
        if isinstance(ice_servers, list):
            self.server_ice = [s for s in ice_servers if isinstance(s, dict) and isinstance(s.get("urls"), (str, list))]

    async def on_welcome(self, members: list[str], ice_servers: Any = None) -> None:
        self.use_server_ice(ice_servers)
        with self.lock:
            self.members = set(members)
            for name in self.members:
                self.peer(name).member = True
            gone = [n for n, p in self.peers.items() if p.member and n not in self.members]
        for name in gone:  # left while we were away; never await while holding the lock
            await self.drop_member(name)
        await self.form()

    async def on_joined(self, user: str) -> None:
        with self.lock:
            self.members.add(user)
            self.peer(user).member = True
            self.hung_up.discard(user)
        await self.form()

    def on_pong(self) -> None:
        if self._syncs:
            fut = self._syncs.pop(0)
            if not fut.done():
                fut.set_result(None)

    async def sync(self, timeout: float) -> None:
        """One round trip to the room server: presence it sent before now has been handled."""
        fut = asyncio.get_running_loop().create_future()
        self._syncs.append(fut)
        if not await self.client.send({"type": "ping"}):
            self._syncs.remove(fut)
            return
        try:
            await asyncio.wait_for(asyncio.shield(fut), timeout)
        except asyncio.TimeoutError:
            pass

    def peer(self, name: str, member: bool = False) -> Peer:
        peer = self.peers.get(name)
        if peer is None:
            peer = self.peers[name] = Peer(name, member)
        return peer

    def link_to(self, name: str) -> PeerLink | None:
        peer = self.peers.get(name)
        return peer.link if peer else None

    async def drop_member(self, user: str) -> None:
        with self.lock:
            self.members.discard(user)
            peer = self.peers.pop(user, None)
        if peer and peer.link:
            await peer.link.close("closed", f"{user} left")

    # -- links ------------------------------------------------------------------------
    async def form(self) -> None:
        """Start a link to every room member we should offer to and have no live link with."""
        now = time.monotonic()
        for name in sorted(self.members):
            if name in self.hung_up or not self.user < name:
                continue
            peer = self.peer(name, member=True)
            if peer.link and peer.link.state not in ("failed", "closed"):
                continue
            if now - self._last_attempt.get(name, -1e9) < MESH_RETRY and peer.link is not None:
                continue
            self._last_attempt[name] = now
            await self.new_link(name, initiator=True, kind="room")

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MESH_TICK)
            if self.client.connected:
                await self.form()

    async def new_link(self, name: str, *, initiator: bool, kind: str, call_id: str | None = None) -> PeerLink:
        peer = self.peer(name, member=name in self.members)
        old = peer.link
        link = PeerLink(
            self.user,
            name,
            initiator=initiator,
            kind=kind,
            call_id=call_id,
            send_signal=lambda data, to=name: self.client.signal(to, data),
            ice_servers=self.ice_servers + self.server_ice,
            relay_only=self.relay_only,
            on_state=self._on_link_state,
            protocols=self._link_protocols(name),
        )
        peer.link = link
        if old is not None:
            await old.close("closed", "replaced by a new connection")
        await link.start()
        return link

    def _on_link_state(self, link: PeerLink) -> None:
        peer = self.peers.get(link.remote)
        if peer is None or peer.link is not link:
            return  # an old link being closed
        self._emit(ev.PeerStateChanged(user=link.remote, state=link.state, reason=link.reason))
        self.link_changed(link)
        if link.state == "closed" and not peer.member:
            with self.lock:
                self.peers.pop(link.remote, None)

    async def on_signal(self, sender: str, data: dict[str, Any]) -> None:
        """An offer, answer, candidate or bye relayed by the room server."""
        kind = data.get("kind")
        if kind == "offer":
            allowed = (sender in self.members and data.get("link") == "room") or self._may_link(sender, data)
            if not allowed or sender in self.hung_up:
                log.info("ignored an offer from %s that no room or accepted call covers", sender)
                return
            link = await self.new_link(sender, initiator=False, kind=str(data.get("link")))
            await link.handle_signal(data)
        elif kind in ("answer", "candidate"):
            link = self.link_to(sender)
            if link is not None:
                await link.handle_signal(data)
        elif kind == "bye":
            link = self.link_to(sender)
            if link is not None:
                self.hung_up.add(sender)
                await link.close("closed", f"{sender} hung up")

    # -- waiting -----------------------------------------------------------------------
    async def wait_for(self, users: list[str] | None, timeout: float) -> dict[str, Peer]:
        """Wait until ``users`` are connected; by default every room member.

        "Every room member" is exact: first one round trip to the room server, so
        everyone who joined before the call is known, then anyone who joins during
        the wait is waited for too.
        """
        assert self._changed is not None
        deadline = time.monotonic() + timeout
        sas_grace: float | None = None
        if users is None:
            await self.sync(min(timeout, 5.0))
        while True:
            want = set(users) if users is not None else set(self.members)
            peers = self.peers
            left = deadline - time.monotonic()
            if all(u in peers and peers[u].state == "connected" for u in want):
                # the short authentication string follows one round trip later; give it a moment
                if sas_grace is None:
                    sas_grace = time.monotonic() + SAS_GRACE
                verified = all(peers[u].sas is not None for u in want)
                if verified or left <= 0 or time.monotonic() > sas_grace:
                    return {u: peers[u] for u in want}
            if left <= 0:
                states = {u: (peers[u].state if u in peers else "absent") for u in sorted(want)}
                raise TimeoutError(f"peers not connected after {timeout} s: {states}")
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
            except asyncio.TimeoutError:
                pass

    async def close(self) -> None:
        """Close every link (last words already flushed by the caller)."""
        self.stop()
        links = [p.link for p in self.peers.values() if p.link]
        await asyncio.gather(*(link.close() for link in links), return_exceptions=True)
