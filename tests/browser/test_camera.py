"""``Camera()``: the browser's camera as a video source, in a real JupyterLab in headless Chromium.

Chromium's fake camera (``--use-fake-device-for-media-stream`` with
``--use-fake-ui-for-media-stream``, which grants the permission) stands in for a camera.
This is the one fake these tests allow, because these machines have no physical camera;
everything else is real: JupyterLab, our extension's capture view, getUserMedia, the
kernel decoding the frames, and the aiortc link from alice's session to bob's.

The module has its own browser (the fake-camera flags) and its own notebook; the lab server
is the session's (conftest.py). The tests check what each path does, not how fast: frame
rates are measured by the tests marked ``measure`` (left out of ``make test``), which
``bench/camera.py`` runs; they write test-artifacts/camera.json, quoted in docs/camera.md.
"""

from __future__ import annotations

import json
import os
import statistics
import time

import pytest
from conftest import chromium
from lab import ARTIFACTS, Lab, write_notebook

RUNS = 3  # measured runs per path, each after 2 s of warm-up
WINDOW = 8.0  # seconds per measured run
RESULTS: dict[str, list[float]] = {}

CELLS = [
    "import time, numpy as np\nfrom ivisit_nb.media import Camera\n"
    "def counts(c):\n    s = c.stats\n    return {'received': s.received, 'dropped': s.dropped, 'rejected': s.rejected,"
    " 'fps': s.fps, 'status': s.status, 'skipped': s.browser_skipped}",
    "cam = Camera(320, 240, fps=30)\ncam",
    "cam = Camera(640, 480, fps=30)\ncam",
    "cam = Camera(320, 240, fps=30, path='ipywebrtc')\ncam",
    "cam = Camera()\ncam",  # the default: 320x240 at 15 fps, for the session
    # as fast as the credits allow, repeating pictures (the fake camera gives 20 fps): the path's ceiling
    "cam = Camera(320, 240, fps=120, new_only=False)\ncam",
    "cam = Camera(640, 480, fps=120, new_only=False)\ncam",
]
CAPTURE_320, CAPTURE_640, FALLBACK, DEFAULT, CEILING_320, CEILING_640 = 1, 2, 3, 4, 5, 6


@pytest.fixture(scope="module")
def browser():
    """Chromium with the fake camera: the one allowed fake (no physical camera here)."""
    yield from chromium("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream")


@pytest.fixture(scope="module")
def lab(lab_server, browser):
    url, token, root = lab_server
    ARTIFACTS.mkdir(exist_ok=True)
    write_notebook(root / "camera.ipynb", CELLS)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    lab = Lab(page, url, token, root)
    lab.open_notebook("camera.ipynb")
    lab.run_cell(0, timeout=60)
    yield lab
    lab.screenshot("camera-final")
    (ARTIFACTS / "camera-console.txt").write_text("".join(f"{kind}: {text}\n" for kind, text in lab.console))
    (ARTIFACTS / "camera.json").write_text(json.dumps(
        {k: {"runs": v, "median": statistics.median(v)} for k, v in RESULTS.items()}, indent=1))
    context.close()


def start(lab: Lab, cell: int) -> None:
    """Run the cell that makes and shows ``cam``; wait for its first frames in the kernel."""
    lab.py("globals().get('cam') is not None and cam.stop()")  # free the previous camera
    lab.run_cell(cell, timeout=30)
    lab.wait_py("cam.stats.received >= 2", timeout=30)


def measure(lab: Lab, cell: int, key: str) -> list[float]:
    """Frames per second the kernel decodes, ``RUNS`` runs of ``WINDOW`` s, each on a fresh Camera."""
    RESULTS.setdefault("load average at start of each measurement", []).append(round(os.getloadavg()[0], 1))
    rates: list[float] = []
    cpu: list[float] = []
    latency: list[float] = []
    for _ in range(RUNS):
        start(lab, cell)
        time.sleep(2.0)  # warm-up: the camera and the encoder settle
        n0, c0 = lab.pyj("[cam.stats.received, time.process_time()]")
        t0 = time.monotonic()
        time.sleep(WINDOW)
        n1, c1 = lab.pyj("[cam.stats.received, time.process_time()]")
        dt = time.monotonic() - t0
        rates.append(round((n1 - n0) / dt, 2))
        cpu.append(round(100 * (c1 - c0) / dt, 1))
        for _ in range(5):  # browser capture to decoded in the kernel, newest frame
            value = lab.pyj("cam.stats.latency_ms")
            if value is not None:
                latency.append(round(value, 1))
            time.sleep(0.2)
    RESULTS[key] = rates
    RESULTS[f"{key}: kernel CPU %"] = cpu
    if latency:
        RESULTS[f"{key}: latency ms"] = latency
    print(key, rates, "median", statistics.median(rates), "kernel CPU %", cpu, "latency", latency)
    return rates


