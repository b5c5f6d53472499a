"""Transfer throughput: ivisit_nb file sharing vs. a raw aiortc data channel.

Two processes each time (sender, receiver), loopback, same flow control
(64 KiB messages, pause above 1 MiB buffered, resume at 512 KiB), and the same
threading: the raw baseline also runs its loop in a thread of its own, as the
session's engine does. (With RAW_MAIN_THREAD=1 it runs on the main thread; on
our 2-core machine that was about 40% slower: 64 MiB, 3 runs each, 7.7-11.8 vs
13.3-17.2 MB/s.) Reports per
size: median throughput of several runs for both, their ratio, peak RSS of each
side, and the time to "send" again a file the receiver already holds (dedup).

    python bench/transfer.py                    # 256 MiB x3 and 1 GiB x1
    python bench/transfer.py --sizes 64 --runs 3
    python bench/transfer.py --uvloop           # both sides on uvloop
"""

from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from _common import peak_rss_mib  # VmHWM: ru_maxrss in a spawned child would include this process's peak

MiB = 1 << 20
MSG = 64 * 1024
HIGH, LOW = 1 << 20, 512 * 1024


def make_file(path: Path, size: int) -> None:
    block = os.urandom(MiB)
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(block[:n])
            left -= n
            block = block[1:] + block[:1]  # vary blocks a little


# -- raw aiortc baseline -----------------------------------------------------------

def raw_side(role: str, size: int, conn, use_uvloop: bool) -> None:
    if use_uvloop:
        import uvloop

        uvloop.install()
    if not os.environ.get("RAW_MAIN_THREAD"):  # like the engine: a loop in a thread of its own
        import threading

        th = threading.Thread(target=asyncio.run, args=(_raw(role, size, conn),))
        th.start()
        th.join()
    else:
        asyncio.run(_raw(role, size, conn))


