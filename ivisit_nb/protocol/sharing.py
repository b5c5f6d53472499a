"""The sharing protocol, sans I/O: offers, answers and file bytes between two peers.

One :class:`SharingProtocol` per peer link. It does no I/O itself: feed it what
arrives (:meth:`~SharingProtocol.receive_control` for JSON objects from the
control channel, :meth:`~SharingProtocol.receive_data` for binary frames from
the data channel), call its methods for what the local side decides, and drain
what it produced with :meth:`~SharingProtocol.take_control`,
:meth:`~SharingProtocol.take_data` and :meth:`~SharingProtocol.take_events`.

Time enters as ``now`` (seconds on any monotonic clock), in the aioquic style:
every input takes it, :meth:`~SharingProtocol.get_timer` says when the protocol next
needs to act, and :meth:`~SharingProtocol.handle_timer` lets it act (a stalled
transfer fails, an unanswered offer expires). The adapter arms one timer.

Events report what the *peer* did or what the protocol itself decided (a
violation, a flood refusal, all bytes in, a timeout). Calls the local side makes
(``cancel``, ``refuse`` ...) produce messages for the peer but no event: the
caller already knows.

Nothing a peer sends makes ``receive_*`` raise: malformed input becomes a
:class:`ProtocolViolation` event, and if it concerns a live transfer that
transfer fails (a ``fail`` goes to the peer and :class:`TransferFailed` with
``by_peer=False`` is emitted). Messages about finished transfers are ignored.
Local misuse (calling ``send_chunk`` before an accept, say) raises
:class:`SharingStateError` or ``ValueError``; a local call about a transfer that
has already ended (the peer cancelled meanwhile) does nothing, and
``send_chunk`` returns False then.

See docs/protocol.md, section 3, for the wire format.
"""

from __future__ import annotations

import re
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import blake3

from .text import clean_line, clean_text
from .urls import MAX_URL_BYTES, BadURL, check_url

VERSION = 2  # offers carry "v"; version 1 had no "v" and no lanes
FRAME_DATA = 0x01
HEADER_LEN = 1 + 16 + 8  # type, transfer id, offset
FRAME_PAYLOAD = 64 * 1024 - HEADER_LEN  # payload that fills a 64 KiB frame
MAX_NAME_CHARS = 4096  # file names; a URL offer's name is the URL (at most MAX_URL_BYTES)
MAX_REASON_CHARS = 1000  # longer reasons from a peer are cut
MAX_SIZE = 2**63 - 1
KINDS = ("file", "url")
MESSAGE_TYPES = frozenset({"offer", "accept", "have", "refuse", "done", "fail", "cancel"})
FRAME_TYPES = frozenset({FRAME_DATA})
DEFAULT_LANE = "datachannel"  # what a version 1 peer uses, and what every link has
MAX_LANES = 8
FINISHED_KEPT = 4096  # ids of finished transfers remembered (to ignore late messages)
STALL_TIMEOUT = 30.0  # a transfer with no progress for this long fails
OFFER_TIMEOUT = 120.0  # an offer nobody answers is refused (receiver) ...
ANSWER_GRACE = 10.0  # ... and given up by the sender this much later

_ID = re.compile(r"[0-9a-f]{32}")
_HASH = re.compile(r"blake3:[0-9a-f]{64}")
_LANE = re.compile(r"[a-z][a-z0-9-]{0,19}")


def content_hash(data: bytes) -> str:
    """``"blake3:<64 hex>"`` of ``data``: the form used in offers."""
    return "blake3:" + blake3.blake3(data).hexdigest()


def is_transfer_id(value: object) -> bool:
    """True for 32 lowercase hex characters (``uuid.uuid4().hex``)."""
    return isinstance(value, str) and _ID.fullmatch(value) is not None


def is_content_hash(value: object) -> bool:
    """True for ``"blake3:"`` followed by 64 lowercase hex characters."""
    return isinstance(value, str) and _HASH.fullmatch(value) is not None


class SharingStateError(RuntimeError):
    """The local side asked for something the transfer's state does not allow."""


# -- events ---------------------------------------------------------------------


@dataclass(frozen=True)
class SharingEvent:
    """Base class of everything :meth:`SharingProtocol.take_events` returns."""


