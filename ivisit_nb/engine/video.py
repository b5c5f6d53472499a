"""Video over a live peer link: one video transceiver, its direction, our track and the receive loop.

The mechanics only; who may send video to whom is decided above (``ivisit_nb.video``).

- :class:`VideoBroadcast`: our one outgoing video. It pulls frames from the current
  source, converts them to yuv420p once, stamps them with its own clock (pts never go
  back, whatever source comes next) and fans them out to every link's track and to the
  local preview feed. Swapping or restarting sources never rewinds a receiver's timeline.
- :class:`LinkTrack`: the one outgoing track of one link, for the link's life; it hands
  out the broadcast's newest frame (a slow encoder skips frames, never queues them).
- :class:`LinkVideo`: a :class:`~.peerlink.MediaProtocol` plugged into each link. It holds
  what this side wants (``send_on``: our track goes out; ``recv_on``: we take theirs),
  turns that into the transceiver's direction at every renegotiation, and runs the loop
  that hands received frames to the user's :class:`~ivisit_nb.media.VideoFeed`.

aiortc drops received RTP before decoding when the negotiated direction excludes
receiving (``RTCRtpReceiver._enabled``). A side that stops taking a video sets that at
once and renegotiates, so a refused or blocked user's video is never decoded.
"""

from __future__ import annotations

import asyncio
import fractions
import logging
import time
from typing import Any, Callable

from aiortc.mediastreams import MediaStreamError, MediaStreamTrack

from ..media.convert import reformat
from ..media.feed import VideoFeed
from .jitter import end_frames_at_marker
from .linkproto import BaseLinkProtocol
from .loop import spawn

log = logging.getLogger("ivisit_nb.video")

VIDEO_CLOCK = 90_000
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)
BITRATE_INTERVAL = 1.0  # seconds between bitrate updates of a receiving feed

DIRECTIONS = {(True, True): "sendrecv", (True, False): "sendonly", (False, True): "recvonly", (False, False): "inactive"}


class VideoBroadcast:
    """Our outgoing video, fanned out to every link that sends it. Engine loop only.

    ``local_feed`` gets every frame (the preview). ``on_error(message)`` is called if the
    source fails (a broken file); the broadcast then stops.
    """

    def __init__(self, local_feed: VideoFeed | None = None, on_error: Callable[[str], None] | None = None) -> None:
        self.local_feed = local_feed
        self.source: Any = None
        self.error: str | None = None
        self._on_error = on_error
        self._task: asyncio.Task[None] | None = None
        self._seq = 0
        self._frame: Any = None
        self._waiter: asyncio.Future[None] | None = None
        self._t0 = time.monotonic()
        self._pts = -1

    @property
    def running(self) -> bool:
        """True while a source is being pulled."""
        return self._task is not None and not self._task.done()

    def start(self, source: Any) -> None:
        """Send frames from ``source`` (an aiortc video track) from now on; replaces any other."""
        self.stop()
        self.source, self.error = source, None
        self._task = spawn(self._pump(source), "video broadcast")

    def stop(self) -> None:
        """Stop pulling the source. Links keep their tracks; they just get no new frames."""
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()
        self._task = None

    async def _pump(self, source: Any) -> None:
        try:
            while True:
                frame = await source.recv()
                if frame.format.name != "yuv420p":  # once here, not once per link's encoder
                    frame = reformat(frame, format="yuv420p")
                pts = max(self._pts + 1, int((time.monotonic() - self._t0) * VIDEO_CLOCK))
                frame.pts, frame.time_base, self._pts = pts, TIME_BASE, pts
                self._seq += 1
                self._frame = frame
                waiter, self._waiter = self._waiter, None
                if waiter is not None and not waiter.done():
                    waiter.set_result(None)
                if self.local_feed is not None:
                    try:
                        self.local_feed.push(frame)
                    except Exception:
                        log.exception("a watcher of the local video failed")
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.error = f"{type(exc).__name__}: {exc}"
            log.warning("the video source %r failed: %s", source, self.error)
            if self._on_error is not None:
                self._on_error(self.error)

    async def next_frame(self, after: int) -> tuple[int, Any]:
        """The newest frame once its number is above ``after``: ``(number, frame)``."""
        while self._seq <= after:
            if self._waiter is None:
                self._waiter = asyncio.get_running_loop().create_future()
            await asyncio.shield(self._waiter)
        return self._seq, self._frame


class LinkTrack(MediaStreamTrack):
    """The outgoing video track of one link: the broadcast's newest frame at each ``recv``."""

    kind = "video"

    def __init__(self, broadcast: VideoBroadcast) -> None:
        super().__init__()
        self._broadcast = broadcast
        self._seen = 0
        self.frames_sent = 0

    async def recv(self) -> Any:
        if self.readyState != "live":
            raise MediaStreamError
        self._seen, frame = await self._broadcast.next_frame(self._seen)
        self.frames_sent += 1
        return frame


