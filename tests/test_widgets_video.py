"""Video in the widgets, with real VideoFeeds and real frames (no browser).

What the browser would send (hello, on screen, acks) is fed to the widget's comm as the
kernel would receive it; what the kernel sends is recorded by replacing ``widget.send``.
"""

from __future__ import annotations

import threading
import time

import av
import numpy as np
import pytest
import simplejpeg
from helpers import wait_until

from ivisit_nb import events as ev
from ivisit_nb.consent import Request
from ivisit_nb.media import VideoFeed, read_stamp, write_stamp
from ivisit_nb.widgets import ImageVideo, OfferDialog, Pump, Tile, VideoView, choice_labels, video_widget
from ivisit_nb.widgets.video import BURST, WINDOW, encode_jpeg


def frame(n: int, width: int = 640, height: int = 480, fmt: str = "yuv420p") -> av.VideoFrame:
    """A stamped frame (number ``n``, clock now), as a decoder would give it."""
    img = np.full((height, width, 3), (n * 7) % 200 + 30, np.uint8)
    write_stamp(img, n, int(time.time() * 1000))
    f = av.VideoFrame.from_ndarray(img, format="rgb24")
    return f if fmt == "rgb24" else f.reformat(format=fmt)


def browser(widget, content):
    """Deliver a custom message to ``widget`` as if the browser sent it."""
    widget.comm.handle_msg({"content": {"data": {"method": "custom", "content": content}}, "buffers": []})


class Recorder:
    """Stands in for ``widget.send``: keeps what the kernel sent."""

    def __init__(self, widget):
        self.sent: list[tuple[dict, bytes]] = []
        self.lock = threading.Lock()
        widget.send = self.send

    def send(self, content, buffers=None):
        with self.lock:
            self.sent.append((content, bytes(buffers[0])))

    @property
    def seqs(self):
        with self.lock:
            return [c["f"] for c, _ in self.sent]


@pytest.fixture
def view(monkeypatch):
    monkeypatch.setenv("IVISIT_NB_EXTENSION", "1")
    feed = VideoFeed("alice")
    v = VideoView(feed)
    rec = Recorder(v)
    yield feed, v, rec
    v.close()


def test_encode_jpeg_keeps_the_stamp_and_scales():
    f = frame(1234)
    jpeg, w, h = encode_jpeg(f)
    assert (w, h) == (640, 480)
    assert read_stamp(simplejpeg.decode_jpeg(jpeg)) == read_stamp(f.to_ndarray(format="rgb24"))
    jpeg, w, h = encode_jpeg(f, 320)
    assert (w, h) == (320, 240)
    img = simplejpeg.decode_jpeg(jpeg)
    assert img.shape == (240, 320, 3) and read_stamp(img)[0] == 1234
    assert encode_jpeg(f, 2000)[1:] == (640, 480)  # never enlarged
    for fmt in ("rgb24", "gray"):  # a local preview's frames are not yuv420p
        g = av.VideoFrame.from_ndarray(f.to_ndarray(format=fmt), format=fmt)
        assert read_stamp(simplejpeg.decode_jpeg(encode_jpeg(g, 320)[0]))[0] == 1234


# Each tile's encoder thread scales the newest frame while other threads read the same frame
# (feed.stats, feed.latest_frame). PyAV converting one frame on two threads crashed the kernel
# (a segfault in libswscale); run in a child process, so a crash fails this test, not pytest.
CONCURRENT_CONVERSIONS = """
import sys, threading, time
sys.path.insert(0, {tests!r})
from test_widgets_video import frame
from ivisit_nb.media import VideoFeed, read_stamp
from ivisit_nb.widgets.video import encode_jpeg

feed = VideoFeed("alice")
stop = time.monotonic() + 3.0
bad = []

def push():
    n = 0
    while time.monotonic() < stop:
        feed.push(frame(n))
        n += 1

def jpeg():
    while time.monotonic() < stop:
        if feed.latest is not None:
            encode_jpeg(feed.latest, 320)

def look():
    while time.monotonic() < stop:
        if feed.latest is not None:
            feed.stats
            rgb = feed.latest_frame
            if read_stamp(rgb) is None:
                bad.append("unreadable")

threads = [threading.Thread(target=f) for f in (push, jpeg, jpeg, look, look)]
for t in threads:
    t.start()
for t in threads:
    t.join()
print("ok", len(bad))
"""


