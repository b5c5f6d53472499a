"""Video: sources that make frames, and feeds that carry frames to whoever shows them.

- :mod:`.sources`: where a user's own video comes from (a test pattern, a file, numpy
  frames pushed by user code, the browser's camera);
- :mod:`.feed`: :class:`VideoFeed`, the newest frame of one video with its statistics,
  which tiles and user code subscribe to;
- :mod:`.barcode`: the machine-readable stamp (frame number and clock) drawn into test
  frames, read back by tests, benchmarks and the browser to count frames and latency.

Nothing here knows about links, rooms or widgets.
"""

from .barcode import read_stamp, write_stamp
from .feed import FeedStats, VideoFeed
from .sources import NumpySource, VideoSource

__all__ = ["FeedStats", "NumpySource", "VideoFeed", "VideoSource", "read_stamp", "write_stamp"]
