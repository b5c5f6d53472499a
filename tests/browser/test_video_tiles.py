"""Video in the tiles, in a real JupyterLab with headless Chromium.

alice (in the notebook's kernel, with bob) sends her video, a 640x480 TestPattern at 30 fps
whose frames carry media/barcode.py's stamp, over the real aiortc link to bob, whose panel
the page shows. The page reads the stamp of the tile's <canvas> on every requestAnimationFrame
(STAMP_JS: drawn into a canvas, sampled as barcode.py documents).
"""

from __future__ import annotations

import time

import pytest
from conftest import UI_CELLS
from lab import ARTIFACTS, Lab, write_notebook

TILE = '.ivisit-tile[data-user="alice"]'
IMG = f'{TILE} canvas.ivisit-frame'

# Reads the stamp (media/barcode.py) from <img> and <canvas> elements, and watches tiles on every animation frame.
STAMP_JS = r"""
() => {
  if (window.__ivv) return;
  const CELLS = 50;
  const canvas = document.createElement('canvas');
  canvas.height = 1;
  const ctx = canvas.getContext('2d', {willReadFrequently: true});
  const check = (f, c) => {
    let x = 0x5A;
    for (const b of [f >> 8, f, c >> 16, c >> 8, c]) x ^= b & 0xFF;
    return x;
  };
  // {frame, clock} from the strip across the top of an <img> or <canvas>, or null (as barcode.read_stamp).
  const read = (img) => {
    const isImg = img.tagName === 'IMG';
    const w = isImg ? img.naturalWidth : img.width, h = isImg ? img.naturalHeight : img.height;
    if ((isImg && !img.complete) || w < CELLS * 3 || !h) return null;
    const row = Math.floor(Math.max(8, Math.floor(h / 16)) / 2);
    if (canvas.width !== w) canvas.width = w;  // resizing reallocates: only when it changes
    ctx.drawImage(img, 0, row, w, 1, 0, 0, w, 1);
    const px = ctx.getImageData(0, 0, w, 1).data;
    const bits = [];
    for (let i = 0; i < CELLS; i++) {
      const a = Math.round(i * w / CELLS), b = Math.round((i + 1) * w / CELLS);
      const third = Math.max(1, Math.floor((b - a) / 3));
      const lo = b - a > 2 ? a + third : a, hi = b - a > 2 ? b - third : b;
      let sum = 0;
      for (let x = lo; x < hi; x++) sum += (px[4 * x] + px[4 * x + 1] + px[4 * x + 2]) / 3;
      bits.push(sum / (hi - lo) >= 128 ? 1 : 0);
    }
    if (bits[0] !== 1 || bits[CELLS - 1] !== 0) return null;
    const num = (from, n) => bits.slice(from, from + n).reduce((v, b) => v * 2 + b, 0);
    const frame = num(1, 16), clock = num(17, 24), sum = num(41, 8);
    return check(frame, clock) === sum ? {frame, clock} : null;
  };
  // Per selector: distinct frames shown (with when), latencies, and misreads, while watching.
  const state = {watching: {}, run: false, rafs: 0};
  const tick = () => {
    if (!state.run) return;
    state.rafs += 1;
    const now = Date.now();
    for (const [sel, rec] of Object.entries(state.watching)) {
      const img = document.querySelector(sel);
      if (!img) { rec.missing += 1; continue; }
      const st = read(img);
      if (!st) { rec.unread += 1; continue; }
      if (st.frame !== rec.last) {
        rec.last = st.frame;
        rec.shown.push([performance.now(), st.frame]);
        rec.latency.push(((now - st.clock) % 16777216 + 16777216) % 16777216);
      }
    }
    requestAnimationFrame(tick);
  };
  window.__ivv = {
    read: (sel) => { const img = document.querySelector(sel); return img ? read(img) : null; },
    start: (sels) => {
      state.watching = {};
      for (const s of sels) state.watching[s] = {last: -1, shown: [], latency: [], unread: 0, missing: 0};
      state.rafs = 0; state.run = true; requestAnimationFrame(tick);
    },
    stop: () => { state.run = false; return {rafs: state.rafs, tiles: state.watching}; },
  };
}
"""

