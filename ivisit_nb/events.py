"""Typed events a session emits. Widgets, logs and the CLI all consume these.

Subscribe with ``session.on(callback)``; callbacks run on the engine thread and
must return quickly.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field, asdict
from typing import Any


@dataclass(frozen=True)
class Event:
    """Base class; ``time`` is a Unix timestamp."""

    time: float = field(default_factory=time.time, kw_only=True)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["event"] = type(self).__name__
        return d


@dataclass(frozen=True)
class Connected(Event):
    """Joined the room server (also after a reconnect)."""

    room: str | None
    members: tuple[str, ...]


@dataclass(frozen=True)
class Disconnected(Event):
    """Lost the room server; the session reconnects by itself."""

    reason: str


@dataclass(frozen=True)
class MemberJoined(Event):
    user: str
    room: str | None


@dataclass(frozen=True)
class MemberLeft(Event):
    user: str
    room: str | None


@dataclass(frozen=True)
class PeerStateChanged(Event):
    """A peer link's state: new, connecting, connected, failed or closed."""

    user: str
    state: str
    reason: str = ""


@dataclass(frozen=True)
class MessageReceived(Event):
    sender: str
    to: str | None
    text: str | None
    decision: str


@dataclass(frozen=True)
class RequestPending(Event):
    """A call, message, file or URL waits for a decision (see :class:`ivisit_nb.consent.Request`)."""

    request: Any


@dataclass(frozen=True)
class CallEnded(Event):
    """A call handle ended: ``status`` is connected, refused, no answer or failed."""

    user: str
    status: str
    reason: str = ""


@dataclass(frozen=True)
class ServerError(Event):
    """The room server refused something; ``fatal``: it refused us for good (no more reconnects)."""

    code: str
    message: str
    fatal: bool = False


@dataclass(frozen=True)
class TransferProgress(Event):
    """Bytes of a transfer so far; ``text`` is iVisit's progress line."""

    transfer: Any
    bytes: int
    total: int
    rate: float
    text: str


@dataclass(frozen=True)
class TransferEnded(Event):
    """A transfer reached done, refused, cancelled or failed."""

    transfer: Any
    status: str
    reason: str = ""


@dataclass(frozen=True)
class ItemReceived(Event):
    """A file or URL arrived in the inbox (``item`` is an :class:`ivisit_nb.sharing.inbox.Item`)."""

    item: Any


@dataclass(frozen=True)
class VideoChanged(Event):
    """Video with ``user`` started or stopped.

    ``direction`` is ``"out"`` (our video to them) or ``"in"`` (theirs to us); ``active``
    whether it now flows; ``reason`` says why (``accepted``, ``stopped``, the refusal's
    reason, ``link lost: ...``). An ``"out"`` event with ``active=False`` also reports a
    refusal of a video that never started."""

    user: str
    direction: str
    active: bool
    reason: str = ""
