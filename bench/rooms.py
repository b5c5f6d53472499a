#!/usr/bin/env python
"""Room server benchmarks.

    python bench/rooms.py            # 200 and 1,000 clients
    python bench/rooms.py --quick    # 200 clients, fewer samples
    python bench/rooms.py --json     # rows as JSON lines too
    python bench/rooms.py --instances 1,2,4   # only the cluster part (needs redis-server)

Part 1 (``join``): join-to-presence latency. The server runs in its own process
through the CLI (``python -m ivisit_nb server --port 0``), pinned to one core
with the clients on the other when there are two. For each size, N websocket
clients spread over 50 rooms:

* **join storm**: 50 room anchors join, the other N-50 connect, then all send
  ``hello`` at once; latency = that client's ``hello`` sent -> the room's anchor
  receives ``joined`` for it.
* **ping->pong (ws)**: with all N joined and idle, sequential websocket-level
  ping -> pong round trips (the baseline), round-robin over the clients.
* **ping->pong (JSON)**: the same with ``{"type": "ping"}`` -> ``{"type": "pong"}``.
* **re-join**: with the other N-1 connected, one client at a time leaves,
  reconnects (not timed), and sends ``hello``; latency = ``hello`` sent -> the
  room's anchor (a member already there) receives ``joined`` for it.

The ratio printed is re-join p50 / ws ping->pong p50.

Part 3 (``cluster``, only with ``--part cluster`` or ``--instances``): 2,000
websocket clients in 100 rooms, spread round-robin over N room-server instances
sharing one redis-server (``python -m ivisit_nb server --redis URL``), for each N
of ``--instances`` (default 1, 2 and 4), after the single-process embedded
server (in-memory directory, no Redis) as the baseline, in the same run. The
100 room anchors join first; then the other 1,900 connect (not timed) and all
send ``hello`` at once. Measured: join-to-presence (``hello`` sent -> the room's
anchor, on whichever instance, receives ``joined``) p50 and p99, and the join
rate (1,900 joins / first ``hello`` sent -> last ``joined`` seen). ``--runs``
runs (default 3) of every configuration, interleaved; the summary gives the
median of the runs. The servers and Redis are pinned to CPU 1 and the clients to
CPU 0 when there are two.

Parts are functions registered in :data:`PARTS`; ``main()`` runs the ones asked
for (by default all but ``cluster``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import platform
import resource
import shutil
import socket
import subprocess
import statistics
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import aiohttp

ROOT = Path(__file__).absolute().parents[1]
ROOMS = 50

# ----------------------------------------------------------------------------- helpers


@dataclass
class Row:
    """One line of the results table (times in milliseconds)."""

    part: str
    clients: int
    measure: str
    samples: list[float] = field(repr=False)
    note: str = ""
    rate: float | None = None  # joins per second, for the cluster part

    @property
    def n(self) -> int:
        return len(self.samples)

    def pct(self, p: float) -> float:
        """Nearest-rank percentile."""
        if not self.samples:
            return float("nan")
        xs = sorted(self.samples)
        return xs[max(0, math.ceil(p / 100 * len(xs)) - 1)]

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        del d["samples"]
        d.update(n=self.n, p50_ms=round(self.pct(50), 3), p99_ms=round(self.pct(99), 3),
                 max_ms=round(self.pct(100), 3))
        return d


def print_table(rows: list[Row], out: Any = sys.stdout) -> None:
    """Rows as a fixed-width table."""
    head = f"{'part':<6} {'clients':>7}  {'measure':<34} {'n':>5} {'p50 ms':>8} {'p99 ms':>8} {'max ms':>8}  note"
    print(head, file=out)
    print("-" * len(head), file=out)
    for r in rows:
        print(
            f"{r.part:<6} {r.clients:>7}  {r.measure:<34} {r.n:>5} {r.pct(50):>8.3f} {r.pct(99):>8.3f} "
            f"{r.pct(100):>8.3f}  {r.note}",
            file=out,
        )
    out.flush()


def raise_fd_limit(wanted: int) -> int:
    """Raise the soft open-file limit towards ``wanted`` (capped by the hard limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft != resource.RLIM_INFINITY and soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
        soft = target
    return soft


def machine() -> str:
    """nproc and CPU model, for the record."""
    model = platform.processor() or "?"
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    return f"{os.cpu_count()} CPUs, {model}, Python {platform.python_version()}"


PIN = True  # --no-pin: let the OS place servers and clients on any core


def _pin(pid: int, cpu: int) -> bool:
    if not PIN:
        return False
    try:
        if len(os.sched_getaffinity(0)) < 2:
            return False
        os.sched_setaffinity(pid, {cpu})
        return True
    except (AttributeError, OSError):
        return False


@contextlib.contextmanager
def redis_process() -> Iterator[str]:
    """Start Debian's redis-server on a free port of 127.0.0.1 (no persistence); yield its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        raise SystemExit("the cluster part needs Debian's redis-server: apt-get install redis-server")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    proc = subprocess.Popen(
        [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=0.5) as c:
                    c.sendall(b"PING\r\n")
                    if c.recv(16).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        _pin(proc.pid, 1)
        yield f"redis://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(10)


@contextlib.contextmanager
def server_process(*args: str) -> Iterator[str]:
    """Start ``python -m ivisit_nb server --port 0 ARGS`` and yield its URL; pinned to CPU 1."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ivisit_nb", "server", "--port", "0", *args],
        stdout=subprocess.PIPE, text=True, env=env, cwd=ROOT,
    )
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        prefix = "listening on "
        if not line.startswith(prefix):
            raise RuntimeError(f"server did not start: {line!r}")
        # keep draining its stdout (one line per join/leave) so it never blocks on a full pipe
        threading.Thread(target=proc.stdout.read, daemon=True).start()
        _pin(proc.pid, 1)
        yield line[len(prefix):].strip()
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


