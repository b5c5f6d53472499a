"""Video: sources that make frames, and feeds that carry frames to whoever shows them.

- :mod:`.sources`, :mod:`.pattern`, :mod:`.file`: where a user's own video comes from (a test pattern, a file, numpy
  frames pushed by user code, the browser's camera);
- :mod:`.feed`: :class:`VideoFeed`, the newest frame of one video with its statistics,
  which tiles and user code subscribe to;
- :mod:`.barcode`: the machine-readable stamp (frame number and clock) drawn into test
  frames, read back by tests, benchmarks and the browser to count frames and latency.

Nothing here knows about links, rooms or widgets.
"""

from typing import Any

# Loaded on first use, so `import ivisit_nb.media` (which every session does for VideoFeed)
# costs no numpy: a send or receive from the command line never pays for it.
_EXPORTS = {
    "Camera": "camera", "FeedStats": "feed", "NumpySource": "sources", "TestPattern": "pattern",
    "VideoFeed": "feed", "VideoFile": "file", "VideoSource": "sources", "read_stamp": "barcode",
    "write_stamp": "barcode",
}
__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        import importlib

        return getattr(importlib.import_module(f".{_EXPORTS[name]}", __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