@dataclass(frozen=True)
class OfferReceived(SharingEvent):
    """The peer offers a file or URL; answer with accept, have or refuse."""

    transfer_id: str
    kind: str
    name: str
    size: int
    hash: str
    url: str | None
    lanes: tuple[str, ...] = (DEFAULT_LANE,)
    lane_info: dict[str, Any] | None = None  # per-lane details from the sender, e.g. {"direct": {...}}


@dataclass(frozen=True)
class OfferExpired(SharingEvent):
    """Nobody answered the peer's offer within ``offer_timeout``: it was refused ("no answer")."""

    transfer_id: str


@dataclass(frozen=True)
class OfferFlooded(SharingEvent):
    """An offer refused unseen: the peer already had too many waiting for a decision."""

    transfer_id: str
    name: str


@dataclass(frozen=True)
class OfferAccepted(SharingEvent):
    """Our offer was accepted. Call ``start_sending(id, offset)`` with ``offset`` if
    ``prefix_hash`` matches our own first ``offset`` bytes, else with 0."""

    transfer_id: str
    offset: int
    prefix_hash: str | None
    lane: str = DEFAULT_LANE
    lane_info: dict[str, Any] | None = None  # the receiver's details for that lane


@dataclass(frozen=True)
class OfferHad(SharingEvent):
    """The peer already holds this content; nothing is sent and the transfer is done."""

    transfer_id: str


@dataclass(frozen=True)
class OfferRefused(SharingEvent):
    transfer_id: str
    reason: str


@dataclass(frozen=True)
class ChunkReceived(SharingEvent):
    """Bytes to write at ``offset``. ``offset == 0`` means: truncate the part file
    to 0 first (a fresh transfer, or the sender restarting a resume from 0).
    ``data`` is a read-only memoryview into the frame (compare it with bytes as usual)."""

    transfer_id: str
    offset: int
    data: bytes


@dataclass(frozen=True)
class AllBytesReceived(SharingEvent):
    """All declared bytes are in: verify the hash, then call ``complete`` or ``fail``."""

    transfer_id: str


@dataclass(frozen=True)
class TransferDone(SharingEvent):
    """Sender side: the peer received everything and verified the hash."""

    transfer_id: str


@dataclass(frozen=True)
class TransferFailed(SharingEvent):
    """``by_peer``: the peer sent ``fail``; otherwise the protocol failed it (bad data)."""

    transfer_id: str
    reason: str
    by_peer: bool


@dataclass(frozen=True)
class TransferCancelled(SharingEvent):
    transfer_id: str
    reason: str
    by_peer: bool


@dataclass(frozen=True)
class ProtocolViolation(SharingEvent):
    """The peer sent something malformed or out of order; it was dropped."""

    reason: str


# -- state ------------------------------------------------------------------------

# Sender:   offered -> accepted -> sending -> done | had | refused | failed | cancelled
# Receiver: offered -> accepted -> received -> sealed -> done | had | refused | failed | cancelled
# "sealed": the content verified and is being placed; bytes beyond it no longer fail it.
LIVE_STATES = ("offered", "accepted", "sending", "received", "sealed")


@dataclass
class _Transfer:
    id: str
    role: str  # "send" or "receive"
    kind: str
    name: str
    size: int
    hash: str
    url: str | None
    lanes: tuple[str, ...] = (DEFAULT_LANE,)
    state: str = "offered"
    active_at: float = 0.0  # last sign of progress, on the protocol's clock
    accepted_offset: int = 0  # the offset in the accept
    next_offset: int = 0  # sender: next byte to send; receiver: next byte expected
    got_data: bool = False  # receiver: a frame arrived since the accept

    @property
    def live(self) -> bool:
        return self.state in LIVE_STATES


class _Malformed(Exception):
    """Internal: a field of a peer's message is wrong (the message says which)."""


def _check_lane_info(value: Any) -> dict[str, Any] | None:
    """``lane_info`` is absent or an object keyed by lane name; each lane module checks its own part."""
    if value is None:
        return None
    if not isinstance(value, dict) or len(value) > MAX_LANES or not all(_LANE.fullmatch(k) for k in value):
        raise _Malformed("lane_info must be an object keyed by lane names")
    return value


