"""Video tiles end to end: 4 peers send 640x480@30 to one JupyterLab kernel shown in headless Chromium.

Each remote peer is a process of its own with a Session sending a ``TestPattern`` (640x480,
30 fps, every frame stamped with media/barcode.py's strip) to ``viewer``. ``viewer`` is a
Session in a real JupyterLab kernel whose panel (``viewer.ui()``) is shown in Debian's
headless Chromium (Playwright, ``executable_path``; never ``playwright install``). The page
reads each tile's stamp on every requestAnimationFrame (the reader of
tests/browser/test_video_tiles.py), so frames are counted as shown, not as sent.

Measured, after a warm-up:

- per tile: displayed fps (distinct frames shown in each second of ``--seconds``, median of the
  seconds) and glass-to-glass latency p50 / p95 (the stamp's clock, written by the sender
  just before its VP8 encoder, vs ``Date.now()`` when the page first reads that frame);
- kernel CPU (% of one core, the whole kernel process: aiortc receive + VP8 decode + JPEG +
  send), and the part spent in the tiles' encoder threads (scale + JPEG + send), and the
  kernel with the page hidden (``document.hidden``: decode only, no JPEG work);
- kernel RSS every second for ``--rss-seconds`` while Chromium's CPU is throttled through CDP
  (``Emulation.setCPUThrottlingRate``, ``--throttle``): flat if the slow browser never makes
  frames pile up in the kernel;
- baseline (``--baseline``, on by default): the raw path of VIDEO-NOTES, one ``ipywidgets.Image``
  per peer whose ``value`` a kernel thread sets to each new frame's JPEG (same encoder, same
  width), no feedback, with the panel's tiles hidden meanwhile.

    python bench/video.py                       # 4 peers, 10 s, 60 s of RSS at 4x throttling
    python bench/video.py --peers 2 --seconds 5 --rss-seconds 20 --no-baseline

Goals (issue 10): >= 25 fps per tile, <= 1 core of kernel CPU, p50 <= 150 ms, RSS flat.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests" / "browser"))

from _common import load_average, machine_line, stamp, version_of  # noqa: E402

CHROMIUM = "/usr/bin/chromium"
BIN = Path(sys.executable).parent


# -- a remote peer (its own process) ------------------------------------------------------------
def run_peer(url: str, name: str, room: str, fps: float, width: int, height: int) -> None:
    from ivisit_nb import Session
    from ivisit_nb.media import TestPattern

    with tempfile.TemporaryDirectory() as tmp:
        s = Session.join(url, name, room, inbox=Path(tmp) / "inbox", config_dir=Path(tmp) / "config")
        s.settings.defaults.calls = "refuse"  # peers do not watch each other
        s.wait_for_peers(["viewer"], timeout=60).wait()
        s.start_video(TestPattern(name, fps, width, height), to="viewer")
        print("sending", flush=True)
        signal.sigwait({signal.SIGTERM, signal.SIGINT})
        s.leave()


# -- the kernel side (run in the notebook's kernel) ------------------------------------------------
KERNEL_PY = """
import os, threading, time, psutil
import ipywidgets as W
from ivisit_nb.widgets.video import encode_jpeg

def tiles():
    return {n: t for n, t in panel.roster.tiles.items()}

def feed_of(name):
    return panel.roster.tiles[name].feed

def encoder_cpu():
    return sum(t.video.encode_cpu for t in tiles().values())

def counters():
    return {n: {"encoded": t.video.encoded, "skipped": t.video._encoder.skipped, "acks": t.video.acks,
                "browser_dropped": t.video.browser_dropped, "frames": t.feed.stats.frames,
                "received_fps": t.feed.stats.received_fps, "subscribed": t.video.subscribed,
                "width": t.video._encoder.width, "ack_rtt_ms": t.video.ack_rtt_ms, "ack_ways_ms": t.video.ack_ways_ms} for n, t in tiles().items()}