class LinkVideo(BaseLinkProtocol):
    """One link's video (see the module docstring). Owns no control types; the session's
    video protocol sets :attr:`send_on` and :attr:`recv_on` through :meth:`want`."""

    def __init__(self, broadcast: VideoBroadcast, feed: VideoFeed) -> None:
        self.broadcast, self.feed = broadcast, feed
        self.send_on = False  # our track goes out on this link
        self.recv_on = False  # we take the peer's video
        self.sending = False  # ... as negotiated (the transceiver's currentDirection)
        self.receiving = False
        self.transceiver: Any = None
        self.track: LinkTrack | None = None
        self.frames_received = 0  # frames aiortc decoded and handed to us (pushed or not)
        self.rtp_bytes = 0  # RTP payload bytes taken in (not counting discarded packets)
        self.link: Any = None
        self._tasks: list[asyncio.Task[Any]] = []

    def __repr__(self) -> str:
        return f"<LinkVideo want={self.direction} negotiated={self.negotiated_direction}>"

    @property
    def direction(self) -> str:
        """The direction this side wants: sendrecv, sendonly, recvonly or inactive."""
        return DIRECTIONS[(self.send_on, self.recv_on)]

    @property
    def negotiated_direction(self) -> str | None:
        """The transceiver's current (agreed) direction, or None before video was negotiated."""
        return self.transceiver.currentDirection if self.transceiver is not None else None

    @property
    def receiver_enabled(self) -> bool:
        """False while aiortc discards the peer's RTP before decoding it."""
        return bool(self.transceiver is not None and self.transceiver.receiver._enabled)

    def want(self, link: Any, *, send: bool | None = None, recv: bool | None = None) -> None:
        """Change what this side wants and renegotiate if that changed anything."""
        self.link = link
        old = (self.send_on, self.recv_on)
        if send is not None:
            self.send_on = send
            if send and self.track is None:
                self.track = LinkTrack(self.broadcast)
        if recv is not None:
            self.recv_on = recv
            if not recv and self.transceiver is not None:
                # discard the peer's packets at once; the renegotiation below makes it stick
                self.transceiver.receiver._enabled = False
                self.receiving = False
        if (self.send_on, self.recv_on) != old:
            self._apply()
            link.renegotiate()

    def _apply(self) -> None:
        t = self.transceiver
        if t is None:
            return
        t.direction = self.direction
        t.sender.replaceTrack(self.track if self.send_on else None)

    # -- MediaProtocol ---------------------------------------------------------------
    def before_description(self, link: Any, kind: str) -> None:
        self.link = link
        if kind == "offer":
            if self.transceiver is None and (self.send_on or self.recv_on):
                self.transceiver = link.pc.addTransceiver("video", direction=self.direction)
                self._watch_receiver()
        else:  # we answer the initiator's offer: take its first video section; refuse the rest
            for t in link.pc.getTransceivers():
                if self.transceiver is None and t.kind == "video":
                    self.transceiver = t
                    self._watch_receiver()
                elif t is not self.transceiver:
                    t.direction = "inactive"
                    t.sender.replaceTrack(None)
        self._apply()

    def on_negotiated(self, link: Any) -> None:
        cur = self.negotiated_direction
        self.sending = cur in ("sendonly", "sendrecv")
        self.receiving = cur in ("recvonly", "sendrecv") and self.recv_on
        if not self.recv_on and self.transceiver is not None:
            self.transceiver.receiver._enabled = False  # a negotiation begun before a refusal ended after it
        track = self.transceiver.receiver.track if self.transceiver is not None else None
        if track is not None and not any(t.get_name() == "video in" for t in self._tasks if not t.done()):
            self._tasks.append(spawn(self._receive(track), "video in"))
            self._tasks.append(spawn(self._bitrate(), "video bitrate"))

    def on_link_down(self, link: Any) -> None:
        self.sending = self.receiving = False
        for t in self._tasks:
            if t is not asyncio.current_task():
                t.cancel()
        self._tasks.clear()
        self.feed.set_bitrate(None)

    # -- receiving -------------------------------------------------------------------------
    def _watch_receiver(self) -> None:
        """Count RTP payload bytes the receiver takes in, for the feed's bitrate (aiortc keeps none)."""
        receiver = self.transceiver.receiver
        end_frames_at_marker(receiver)  # decode each frame when its last packet is in, not one frame later
        original = receiver._handle_rtp_packet

        async def counted(packet: Any, arrival_time_ms: int) -> None:
            if receiver._enabled:
                self.rtp_bytes += len(packet.payload) + getattr(packet, "padding_size", 0)
            await original(packet, arrival_time_ms)

        receiver._handle_rtp_packet = counted

    async def _receive(self, track: Any) -> None:
        while True:
            try:
                frame = await track.recv()
            except MediaStreamError:
                return
            self.frames_received += 1
            if self.recv_on and self.receiving:
                try:
                    self.feed.push(frame)
                except Exception:
                    log.exception("a watcher of %s's video failed", self.feed.user)

    async def _bitrate(self) -> None:
        last_bytes, last_time = self.rtp_bytes, time.monotonic()
        while True:
            await asyncio.sleep(BITRATE_INTERVAL)
            now = time.monotonic()
            if self.receiving:
                self.feed.set_bitrate((self.rtp_bytes - last_bytes) * 8 / max(now - last_time, 1e-3))
            else:
                self.feed.set_bitrate(None)
            last_bytes, last_time = self.rtp_bytes, now