def _check_lanes(value: Any) -> tuple[str, ...]:
    if value is None:  # a version 1 peer
        return (DEFAULT_LANE,)
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_LANES:
        raise _Malformed(f"offer lanes must be a list of 1 to {MAX_LANES} lane names")
    if not all(isinstance(v, str) and _LANE.fullmatch(v) for v in value):
        raise _Malformed("lane names are 1 to 20 lowercase letters, digits or '-'")
    return tuple(dict.fromkeys(value))


def _check_offer_fields(msg: dict[str, Any]) -> tuple[str, str, int, str, str | None, tuple[str, ...]]:
    """``(kind, name, size, hash, url, lanes)`` of an offer, or raise :class:`_Malformed`.

    File names are cleaned (:func:`~.text.clean_line`), so what the peer sends can be
    stored, logged and shown whatever it contains.
    """
    kind, name, size, hash_, url = (msg.get(k) for k in ("kind", "name", "size", "hash", "url"))
    if kind not in KINDS:
        raise _Malformed(f"offer kind must be 'file' or 'url', not {kind!r:.40}")
    if not isinstance(name, str):
        raise _Malformed("offer name must be a string")
    if not isinstance(size, int) or isinstance(size, bool) or not 0 <= size <= MAX_SIZE:
        raise _Malformed(f"offer size must be an integer from 0 to {MAX_SIZE}, not {size!r:.40}")
    if not is_content_hash(hash_):
        raise _Malformed("offer hash must be 'blake3:' followed by 64 lowercase hex digits")
    lanes = _check_lanes(msg.get("lanes"))
    if kind == "file":
        if len(name) > MAX_NAME_CHARS:
            raise _Malformed(f"offer name is {len(name)} characters long; at most {MAX_NAME_CHARS} allowed")
        if url is not None:
            raise _Malformed("a file offer must not carry a url")
        return kind, clean_line(name, MAX_NAME_CHARS) or "unnamed", size, hash_, None, lanes
    if not isinstance(url, str):
        raise _Malformed("a url offer must carry the url as a string")
    if clean_line(url, MAX_URL_BYTES) != url:
        raise _Malformed("the url contains characters that are not allowed in a URL")
    try:
        check_url(url)
    except BadURL as exc:
        raise _Malformed(f"refused url: {exc}") from None
    if size != 0:
        raise _Malformed("a url offer must have size 0")
    if name != url:
        raise _Malformed("a url offer's name must be the url itself")
    if content_hash(url.encode("utf-8")) != hash_:
        raise _Malformed("a url offer's hash is not the blake3 of the url")
    return kind, name, size, hash_, url, lanes


def _reason_of(msg: dict[str, Any]) -> str:
    reason = msg.get("reason")
    if not isinstance(reason, str):
        raise _Malformed(f"{msg.get('t')} needs a string 'reason'")
    return clean_text(reason, MAX_REASON_CHARS)