class RawImages:
    '''VIDEO-NOTES' raw path: Image.value = JPEG of each new frame, from a thread, no feedback.'''
    def __init__(self, names, width):
        self.images, self.stops, self.running = [], [], True
        for n in names:
            img = W.Image(format="jpeg", layout=W.Layout(width=f"{width}px"))
            img.add_class(f"bench-raw-{n}")
            self.images.append(img)
            slot = {"frame": None, "event": threading.Event()}
            feed = feed_of(n)
            def offer(frame, slot=slot):
                slot["frame"] = frame
                slot["event"].set()
            self.stops.append(feed.subscribe(offer))
            threading.Thread(target=self.run, args=(img, slot, width), daemon=True).start()
        raw_box.children = self.images
    def run(self, img, slot, width):
        while self.running:
            if not slot["event"].wait(0.5):
                continue
            slot["event"].clear()
            frame = slot["frame"]
            img.value = encode_jpeg(frame, width)[0]
    def close(self):
        self.running = False
        for s in self.stops:
            s()
        raw_box.children = []
"""


LOCAL_PY = '''
import threading as _t, time as _time, types as _types
import ipywidgets as _W
from ivisit_nb.media import TestPattern as _TP, VideoFeed as _VF
from ivisit_nb.widgets import Tile as _Tile

class _Drive:
    """A VideoFeed filled from a TestPattern at its fps, as yuv420p frames (what a decoder gives)."""
    def __init__(self, user, fps, width, height):
        self.pattern, self.fps, self.feed = _TP(user, fps, width, height), fps, _VF(user)
        self.feed.active = True
        _t.Thread(target=self.run, daemon=True).start()
    def run(self):
        i, t0 = 0, _time.monotonic()
        while True:
            self.feed.push(self.pattern.make_frame(i).reformat(format="yuv420p"))
            i += 1
            _time.sleep(max(0.0, t0 + i / self.fps - _time.monotonic()))

def local_panel(names, fps, width, height):
    drives = {n: _Drive(n, fps, width, height) for n in names}
    tiles = {n: _Tile(viewer, n, feed=d.feed) for n, d in drives.items()}
    for t in tiles.values():
        t.refresh()
    box = _W.HBox(list(tiles.values()), layout=_W.Layout(flex_flow="row wrap"))
    return box, _types.SimpleNamespace(roster=_types.SimpleNamespace(tiles=tiles), layout=box.layout)
'''


def notebook(url: str, names: list[str], local: str | None = None) -> dict:
    show = (f"viewer.wait_for_peers({names!r}, timeout=120).wait()\npanel = viewer.ui()\npanel" if local is None else
            f"exec({LOCAL_PY!r})\nbox, panel = local_panel({names!r}, {local})\nbox")  # noqa: E501
    cells = [
        "from ivisit_nb import Session\n"
        f"viewer = Session.join({url!r}, 'viewer', 'bench', inbox='inbox', config_dir='config')\n"
        "viewer.settings.defaults.calls = 'accept'",
        show,
        "import ipywidgets as W\nraw_box = W.HBox(layout=W.Layout(flex_flow='row wrap'))\nraw_box",
    ]
    return {
        "cells": [{"cell_type": "code", "execution_count": None, "id": f"c{i}", "metadata": {}, "outputs": [], "source": s}
                  for i, s in enumerate(cells)],
        "metadata": {"kernelspec": {"display_name": "Python 3", "language": "python", "name": "python3"}},
        "nbformat": 4, "nbformat_minor": 5,
    }


# -- measuring -----------------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))]


def per_second_fps(shown: list[list[float]], seconds: float) -> list[int]:
    """Distinct frames shown in each whole second of the window (``shown``: [page ms, frame no])."""
    if not shown:
        return [0] * int(seconds)
    t0 = shown[0][0]
    counts = [0] * int(seconds)
    for t, _f in shown:
        i = int((t - t0) / 1000)
        if 0 <= i < len(counts):
            counts[i] += 1
    return counts


def cpu_parts(kernel, lab_proc, procs, before: dict | None = None) -> dict[str, float]:
    """CPU seconds so far of: the kernel, the Jupyter server, the peers, Chromium (minus ``before``)."""
    import psutil

    def cpu(p) -> float:
        try:
            t = p.cpu_times()
            return t.user + t.system
        except psutil.Error:
            return 0.0

    out = {"kernel": cpu(kernel), "server": cpu(psutil.Process(lab_proc.pid)),
           "peers": sum(cpu(psutil.Process(p.pid)) for p in procs)}
    me = psutil.Process()
    out["chromium"] = sum(cpu(c) for c in me.children(recursive=True) if "chrom" in c.name().lower())
    if before:
        out = {k: v - before.get(k, 0.0) for k, v in out.items()}
    return out


def watch(page, selectors: list[str], seconds: float) -> dict:
    page.evaluate("(s) => window.__ivv.start(s)", selectors)
    time.sleep(seconds)
    return page.evaluate("() => window.__ivv.stop()")


def tile_rows(got: dict, selectors: dict[str, str], seconds: float) -> dict[str, dict]:
    rows = {}
    for name, sel in selectors.items():
        rec = got["tiles"][sel]
        fps = per_second_fps(rec["shown"], seconds)
        lat = rec["latency"]
        rows[name] = {"fps": statistics.median(fps) if fps else 0, "fps_all": fps, "p50": pct(lat, 0.5),
                      "p95": pct(lat, 0.95), "shown": len(rec["shown"]), "unread": rec["unread"]}
    return rows


def print_profile(cdp, seconds: float, top: int = 25) -> None:
    """Sample the page's main thread for ``seconds`` and print the functions with the most self time."""
    cdp.send("Profiler.enable")
    cdp.send("Profiler.setSamplingInterval", {"interval": 200})
    cdp.send("Profiler.start")
    time.sleep(seconds)
    prof = cdp.send("Profiler.stop")["profile"]
    nodes = {n["id"]: n for n in prof["nodes"]}
    self_ms: dict[str, float] = {}
    for node_id, dt in zip(prof["samples"], prof["timeDeltas"]):
        frame = nodes[node_id]["callFrame"]
        where = frame["url"].rsplit("/", 1)[-1].split("?")[0]
        key = f"{frame['functionName'] or '(anonymous)'} {where}:{frame['lineNumber']}" if where else frame["functionName"]
        self_ms[key] = self_ms.get(key, 0.0) + dt / 1000
    total = sum(self_ms.values()) or 1.0
    print(f"\npage main thread, {seconds:g} s sampled: self time by function")
    for key, ms in sorted(self_ms.items(), key=lambda kv: -kv[1])[:top]:
        print(f"  {100 * ms / total:5.1f} %  {ms:8.0f} ms  {key}")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--peers", type=int, default=4)
    p.add_argument("--fps", type=float, default=30)
    p.add_argument("--width", type=int, default=640)
    p.add_argument("--height", type=int, default=480)
    p.add_argument("--seconds", type=float, default=10, help="measuring window for fps, latency and CPU")
    p.add_argument("--rss-seconds", type=float, default=60)
    p.add_argument("--throttle", type=float, default=4, help="Chromium CPU slow-down factor during the RSS phase")
    p.add_argument("--no-baseline", dest="baseline", action="store_false")
    p.add_argument("--window", type=int, default=0, help="frames in flight per tile (default: the widget's, 2)")
    p.add_argument("--ack-lead", type=int, default=-1,
                   help="0: ack only the frame that fills the window; 1 (the widget's default): one slot earlier")
    p.add_argument("--peer-nice", type=int, default=0, metavar="N",
                   help="run the peer processes (the remote users' machines) at this nice level")
    p.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    p.add_argument("--profile", type=float, default=0, metavar="SECONDS",
                   help="after the warm-up, sample the page's JavaScript for SECONDS (CDP Profiler) and print where it goes")
    p.add_argument("--local", action="store_true",
                   help="no peers: VideoFeeds in the kernel fed from TestPatterns (the frame path alone, no VP8)")
    p.add_argument("--peer", nargs=4, metavar=("URL", "NAME", "ROOM", "SIZE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.peer:
        url, name, room, size = args.peer
        w, h, fps = (int(size.split("x")[0]), int(size.split("x")[1].split("@")[0]), float(size.split("@")[1]))
        run_peer(url, name, room, fps, w, h)
        return 0
    if not os.path.exists(CHROMIUM):
        print(f"{CHROMIUM} is missing (apt-get install chromium)", file=sys.stderr)
        return 2
    import psutil
    from conftest import free_port, write_settings
    from playwright.sync_api import sync_playwright
    from test_video_tiles import STAMP_JS

    from ivisit_nb import RoomServer
    from lab import Lab

    names = [f"peer{i}" for i in range(args.peers)]
    results: dict = {"when": stamp(), "machine": machine_line(), "peers": args.peers,
                     "source": f"{args.width}x{args.height}@{args.fps:g}"}
    procs: list[subprocess.Popen] = []
    lab_proc = None
    with tempfile.TemporaryDirectory() as tmpdir, RoomServer() as server:
        base = Path(tmpdir)
        root, settings = base / "root", base / "settings"
        for d in (root, settings, base / "runtime", base / "ipython"):
            d.mkdir()
        write_settings(settings)
        local = f"{args.fps}, {args.width}, {args.height}" if args.local else None
        results["mode"] = "local feeds (no link, no VP8)" if args.local else "remote peers over aiortc"
        (root / "video.ipynb").write_text(json.dumps(notebook(server.url, names, local)))
        port, token = free_port(), secrets.token_hex(16)
        env = dict(os.environ, PYTHONFAULTHANDLER="1", JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTER_RUNTIME_DIR=str(base / "runtime"),
                   IPYTHONDIR=str(base / "ipython"), PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
        log = open(base / "jupyter.log", "w")
        lab_proc = subprocess.Popen(
            [str(BIN / "jupyter"), "lab", "--no-browser", "--allow-root", "--ip=127.0.0.1", f"--port={port}",
             f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={root}", "--LabApp.expose_app_in_browser=True"],
            cwd=root, env=env, stdout=log, stderr=subprocess.STDOUT)
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=2).read()
                    break
                except OSError:
                    if lab_proc.poll() is not None or time.monotonic() > deadline:
                        raise RuntimeError(f"jupyter lab did not start; see {base / 'jupyter.log'}")
                    time.sleep(0.3)
            with sync_playwright() as pw:
                browser = pw.chromium.launch(executable_path=CHROMIUM, args=[
                    "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                    "--disable-background-networking", "--disable-component-update", "--disable-sync"])
                context = browser.new_context(viewport={"width": 1600, "height": 1400})
                page = context.new_page()
                lab = Lab(page, url, token, root)
                lab.open_notebook("video.ipynb")
                lab.run_cell(0, timeout=60)
                for n in (names if not args.local else []):
                    procs.append(subprocess.Popen(
                        [sys.executable, __file__, "--peer", server.url, n, "bench", f"{args.width}x{args.height}@{args.fps:g}"],
                        stdout=subprocess.DEVNULL, preexec_fn=(lambda: os.nice(args.peer_nice)) if args.peer_nice else None))
                lab.run_cell(1, timeout=150)
                lab.run_cell(2, timeout=30)
                lab.py(KERNEL_PY)
                if args.window:
                    lab.py(f"for t in tiles().values(): t.video._encoder.window = {args.window}")
                if args.ack_lead >= 0:
                    lab.py(f"for t in tiles().values(): t.video._encoder.ack_lead = {args.ack_lead}")
                results["ack_lead"] = lab.pyj("panel.roster.tiles[" + repr(names[0]) + "].video._encoder.ack_lead")
                results["window"] = lab.pyj("panel.roster.tiles[" + repr(names[0]) + "].video._encoder.window")
                page.evaluate(STAMP_JS)
                kernel = psutil.Process(int(lab.pyj("os.getpid()")))
                tiles = {n: f'.ivisit-tile[data-user="{n}"] canvas.ivisit-frame' for n in names}
                deadline = time.monotonic() + 60
                while not all(page.evaluate("(s) => !!window.__ivv.read(s)", s) for s in tiles.values()):
                    if time.monotonic() > deadline:
                        raise RuntimeError(f"not every tile shows stamped frames: {lab.pyj('counters()')}")
                    time.sleep(0.5)
                time.sleep(3)  # warm-up
                if args.profile:
                    print_profile(context.new_cdp_session(page), args.profile)

                # 1. the tiles: fps, latency, kernel CPU
                parts = cpu_parts(kernel, lab_proc, procs)
                frames0 = lab.pyj("{n: t.feed.stats.frames for n, t in tiles().items()}")
                cpu0, enc0, t0 = kernel.cpu_times(), lab.pyj("encoder_cpu()"), time.monotonic()
                got = watch(page, list(tiles.values()), args.seconds)
                cpu1, enc1, t1 = kernel.cpu_times(), lab.pyj("encoder_cpu()"), time.monotonic()
                frames1 = lab.pyj("{n: t.feed.stats.frames for n, t in tiles().items()}")
                results["cpu_parts"] = {k: 100 * v / (t1 - t0) for k, v in cpu_parts(kernel, lab_proc, procs, parts).items()}
                results["tiles"] = tile_rows(got, tiles, args.seconds)
                for n in names:  # frames that reached the kernel's feed in the window
                    results["tiles"][n]["received_fps"] = (frames1[n] - frames0[n]) / (t1 - t0)
                results["rafs_per_s"] = got["rafs"] / args.seconds
                results["kernel_cpu"] = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0)
                results["encoder_cpu"] = 100 * (enc1 - enc0) / (t1 - t0)
                results["counters"] = lab.pyj("counters()")

                # 2. the page hidden: the kernel decodes but does no JPEG work
                page.evaluate("() => { Object.defineProperty(document, 'hidden', {configurable: true, get: () => true});"
                              " document.dispatchEvent(new Event('visibilitychange')); }")
                time.sleep(1.5)
                cpu0, enc0, t0 = kernel.cpu_times(), lab.pyj("encoder_cpu()"), time.monotonic()
                time.sleep(min(args.seconds, 5))
                cpu1, enc1, t1 = kernel.cpu_times(), lab.pyj("encoder_cpu()"), time.monotonic()
                results["kernel_cpu_hidden"] = 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0)
                results["encoder_cpu_hidden"] = 100 * (enc1 - enc0) / (t1 - t0)
                page.evaluate("() => { delete document.hidden; document.dispatchEvent(new Event('visibilitychange')); }")
                time.sleep(2)

                # 3. kernel RSS while the browser is slowed down
                cdp = context.new_cdp_session(page)
                cdp.send("Emulation.setCPUThrottlingRate", {"rate": args.throttle})
                rss = []
                page.evaluate("(s) => window.__ivv.start(s)", list(tiles.values()))
                t0 = time.monotonic()
                while time.monotonic() - t0 < args.rss_seconds:
                    rss.append((time.monotonic() - t0, kernel.memory_info().rss / (1 << 20)))
                    time.sleep(1.0)
                got = page.evaluate("() => window.__ivv.stop()")
                cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})
                thr = tile_rows(got, tiles, args.rss_seconds)
                xs, ys = [x for x, _ in rss], [y for _, y in rss]
                slope = statistics.linear_regression(xs, ys).slope * 60 if len(rss) > 2 else float("nan")
                half = len(ys) // 2
                results["rss"] = {"first": ys[0], "last": ys[-1], "max": max(ys), "slope_mib_per_min": slope,
                                  "median_first_half": statistics.median(ys[:half]),
                                  "median_second_half": statistics.median(ys[half:]),
                                  "fps_throttled": statistics.median(r["fps"] for r in thr.values()),
                                  "p50_throttled": statistics.median(r["p50"] for r in thr.values()),
                                  "p95_throttled": statistics.median(r["p95"] for r in thr.values()),
                                  "last_latency_throttled": statistics.median(
                                      rec["latency"][-1] for rec in got["tiles"].values() if rec["latency"])}

                # 4. baseline: ipywidgets.Image set from a thread, no feedback
                if args.baseline:
                    lab.py("panel.layout.display = 'none'")
                    time.sleep(1.0)
                    lab.py(f"raw = RawImages({names!r}, 320)")
                    raw = {n: f"img.bench-raw-{n}" for n in names}
                    deadline = time.monotonic() + 30
                    while not all(page.evaluate("(s) => !!window.__ivv.read(s)", s) for s in raw.values()):
                        if time.monotonic() > deadline:
                            raise RuntimeError("the raw Image path shows no stamped frames")
                        time.sleep(0.5)
                    time.sleep(3)
                    cpu0, t0 = kernel.cpu_times(), time.monotonic()
                    got = watch(page, list(raw.values()), args.seconds)
                    cpu1, t1 = kernel.cpu_times(), time.monotonic()
                    results["baseline"] = {"tiles": tile_rows(got, raw, args.seconds),
                                           "kernel_cpu": 100 * ((cpu1.user + cpu1.system) - (cpu0.user + cpu0.system)) / (t1 - t0),
                                           "rafs_per_s": got["rafs"] / args.seconds}
                    # the same throttling as in phase 3: without feedback, does a backlog build up?
                    throttled = min(args.rss_seconds, 20.0)
                    cdp.send("Emulation.setCPUThrottlingRate", {"rate": args.throttle})
                    rss0 = kernel.memory_info().rss / (1 << 20)
                    got = watch(page, list(raw.values()), throttled)
                    rss1 = kernel.memory_info().rss / (1 << 20)
                    cdp.send("Emulation.setCPUThrottlingRate", {"rate": 1})
                    thr = tile_rows(got, raw, throttled)
                    last = [rec["latency"][-1] for rec in got["tiles"].values() if rec["latency"]]
                    results["baseline"]["throttled"] = {
                        "fps": statistics.median(r["fps"] for r in thr.values()),
                        "p50": statistics.median(r["p50"] for r in thr.values()),
                        "p95": statistics.median(r["p95"] for r in thr.values()),
                        "last_latency": statistics.median(last) if last else float("nan"),
                        "rss_first": rss0, "rss_last": rss1}
                    lab.py("raw.close(); panel.layout.display = None")
                results["load"] = load_average()
                context.close()
                browser.close()
        except BaseException:
            log.flush()
            print(f"--- the Jupyter server's log (tail) ---\n{(base / 'jupyter.log').read_text()[-4000:]}", file=sys.stderr)
            raise
        finally:
            for proc in procs:
                proc.send_signal(signal.SIGTERM)
            for proc in procs:
                try:
                    proc.wait(15)
                except subprocess.TimeoutExpired:
                    proc.kill()
            if lab_proc is not None:
                lab_proc.terminate()
                try:
                    lab_proc.wait(15)
                except subprocess.TimeoutExpired:
                    lab_proc.kill()
            log.close()
    report(results)
    if args.json:
        print(json.dumps(results))
    return 0


def report(r: dict) -> None:
    print(f"\nVideo tiles: {r['peers']} x {r['source']} -> one JupyterLab kernel, headless Chromium ({r['when']})")
    print(f"mode: {r['mode']}")
    print(r["machine"])
    print(f"aiortc {version_of('aiortc')}, PyAV {version_of('av')}, simplejpeg {version_of('simplejpeg')}, "
          f"JupyterLab {version_of('jupyterlab')}, ipywidgets {version_of('ipywidgets')}, ipykernel {version_of('ipykernel')}")
    print("\n| tile | fps received by the kernel | displayed fps (median of 1 s) | latency p50 ms | p95 ms | frames shown |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, row in r["tiles"].items():
        print(f"| {name} | {row['received_fps']:.1f} | {row['fps']:.1f} | {row['p50']:.0f} | {row['p95']:.0f} | {row['shown']} |")
    fps = statistics.median(row["fps"] for row in r["tiles"].values())
    p50 = statistics.median(row["p50"] for row in r["tiles"].values())
    p95 = statistics.median(row["p95"] for row in r["tiles"].values())
    rss = r["rss"]
    print("\n| measure | value | goal | ratio to goal |")
    print("| --- | ---: | ---: | ---: |")
    rec = statistics.median(row["received_fps"] for row in r["tiles"].values())
    print(f"| displayed fps per tile (median of tiles) | {fps:.1f} | >= 25 | {fps / 25:.2f} |")
    print(f"| fps reaching the kernel per tile (median of tiles) | {rec:.1f} | 30 sent | – |")
    print(f"| glass-to-glass latency p50 (median of tiles) | {p50:.0f} ms | <= 150 ms | {p50 / 150:.2f} |")
    print(f"| glass-to-glass latency p95 (median of tiles) | {p95:.0f} ms | – | – |")
    print(f"| kernel CPU, all (decode + JPEG + send) | {r['kernel_cpu']:.0f} % | <= 100 % | {r['kernel_cpu'] / 100:.2f} |")
    print(f"| of which the tiles' encoder threads (scale + JPEG + send) | {r['encoder_cpu']:.0f} % | – | – |")
    print(f"| kernel CPU with the page hidden (decode only) | {r['kernel_cpu_hidden']:.0f} % "
          f"(encoders {r['encoder_cpu_hidden']:.1f} %) | – | – |")
    print(f"| kernel RSS over the throttled phase: first / median 1st half / median 2nd half / last / max | "
          f"{rss['first']:.0f} / {rss['median_first_half']:.0f} / {rss['median_second_half']:.0f} / {rss['last']:.0f} / "
          f"{rss['max']:.0f} MiB | flat | slope {rss['slope_mib_per_min']:+.1f} MiB/min |")
    print(f"| browser throttled: fps / p50 / p95 / latency of the last frame read | {rss['fps_throttled']:.1f} / "
          f"{rss['p50_throttled']:.0f} / {rss.get('p95_throttled', float('nan')):.0f} / "
          f"{rss.get('last_latency_throttled', float('nan')):.0f} ms | – | – |")
    print(f"| page animation frames | {r['rafs_per_s']:.0f}/s | – | – |")
    cp = r["cpu_parts"]
    print(f"| CPU while measuring, % of one core: kernel / Jupyter server / {r['peers']} peers / Chromium | "
          f"{cp['kernel']:.0f} / {cp['server']:.0f} / {cp['peers']:.0f} / {cp['chromium']:.0f} | – | – |")
    acks = [c["ack_rtt_ms"] for c in r["counters"].values() if c.get("ack_rtt_ms") is not None]
    if acks:
        ways = [c["ack_ways_ms"] for c in r["counters"].values() if c.get("ack_ways_ms")]
        down = statistics.median(w[0] for w in ways) if ways else float("nan")
        up = statistics.median(w[1] for w in ways) if ways else float("nan")
        print(f"| window (frames in flight) / ack lead / ack round trip (kernel->page, page->kernel) | {r['window']} / "
              f"{r['ack_lead']} / {statistics.median(acks):.0f} ms ({down:.0f} + {up:.0f}) | – | – |")
    if "baseline" in r:
        b = r["baseline"]
        bf = statistics.median(row["fps"] for row in b["tiles"].values())
        bp = statistics.median(row["p50"] for row in b["tiles"].values())
        bp95 = statistics.median(row["p95"] for row in b["tiles"].values())
        print(f"| baseline ipywidgets.Image (no feedback): fps / p50 / p95 / kernel CPU | {bf:.1f} / {bp:.0f} ms / "
              f"{bp95:.0f} ms / {b['kernel_cpu']:.0f} % | – | fps x{fps / bf if bf else float('nan'):.2f} |")
        if "throttled" in b:
            t = b["throttled"]
            print(f"| baseline, browser throttled: fps / p50 / p95 / latency of the last frame read / kernel RSS | "
                  f"{t['fps']:.1f} / {t['p50']:.0f} / {t['p95']:.0f} / {t['last_latency']:.0f} ms / "
                  f"{t['rss_first']:.0f} -> {t['rss_last']:.0f} MiB | – | – |")
    print(f"\nload average at the end: {r['load']}")
    print("kernel counters:", json.dumps(r["counters"]))


if __name__ == "__main__":
    sys.exit(main())