# Kernel code: alice's video to bob, after bob's ``calls`` setting is set (the consent).
VIDEO_PY = """
from ivisit_nb.media import TestPattern as _TP

def restart_video(calls):
    \"\"\"Stop alice's video to bob (wait until it is off), set bob's calls setting, start it again.\"\"\"
    import time as _time
    env.alice.stop_video(to="bob")
    deadline = _time.monotonic() + 10
    while (env.bob.video_feed("alice").active or env.bob.video_requests) and _time.monotonic() < deadline:
        _time.sleep(0.05)
    env.bob.settings["alice"].calls = calls
    env.alice.start_video(_TP("alice", 30, 640, 480), to="bob")
    return True
"""


@pytest.fixture(scope="module")
def vlab(lab_server, browser):
    url, token, root = lab_server
    ARTIFACTS.mkdir(exist_ok=True)
    write_notebook(root / "video.ipynb", UI_CELLS)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()
    lab = Lab(page, url, token, root)
    lab.open_notebook("video.ipynb")
    lab.run_cell(0, timeout=60)
    lab.run_cell(1, timeout=30)
    lab.py(VIDEO_PY)
    page.evaluate(STAMP_JS)
    yield lab
    lab.screenshot("video-final")
    (ARTIFACTS / "console-video.txt").write_text("".join(f"{kind}: {text}\n" for kind, text in lab.console))
    context.close()


def watch(lab, selectors, seconds):
    lab.page.evaluate("(s) => window.__ivv.start(s)", selectors)
    time.sleep(seconds)
    return lab.page.evaluate("() => window.__ivv.stop()")


def test_remote_tile_shows_live_video(vlab):
    lab = vlab
    page = lab.page
    page.locator(TILE).wait_for(timeout=15_000)
    assert "no video" in page.locator(f"{TILE} .ivisit-video").inner_text()
    lab.pyj("restart_video('accept')")
    page.wait_for_function(f"() => window.__ivv.read('{IMG}')", timeout=20_000)
    assert page.locator(f"{TILE} .ivisit-novideo").is_hidden()
    got = watch(lab, [IMG], 3.0)
    rec = got["tiles"][IMG]
    frames = [f for _t, f in rec["shown"]]
    assert len(frames) >= 30, rec  # 30 fps sent: at least 10 shown a second
    assert frames == sorted(frames) or max(frames) - min(frames) > 60000  # the counter advances
    size = page.evaluate(f"() => {{ const c = document.querySelector('{IMG}'); return [c.width, c.height]; }}")
    assert size == [320, 240]  # encoded at the tile's width, not the frame's 640
    latency = sorted(rec["latency"])
    print(f"shown {len(frames)} in 3 s, latency p50 {latency[len(latency) // 2]} ms, rafs {got['rafs']}")
    # Pages without WebCodecs' ImageDecoder (plain http from another host) decode with createImageBitmap.
    page.evaluate("() => { window.__ivDecoder = window.ImageDecoder; window.ImageDecoder = undefined; }")
    try:
        got = watch(lab, [IMG], 2.0)
        assert len(got["tiles"][IMG]["shown"]) >= 20, got["tiles"][IMG]
    finally:
        page.evaluate("() => { window.ImageDecoder = window.__ivDecoder; }")
    stats = lab.pyj("(lambda s: [s.width, s.height, s.received_fps, s.displayed_fps, s.displayed])"
                    "(panel.roster.tiles['alice'].stats)")
    assert stats[:2] == [640, 480] and stats[2] > 20 and stats[4] > 0
    shape = lab.pyj("list(panel.roster.tiles['alice'].latest_frame.shape)")
    assert shape == [480, 640, 3]
    # one page, known by the id it said hello with (a class field once reset it to '' after hello)
    pages = lab.pyj("list(panel.roster.tiles['alice'].video._clients)")
    assert len(pages) == 1 and pages[0], pages
    lab.screenshot("video-tile")


def test_hidden_page_stops_the_jpeg_work(vlab):
    lab = vlab
    tile = "panel.roster.tiles['alice'].video"
    assert lab.pyj(f"{tile}.subscribed")
    lab.page.evaluate("() => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
                      " document.dispatchEvent(new Event('visibilitychange')); }")
    lab.wait_py(f"not {tile}.subscribed", timeout=10)
    n = lab.pyj(f"{tile}.encoded")
    time.sleep(1.0)
    assert lab.pyj(f"{tile}.encoded") == n
    lab.page.evaluate("() => { delete document.hidden; document.dispatchEvent(new Event('visibilitychange')); }")
    lab.wait_py(f"{tile}.subscribed", timeout=10)
    lab.wait_py(f"{tile}.encoded > {n} + 10", timeout=10)


