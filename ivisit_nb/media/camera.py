"""The browser's camera as a video source: :class:`Camera`.

``cam = Camera(); display(cam)`` shows a capture widget (a small preview and a status
line) in the notebook; the browser's camera frames arrive in the kernel and are sent as a
:class:`~.sources.NumpySource` (``session.start_video(cam, to=...)``).

Two paths bring the frames (docs/camera.md has the measurements behind the choice):

- ``"capture"`` (the default when the ivisit-nb JupyterLab extension is installed):
  ``labextension/src/capture.ts`` calls ``getUserMedia``, draws the camera into a canvas
  of ``width`` x ``height``, encodes JPEG and sends it as a binary custom message, paced
  at ``fps``. The kernel acknowledges each frame once it is decoded and the browser keeps
  at most :data:`CREDITS` frames in flight, so a slow kernel lowers the frame rate instead
  of building a queue.
- ``"ipywebrtc"`` (the fallback): ipywebrtc's ``CameraStream`` and an ``ImageRecorder``
  re-armed after every snapshot. It works without our extension but gives only about one
  frame a second.

Frames are decoded on a worker thread of the camera (never on the engine's loop). Frames
larger than :data:`MAX_FRAME_BYTES`, or not ``width`` x ``height``, are rejected with a
logged reason.

This module imports ipywidgets (and ipywebrtc) only when a widget is built, so
``import ivisit_nb.media`` stays light.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from .feed import rate_of, trim_times
from .sources import NumpySource

log = logging.getLogger("ivisit_nb.media.camera")

MAX_FRAME_BYTES = 2 * 1024 * 1024  # a JPEG bigger than this is rejected
CREDITS = 2  # frames the browser may have in flight (sent, not yet acknowledged)
RATE_WINDOW = 2.0  # seconds over which the received frame rate is measured

# The extension's module name and version; they must match labextension/src/version.ts
# (media/ may not import ivisit_nb.widgets, where the same constants live).
MODULE_NAME = "ivisit-nb"
MODULE_VERSION = "0.1.0"

PATHS = ("auto", "capture", "ipywebrtc")


def capture_available() -> bool:
    """True if the ivisit-nb JupyterLab extension (this version) is installed, so the
    streaming capture can run. ``IVISIT_NB_EXTENSION=0`` or ``=1`` overrides the check."""
    forced = os.environ.get("IVISIT_NB_EXTENSION", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return False
    for folder in jupyter_path("labextensions"):
        try:
            meta = json.loads((Path(folder) / MODULE_NAME / "package.json").read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        if meta.get("version") == MODULE_VERSION:
            return True
    return False


@dataclass
class CameraStats:
    """What the camera has received. ``fps``: frames decoded per second over the last 2 s."""

    path: str
    fps: float = 0.0
    received: int = 0  # frames decoded and pushed
    dropped: int = 0  # frames that arrived but were superseded before they were decoded
    rejected: int = 0  # frames refused: too big, undecodable or of the wrong size
    bytes: int = 0  # JPEG bytes received
    browser_skipped: int = 0  # ticks the browser skipped because no credit was left (capture path)
    latency_ms: float | None = None  # newest frame: browser capture to decoded here (capture path)
    status: str = ""


class Camera(NumpySource):
    """The browser's camera as a video source, ``width`` x ``height`` at up to ``fps``.

    ``path`` is ``"auto"`` (the streaming capture when the extension is installed, else
    ipywebrtc), ``"capture"`` or ``"ipywebrtc"``. Display it (``display(cam)`` or as a
    cell's last value) to start the camera in that browser; :meth:`stop` releases it.
    With ``new_only`` (the default) the capture path sends only new camera pictures, so
    asking for more than the camera's rate repeats nothing; ``new_only=False`` sends the
    newest picture at every tick (to measure the path itself).
    ``cam.stats`` has the measured frame rate and the counts; ``cam.fps`` is the rate asked
    for (the source's pace), as for every source.
    """

    def __init__(self, width: int = 320, height: int = 240, fps: float = 15, *, path: str = "auto",
                 quality: float = 0.8, new_only: bool = True) -> None:
        if width < 2 or height < 2 or width % 2 or height % 2:
            raise ValueError(f"width and height must be even and at least 2, not {width}x{height}")
        if path not in PATHS:
            raise ValueError(f"path must be one of {PATHS}, not {path!r}")
        if not 0 < quality <= 1:
            raise ValueError(f"quality must be in (0, 1], not {quality!r}")
        super().__init__(fps=fps, width=width, height=height)
        self.width, self.height, self.quality = int(width), int(height), float(quality)
        self.new_only = bool(new_only)
        self.path = ("capture" if capture_available() else "ipywebrtc") if path == "auto" else path
        self._stats = CameraStats(path=self.path)
        self._stats_lock = threading.Lock()
        self._arrivals: deque[float] = deque()
        # one-slot mailbox for the decoder: the newest undecoded frame wins
        self._slot: tuple[bytes, int | None, float | None] | None = None
        self._slot_cv = threading.Condition()
        self._decoder: threading.Thread | None = None
        self._closed = False
        self._widget: Any = None
        self._capture: Any = None  # the capture model (capture path)
        self._recorder: Any = None  # the ImageRecorder (ipywebrtc path)
        self._stream: Any = None

    def __repr__(self) -> str:
        s = self.stats
        return f"<Camera {self.width}x{self.height} via {self.path}: {s.fps:.1f} fps, {s.received} frames>"

    # -- display ---------------------------------------------------------------------------
    @property
    def widget(self) -> Any:
        """The capture widget (preview and status line); built on first use."""
        if self._widget is None:
            self._widget = self._build_capture() if self.path == "capture" else self._build_ipywebrtc()
        return self._widget

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)

    @property
    def stats(self) -> CameraStats:
        now = time.monotonic()
        with self._stats_lock:
            trim_times(self._arrivals, now, RATE_WINDOW)
            st = CameraStats(**vars(self._stats))
            st.fps = rate_of(self._arrivals, now)
        if self._capture is not None:
            st.browser_skipped = int(self._capture.skipped)
            st.status = str(self._capture.status)
        return st

    def stop(self) -> None:
        """Release the camera in the browser, stop decoding and end the track (aiortc's
        ``MediaStreamTrack.stop``: ``readyState`` becomes ``"ended"``). A session that still
        pulls frames gets the last one. Calling it again does nothing."""
        if self._closed:
            return
        self._closed = True
        with self._slot_cv:
            self._slot_cv.notify_all()
        if self._capture is not None:
            self._capture.active = False
        if self._recorder is not None:
            self._recorder.unobserve(self._rearm, "recording")
            self._recorder.recording = False
        if self._stream is not None:
            try:
                self._stream.close()
            except Exception:  # pragma: no cover - already closed
                pass
        super().stop()

    close = stop

    # -- decoding ----------------------------------------------------------------------------
    def _offer(self, jpeg: bytes, seq: int | None, sent_ms: float | None = None) -> None:
        """A frame arrived (on a comm thread): hand it to the decoder, newest wins."""
        if len(jpeg) > MAX_FRAME_BYTES:
            self._reject(seq, f"frame of {len(jpeg)} bytes is over the {MAX_FRAME_BYTES}-byte limit")
            return
        with self._slot_cv:
            if self._closed:
                return
            old, self._slot = self._slot, (jpeg, seq, sent_ms)
            self._slot_cv.notify()
            if self._decoder is None:
                self._decoder = threading.Thread(target=self._decode_loop, name="ivisit-camera-decode", daemon=True)
                self._decoder.start()
        if old is not None:
            with self._stats_lock:
                self._stats.dropped += 1
            self._ack(old[1])

    def _decode_loop(self) -> None:
        while True:
            with self._slot_cv:
                while self._slot is None and not self._closed:
                    self._slot_cv.wait()
                if self._slot is None:
                    return
                (jpeg, seq, sent_ms), self._slot = self._slot, None
            try:
                self._decode(jpeg, seq, sent_ms)
            except Exception:  # never let the decoder die
                log.exception("camera: decoding a frame failed")
            finally:
                self._ack(seq)

    def _decode(self, jpeg: bytes, seq: int | None, sent_ms: float | None = None) -> None:
        rgb = _decode_jpeg(jpeg)
        if rgb is None:
            self._reject(None, f"frame {seq} is not a decodable JPEG or PNG ({len(jpeg)} bytes)")
            return
        h, w = rgb.shape[:2]
        if (w, h) != (self.width, self.height):
            if self.path == "capture":
                self._reject(None, f"frame {seq} is {w}x{h}, not {self.width}x{self.height}")
                return
            rgb = _resize(rgb, self.width, self.height)  # ipywebrtc: the camera's own size
        self.push(rgb)
        now = time.monotonic()
        with self._stats_lock:
            self._stats.received += 1
            self._stats.bytes += len(jpeg)
            if sent_ms is not None:
                self._stats.latency_ms = time.time() * 1000 - sent_ms
            self._arrivals.append(now)
            trim_times(self._arrivals, now, RATE_WINDOW)

    def _reject(self, seq: int | None, reason: str) -> None:
        log.warning("camera: rejected a frame: %s", reason)
        with self._stats_lock:
            self._stats.rejected += 1
        self._ack(seq)

    def _ack(self, seq: int | None) -> None:
        """Give the browser its credit back (capture path)."""
        if seq is not None and self._capture is not None:
            try:
                self._capture.send({"action": "ack", "seq": seq})
            except Exception:  # the comm is closed
                log.debug("camera: ack %s not sent", seq, exc_info=True)

    # -- the streaming capture (labextension/src/capture.ts) -----------------------------------
    def _build_capture(self) -> Any:
        cls = _capture_class()
        self._capture = cls(width=self.width, height=self.height, fps=self.fps, quality=self.quality,
                            credits=CREDITS, max_bytes=MAX_FRAME_BYTES, new_only=self.new_only)
        self._capture.on_msg(self._on_capture_msg)
        return self._capture

    def _on_capture_msg(self, _widget: Any, content: Any, buffers: list) -> None:
        if not isinstance(content, dict):
            return
        event = content.get("event")
        if event == "frame":
            seq = content.get("seq")
            seq = seq if isinstance(seq, int) else None
            if len(buffers) != 1:
                self._reject(seq, f"a frame message carries {len(buffers)} buffers, not 1")
                return
            t = content.get("t")
            self._offer(bytes(buffers[0]), seq, float(t) if isinstance(t, (int, float)) else None)
        elif event == "error":
            log.warning("camera: the browser says: %s", content.get("message"))

    # -- the ipywebrtc fallback -----------------------------------------------------------------
    def _build_ipywebrtc(self) -> Any:
        import ipywidgets as widgets
        from ipywebrtc import CameraStream, ImageRecorder

        self._stream = CameraStream(constraints={"audio": False, "video": {"width": self.width, "height": self.height}})
        self._recorder = ImageRecorder(stream=self._stream, format="jpeg")
        self._recorder.image.observe(self._on_snapshot, "value")
        # The browser sets `recording` back to False after each snapshot (after the image):
        # re-arm then, for one snapshot per round trip.
        self._recorder.observe(self._rearm, "recording")
        self._recorder.recording = True
        self._stream.layout.width = "160px"
        self._status = widgets.HTML(f"camera via ipywebrtc, {self.width}x{self.height} (about 1 frame/s)")
        box = widgets.VBox([self._stream, self._status])
        box.add_class("ivisit-camera")
        return box

    def _rearm(self, change: dict) -> None:
        if not change.get("new") and not self._closed:
            self._recorder.recording = True

    def _on_snapshot(self, change: dict) -> None:
        data = change.get("new") or b""
        if data and not self._closed:
            self._offer(bytes(data), None)


_CAPTURE_CLASS: Any = None


def _capture_class() -> Any:
    """The ipywidgets class of the capture model, made on first use (imports ipywidgets)."""
    global _CAPTURE_CLASS
    if _CAPTURE_CLASS is None:
        import ipywidgets as widgets
        from traitlets import Bool, Float, Int, Unicode

        class CameraCapture(widgets.DOMWidget):
            """The browser side is ``CaptureView`` in labextension/src/capture.ts."""

            _model_name = Unicode("CaptureModel").tag(sync=True)
            _model_module = Unicode(MODULE_NAME).tag(sync=True)
            _model_module_version = Unicode(MODULE_VERSION).tag(sync=True)
            _view_name = Unicode("CaptureView").tag(sync=True)
            _view_module = Unicode(MODULE_NAME).tag(sync=True)
            _view_module_version = Unicode(MODULE_VERSION).tag(sync=True)

            width = Int(320).tag(sync=True)
            height = Int(240).tag(sync=True)
            fps = Float(15.0).tag(sync=True)
            quality = Float(0.8).tag(sync=True)
            credits = Int(CREDITS).tag(sync=True)
            max_bytes = Int(MAX_FRAME_BYTES).tag(sync=True)
            active = Bool(True).tag(sync=True)
            new_only = Bool(True).tag(sync=True)
            # set by the browser (about once a second)
            status = Unicode("").tag(sync=True)
            skipped = Int(0).tag(sync=True)

        _CAPTURE_CLASS = CameraCapture
    return _CAPTURE_CLASS


def _decode_jpeg(data: bytes) -> np.ndarray | None:
    """RGB array from JPEG (simplejpeg) or PNG (Pillow) bytes; None if it cannot be read."""
    try:
        if data[:3] == b"\xff\xd8\xff":
            import simplejpeg

            return simplejpeg.decode_jpeg(data, colorspace="RGB")
        from io import BytesIO

        from PIL import Image

        with Image.open(BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))
    except Exception:
        return None


def _resize(rgb: np.ndarray, width: int, height: int) -> np.ndarray:
    from PIL import Image

    return np.asarray(Image.fromarray(rgb).resize((width, height)))


