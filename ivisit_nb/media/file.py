"""VideoFile: a video file, played in a loop, as a video source.

Frames are decoded with PyAV in a worker thread of the source's own, one at a time, so
the engine loop never waits for the decoder. At the end of the file it starts again.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import threading
from pathlib import Path
from typing import Any, Iterator

import av

from .sources import VideoSource


class VideoFile(VideoSource):
    """Frames of the video file at ``path``, looped, paced at ``fps`` (default: the file's own
    frame rate, else 30). Raises ``FileNotFoundError`` for a missing file and ``ValueError``
    for one PyAV cannot read or that has no video."""

    def __init__(self, path: str | Path, fps: float | None = None) -> None:
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"{self.path} is not a file; give the path of a video file")
        container = self._open()
        try:
            stream = container.streams.video[0]
            rate = stream.average_rate or stream.guessed_rate
            self.width, self.height = stream.codec_context.width, stream.codec_context.height
        finally:
            container.close()
        file_fps = float(rate) if rate and 0 < float(rate) <= 120 else 30.0
        super().__init__(fps if fps is not None else file_fps)
        self.loops = 0  # times the file was played to its end
        self._lock = threading.Lock()
        self._container: Any = None
        self._frames: Iterator[av.VideoFrame] | None = None
        self._pool = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="video-file")

    def __repr__(self) -> str:
        return f"<VideoFile {self.path.name} {self.width}x{self.height} {self.fps:g} fps>"

    def _open(self) -> Any:
        try:
            container = av.open(str(self.path))
        except av.FFmpegError as exc:
            raise ValueError(f"{self.path} is not a video file PyAV can read: {exc}") from None
        if not container.streams.video:
            container.close()
            raise ValueError(f"{self.path} has no video stream")
        return container

    def _next(self) -> av.VideoFrame:
        with self._lock:
            for attempt in range(2):
                if self._frames is None:
                    self._container = self._open()
                    self._frames = self._container.decode(video=0)
                try:
                    return next(self._frames)
                except (StopIteration, av.EOFError):
                    self._close()
                    self.loops += 1
                    if attempt:
                        break
            raise ValueError(f"{self.path} has no video frames PyAV can decode")

    def _close(self) -> None:
        if self._container is not None:
            self._container.close()
        self._container, self._frames = None, None

    async def produce(self, index: int) -> av.VideoFrame:
        return await asyncio.get_running_loop().run_in_executor(self._pool, self._next)

    def make_frame(self, index: int) -> av.VideoFrame:
        return self._next()

    def stop(self) -> None:
        """End the track and close the file."""
        super().stop()
        self._pool.submit(self._close_locked)  # after any decode still running
        self._pool.shutdown(wait=False)

    def _close_locked(self) -> None:
        with self._lock:
            self._close()