def assert_live_picture(lab: Lab, width: int, height: int, wait: float = 1.0) -> None:
    """The kernel's newest frame has the asked size, is not black, and changes (within 30 s,
    ``wait`` being what it takes on an idle machine)."""
    first = lab.pyj("(lambda a: [list(a.shape), float(a.mean()), float(a.std())])(cam._image)")
    assert first[0] == [height, width, 3]
    assert first[1] > 20 and first[2] > 10, f"the camera's frame looks blank: mean {first[1]}, std {first[2]}"
    lab.py("_before = cam._image.copy()")
    lab.wait_py("bool((cam._image != _before).any())", timeout=max(30.0, wait))


def wait_for(cond, timeout=10.0):
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_kernel_side_decodes_and_rejects_frames(caplog):
    """No browser: real JPEGs handed to the capture widget's message handler are decoded and
    pushed; too big, undecodable or wrongly sized ones are rejected with a logged reason."""
    import numpy as np
    import simplejpeg

    from ivisit_nb.media import Camera, camera

    cam = Camera(320, 240, path="capture")
    handler, widget = cam._on_capture_msg, cam.widget
    assert widget.width == 320 and widget.height == 240 and widget.credits == camera.CREDITS
    picture = np.zeros((240, 320, 3), np.uint8)
    picture[:, :160] = (200, 30, 30)
    good = simplejpeg.encode_jpeg(picture, quality=90, colorspace="RGB")
    handler(widget, {"event": "frame", "seq": 1, "t": time.time() * 1000}, [good])
    wait_for(lambda: cam.stats.received == 1)
    assert abs(int(cam._image[120, 50, 0]) - 200) < 8 and cam._image[120, 250].max() < 8
    assert cam.stats.latency_ms is not None and cam.stats.latency_ms < 5000
    wrong = simplejpeg.encode_jpeg(np.zeros((480, 640, 3), np.uint8), colorspace="RGB")
    with caplog.at_level("WARNING", logger="ivisit_nb.media.camera"):
        bad = [[wrong], [b"\xff\xd8\xff" + b"\0" * 100], [b"\0" * (camera.MAX_FRAME_BYTES + 1)], [good, good]]
        for n, buffers in enumerate(bad, 1):  # one at a time: a newer frame would supersede an undecoded one
            handler(widget, {"event": "frame", "seq": 1 + n}, buffers)
            wait_for(lambda: cam.stats.rejected == n)
    reasons = " | ".join(r.getMessage() for r in caplog.records)
    assert "640x480, not 320x240" in reasons and "not a decodable" in reasons
    assert "over the 2097152-byte limit" in reasons and "2 buffers" in reasons
    assert cam.stats.received == 1
    assert cam.readyState == "live"
    cam.stop()
    assert cam.readyState == "ended"
    cam.stop()  # again: nothing happens


def test_auto_path_follows_the_extension(monkeypatch):
    from ivisit_nb.media import Camera

    monkeypatch.setenv("IVISIT_NB_EXTENSION", "0")
    assert Camera().path == "ipywebrtc"
    monkeypatch.setenv("IVISIT_NB_EXTENSION", "1")
    assert Camera().path == "capture"
    assert Camera(path="ipywebrtc").path == "ipywebrtc"
    with pytest.raises(ValueError):
        Camera(321, 240)
    with pytest.raises(ValueError):
        Camera(path="webcam")


def test_capture_320x240(lab):
    start(lab, CAPTURE_320)
    assert_live_picture(lab, 320, 240)
    lab.wait_py("'fps to the kernel' in cam.stats.status", timeout=30)  # the browser reports about once a second
    st = lab.pyj("counts(cam)")
    assert st["rejected"] == 0, st
    status = lab.page.locator(".ivisit-camera .ivisit-camera-status").last.inner_text()
    assert "camera 320x240" in status
    lab.screenshot("camera-capture")


