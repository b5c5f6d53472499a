"""Lanes: the ways binary frames travel between two linked peers.

A :class:`Lane` sends frames with backpressure and hands arriving frames to the
link, which routes each one by its first byte to the link protocol that owns it.
The same frames (see docs/protocol.md, section 3) travel on every lane, so a
transfer verifies, resumes and cancels the same way whatever carries it.

:class:`DataChannelLane` is the WebRTC data channel (SCTP over DTLS), always
there once a link is up. A direct TLS lane for large files is one more module
implementing :class:`Lane`, plus a negotiation step in the offer.
"""

from __future__ import annotations

import asyncio
import sys
from typing import Any, Callable, Protocol

BUFFER_HIGH = 1 << 20  # pause sending above this many bytes buffered
BUFFER_LOW = 512 * 1024  # ... and go on once it drops to this


class Lane(Protocol):
    """One way to carry binary frames to the peer of a link."""

    #: ``"datachannel"`` or ``"direct"``: what ``transfers.lane`` records.
    name: str

    @property
    def open(self) -> bool:
        """True while frames can be sent."""
        ...

    async def send_frame(self, frame: bytes) -> None:
        """Send one frame, waiting while too much is buffered; ``ConnectionError`` if the lane closed."""
        ...

    def close(self) -> None:
        """Stop carrying frames; a sender waiting in :meth:`send_frame` gets ``ConnectionError``."""
        ...


class BufferPool:
    """Frame-sized buffers, reused once nobody holds them any more.

    :meth:`take` returns a writable view of a buffer that no other object references (no
    view of it is alive: the disk writer, the socket's backlog and the caller have let go),
    else of a new one. So streaming a file allocates, zeroes and faults in no memory per
    frame. At most ``keep`` buffers are kept; ``size`` is the largest view handed out.
    """

    def __init__(self, size: int, keep: int = 8) -> None:
        self.size, self.keep = size, keep
        self._buffers: list[bytearray] = []

    def __len__(self) -> int:
        return len(self._buffers)

    def take(self, size: int | None = None) -> memoryview:
        size = self.size if size is None else size
        for buf in self._buffers:
            if len(buf) >= size and sys.getrefcount(buf) == 3:  # the list, the loop variable, the call
                return memoryview(buf)[:size]
        buf = bytearray(max(size, self.size))
        if len(self._buffers) < self.keep:
            self._buffers.append(buf)
        return memoryview(buf)[:size]


class DataChannelLane:
    """Frames on a link's ``data`` channel, paced by its ``bufferedAmount``.

    ``on_frame(frame)`` is called for every binary message that arrives.
    """

    name = "datachannel"

    def __init__(self, channel: Any, on_frame: Callable[[bytes], None], describe: Callable[[], str]) -> None:
        self.channel = channel
        self.bytes_sent = 0  # frames, headers included
        self.bytes_received = 0
        self._describe = describe  # the link's state, for error messages
        self._drained = asyncio.Event()
        self._drained.set()
        self._closed = False
        channel.bufferedAmountLowThreshold = BUFFER_LOW

        @channel.on("message")
        def _message(message: Any) -> None:
            if isinstance(message, bytes):
                self.bytes_received += len(message)
                on_frame(message)

        @channel.on("bufferedamountlow")
        def _low() -> None:
            self._drained.set()

    @property
    def open(self) -> bool:
        return not self._closed and self.channel.readyState == "open"

    @property
    def buffered(self) -> int:
        """Bytes queued and not yet handed to SCTP."""
        return int(self.channel.bufferedAmount)

    def _check_open(self) -> None:
        if not self.open:
            raise ConnectionError(f"the data channel is closed: {self._describe()}")

    async def send_frame(self, frame: bytes) -> None:
        self._check_open()
        while self.channel.bufferedAmount > BUFFER_HIGH:
            self._drained.clear()
            await self._drained.wait()
            self._check_open()
        self.channel.send(frame if isinstance(frame, bytes) else bytes(frame))  # aiortc takes bytes only
        self.bytes_sent += len(frame)

    def close(self) -> None:
        self._closed = True
        self._drained.set()