# ----------------------------------------------------------------------------- clients


class Bench:
    """Shared client-side state: who waits for which presence event."""

    def __init__(self) -> None:
        self.presence: dict[tuple[str, str], asyncio.Future[float]] = {}

    def expect_joined(self, observer: str, user: str) -> asyncio.Future[float]:
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        self.presence[(observer, user)] = fut
        return fut


class Client:
    """One raw websocket client; a reader task timestamps what arrives."""

    def __init__(self, bench: Bench, name: str, room: str) -> None:
        self.bench, self.name, self.room = bench, name, room
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.reply: asyncio.Future[tuple[float, dict[str, Any]]] | None = None
        self.ws_pong: asyncio.Future[float] | None = None
        self.task: asyncio.Task[None] | None = None

    async def connect(self, session: aiohttp.ClientSession, url: str) -> None:
        self.ws = await session.ws_connect(url, autoping=False)
        self.task = asyncio.ensure_future(self._read(self.ws))

    def hello_text(self) -> str:
        return json.dumps({"type": "hello", "version": 1, "user": self.name, "room": self.room})

    def expect_reply(self) -> asyncio.Future[tuple[float, dict[str, Any]]]:
        self.reply = asyncio.get_running_loop().create_future()
        return self.reply

    async def _read(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        clock = time.perf_counter
        presence = self.bench.presence
        try:
            while True:
                msg = await ws.receive()
                t = clock()
                if msg.type is aiohttp.WSMsgType.TEXT:
                    data = json.loads(msg.data)
                    kind = data.get("type")
                    if kind == "joined":
                        fut = presence.pop((self.name, data["user"]), None)
                        if fut is not None and not fut.done():
                            fut.set_result(t)
                    elif kind in ("welcome", "pong", "error"):
                        if self.reply is not None and not self.reply.done():
                            self.reply.set_result((t, data))
                elif msg.type is aiohttp.WSMsgType.PONG:
                    if self.ws_pong is not None and not self.ws_pong.done():
                        self.ws_pong.set_result(t)
                elif msg.type is aiohttp.WSMsgType.PING:
                    await ws.pong(msg.data)
                elif msg.type in (aiohttp.WSMsgType.CLOSE, aiohttp.WSMsgType.CLOSING,
                                  aiohttp.WSMsgType.CLOSED, aiohttp.WSMsgType.ERROR):
                    break
        finally:
            if self.reply is not None and not self.reply.done():
                self.reply.set_exception(ConnectionError(f"{self.name}: closed ({ws.close_code})"))

    async def join(self) -> dict[str, Any]:
        assert self.ws is not None
        reply = self.expect_reply()
        await self.ws.send_str(self.hello_text())
        _, data = await asyncio.wait_for(reply, 30)
        if data.get("type") != "welcome":
            raise RuntimeError(f"{self.name} refused: {data}")
        return data

    async def leave(self) -> None:
        """Send leave and wait until the server has closed us (so the name is free)."""
        assert self.ws is not None and self.task is not None
        await self.ws.send_str('{"type":"leave"}')
        await asyncio.wait_for(self.task, 10)
        await self.ws.close()

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self.task is not None:
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)


