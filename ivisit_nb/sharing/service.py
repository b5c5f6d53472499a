"""Sharing: the asyncio adapter that runs the sharing protocol over a session's links.

It is a link protocol (:mod:`ivisit_nb.engine.linkproto`): every link of the session
routes sharing control messages and data frames here. For each link it keeps one
sans-I/O :class:`~ivisit_nb.protocol.sharing.SharingProtocol`, feeds it what arrives
with the time, sends what it produces, arms its one timer, and turns its events into
consent decisions (policy), bytes on disk (store) and history (inbox).

It sees the session only through a :class:`SharingHost`: emit an event, find a
user's link, list the room's members, and hop onto the engine loop. Disk work and
hashing run on its own small worker pool, never on the engine loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import functools
import logging
import shutil
import ssl
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable, Protocol

from .. import events as ev
from ..consent import Request
from ..engine import direct
from ..engine.lanes import BufferPool, Lane
from ..engine.linkproto import BaseLinkProtocol
from ..engine.loop import spawn
from ..protocol import sharing as sp
from ..settings import Settings
from .hashing import cached_hash, hash_file
from .inbox import Inbox, Item
from .policy import Decision, Offer, Policy, as_row
from .store import PartInUse, Store, StoreError
from .transfers import LOG_COLUMNS, RoomTransfer, Transfer
from .writer import PartWriter

log = logging.getLogger("ivisit_nb.sharing")

PROGRESS_EVERY = 0.1  # seconds between progress events per transfer
WORKERS = 8  # threads for disk work and hashing: one peer's receives can hold at most half
MAX_INCOMING_PER_PEER = 4  # files received at once from one peer; more wait in a queue
MAX_INCOMING = 16  # ... and from everyone together
MAX_KEPT = 20_000  # ended transfers (and log rows, x10) kept in memory
PART_RELEASE_WAIT = 2.0  # seconds a new receive waits for an ended one to let go of the same part
LANE_GRACE = 2.0  # seconds a broken direct lane waits for the control channel to say why
DIRECT_MIN_SIZE = 8 << 20  # with lane "auto", files from this size try the direct lane (bench/compare.py)


class SharingLink(Protocol):
    """What sharing uses of a peer link."""

    remote: str
    state: str
    reason: str
    lanes: dict[str, Lane]

    def send(self, msg: dict[str, Any]) -> bool: ...


@dataclass(frozen=True)
class SharingHost:
    """The narrow view of the session that sharing gets."""

    user: str
    settings: Settings
    emit: Callable[[ev.Event], None]  # deliver an event to the session's listeners
    link_to: Callable[[str], SharingLink | None]  # the link to a user, if any (engine thread)
    members: Callable[[], list[str]]  # the other members of our room (any thread)
    call_soon: Callable[..., None]  # run fn(*args) on the engine loop (any thread)


class Sharing(BaseLinkProtocol):
    """Files and URLs between this session and its peers.

    Reached through the session (``session.send_file``, ``session.inbox`` ...).
    """

    control_types = sp.MESSAGE_TYPES
    frame_types = sp.FRAME_TYPES

    def __init__(
        self,
        host: SharingHost,
        inbox_dir: Path,
        *,
        max_size: int | None = None,
        offer_timeout: float = sp.OFFER_TIMEOUT,
        max_pending_offers: int = 20,
        stall_timeout: float = sp.STALL_TIMEOUT,
        max_incoming_per_peer: int = MAX_INCOMING_PER_PEER,
        max_incoming: int = MAX_INCOMING,
        lane: str = "auto",
        direct_min_size: int = DIRECT_MIN_SIZE,
    ) -> None:
        self.host = host
        self.lane = lane  # for users without their own "lane" setting
        self.direct_min_size = direct_min_size
        self.user = host.user
        self.inbox_dir = inbox_dir
        self.max_size = max_size
        self.policy = Policy(host.settings, host.user)
        self.offer_timeout, self.stall_timeout = offer_timeout, stall_timeout
        self.max_pending_offers = max_pending_offers
        self.max_incoming_per_peer, self.max_incoming = max_incoming_per_peer, max_incoming
        self.transfers: dict[str, Transfer] = {}
        self.policy_rows: list[dict[str, Any]] = []
        self.progress_rows: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self.violations: list[dict[str, Any]] = []  # what peers did against the protocol
        self._protocols: dict[SharingLink, sp.SharingProtocol] = {}
        self._timers: dict[SharingLink, tuple[float, asyncio.TimerHandle]] = {}
        self._links: dict[str, SharingLink] = {}  # transfer id -> link it runs on
        self._parts: dict[str, PartWriter] = {}  # transfer id -> the writer of its part file
        self._offers: dict[str, sp.OfferReceived] = {}  # incoming transfer id -> its offer
        self._direct: dict[str, Any] = {}  # transfer id -> its direct Listener or DirectTlsLane
        self._sealed: set[str] = set()  # incoming transfers verified and being placed
        self._paths: dict[str, Path] = {}  # outgoing transfer id -> local file
        self._offered: dict[str, tuple[str, ...]] = {}  # outgoing transfer id -> the lanes we offered
        self._receiving: set[str] = set()  # incoming files admitted (holding a slot)
        self._queue: list[tuple[SharingLink, sp.SharingProtocol, Transfer]] = []  # accepted, waiting for a slot
        self._last_progress: dict[str, float] = {}
        self._workers = concurrent.futures.ThreadPoolExecutor(WORKERS, thread_name_prefix=f"ivisit-disk-{host.user}")

    # The inbox folder is created on first use, so a session that only sends leaves no folder behind.
    @functools.cached_property
    def store(self) -> Store:
        return Store(self.inbox_dir, max_size=self.max_size)

    @functools.cached_property
    def inbox(self) -> Inbox:
        inbox = Inbox(self.inbox_dir)
        inbox.closes.add(self._on_viewer_closed)
        return inbox

    def close(self) -> None:
        """Stop the worker threads and close the store (after the links are closed)."""
        self._workers.shutdown(wait=False, cancel_futures=True)
        if "store" in self.__dict__:
            self.store.close()

    @functools.cached_property
    def identity(self) -> direct.Identity:
        """This session's certificate for direct lanes (made on first use)."""
        return direct.Identity.generate()

    def lane_setting(self, peer: str) -> str:
        """``auto``, ``direct`` or ``datachannel`` for files with ``peer``: their own setting, else the session's."""
        settings = self.host.settings
        return settings[peer].lane if settings.has_own(peer, "lane") else self.lane

    def _lanes_for(self, peer: str, kind: str, size: int) -> tuple[str, ...]:
        setting = self.lane_setting(peer)
        if kind != "file" or setting == "datachannel":
            return (sp.DEFAULT_LANE,)
        if setting == "direct":
            return (direct.NAME,)
        return (direct.NAME, sp.DEFAULT_LANE) if size >= self.direct_min_size else (sp.DEFAULT_LANE,)

    async def _in_worker(self, fn: Callable[..., Any], *args: Any) -> Any:
        return await asyncio.get_running_loop().run_in_executor(self._workers, fn, *args)

    # -- the link protocol -----------------------------------------------------------
    def _protocol(self, link: SharingLink) -> sp.SharingProtocol:
        proto = self._protocols.get(link)
        if proto is None:
            proto = sp.SharingProtocol(
                self.user,
                link.remote,
                max_pending_offers=self.max_pending_offers,
                lanes=tuple(link.lanes),
                stall_timeout=self.stall_timeout,
                offer_timeout=self.offer_timeout,
                now=time.monotonic(),
            )
            self._protocols[link] = proto
        return proto

    def on_control(self, link: SharingLink, msg: dict[str, Any]) -> None:
        proto = self._protocol(link)
        proto.receive_control(msg, time.monotonic())
        self._flush(link, proto)

    def on_frame(self, link: SharingLink, frame: bytes) -> None:
        proto = self._protocol(link)
        proto.receive_data(frame, time.monotonic())
        if proto.quiet_after_chunk():  # the common case: one chunk, nothing to send
            e = proto.take_events()[0]
            t = self.transfers.get(e.transfer_id)
            if t is not None:
                self._on_chunk(link, proto, t, e)
            return
        self._flush(link, proto)

    def on_link_down(self, link: SharingLink) -> None:
        """The link died or closed: every transfer on it fails; partial files stay hidden for resume."""
        self._protocols.pop(link, None)
        timer = self._timers.pop(link, None)
        if timer:
            timer[1].cancel()
        for tid, l in list(self._links.items()):
            if l is link and tid not in self._sealed:  # a sealed file is still placed and shown
                t = self.transfers.get(tid)
                if t and not t.ended:
                    reason = link.reason or f"the link to {link.remote} closed"
                    self._finish(t, "failed", f"lost the link to {link.remote}: {reason}")
        for req in self.requests:
            if req.pending and req.sender == link.remote:
                req._decide("refuse", False, "link lost")

    def _flush(self, link: SharingLink, proto: sp.SharingProtocol) -> None:
        """Send what the protocol produced, handle its events, and re-arm its timer if it may be due sooner."""
        msgs, events = proto.take_control(), proto.take_events()
        for msg in msgs:
            link.send(msg)
        for event in events:
            try:
                self._on_protocol_event(link, proto, event)
            except Exception:
                log.exception("handling %s from %s", type(event).__name__, link.remote)
        if msgs or any(not isinstance(e, sp.ChunkReceived) for e in events):
            self._arm(link, proto)

    def _arm(self, link: SharingLink, proto: sp.SharingProtocol) -> None:
        when = proto.get_timer()
        armed = self._timers.get(link)
        if armed and when is not None and armed[0] <= when:
            return  # an earlier (or equal) timer is set; it re-arms when it fires
        if armed:
            armed[1].cancel()
            del self._timers[link]
        if when is not None and link in self._protocols:
            delay = max(0.0, when - time.monotonic())
            handle = asyncio.get_running_loop().call_later(delay, self._on_timer, link)
            self._timers[link] = (when, handle)

    def _on_timer(self, link: SharingLink) -> None:
        self._timers.pop(link, None)
        proto = self._protocols.get(link)
        if proto is not None:
            proto.handle_timer(time.monotonic())
            self._flush(link, proto)
            self._arm(link, proto)

    # -- sending (called from any thread) ---------------------------------------------
    def send_file(self, path: Path, to: str | None) -> Transfer | RoomTransfer:
        """Start offering ``path``; returns at once. Handles start as ``hashing``."""
        size = path.stat().st_size
        handles = self._handles(to, "file", path.name, size, "", None)
        future = self._workers.submit(cached_hash, path)

        def hashed(f: concurrent.futures.Future[str]) -> None:
            self.host.call_soon(self._after_hash, handles, path, f)

        future.add_done_callback(hashed)
        return self._result(to, handles, path.name)

    def send_url(self, url: str, to: str | None) -> Transfer | RoomTransfer:
        """Start offering ``url`` (already checked); returns at once."""
        handles = self._handles(to, "url", url, 0, sp.content_hash(url.encode()), url)
        self.host.call_soon(self._offer_all, handles, None)
        return self._result(to, handles, url)

    def _handles(self, to, kind, name, size, digest, url) -> list[Transfer]:
        recipients = [to] if to is not None else self.host.members()
        handles = []
        for peer in recipients:
            t = Transfer(uuid.uuid4().hex, "out", peer, kind, name, size, digest, url, canceller=self._cancel_from_user)
            t.status = "hashing" if kind == "file" else "offered"
            handles.append(t)
        self.host.call_soon(self._register, handles)
        return handles

    @staticmethod
    def _result(to: str | None, handles: list[Transfer], name: str) -> Transfer | RoomTransfer:
        return handles[0] if to is not None else RoomTransfer({t.peer: t for t in handles}, name)

    def _register(self, handles: list[Transfer]) -> None:
        for t in handles:
            self.transfers[t.transfer_id] = t

    def _after_hash(self, handles: list[Transfer], path: Path, future: concurrent.futures.Future[str]) -> None:
        try:
            digest = future.result()
        except Exception as exc:  # unreadable, vanished, cancelled at shutdown
            for t in handles:
                self._finish(t, "failed", f"could not read {path}: {exc}")
            return
        for t in handles:
            t.hash = digest
        self._offer_all(handles, path)

    def _offer_all(self, handles: list[Transfer], path: Path | None) -> None:
        for t in handles:
            if t.ended:
                continue  # cancelled while hashing
            t.status = "offered"
            link = self.host.link_to(t.peer)
            if link is None or link.state != "connected":
                state = link.state if link else "not a peer"
                self._finish(t, "failed", f"{t.peer} is not connected ({state})")
                continue
            if path is not None:
                self._paths[t.transfer_id] = path
            self._links[t.transfer_id] = link
            proto = self._protocol(link)
            lanes = self._offered[t.transfer_id] = self._lanes_for(t.peer, t.kind, t.size)
            info = {direct.NAME: {"cert": self.identity.cert_pem}} if direct.NAME in lanes else None
            proto.offer(t.transfer_id, t.kind, t.name, t.size, t.hash, url=t.url, lanes=lanes, lane_info=info, now=time.monotonic())
            self._flush(link, proto)

    async def _start_sending(self, t: Transfer, link: SharingLink, proto: sp.SharingProtocol, e: sp.OfferAccepted) -> None:
        start = 0
        if e.offset > 0 and e.prefix_hash:
            mine = await self._in_worker(hash_file, self._paths[t.transfer_id], e.offset)
            start = e.offset if mine == e.prefix_hash else 0
        if t.ended:
            return
        proto.start_sending(t.transfer_id, start, now=time.monotonic())
        self._flush(link, proto)
        if t.kind != "file":
            t._start(0, "control")
            return
        lane = await self._sending_lane(t, link, e)
        if lane is None or t.ended:
            return
        t._start(start, lane.name)
        await self._pump(t, link, proto, lane, start)

    async def _sending_lane(self, t: Transfer, link: SharingLink, e: sp.OfferAccepted) -> Lane | None:
        """The lane the receiver chose; for the direct lane, connect first and fall back to the
        data channel if that fails within 0.75 s (and the offer allowed it)."""
        if e.lane != direct.NAME:
            lane = link.lanes.get(e.lane)
            if lane is None:
                self._stop(t, "failed", f"the {e.lane} lane to {t.peer} is not available")
            return lane
        try:
            info = (e.lane_info or {}).get(direct.NAME)
            lane = await direct.connect(self.identity, info, f"to {t.peer} for {t.name}")
        except direct.DirectLaneError as exc:
            if sp.DEFAULT_LANE in self._offered.get(t.transfer_id, ()):
                log.info("%s; sending %s to %s on the data channel instead", exc, t.name, t.peer)
                return link.lanes.get(sp.DEFAULT_LANE)
            self._stop(t, "failed", f"{exc} (the data channel is turned off for {t.peer})")
            return None
        if t.ended:
            lane.close()
            return None
        self._direct[t.transfer_id] = lane
        return lane

    async def _pump(self, t: Transfer, link: SharingLink, proto: sp.SharingProtocol, lane: Lane, offset: int) -> None:
        """Read the file from ``offset`` and send it on ``lane``, paced by the lane's backpressure."""
        path = self._paths[t.transfer_id]
        try:
            with open(path, "rb", buffering=0) as f:
                f.seek(offset)
                pos = offset
                payload = getattr(lane, "frame_payload", sp.FRAME_PAYLOAD)
                buffers = BufferPool(sp.HEADER_LEN + payload, keep=4)  # each read lands in a frame, after its header
                while pos < t.size and not t.ended:
                    frame = buffers.take(sp.HEADER_LEN + min(payload, t.size - pos))
                    n = f.readinto(frame[sp.HEADER_LEN:])
                    if not n:
                        raise OSError(f"{path} is shorter than when it was offered")
                    if not proto.send_framed(t.transfer_id, pos, frame[: sp.HEADER_LEN + n], now=time.monotonic()):
                        return  # ended meanwhile
                    for out in proto.take_data():  # the pool reuses a frame once the lane has let go of it
                        await lane.send_frame(out)
                    pos += n
                    t._advance(n)
                    self._progress(t)
        except (OSError, ConnectionError) as exc:
            if isinstance(exc, ConnectionError) and lane.name != sp.DEFAULT_LANE:
                # the receiver closes its direct lane when it cancels: let its word arrive first
                deadline = time.monotonic() + LANE_GRACE
                while not t.ended and time.monotonic() < deadline:
                    await asyncio.sleep(0.02)
            if not t.ended:
                proto.fail(t.transfer_id, f"the sender could not send the file: {exc}")
                self._flush(link, proto)
                self._finish(t, "failed", str(exc))
        else:
            self._flush(link, proto)

    # -- cancelling ----------------------------------------------------------------------
    def _cancel_from_user(self, t: Transfer, reason: str) -> None:
        self.host.call_soon(self._cancel, t, reason)

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
        """End ``t`` from our side: tell the peer (a cancel with ``reason``), then finish it.
        A sealed transfer (verified, being placed) is past stopping: it completes."""
        if t.ended or t.transfer_id in self._sealed:
            return
        link = self._links.get(t.transfer_id)
        proto = self._protocols.get(link) if link else None
        if proto is not None and proto.state(t.transfer_id) is not None:
            proto.cancel(t.transfer_id, reason)
            self._flush(link, proto)
        self._finish(t, status, reason)

    def _on_viewer_closed(self) -> None:
        def _do() -> None:
            for t in list(self.transfers.values()):
                if t.direction == "in":
                    self._cancel(t, f"{self.user} closed the Sharing viewer")

        self.host.call_soon(_do)

    # -- protocol events ------------------------------------------------------------------
    def _on_protocol_event(self, link: SharingLink, proto: sp.SharingProtocol, e: Any) -> None:
        t = self.transfers.get(getattr(e, "transfer_id", ""))
        if isinstance(e, sp.OfferReceived):
            self._on_offer(link, proto, e)
        elif isinstance(e, sp.OfferFlooded):
            offer = Offer(link.remote, "file", e.name, 0, "")
            self._log_decision(offer, Decision("refuse", "flood limit", f"too many pending offers from {link.remote}"), e.transfer_id)
        elif isinstance(e, sp.ProtocolViolation):
            log.warning("%s broke the sharing protocol: %s", link.remote, e.reason)
            self.violations.append({"time": time.time(), "peer": link.remote, "reason": e.reason})
            del self.violations[:-1000]
        elif t is None:
            return
        elif isinstance(e, sp.OfferExpired):
            for req in self.requests:
                if req.pending and req.details.get("transfer_id") == t.transfer_id:
                    req.expire()  # withdraws the dialog; the protocol already refused
            t.decision, t.decided_by = "refuse", "no answer"
            offer = Offer(t.peer, t.kind, t.name, t.size, t.hash, t.url)
            self._log_decision(offer, Decision("refuse", "no answer", "no answer"), t.transfer_id)
            self._finish(t, "refused", "no answer")
        elif isinstance(e, sp.OfferAccepted):
            spawn(self._start_sending(t, link, proto, e), f"send {t.name}")
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

    # -- receiving ----------------------------------------------------------------------
    def _on_offer(self, link: SharingLink, proto: sp.SharingProtocol, e: sp.OfferReceived) -> None:
        sender = link.remote
        t = Transfer(e.transfer_id, "in", sender, e.kind, e.name, e.size, e.hash, e.url, canceller=self._cancel_from_user)
        self.transfers[t.transfer_id] = t
        self._links[t.transfer_id] = link
        self._offers[t.transfer_id] = e
        offer = Offer(sender, e.kind, e.name, e.size, e.hash, e.url)  # URL offers were checked by the protocol
        decision = self.policy.decide(offer)
        if decision.decision != "ask":
            self._decided(link, proto, t, offer, decision)
            return
        t.status = "waiting"

        def resolve(req: Request, answer: str, always: bool, by: str) -> None:
            if always:
                setattr(self.host.settings[sender], "files" if e.kind == "file" else "urls", answer)
            reason = "no answer" if by == "no answer" else (f"{self.user} refused it" if answer == "refuse" else "")
            self.host.call_soon(self._decided, link, proto, t, offer, Decision(answer, by, reason))

        req = Request(e.kind, sender, resolve, transfer_id=t.transfer_id, name=e.name, size=e.size, hash=e.hash, url=e.url)
        self.requests.append(req)
        self.requests = [r for r in self.requests if r.pending][-1000:]
        self.host.emit(ev.RequestPending(request=req))

    def _log_decision(self, offer: Offer, d: Decision, tid: str) -> None:
        self.policy_rows.append(as_row(offer, d, time=time.time(), transfer_id=tid))

    def _decided(self, link: SharingLink, proto: sp.SharingProtocol, t: Transfer, offer: Offer, d: Decision) -> None:
        if t.ended:
            return
        t.decision, t.decided_by = d.decision, d.decided_by
        self._log_decision(offer, d, t.transfer_id)
        if d.decision != "accept":
            proto.refuse(t.transfer_id, d.reason or "refused")
            self._flush(link, proto)
            self._finish(t, "refused", d.reason or "refused")
            return
        if t.kind == "url":  # no bytes to carry: any offered lane will do
            offer = self._offers.get(t.transfer_id)
            lanes = offer.lanes if offer else (sp.DEFAULT_LANE,)
            lane = sp.DEFAULT_LANE if sp.DEFAULT_LANE in lanes else lanes[0]
            proto.accept(t.transfer_id, lane=lane, now=time.monotonic())
            self._flush(link, proto)
            return
        t.status = "queued"
        self._queue.append((link, proto, t))
        self._admit()

    def _admit(self) -> None:
        """Start queued receives while slots are free, per peer and in all, oldest first.

        A peer whose files we accept still cannot hold more than ``max_incoming_per_peer``
        part files, worker jobs and disk reservations at once; the rest wait their turn.
        """
        waiting, self._queue = self._queue, []
        for link, proto, t in waiting:
            if t.ended:
                continue
            busy = [self.transfers[i] for i in self._receiving if i in self.transfers]
            mine = [x for x in busy if x.peer == t.peer]
            if len(busy) < self.max_incoming and len(mine) < self.max_incoming_per_peer and self._fair_space(mine, t):
                self._receiving.add(t.transfer_id)
                spawn(self._accept_file(link, proto, t), f"accept {t.name}")
            else:
                self._queue.append((link, proto, t))

    def _fair_space(self, mine: list[Transfer], t: Transfer) -> bool:
        """A peer with receives running may reserve at most half of the free disk space, so
        one sender cannot take all the room that others' files need (the rest waits)."""
        if not mine:
            return True
        folder = self.inbox_dir if self.inbox_dir.exists() else Path(".")
        free = shutil.disk_usage(folder).free
        return sum(x.size - x.received for x in mine) + t.size <= free // 2

    def _prepare(self, t: Transfer) -> tuple[str, Any]:
        """Disk work before answering an accepted offer; runs in a worker thread, off the engine loop.

        Returns ("have", path) for content we hold, ("resume", path) for a complete part,
        or ("part", PartFile) to receive into.
        """
        self.store.check_space(t.size)
        if self.store.lookup(t.hash) is not None:
            return "have", self.store.place_copy(t.peer, t.name, t.hash)
        part = self._open_part(t)  # re-hashes a resumable prefix
        if part.complete:  # an earlier attempt got every byte: verify and place it
            return "resume", self.store.finalize(part, t.peer, t.name)
        return "part", part

    def _open_part(self, t: Transfer) -> Any:
        """The part for ``t``; waits a moment for one an ended transfer's writer is still closing."""
        deadline = time.monotonic() + PART_RELEASE_WAIT
        while True:
            try:
                return self.store.open_part(t.hash, t.size)
            except PartInUse:
                if time.monotonic() > deadline or any(
                    x.hash == t.hash and x.direction == "in" and not x.ended and x is not t for x in list(self.transfers.values())
                ):
                    raise
                time.sleep(0.02)

    async def _accept_file(self, link: SharingLink, proto: sp.SharingProtocol, t: Transfer) -> None:
        try:
            outcome, value = await self._in_worker(self._prepare, t)
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
            lane = "dedup" if outcome == "have" else "resume"
            t._start(t.size, lane)
            self._arrived(t, value, lane)
            return
        lane, info = await self._receiving_lane(t, link)
        if lane is None or t.ended:
            value.close()
            return
        self._parts[t.transfer_id] = PartWriter(value, lambda exc: self._write_failed(link, proto, t, exc), t.transfer_id[:8])
        offset = value.prefix_length
        proto.accept(t.transfer_id, offset, value.prefix_hash() if offset else None, lane=lane, lane_info=info, now=time.monotonic())
        t._start(offset, lane)
        self._flush(link, proto)

    async def _receiving_lane(self, t: Transfer, link: SharingLink) -> tuple[str | None, dict[str, Any] | None]:
        """Choose the lane for an accepted file (ours and the sender's settings), and for the direct
        lane open the one-time listener whose details go into the accept."""
        offer = self._offers.get(t.transfer_id)
        offered = offer.lanes if offer else (sp.DEFAULT_LANE,)
        setting = self.lane_setting(t.peer)
        wanted = {"auto": (direct.NAME, sp.DEFAULT_LANE), "direct": (direct.NAME,)}.get(setting, (sp.DEFAULT_LANE,))
        lane = next((name for name in wanted if name in offered), None)
        if lane is None:
            reason = f"no lane both allow: {t.peer} offers {', '.join(offered)}, {self.user} takes {', '.join(wanted)}"
            self._refuse(link, t, reason)
            return None, None
        if lane != direct.NAME:
            return lane, None
        try:
            cert = ((offer.lane_info or {}).get(direct.NAME) or {}).get("cert") if offer else None
            if not direct.is_cert(cert):
                raise direct.DirectLaneError(f"{t.peer} sent no usable certificate for the direct lane")
            listener = direct.Listener(self.identity, cert, f"from {t.peer} for {t.name}")
            info = await listener.start(direct.local_addresses(link))
        except (direct.DirectLaneError, ssl.SSLError, ValueError) as exc:
            if sp.DEFAULT_LANE in offered and sp.DEFAULT_LANE in wanted:
                log.info("%s; receiving %s on the data channel instead", exc, t.name)
                return sp.DEFAULT_LANE, None
            self._refuse(link, t, str(exc))
            return None, None
        self._direct[t.transfer_id] = listener

        def writer_ready() -> Awaitable[None] | None:  # backpressure: the lane reads on when the disk keeps up
            writer = self._parts.get(t.transfer_id)
            return None if writer is None or writer.has_room else writer.ready()

        def connected(fut: asyncio.Future[Any]) -> None:
            if fut.cancelled() or fut.exception() is not None:
                return
            lane_obj = fut.result()
            if t.ended:
                lane_obj.close()
                return
            self._direct[t.transfer_id] = lane_obj
            lane_obj.start_reading(lambda frame: link.route_frame(frame, direct.NAME), writer_ready)

        listener.lane.add_done_callback(connected)
        return lane, {direct.NAME: info}

    def _refuse(self, link: SharingLink, t: Transfer, reason: str) -> None:
        proto = self._protocols.get(link)
        if proto is not None:
            proto.refuse(t.transfer_id, reason)
            self._flush(link, proto)
        self._finish(t, "refused", reason)

    def _write_failed(self, link: SharingLink, proto: sp.SharingProtocol, t: Transfer, exc: BaseException) -> None:
        writer = self._parts.pop(t.transfer_id, None)
        if writer is None:
            return  # all bytes were in: _finalize reports it
        writer.close(close_part=False)
        self.store.discard(writer.part)
        if not t.ended:
            proto.fail(t.transfer_id, f"{self.user} could not store it: {exc}")
            self._flush(link, proto)
            self._finish(t, "failed", str(exc))

    def _on_chunk(self, link: SharingLink, proto: sp.SharingProtocol, t: Transfer, e: sp.ChunkReceived) -> None:
        writer = self._parts.get(t.transfer_id)
        if writer is None:
            return
        if t.lane == direct.NAME and link.frame_lane != direct.NAME:  # type: ignore[attr-defined]
            t.lane = link.frame_lane  # type: ignore[attr-defined]  # the sender fell back
        if e.offset == 0 and writer.part.prefix_length and t.received == t.resumed_from and t.resumed_from:
            writer.truncate()  # the sender's prefix differed: start again
            t.received = t.resumed_from = 0
        writer.write(e.offset, e.data)
        t._advance(len(e.data))
        self._progress(t)

    def _on_all_bytes(self, link: SharingLink, proto: sp.SharingProtocol, t: Transfer) -> None:
        if t.kind == "url":
            proto.complete(t.transfer_id)
            self._flush(link, proto)
            t._start(0, "control")
            self._arrived(t, None, "control")
            return
        part = self._parts.pop(t.transfer_id, None)  # _finalize owns it now
        if part is not None:
            spawn(self._finalize(link, proto, t, part), f"finalize {t.name}")

    async def _finalize(self, link: SharingLink, proto: sp.SharingProtocol, t: Transfer, writer: PartWriter) -> None:
        """Verify (fsync + hash) in a worker, seal the transfer, then place the file.

        Sealing first means a peer that sends more bytes than it declared fails the
        transfer *before* anything is placed, and cannot fail it afterwards.
        """
        part = writer.part
        try:
            await writer.flush()
        except BaseException as exc:
            writer.close(close_part=False)
            self.store.discard(part)
            if not t.ended:
                proto.fail(t.transfer_id, f"{self.user} could not store it: {exc}")
                self._flush(link, proto)
                self._finish(t, "failed", str(exc))
            return
        writer.close(close_part=False)  # the part is ours now
        try:
            await self._in_worker(self.store.verify, part)
        except (StoreError, OSError, ValueError) as exc:
            part.close()
            if not t.ended:
                proto.fail(t.transfer_id, str(exc))
                self._flush(link, proto)
                self._finish(t, "failed", str(exc))
            return
        if t.ended or not proto.seal(t.transfer_id):
            part.close()  # failed or cancelled meanwhile: nothing is placed; the verified bytes stay for later
            return
        self._sealed.add(t.transfer_id)  # from here on it completes, whatever the peer or the link does
        try:
            path = await self._in_worker(self.store.place, part, t.peer, t.name)
        except (StoreError, OSError) as exc:
            if not t.ended:
                proto.fail(t.transfer_id, str(exc))
                self._flush(link, proto)
                self._finish(t, "failed", str(exc))
            return
        proto.complete(t.transfer_id)
        self._flush(link, proto)
        self._arrived(t, path, t.lane or sp.DEFAULT_LANE)

    def _arrived(self, t: Transfer, path: Path | None, lane: str) -> None:
        t.path = str(path) if path else None
        t.lane = lane
        item = Item(
            time=time.time(), sender=t.peer, kind=t.kind, name=t.name, path=t.path,
            url=t.url, hash=t.hash, size=t.size, lane=lane,
        )
        self.inbox.add(item)
        self._finish(t, "done")
        self.host.emit(ev.ItemReceived(item=item))

    # -- bookkeeping ---------------------------------------------------------------------
    def _progress(self, t: Transfer) -> None:
        now = time.monotonic()
        if now - self._last_progress.get(t.transfer_id, 0.0) < PROGRESS_EVERY and t.received < t.size:
            return
        self._last_progress[t.transfer_id] = now
        self._progress_row(t)
        self.host.emit(ev.TransferProgress(transfer=t, bytes=t.received, total=t.size, rate=t.rate, text=t.text))

    def _progress_row(self, t: Transfer) -> None:
        self.progress_rows.append({"time": time.time(), "transfer_id": t.transfer_id, "bytes": t.received, "total": t.size})

    def _finish(self, t: Transfer, status: str, reason: str = "") -> None:
        writer = self._parts.pop(t.transfer_id, None)
        if writer is not None:
            writer.close()  # the part stays hidden in .parts for a later resume (removed if empty)
        lane = self._direct.pop(t.transfer_id, None)
        if lane is not None:
            lane.close()
        self._offers.pop(t.transfer_id, None)
        self._sealed.discard(t.transfer_id)
        self._paths.pop(t.transfer_id, None)
        self._offered.pop(t.transfer_id, None)
        self._links.pop(t.transfer_id, None)
        self._last_progress.pop(t.transfer_id, None)
        if t._end(status, reason):
            if t.received and t.size:
                self._progress_row(t)
            self.host.emit(ev.TransferEnded(transfer=t, status=status, reason=reason))
        if t.transfer_id in self._receiving:
            self._receiving.discard(t.transfer_id)
            self._admit()
        self._prune()

    def _prune(self) -> None:
        """Keep memory bounded however many offers a peer makes: forget the oldest ended transfers."""
        if len(self.transfers) > MAX_KEPT:
            ended = [tid for tid, x in self.transfers.items() if x.ended]
            for tid in ended[: len(self.transfers) - MAX_KEPT // 2]:
                del self.transfers[tid]
        for rows in (self.policy_rows, self.progress_rows):
            if len(rows) > 10 * MAX_KEPT:
                del rows[: -5 * MAX_KEPT]

    def log_rows(self) -> list[dict[str, Any]]:
        return [t.as_row() for t in self.transfers.values()]


__all__ = ["Sharing", "SharingHost", "SharingLink", "LOG_COLUMNS"]
