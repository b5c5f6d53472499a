"""Session: one user on a room server, linked to the others over WebRTC.

Everything network-facing runs on the session's own engine thread (see
:mod:`ivisit_nb.engine.loop`). Public methods are safe to call from any thread
and return plain values or :class:`~ivisit_nb.engine.loop.Handle` objects that
can be ``.wait()``-ed or awaited.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable

import pandas as pd

from . import events as ev
from .consent import Request
from .engine.loop import EngineLoop, Handle, spawn
from .engine.peerlink import PeerLink
from .room.client import RoomClient
from .settings import Settings, default_config_dir
from .sharing.inbox import Inbox
from .sharing.policy import Policy
from .sharing.transfers import LOG_COLUMNS, RoomTransfer, Transfer
from .sharing.urls import check_url
from .sharing.names import safe_user_dir
from .sharing.service import CONTROL_TYPES, Sharing

log = logging.getLogger("ivisit_nb.session")

MESH_RETRY = 3.0
MAX_CHAT = 16 * 1024


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


class Call(Handle[str]):
    """A 1:1 call in progress. ``status``: ringing, connected, refused, no answer, failed."""

    def __init__(self, user: str, future: Any) -> None:
        super().__init__(future)
        self.user = user
        self.call_id = uuid.uuid4().hex
        self.status = "ringing"
        self.reason = ""

    def __repr__(self) -> str:
        return f"<Call to {self.user}: {self.status}{' - ' + self.reason if self.reason else ''}>"


class Session:
    """One user in a room (or in no room, for 1:1 calls). Use :meth:`join`."""

    def __init__(
        self,
        url: str,
        user: str,
        room: str | None = None,
        *,
        inbox: str | Path | None = None,
        config_dir: str | Path | None = None,
        token: str | None = None,
        ice_servers: list[Any] | None = None,
        call_timeout: float = 30.0,
        offer_timeout: float = 120.0,
        max_pending_offers: int = 20,
        max_size: int | None = None,
        stall_timeout: float = 30.0,
        use_uvloop: bool | None = None,
    ) -> None:
        if not isinstance(user, str) or not user.strip():
            raise ValueError("user must be a non-empty name")
        self.url, self.user, self.room = url, user, room
        self.ice_servers = ice_servers
        self.call_timeout = call_timeout
        self.config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
        self.inbox_dir = Path(inbox) if inbox is not None else Path("inbox") / safe_user_dir(user)
        self.settings = Settings(self.config_dir / safe_user_dir(user) / "settings.json")
        self._engine = EngineLoop(name=f"ivisit-engine-{user}", use_uvloop=use_uvloop)
        self._client = RoomClient(url, user, room, self._on_server, token=token)
        self._members: set[str] = set()
        self._peers: dict[str, Peer] = {}
        self._allowed_calls: dict[str, str] = {}  # user -> call id we accepted
        self._hung_up: set[str] = set()
        self._last_attempt: dict[str, float] = {}
        self._calls: dict[str, tuple[Call, Any]] = {}
        self._requests: list[Request] = []
        self._messages: list[dict[str, Any]] = []
        self._subscribers: list[Callable[[ev.Event], None]] = []
        self._lock = threading.RLock()
        self._changed: asyncio.Event | None = None
        self._closed = False
        self.connected = False
        self.sharing = Sharing(
            self,
            self.inbox_dir,
            max_size=max_size,
            offer_timeout=offer_timeout,
            max_pending_offers=max_pending_offers,
            stall_timeout=stall_timeout,
        )

    # -- joining and leaving ----------------------------------------------------
    @classmethod
    def join(cls, url: str, user: str, room: str | None = None, timeout: float = 20.0, **kwargs: Any) -> "Session":
        """Connect to the room server and return once the room roster is known.

        Raises :class:`~ivisit_nb.room.client.JoinRefused` if the server says no
        (name taken, wrong token, room full) and ``ConnectionError`` if it cannot
        be reached.
        """
        session = cls(url, user, room, **kwargs)
        try:
            session._engine.run(session._start(), timeout)
        except BaseException:
            session._engine.stop()
            raise
        return session

    @classmethod
    async def join_async(cls, url: str, user: str, room: str | None = None, **kwargs: Any) -> "Session":
        """:meth:`join` for async code: joins without blocking the caller's loop."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: cls.join(url, user, room, **kwargs))

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        try:
            welcome = await self._client.connect()
        except (OSError, asyncio.TimeoutError) as exc:
            raise ConnectionError(f"cannot reach the room server at {self.url}: {exc}") from None
        await self._on_server(welcome)
        spawn(self._maintain_mesh(), f"mesh {self.user}")

    def leave(self) -> None:
        """Close every link, leave the server and stop the engine thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._engine.alive:
            try:
                self._engine.run(self._shutdown(), 15.0)
            except Exception:
                log.debug("shutdown", exc_info=True)
            self._engine.stop()

    async def _shutdown(self) -> None:
        for call, _ in list(self._calls.values()):
            self._end_call(call.user, "failed", "the session left")
        for name in list(self._peers):
            self.sharing.cancel_with(name, f"{self.user} left")  # peers learn why, not just "link lost"
        links = [p.link for p in self._peers.values() if p.link and p.link.state == "connected"]
        await asyncio.gather(*(link.flush() for link in links))
        await self._client.close()
        await asyncio.gather(*(p.link.close() for p in self._peers.values() if p.link), return_exceptions=True)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.leave()

    def __repr__(self) -> str:
        return f"<Session {self.user} in {self.room or 'no room'}: {len(self._peers)} peers>"

    def ui(self) -> Any:
        """The notebook panel for this session: roster, offers, progress and the Sharing viewer.

        See :mod:`ivisit_nb.widgets`; needs ipywidgets (and the ivisit-nb JupyterLab
        extension for drag and drop and notifications).
        """
        from .widgets import Panel

        return Panel(self)

    # -- events ------------------------------------------------------------------
    def on(self, callback: Callable[[ev.Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event (on the engine thread). Returns an unsubscribe function."""
        self._subscribers.append(callback)
        return lambda: self._subscribers.remove(callback) if callback in self._subscribers else None

    def _emit(self, event: ev.Event) -> None:
        for cb in list(self._subscribers):
            try:
                cb(event)
            except Exception:
                log.exception("event subscriber failed on %s", type(event).__name__)
        if self._changed is not None:
            self._changed.set()

    # -- what you can see -----------------------------------------------------------
    @property
    def peers(self) -> dict[str, Peer]:
        """Other users we are (or try to be) linked with, by name."""
        with self._lock:
            return dict(self._peers)

    @property
    def members(self) -> list[str]:
        """The other members of our room, as the room server reports them."""
        with self._lock:
            return sorted(self._members)

    @property
    def pending_calls(self) -> list[Request]:
        """Calls waiting for accept()/refuse()."""
        return [r for r in self._requests if r.kind == "call" and r.pending]

    @property
    def pending_messages(self) -> list[Request]:
        """Chat messages held because ``messages`` is ``ask`` for their sender."""
        return [r for r in self._requests if r.kind == "message" and r.pending]

    @property
    def messages(self) -> pd.DataFrame:
        """Chat log: time, sender, to, text, decision (sent / accept / refuse / ask)."""
        with self._lock:
            return pd.DataFrame(self._messages, columns=["time", "sender", "to", "text", "decision"])

    def wait_for_peers(self, users: list[str] | None = None, timeout: float = 30.0) -> Handle[dict[str, Peer]]:
        """A handle that completes when ``users`` (default: every room member) are connected."""

        async def _wait() -> dict[str, Peer]:
            assert self._changed is not None
            deadline = time.monotonic() + timeout
            while True:
                want = set(users) if users is not None else set(self._members)
                peers = self._peers
                if all(u in peers and peers[u].state == "connected" for u in want):
                    return {u: peers[u] for u in want}
                left = deadline - time.monotonic()
                if left <= 0:
                    states = {u: (peers[u].state if u in peers else "absent") for u in want}
                    raise TimeoutError(f"peers not connected after {timeout} s: {states}")
                self._changed.clear()
                try:
                    await asyncio.wait_for(self._changed.wait(), min(left, 0.5))
                except asyncio.TimeoutError:
                    pass

        return self._engine.submit(_wait())

    # -- room server messages ---------------------------------------------------------
    async def _on_server(self, msg: dict[str, Any]) -> None:
        t = msg.get("type")
        if t == "welcome":
            self.connected = True
            with self._lock:
                self._members = {m for m in msg.get("members", []) if isinstance(m, str)}
                for name in self._members:
                    self._peer(name).member = True
                gone = [n for n, p in self._peers.items() if p.member and n not in self._members]
            for name in gone:  # left while we were away; never await while holding the lock
                await self._drop_member(name)
            self._emit(ev.Connected(room=self.room, members=tuple(sorted(self._members))))
            await self._form_mesh()
        elif t == "joined":
            user = msg.get("user")
            if isinstance(user, str) and user != self.user:
                with self._lock:
                    self._members.add(user)
                    self._peer(user).member = True
                    self._hung_up.discard(user)
                self._emit(ev.MemberJoined(user=user, room=msg.get("room")))
                await self._form_mesh()
        elif t == "left":
            user = msg.get("user")
            if isinstance(user, str):
                await self._drop_member(user)
                self._emit(ev.MemberLeft(user=user, room=msg.get("room")))
        elif t == "signal":
            sender, data = msg.get("from"), msg.get("data")
            if isinstance(sender, str) and isinstance(data, dict):
                await self._on_signal(sender, data)
        elif t == "error":
            code, text = str(msg.get("code")), str(msg.get("message"))
            log.warning("room server: %s [%s]", text, code)
            if code == "no-such-user":
                target = msg.get("to") or msg.get("user")
                if isinstance(target, str) and target in self._calls:
                    self._end_call(target, "failed", f"{target} is not connected to this server")
            self._emit(ev.ServerError(code=code, message=text))
        elif t == "disconnected":
            self.connected = False
            self._emit(ev.Disconnected(reason=str(msg.get("reason"))))

    def _peer(self, name: str, member: bool = False) -> Peer:
        peer = self._peers.get(name)
        if peer is None:
            peer = self._peers[name] = Peer(name, member)
        return peer

    async def _drop_member(self, user: str) -> None:
        with self._lock:
            self._members.discard(user)
            peer = self._peers.pop(user, None)
        if peer and peer.link:
            await peer.link.close("closed", f"{user} left")

    # -- the mesh -------------------------------------------------------------------------
    async def _form_mesh(self) -> None:
        """Start a link to every room member we should offer to and have no live link with.

        The user whose name sorts first makes the offer, so no two offers cross.
        """
        now = time.monotonic()
        for name in sorted(self._members):
            if name in self._hung_up or not self.user < name:
                continue
            peer = self._peer(name, member=True)
            if peer.link and peer.link.state not in ("failed", "closed"):
                continue
            if now - self._last_attempt.get(name, -1e9) < MESH_RETRY and peer.link is not None:
                continue
            self._last_attempt[name] = now
            await self._new_link(name, initiator=True, kind="room")

    async def _maintain_mesh(self) -> None:
        while not self._closed:
            await asyncio.sleep(1.0)
            if self._client.connected:
                await self._form_mesh()

    async def _new_link(self, name: str, *, initiator: bool, kind: str, call_id: str | None = None) -> PeerLink:
        peer = self._peer(name, member=name in self._members)
        old = peer.link
        link = PeerLink(
            self.user,
            name,
            initiator=initiator,
            kind=kind,
            call_id=call_id,
            send_signal=lambda data, to=name: self._client.signal(to, data),
            ice_servers=self.ice_servers,
            on_state=self._on_link_state,
            on_message=self._on_peer_message,
            on_data=self._on_peer_data,
        )
        peer.link = link
        if old is not None:
            await old.close("closed", "replaced by a new connection")
        await link.start()
        return link

    def _on_link_state(self, link: PeerLink) -> None:
        if link.state in ("failed", "closed"):
            self.sharing.on_link_down(link)
        peer = self._peers.get(link.remote)
        if peer is None or peer.link is not link:
            return  # an old link being closed
        self._emit(ev.PeerStateChanged(user=link.remote, state=link.state, reason=link.reason))
        if link.remote in self._calls and link.state in ("connected", "failed"):
            self._end_call(link.remote, link.state, link.reason)
        if link.state == "closed" and not peer.member:
            with self._lock:
                self._peers.pop(link.remote, None)

    async def _on_signal(self, sender: str, data: dict[str, Any]) -> None:
        kind = data.get("kind")
        if kind == "offer":
            allowed = (sender in self._members and data.get("link") == "room") or (
                data.get("link") == "call" and self._allowed_calls.get(sender) == data.get("call_id")
            )
            if not allowed or sender in self._hung_up:
                log.info("ignored an offer from %s that no room or accepted call covers", sender)
                return
            self._allowed_calls.pop(sender, None)
            link = await self._new_link(sender, initiator=False, kind=str(data.get("link")))
            await link.handle_signal(data)
        elif kind in ("answer", "candidate"):
            peer = self._peers.get(sender)
            if peer and peer.link:
                await peer.link.handle_signal(data)
        elif kind == "call":
            await self._on_call(sender, str(data.get("call_id", "")))
        elif kind == "call-accepted":
            entry = self._calls.get(sender)
            if entry and data.get("call_id") == entry[0].call_id:
                await self._new_link(sender, initiator=True, kind="call", call_id=entry[0].call_id)
        elif kind == "call-refused":
            if sender in self._calls:
                self._end_call(sender, "refused", str(data.get("reason") or f"{sender} refused the call"))
        elif kind == "call-cancel":
            for r in self._requests:
                if r.kind == "call" and r.sender == sender and r.pending:
                    r._decide("refuse", False, "caller hung up")
        elif kind == "bye":
            peer = self._peers.get(sender)
            if peer and peer.link:
                self._hung_up.add(sender)
                await peer.link.close("closed", f"{sender} hung up")

    # -- 1:1 calls ------------------------------------------------------------------------
    def call(self, user: str) -> Call:
        """Ask ``user`` (anyone on this server) for a private 1:1 link.

        The returned :class:`Call` ends as ``connected``, ``refused`` (with the
        callee's reason), ``no answer`` after ``call_timeout`` s, or ``failed``.
        """
        fut: concurrent.futures.Future[str] = concurrent.futures.Future()
        call = Call(user, fut)
        self._engine.call_soon(lambda: spawn(self._place_call(call, fut), f"call {user}"))
        return call

    async def _place_call(self, call: Call, fut: Any) -> None:
        user = call.user
        self._hung_up.discard(user)
        peer = self._peers.get(user)
        if peer and peer.state == "connected":
            call.status = "connected"
            fut.set_result("connected")
            return
        self._calls[user] = (call, fut)
        if not await self._client.signal(user, {"kind": "call", "call_id": call.call_id}):
            self._end_call(user, "failed", "not connected to the room server")
            return
        asyncio.get_running_loop().call_later(self.call_timeout, self._call_timed_out, user, call)

    def _call_timed_out(self, user: str, call: Call) -> None:
        entry = self._calls.get(user)
        if entry and entry[0] is call:
            spawn(self._client.signal(user, {"kind": "call-cancel", "call_id": call.call_id}), "call-cancel")
            self._end_call(user, "no answer", f"{user} did not answer within {self.call_timeout:g} s")

    def _end_call(self, user: str, status: str, reason: str) -> None:
        entry = self._calls.pop(user, None)
        if entry is None:
            return
        call, fut = entry
        call.status, call.reason = status, reason
        if not fut.done():
            fut.set_result(status)
        self._emit(ev.CallEnded(user=user, status=status, reason=reason))

    async def _on_call(self, caller: str, call_id: str) -> None:
        decision = self.settings.decide(caller, "calls")

        def answer(decision: str, reason: str) -> None:
            if decision == "accept":
                self._allowed_calls[caller] = call_id
                self._hung_up.discard(caller)
                msg = {"kind": "call-accepted", "call_id": call_id}
            else:
                msg = {"kind": "call-refused", "call_id": call_id, "reason": reason}
            spawn(self._client.signal(caller, msg), f"answer {caller}")

        if decision == "ask":
            def resolve(req: Request, decision: str, always: bool, by: str) -> None:
                if always:
                    self.settings[caller].calls = decision
                reason = f"{self.user} did not answer" if by in ("no answer", "caller hung up") else f"{self.user} refused the call"
                self._engine.call_soon(answer, decision, reason)

            req = Request("call", caller, resolve, call_id=call_id)
            self._requests.append(req)
            asyncio.get_running_loop().call_later(self.call_timeout, req.expire)
            self._emit(ev.RequestPending(request=req))
        else:
            answer(decision, f"{self.user} refuses calls from {caller}")

    def disconnect(self, user: str) -> None:
        """Hang up on ``user``: close the link and do not re-form it until a new call or join."""

        async def _hang_up() -> None:
            self._hung_up.add(user)
            self.sharing.cancel_with(user, f"{self.user} disconnected from {user}")
            peer = self._peers.get(user)
            if peer and peer.link and peer.link.state == "connected":
                await peer.link.flush()  # the cancel reaches them before the link goes
            await self._client.signal(user, {"kind": "bye", "reason": "hung up"})
            if peer and peer.link:
                await peer.link.close("closed", f"{self.user} hung up")

        self._engine.run(_hang_up(), 10.0)

    # -- chat --------------------------------------------------------------------------
    def say(self, text: str, to: str | None = None) -> Handle[list[str]]:
        """Send a chat message to ``to`` or to everyone connected; the handle gives who it reached."""
        if not isinstance(text, str):
            raise TypeError("text must be a string")
        if len(text.encode()) > MAX_CHAT:
            raise ValueError(f"message is {len(text.encode())} bytes; the limit is {MAX_CHAT}")

        async def _say() -> list[str]:
            if to is not None:
                peer = self._peers.get(to)
                targets = [peer] if peer else []
                if not targets:
                    raise KeyError(f"{to} is not a peer of {self.user}; peers: {sorted(self._peers)}")
            else:
                targets = list(self._peers.values())
            reached = [p.name for p in targets if p.link and p.link.send({"t": "chat", "text": text, "to": to})]
            with self._lock:
                self._messages.append({"time": time.time(), "sender": self.user, "to": to, "text": text, "decision": "sent"})
            return reached

        return self._engine.submit(_say())

    def _record_message(self, sender: str, to: str | None, text: str | None, decision: str) -> None:
        with self._lock:
            self._messages.append({"time": time.time(), "sender": sender, "to": to, "text": text, "decision": decision})
        self._emit(ev.MessageReceived(sender=sender, to=to, text=text, decision=decision))

    # -- peer messages ----------------------------------------------------------------
    def _on_peer_message(self, link: PeerLink, msg: dict[str, Any]) -> None:
        t = msg.get("t")
        if t == "chat":
            text, to = msg.get("text"), msg.get("to")
            if not isinstance(text, str) or len(text.encode()) > MAX_CHAT:
                log.warning("%s sent an invalid or oversized chat message", link.remote)
                return
            to = to if isinstance(to, str) else None
            self._on_chat(link.remote, to, text)
        elif t in CONTROL_TYPES:
            self.sharing.on_control(link, msg)
        else:
            log.debug("unhandled control message %r from %s", t, link.remote)

    def _on_chat(self, sender: str, to: str | None, text: str) -> None:
        decision = self.settings.decide(sender, "messages")
        if decision == "accept":
            self._record_message(sender, to, text, "accept")
        elif decision == "refuse":
            self._record_message(sender, to, None, "refuse")
        else:
            def resolve(req: Request, decision: str, always: bool, by: str) -> None:
                if always:
                    self.settings[sender].messages = decision
                self._record_message(sender, to, text if decision == "accept" else None, decision)

            req = Request("message", sender, resolve, text=text, to=to)
            self._requests.append(req)
            self._emit(ev.RequestPending(request=req))

    def _on_peer_data(self, link: PeerLink, frame: bytes) -> None:
        self.sharing.on_data(link, frame)

    # -- files and URLs ---------------------------------------------------------------
    @property
    def receiving(self) -> bool:
        """iVisit's "Receive" switch; off by default. While off, every offer is refused at once."""
        return self.sharing.policy.receiving

    @receiving.setter
    def receiving(self, value: bool) -> None:
        self.sharing.policy.receiving = bool(value)

    @property
    def policy(self) -> Policy:
        """The consent policy; set ``policy.rule = fn(offer)`` to prototype your own."""
        return self.sharing.policy

    @property
    def inbox(self) -> Inbox:
        """The history of received items: ``current``, ``back()``, ``forward()``, ``paused``."""
        return self.sharing.inbox

    @property
    def pending_offers(self) -> list[Request]:
        """File and URL offers waiting for one of the four choices."""
        return [r for r in self.sharing.requests if r.pending]

    def send_file(self, path: str | Path, to: str | None = None) -> Transfer | RoomTransfer:
        """Offer a file to ``to``, or to every room member when ``to`` is None.

        Returns at once with a handle: ``.wait()``, ``await``, ``.status``,
        ``.progress``, ``.cancel()`` (and ``.results`` for a room send).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p} is not a file; give the path of a file to send")
        return self._engine.run(self.sharing.send_file(p, to), 600)

    def send_url(self, url: str, to: str | None = None) -> Transfer | RoomTransfer:
        """Offer an http(s) URL; other schemes raise :class:`~ivisit_nb.sharing.urls.BadURL`."""
        url = check_url(url)
        return self._engine.run(self.sharing.send_url(url, to), 60)

    @property
    def transfers(self) -> pd.DataFrame:
        """One row per transfer, both directions (see docs/protocol.md for the columns)."""
        return pd.DataFrame(self._engine_rows(self.sharing.log_rows), columns=LOG_COLUMNS)

    @property
    def policy_log(self) -> pd.DataFrame:
        """Every consent decision: who sent what, the decision and what made it."""
        cols = ["time", "transfer_id", "sender", "kind", "name", "size", "hash", "url", "decision", "decided_by", "reason"]
        return pd.DataFrame(list(self.sharing.policy_rows), columns=cols)

    @property
    def progress_log(self) -> pd.DataFrame:
        """Timestamped byte counts per transfer."""
        return pd.DataFrame(list(self.sharing.progress_rows), columns=["time", "transfer_id", "bytes", "total"])

    def _engine_rows(self, fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        if self._engine.alive and not self._engine.in_engine:
            async def _rows() -> list[dict[str, Any]]:
                return fn()
            return self._engine.run(_rows(), 10)
        return fn()