def _ms(seconds: float) -> float:
    return seconds * 1000.0


async def _join_storm(bench: Bench, session: aiohttp.ClientSession, url: str, clients: list[Client]) -> list[float]:
    anchors, rest = clients[:ROOMS], clients[ROOMS:]
    for c in anchors:
        await c.connect(session, url)
        await c.join()
    sem = asyncio.Semaphore(50)

    async def open_one(c: Client) -> None:
        async with sem:
            await c.connect(session, url)

    await asyncio.gather(*(open_one(c) for c in rest))
    clock = time.perf_counter
    sent: dict[str, float] = {}
    waits: list[tuple[str, asyncio.Future[float]]] = []
    replies = []
    for i, c in enumerate(rest):
        waits.append((c.name, bench.expect_joined(anchors[i % ROOMS].name, c.name)))
        replies.append(c.expect_reply())
    for c in rest:  # fire every hello as fast as the loop can
        assert c.ws is not None
        sent[c.name] = clock()
        await c.ws.send_str(c.hello_text())
    await asyncio.wait_for(asyncio.gather(*(f for _, f in waits), *replies), 60)
    for r in replies:
        if r.result()[1].get("type") != "welcome":
            raise RuntimeError(f"join refused during the storm: {r.result()[1]}")
    return [_ms(f.result() - sent[name]) for name, f in waits]


async def _ws_ping_pong(clients: list[Client], samples: int) -> list[float]:
    out = []
    loop = asyncio.get_running_loop()
    for i in range(samples):
        c = clients[i % len(clients)]
        assert c.ws is not None
        c.ws_pong = loop.create_future()
        t0 = time.perf_counter()
        await c.ws.ping()
        t1 = await asyncio.wait_for(c.ws_pong, 10)
        out.append(_ms(t1 - t0))
    return out


async def _json_ping_pong(clients: list[Client], samples: int) -> list[float]:
    out = []
    for i in range(samples):
        c = clients[i % len(clients)]
        assert c.ws is not None
        reply = c.expect_reply()
        t0 = time.perf_counter()
        await c.ws.send_str('{"type":"ping"}')
        t1, data = await asyncio.wait_for(reply, 10)
        assert data == {"type": "pong"}, data
        out.append(_ms(t1 - t0))
    return out


async def _rejoins(
    bench: Bench, session: aiohttp.ClientSession, url: str, clients: list[Client], samples: int
) -> tuple[list[float], list[float]]:
    out: list[float] = []
    welcomes: list[float] = []
    movers = len(clients) - ROOMS
    for i in range(samples):
        k = ROOMS + i % movers
        c, anchor = clients[k], clients[k % ROOMS]
        await c.leave()
        await c.connect(session, url)  # not timed
        seen = bench.expect_joined(anchor.name, c.name)
        reply = c.expect_reply()
        assert c.ws is not None
        t0 = time.perf_counter()
        await c.ws.send_str(c.hello_text())
        t1 = await asyncio.wait_for(seen, 10)
        tw, data = await asyncio.wait_for(reply, 10)
        if data.get("type") != "welcome":
            raise RuntimeError(f"re-join refused: {data}")
        out.append(_ms(t1 - t0))
        welcomes.append(_ms(tw - t0))
    return out, welcomes


