"""TestPattern: a moving test picture with the user's name, a clock and the frame stamp.

Cheap per frame: the colour bars are drawn once, twice as wide as the frame, and each frame
is a slice of them (they scroll). The name and the clock are drawn with Pillow into a small
label once a second; the stamp (:mod:`.barcode`) is written into every frame, so a
receiver can count frames and measure latency.
"""

from __future__ import annotations

import time

import av
import numpy as np

from .barcode import strip_height, write_stamp
from .sources import VideoSource

BARS = np.array(
    [[192, 192, 192], [192, 192, 0], [0, 192, 192], [0, 192, 0], [192, 0, 192], [192, 0, 0], [0, 0, 192], [32, 32, 32]],
    np.uint8,
)


class TestPattern(VideoSource):
    """Scrolling colour bars with ``user``'s name, the time and the frame stamp.

    ``fps`` frames a second of ``width`` x ``height`` (even numbers, at least 160 x 96).
    """

    __test__ = False  # not a pytest test class

    def __init__(self, user: str = "", fps: float = 30.0, width: int = 640, height: int = 480) -> None:
        super().__init__(fps)
        if width < 160 or height < 96 or width % 2 or height % 2:
            raise ValueError(f"width and height must be even and at least 160 x 96, not {width}x{height}")
        self.user, self.width, self.height = user, width, height
        columns = np.arange(2 * width) * len(BARS) // width % len(BARS)
        band = BARS[columns]  # (2W, 3)
        shade = np.linspace(1.0, 0.55, height, dtype=np.float32)[:, None, None]
        self._bars = (band[None, :, :] * shade).astype(np.uint8)  # (H, 2W, 3)
        self._label_top = strip_height(height) + 4
        self._label_h = max(16, height // 10)
        self._label: np.ndarray | None = None
        self._label_second = -1

    def _draw_label(self, second: int) -> np.ndarray:
        h, w = self._label_h, self.width
        text = f"{self.user}  {time.strftime('%H:%M:%S', time.localtime(second))}".strip()
        try:
            from PIL import Image, ImageDraw, ImageFont
        except ImportError:  # no Pillow: a plain band, the stamp still counts frames
            return np.full((h, w, 3), 16, np.uint8)
        img = Image.new("RGB", (w, h), (16, 16, 16))
        try:
            font = ImageFont.load_default(size=max(10, h - 6))
        except TypeError:  # Pillow < 10.1
            font = ImageFont.load_default()
        ImageDraw.Draw(img).text((6, 2), text, fill=(255, 255, 255), font=font)
        return np.asarray(img, np.uint8)

    def make_frame(self, index: int) -> av.VideoFrame:
        now = time.time()
        second = int(now)
        if second != self._label_second or self._label is None:
            self._label, self._label_second = self._draw_label(second), second
        shift = (index * 4) % self.width
        image = self._bars[:, shift:shift + self.width].copy()
        top = self._label_top
        image[top:top + self._label_h] = self._label
        write_stamp(image, index, int(now * 1000))
        return av.VideoFrame.from_ndarray(image, format="rgb24")