class SharingProtocol:
    """The sharing protocol for one peer link, fed messages and returning output.

    ``local`` and ``remote`` are the two user names (used in reasons and
    :meth:`__repr__`). At most ``max_pending_offers`` offers from the peer wait
    for a decision; more are refused automatically (see :class:`OfferFlooded`).
    ``lanes`` are the lanes this side can carry frames on, best first.

    Timeouts (seconds on the clock that ``now`` arguments use): a transfer that
    makes no progress for ``stall_timeout`` fails; an offer from the peer that
    nobody answers within ``offer_timeout`` is refused; our own offer that the peer
    leaves unanswered is given up ``answer_grace`` after that.
    """

    def __init__(
        self,
        local: str,
        remote: str,
        *,
        max_pending_offers: int = 20,
        lanes: tuple[str, ...] = (DEFAULT_LANE,),
        stall_timeout: float = STALL_TIMEOUT,
        offer_timeout: float = OFFER_TIMEOUT,
        answer_grace: float = ANSWER_GRACE,
        now: float = 0.0,
    ) -> None:
        if max_pending_offers < 1:
            raise ValueError(f"max_pending_offers must be at least 1, not {max_pending_offers}")
        self.local = local
        self.remote = remote
        self.max_pending_offers = max_pending_offers
        self.lanes = tuple(lanes)
        self.stall_timeout, self.offer_timeout, self.answer_grace = stall_timeout, offer_timeout, answer_grace
        self._now = now
        self._transfers: dict[str, _Transfer] = {}
        self._live: dict[str, _Transfer] = {}  # the transfers not finished: what timers look at
        self._pending: set[str] = set()  # offers from the peer waiting for our decision
        self._finished: OrderedDict[str, None] = OrderedDict()  # oldest first, for pruning
        self._control_out: list[dict[str, Any]] = []
        self._data_out: list[Any] = []
        self._events: list[SharingEvent] = []

    def __repr__(self) -> str:
        return f"<SharingProtocol {self.local} <-> {self.remote}: {len(self._live)} live transfers>"

    # -- outputs ------------------------------------------------------------------

    def take_control(self) -> list[dict[str, Any]]:
        """Control messages to send, oldest first (JSON-encode each one)."""
        out, self._control_out = self._control_out, []
        return out

    def take_data(self) -> list[Any]:
        """Binary frames to send on a lane, oldest first: bytes, or the buffers given to
        :meth:`send_framed`."""
        out, self._data_out = self._data_out, []
        return out

    def quiet_after_chunk(self) -> bool:
        """True if the only output is one :class:`ChunkReceived` (the adapters' fast path)."""
        return not self._control_out and len(self._events) == 1 and type(self._events[0]) is ChunkReceived

    def take_events(self) -> list[SharingEvent]:
        """Events since the last call, oldest first."""
        out, self._events = self._events, []
        return out

    # -- introspection ------------------------------------------------------------

    def state(self, transfer_id: str) -> str | None:
        """The transfer's state (see ``LIVE_STATES``), or None if unknown or forgotten."""
        t = self._transfers.get(transfer_id)
        return t.state if t else None

    @property
    def pending_offers(self) -> int:
        """Offers from the peer waiting for our decision."""
        return len(self._pending)

    def live_transfers(self) -> list[str]:
        """Ids of transfers not yet finished, either direction."""
        return list(self._live)

    # -- time ------------------------------------------------------------------------

    def _tick(self, now: float | None) -> float:
        if now is not None:
            self._now = now
        return self._now

    def _deadline(self, t: _Transfer) -> float | None:
        if t.state == "offered":
            wait = self.offer_timeout if t.role == "receive" else self.offer_timeout + self.answer_grace
            return t.active_at + wait
        if t.role == "receive" and t.state in ("received", "sealed"):
            return None  # our own verifying and placing, not the peer's silence
        return t.active_at + self.stall_timeout

    def get_timer(self) -> float | None:
        """When :meth:`handle_timer` should next be called, or None if nothing waits."""
        deadlines = [d for t in self._live.values() if (d := self._deadline(t)) is not None]
        return min(deadlines, default=None)

    def handle_timer(self, now: float) -> None:
        """Act on every deadline up to ``now``: stalled transfers fail, unanswered offers expire."""
        self._tick(now)
        for t in list(self._live.values()):
            deadline = self._deadline(t)
            if deadline is None or deadline > now:
                continue
            if t.state == "offered" and t.role == "receive":
                self._send("refuse", t.id, reason=f"{self.local} did not answer within {self.offer_timeout:g} s")
                self._finish(t, "refused")
                self._events.append(OfferExpired(t.id))
            elif t.state == "offered":
                reason = f"{self.remote} did not answer the offer"
                self._send("cancel", t.id, reason=reason)
                self._finish(t, "failed")
                self._events.append(TransferFailed(t.id, reason, by_peer=False))
            else:
                reason = f"no progress from {self.remote} for {now - t.active_at:.0f} s"
                self._send("fail", t.id, reason=reason)
                self._finish(t, "failed")
                self._events.append(TransferFailed(t.id, reason, by_peer=False))

    # -- internals ---------------------------------------------------------------

    def _send(self, t: str, transfer_id: str, **fields: Any) -> None:
        self._control_out.append({"t": t, "id": transfer_id, **fields})

    def _finish(self, t: _Transfer, state: str) -> None:
        t.state = state
        self._live.pop(t.id, None)
        self._pending.discard(t.id)
        self._finished[t.id] = None
        while len(self._finished) > FINISHED_KEPT:
            old, _ = self._finished.popitem(last=False)
            self._transfers.pop(old, None)

    def _violation(self, reason: str, t: _Transfer | None = None, fail_reason: str | None = None) -> None:
        """Report a peer's mistake; if it concerns a live transfer, fail that transfer."""
        self._events.append(ProtocolViolation(reason))
        if t is not None and t.live:
            why = fail_reason or reason
            self._send("fail", t.id, reason=why)
            self._finish(t, "failed")
            self._events.append(TransferFailed(t.id, why, by_peer=False))

    def _get(self, transfer_id: str, role: str | None = None) -> _Transfer:
        """A transfer the local side refers to, or raise with what is wrong."""
        t = self._transfers.get(transfer_id)
        if t is None:
            raise SharingStateError(f"no transfer {transfer_id!r} on the link to {self.remote}")
        if role is not None and t.role != role:
            what = "we are receiving it" if t.role == "receive" else "we are sending it"
            raise SharingStateError(f"transfer {transfer_id} cannot do that: {what}")
        return t

    def _expect_state(self, t: _Transfer, *states: str, action: str) -> bool:
        """True if ``t`` is in one of ``states``; False if it already finished; else raise."""
        if t.state in states:
            return True
        if not t.live:
            return False
        raise SharingStateError(
            f"cannot {action} transfer {t.id} while it is {t.state}; "
            f"that needs it to be {' or '.join(states)}"
        )

    # -- sender ------------------------------------------------------------------

    def offer(
        self,
        transfer_id: str,
        kind: str,
        name: str,
        size: int,
        hash: str,
        url: str | None = None,
        *,
        lanes: tuple[str, ...] | None = None,
        lane_info: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Offer a file (``kind="file"``) or URL (``kind="url"``, ``size=0``,
        ``name=url``, ``hash`` = blake3 of the URL) to the peer, to be carried on
        one of ``lanes`` (default: all of this side's lanes)."""
        if not is_transfer_id(transfer_id):
            raise ValueError(f"transfer id must be 32 lowercase hex digits (uuid4().hex), not {transfer_id!r}")
        if transfer_id in self._transfers:
            raise ValueError(f"transfer id {transfer_id} is already used; make a new one with uuid4().hex")
        msg: dict[str, Any] = {"t": "offer", "v": VERSION, "id": transfer_id, "kind": kind, "name": name,
                               "size": size, "hash": hash, "lanes": list(lanes or self.lanes)}
        if url is not None:
            msg["url"] = url
        if lane_info:
            msg["lane_info"] = lane_info
        try:
            fields = _check_offer_fields(msg)
        except _Malformed as exc:
            raise ValueError(f"cannot offer this: {exc}") from None
        msg["name"] = fields[1]  # a file name is sent as a peer will show it
        self._transfers[transfer_id] = self._live[transfer_id] = _Transfer(transfer_id, "send", *fields, active_at=self._tick(now))
        self._control_out.append(msg)

    def start_sending(self, transfer_id: str, offset: int, *, now: float | None = None) -> None:
        """After :class:`OfferAccepted`: send from ``offset``, which is the accepted
        offset (prefix hash matched) or 0 (it did not). Then call :meth:`send_chunk`."""
        t = self._get(transfer_id, "send")
        t.active_at = self._tick(now)
        if not self._expect_state(t, "accepted", action="start sending"):
            return
        if offset not in (0, t.accepted_offset):
            raise ValueError(f"start offset must be 0 or the accepted offset {t.accepted_offset}, not {offset}")
        t.next_offset = offset
        t.state = "sending"

    def send_chunk(self, transfer_id: str, offset: int, data: bytes, *, now: float | None = None) -> bool:
        """Frame ``data`` (bytes at ``offset``, contiguous) for the data channel.

        Returns False, sending nothing, if the transfer has ended meanwhile
        (cancelled, failed, refused): stop reading the file then.
        """
        t = self._get(transfer_id, "send")
        if not self._may_send(t, offset, len(data)):
            return False
        self._data_out.append(b"".join((self._header(t, offset), data)))  # one copy
        t.next_offset = offset + len(data)
        t.active_at = self._tick(now)
        return True

    def send_framed(self, transfer_id: str, offset: int, frame: Any, *, now: float | None = None) -> bool:
        """:meth:`send_chunk` without copying: ``frame`` is a writable buffer whose first
        :data:`HEADER_LEN` bytes are room for the header and whose rest is the chunk (read there
        straight from the file). The header is written in place and ``frame`` itself becomes
        the frame; don't touch it until the lane has let go of it."""
        t = self._get(transfer_id, "send")
        if not self._may_send(t, offset, len(frame) - HEADER_LEN):
            return False
        frame[:HEADER_LEN] = self._header(t, offset)
        self._data_out.append(frame)
        t.next_offset = offset + len(frame) - HEADER_LEN
        t.active_at = self._tick(now)
        return True

    def _may_send(self, t: "_Transfer", offset: int, n: int) -> bool:
        if not self._expect_state(t, "sending", action="send data for"):
            return False
        if offset != t.next_offset:
            raise ValueError(f"chunk at offset {offset} but the next byte to send is {t.next_offset}")
        if n <= 0:
            raise ValueError("empty chunk; send at least one byte")
        if offset + n > t.size:
            raise ValueError(f"chunk ends at byte {offset + n}, beyond the offered size {t.size}")
        return True

    @staticmethod
    def _header(t: "_Transfer", offset: int) -> bytes:
        return bytes([FRAME_DATA]) + bytes.fromhex(t.id) + offset.to_bytes(8, "big")

    # -- receiver ----------------------------------------------------------------

    def accept(
        self,
        transfer_id: str,
        offset: int = 0,
        prefix_hash: str | None = None,
        *,
        lane: str | None = None,
        lane_info: dict[str, Any] | None = None,
        now: float | None = None,
    ) -> None:
        """Accept an offer. To resume, ``offset`` is how many bytes we already hold
        and ``prefix_hash`` their blake3; the sender sends from there or from 0.
        ``lane`` is one of the offer's lanes (default: the first one both sides have)."""
        t = self._get(transfer_id, "receive")
        if not self._expect_state(t, "offered", action="accept"):
            return
        if lane is None:
            lane = self.choose_lane(t.lanes)
        elif lane not in t.lanes:
            raise ValueError(f"lane {lane!r} was not offered; the offer allows {list(t.lanes)}")
        if offset == 0:
            if prefix_hash is not None:
                raise ValueError("prefix_hash must be None when accepting from offset 0")
        else:
            if not 0 < offset < t.size:
                raise ValueError(f"resume offset must be from 0 to {t.size - 1} (below the size), not {offset}")
            if not is_content_hash(prefix_hash):
                raise ValueError("resuming needs prefix_hash, 'blake3:' and 64 hex digits, of the bytes held")
        extra = {"lane_info": lane_info} if lane_info else {}
        self._send("accept", t.id, offset=offset, prefix_hash=prefix_hash, lane=lane, **extra)
        t.state = "accepted"
        t.active_at = self._tick(now)
        self._pending.discard(t.id)
        t.accepted_offset = t.next_offset = offset
        if t.size == 0:
            t.state = "received"
            self._events.append(AllBytesReceived(t.id))

    def have(self, transfer_id: str) -> None:
        """Tell the peer we already hold this content: nothing is sent, the transfer is done."""
        t = self._get(transfer_id, "receive")
        if self._expect_state(t, "offered", action="answer 'have' to"):
            self._send("have", t.id)
            self._finish(t, "had")

    def refuse(self, transfer_id: str, reason: str) -> None:
        """Refuse an offer, telling the peer why."""
        t = self._get(transfer_id, "receive")
        if self._expect_state(t, "offered", action="refuse"):
            self._send("refuse", t.id, reason=reason)
            self._finish(t, "refused")

    def choose_lane(self, offered: tuple[str, ...]) -> str:
        """The first of this side's lanes that ``offered`` has too (the data channel at worst)."""
        return next((lane for lane in self.lanes if lane in offered), DEFAULT_LANE)

    def seal(self, transfer_id: str) -> bool:
        """After :class:`AllBytesReceived` and a good hash, before placing the file: from now on
        bytes beyond the declared size are ignored instead of failing the transfer.
        False if the transfer already ended (then place nothing)."""
        t = self._get(transfer_id, "receive")
        if not self._expect_state(t, "received", action="seal"):
            return False
        t.state = "sealed"
        return True

    def complete(self, transfer_id: str) -> None:
        """After :class:`AllBytesReceived` and a good hash: tell the peer we are done."""
        t = self._get(transfer_id, "receive")
        if self._expect_state(t, "received", "sealed", action="complete"):
            self._send("done", t.id)
            self._finish(t, "done")

    # -- either side ------------------------------------------------------------

    def fail(self, transfer_id: str, reason: str) -> None:
        """End a transfer because of an error here (bad hash, disk full ...)."""
        t = self._get(transfer_id)
        if t.live:
            self._send("fail", t.id, reason=reason)
            self._finish(t, "failed")

    def cancel(self, transfer_id: str, reason: str) -> None:
        """End a transfer because the user changed their mind. Nothing happens if it already
        ended, or if it is sealed (verified and being placed: too late to stop)."""
        t = self._get(transfer_id)
        if t.live and t.state != "sealed":
            self._send("cancel", t.id, reason=reason)
            self._finish(t, "cancelled")

    def connection_lost(self, reason: str = "connection lost") -> None:
        """The link is gone: every live transfer fails (``by_peer=False``); nothing is sent."""
        for t in list(self._live.values()):
            self._finish(t, "failed")
            self._events.append(TransferFailed(t.id, reason, by_peer=False))

    # -- input: control ------------------------------------------------------------

    def receive_control(self, msg: Any, now: float | None = None) -> None:
        """Handle one JSON object from the peer's control channel. Never raises."""
        self._tick(now)
        if not isinstance(msg, dict):
            self._violation(f"control message is not a JSON object but {type(msg).__name__}")
            return
        kind = msg.get("t")
        if not isinstance(kind, str) or kind not in MESSAGE_TYPES:
            self._violation(f"unknown control message type {kind!r:.40}")
            return
        transfer_id = msg.get("id")
        if not is_transfer_id(transfer_id):
            self._violation(f"{kind} with a bad id {transfer_id!r:.40}; ids are 32 lowercase hex digits")
            return
        if kind == "offer":
            self._on_offer(transfer_id, msg)
            return
        t = self._transfers.get(transfer_id)
        if t is None:
            self._violation(f"{kind} for unknown transfer {transfer_id}")
            return
        if not t.live:
            return  # late message for a finished transfer: ignore
        if t.state == "sealed" and kind in ("cancel", "fail"):
            return  # verified and being placed: it completes (the sender then gets "done", late)
        try:
            if kind in ("cancel", "fail"):
                reason = _reason_of(msg)
                self._finish(t, "cancelled" if kind == "cancel" else "failed")
                event = TransferCancelled if kind == "cancel" else TransferFailed
                self._events.append(event(t.id, reason, by_peer=True))
            elif t.role != "send":
                self._violation(f"{kind} for transfer {t.id}, which the peer is sending, not receiving")
            else:
                self._on_answer(t, kind, msg)
        except _Malformed as exc:
            self._violation(f"bad {kind} for transfer {t.id}: {exc}", t)

    def _on_offer(self, transfer_id: str, msg: dict[str, Any]) -> None:
        if transfer_id in self._transfers:
            self._violation(f"duplicate offer id {transfer_id}")
            return
        try:
            kind, name, size, hash_, url, lanes = _check_offer_fields(msg)
            lane_info = _check_lane_info(msg.get("lane_info"))
        except _Malformed as exc:
            reason = f"malformed offer: {exc}"
            self._transfers[transfer_id] = t = _Transfer(transfer_id, "receive", "file", "", 0, "", None)
            self._finish(t, "refused")
            self._send("refuse", transfer_id, reason=reason)
            self._violation(reason)
            return
        t = _Transfer(transfer_id, "receive", kind, name, size, hash_, url, lanes, active_at=self._now)
        if self.pending_offers >= self.max_pending_offers:
            self._transfers[transfer_id] = t
            self._finish(t, "refused")
            self._send("refuse", transfer_id, reason=f"too many pending offers from {self.remote}")
            self._events.append(OfferFlooded(transfer_id, name))
            return
        self._transfers[transfer_id] = self._live[transfer_id] = t
        self._pending.add(transfer_id)
        self._events.append(OfferReceived(transfer_id, kind, name, size, hash_, url, lanes, lane_info))

    def _on_answer(self, t: _Transfer, kind: str, msg: dict[str, Any]) -> None:
        """accept, have, refuse or done from the receiver of our offer ``t``."""
        if kind in ("have", "refuse"):
            if t.state != "offered":
                raise _Malformed(f"{kind} after the offer was already accepted")
            if kind == "have":
                self._finish(t, "had")
                self._events.append(OfferHad(t.id))
            else:
                reason = _reason_of(msg)
                self._finish(t, "refused")
                self._events.append(OfferRefused(t.id, reason))
        elif kind == "accept":
            if t.state != "offered":
                raise _Malformed("accept after the offer was already accepted")
            offset, prefix_hash = msg.get("offset"), msg.get("prefix_hash")
            if not isinstance(offset, int) or isinstance(offset, bool):
                raise _Malformed("accept offset must be an integer")
            if offset == 0:
                if prefix_hash is not None:
                    raise _Malformed("accept at offset 0 must have prefix_hash null")
            elif not 0 < offset < t.size:
                raise _Malformed(f"accept offset {offset} is outside 0..{t.size - 1}")
            elif not is_content_hash(prefix_hash):
                raise _Malformed("accept with an offset needs prefix_hash 'blake3:<64 hex>'")
            lane = msg.get("lane", DEFAULT_LANE)
            if not isinstance(lane, str) or lane not in t.lanes:
                raise _Malformed(f"accept on lane {lane!r:.40}, which was not offered")
            lane_info = _check_lane_info(msg.get("lane_info"))
            t.state = "accepted"
            t.accepted_offset = offset
            t.active_at = self._now
            self._events.append(OfferAccepted(t.id, offset, prefix_hash, lane, lane_info))
        else:  # done
            all_sent = t.state == "sending" and t.next_offset == t.size
            if not (all_sent or (t.state == "accepted" and t.size == 0)):
                raise _Malformed("done before all bytes were sent")
            self._finish(t, "done")
            self._events.append(TransferDone(t.id))

    # -- input: data ----------------------------------------------------------------

    def receive_data(self, frame: Any, now: float | None = None) -> None:
        """Handle one binary frame from the peer's data channel. Never raises."""
        self._tick(now)
        if not isinstance(frame, (bytes, bytearray, memoryview)):
            self._violation(f"data frame is not bytes but {type(frame).__name__}")
            return
        if not isinstance(frame, bytes) and not (isinstance(frame, memoryview) and frame.readonly):
            frame = bytes(frame)  # a buffer someone may still change: freeze it
        if len(frame) < HEADER_LEN:
            self._violation(f"data frame of {len(frame)} bytes is too short; the header alone is {HEADER_LEN}")
            return
        if frame[0] != FRAME_DATA:
            self._violation(f"unknown data frame type 0x{frame[0]:02x}")
            return
        transfer_id = frame[1:17].hex()
        offset = int.from_bytes(frame[17:HEADER_LEN], "big")
        payload = memoryview(frame)[HEADER_LEN:]  # no copy of up to a MiB per frame
        t = self._transfers.get(transfer_id)
        if t is None:
            self._violation(f"data for unknown transfer {transfer_id}")
            return
        if not t.live:
            return  # bytes still in flight after a cancel or failure: ignore
        if t.role != "receive":
            self._violation(f"data for transfer {t.id}, which we are sending, not receiving")
            return
        if t.state == "offered":
            self._violation(f"data for transfer {t.id} before it was accepted", t)
            return
        end = offset + len(payload)
        if t.state == "sealed":
            self._events.append(ProtocolViolation(f"transfer {t.id}: bytes beyond its declared size {t.size}; ignored"))
            return
        if t.state == "received" or end > t.size:
            self._violation(
                f"transfer {t.id}: bytes up to {end} but the offer declared {t.size}",
                t,
                fail_reason="more bytes than declared",
            )
            return
        if offset == 0 and not t.got_data and t.accepted_offset > 0:
            t.next_offset = 0  # the sender restarts (our prefix did not match theirs)
        if offset != t.next_offset:
            self._violation(f"transfer {t.id}: data at offset {offset}, expected {t.next_offset}", t)
            return
        t.got_data = True
        t.active_at = self._now
        if not payload:
            return
        t.next_offset = end
        self._events.append(ChunkReceived(t.id, offset, payload))
        if end == t.size:
            t.state = "received"
            self._events.append(AllBytesReceived(t.id))