async def _part1_size(url: str, n: int, samples: int) -> list[Row]:
    bench = Bench()
    clients = [Client(bench, f"u{i:04d}", f"room{i % ROOMS:02d}") for i in range(n)]
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            storm = await _join_storm(bench, session, url, clients)
            ws_rtt = await _ws_ping_pong(clients, samples)
            json_rtt = await _json_ping_pong(clients, samples)
            rejoin, welcome = await _rejoins(bench, session, url, clients, min(samples, n - ROOMS))
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)
    per_room = n // ROOMS
    return [
        Row("join", n, "ping->pong, websocket level", ws_rtt, "baseline"),
        Row("join", n, "ping->pong, JSON", json_rtt),
        Row("join", n, "join->presence, one at a time", rejoin, f"{per_room} per room"),
        Row("join", n, "hello->welcome (same joins)", welcome, "the joiner's own reply"),
        Row("join", n, "join->presence, all at once", storm, f"{n - ROOMS} hellos in one burst"),
    ]


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop  # type: ignore[import-not-found]

        return uvloop.new_event_loop()
    except ImportError:
        return asyncio.new_event_loop()


def part1_join_latency(args: argparse.Namespace) -> list[Row]:
    """Join-to-presence latency vs a ping-pong baseline, for each client count."""
    sizes = [200] if args.quick else [200, 1000]
    raise_fd_limit(max(sizes) * 2 + 256)
    rows: list[Row] = []
    for n in sizes:
        samples = 200 if args.quick else min(n, 1000)
        with server_process() as url:
            _pin(0, 0)
            loop = _new_loop()
            try:
                t0 = time.perf_counter()
                size_rows = loop.run_until_complete(_part1_size(url, n, samples))
                took = time.perf_counter() - t0
            finally:
                loop.close()
        rows.extend(size_rows)
        print(f"  {n} clients done in {took:.1f} s", file=sys.stderr, flush=True)
    return rows


async def _raw_pair_connect() -> float:
    """Baseline: seconds for two bare aiortc peers in one process to open a data channel."""
    from aiortc import RTCConfiguration, RTCPeerConnection

    a, b = RTCPeerConnection(RTCConfiguration(iceServers=[])), RTCPeerConnection(RTCConfiguration(iceServers=[]))
    opened = asyncio.Event()
    t0 = time.perf_counter()
    ch = a.createDataChannel("control", negotiated=True, id=0)
    b.createDataChannel("control", negotiated=True, id=0)
    ch.on("open", opened.set)
    await a.setLocalDescription(await a.createOffer())
    await b.setRemoteDescription(a.localDescription)
    await b.setLocalDescription(await b.createAnswer())
    await a.setRemoteDescription(b.localDescription)
    await opened.wait()
    took = time.perf_counter() - t0
    await a.close()
    await b.close()
    return took


def part2_mesh(args: argparse.Namespace) -> list[Row]:
    """Time until every link is connected for 2, 4 and 8 sessions joining a room at once."""
    import tempfile

    from ivisit_nb import Session

    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, range(os.cpu_count() or 1))  # part 1 pinned us to one core
    runs = 2 if args.quick else 3
    rows: list[Row] = []
    loop = _new_loop()
    try:
        base = [loop.run_until_complete(_raw_pair_connect()) * 1000 for _ in range(runs * 2)]
    finally:
        loop.close()
    rows.append(Row("mesh", 2, "bare aiortc pair, one process", base, "baseline"))
    with server_process() as url:
        for n in (2, 4, 8):
            samples = []
            for run in range(runs):
                with tempfile.TemporaryDirectory() as tmp:
                    t0 = time.perf_counter()
                    sessions = [
                        Session.join(url, f"u{i}", f"mesh{n}-{run}", config_dir=tmp, inbox=f"{tmp}/u{i}")
                        for i in range(n)
                    ]
                    try:
                        for s in sessions:
                            s.wait_for_peers([u.user for u in sessions if u is not s], timeout=120).wait()
                        samples.append((time.perf_counter() - t0) * 1000)
                    finally:
                        for s in sessions:
                            s.leave()
            links = n * (n - 1) // 2
            rows.append(Row("mesh", n, f"all {links} links connected", samples, "from first join"))
            print(f"  mesh of {n}: {statistics.median(samples):.0f} ms (median of {runs})", file=sys.stderr, flush=True)
    return rows


