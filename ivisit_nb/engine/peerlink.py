"""PeerLink: one RTCPeerConnection to one remote user, and the protocols that run over it.

Two pre-negotiated, reliable, ordered data channels:
- ``control`` (id 0): JSON objects, each with a string ``"t"`` naming its type;
- ``data`` (id 1): binary frames, the first lane (:class:`~.lanes.DataChannelLane`).

Link protocols (heartbeat, SAS, chat, sharing ...) plug in with :meth:`PeerLink.add`;
each owns the control types and frame types it declares (see :mod:`.linkproto`) and
the link routes what arrives to its owner.

Media (video) is added to a live link by **renegotiation** (docs/protocol.md, *Video*): the
initiator makes every offer, the first through the room server, every later one over the
control channel (``{"t": "sdp", "type": "offer"|"answer", "sdp": ...}``); the other side asks
for one with ``{"t": "renegotiate"}``. One negotiation runs at a time; a request during one
schedules exactly one more after it. Protocols that carry media implement
:class:`MediaProtocol` and are called before each description and after each negotiation.

Whatever a peer sends, nothing reaches aiortc as an exception: malformed messages are
dropped with a logged reason, and a handler that raises is logged and the message dropped.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any, Awaitable, Callable, Iterable, Protocol, runtime_checkable

from aiortc import (
    RTCBundlePolicy,
    RTCConfiguration,
    RTCIceServer,
    RTCIceTransportPolicy,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.sdp import candidate_from_sdp

from ..protocol.sas import sdp_fingerprint
from ..protocol.wire import WireError, dump_control, parse_control
from .lanes import DataChannelLane, Lane
from .linkproto import BaseLinkProtocol, LinkProtocol
from .loop import spawn
from .stats import sctp_counters, sctp_unacked

log = logging.getLogger("ivisit_nb.peerlink")

CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 2.0
MAX_CONTROL_BYTES = 64 * 1024
CONTROL_RATE = 500.0  # control messages a second a peer may send on average ...
CONTROL_BURST = 2000.0  # ... and in a burst; beyond that they are dropped
RENEGOTIATE_TIMEOUT = 15.0  # the peer must answer a re-offer within this (else the link fails)
MAX_MEDIA_SECTIONS = 4  # a re-offer with more m= sections than this fails the link

SignalSender = Callable[[dict[str, Any]], Awaitable[bool]]


def ice_configuration(ice_servers: list[Any] | None, relay_only: bool = False) -> RTCConfiguration:
    """RTCConfiguration from dicts like ``{"urls": "stun:host:3478"}`` or RTCIceServer; none by default.

    ``max-bundle``: media added later rides the data channels' ICE and DTLS transport, so a
    renegotiation gathers nothing new (the first offer is the same as with ``balanced``)."""
    servers = []
    for s in ice_servers or []:
        if isinstance(s, RTCIceServer):
            servers.append(s)
        elif isinstance(s, str):
            servers.append(RTCIceServer(urls=s))
        else:
            servers.append(RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")))
    if relay_only:
        return RTCConfiguration(
            iceServers=servers, iceTransportPolicy=RTCIceTransportPolicy.RELAY, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE
        )
    return RTCConfiguration(iceServers=servers, bundlePolicy=RTCBundlePolicy.MAX_BUNDLE)


@runtime_checkable
class MediaProtocol(Protocol):
    """A link protocol that carries media: it shapes every renegotiation of the link.

    ``before_description(link, "offer")`` runs on the initiator just before it creates a
    re-offer (add a transceiver, set its direction and track); ``before_description(link,
    "answer")`` runs on the other side after the peer's offer was applied and before the
    answer is made. ``on_negotiated(link)`` runs on both sides once a negotiation completed
    (the transceivers' ``currentDirection`` are then the agreed ones).
    """

    def before_description(self, link: Any, kind: str) -> None: ...

    def on_negotiated(self, link: Any) -> None: ...


class _Negotiation(BaseLinkProtocol):
    """Owns the ``sdp`` and ``renegotiate`` control types of one link and hands them to it."""

    control_types = frozenset({"sdp", "renegotiate"})

    def __init__(self, link: "PeerLink") -> None:
        self.link = link

    def on_control(self, link: Any, msg: dict[str, Any]) -> None:
        self.link._on_negotiation_message(msg)


class PeerLink:
    """The WebRTC link to ``remote``. All methods run on the engine loop.

    ``on_state(link)`` is called on every state change: new, connecting, connected,
    failed, closed (the last two are final; ``reason`` says why).
    """

    def __init__(
        self,
        local: str,
        remote: str,
        *,
        initiator: bool,
        kind: str,
        send_signal: SignalSender,
        ice_servers: list[Any] | None,
        relay_only: bool = False,
        on_state: Callable[["PeerLink"], None],
        protocols: Iterable[LinkProtocol] = (),
        call_id: str | None = None,
    ) -> None:
        self.local, self.remote = local, remote
        self.initiator, self.kind, self.call_id = initiator, kind, call_id
        self._send_signal = send_signal
        self._on_state = on_state
        self.pc = RTCPeerConnection(ice_configuration(ice_servers, relay_only))
        self.control = self.pc.createDataChannel("control", negotiated=True, id=0)
        self.state = "new"
        self.reason = ""
        self.rtt: float | None = None
        self.sas: str | None = None  # set by the SAS protocol once this side knows it (compare it aloud)
        self.created = time.monotonic()
        self.last_heard = time.monotonic()
        self.dropped = 0  # messages from the peer dropped as malformed or over the rate
        self.frame_lane = "datachannel"  # the lane the frame being routed arrived on
        self._protocols: list[LinkProtocol] = []
        self._control_owner: dict[str, LinkProtocol] = {}
        self._frame_owner: dict[int, LinkProtocol] = {}
        self._tokens, self._tokens_at = CONTROL_BURST, time.monotonic()
        self._pending_candidates: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._media: list[MediaProtocol] = []
        self.negotiations = 0  # renegotiations completed on this link (the first connection not counted)
        self._want_offer = False
        self._offer_task: asyncio.Task[None] | None = None
        self._answer_waiter: asyncio.Future[str] | None = None
        self._answering: asyncio.Lock | None = None
        data = self.pc.createDataChannel("data", negotiated=True, id=1)
        self.lanes: dict[str, Lane] = {"datachannel": DataChannelLane(data, self.route_frame, self.describe)}
        self.add(_Negotiation(self))
        for proto in protocols:
            self.add(proto)
        self._wire()

    def __repr__(self) -> str:
        return f"<PeerLink {self.local}->{self.remote} {self.kind} {self.state}>"

    def describe(self) -> str:
        """The link's state and reason, for error messages."""
        return f"the link to {self.remote} is {self.state}" + (f" ({self.reason})" if self.reason else "")

    # -- link protocols ------------------------------------------------------------
    def add(self, proto: LinkProtocol) -> None:
        """Plug ``proto`` in: it owns its declared control and frame types on this link."""
        for t in proto.control_types:
            if t in self._control_owner:
                raise ValueError(f"control type {t!r} is already owned by {type(self._control_owner[t]).__name__}")
        for b in proto.frame_types:
            if b in self._frame_owner:
                raise ValueError(f"frame type 0x{b:02x} is already owned by {type(self._frame_owner[b]).__name__}")
        self._protocols.append(proto)
        self._control_owner.update(dict.fromkeys(proto.control_types, proto))
        self._frame_owner.update(dict.fromkeys(proto.frame_types, proto))
        if isinstance(proto, MediaProtocol):
            self._media.append(proto)

    def find(self, kind: type) -> Any:
        """The plugged-in protocol of type ``kind``, or None."""
        return next((p for p in self._protocols if isinstance(p, kind)), None)

    def _guarded(self, what: str, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception:
            self.dropped += 1
            log.exception("%s from %s failed; dropped", what, self.remote)

    def _take_token(self) -> bool:
        now = time.monotonic()
        self._tokens = min(CONTROL_BURST, self._tokens + (now - self._tokens_at) * CONTROL_RATE)
        self._tokens_at = now
        if self._tokens < 1:
            return False
        self._tokens -= 1
        return True

    def _route_control(self, message: Any) -> None:
        self.last_heard = time.monotonic()
        if not self._take_token():
            self.dropped += 1
            if self.dropped % 1000 == 1:
                log.warning("%s sends control messages faster than %g/s; dropping", self.remote, CONTROL_RATE)
            return
        try:
            msg = parse_control(message, max_bytes=MAX_CONTROL_BYTES)
        except WireError as exc:
            self.dropped += 1
            log.warning("dropped a control message from %s: %s", self.remote, exc)
            return
        owner = self._control_owner.get(msg["t"])
        if owner is None:
            log.debug("no protocol owns control type %.40r from %s; dropped", msg["t"], self.remote)
            return
        self._guarded(f"control message {msg['t']!r:.40}", owner.on_control, self, msg)

    def route_frame(self, frame: bytes, lane: str = "datachannel") -> None:
        """Hand a frame that arrived on ``lane`` to the protocol that owns its type."""
        self.frame_lane = lane
        self._route_frame(frame)

    def _route_frame(self, frame: bytes) -> None:
        self.last_heard = time.monotonic()
        owner = self._frame_owner.get(frame[0]) if frame else None
        if owner is None:
            self.dropped += 1
            log.warning("dropped a binary frame of unknown type from %s", self.remote)
            return
        try:  # inline rather than _guarded: this runs once per 64 KiB of every file
            owner.on_frame(self, frame)
        except Exception:
            self.dropped += 1
            log.exception("frame 0x%02x from %s failed; dropped", frame[0], self.remote)

    # -- set-up -----------------------------------------------------------------
    def _wire(self) -> None:
        @self.pc.on("connectionstatechange")
        def _pc_state() -> None:
            s = self.pc.connectionState
            if s in ("failed", "closed"):
                self._set_state(s, self.reason or f"WebRTC connection {s}")
            elif s == "connecting" and self.state == "new":
                self._set_state("connecting")

        @self.control.on("open")
        def _open() -> None:
            self.last_heard = time.monotonic()
            self._set_state("connected")

        @self.control.on("message")
        def _control(message: Any) -> None:
            try:
                self._route_control(message)
            except Exception:  # never let a peer's message reach aiortc as an exception
                self.dropped += 1
                log.exception("dropped a control message from %s", self.remote)

    def _set_state(self, state: str, reason: str = "") -> None:
        if self.state == state or self.state in ("failed", "closed"):
            return  # failed and closed are final
        self.state, self.reason = state, reason
        if state == "connected":
            for proto in self._protocols:
                self._guarded("on_link_up", proto.on_link_up, self)
        elif state in ("failed", "closed"):
            for lane in self.lanes.values():
                lane.close()
            for proto in self._protocols:
                self._guarded("on_link_down", proto.on_link_down, self)
        self._on_state(self)

    async def start(self) -> None:
        """Begin: the initiator sends an offer; the other side waits for it."""
        self._tasks.append(spawn(self._connect_timeout(), f"connect timeout {self.remote}"))
        if self.initiator:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            msg: dict[str, Any] = {"kind": "offer", "sdp": self.pc.localDescription.sdp, "link": self.kind}
            if self.call_id:
                msg["call_id"] = self.call_id
            if not await self._send_signal(msg):
                self._set_state("failed", "could not reach the room server to send the offer")
        self._set_state("connecting")

    async def _connect_timeout(self) -> None:
        await asyncio.sleep(CONNECT_TIMEOUT)
        if self.state in ("new", "connecting"):
            await self.close("failed", f"could not connect to {self.remote} within {CONNECT_TIMEOUT:.0f} s")

    async def handle_signal(self, data: dict[str, Any]) -> None:
        """Apply an offer, answer or trickled ICE candidate from the remote side.

        A malformed one is dropped with a one-line reason; a bad offer or answer fails the link.
        """
        kind = data.get("kind")
        try:
            if kind == "offer" and not self.initiator:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=_sdp(data), type="offer"))
                await self._flush_candidates()
                await self.pc.setLocalDescription(await self.pc.createAnswer())
                await self._send_signal({"kind": "answer", "sdp": self.pc.localDescription.sdp})
            elif kind == "answer" and self.initiator:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=_sdp(data), type="answer"))
                await self._flush_candidates()
            elif kind == "candidate":
                if self.pc.remoteDescription is None:
                    if len(self._pending_candidates) < 100:
                        self._pending_candidates.append(data)
                else:
                    await self._add_candidate(data)
        except Exception as exc:  # aiortc raises many types on a garbage SDP
            why = f"{self.remote} sent an unusable {kind}: {type(exc).__name__}: {str(exc)[:120]}"
            log.warning("%s", why)
            if kind in ("offer", "answer"):
                await self.close("failed", why)

    async def _flush_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for c in pending:
            await self._add_candidate(c)

    async def _add_candidate(self, data: dict[str, Any]) -> None:
        line = data.get("candidate")
        if not line:  # end of candidates
            return
        if not isinstance(line, str) or len(line) > 1024:
            log.warning("%s sent an ICE candidate that is not a short string; dropped", self.remote)
            return
        try:
            cand = candidate_from_sdp(line.removeprefix("candidate:"))
        except (ValueError, IndexError):
            log.warning("%s sent an unreadable ICE candidate: %.80r", self.remote, line)
            return
        mid, index = data.get("sdpMid"), data.get("sdpMLineIndex")
        cand.sdpMid = mid if isinstance(mid, str) else None
        cand.sdpMLineIndex = index if isinstance(index, int) and not isinstance(index, bool) else None
        try:
            await self.pc.addIceCandidate(cand)
        except Exception as exc:
            log.warning("%s sent an ICE candidate aiortc refused: %s", self.remote, str(exc)[:120])

    # -- renegotiation (docs/protocol.md, "Video") -------------------------------------
    def renegotiate(self) -> None:
        """Ask for a new offer/answer round, so media protocols' changes take effect.

        The initiator schedules one (a call during a running negotiation schedules exactly one
        more after it); the other side sends ``{"t": "renegotiate"}``. A no-op unless connected
        (before that a link has no media to negotiate).
        """
        if self.state != "connected":
            return
        if not self.initiator:
            self.send({"t": "renegotiate"})
            return
        self._want_offer = True
        if self._offer_task is None or self._offer_task.done():
            self._offer_task = spawn(self._offer_loop(), f"renegotiate {self.remote}")
            self._tasks = [t for t in self._tasks if not t.done()] + [self._offer_task]

    @property
    def negotiating(self) -> bool:
        """True while a renegotiation runs or is scheduled."""
        return self._want_offer or (self._offer_task is not None and not self._offer_task.done())

    def _on_negotiation_message(self, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t == "renegotiate":
            if self.initiator:
                self.renegotiate()
            return
        kind = msg.get("type")
        if kind == "offer" and not self.initiator:
            if self._answering is None:
                self._answering = asyncio.Lock()
            task = spawn(self._answer_offer(msg.get("sdp")), f"answer re-offer {self.remote}")
            self._tasks = [t for t in self._tasks if not t.done()] + [task]
        elif kind == "answer" and self.initiator and self._answer_waiter is not None and not self._answer_waiter.done():
            self._answer_waiter.set_result(msg.get("sdp"))
        else:
            self.dropped += 1
            log.warning("%s sent an sdp message out of turn (%.20r); dropped", self.remote, kind)

    def _check_redescription(self, sdp: Any) -> str:
        """The SDP of a re-offer or answer, or ValueError: same DTLS certificate, few media sections."""
        text = _sdp({"sdp": sdp})
        if len(text.encode()) > MAX_CONTROL_BYTES:
            raise ValueError("the sdp is larger than a control message may be")
        current = self.pc.remoteDescription
        if current is not None and sdp_fingerprint(text) != sdp_fingerprint(current.sdp):
            raise ValueError("the DTLS fingerprint changed")
        if text.count("\nm=") > MAX_MEDIA_SECTIONS:
            raise ValueError(f"more than {MAX_MEDIA_SECTIONS} media sections")
        return text

    def _media_hooks(self, stage: str) -> None:
        for proto in self._media:
            if stage == "negotiated":
                self._guarded("on_negotiated", proto.on_negotiated, self)
            else:
                self._guarded(f"before_description({stage})", proto.before_description, self, stage)

    async def _offer_loop(self) -> None:
        while self._want_offer and self.state == "connected":
            self._want_offer = False
            self._media_hooks("offer")
            try:
                await self.pc.setLocalDescription(await self.pc.createOffer())
            except Exception as exc:
                await self.close("failed", f"could not make a re-offer to {self.remote}: {type(exc).__name__}: {str(exc)[:120]}")
                return
            waiter: asyncio.Future[str] = asyncio.get_running_loop().create_future()
            self._answer_waiter = waiter
            try:
                if not self.send({"t": "sdp", "type": "offer", "sdp": self.pc.localDescription.sdp}):
                    return  # the link is going down
                try:
                    sdp = await asyncio.wait_for(waiter, RENEGOTIATE_TIMEOUT)
                except asyncio.TimeoutError:
                    await self.close("failed", f"{self.remote} did not answer a renegotiation within {RENEGOTIATE_TIMEOUT:g} s")
                    return
            finally:
                self._answer_waiter = None
            try:
                await self.pc.setRemoteDescription(RTCSessionDescription(sdp=self._check_redescription(sdp), type="answer"))
            except Exception as exc:
                why = f"{self.remote} sent an unusable answer to a re-offer: {type(exc).__name__}: {str(exc)[:120]}"
                log.warning("%s", why)
                await self.close("failed", why)
                return
            self.negotiations += 1
            self._media_hooks("negotiated")

    async def _answer_offer(self, sdp: Any) -> None:
        assert self._answering is not None
        async with self._answering:
            if self.state != "connected":
                return
            try:
                offer = RTCSessionDescription(sdp=self._check_redescription(sdp), type="offer")
                await self.pc.setRemoteDescription(offer)
                self._media_hooks("answer")
                await self.pc.setLocalDescription(await self.pc.createAnswer())
            except Exception as exc:
                why = f"{self.remote} sent an unusable re-offer: {type(exc).__name__}: {str(exc)[:120]}"
                log.warning("%s", why)
                await self.close("failed", why)
                return
            if self.send({"t": "sdp", "type": "answer", "sdp": self.pc.localDescription.sdp}):
                self.negotiations += 1
                self._media_hooks("negotiated")

    # -- sending --------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> bool:
        """Send a JSON control message; False if the channel is not open."""
        if self.control.readyState != "open":
            return False
        self.control.send(dump_control(msg))
        return True

    @property
    def data_lane(self) -> DataChannelLane:
        """The data channel lane (always there)."""
        return self.lanes["datachannel"]  # type: ignore[return-value]

    async def flush(self, timeout: float | None = None) -> bool:
        """Wait until the peer has acknowledged everything we queued on both channels (True),
        or ``timeout`` s passed (False). Call before closing, so last words get out.

        The default bound is one SCTP retransmission timeout plus a second: a last word that
        waits behind data needing one retransmission still gets out (a bound shorter than the
        RTO, at least 1 s in aiortc, lost a "cancel" behind a busy data channel)."""
        if timeout is None:
            timeout = 1.0 + float(sctp_counters(self).get("rto") or 1.0)
        deadline = time.monotonic() + timeout
        while self.control.bufferedAmount or self.data_lane.buffered or sctp_unacked(self):
            if self.control.readyState != "open" or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    async def close(self, state: str = "closed", reason: str = "") -> None:
        """Close the connection; the state becomes ``state`` (closed or failed)."""
        self._set_state(state, reason)
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        # pc.close() can wait for ever on aiortc's ICE monitor task after the remote side
        # aborted (the aioice#12 family); its sockets are closed by then, so give up waiting.
        try:
            await asyncio.wait_for(asyncio.shield(self.pc.close()), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.debug("closing the link to %s did not finish within %s s", self.remote, CLOSE_TIMEOUT)

    def fail(self, reason: str) -> None:
        """Fail the link with ``reason`` (for protocols that find it compromised)."""
        spawn(self.close("failed", reason), f"fail link {self.remote}")


def _sdp(data: dict[str, Any]) -> str:
    sdp = data.get("sdp")
    if not isinstance(sdp, str) or not sdp.startswith("v=") or len(sdp) > 256 * 1024:
        raise ValueError("the sdp is not a session description")
    return sdp
