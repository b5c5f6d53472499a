"""A malicious room server for tests: it bridges every WebRTC link it signals.

:class:`MitmRoomServer` speaks the signalling protocol of docs/protocol.md section 1
(hello / welcome, joined / left, signal, ping / pong, leave) on ``ws://127.0.0.1:PORT/``,
well enough for real :class:`ivisit_nb.Session` clients. It shares no code with
``ivisit_nb.room``. What it does not do is relay offers and answers: when X offers
to Y, it answers X itself with its own aiortc ``RTCPeerConnection`` (leg X) and
offers to Y, as if from X, with another one (leg Y). Both legs carry the
pre-negotiated channels ``control`` (id 0) and ``data`` (id 1), as PeerLink makes
them, and the server relays what arrives on one leg to the other, so X and Y talk
(ping / pong, chat, the ``sas-*`` exchange) without noticing anything but the
short authentication string. When one honest side closes its link, the MITM
closes the other leg too, as the end of a direct link would.

Each bridge is a :class:`Bridge` in :attr:`MitmRoomServer.bridges`: its four DTLS
fingerprints and every control message it relayed, so a test can recompute what
each honest side must have derived. ``tamper`` (a function of the bridge, the
direction and the message, returning the message to deliver) lets a test rewrite
control messages in flight. :meth:`MitmRoomServer.relink` forces fresh links
without new sessions: it tells each member that the other left and joined again.

The server runs in a daemon thread with its own event loop; its public methods
are safe to call from any thread.
"""

from __future__ import annotations

import asyncio
import json
import threading
from dataclasses import dataclass, field
from typing import Any, Callable

from aiohttp import WSMsgType, web
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

from ivisit_nb.protocol.sas import sdp_fingerprint

#: ``tamper(bridge, direction, msg) -> msg``; direction is "offerer->answerer" or "answerer->offerer".
Tamper = Callable[["Bridge", str, dict[str, Any]], dict[str, Any]]

TO_ANSWERER = "offerer->answerer"
TO_OFFERER = "answerer->offerer"


@dataclass
class _Leg:
    """One of the MITM's two peer connections, and what waits for its channels to open."""

    pc: RTCPeerConnection
    control: Any
    data: Any
    pending: dict[str, list[Any]] = field(default_factory=lambda: {"control": [], "data": []})

    def channel(self, name: str) -> Any:
        return self.control if name == "control" else self.data

    def send(self, name: str, payload: Any) -> None:
        ch = self.channel(name)
        if ch.readyState == "open":
            ch.send(payload)
        elif ch.readyState == "connecting":
            self.pending[name].append(payload)
        # closing / closed: the honest side is gone; drop it

    def flush(self, name: str) -> None:
        ch = self.channel(name)
        queued, self.pending[name] = self.pending[name], []
        for payload in queued:
            ch.send(payload)


@dataclass
class Bridge:
    """One intercepted link: ``offerer`` <-> leg O (MITM) ... leg A (MITM) <-> ``answerer``."""

    offerer: str
    answerer: str
    offerer_fingerprint: str = ""  # the honest offerer's certificate, from its offer
    mitm_to_offerer_fingerprint: str = ""  # what the offerer sees as its peer's certificate
    mitm_to_answerer_fingerprint: str = ""  # what the answerer sees as its peer's certificate
    answerer_fingerprint: str = ""  # the honest answerer's certificate, from its answer
    #: Every control message relayed, as (direction, message received, message delivered).
    relayed: list[tuple[str, dict[str, Any], dict[str, Any]]] = field(default_factory=list)
    legs: dict[str, _Leg] = field(default_factory=dict)  # "offerer" / "answerer" side

    def delivered(self, direction: str, t: str) -> dict[str, Any] | None:
        """The first control message of type ``t`` delivered in ``direction``, as delivered."""
        return next((out for d, _, out in list(self.relayed) if d == direction and out.get("t") == t), None)


