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
    python bench/transfer.py --turn             # relay (coturn) vs direct, 32 MiB x3, as root

With --turn (root, iproute2 and Debian's coturn): sender and receiver are sessions in
network namespaces A and B (tests/netns.py, tests/netns_peer.py), coturn and the room
server in T. Each run sends one fresh file three times: once relay-only through coturn (A and B
reach only T; credentials from the room server's welcome), once over a direct veth between
A and B, both on the data channel, and once more over the direct veth with lane "auto"
(the direct TLS lane for files from 8 MiB).
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


# -- through a TURN relay vs direct, between network namespaces (--turn) ---------------

TURN_SECRET = "bench-turn-secret"


def run_netns_pair(topo, url: str, path: Path, work: Path, *peer_args: str) -> dict:
    """A sender in A and a receiver in B, linked, send ``path`` once.

    Returns the seconds on the wire, the lane and ICE pair that carried it, and the
    median heartbeat round trip on the idle link just before the transfer.
    """
    import netns  # tests/netns.py

    send = netns.PeerProcess(topo, "A", "--url", url, "--user", "alice", "--room", "bench", "--workdir",
                             str(work / "alice"), *peer_args, label="sender in A")
    recv = netns.PeerProcess(topo, "B", "--url", url, "--user", "bob", "--room", "bench", "--workdir",
                             str(work / "bob"), *peer_args, label="receiver in B")
    try:
        send.ask("wait_linked", peer="bob", timeout=120)
        recv.ask("wait_linked", peer="alice", timeout=120)
        rtt = send.ask("wait_rtt", peer="bob", count=5, timeout=60)["rtt"]
        send.send("send_file", path=str(path), to="bob")
        recv.ask("wait_file", sender="alice", timeout=600)
        sent = send.reply(600)
        assert sent["ok"], sent
        pairs = send.ask("stats")["pairs"]
    finally:
        send.quit()
        recv.quit()
    pair = f"{pairs[0]['local_type']}/{pairs[0]['remote_type']}" if pairs else "?"
    return {"seconds": sent["seconds"], "pair": pair, "lane": sent["lane"], "rtt_ms": statistics.median(rtt) * 1000}


#: (label, room server, extra peer arguments) for each way through; see run_turn.
TURN_MODES = (
    ("relay", "relay", ("--ice-policy", "relay", "--lane", "datachannel")),
    ("direct", "direct", ("--lane", "datachannel")),
    ("direct, lane auto", "direct", ("--lane", "auto")),
)


def run_turn(sizes: list[int], runs: int) -> None:
    """Throughput relay-only through coturn vs over a direct veth (see TURN_MODES), runs alternating."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    import netns

    reason = netns.unavailable()
    if reason:
        sys.exit(f"bench/transfer.py --turn: {reason}")
    netns.sweep_stale()
    topo = netns.Topology("bench", direct_link=True)
    servers: list = []
    turn = None
    rows = []
    try:
        with tempfile.TemporaryDirectory() as tmp:
            topo.create()
            turn = netns.Coturn(topo, Path(tmp) / "coturn", TURN_SECRET).start()
            relay_server = netns.RoomServerProcess(topo, "--turn-secret", TURN_SECRET, "--turn-url", turn.url)
            direct_server = netns.RoomServerProcess(topo)  # no TURN at all: ICE can only go direct
            servers = [relay_server, direct_server]
            relay_server.start()
            direct_server.start()
            for mib in sizes:
                size = mib * MiB
                got: dict[str, list[dict]] = {label: [] for label, _, _ in TURN_MODES}
                for i in range(runs):
                    for n, (label, server, peer_args) in enumerate(TURN_MODES):  # alternate: drift hits all alike
                        path = Path(tmp) / f"payload-{mib}MiB-{i}-{n}.bin"
                        make_file(path, size)  # a fresh file each time: a repeat would be deduplicated
                        url = relay_server.url if server == "relay" else direct_server.url
                        r = run_netns_pair(topo, url, path, Path(tmp) / f"run-{mib}-{i}-{n}", *peer_args)
                        path.unlink()
                        got[label].append(r)
                        print(f"  {mib} MiB run {i + 1}: {label:17} {size / r['seconds'] / 1e6:6.1f} MB/s "
                              f"(pair {r['pair']}, lane {r['lane']}, idle heartbeat rtt {r['rtt_ms']:.2f} ms)", flush=True)
                for label, rs in got.items():
                    rows.append({
                        "size": f"{mib} MiB", "runs": runs, "mode": label,
                        "mbs": statistics.median(size / r["seconds"] / 1e6 for r in rs),
                        "all": ", ".join(f"{size / r['seconds'] / 1e6:.1f}" for r in rs),
                        "pair": " ".join(sorted({r["pair"] for r in rs})), "lane": " ".join(sorted({r["lane"] for r in rs})),
                        "rtt": statistics.median(r["rtt_ms"] for r in rs),
                    })
    finally:
        for srv in servers:
            srv.stop()
        if turn is not None:
            turn.stop()
        topo.destroy()
    print()
    print("| size | runs | path | MB/s (median) | each run | vs direct data channel | ICE pair | lane | idle rtt ms (median) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- | --- |")
    for r in rows:
        base = next(x["mbs"] for x in rows if x["size"] == r["size"] and x["mode"] == "direct")
        print(f"| {r['size']} | {r['runs']} | {r['mode']} | {r['mbs']:.1f} | {r['all']} | {r['mbs'] / base:.2f} | "
              f"{r['pair']} | {r['lane']} | {r['rtt']:.2f} |")


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sizes", default=None, help="sizes in MiB, comma-separated (default 256,1024; 32 with --turn)")
    ap.add_argument("--runs", type=int, default=3, help="runs per size (the 1 GiB size runs once unless --runs-big)")
    ap.add_argument("--runs-big", type=int, default=1, help="runs for sizes of 1 GiB and more")
    ap.add_argument("--uvloop", action="store_true", help="run both sides on uvloop")
    ap.add_argument("--turn", action="store_true",
                    help="relay through coturn vs a direct path, between network namespaces (needs root and coturn)")
    args = ap.parse_args(argv)
    if args.turn:
        print(f"# transfer bench --turn {time.strftime('%Y-%m-%d %H:%M')}, {os.cpu_count()} cores, "
              f"python {sys.version.split()[0]}", flush=True)
        run_turn([int(x) for x in (args.sizes or "32").split(",")], args.runs)
        return
    args.sizes = args.sizes or "256,1024"
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
