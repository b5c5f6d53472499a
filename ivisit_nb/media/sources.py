"""Where a user's own video comes from.

Every source is an aiortc video track (:class:`VideoSource`): ``await source.recv()``
gives the next ``av.VideoFrame``, paced at ``fps``. The session fans one source out to
every link that sends video, and re-stamps timestamps per link, so a source may be
swapped without breaking the receiver's timeline.

This module has the base and :class:`NumpySource`; the test pattern, video files and the
browser's camera build on them.
"""

from __future__ import annotations

import asyncio
import fractions
import threading
import time
from typing import Any

import av
from aiortc.mediastreams import MediaStreamTrack

VIDEO_CLOCK = 90_000  # RTP's video clock rate
TIME_BASE = fractions.Fraction(1, VIDEO_CLOCK)


class VideoSource(MediaStreamTrack):
    """A video track paced at ``fps``. Subclasses implement :meth:`make_frame`."""

    kind = "video"

    def __init__(self, fps: float = 30.0) -> None:
        super().__init__()
        if not 0 < fps <= 120:
            raise ValueError(f"fps must be between 0 and 120, not {fps!r}")
        self.fps = float(fps)
        self.frames_made = 0
        self._start: float | None = None

    async def recv(self) -> av.VideoFrame:
        """The next frame, no sooner than its time (aiortc calls this)."""
        now = time.monotonic()
        if self._start is None:
            self._start = now
        due = self._start + self.frames_made / self.fps
        if due > now:
            await asyncio.sleep(due - now)
        elif now - due > 1.0:  # fell far behind (a busy machine): skip ahead, don't burst
            self._start = now - self.frames_made / self.fps
        frame = await self.produce(self.frames_made)
        frame.pts = int((self.frames_made / self.fps) * VIDEO_CLOCK)
        frame.time_base = TIME_BASE
        self.frames_made += 1
        return frame

    async def produce(self, index: int) -> av.VideoFrame:
        """Frame ``index``; by default :meth:`make_frame`. Sources whose frames take long
        (decoding a file) override this to work off the engine loop."""
        return self.make_frame(index)

    def make_frame(self, index: int) -> av.VideoFrame:  # pragma: no cover - abstract
        raise NotImplementedError


class NumpySource(VideoSource):
    """Frames pushed by your code: ``source.push(array)`` with an RGB (H x W x 3) or grey
    (H x W) ``uint8`` array. The newest push is sent at every tick; before the first, a
    black ``width`` x ``height`` frame is. A matplotlib figure or a simulation becomes a
    video this way."""

    def __init__(self, fps: float = 30.0, width: int = 320, height: int = 240) -> None:
        import numpy as np  # here, not at the top: a session that never makes video never loads numpy

        super().__init__(fps)
        self._lock = threading.Lock()
        self._image = np.zeros((height, width, 3), np.uint8)
        self._format = "rgb24"
        self.pushed = 0

    def push(self, image: Any) -> None:
        """Send ``image`` from the next tick on (from any thread). The array is copied."""
        import numpy as np

        array = np.asarray(image)
        if array.dtype != np.uint8:
            raise TypeError(f"frames must be uint8 arrays, not {array.dtype}")
        if array.ndim == 3 and array.shape[2] == 4:
            array = array[..., :3]  # RGBA (a matplotlib canvas): drop alpha
        if not (array.ndim == 2 or (array.ndim == 3 and array.shape[2] == 3)):
            raise ValueError(f"frames must be H x W (grey) or H x W x 3 (RGB), not {array.shape}")
        h, w = array.shape[:2]
        if h < 2 or w < 2 or h % 2 or w % 2:
            raise ValueError(f"frame sides must be even and at least 2 (video coding needs it), not {w}x{h}")
        copy = np.ascontiguousarray(array).copy()
        with self._lock:
            self._image, self._format = copy, "gray" if array.ndim == 2 else "rgb24"
            self.pushed += 1

    def make_frame(self, index: int) -> av.VideoFrame:
        with self._lock:
            image, fmt = self._image, self._format
        return av.VideoFrame.from_ndarray(image, format=fmt)  # a fresh frame each tick: pts is stamped on it