class MitmRoomServer:
    """A room server that puts itself in the middle of every link. See the module docstring."""

    def __init__(self, tamper: Tamper | None = None) -> None:
        self.tamper = tamper
        self.bridges: list[Bridge] = []
        self._members: dict[str, list[str]] = {}  # room -> users in joining order
        self._sockets: dict[str, web.WebSocketResponse] = {}
        self._rooms: dict[str, str | None] = {}
        self._send_lock: dict[str, asyncio.Lock] = {}
        self._loop = asyncio.new_event_loop()
        self._runner: web.AppRunner | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.port = 0
        self._thread = threading.Thread(target=self._main, name="mitm-room-server", daemon=True)
        self._thread.start()
        self._ready.wait(10)
        if self._error is not None:
            raise self._error

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    # -- thread plumbing ----------------------------------------------------------------
    def _main(self) -> None:
        asyncio.set_event_loop(self._loop)
        try:
            self._loop.run_until_complete(self._start())
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        self._loop.run_forever()
        self._loop.run_until_complete(self._stop())
        self._loop.close()

    async def _start(self) -> None:
        app = web.Application()
        app.router.add_get("/", self._handle)
        self._runner = web.AppRunner(app)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]

    async def _stop(self) -> None:
        pcs = [leg.pc for b in self.bridges for leg in b.legs.values()]
        if pcs:
            await asyncio.wait([asyncio.ensure_future(pc.close()) for pc in pcs], timeout=3.0)
        for ws in list(self._sockets.values()):
            await ws.close()
        if self._runner is not None:
            await asyncio.wait_for(self._runner.cleanup(), 5.0)

    def run(self, coro: Any, timeout: float = 10.0) -> Any:
        """Run ``coro`` on the server's loop from another thread and return its result."""
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def close(self) -> None:
        if self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(15)

    def __enter__(self) -> "MitmRoomServer":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- signalling ---------------------------------------------------------------------
    async def _send(self, user: str, frame: dict[str, Any]) -> None:
        ws = self._sockets.get(user)
        if ws is None or ws.closed:
            return
        async with self._send_lock[user]:
            try:
                await ws.send_str(json.dumps(frame))
            except ConnectionError:
                pass

    async def _handle(self, request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        user: str | None = None
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = json.loads(msg.data)
                t = frame.get("type")
                if user is None:
                    if t != "hello":
                        await ws.close(code=4004)
                        break
                    user, room = frame["user"], frame.get("room")
                    others = list(self._members.get(room, [])) if room is not None else []
                    self._sockets[user], self._rooms[user] = ws, room
                    self._send_lock[user] = asyncio.Lock()
                    welcome = {"type": "welcome", "user": user, "room": room, "members": others, "max_message": 65536}
                    await self._send(user, welcome)
                    if room is not None:
                        self._members.setdefault(room, []).append(user)
                        for other in others:
                            await self._send(other, {"type": "joined", "room": room, "user": user})
                elif t == "ping":
                    await self._send(user, {"type": "pong"})
                elif t == "leave":
                    break
                elif t == "signal":
                    await self._on_signal(user, frame.get("to"), frame.get("data") or {})
        finally:
            if user is not None and self._sockets.get(user) is ws:
                del self._sockets[user]
                room = self._rooms.pop(user, None)
                if room is not None and user in self._members.get(room, []):
                    self._members[room].remove(user)
                    for other in self._members[room]:
                        await self._send(other, {"type": "left", "room": room, "user": user})
            await ws.close()
        return ws

    async def _on_signal(self, sender: str, to: Any, data: dict[str, Any]) -> None:
        if to not in self._sockets:
            error = {"type": "error", "code": "no-such-user", "to": to, "fatal": False}
            error["message"] = f"{to} is not connected"
            await self._send(sender, error)
            return
        kind = data.get("kind")
        if kind == "offer":
            await self._intercept_offer(sender, to, data)
        elif kind == "answer":
            bridge = next((b for b in reversed(self.bridges) if b.offerer == to and b.answerer == sender), None)
            if bridge is not None:
                bridge.answerer_fingerprint = sdp_fingerprint(data["sdp"])
                answer = RTCSessionDescription(sdp=data["sdp"], type="answer")
                await bridge.legs["answerer"].pc.setRemoteDescription(answer)
        elif kind == "candidate":
            pass  # aiortc puts every candidate in the SDP and never trickles
        else:  # bye, and the call handshake: relay as an honest server would
            await self._send(to, {"type": "signal", "from": sender, "data": data})

    async def _intercept_offer(self, offerer: str, answerer: str, offer: dict[str, Any]) -> None:
        bridge = Bridge(offerer, answerer, offerer_fingerprint=sdp_fingerprint(offer["sdp"]))
        bridge.legs["offerer"] = self._leg(bridge, "offerer")
        bridge.legs["answerer"] = self._leg(bridge, "answerer")
        self.bridges.append(bridge)

        # leg O: answer the honest offerer ourselves, as if we were the answerer
        pc_o = bridge.legs["offerer"].pc
        await pc_o.setRemoteDescription(RTCSessionDescription(sdp=offer["sdp"], type="offer"))
        await pc_o.setLocalDescription(await pc_o.createAnswer())
        bridge.mitm_to_offerer_fingerprint = sdp_fingerprint(pc_o.localDescription.sdp)

        # leg A: offer to the honest answerer ourselves, as if we were the offerer
        pc_a = bridge.legs["answerer"].pc
        await pc_a.setLocalDescription(await pc_a.createOffer())
        bridge.mitm_to_answerer_fingerprint = sdp_fingerprint(pc_a.localDescription.sdp)
        forged = {k: v for k, v in offer.items() if k != "sdp"} | {"sdp": pc_a.localDescription.sdp}
        await self._send(answerer, {"type": "signal", "from": offerer, "data": forged})
        answer = {"kind": "answer", "sdp": pc_o.localDescription.sdp}
        await self._send(offerer, {"type": "signal", "from": answerer, "data": answer})

    def _leg(self, bridge: Bridge, side: str) -> _Leg:
        pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        # exactly as PeerLink makes them: pre-negotiated, reliable, ordered
        control = pc.createDataChannel("control", negotiated=True, id=0)
        leg = _Leg(pc, control, pc.createDataChannel("data", negotiated=True, id=1))
        other_side = "answerer" if side == "offerer" else "offerer"
        direction = TO_ANSWERER if side == "offerer" else TO_OFFERER

        def relay_control(message: Any) -> None:
            try:
                msg = json.loads(message)
            except (TypeError, ValueError):
                return
            out = self.tamper(bridge, direction, msg) if self.tamper else msg
            bridge.relayed.append((direction, msg, out))
            bridge.legs[other_side].send("control", json.dumps(out, separators=(",", ":")))

        def relay_data(message: Any) -> None:
            bridge.legs[other_side].send("data", message)

        leg.control.on("message", relay_control)
        leg.data.on("message", relay_data)
        leg.control.on("open", lambda: leg.flush("control"))
        leg.data.on("open", lambda: leg.flush("data"))

        def _closed() -> None:  # one honest side went: end the other leg too, as a direct link would
            for leg_ in bridge.legs.values():
                if leg_.pc.connectionState != "closed":
                    asyncio.ensure_future(leg_.pc.close())

        leg.control.on("close", _closed)

        @pc.on("connectionstatechange")
        async def _state() -> None:
            if pc.connectionState == "failed":
                await pc.close()

        return leg

    # -- test controls ------------------------------------------------------------------
    def relink(self, room: str = "lab") -> None:
        """Make every pair in ``room`` form a fresh link: each hears the others leave and join again.

        The offerer (the first name) hears it last, and frames to a member go out in
        order, so every member has dropped its old link before the new offer reaches it.
        """

        async def _relink() -> None:
            members = sorted(self._members.get(room, []), reverse=True)  # the offerer (first name) last
            for user in members:
                for other in members:
                    if other != user:
                        await self._send(user, {"type": "left", "room": room, "user": other})
                        await self._send(user, {"type": "joined", "room": room, "user": other})

        self.run(_relink())

    def close_bridges(self) -> None:
        """Close the MITM's legs of every bridge so far (to free their sockets)."""

        async def _close() -> None:
            pcs = [leg.pc for b in self.bridges for leg in b.legs.values() if leg.pc.connectionState != "closed"]
            if pcs:
                await asyncio.wait([asyncio.ensure_future(pc.close()) for pc in pcs], timeout=3.0)

        self.run(_close())
