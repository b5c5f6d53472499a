"""Video in a widget: the newest frame of a :class:`~ivisit_nb.media.VideoFeed`, as JPEG, with feedback.

The frame path (docs/video.md has the design and the measured figures)::

    engine thread        feed.push(frame) -> our watcher keeps it as the newest frame, returns
    encoder thread       newest frame -> scaled to the size shown -> JPEG (simplejpeg, straight
                         from the yuv420p planes) -> widget.send({f: seq, ...}, buffers=[jpeg])
    browser (video.ts)   acks on receipt, before decoding; decodes off the main thread and paints
                         one frame per animation frame into a <canvas>

Feedback: at most :data:`WINDOW` frames are in flight (sent, not yet acknowledged). A frame
that arrives while the window is full replaces the one waiting: frames are dropped, never
queued, so a slow, hidden or gone browser costs no memory, and no JPEG work after the
window fills. The kernel marks the frame that fills the window (``k: 1``) and the browser
acknowledges only those, on receipt, before decoding: one cumulative ack per two frames, small
JSON, read straight off the comm without ipywidgets' state machinery (see
:meth:`VideoView._on_comm_msg`). A page's ack also carries the newest arrived frame of each of
this kernel's other video widgets (``o``), at most one ack every 20 ms: a tile's credit comes
back with its neighbours' acks too. Acks cost the browser more than frames do (each one also
brings an IOPub busy/idle pair), so halving them doubled the frames shown (docs/video.md).

The browser says which of its views are on screen (IntersectionObserver, ``document.hidden``)
and how wide they are. While none is, the widget unsubscribes from the feed: no conversion,
no JPEG. Closing the widget (or the tile, or the panel) unsubscribes for good.

Without the ivisit-nb extension :func:`video_widget` returns an :class:`ImageVideo`: an
``ipywidgets.Image`` updated with the same encoder at most :data:`FALLBACK_FPS` times a second.
"""

from __future__ import annotations

import logging
import threading
import time
import weakref
from collections import deque
from typing import Any, Callable

import ipywidgets as widgets
import numpy as np
from traitlets import Bool, Int, Unicode

from ..media.convert import to_ndarray
from ..media.feed import rate_of, trim_times
from .frontend import MODULE_NAME, MODULE_VERSION, extension_available
from .pump import closes_once

log = logging.getLogger("ivisit_nb.widgets")

_LIVE: weakref.WeakValueDictionary[str, VideoView] = weakref.WeakValueDictionary()  # model id -> view, for page acks
WINDOW = 2  # frames in flight (sent, not acknowledged) per widget
ACK_LEAD = 0  # a frame asks for an ack when fewer than WINDOW - ACK_LEAD are in flight after it: 0 acks only the
# frame that fills the window (one ack per two frames); 1 acks every frame at WINDOW 2 (measured: half the fps)
MAX_FPS = 60.0  # never more frames per second per widget on average (IOPub's message-rate limit)
BURST = 3  # ... but frames that come close together (network jitter) may go at once
QUALITY = 75
FALLBACK_FPS = 10.0
DEFAULT_WIDTH = 320  # CSS pixels


