"""A rogue peer, written from docs/protocol.md alone: an executable specification.

It uses aiortc and aiohttp directly and imports nothing from ivisit_nb, so if it
can talk to an honest session, the document is enough to write a compatible client.
It speaks the protocol honestly (joins with ``hello``, offers or answers by the
name rule, answers pings, runs the SAS exchange, offers and sends files) and can
also send anything at all on either channel.

It runs on its own asyncio loop in a thread. The async methods do the work; from
synchronous test code run them with :meth:`Rogue.run`::

    rogue = Rogue(server.url, "mallory").start()
    rogue.wait_connected("bob")
    tid = rogue.run(rogue.offer("bob", "notes.txt", b"hello"))
    rogue.wait_message("bob", lambda m: m.get("t") == "accept" and m.get("id") == tid)
    rogue.run(rogue.send_data("bob", tid, 0, b"hello"))
    rogue.close()
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import threading
import time
import uuid
from typing import Any, Callable

import aiohttp
import blake3
from aiortc import RTCPeerConnection, RTCSessionDescription

# -- the protocol's constants (docs/protocol.md, sections 2 and 3) ----------------------

SAS_CONTEXT = "ivisit-nb short authentication string v2"
FRAME_DATA = 0x01
HEADER_LEN = 25  # type (1), transfer id (16), offset (8)
FRAME_PAYLOAD = 64 * 1024 - HEADER_LEN
#: Pass as a field's value to :meth:`Rogue.offer` to leave the field out of the offer.
OMIT = object()
_FINGERPRINT = re.compile(r"^a=fingerprint:sha-256\s+([0-9A-Fa-f:]+)\s*$", re.MULTILINE)


def content_hash(data: bytes) -> str:
    """``"blake3:<64 hex>"`` of ``data``."""
    return "blake3:" + blake3.blake3(data).hexdigest()


def data_frame(tid: str, offset: int, payload: bytes, frame_type: int = FRAME_DATA) -> bytes:
    """A data frame: type byte, the 16 raw bytes of the transfer id, 8-byte big-endian offset, payload."""
    return bytes([frame_type]) + bytes.fromhex(tid) + offset.to_bytes(8, "big") + payload


def fingerprint(sdp: str) -> str:
    """The first ``a=fingerprint:sha-256`` value of an SDP, upper case."""
    m = _FINGERPRINT.search(sdp)
    if m is None:
        raise ValueError("no sha-256 fingerprint in the SDP")
    return m.group(1).upper()


def derive_sas(fp_offerer: str, fp_answerer: str, nonce_offerer: bytes, nonce_answerer: bytes) -> str:
    """Six digits ``"123 456"``: blake3 derive-key over the four length-prefixed parts."""
    h = blake3.blake3(derive_key_context=SAS_CONTEXT)
    for part in (fp_offerer.encode(), fp_answerer.encode(), nonce_offerer, nonce_answerer):
        h.update(len(part).to_bytes(4, "big") + part)
    digits = f"{int.from_bytes(h.digest(8), 'big') % 1_000_000:06d}"
    return f"{digits[:3]} {digits[3:]}"


class RogueLink:
    """The rogue's RTCPeerConnection to one peer, with both pre-negotiated channels.

    What the peer sends is recorded: ``messages`` and ``queue`` (parsed control objects;
    pings are answered and counted, not recorded), ``raw`` (control messages that are not a JSON
    object with a string "t"), ``frames`` (binary messages on the data channel).
    """

    def __init__(self, rogue: "Rogue", remote: str, offerer: bool) -> None:
        self.rogue, self.remote, self.offerer = rogue, remote, offerer
        self.pc = RTCPeerConnection()
        self.control = self.pc.createDataChannel("control", negotiated=True, id=0)
        self.data = self.pc.createDataChannel("data", negotiated=True, id=1)
        self.opened = asyncio.Event()
        self.messages: list[dict[str, Any]] = []
        self.queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()  # the same, for async readers
        self.raw: list[Any] = []
        self.frames: list[bytes] = []
        self.pings = 0
        self.answer_pings = True
        self.files: dict[str, bytes] = {}  # transfer id -> content, sent when accepted
        self.sas: str | None = None
        self.sas_failure: str | None = None
        self._nonce = secrets.token_bytes(32)
        self._peer_commitment: str | None = None
        self.control.on("open", self._on_open)
        self.control.on("message", self._on_control)
        self.data.on("message", self._on_data)

    @property
    def open(self) -> bool:
        return self.control.readyState == "open"

    # -- sending ------------------------------------------------------------------
    def send(self, msg: dict[str, Any]) -> None:
        """One control object as JSON text (ASCII escapes, so any str can be sent)."""
        self.control.send(json.dumps(msg))

    def _on_open(self) -> None:
        self.opened.set()
        if self.offerer and self.rogue.honest_sas:  # the SDP offerer commits first
            self.send({"t": "sas-commit", "h": blake3.blake3(self._nonce).hexdigest()})

    # -- receiving ----------------------------------------------------------------
    def _on_control(self, message: Any) -> None:
        if isinstance(message, bytes):
            self.raw.append(message)
            return
        try:
            msg = json.loads(message)
        except ValueError:
            self.raw.append(message)
            return
        if not isinstance(msg, dict) or not isinstance(msg.get("t"), str):
            self.raw.append(msg)
            return
        t = msg["t"]
        if t == "ping":
            self.pings += 1
            if self.answer_pings:
                self.send({"t": "pong", "ts": msg.get("ts")})
            return
        self.messages.append(msg)
        self.queue.put_nowait(msg)
        if t.startswith("sas-") and self.rogue.honest_sas:
            self._on_sas(msg)
        elif t == "accept" and msg.get("id") in self.files:
            data = self.files[msg["id"]]
            offset = msg.get("offset") or 0
            if offset and msg.get("prefix_hash") != content_hash(data[:offset]):
                offset = 0  # our prefix differs: restart from 0
            asyncio.ensure_future(self.rogue.send_file_data(self.remote, msg["id"], data, offset))

    def _on_data(self, message: Any) -> None:
        if isinstance(message, bytes):
            self.frames.append(message)

    def _on_sas(self, msg: dict[str, Any]) -> None:
        """The honest commit-then-reveal exchange (docs/protocol.md, section 2)."""
        local = fingerprint(self.pc.localDescription.sdp)
        remote = fingerprint(self.pc.remoteDescription.sdp)
        t = msg["t"]
        if t == "sas-commit" and not self.offerer:
            self._peer_commitment = msg.get("h")
            self.send({"t": "sas-nonce", "n": self._nonce.hex()})
        elif t == "sas-nonce" and self.offerer:
            self.sas = derive_sas(local, remote, self._nonce, bytes.fromhex(msg["n"]))
            self.send({"t": "sas-reveal", "n": self._nonce.hex()})
        elif t == "sas-reveal" and not self.offerer:
            their = bytes.fromhex(msg["n"])
            if blake3.blake3(their).hexdigest() != self._peer_commitment:
                self.sas_failure = "the reveal does not match the commitment"
                return
            self.sas = derive_sas(remote, local, their, self._nonce)
        else:
            self.sas_failure = f"unexpected {t}"

    async def close(self) -> None:
        await self.pc.close()


class Rogue:
    """A peer in ``room`` on the room server at ``url``, talking to honest sessions.

    ``honest_sas=False`` leaves the SAS exchange out entirely.
    """

    def __init__(self, url: str, name: str, room: str | None = "lab", *, honest_sas: bool = True) -> None:
        self.url, self.name, self.room = url, name, room
        self.honest_sas = honest_sas
        self.members: set[str] = set()
        self.links: dict[str, RogueLink] = {}
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=f"rogue-{name}", daemon=True)
        self._http: aiohttp.ClientSession | None = None
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    # -- running it from synchronous code -------------------------------------------
    def start(self, timeout: float = 20.0) -> "Rogue":
        """Start the loop thread and join the room."""
        self._thread.start()
        self.run(self.join(), timeout)
        return self

    def run(self, coro: Any, timeout: float = 30.0) -> Any:
        """Run ``coro`` on the rogue's loop and return its result (from any other thread)."""
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        """Leave the room, close every link and stop the loop thread."""
        if self._thread.is_alive():
            try:
                self.run(self._shutdown(), 15.0)
            finally:
                self.loop.call_soon_threadsafe(self.loop.stop)
                self._thread.join(10)
        self.loop.close()

    def link(self, peer: str) -> RogueLink:
        return self.links[peer]

    def wait_connected(self, peer: str, timeout: float = 30.0, sas: bool = True) -> RogueLink:
        """Wait until the control channel to ``peer`` is open (and, with ``sas``, the SAS is known)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            link = self.links.get(peer)
            if link is not None and link.open and (link.sas is not None or not (sas and self.honest_sas)):
                return link
            time.sleep(0.05)
        raise AssertionError(f"{self.name} not connected to {peer} within {timeout} s")

    def messages(self, peer: str, t: str | None = None) -> list[dict[str, Any]]:
        """Control objects ``peer`` sent us so far (of type ``t``), oldest first."""
        link = self.links.get(peer)
        msgs = list(link.messages) if link else []
        return [m for m in msgs if t is None or m.get("t") == t]

    def wait_message(self, peer: str, pred: Callable[[dict[str, Any]], bool], timeout: float = 20.0) -> dict[str, Any]:
        """The first control object from ``peer`` for which ``pred`` is true; waits for it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for m in self.messages(peer):
                if pred(m):
                    return m
            time.sleep(0.05)
        raise AssertionError(f"no such message from {peer} within {timeout} s; got {self.messages(peer)[-5:]}")

    async def receive(self, peer: str, timeout: float = 20.0) -> dict[str, Any]:
        """The next control object from ``peer`` (pings aside), in order; waits for it."""
        return await asyncio.wait_for(self.links[peer].queue.get(), timeout)

    def answer(self, peer: str, tid: str, timeout: float = 20.0) -> dict[str, Any]:
        """The receiver's answer (accept, have or refuse) to our offer ``tid``."""
        return self.wait_message(peer, lambda m: m.get("id") == tid and m.get("t") in ("accept", "have", "refuse"), timeout)

    # -- signalling (docs/protocol.md, sections 1 and 2) -------------------------------
    async def join(self) -> None:
        """hello -> welcome; then offer to every member whose name sorts after ours."""
        self._http = aiohttp.ClientSession()
        self._ws = await self._http.ws_connect(self.url)
        await self._ws.send_str(json.dumps({"type": "hello", "version": 1, "user": self.name, "room": self.room}))
        welcome = json.loads((await self._ws.receive()).data)
        if welcome.get("type") != "welcome":
            raise ConnectionError(f"the room server said {welcome}")
        self.name = welcome["user"]
        self.members = set(welcome["members"])
        self._tasks = [asyncio.ensure_future(self._read()), asyncio.ensure_future(self._keepalive())]
        for member in sorted(self.members):
            await self._maybe_offer(member)

    async def _signal(self, to: str, data: dict[str, Any]) -> None:
        await self._ws.send_str(json.dumps({"type": "signal", "to": to, "data": data}))

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(10)
            await self._ws.send_str(json.dumps({"type": "ping"}))

    async def _read(self) -> None:
        async for frame in self._ws:
            if frame.type != aiohttp.WSMsgType.TEXT:
                continue
            msg = json.loads(frame.data)
            kind = msg.get("type")
            if kind == "joined":
                self.members.add(msg["user"])
                await self._maybe_offer(msg["user"])
            elif kind == "left":
                self.members.discard(msg["user"])
                link = self.links.pop(msg["user"], None)
                if link:
                    await link.close()
            elif kind == "signal":
                await self._on_signal(msg["from"], msg["data"])

    async def _maybe_offer(self, member: str) -> None:
        """The member whose name sorts first makes the offer."""
        if not self.name < member:
            return
        link = self._new_link(member, offerer=True)
        await link.pc.setLocalDescription(await link.pc.createOffer())
        await self._signal(member, {"kind": "offer", "sdp": link.pc.localDescription.sdp, "link": "room"})

    def _new_link(self, peer: str, offerer: bool) -> RogueLink:
        old = self.links.get(peer)
        if old is not None:
            asyncio.ensure_future(old.close())
        link = self.links[peer] = RogueLink(self, peer, offerer)
        return link

    async def _on_signal(self, sender: str, data: dict[str, Any]) -> None:
        kind = data.get("kind")
        if kind == "offer":
            link = self._new_link(sender, offerer=False)
            await link.pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="offer"))
            await link.pc.setLocalDescription(await link.pc.createAnswer())
            await self._signal(sender, {"kind": "answer", "sdp": link.pc.localDescription.sdp})
        elif kind == "answer" and sender in self.links:
            await self.links[sender].pc.setRemoteDescription(RTCSessionDescription(sdp=data["sdp"], type="answer"))
        elif kind == "bye" and sender in self.links:
            await self.links.pop(sender).close()
        # aiortc puts its candidates in the SDP and never trickles: "candidate" is not needed

    async def _shutdown(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*(link.close() for link in self.links.values()), return_exceptions=True)
        if self._ws is not None:
            await self._ws.close()
        if self._http is not None:
            await self._http.close()

    # -- saying anything at all ---------------------------------------------------------
    def _channel(self, peer: str, channel: str) -> Any:
        link = self.links[peer]
        return link.control if channel == "control" else link.data

    async def send_control(self, peer: str, msg: Any) -> None:
        """Any JSON value as text on the control channel (normally an object with a string "t")."""
        self.links[peer].send(msg)

    async def send_text(self, peer: str, text: str, channel: str = "control") -> None:
        """Raw text on ``channel`` ("control" or "data")."""
        self._channel(peer, channel).send(text)

    async def send_bytes(self, peer: str, data: bytes, channel: str = "data") -> None:
        """Raw binary on ``channel`` ("control" or "data")."""
        self._channel(peer, channel).send(data)

    async def send_data(self, peer: str, tid: str, offset: int, payload: bytes, frame_type: int = FRAME_DATA) -> None:
        """One data frame with any offset and payload."""
        self.links[peer].data.send(data_frame(tid, offset, payload, frame_type))

    async def drain(self, peer: str) -> None:
        """Wait until both channels have handed everything queued to SCTP."""
        link = self.links[peer]
        while link.control.bufferedAmount or link.data.bufferedAmount:
            await asyncio.sleep(0.01)

    # -- sharing, honestly ------------------------------------------------------------
    async def offer(self, peer: str, name: str, data: bytes = b"", *, serve: bool = False, **fields: Any) -> str:
        """Offer ``data`` as a file called ``name``; returns the transfer id.

        ``fields`` override or add fields of the offer (``size=-1``, ``lanes=None`` ...);
        with ``serve`` the bytes are sent as soon as the peer accepts.
        """
        tid = uuid.uuid4().hex
        msg = {"t": "offer", "v": 2, "id": tid, "kind": "file", "name": name, "size": len(data),
               "hash": content_hash(data), "lanes": ["datachannel"], **fields}
        msg = {k: v for k, v in msg.items() if v is not OMIT}
        if serve:
            self.links[peer].files[tid] = data
        self.links[peer].send(msg)
        return tid

    async def offer_url(self, peer: str, url: str, **fields: Any) -> str:
        """Offer ``url``: name is the URL, size 0, hash the blake3 of its UTF-8 bytes."""
        return await self.offer(peer, url, url.encode("utf-8"), kind="url", url=url, size=0, **fields)

    async def send_file_data(self, peer: str, tid: str, data: bytes, offset: int = 0) -> None:
        """``data[offset:]`` as contiguous frames of at most 64 KiB, paced by the channel's buffer."""
        channel = self.links[peer].data
        for start in range(offset, len(data), FRAME_PAYLOAD):
            while channel.bufferedAmount > 1 << 20:
                await asyncio.sleep(0.01)
            channel.send(data_frame(tid, start, data[start:start + FRAME_PAYLOAD]))

    async def chat(self, peer: str, text: Any, to: Any = None) -> None:
        self.links[peer].send({"t": "chat", "text": text, "to": to})

    async def ping(self, peer: str, timeout: float = 10.0) -> float:
        """Send a ping and wait for the pong echoing its ``ts``; returns the round trip in seconds."""
        ts = time.monotonic()
        link = self.links[peer]
        link.send({"t": "ping", "ts": ts})
        while time.monotonic() - ts < timeout:
            if any(m.get("t") == "pong" and m.get("ts") == ts for m in link.messages):
                return time.monotonic() - ts
            await asyncio.sleep(0.02)
        raise AssertionError(f"no pong from {peer} within {timeout} s")

