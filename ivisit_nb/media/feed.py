"""VideoFeed: the newest frame of one video, its statistics, and whoever watches it.

The engine pushes every decoded (or, for a local preview, every produced) frame with
:meth:`VideoFeed.push`. A feed keeps only the newest frame: a slow watcher never makes
frames pile up. Watchers subscribe with a callback that is called on the pushing thread,
so it must be quick (hand the frame to a worker and return). Everything here is
thread-safe.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .convert import to_ndarray

if TYPE_CHECKING:  # numpy is loaded only when frames are looked at
    import numpy as np

FPS_WINDOW = 2.0  # seconds over which fps and bitrate are averaged

Watcher = Callable[[Any], None]  # called with each av.VideoFrame


@dataclass
class FeedStats:
    """What a feed has seen. ``received_fps`` over the last 2 s; ``latency_ms`` from the
    newest stamped frame (test pattern), else None. ``bitrate`` (bits/s) is filled in by the
    link that receives the video, from RTP byte counts; None for a local feed."""

    frames: int = 0
    received_fps: float = 0.0
    width: int = 0
    height: int = 0
    bitrate: float | None = None
    dropped: int = 0
    latency_ms: float | None = None
    displayed_fps: float = 0.0
    displayed: int = 0


class VideoFeed:
    """Frames of ``user``'s video as they arrive (``local`` for your own preview)."""

    def __init__(self, user: str, *, local: bool = False) -> None:
        self.user, self.local = user, local
        self._lock = threading.Lock()
        self._latest: Any = None
        self._arrivals: deque[float] = deque()
        self._shown: deque[float] = deque()
        self._watchers: list[Watcher] = []
        self._stats = FeedStats()
        self.active = False  # True while frames are expected (video started and allowed)

    def __repr__(self) -> str:
        s = self.stats
        return f"<VideoFeed {self.user}{' (local)' if self.local else ''} {s.width}x{s.height} {s.received_fps:.1f} fps>"

    # -- the engine's side --------------------------------------------------------------
    def push(self, frame: Any) -> None:
        """A new frame (an ``av.VideoFrame``) arrived: keep it, count it, tell the watchers."""
        now = time.monotonic()
        with self._lock:
            self._latest = frame
            st = self._stats
            st.frames += 1
            st.width, st.height = frame.width, frame.height
            self._arrivals.append(now)
            trim_times(self._arrivals, now)
            watchers = list(self._watchers)
        for w in watchers:
            w(frame)

    def set_bitrate(self, bits_per_second: float | None) -> None:
        with self._lock:
            self._stats.bitrate = bits_per_second

    def count_dropped(self, n: int = 1) -> None:
        with self._lock:
            self._stats.dropped += n

    def count_displayed(self, n: int = 1) -> None:
        """A viewer showed ``n`` more frames of this feed."""
        now = time.monotonic()
        with self._lock:
            self._stats.displayed += n
            self._shown.extend([now] * n)
            trim_times(self._shown, now)

    # -- the watchers' side ----------------------------------------------------------------
    def subscribe(self, watcher: Watcher) -> Callable[[], None]:
        """Call ``watcher(frame)`` for every new frame; returns the function that stops it."""
        with self._lock:
            self._watchers.append(watcher)

        def unsubscribe() -> None:
            with self._lock:
                if watcher in self._watchers:
                    self._watchers.remove(watcher)

        return unsubscribe

    @property
    def watched(self) -> bool:
        """True while somebody subscribes (the engine may skip work for an unwatched feed)."""
        return bool(self._watchers)

    @property
    def latest(self) -> Any:
        """The newest ``av.VideoFrame``, or None."""
        return self._latest

    @property
    def latest_frame(self) -> np.ndarray | None:
        """The newest frame as an RGB ``uint8`` array (height x width x 3), or None."""
        frame = self._latest
        return None if frame is None else to_ndarray(frame, format="rgb24")

    @property
    def stats(self) -> FeedStats:
        """A snapshot of the statistics; ``latency_ms`` is read from the newest frame's stamp."""
        now = time.monotonic()
        with self._lock:
            trim_times(self._arrivals, now)
            trim_times(self._shown, now)
            st = FeedStats(**vars(self._stats))
            st.received_fps = rate_of(self._arrivals, now)
            st.displayed_fps = rate_of(self._shown, now)
            frame = self._latest
        if frame is not None:
            from .barcode import latency_ms, read_stamp

            stamp = read_stamp(to_ndarray(frame, format="gray"))
            if stamp is not None:
                st.latency_ms = float(latency_ms(stamp[1], int(time.time() * 1000)))
        return st


def trim_times(times: deque[float], now: float, window: float = FPS_WINDOW) -> None:
    """Drop the times (``time.monotonic()``) older than ``window`` seconds before ``now``."""
    while times and times[0] < now - window:
        times.popleft()


def rate_of(times: deque[float], now: float) -> float:
    """Events per second over the (trimmed) ``times``; 0 with fewer than two."""
    if len(times) < 2:
        return 0.0
    return (len(times) - 1) / max(now - times[0], 1e-6)
