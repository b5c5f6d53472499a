"""Networking facts about a link that aiortc keeps private, read in this one place.

aiortc's ``getStats()`` has no candidate-pair, data-channel or SCTP reports
(aiortc#1435), so these facts come from its internals:
``pc.sctp.transport.transport`` (RTCIceTransport) ``._connection`` (aioice
Connection: ``local_candidates``, ``remote_candidates``, ``_nominated``) and
``pc.sctp`` (RTCSctpTransport: ``_cwnd``, ``_flight_size``, ``_rto``, queues).
Tested with aiortc 1.16 and aioice 0.13 (pyproject.toml pins aiortc below 2); every
read is guarded, so a different version gives ``None`` values rather than errors.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class CandidateInfo:
    """One ICE candidate: ``type`` is host, srflx, prflx or relay."""

    side: str  # "local" or "remote"
    type: str
    protocol: str
    address: str
    port: int
    priority: int


def _ice_connection(link: Any) -> Any:
    try:
        return link.pc.sctp.transport.transport._connection
    except AttributeError:
        return None


def _info(side: str, c: Any) -> CandidateInfo:
    return CandidateInfo(side, str(c.type), str(c.transport), str(c.host), int(c.port), int(c.priority))


def candidates(link: Any) -> list[CandidateInfo]:
    """The local and remote ICE candidates of ``link`` (empty before ICE starts)."""
    conn = _ice_connection(link)
    if conn is None:
        return []
    return [_info("local", c) for c in conn.local_candidates] + [_info("remote", c) for c in conn.remote_candidates]


def selected_pair(link: Any) -> tuple[CandidateInfo, CandidateInfo] | None:
    """(local, remote) candidates of the pair ICE nominated, or None before it did."""
    conn = _ice_connection(link)
    nominated = getattr(conn, "_nominated", None) if conn is not None else None
    if not nominated:
        return None
    pair = nominated.get(1) or next(iter(nominated.values()))
    try:
        return _info("local", pair.local_candidate), _info("remote", pair.remote_candidate)
    except AttributeError:
        return None


def sctp_acked(link: Any) -> int | None:
    """The highest TSN the peer's SCTP has acknowledged: it moves while the peer takes our data."""
    return getattr(getattr(link.pc, "sctp", None), "_last_sacked_tsn", None)


def sctp_unacked(link: Any) -> bool:
    """True while SCTP still holds data the peer has not acknowledged (its queues; False if unknown)."""
    sctp = getattr(link.pc, "sctp", None)
    return bool(getattr(sctp, "_outbound_queue", None) or getattr(sctp, "_sent_queue", None))


def sctp_counters(link: Any) -> dict[str, Any]:
    """What SCTP exposes about congestion: window, bytes in flight, retransmission timeout, queues."""
    sctp = getattr(link.pc, "sctp", None)
    if sctp is None:
        return {}

    def get(name: str) -> Any:
        value = getattr(sctp, name, None)
        return len(value) if isinstance(value, (list, dict)) or hasattr(value, "__len__") and not isinstance(value, (int, float)) else value

    return {
        "cwnd": get("_cwnd"),
        "flight_size": get("_flight_size"),
        "rto": get("_rto"),
        "outbound_queue": get("_outbound_queue"),
        "sent_queue": get("_sent_queue"),
    }