async def _raw(role: str, size: int, conn) -> None:
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    ch = pc.createDataChannel("data", negotiated=True, id=1)
    loop = asyncio.get_running_loop()
    done = asyncio.Event()
    opened = asyncio.Event()
    ch.on("open", opened.set)
    if role == "send":
        await pc.setLocalDescription(await pc.createOffer())
        conn.send(pc.localDescription.sdp)
        answer = await loop.run_in_executor(None, conn.recv)
        await pc.setRemoteDescription(RTCSessionDescription(answer, "answer"))
        await opened.wait()
        ch.bufferedAmountLowThreshold = LOW
        drained = asyncio.Event()
        ch.on("bufferedamountlow", drained.set)
        payload = os.urandom(MSG)
        conn.recv()  # receiver ready
        t0, c0 = time.perf_counter(), time.process_time()
        sent = 0
        while sent < size:
            while ch.bufferedAmount > HIGH:
                drained.clear()
                await drained.wait()
            n = min(MSG, size - sent)
            ch.send(payload[:n])
            sent += n
        await loop.run_in_executor(None, conn.recv)  # receiver got it all
        conn.send({"seconds": time.perf_counter() - t0, "rss": peak_rss_mib(), "cpu": time.process_time() - c0})
    else:
        offer = await loop.run_in_executor(None, conn.recv)
        await pc.setRemoteDescription(RTCSessionDescription(offer, "offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        conn.send(pc.localDescription.sdp)
        got = 0

        def on_message(m: bytes) -> None:
            nonlocal got
            got += len(m)
            if got >= size:
                done.set()

        ch.on("message", on_message)
        await opened.wait()
        c0 = time.process_time()
        conn.send("ready")
        await done.wait()
        conn.send({"rss": peak_rss_mib(), "cpu": time.process_time() - c0})
    await asyncio.sleep(0.2)
    await pc.close()


def run_raw(size: int, use_uvloop: bool) -> dict:
    ctx = mp.get_context("spawn")
    a, b = ctx.Pipe()
    # the parent relays: sender <-> receiver
    sp, sc = ctx.Pipe()
    rp, rc = ctx.Pipe()
    s = ctx.Process(target=raw_side, args=("send", size, sc, use_uvloop))
    r = ctx.Process(target=raw_side, args=("recv", size, rc, use_uvloop))
    s.start()
    r.start()
    rp.send(sp.recv())  # offer
    sp.send(rp.recv())  # answer
    sp.send(rp.recv())  # ready
    r_result = rp.recv()  # receiver done (rss)
    sp.send("done")
    s_result = sp.recv()
    s.join()
    r.join()
    return {"seconds": s_result["seconds"], "rss_send": s_result["rss"], "rss_recv": r_result["rss"],
            "cpu_send": s_result["cpu"], "cpu_recv": r_result["cpu"]}


# -- ivisit_nb ------------------------------------------------------------------------

def ivisit_side(role: str, url: str, path: str, workdir: str, conn, use_uvloop: bool) -> None:
    from ivisit_nb import Session

    user = "alice" if role == "send" else "bob"
    # the data channel, like the raw baseline (bench/compare.py measures the direct lane)
    s = Session.join(url, user, "bench", config_dir=f"{workdir}/cfg", inbox=f"{workdir}/inbox-{user}",
                     use_uvloop=use_uvloop, lane="datachannel")
    try:
        if role == "recv":
            s.receiving = True
            s.settings.defaults.files = "accept"
            s.wait_for_peers(["alice"], timeout=60).wait()
            c0 = time.process_time()
            conn.send("ready")
            conn.recv()  # sender finished
            conn.send({"rss": peak_rss_mib(), "cpu": time.process_time() - c0})
            conn.recv()
        else:
            s.wait_for_peers(["bob"], timeout=60).wait()
            conn.recv()  # receiver ready
            t0, c0 = time.perf_counter(), time.process_time()
            t = s.send_file(path, to="bob")
            status = t.wait()
            total = time.perf_counter() - t0
            cpu = time.process_time() - c0  # includes hashing the file
            assert status == "done", (status, t.reason)
            transfer = t.finished_at - t.started_at
            t1 = time.perf_counter()
            again = s.send_file(path, to="bob")
            assert again.wait() == "done" and again.lane == "dedup", (again.status, again.lane)
            dedup = time.perf_counter() - t1
            conn.send({"seconds": transfer, "total": total, "dedup": dedup, "rss": peak_rss_mib(), "cpu": cpu})
    finally:
        s.leave()


def run_ivisit(size: int, path: Path, use_uvloop: bool) -> dict:
    from ivisit_nb import RoomServer

    ctx = mp.get_context("spawn")
    with RoomServer() as server, tempfile.TemporaryDirectory() as work:
        sp, sc = ctx.Pipe()
        rp, rc = ctx.Pipe()
        r = ctx.Process(target=ivisit_side, args=("recv", server.url, str(path), work, rc, use_uvloop))
        s = ctx.Process(target=ivisit_side, args=("send", server.url, str(path), work, sc, use_uvloop))
        r.start()
        s.start()
        assert rp.recv() == "ready"
        sp.send("go")
        res = sp.recv()
        rp.send("finished")
        recv = rp.recv()
        res["rss_recv"], res["cpu_recv"] = recv["rss"], recv["cpu"]
        rp.send("bye")
        res["rss_send"], res["cpu_send"] = res.pop("rss"), res.pop("cpu")
        s.join()
        r.join()
        received = Path(work) / "inbox-bob" / "alice" / path.name
        assert received.stat().st_size == size
    return res


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default="256,1024", help="sizes in MiB, comma-separated")
    ap.add_argument("--runs", type=int, default=3, help="runs per size (the 1 GiB size runs once unless --runs-big)")
    ap.add_argument("--runs-big", type=int, default=1, help="runs for sizes of 1 GiB and more")
    ap.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    args = ap.parse_args(argv)
    print(f"# transfer bench {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, python {sys.version.split()[0]}, "
          f"loop={'uvloop' if args.uvloop else 'asyncio'}", flush=True)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for mib in [int(x) for x in args.sizes.split(",")]:
            size = mib * MiB
            path = Path(tmp) / f"payload-{mib}MiB.bin"
            make_file(path, size)
            runs = args.runs_big if mib >= 1024 else args.runs
            raw, ours = [], []
            for i in range(runs):  # alternate, so drift hits both alike
                r = run_raw(size, args.uvloop)
                raw.append(r)
                print(f"  {mib} MiB run {i + 1}: raw aiortc {size / r['seconds'] / 1e6:6.1f} MB/s "
                      f"(CPU s send / recv {r['cpu_send']:.1f} / {r['cpu_recv']:.1f})", flush=True)
                o = run_ivisit(size, path, args.uvloop)
                ours.append(o)
                print(f"  {mib} MiB run {i + 1}: ivisit_nb  {size / o['seconds'] / 1e6:6.1f} MB/s "
                      f"(wall incl. hashing {o['total']:.1f} s, dedup re-send {o['dedup'] * 1000:.0f} ms, "
                      f"CPU s send / recv {o['cpu_send']:.1f} / {o['cpu_recv']:.1f})", flush=True)
            raw_mbs = statistics.median(size / r["seconds"] / 1e6 for r in raw)
            our_mbs = statistics.median(size / o["seconds"] / 1e6 for o in ours)
            rows.append({
                "size": f"{mib} MiB", "runs": runs, "raw MB/s": raw_mbs, "ivisit MB/s": our_mbs, "ratio": our_mbs / raw_mbs,
                "RSS send": max(o["rss_send"] for o in ours), "RSS recv": max(o["rss_recv"] for o in ours),
                "raw RSS send": max(r["rss_send"] for r in raw), "raw RSS recv": max(r["rss_recv"] for r in raw),
                "dedup ms": statistics.median(o["dedup"] for o in ours) * 1000,
            })
            path.unlink()
    print()
    print("| size | runs | raw aiortc MB/s (median) | ivisit_nb MB/s (median) | ratio | peak RSS send / recv MiB | raw RSS send / recv MiB | dedup re-send ms (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['size']} | {r['runs']} | {r['raw MB/s']:.1f} | {r['ivisit MB/s']:.1f} | {r['ratio']:.2f} | "
              f"{r['RSS send']:.0f} / {r['RSS recv']:.0f} | {r['raw RSS send']:.0f} / {r['raw RSS recv']:.0f} | {r['dedup ms']:.0f} |")


if __name__ == "__main__":
    main()
