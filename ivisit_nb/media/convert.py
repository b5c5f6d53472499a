"""Frame conversions that are safe while other threads hold the same frame.

A decoded frame goes to several threads at once: each tile's JPEG encoder scales it, and
``feed.stats`` / ``feed.latest_frame`` convert it on whichever thread asks. PyAV's
``VideoFrame.reformat`` (and ``to_ndarray(format=...)``, which calls it) keeps one
reformatter on the frame, and while it scales, with the GIL released, it rewrites the
frame's colour tags. Two threads converting one frame that way crashed the kernel (a
segfault in libswscale, seen in ``bench/video.py``). So every conversion goes through here:

* each thread has its own ``VideoReformatter``, whose SwsContext is reused from frame to frame;
* conversions take turns on one lock (each is 0.1–0.5 ms; the scale itself releases the GIL).
"""

from __future__ import annotations

import threading
from typing import Any

_LOCK = threading.Lock()
_LOCAL = threading.local()


def _reformatter() -> Any:
    r = getattr(_LOCAL, "reformatter", None)
    if r is None:
        from av.video.reformatter import VideoReformatter

        r = _LOCAL.reformatter = VideoReformatter()
    return r


def reformat(frame: Any, *, width: int | None = None, height: int | None = None,
             format: str | None = None) -> Any:
    """``frame.reformat(width, height, format)``; the frame itself when nothing changes."""
    with _LOCK:
        return _reformatter().reformat(frame, width=width, height=height, format=format)


def to_ndarray(frame: Any, *, width: int | None = None, height: int | None = None,
               format: str | None = None) -> Any:
    """A numpy copy of ``frame`` converted to ``format`` (and size), as ``frame.to_ndarray``."""
    with _LOCK:
        out = _reformatter().reformat(frame, width=width, height=height, format=format)
        return out.to_ndarray()