@pytest.mark.parametrize(
    "index, label, where, shown, setting",
    [
        (1, "Accept this call", "notification", True, "ask"),
        (0, "Accept always from alice", "inline", True, "accept"),
        (3, "Refuse this call", "notification", False, "ask"),
        (2, "Refuse always from alice", "inline", False, "refuse"),
    ],
)
def test_video_request_dialog(vlab, index, label, where, shown, setting):
    lab = vlab
    lab.pyj("restart_video('ask')")
    card = lab.page.locator('.ivisit-offer[data-kind="video"][data-sender="alice"]')
    card.wait_for(timeout=10_000)
    assert "alice wants to send you video" in card.inner_text()
    labels = [b.inner_text() for b in card.locator("button").all()]
    assert labels == ["Accept always from alice", "Accept this call", "Refuse always from alice", "Refuse this call"]
    note = lab.page.locator(".Toastify__toast", has_text="alice wants to send you video")
    note.wait_for(timeout=10_000)
    if where == "notification":
        time.sleep(0.6)  # let it finish sliding in
        note.get_by_role("button", name=label).click()
    else:
        card.get_by_role("button", name=label).click()
    card.wait_for(state="detached", timeout=10_000)
    note.wait_for(state="detached", timeout=10_000)
    lab.wait_py("not env.bob.video_requests", timeout=10)
    if shown:  # frames reach the tile
        lab.wait_py("env.bob.video_feed('alice').active", timeout=10)
        first = lab.page.wait_for_function(f"() => window.__ivv.read('{IMG}')", timeout=15_000).json_value()["frame"]
        lab.page.wait_for_function(f"() => (window.__ivv.read('{IMG}') || {{frame: -1}}).frame > {first}", timeout=10_000)
    else:
        time.sleep(1.0)
        assert lab.pyj("env.bob.video_feed('alice').active") is False
    assert lab.pyj("env.bob.settings['alice'].calls") == setting


def test_preview_tile_shows_our_own_video(vlab):
    lab = vlab
    preview = lab.page.locator('.ivisit-preview[data-local="bob"]')
    button = preview.locator(".ivisit-video-button")
    assert button.inner_text().strip() == "Start video"
    button.click()
    lab.wait_py("env.bob.local_feed.active", timeout=10)
    img = '.ivisit-preview[data-local="bob"] canvas.ivisit-frame'
    first = lab.page.wait_for_function(f"() => window.__ivv.read('{img}')", timeout=15_000).json_value()["frame"]
    lab.page.wait_for_function(f"() => (window.__ivv.read('{img}') || {{frame: -1}}).frame > {first} + 10", timeout=10_000)
    lab.page.wait_for_function(
        "() => document.querySelector('.ivisit-preview .ivisit-video-button').textContent.includes('Stop video')",
        timeout=10_000)
    button.click()
    lab.wait_py("not env.bob.local_feed.active", timeout=10)
    lab.page.wait_for_function("() => document.querySelector('.ivisit-preview .ivisit-novideo').offsetParent !== null",
                               timeout=10_000)  # "no video" again


def test_closed_tile_stops_its_jpeg_work(vlab):
    lab = vlab
    tile = "panel.roster.tiles['alice'].video"
    lab.pyj("restart_video('accept')")
    lab.wait_py("env.bob.video_feed('alice').active", timeout=10)
    lab.wait_py(f"{tile}.subscribed", timeout=10)
    before = lab.pyj(f"{tile}.encoded")
    time.sleep(0.5)
    assert lab.pyj(f"{tile}.encoded") > before  # working while shown
    # close the panel's view in the page: clear the cell's output
    lab.cell(1).locator(".jp-InputPrompt").click()
    lab.page.evaluate("() => window.jupyterapp.commands.execute('notebook:clear-cell-output')")
    lab.page.locator(TILE).wait_for(state="detached", timeout=10_000)
    lab.wait_py(f"not {tile}.subscribed", timeout=10)
    n = lab.pyj(f"{tile}.encoded")
    time.sleep(1.0)
    assert lab.pyj(f"{tile}.encoded") == n
    # and closing the widget from Python unsubscribes from the feed for good
    lab.py("_feed = panel.roster.tiles['alice'].feed; panel.close()")
    assert lab.pyj("_feed.watched") is False


def test_no_console_errors_or_failed_models(vlab):
    assert "Failed to load model class" not in vlab.page.content()
    assert not [t for k, t in vlab.console if "is not registered" in t]
    assert vlab.unexpected_console_errors() == []
