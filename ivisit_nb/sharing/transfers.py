"""Transfer: the handle for one file or URL sent or received, or for a room send.

``.wait()`` returns once it has ended; it raises ``TimeoutError`` only on its own
timeout, never because of a refusal or cancel: ``.status`` and ``.reason`` tell.
"""

from __future__ import annotations

import asyncio
import threading
import time
from typing import Any, Callable

ACTIVE = ("hashing", "offered", "waiting", "queued", "transferring")
ENDED = ("done", "refused", "cancelled", "failed")
STATUSES = ACTIVE + ENDED


def kib(n: int) -> str:
    """Size as iVisit printed it: ``1200K``."""
    return f"{(n + 1023) // 1024}K"


class Transfer:
    """One item between us and one peer.

    ``status`` is one of hashing (sender, before the offer), offered, waiting (for a
    decision), queued (accepted, waiting for a free receive slot), transferring, done,
    refused, cancelled, failed. ``progress`` is 0..1 and ``rate`` bytes per second.
    """

    def __init__(
        self,
        transfer_id: str,
        direction: str,
        peer: str,
        kind: str,
        name: str,
        size: int,
        hash: str,
        url: str | None = None,
        canceller: Callable[["Transfer", str], None] | None = None,
    ) -> None:
        self.transfer_id = transfer_id
        self.direction = direction  # "out" or "in"
        self.peer, self.kind, self.name, self.size, self.hash, self.url = peer, kind, name, size, hash, url
        self.status = "offered"
        self.reason = ""
        self.decision: str | None = None
        self.decided_by: str | None = None
        self.lane: str | None = None
        self.bytes_transferred = 0  # payload bytes that crossed the wire
        self.resumed_from = 0
        self.received = 0  # bytes present at the receiver, resumed prefix included
        self.path: str | None = None
        self.offered_at = time.time()
        self.started_at: float | None = None
        self.finished_at: float | None = None
        self.rate = 0.0
        self.last_activity = time.monotonic()
        self._rate_mark = (time.monotonic(), 0)
        self._canceller = canceller
        self._ended = threading.Event()
        self._waiters: list[Callable[[], None]] = []
        self._lock = threading.Lock()

    # -- state changes (engine thread) -------------------------------------------
    def _start(self, offset: int, lane: str) -> None:
        self.status = "transferring"
        self.lane = lane
        self.resumed_from = offset
        self.received = offset
        self.started_at = time.time()
        self.last_activity = time.monotonic()
        self._rate_mark = (time.monotonic(), offset)

    def _advance(self, n: int) -> None:
        self.bytes_transferred += n
        self.received += n
        t0, b0 = self._rate_mark
        now = self.last_activity = time.monotonic()
        if now - t0 >= 0.25:
            self.rate = (self.received - b0) / (now - t0)
            self._rate_mark = (now, self.received)

    def _end(self, status: str, reason: str = "") -> bool:
        with self._lock:
            if self._ended.is_set():
                return False
            self.status, self.reason = status, reason
            self.finished_at = time.time()
            if status == "done" and self.started_at and self.bytes_transferred:
                self.rate = self.bytes_transferred / max(1e-6, self.finished_at - self.started_at)
            self._ended.set()
            waiters, self._waiters = self._waiters, []
        for w in waiters:
            w()
        return True

    # -- public --------------------------------------------------------------------
    @property
    def ended(self) -> bool:
        return self._ended.is_set()

    @property
    def progress(self) -> float:
        """Fraction received, 0..1 (1 for an empty file or a URL once done)."""
        if self.size <= 0:
            return 1.0 if self.status == "done" else 0.0
        return min(1.0, self.received / self.size)

    @property
    def results(self) -> dict[str, str]:
        """Recipient -> status (one entry for a 1:1 send)."""
        return {self.peer: self.status}

    @property
    def text(self) -> str:
        """iVisit's progress line, e.g. ``Transferring report.pdf from alice, 42% of 1200K received``."""
        if self.direction == "in":
            return f"Transferring {self.name} from {self.peer}, {int(self.progress * 100)}% of {kib(self.size)} received"
        return f"Transferring {self.name} to {self.peer}, {int(self.progress * 100)}% of {kib(self.size)} sent"

    def wait(self, timeout: float | None = None) -> str:
        """Block until ended and return the status. ``TimeoutError`` only on ``timeout``."""
        if not self._ended.wait(timeout):
            raise TimeoutError(f"{self.name} to/from {self.peer} still {self.status} after {timeout} s")
        return self.status

    def _add_waiter(self, fn: Callable[[], None]) -> None:
        with self._lock:
            if not self._ended.is_set():
                self._waiters.append(fn)
                return
        fn()

    def __await__(self):
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        self._add_waiter(lambda: loop.call_soon_threadsafe(lambda: fut.done() or fut.set_result(self.status)))
        return fut.__await__()

    def cancel(self, reason: str | None = None) -> None:
        """Stop it; both sides learn ``reason``. A partial file is never shown as received."""
        if not self.ended and self._canceller is not None:
            self._canceller(self, reason or "cancelled")

    def as_row(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in LOG_COLUMNS}

    def __repr__(self) -> str:
        arrow = "to" if self.direction == "out" else "from"
        extra = f" ({self.reason})" if self.reason else ""
        return f"<Transfer {self.kind} {self.name!r} {arrow} {self.peer}: {self.status} {int(self.progress * 100)}%{extra}>"


LOG_COLUMNS = [
    "transfer_id", "direction", "peer", "kind", "name", "size", "hash", "status", "decision",
    "decided_by", "lane", "bytes_transferred", "resumed_from", "offered_at", "started_at",
    "finished_at", "reason", "path",
]


class RoomTransfer:
    """A send to several recipients: one :class:`Transfer` each, in ``parts``."""

    def __init__(self, parts: dict[str, Transfer], name: str) -> None:
        self.parts = parts
        self.name = name

    @property
    def results(self) -> dict[str, str]:
        """Recipient -> status."""
        return {peer: t.status for peer, t in self.parts.items()}

    @property
    def status(self) -> str:
        """``done`` when every recipient has it; while any is active, the most advanced
        active status; else the worst ending (failed > cancelled > refused)."""
        statuses = list(self.results.values())
        if not statuses:
            return "failed"
        active = [s for s in statuses if s in ACTIVE]
        if active:
            return max(active, key=ACTIVE.index)
        for s in ("failed", "cancelled", "refused"):
            if s in statuses:
                return s
        return "done"

    @property
    def reason(self) -> str:
        if not self.parts:
            return "nobody else is connected in the room"
        return "; ".join(f"{p}: {t.status} ({t.reason})" for p, t in self.parts.items() if t.status != "done")

    @property
    def progress(self) -> float:
        return sum(t.progress for t in self.parts.values()) / len(self.parts) if self.parts else 0.0

    @property
    def ended(self) -> bool:
        return all(t.ended for t in self.parts.values())

    def wait(self, timeout: float | None = None) -> str:
        deadline = None if timeout is None else time.monotonic() + timeout
        for t in self.parts.values():
            t.wait(None if deadline is None else max(0.0, deadline - time.monotonic()))
        return self.status

    def __await__(self):
        async def _all() -> str:
            for t in self.parts.values():
                await t
            return self.status

        return _all().__await__()

    def cancel(self, reason: str | None = None) -> None:
        for t in self.parts.values():
            t.cancel(reason)

    def __repr__(self) -> str:
        return f"<RoomTransfer {self.name!r}: {self.status} {self.results}>"