def test_frames_are_converted_safely_on_many_threads(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "convert.py"
    script.write_text(CONCURRENT_CONVERSIONS.format(tests=str(Path(__file__).parent)))
    run = subprocess.run([sys.executable, "-X", "faulthandler", str(script)], capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stderr[-3000:]
    assert run.stdout.split() == ["ok", "0"], run.stdout


def test_nothing_is_encoded_until_a_view_is_on_screen(view):
    feed, v, rec = view
    assert not v.subscribed and not feed.watched
    feed.push(frame(1))
    browser(v, {"p": "page1", "hello": 1, "v": False, "w": 0})
    assert not v.subscribed
    time.sleep(0.1)
    assert v.encoded == 0 and rec.sent == []
    browser(v, {"p": "page1", "v": True, "w": 320})
    assert v.subscribed and feed.watched
    wait_until(lambda: rec.sent)  # the newest frame is shown at once
    content, jpeg = rec.sent[0]
    assert content["f"] == 1 and (content["w"], content["h"]) == (320, 240)
    assert read_stamp(simplejpeg.decode_jpeg(jpeg))[0] == 1


def test_at_most_two_frames_in_flight_and_the_newest_wins(view):
    feed, v, rec = view
    browser(v, {"p": "page1", "hello": 1, "v": True, "w": 640})
    for n in range(1, 51):
        feed.push(frame(n))
        time.sleep(0.002)
    time.sleep(0.2)
    assert rec.seqs == [1, 2] and v.in_flight == WINDOW
    assert [c["k"] for c, _ in rec.sent] == [0, 1]  # the frame that fills the window asks for an ack
    assert v._encoder.skipped >= 45  # replaced, never queued
    browser(v, {"a": 2, "d": 2, "x": 0})
    wait_until(lambda: len(rec.sent) == 3)
    content, jpeg = rec.sent[2]
    assert read_stamp(simplejpeg.decode_jpeg(jpeg))[0] == 50  # the newest, not the next in line
    assert v.displayed == 2 and feed.stats.displayed == 2


def test_one_page_ack_returns_the_credit_of_every_tile(view, monkeypatch):
    feed, v, rec = view
    feed_b = VideoFeed("bob")
    w = VideoView(feed_b)
    rec_b = Recorder(w)
    try:
        for x in (v, w):
            browser(x, {"p": "page1", "hello": 1, "v": True, "w": 320})
        for n in (1, 2):
            feed.push(frame(n))
            feed_b.push(frame(n))
            wait_until(lambda: len(rec.sent) == n and len(rec_b.sent) == n)
        feed.push(frame(3))
        feed_b.push(frame(3))
        time.sleep(0.1)
        assert len(rec.sent) == len(rec_b.sent) == 2 and w.in_flight == WINDOW  # both windows are full
        # alice's ack carries bob's: [model id, newest arrived, shown, dropped]; junk is ignored
        browser(v, {"a": 2, "d": 1, "x": 0, "o": [[w.model_id, 2, 2, 1], ["no-such-view", 9, 1, 0], "junk", [1, 2]]})
        wait_until(lambda: len(rec.sent) == 3 and len(rec_b.sent) == 3)
        assert read_stamp(simplejpeg.decode_jpeg(rec_b.sent[2][1]))[0] == 3
        assert (v.displayed, w.displayed, w.browser_dropped, w.acks) == (1, 2, 1, 0)
        browser(v, {"a": 3, "d": 0, "x": 0, "o": [[w.model_id, 99, 0, 0]]})  # never beyond what was sent
        assert w.in_flight == 1
        # a cumulative ack settles every frame that asked for one up to it: nothing is kept
        assert v._encoder._asked == {} and len(w._encoder._asked) <= 1
        with w._encoder.cond:  # frames 4 and 5 asked; the page's ack names only 5
            w._encoder.seq, w._encoder._asked = 5, {4: time.monotonic(), 5: time.monotonic()}
        browser(v, {"a": 3, "d": 0, "x": 0, "o": [[w.model_id, 5, 0, 0]]})
        assert w._encoder._asked == {} and w.in_flight == 0
        v._shown.extendleft([0.0] * 5000)  # shown long ago; nobody read displayed_fps since
        browser(v, {"a": 3, "d": 1, "x": 0})
        assert len(v._shown) < 100
    finally:
        w.close()


def test_acks_on_receipt_keep_up_with_30_fps(view):
    feed, v, rec = view
    browser(v, {"p": "page1", "hello": 1, "v": True, "w": 320})
    acked = 0
    start = time.monotonic()
    for n in range(1, 61):
        feed.push(frame(n, 320, 240))
        due = start + n / 30
        while time.monotonic() < due:
            with rec.lock:
                asks = [c["f"] for c, _ in rec.sent if c["k"] and c["f"] > acked]
            for seq in asks:  # the browser acks on receipt
                browser(v, {"a": seq, "d": 1, "x": 0})
                acked = seq
            time.sleep(0.001)
    time.sleep(0.1)
    assert len(rec.sent) >= 57  # at most a couple dropped in 2 s
    assert v.acks <= len(rec.sent) // 2 + 1  # one ack per two frames
    assert v.ack_rtt_ms is not None


def test_hidden_view_unsubscribes_and_a_new_page_gets_fresh_credit(view):
    feed, v, rec = view
    browser(v, {"p": "page1", "hello": 1, "v": True, "w": 320})
    feed.push(frame(1))
    feed.push(frame(2))
    wait_until(lambda: len(rec.sent) == 2)
    browser(v, {"p": "page1", "v": False, "w": 0})  # scrolled away, or the tab is hidden
    assert not v.subscribed and not feed.watched
    encoded = v.encoded
    for n in range(3, 20):
        feed.push(frame(n))
    time.sleep(0.1)
    assert v.encoded == encoded
    # the page was reloaded: the old page never acks, the new one says hello
    browser(v, {"p": "page2", "hello": 1, "v": True, "w": 320})
    wait_until(lambda: len(rec.sent) == 3)
    assert read_stamp(simplejpeg.decode_jpeg(rec.sent[2][1]))[0] == 19
    browser(v, {"p": "page1", "bye": 1})
    assert v.subscribed  # page2 still shows it
    browser(v, {"p": "page2", "bye": 1})
    assert not v.subscribed


def test_close_stops_the_work(view):
    feed, v, rec = view
    browser(v, {"p": "page1", "hello": 1, "v": True, "w": 320})
    assert feed.watched
    v.close()
    assert not feed.watched and not v.subscribed
    v._encoder.thread.join(2)
    assert not v._encoder.thread.is_alive()
    feed.push(frame(1))
    assert v.encoded == 0


def test_sends_are_paced(monkeypatch):
    monkeypatch.setenv("IVISIT_NB_EXTENSION", "1")
    feed = VideoFeed("alice")
    v = VideoView(feed, max_fps=20)
    rec = Recorder(v)
    try:
        browser(v, {"p": "p", "hello": 1, "v": True, "w": 160})
        stop = time.monotonic() + 1.0
        n = 0
        while time.monotonic() < stop:  # 200 frames a second, acked at once
            n += 1
            feed.push(frame(n, 160, 120))
            for seq in [c["f"] for c, _ in list(rec.sent) if c["k"]]:
                browser(v, {"a": seq})
            time.sleep(0.005)
        assert 15 <= len(rec.sent) <= 20 + BURST + 1  # the rate, plus one burst
    finally:
        v.close()


def test_widget_messages_other_than_ours_still_reach_ipywidgets(view):
    feed, v, rec = view
    update = {"method": "update", "state": {"width": 200}, "buffer_paths": []}
    v.comm.handle_msg({"content": {"data": update}, "buffers": []})
    assert v.width == 200


def test_tile_shows_the_feed(pair, monkeypatch):
    monkeypatch.setenv("IVISIT_NB_EXTENSION", "1")
    alice, bob = pair
    feed = VideoFeed("alice")
    tile = Tile(bob, "alice", feed=feed)
    try:
        assert isinstance(tile.video, VideoView) and tile.video in tile.root.children
        assert tile.latest_frame is None
        f = frame(7)
        feed.push(f)
        assert np.array_equal(tile.latest_frame, f.to_ndarray(format="rgb24"))
        rec = Recorder(tile.video)
        browser(tile.video, {"p": "p", "hello": 1, "v": True, "w": 320})
        wait_until(lambda: rec.sent)
        browser(tile.video, {"a": 1, "d": 1, "x": 0})
        st = tile.stats
        assert (st.width, st.height, st.frames, st.displayed) == (640, 480, 1, 1)
        assert st.latency_ms is not None and 0 <= st.latency_ms < 5000
        feed.active = True
        tile.refresh()
        assert tile.video.active
    finally:
        tile.close()
    assert not feed.watched


def test_without_the_extension_an_image_shows_frames(monkeypatch):
    monkeypatch.setenv("IVISIT_NB_EXTENSION", "0")
    feed = VideoFeed("alice")
    w = video_widget(feed, width=160)
    try:
        assert isinstance(w, ImageVideo) and feed.watched
        feed.push(frame(3))
        wait_until(lambda: w.value)
        img = simplejpeg.decode_jpeg(bytes(w.value))
        assert img.shape == (120, 160, 3) and read_stamp(img)[0] == 3
    finally:
        w.close()
    assert not feed.watched


def test_video_requests_get_the_four_choices(pair):
    alice, bob = pair
    decisions = []
    dialog = OfferDialog(bob, notify=False)
    try:
        requests = []
        for _ in range(4):
            r = Request("video", "alice", lambda req, d, always, by: decisions.append((d, always)))
            requests.append(r)
            Pump.of(bob).post(ev.RequestPending(request=r))
        wait_until(lambda: len(dialog.cards) == 4)
        time.sleep(1.5)  # a Tick passes: pending video requests (no transfer id) stay
        assert len(dialog.cards) == 4
        assert choice_labels(requests[0]) == [
            "Accept always from alice", "Accept this call", "Refuse always from alice", "Refuse this call"]
        card = dialog.cards[id(requests[0])]
        assert "alice" in card.text.value and "video" in card.text.value
        assert [b.description for b in card.buttons] == choice_labels(requests[0])
        if hasattr(card.root, "data"):  # with the extension
            assert card.root.data["kind"] == "video"
        for i, r in enumerate(requests):
            dialog.cards[id(r)].buttons[i].click()
        assert decisions == [("accept", True), ("accept", False), ("refuse", True), ("refuse", False)]
        assert not dialog.cards
    finally:
        dialog.close()