CLUSTER_CLIENTS = 2000
CLUSTER_ROOMS = 100


async def _cluster_storm(urls: list[str], n: int, rooms: int) -> tuple[list[float], float]:
    """Join-to-presence latencies (ms) of a join storm over ``urls``, and joins per second."""
    bench = Bench()
    clients = [Client(bench, f"u{i:04d}", f"room{i % rooms:03d}") for i in range(n)]
    where = {c.name: urls[i % len(urls)] for i, c in enumerate(clients)}
    anchors, rest = clients[:rooms], clients[rooms:]
    connector = aiohttp.TCPConnector(limit=0)
    sem = asyncio.Semaphore(50)

    async def open_one(c: Client) -> None:
        async with sem:
            await c.connect(session, where[c.name])

    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            await asyncio.gather(*(open_one(c) for c in anchors))
            for c in anchors:
                await c.join()
            await asyncio.gather(*(open_one(c) for c in rest))
            sent: dict[str, float] = {}
            waits = [(c.name, bench.expect_joined(anchors[i % rooms].name, c.name)) for i, c in enumerate(rest, rooms)]
            replies = [c.expect_reply() for c in rest]
            clock = time.perf_counter
            for c in rest:
                assert c.ws is not None
                sent[c.name] = clock()
                await c.ws.send_str(c.hello_text())
            await asyncio.wait_for(asyncio.gather(*(f for _, f in waits), *replies), 120)
            for r in replies:
                if r.result()[1].get("type") != "welcome":
                    raise RuntimeError(f"join refused during the storm: {r.result()[1]}")
            first = min(sent.values())
            last = max(f.result() for _, f in waits)
            return [_ms(f.result() - sent[name]) for name, f in waits], len(rest) / (last - first)
        finally:
            await asyncio.gather(*(c.close() for c in clients), return_exceptions=True)


@contextlib.contextmanager
def _servers(count: int, redis_url: str | None) -> Iterator[list[str]]:
    with contextlib.ExitStack() as stack:
        args = ("--redis", redis_url) if redis_url else ()
        yield [stack.enter_context(server_process(*args)) for _ in range(count)]


def part3_cluster(args: argparse.Namespace) -> list[Row]:
    """Join storms of 2,000 clients in 100 rooms: embedded server vs clusters of N instances."""
    counts = [int(x) for x in str(args.instances or "1,2,4").split(",") if x.strip()]
    n, rooms = args.clients, CLUSTER_ROOMS
    raise_fd_limit(n * 2 + 512)
    configs: list[tuple[str, int, bool]] = [("embedded server, 1 process (baseline)", 1, False)]
    configs += [(f"cluster, {k} instance{'s' if k > 1 else ''} + Redis", k, True) for k in counts]
    rows: list[Row] = []
    db = 0
    with redis_process() as redis_base:
        for run in range(args.runs):
            for label, count, clustered in configs:
                db = (db + 1) % 16  # a fresh database for every storm
                with _servers(count, f"{redis_base}/{db}" if clustered else None) as urls:
                    _pin(0, 0)
                    loop = _new_loop()
                    try:
                        samples, rate = loop.run_until_complete(_cluster_storm(urls, n, rooms))
                    finally:
                        loop.close()
                row = Row("cluster", n, label, samples, f"run {run + 1}", rate)
                rows.append(row)
                print(f"  run {run + 1}: {label}: p50 {row.pct(50):.1f} ms, p99 {row.pct(99):.1f} ms, "
                      f"{rate:.0f} joins/s", file=sys.stderr, flush=True)
    return rows


