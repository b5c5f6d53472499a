"""PeerLink: one RTCPeerConnection to one remote user, with its data channels.

Two pre-negotiated, reliable, ordered data channels:
- ``control`` (id 0): JSON text messages — heartbeat, chat, sharing control;
- ``data`` (id 1): binary frames — file bytes.

A heartbeat on the control channel notices a dead peer within a few seconds;
aiortc's ICE consent alone takes about 30 s.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from typing import Any, Awaitable, Callable

from aiortc import RTCConfiguration, RTCIceServer, RTCPeerConnection, RTCSessionDescription
from aiortc.sdp import candidate_from_sdp

from ..protocol.sas import sdp_fingerprint, short_auth_string
from .loop import spawn

log = logging.getLogger("ivisit_nb.peerlink")

HEARTBEAT_INTERVAL = 0.5
DEAD_AFTER = 3.5
CONNECT_TIMEOUT = 30.0
CLOSE_TIMEOUT = 2.0
BUFFER_HIGH = 1 << 20
BUFFER_LOW = 512 * 1024

SignalSender = Callable[[dict[str, Any]], Awaitable[bool]]


def ice_configuration(ice_servers: list[Any] | None) -> RTCConfiguration:
    """RTCConfiguration from dicts like ``{"urls": "stun:host:3478"}`` or RTCIceServer; none by default."""
    servers = []
    for s in ice_servers or []:
        if isinstance(s, RTCIceServer):
            servers.append(s)
        elif isinstance(s, str):
            servers.append(RTCIceServer(urls=s))
        else:
            servers.append(RTCIceServer(urls=s["urls"], username=s.get("username"), credential=s.get("credential")))
    return RTCConfiguration(iceServers=servers)


class PeerLink:
    """The WebRTC link to ``remote``. All methods run on the engine loop.

    ``on_state(link)`` is called on every state change; ``on_message(link, msg)``
    for control messages other than the heartbeat; ``on_data(link, frame)`` for
    binary frames on the data channel.
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
        on_state: Callable[["PeerLink"], None],
        on_message: Callable[["PeerLink", dict[str, Any]], None],
        on_data: Callable[["PeerLink", bytes], None],
        call_id: str | None = None,
    ) -> None:
        self.local, self.remote = local, remote
        self.initiator, self.kind, self.call_id = initiator, kind, call_id
        self._send_signal = send_signal
        self._on_state, self._on_message, self._on_data = on_state, on_message, on_data
        self.pc = RTCPeerConnection(ice_configuration(ice_servers))
        self.control = self.pc.createDataChannel("control", negotiated=True, id=0)
        self.data = self.pc.createDataChannel("data", negotiated=True, id=1)
        self.data.bufferedAmountLowThreshold = BUFFER_LOW
        self._drained = asyncio.Event()
        self._drained.set()
        self.state = "new"
        self.reason = ""
        self.rtt: float | None = None
        self.sas: str | None = None
        self.created = time.monotonic()
        self.data_bytes_sent = 0  # binary frames on the data channel, headers included
        self.data_bytes_received = 0
        self._last_heard = time.monotonic()
        self._pending_candidates: list[dict[str, Any]] = []
        self._tasks: list[asyncio.Task[Any]] = []
        self._wire()

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
            self._last_heard = time.monotonic()
            self._compute_sas()
            self._set_state("connected")

        @self.control.on("message")
        def _control(message: Any) -> None:
            self._last_heard = time.monotonic()
            if not isinstance(message, str):
                return
            try:
                msg = json.loads(message)
            except ValueError:
                log.warning("%s sent a control message that is not JSON", self.remote)
                return
            if not isinstance(msg, dict):
                return
            t = msg.get("t")
            if t == "ping":
                self.send({"t": "pong", "ts": msg.get("ts")})
            elif t == "pong":
                ts = msg.get("ts")
                if isinstance(ts, (int, float)):
                    self.rtt = max(0.0, time.monotonic() - ts)
            else:
                self._on_message(self, msg)

        @self.data.on("message")
        def _data(message: Any) -> None:
            self._last_heard = time.monotonic()
            if isinstance(message, bytes):
                self.data_bytes_received += len(message)
                self._on_data(self, message)

        @self.data.on("bufferedamountlow")
        def _low() -> None:
            self._drained.set()

    def _set_state(self, state: str, reason: str = "") -> None:
        if self.state == state or self.state in ("failed", "closed"):
            return  # failed and closed are final
        self.state, self.reason = state, reason
        self._on_state(self)

    def _compute_sas(self) -> None:
        try:
            local = sdp_fingerprint(self.pc.localDescription.sdp)
            remote = sdp_fingerprint(self.pc.remoteDescription.sdp)
        except (AttributeError, ValueError):
            return
        self.sas = short_auth_string(*((local, remote) if self.initiator else (remote, local)))

    async def start(self) -> None:
        """Begin: the initiator sends an offer; the other side waits for it."""
        self._tasks.append(spawn(self._watchdog(), f"watchdog {self.remote}"))
        if self.initiator:
            await self.pc.setLocalDescription(await self.pc.createOffer())
            msg: dict[str, Any] = {"kind": "offer", "sdp": self.pc.localDescription.sdp, "link": self.kind}
            if self.call_id:
                msg["call_id"] = self.call_id
            if not await self._send_signal(msg):
                self._set_state("failed", "could not reach the room server to send the offer")
        self._set_state("connecting")

    async def handle_signal(self, data: dict[str, Any]) -> None:
        """Apply an offer, answer or trickled ICE candidate from the remote side."""
        kind = data.get("kind")
        if kind == "offer" and not self.initiator:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=str(data["sdp"]), type="offer"))
            await self._flush_candidates()
            await self.pc.setLocalDescription(await self.pc.createAnswer())
            await self._send_signal({"kind": "answer", "sdp": self.pc.localDescription.sdp})
        elif kind == "answer" and self.initiator:
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=str(data["sdp"]), type="answer"))
            await self._flush_candidates()
        elif kind == "candidate":
            if self.pc.remoteDescription is None:
                self._pending_candidates.append(data)
            else:
                await self._add_candidate(data)

    async def _flush_candidates(self) -> None:
        pending, self._pending_candidates = self._pending_candidates, []
        for c in pending:
            await self._add_candidate(c)

    async def _add_candidate(self, data: dict[str, Any]) -> None:
        line = data.get("candidate")
        if not line:  # end of candidates
            return
        try:
            cand = candidate_from_sdp(str(line).removeprefix("candidate:"))
        except (ValueError, IndexError):
            log.warning("%s sent an unreadable ICE candidate: %.80s", self.remote, line)
            return
        cand.sdpMid = data.get("sdpMid")
        cand.sdpMLineIndex = data.get("sdpMLineIndex")
        await self.pc.addIceCandidate(cand)

    # -- liveness -----------------------------------------------------------------
    async def _watchdog(self) -> None:
        while self.state not in ("failed", "closed"):
            await asyncio.sleep(HEARTBEAT_INTERVAL)
            now = time.monotonic()
            if self.state == "connected":
                self.send({"t": "ping", "ts": now})
                silent = now - self._last_heard
                if silent > DEAD_AFTER:
                    await self.close("failed", f"no heartbeat from {self.remote} for {silent:.1f} s")
            elif now - self.created > CONNECT_TIMEOUT:
                await self.close("failed", f"could not connect to {self.remote} within {CONNECT_TIMEOUT:.0f} s")

    # -- sending --------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> bool:
        """Send a JSON control message; False if the channel is not open."""
        if self.control.readyState != "open":
            return False
        self.control.send(json.dumps(msg, separators=(",", ":")))
        return True

    async def send_data(self, frame: bytes) -> None:
        """Send a binary frame, waiting while more than 1 MiB is buffered (flow control)."""
        if self.data.readyState != "open":
            raise ConnectionError(f"the link to {self.remote} is {self.state}")
        while self.data.bufferedAmount > BUFFER_HIGH:
            self._drained.clear()
            await self._drained.wait()
            if self.data.readyState != "open":
                raise ConnectionError(f"the link to {self.remote} is {self.state}")
        self.data.send(frame)
        self.data_bytes_sent += len(frame)

    async def flush(self, timeout: float = 1.0) -> bool:
        """Wait until the peer has acknowledged everything we queued on both channels (True),
        or ``timeout`` s passed (False). Call before closing, so last words get out."""
        deadline = time.monotonic() + timeout
        while self.control.bufferedAmount or self.data.bufferedAmount or self._sctp_unacked():
            if self.control.readyState != "open" or time.monotonic() > deadline:
                return False
            await asyncio.sleep(0.01)
        return True

    def _sctp_unacked(self) -> bool:
        """True while SCTP still holds data not yet acknowledged by the peer.

        aiortc has no public API for this; its transport's queues are read if present
        (aiortc 1.x), and otherwise we rely on bufferedAmount alone.
        """
        sctp = self.pc.sctp
        return bool(getattr(sctp, "_outbound_queue", None) or getattr(sctp, "_sent_queue", None))

    async def close(self, state: str = "closed", reason: str = "") -> None:
        """Close the connection; the state becomes ``state`` (closed or failed)."""
        self._set_state(state, reason)
        self._drained.set()
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        # pc.close() can wait for ever on aiortc's ICE monitor task after the remote side
        # aborted (the aioice#12 family); its sockets are closed by then, so give up waiting.
        try:
            await asyncio.wait_for(asyncio.shield(self.pc.close()), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.debug("closing the link to %s did not finish within %s s", self.remote, CLOSE_TIMEOUT)