def test_capture_640x480(lab):
    start(lab, CAPTURE_640)
    assert_live_picture(lab, 640, 480)
    assert lab.pyj("cam.stats.rejected") == 0


def test_ipywebrtc_fallback(lab):
    """The fallback works without our extension's capture view (at about one frame a second)."""
    start(lab, FALLBACK)
    assert_live_picture(lab, 320, 240, wait=5.0)  # snapshots come in bursts with ~3 s stalls between
    lab.py("cam.stop()")


def test_the_default_camera_never_sends_faster_than_15fps(lab):
    """Pacing is in the browser: however fast the kernel acks, no more than 15 frames a second."""
    start(lab, DEFAULT)
    n0, t0 = lab.pyj("cam.stats.received"), time.monotonic()
    time.sleep(3.0)
    n1 = lab.pyj("cam.stats.received")
    rate = (n1 - n0 - 1) / (time.monotonic() - t0)  # one frame of slack for the window's edges
    assert n1 > n0, "no frames in 3 s"
    assert rate <= 15.5, rate


# -- measurements (bench/camera.py runs these; `make test` leaves them out) ----------------------


@pytest.mark.measure
@pytest.mark.parametrize("cell, key", [
    (CAPTURE_320, "capture 320x240 @30"), (CAPTURE_640, "capture 640x480 @30"), (FALLBACK, "ipywebrtc 320x240"),
    (DEFAULT, "capture 320x240 @15 (default)"),
    (CEILING_320, "capture 320x240 @120 (ceiling)"), (CEILING_640, "capture 640x480 @120 (ceiling)"),
])
def test_measure_frame_rate(lab, cell, key):
    """Frames a second the kernel decodes, for docs/camera.md (the ceilings ask 120 fps and
    allow repeats: as fast as 2 frames in flight allow)."""
    rates = measure(lab, cell, key)
    assert rates and lab.pyj("cam.stats.rejected") == 0
    if cell in (CEILING_320, CEILING_640):
        RESULTS[f"{key}: browser skipped"] = [lab.pyj("cam.stats.browser_skipped")]
        RESULTS[f"{key}: kernel dropped"] = [lab.pyj("cam.stats.dropped")]


def session_has_video() -> bool:
    from ivisit_nb.session import Session

    return hasattr(Session, "start_video") and hasattr(Session, "video_feed")


def test_camera_reaches_the_remote_tile(lab, tmp_path):
    """alice (in the notebook's kernel) sends Camera() to bob (in this process); bob's feed moves."""
    if not session_has_video():
        pytest.skip("Session.start_video / video_feed are not in session.py yet")
    from ivisit_nb import Session

    lab.py(
        "from ivisit_nb import RoomServer, Session\n"
        "server = RoomServer()\n"
        f"alice = Session.join(server.url, 'alice', 'camera', config_dir={str(tmp_path / 'alice')!r},"
        f" inbox={str(tmp_path / 'alice-inbox')!r})"
    )
    url = lab.pyj("server.url")
    bob = Session.join(url, "bob", "camera", config_dir=tmp_path / "bob", inbox=tmp_path / "bob-inbox")
    try:
        bob.wait_for_peers(timeout=30).wait()
        lab.py("alice.wait_for_peers(timeout=30).wait()")
        bob.settings["alice"].calls = "accept"
        start(lab, DEFAULT)
        lab.py("alice.start_video(cam, to='bob')")
        feed = bob.video_feed("alice")

        def picture(unlike=None):
            """bob's newest frame once it shows the camera (not the black before its first
            frame) and, if ``unlike`` is given, differs from it."""
            deadline = time.monotonic() + 30
            while True:
                frame = feed.latest_frame
                if frame is not None and frame.mean() > 20 and frame.std() > 10:
                    if unlike is None or (frame != unlike).any():
                        return frame
                assert time.monotonic() < deadline, f"no new camera picture reached bob in 30 s: {feed.stats}"
                time.sleep(0.1)

        first = picture()
        assert first.shape == (240, 320, 3)
        picture(unlike=first)  # the picture moves
        RESULTS["bob receives, fps"] = [round(feed.stats.received_fps, 2)]
    finally:
        bob.leave()
        lab.py("cam.stop(); alice.leave(); server.close()")


def test_no_failed_models_and_no_console_errors(lab):
    assert "Failed to load model class" not in lab.page.content()
    errors = [e for e in lab.unexpected_console_errors() if "is not registered" in e or "ivisit" in e.lower()]
    assert not errors, errors