def print_cluster_summary(rows: list[Row], out: Any = sys.stdout) -> None:
    """Median over the runs of each configuration's p50, p99 and join rate."""
    by: dict[str, list[Row]] = {}
    for r in rows:
        by.setdefault(r.measure, []).append(r)
    if not by:
        return
    base = None
    print(f"\ncluster summary: median of {max(len(v) for v in by.values())} runs "
          f"({rows[0].clients} clients, {CLUSTER_ROOMS} rooms, join storm)", file=out)
    print(f"{'configuration':<40} {'p50 ms':>8} {'p99 ms':>8} {'joins/s':>8} {'rate x':>7}", file=out)
    for measure, runs in by.items():
        p50 = statistics.median(r.pct(50) for r in runs)
        p99 = statistics.median(r.pct(99) for r in runs)
        rate = statistics.median(r.rate or 0.0 for r in runs)
        if measure.startswith("cluster, 1 instance"):
            base = rate
        ratio = f"{rate / base:7.2f}" if base else "       "
        print(f"{measure:<40} {p50:>8.1f} {p99:>8.1f} {rate:>8.0f} {ratio}", file=out)
        print(f"{'':<40} runs: p50 {' / '.join(f'{r.pct(50):.1f}' for r in runs)}; "
              f"p99 {' / '.join(f'{r.pct(99):.1f}' for r in runs)}; "
              f"joins/s {' / '.join(f'{r.rate or 0:.0f}' for r in runs)}", file=out)
    out.flush()


PARTS: dict[str, Callable[[argparse.Namespace], list[Row]]] = {
    "join": part1_join_latency,
    "mesh": part2_mesh,
    "cluster": part3_cluster,
}
DEFAULT_PARTS = ["join", "mesh"]


def main(argv: list[str] | None = None) -> int:
    """Run the requested parts (default: all) and print one table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer samples")
    p.add_argument("--part", action="append", choices=list(PARTS), help="run only this part (repeatable)")
    p.add_argument("--json", action="store_true", help="also print each row as a JSON line")
    p.add_argument("--instances", default=None, metavar="N[,N...]",
                   help="instance counts for the cluster part (default 1,2,4); alone, runs only that part")
    p.add_argument("--clients", type=int, default=CLUSTER_CLIENTS, help="clients in the cluster part (default 2000)")
    p.add_argument("--runs", type=int, default=3, help="runs of each cluster configuration (default 3)")
    p.add_argument("--no-pin", action="store_true", help="do not pin servers to CPU 1 and clients to CPU 0")
    args = p.parse_args(argv)
    global PIN
    PIN = not args.no_pin
    try:
        import uvloop  # type: ignore[import-not-found]  # noqa: F401

        loop_kind = "uvloop"
    except ImportError:
        loop_kind = "asyncio"
    print(f"# {time.strftime('%Y-%m-%d %H:%M:%S %Z')}; {machine()}; event loops: {loop_kind}", flush=True)
    rows: list[Row] = []
    parts = args.part or (["cluster"] if args.instances else DEFAULT_PARTS)
    for name in parts:
        rows.extend(PARTS[name](args))
    print_table(rows)
    print_cluster_summary([r for r in rows if r.part == "cluster"])
    for n in sorted({r.clients for r in rows if r.part == "join"}):
        by = {r.measure: r for r in rows if r.part == "join" and r.clients == n}
        base = by.get("ping->pong, websocket level")
        one = by.get("join->presence, one at a time")
        if base and one:
            print(f"ratio at {n} clients: join->presence p50 / ws ping->pong p50 = {one.pct(50) / base.pct(50):.2f}")
    mesh = {r.clients: r for r in rows if r.part == "mesh"}
    if 2 in mesh and any(r.measure.startswith("bare") for r in rows if r.part == "mesh"):
        bare = [r for r in rows if r.part == "mesh" and r.measure.startswith("bare")][0]
        for n in (2, 4, 8):
            m = [r for r in rows if r.part == "mesh" and r.clients == n and not r.measure.startswith("bare")]
            if m:
                print(f"ratio for {n} sessions: mesh p50 / bare pair p50 = {m[0].pct(50) / bare.pct(50):.2f}")
    if args.json:
        for r in rows:
            print(json.dumps(r.as_dict()))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