def encode_jpeg(frame: Any, width: int | None = None, quality: int = QUALITY) -> tuple[bytes, int, int]:
    """JPEG of an ``av.VideoFrame`` scaled to ``width`` (aspect kept; never enlarged); ``(jpeg, w, h)``.

    The frame is converted to yuv420p at the target size in one swscale step (a no-op for a
    decoder's own frames at their size), and its planes are encoded directly: no RGB step.
    """
    import simplejpeg

    fw, fh = frame.width, frame.height
    if width and 16 <= width < fw:
        w = max(2, int(width) & ~1)
        h = max(2, int(round(fh * w / fw)) & ~1)
    else:
        w, h = fw & ~1, fh & ~1
    planes = to_ndarray(frame, width=w, height=h, format="yuv420p")  # (h * 3/2) x w: Y, then U, then V
    y = planes[:h]
    u = planes[h:h + h // 4].reshape(h // 2, w // 2)
    v = planes[h + h // 4:h + h // 2].reshape(h // 2, w // 2)
    return simplejpeg.encode_jpeg_yuv_planes(y, u, v, quality=quality, fastdct=True), w, h


class _Encoder:
    """The encoder thread of one widget: newest frame in, JPEG out, within the credit the browser gives."""

    def __init__(self, send: Callable[[dict[str, Any], bytes], None], *, max_fps: float, quality: int,
                 windowed: bool, name: str) -> None:
        self._send = send
        self.min_interval = 1.0 / max_fps
        self.quality = quality
        self.windowed = windowed
        self.window = WINDOW
        self.ack_lead = ACK_LEAD
        self.width: int | None = None
        self.cond = threading.Condition()
        self.frame: Any = None  # the newest frame not yet encoded
        self.seq = 0  # frames sent
        self.acked = 0  # highest frame acknowledged
        self.encoded = 0
        self.skipped = 0  # frames replaced by a newer one before they were encoded
        self.cpu = 0.0  # thread CPU seconds spent converting, encoding and sending
        self.bytes_sent = 0
        self.closed = False
        self._tokens = float(BURST)  # pacing: a token bucket of BURST frames refilled at max_fps
        self._refilled = time.monotonic()
        self._asked: dict[int, float] = {}  # seq of a frame that asked for an ack -> when it was sent
        self.ack_rtts: deque[float] = deque(maxlen=200)  # seconds from sending such a frame to its ack
        self.ack_ways: deque[tuple[float, float]] = deque(maxlen=200)  # (kernel -> browser, browser -> kernel) ms
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    # -- any thread ------------------------------------------------------------------------
    def offer(self, frame: Any) -> None:
        """A new frame (engine thread): keep only the newest."""
        with self.cond:
            if self.frame is not None:
                self.skipped += 1
            self.frame = frame
            self.cond.notify()

    def ack(self, seq: int, browser_ms: float | None = None) -> None:
        with self.cond:
            sent = None
            for asked in [a for a in self._asked if a <= seq]:  # acks are cumulative: all these arrived
                sent = self._asked.pop(asked)
            if sent is not None:
                self.ack_rtts.append(time.monotonic() - sent)
                if browser_ms is not None:  # same machine: split the round trip at the browser's clock
                    wall = time.time() * 1000
                    up = wall - browser_ms
                    self.ack_ways.append((1000 * (time.monotonic() - sent) - up, up))
            if self.acked < seq <= self.seq:
                self.acked = seq
                self.cond.notify()

    def reset_credit(self) -> None:
        """A new browser page: whatever was in flight to a previous one will never be acknowledged."""
        with self.cond:
            self.acked = self.seq
            self._asked.clear()
            self.cond.notify()

    def drop_pending(self) -> None:
        with self.cond:
            self.frame = None

    def close(self) -> None:
        with self.cond:
            self.closed = True
            self.frame = None
            self.cond.notify()

    @property
    def in_flight(self) -> int:
        return self.seq - self.acked if self.windowed else 0

    # -- the encoder thread -------------------------------------------------------------
    def _ready(self) -> bool:
        return self.frame is not None and (not self.windowed or self.seq - self.acked < self.window)

    def _run(self) -> None:
        while True:
            with self.cond:
                while not self.closed and not self._ready():
                    self.cond.wait()
                if self.closed:
                    return
                now = time.monotonic()
                self._tokens = min(float(BURST), self._tokens + (now - self._refilled) / self.min_interval)
                self._refilled = now
                if self._tokens < 1.0:  # pace: a newer frame may replace this one meanwhile
                    self.cond.wait((1.0 - self._tokens) * self.min_interval)
                    continue
                self._tokens -= 1.0
                frame, self.frame = self.frame, None
                self.seq += 1
                seq = self.seq
                want_ack = self.windowed and self.seq - self.acked >= self.window - self.ack_lead
                if want_ack:
                    self._asked[seq] = now
                width = self.width
            t0 = time.thread_time()
            try:
                jpeg, w, h = encode_jpeg(frame, width, self.quality)
                self._send({"f": seq, "w": w, "h": h, "k": 1 if want_ack else 0}, jpeg)
            except Exception:
                log.exception("video frame could not be encoded or sent")
                with self.cond:
                    self.acked = max(self.acked, seq)  # it will never be acknowledged
                continue
            finally:
                self.cpu += time.thread_time() - t0
            with self.cond:
                self.encoded += 1
                self.bytes_sent += len(jpeg)


class _FeedWatch:
    """What both video widgets share: the feed, the subscription and the encoder."""

    feed: Any
    _encoder: _Encoder
    _unsubscribe: Callable[[], None] | None

    def _init_watch(self, feed: Any) -> None:
        self.feed = feed
        self._unsubscribe = None
        self._watch_lock = threading.Lock()
        self._shown: deque[float] = deque()
        self.displayed = 0

    def _want_frames(self) -> bool:
        raise NotImplementedError

    def _update_subscription(self) -> None:
        """Subscribe to the feed while frames are wanted, and only then."""
        with self._watch_lock:
            want = self.feed is not None and not self._encoder.closed and self._want_frames()
            if want and self._unsubscribe is None:
                self._unsubscribe = self.feed.subscribe(self._encoder.offer)
                if self.feed.latest is not None:
                    self._encoder.offer(self.feed.latest)  # show the newest at once
            elif not want and self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
                self._encoder.drop_pending()

    def set_feed(self, feed: Any) -> None:
        """Show ``feed`` (a :class:`~ivisit_nb.media.VideoFeed`, or None for nothing)."""
        with self._watch_lock:
            if self._unsubscribe is not None:
                self._unsubscribe()
                self._unsubscribe = None
            self._encoder.drop_pending()
            self.feed = feed
        self._update_subscription()

    @property
    def subscribed(self) -> bool:
        """True while this widget watches its feed (it is shown, and not closed)."""
        return self._unsubscribe is not None

    @property
    def encoded(self) -> int:
        """Frames converted to JPEG and sent so far."""
        return self._encoder.encoded

    @property
    def encode_cpu(self) -> float:
        """CPU seconds spent converting, encoding and sending frames (the encoder thread's own)."""
        return self._encoder.cpu

    @property
    def latest_frame(self) -> np.ndarray | None:
        """The feed's newest frame as RGB (H x W x 3 ``uint8``), or None."""
        return None if self.feed is None else self.feed.latest_frame

    @property
    def displayed_fps(self) -> float:
        now = time.monotonic()
        with self._watch_lock:
            trim_times(self._shown, now)
            return rate_of(self._shown, now)

    def _count_displayed(self, n: int) -> None:
        if n <= 0:
            return
        now = time.monotonic()
        with self._watch_lock:
            self.displayed += n
            self._shown.extend([now] * min(n, 1000))
            trim_times(self._shown, now)
        if self.feed is not None:
            self.feed.count_displayed(n)

    @property
    def stats(self) -> Any:
        """The feed's :class:`~ivisit_nb.media.FeedStats`, with this widget's displayed frames and drops."""
        if self.feed is None:
            return None
        st = self.feed.stats
        st.displayed, st.displayed_fps = self.displayed, self.displayed_fps
        st.dropped += self._encoder.skipped + getattr(self, "browser_dropped", 0)
        return st


class VideoView(_FeedWatch, widgets.DOMWidget):
    """A feed's video, shown by the ivisit-nb extension (``labextension/src/video.ts``).

    ``width`` is the width shown, in CSS pixels (the height follows the frame's aspect);
    frames are encoded at that width times the browser's device pixel ratio, never larger
    than they are. ``active`` False shows ``placeholder`` ("no video") instead of frames.
    """

    _model_name = Unicode("VideoModel").tag(sync=True)
    _model_module = Unicode(MODULE_NAME).tag(sync=True)
    _model_module_version = Unicode(MODULE_VERSION).tag(sync=True)
    _view_name = Unicode("VideoView").tag(sync=True)
    _view_module = Unicode(MODULE_NAME).tag(sync=True)
    _view_module_version = Unicode(MODULE_VERSION).tag(sync=True)

    width = Int(DEFAULT_WIDTH).tag(sync=True)
    active = Bool(False).tag(sync=True)
    placeholder = Unicode("no video").tag(sync=True)

    def __init__(self, feed: Any = None, *, width: int = DEFAULT_WIDTH, max_fps: float = MAX_FPS,
                 quality: int = QUALITY, **kwargs: Any) -> None:
        super().__init__(width=width, **kwargs)
        self._init_watch(feed)
        self._clients: dict[str, tuple[bool, int]] = {}  # browser page -> (a view is on screen, pixels wide)
        self.browser_dropped = 0
        self.acks = 0
        self._encoder = _Encoder(self._send_frame, max_fps=max_fps, quality=quality, windowed=True,
                                 name=f"ivisit-video-{getattr(feed, 'user', '')}")
        self.add_class("ivisit-video")
        comm = getattr(self, "comm", None)
        if comm is not None:
            self._widget_handler = self._handle_msg  # ipywidgets' own, for everything but our messages
            comm.on_msg(self._on_comm_msg)
            _LIVE[self.model_id] = self

    # -- kernel -> browser ------------------------------------------------------------------
    def _send_frame(self, content: dict[str, Any], jpeg: bytes) -> None:
        if self.comm is not None:
            self.send(content, buffers=[jpeg])

    # -- browser -> kernel --------------------------------------------------------------------
    def _on_comm_msg(self, msg: dict[str, Any]) -> None:
        """Every message from the browser. Ours (``custom``) are handled here on the comm's thread,
        quickly and without UI_LOCK; anything else goes to ipywidgets as usual."""
        data = msg.get("content", {}).get("data", {})
        if data.get("method") == "custom" and isinstance(data.get("content"), dict):
            try:
                self._on_browser(data["content"])
            except Exception:
                log.exception("bad message from a video view")
            return
        from .pump import UI_LOCK

        with UI_LOCK:
            self._widget_handler(msg)

    def _on_browser(self, content: dict[str, Any]) -> None:
        if "a" in content:  # ack: frames up to content["a"] arrived; "d" shown and "x" dropped since the last
            self.acks += 1
            self._take_ack(content["a"], content.get("d", 0), content.get("x", 0), content.get("t"))
            for entry in content.get("o") or ():  # the same for this kernel's other video widgets in that page
                if isinstance(entry, list) and len(entry) == 4:
                    other = _LIVE.get(str(entry[0]))
                    if other is not None and other is not self:
                        other._take_ack(*entry[1:])
            return
        page = str(content.get("p", ""))
        if "hello" in content:
            self._encoder.reset_credit()
        if "d" in content:
            self._count_displayed(int(content.get("d", 0)))
            self.browser_dropped += int(content.get("x", 0))
        if content.get("bye"):
            self._clients.pop(page, None)
        elif "v" in content:
            self._clients[page] = (bool(content["v"]), int(content.get("w") or 0))
        shown = [w for v, w in self._clients.values() if v]
        self._encoder.width = max(shown) if shown and all(shown) else None
        self._update_subscription()

    def _take_ack(self, seq: Any, shown: Any, dropped: Any, browser_ms: Any = None) -> None:
        self._encoder.ack(int(seq), float(browser_ms) if isinstance(browser_ms, (int, float)) else None)
        self._count_displayed(int(shown))
        self.browser_dropped += max(0, int(dropped))

    def _want_frames(self) -> bool:
        return any(v for v, _w in self._clients.values())

    @property
    def on_screen(self) -> bool:
        """True while a view of this widget is on screen in some browser page."""
        return self._want_frames()

    @property
    def in_flight(self) -> int:
        return self._encoder.in_flight

    @property
    def ack_rtt_ms(self) -> float | None:
        """Median time from sending a frame that asks for an ack to the ack's arrival (last 200), in ms."""
        rtts = sorted(self._encoder.ack_rtts)
        return 1000 * rtts[len(rtts) // 2] if rtts else None

    @property
    def ack_ways_ms(self) -> tuple[float, float] | None:
        """Medians of the round trip's two halves, kernel -> browser and browser -> kernel, in ms
        (split at the browser's clock, ``Date.now()`` in the ack; meaningful on one machine)."""
        ways = list(self._encoder.ack_ways)
        if not ways:
            return None
        down, up = sorted(w[0] for w in ways), sorted(w[1] for w in ways)
        return down[len(down) // 2], up[len(up) // 2]

    @closes_once
    def close(self) -> None:
        self._encoder.close()
        self._update_subscription()
        super().close()


class ImageVideo(_FeedWatch, widgets.Image):
    """The fallback without the extension: an ``ipywidgets.Image`` showing the newest frame,
    at most :data:`FALLBACK_FPS` times a second, while the widget is open (there is no
    feedback from the browser, so hidden views still cost their JPEG work)."""

    def __init__(self, feed: Any = None, *, width: int = DEFAULT_WIDTH, max_fps: float = FALLBACK_FPS,
                 quality: int = QUALITY, **kwargs: Any) -> None:
        super().__init__(format="jpeg", layout=widgets.Layout(width=f"{width}px"), **kwargs)
        self._init_watch(feed)
        self.active = False
        self.browser_dropped = 0
        self._encoder = _Encoder(self._show, max_fps=max_fps, quality=quality, windowed=False,
                                 name=f"ivisit-image-{getattr(feed, 'user', '')}")
        self._encoder.width = width
        self.add_class("ivisit-video")
        self._update_subscription()

    def _show(self, _content: dict[str, Any], jpeg: bytes) -> None:
        self.value = jpeg
        self._count_displayed(1)  # sent; there is no way to know it was shown

    def _want_frames(self) -> bool:
        return True

    @closes_once
    def close(self) -> None:
        self._encoder.close()
        self._update_subscription()
        super().close()


def video_widget(feed: Any = None, **kwargs: Any) -> VideoView | ImageVideo:
    """A :class:`VideoView` with the extension, else an :class:`ImageVideo`."""
    return VideoView(feed, **kwargs) if extension_available() else ImageVideo(feed, **kwargs)
