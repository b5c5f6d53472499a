"""Sharing: the asyncio adapter that runs the sharing protocol over a session's links.

It owns one sans-I/O :class:`~ivisit_nb.protocol.sharing.SharingProtocol` per
peer link, feeds it what arrives, sends what it produces, and turns its events
into consent decisions (policy), bytes on disk (store) and history (inbox).
Everything here runs on the session's engine loop.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid
from pathlib import Path
from typing import TYPE_CHECKING, Any

import blake3

from .. import events as ev
from ..consent import Request
from ..engine.loop import spawn
from ..protocol import sharing as sp
from .inbox import Inbox, Item
from .policy import Decision, Offer, Policy, as_row
from .store import Store, StoreError
from .transfers import LOG_COLUMNS, RoomTransfer, Transfer

if TYPE_CHECKING:
    from ..engine.peerlink import PeerLink
    from ..session import Session

log = logging.getLogger("ivisit_nb.sharing")

CONTROL_TYPES = {"offer", "accept", "have", "refuse", "done", "fail", "cancel"}
CHUNK = 64 * 1024 - 25  # a 64 KiB frame with its 25-byte header
PROGRESS_EVERY = 0.1  # seconds between progress events per transfer


def hash_file(path: str | Path, length: int | None = None) -> str:
    """``blake3:<hex>`` of a file (or of its first ``length`` bytes)."""
    # Read in blocks rather than mmap: memory stays bounded whatever the file size.
    h = blake3.blake3(max_threads=blake3.blake3.AUTO)
    left = length if length is not None else float("inf")
    with open(path, "rb") as f:
        while left > 0:
            block = f.read(int(min(left, 4 << 20)))
            if not block:
                break
            h.update(block)
            left -= len(block)
    return "blake3:" + h.hexdigest()


class Sharing:
    """Files and URLs between this session and its peers.

    Reached through the session (``session.send_file``, ``session.inbox`` ...).
    """

    def __init__(
        self,
        session: "Session",
        inbox_dir: Path,
        *,
        max_size: int | None = None,
        offer_timeout: float = 120.0,
        max_pending_offers: int = 20,
        stall_timeout: float = 30.0,
    ) -> None:
        self.session = session
        self.stall_timeout = stall_timeout
        self._watchdog: asyncio.Task[None] | None = None
        self.user = session.user
        self.inbox_dir = inbox_dir
        self.max_size = max_size
        self.policy = Policy(session.settings, session.user)
        self.offer_timeout = offer_timeout
        self.max_pending_offers = max_pending_offers
        self.transfers: dict[str, Transfer] = {}
        self.policy_rows: list[dict[str, Any]] = []
        self.progress_rows: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.violations: list[dict[str, Any]] = []  # what peers did against the protocol
        self._protocols: dict["PeerLink", sp.SharingProtocol] = {}
        self._links: dict[str, "PeerLink"] = {}  # transfer id -> link it runs on
        self._parts: dict[str, Any] = {}  # transfer id -> PartFile
        self._paths: dict[str, Path] = {}  # outgoing transfer id -> local file
        self._hash_cache: dict[tuple[str, int, int], str] = {}
        self._last_progress: dict[str, float] = {}

    # The inbox folder is created on first use, so a session that only sends leaves no folder behind.
    @functools.cached_property
    def store(self) -> Store:
        return Store(self.inbox_dir, max_size=self.max_size)

    @functools.cached_property
    def inbox(self) -> Inbox:
        inbox = Inbox(self.inbox_dir)
        inbox.on_close(self._on_viewer_closed)
        return inbox

    # -- plumbing -----------------------------------------------------------------
    def _protocol(self, link: "PeerLink") -> sp.SharingProtocol:
        proto = self._protocols.get(link)
        if proto is None:
            proto = sp.SharingProtocol(self.user, link.remote, max_pending_offers=self.max_pending_offers)
            self._protocols[link] = proto
        return proto

    def _flush(self, link: "PeerLink", proto: sp.SharingProtocol) -> None:
        for msg in proto.take_control():
            link.send(msg)
        for event in proto.take_events():
            try:
                self._on_protocol_event(link, proto, event)
            except Exception:
                log.exception("handling %s from %s", type(event).__name__, link.remote)

    def on_control(self, link: "PeerLink", msg: dict[str, Any]) -> None:
        proto = self._protocol(link)
        proto.receive_control(msg)
        self._flush(link, proto)

    def on_data(self, link: "PeerLink", frame: bytes) -> None:
        proto = self._protocol(link)
        proto.receive_data(frame)
        self._flush(link, proto)

    def on_link_down(self, link: "PeerLink") -> None:
        """The link died or closed: every transfer on it fails; partial files stay hidden for resume."""
        self._protocols.pop(link, None)
        for tid, l in list(self._links.items()):
            if l is link:
                t = self.transfers.get(tid)
                if t and not t.ended:
                    reason = link.reason or f"the link to {link.remote} closed"
                    self._finish(t, "failed", f"lost the link to {link.remote}: {reason}")
        for req in self.requests:
            if req.pending and req.sender == link.remote:
                req._decide("refuse", False, "link lost")

    def _emit(self, event: ev.Event) -> None:
        self.session._emit(event)

    def _watch(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = spawn(self._watch_stalls(), f"stall watchdog {self.user}")

    async def _watch_stalls(self) -> None:
        """End transfers that stopped moving: a silent peer must not hold one open for ever."""
        while any(not t.ended for t in self.transfers.values()):
            await asyncio.sleep(1.0)
            now = time.monotonic()
            for t in list(self.transfers.values()):
                idle = now - t.last_activity
                if t.ended:
                    continue
                if t.status == "transferring" and idle > self.stall_timeout:
                    why = f"no progress from {t.peer} for {idle:.0f} s"
                elif t.direction == "out" and t.status == "offered" and idle > self.offer_timeout + 10:
                    why = f"{t.peer} did not answer the offer"
                else:
                    continue
                self._stop(t, "failed", why)

    # -- sending -----------------------------------------------------------------------
    def _recipients(self, to: str | None) -> list[str]:
        if to is not None:
            return [to]
        return sorted(name for name, p in self.session._peers.items() if p.member)

    async def send_file(self, path: Path, to: str | None) -> Transfer | RoomTransfer:
        st = path.stat()
        key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
        digest = self._hash_cache.get(key)
        if digest is None:
            digest = await asyncio.get_running_loop().run_in_executor(None, hash_file, path)
            self._hash_cache[key] = digest
        return self._offer_all(to, "file", path.name, st.st_size, digest, None, path)

    async def send_url(self, url: str, to: str | None) -> Transfer | RoomTransfer:
        return self._offer_all(to, "url", url, 0, sp.content_hash(url.encode()), url, None)

    def _offer_all(self, to, kind, name, size, digest, url, path) -> Transfer | RoomTransfer:
        parts = {r: self._offer_one(r, kind, name, size, digest, url, path) for r in self._recipients(to)}
        if to is not None:
            return parts[to]
        return RoomTransfer(parts, name)

    def _offer_one(self, peer_name, kind, name, size, digest, url, path) -> Transfer:
        tid = uuid.uuid4().hex
        t = Transfer(tid, "out", peer_name, kind, name, size, digest, url, canceller=self._cancel_from_user)
        self.transfers[tid] = t
        self._watch()
        peer = self.session._peers.get(peer_name)
        link = peer.link if peer else None
        if link is None or link.state != "connected":
            state = link.state if link else "not a peer"
            self._finish(t, "failed", f"{peer_name} is not connected ({state})")
            return t
        if path is not None:
            self._paths[tid] = path
        self._links[tid] = link
        proto = self._protocol(link)
        proto.offer(tid, kind, name, size, digest, url=url)
        self._flush(link, proto)
        return t

    async def _pump(self, t: Transfer, link: "PeerLink", proto: sp.SharingProtocol, offset: int) -> None:
        """Read the file from ``offset`` and send it, paced by the data channel's buffer."""
        path = self._paths[t.transfer_id]
        try:
            with open(path, "rb") as f:
                f.seek(offset)
                pos = offset
                while pos < t.size and not t.ended:
                    block = f.read(min(CHUNK, t.size - pos))
                    if not block:
                        raise OSError(f"{path} is shorter than when it was offered")
                    proto.send_chunk(t.transfer_id, pos, block)
                    for frame in proto.take_data():
                        await link.send_data(frame)
                    pos += len(block)
                    t._advance(len(block))
                    self._progress(t)
        except (OSError, ConnectionError) as exc:
            if not t.ended:
                proto.fail(t.transfer_id, f"the sender could not read the file: {exc}")
                self._flush(link, proto)
                self._finish(t, "failed", str(exc))
        else:
            self._flush(link, proto)

    def _cancel_from_user(self, t: Transfer, reason: str) -> None:
        self.session._engine.call_soon(self._cancel, t, reason)

    def _cancel(self, t: Transfer, reason: str) -> None:
        """Cancel ``t`` (engine thread), withdrawing its dialog if it still waits for one."""
        for req in self.requests:
            if req.pending and req.details.get("transfer_id") == t.transfer_id:
                req._decide("refuse", False, "cancelled")
        self._stop(t, "cancelled", reason)

    def cancel_with(self, peer: str, reason: str) -> None:
        """Cancel every transfer with ``peer`` (engine thread)."""
        for t in list(self.transfers.values()):
            if t.peer == peer:
                self._cancel(t, reason)

    def _stop(self, t: Transfer, status: str, reason: str) -> None:
        """End ``t`` from our side: tell the peer (a cancel with ``reason``), then finish it."""
        if t.ended:
            return
        link = self._links.get(t.transfer_id)
        proto = self._protocols.get(link) if link else None
        if proto is not None:
            proto.cancel(t.transfer_id, reason)
            self._flush(link, proto)
        self._finish(t, status, reason)

    def _on_viewer_closed(self) -> None:
        def _do() -> None:
            for t in list(self.transfers.values()):
                if t.direction == "in":
                    self._cancel(t, f"{self.user} closed the Sharing viewer")

        self.session._engine.call_soon(_do)

    # -- protocol events ------------------------------------------------------------------
    def _on_protocol_event(self, link: "PeerLink", proto: sp.SharingProtocol, e: Any) -> None:
        t = self.transfers.get(getattr(e, "transfer_id", ""))
        if isinstance(e, sp.OfferReceived):
            self._on_offer(link, proto, e)
        elif isinstance(e, sp.OfferFlooded):
            offer = Offer(link.remote, "file", e.name, 0, "")
            self._log_decision(offer, Decision("refuse", "flood limit", f"too many pending offers from {link.remote}"), e.transfer_id)
        elif isinstance(e, sp.ProtocolViolation):
            log.warning("%s broke the sharing protocol: %s", link.remote, e.reason)
            self.violations.append({"time": time.time(), "peer": link.remote, "reason": e.reason})
        elif t is None:
            return
        elif isinstance(e, sp.OfferAccepted):
            spawn(self._start_sending(t, link, proto, e.offset, e.prefix_hash), f"send {t.name}")
        elif isinstance(e, sp.OfferHad):
            t._start(t.size, "dedup")
            self._finish(t, "done", f"{t.peer} already had it")
        elif isinstance(e, sp.OfferRefused):
            t.decision = "refuse"
            self._finish(t, "refused", e.reason)
        elif isinstance(e, sp.ChunkReceived):
            self._on_chunk(link, proto, t, e)
        elif isinstance(e, sp.AllBytesReceived):
            self._on_all_bytes(link, proto, t)
        elif isinstance(e, sp.TransferDone):
            self._finish(t, "done")
        elif isinstance(e, sp.TransferFailed):
            self._finish(t, "failed", e.reason)
        elif isinstance(e, sp.TransferCancelled):
            self._finish(t, "cancelled", e.reason)

    async def _start_sending(self, t, link, proto, offset: int, prefix_hash: str | None) -> None:
        start = 0
        if offset > 0 and prefix_hash:
            path = self._paths[t.transfer_id]
            mine = await asyncio.get_running_loop().run_in_executor(None, hash_file, path, offset)
            start = offset if mine == prefix_hash else 0
        if t.ended:
            return
        proto.start_sending(t.transfer_id, start)
        self._flush(link, proto)
        t._start(start, "datachannel" if t.kind == "file" else "control")
        if t.kind == "file":
            await self._pump(t, link, proto, start)

    # receiving ----------------------------------------------------------------------
    def _on_offer(self, link: "PeerLink", proto: sp.SharingProtocol, e: Any) -> None:
        sender = link.remote
        t = Transfer(e.transfer_id, "in", sender, e.kind, e.name, e.size, e.hash, e.url, canceller=self._cancel_from_user)
        self.transfers[t.transfer_id] = t
        self._links[t.transfer_id] = link
        self._watch()
        offer = Offer(sender, e.kind, e.name, e.size, e.hash, e.url)  # URL offers were checked by the protocol
        decision = self.policy.decide(offer)
        if decision.decision != "ask":
            self._decided(link, proto, t, offer, decision)
            return
        t.status = "waiting"

        def resolve(req: Request, answer: str, always: bool, by: str) -> None:
            if always:
                setattr(self.session.settings[sender], "files" if e.kind == "file" else "urls", answer)
            reason = "no answer" if by == "no answer" else (f"{self.user} refused it" if answer == "refuse" else "")
            d = Decision(answer, by, reason)
            self.session._engine.call_soon(self._decided, link, proto, t, offer, d)

        req = Request(e.kind, sender, resolve, transfer_id=t.transfer_id, name=e.name, size=e.size, hash=e.hash, url=e.url)
        self.requests.append(req)
        asyncio.get_running_loop().call_later(self.offer_timeout, req.expire)
        self._emit(ev.RequestPending(request=req))

    def _log_decision(self, offer: Offer, d: Decision, tid: str) -> None:
        self.policy_rows.append(as_row(offer, d, time=time.time(), transfer_id=tid))

    def _decided(self, link, proto, t: Transfer, offer: Offer, d: Decision) -> None:
        if t.ended:
            return
        t.decision, t.decided_by = d.decision, d.decided_by
        self._log_decision(offer, d, t.transfer_id)
        if d.decision != "accept":
            proto.refuse(t.transfer_id, d.reason or "refused")
            self._flush(link, proto)
            self._finish(t, "refused", d.reason or "refused")
            return
        if t.kind == "url":
            proto.accept(t.transfer_id)
            self._flush(link, proto)
            return
        spawn(self._accept_file(link, proto, t), f"accept {t.name}")

    def _prepare(self, t: Transfer) -> tuple[str, Any]:
        """Disk work before answering an accepted offer; runs in a worker thread, off the engine loop.

        Returns ("have", path) for content we hold, ("resume", path) for a complete part,
        or ("part", PartFile) to receive into.
        """
        self.store.check_space(t.size)
        if self.store.lookup(t.hash) is not None:
            return "have", self.store.place_copy(t.peer, t.name, t.hash)
        part = self.store.open_part(t.hash, t.size)  # re-hashes a resumable prefix
        if part.complete:  # an earlier attempt got every byte: verify and place it
            return "resume", self.store.finalize(part, t.peer, t.name)
        return "part", part

    async def _accept_file(self, link, proto, t: Transfer) -> None:
        try:
            outcome, value = await asyncio.get_running_loop().run_in_executor(None, self._prepare, t)
        except (StoreError, OSError) as exc:
            if not t.ended:
                proto.refuse(t.transfer_id, str(exc))
                self._flush(link, proto)
                self._finish(t, "refused", str(exc))
            return
        if t.ended:  # cancelled meanwhile
            if outcome == "part":
                value.close()
            return
        if outcome in ("have", "resume"):
            proto.have(t.transfer_id)
            self._flush(link, proto)
            t._start(t.size, "dedup" if outcome == "have" else "resume")
            self._arrived(t, value, "dedup" if outcome == "have" else "resume")
            return
        self._parts[t.transfer_id] = value
        offset = value.prefix_length
        proto.accept(t.transfer_id, offset, value.prefix_hash() if offset else None)
        t._start(offset, "datachannel")
        self._flush(link, proto)

    def _on_chunk(self, link, proto, t: Transfer, e: Any) -> None:
        part = self._parts.get(t.transfer_id)
        if part is None:
            return
        try:
            if e.offset == 0 and part.prefix_length and t.received == t.resumed_from and t.resumed_from:
                part.truncate(0)  # the sender's prefix differed: start again
                t.received = t.resumed_from = 0
            part.write(e.offset, e.data)
        except (StoreError, OSError, ValueError) as exc:
            self._parts.pop(t.transfer_id, None)
            self.store.discard(part)
            proto.fail(t.transfer_id, f"{self.user} could not store it: {exc}")
            self._flush(link, proto)
            self._finish(t, "failed", str(exc))
            return
        t._advance(len(e.data))
        self._progress(t)

    def _on_all_bytes(self, link, proto, t: Transfer) -> None:
        if t.kind == "url":
            proto.complete(t.transfer_id)
            self._flush(link, proto)
            t._start(0, "control")
            self._arrived(t, None, "control")
            return
        part = self._parts.pop(t.transfer_id, None)
        if part is not None:
            spawn(self._finalize(link, proto, t, part), f"finalize {t.name}")

    async def _finalize(self, link, proto, t: Transfer, part: Any) -> None:
        """Verify, fsync and place the file in a worker thread: fsyncing a large file takes
        seconds, and the engine loop must keep answering heartbeats meanwhile."""
        try:
            path = await asyncio.get_running_loop().run_in_executor(None, self.store.finalize, part, t.peer, t.name)
        except (StoreError, OSError) as exc:
            if not t.ended:
                proto.fail(t.transfer_id, str(exc))
                self._flush(link, proto)
                self._finish(t, "failed", str(exc))
            return
        if t.ended:
            return  # cancelled while being placed: the verified file stays, unannounced
        proto.complete(t.transfer_id)
        self._flush(link, proto)
        self._arrived(t, path, "datachannel")

    def _arrived(self, t: Transfer, path: Path | None, lane: str) -> None:
        t.path = str(path) if path else None
        t.lane = lane
        item = Item(
            time=time.time(), sender=t.peer, kind=t.kind, name=t.name, path=t.path,
            url=t.url, hash=t.hash, size=t.size, lane=lane,
        )
        self.inbox.add(item)
        self._finish(t, "done")
        self._emit(ev.ItemReceived(item=item))

    # -- bookkeeping ---------------------------------------------------------------------
    def _progress(self, t: Transfer) -> None:
        now = time.monotonic()
        if now - self._last_progress.get(t.transfer_id, 0.0) < PROGRESS_EVERY and t.received < t.size:
            return
        self._last_progress[t.transfer_id] = now
        self.progress_rows.append({"time": time.time(), "transfer_id": t.transfer_id, "bytes": t.received, "total": t.size})
        self._emit(ev.TransferProgress(transfer=t, bytes=t.received, total=t.size, rate=t.rate, text=t.text))

    def _finish(self, t: Transfer, status: str, reason: str = "") -> None:
        part = self._parts.pop(t.transfer_id, None)
        if part is not None:
            part.close()  # kept hidden in .parts for a later resume
        self._paths.pop(t.transfer_id, None)
        self._links.pop(t.transfer_id, None)
        self._last_progress.pop(t.transfer_id, None)
        if t._end(status, reason):
            if t.received and t.size:
                self.progress_rows.append({"time": time.time(), "transfer_id": t.transfer_id, "bytes": t.received, "total": t.size})
            self._emit(ev.TransferEnded(transfer=t, status=status, reason=reason))

    def log_rows(self) -> list[dict[str, Any]]:
        return [t.as_row() for t in self.transfers.values()]


__all__ = ["Sharing", "hash_file", "CONTROL_TYPES", "LOG_COLUMNS"]
