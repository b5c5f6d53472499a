"""ivisit_nb against magic-wormhole and a bare TLS stream: throughput, peak RSS, chat RTT, fallback.

Everything runs on 127.0.0.1, each side in a process of its own, with one payload of
random bytes (made once in a temp dir, deleted at the end). Every tool runs once per
round and the rounds repeat, so drift on a noisy machine hits all tools alike.

Tools (``--tools``, comma-separated; all by default):

- ``wormhole``: magic-wormhole's ``wormhole send`` / ``wormhole receive``, through a
  mailbox server and a transit relay that this bench starts on 127.0.0.1 and stops at the
  end. Timed from starting both commands until the receiver exits (so it includes the
  two programs' start-up and the PAKE); the received file's hash is checked.
- ``tls``: the bare limit for a Python TLS stream. A TLS 1.3 client and server (asyncio
  streams, two processes, a self-signed certificate made at run time) move SIZE bytes in
  1 MiB writes, no disk. Timed from connect (handshake included) until the server's
  one-byte receipt arrives.
- ``tls-disk``: the same TLS pair, but a thread in the receiver writes every chunk to a
  file and BLAKE3-hashes it, and the receipt waits for both: what the disk and the hash
  cost a plain receiver that stores and verifies what arrives (stream reads, no buffer
  reuse, no write-behind; ivisit_nb's receiver does better than this plain one).
- ``direct`` and ``datachannel``: ivisit_nb, a sender and a receiver joined to an
  embedded room server with ``lane="direct"`` / ``lane="datachannel"``. Timed from
  ``send_file`` (so BLAKE3 hashing of the file, the offer and the accept count) until the
  receiver's transfer is ``done`` (written, verified, in its inbox); the bench checks
  the received file's hash and the lane the transfer reports.
- ``raw``: a bare aiortc data channel (``bench/transfer.py``'s baseline), for the
  data channel's ratio. Timed from the first message until the receiver has all bytes.
- ``chat``: a direct-lane transfer during which the sender says a timestamp every 100 ms
  and the receiver echoes it; round trips of pings sent while bytes were moving, pooled
  over the rounds.
- ``fallback`` and ``fallback-silent``: ivisit_nb with ``lane="auto"`` (the direct lane
  first for large files) while the receiver advertises a direct candidate that refuses
  connections (``$IVISIT_NB_DIRECT_CANDIDATES=127.0.0.1:1``) or one that accepts TCP but
  never answers TLS (a socket this bench listens on and never reads). Reports the time
  from bob's accept until his first file byte arrives on the data channel, and checks
  that the transfer completes on the data channel and verifies. Each runs
  ``--fallback-runs`` times (default once) after the rounds, as it moves the whole file
  at data-channel speed.

Peak RSS is each process's own kernel high-water mark (``VmHWM``), read by the process
itself at the end of its run, or polled every 20 ms for the wormhole programs. CPU
seconds are per side: the timed part for ivisit_nb, TLS and raw aiortc, the whole
program (start-up included) for wormhole. A run that fails is reported and the bench
goes on; Ctrl-C stops it, stops the servers and processes it started, and prints what
it has.

    python bench/compare.py                          # 1 GiB, 3 rounds, all tools
    python bench/compare.py --size 256M --runs 3
    python bench/compare.py --tools direct,tls --size 4G --runs 1
    python bench/compare.py --no-uvloop              # plain asyncio loops for ivisit_nb, raw and TLS

Needs ``pip install -e '.[bench]'`` (magic-wormhole, its mailbox server and transit relay, psutil).
"""

from __future__ import annotations

import argparse
import asyncio
import inspect
import multiprocessing as mp
import os
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

sys.path.insert(0, str(Path(__file__).resolve().parent))  # _common and transfer, also in spawned children

from _common import (  # noqa: E402
    MiB, RssWatcher, file_hash, machine_line, make_file, load_average, parse_size, peak_rss_mib, size_label, stamp, version_of,
)

ALL_TOOLS = ("wormhole", "tls", "tls-disk", "direct", "datachannel", "raw", "chat", "fallback", "fallback-silent")
FALLBACK_TOOLS = ("fallback", "fallback-silent")
ROUND_TOOLS = ("wormhole", "tls", "tls-disk", "direct", "datachannel", "raw", "chat")  # fallback runs after the rounds
WORMHOLE_CODE = "7-crossover-clockwork"
CANDIDATES_ENV = "IVISIT_NB_DIRECT_CANDIDATES"  # ivisit_nb/engine/direct.py reads it in the receiver's listener
REFUSING_CANDIDATE = "127.0.0.1:1"  # nothing listens on port 1: connections are refused at once
CHAT_EVERY = 0.1  # seconds between the sender's chat pings
BIN = Path(sys.executable).parent  # the venv's bin: wormhole, twist

_children: list[Any] = []  # every process we start, so Ctrl-C or an error can stop them


class BenchError(RuntimeError):
    """A run went wrong; the message says which tool, which side and what happened."""


def say(text: str) -> None:
    """Progress output, flushed at once."""
    print(text, flush=True)


def run_timeout(size: int) -> float:
    """Seconds a run may take: a minute of set-up plus 2 MB/s (well below the slowest tool)."""
    return 60 + size / 2e6


def mbs(size: int, seconds: float) -> float:
    return size / seconds / 1e6


def use_uvloop_here(use_uvloop: bool) -> None:
    """Install uvloop as this process's asyncio policy when asked and installed."""
    if use_uvloop:
        try:
            import uvloop
        except ImportError:
            return
        uvloop.install()


def free_port() -> int:
    """A TCP port that was free on 127.0.0.1 a moment ago."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, proc: subprocess.Popen, what: str, log: Path, timeout: float = 30.0) -> None:
    """Return once something accepts TCP connections on 127.0.0.1:``port``; ``BenchError`` if ``proc`` dies first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise BenchError(f"{what} exited with code {proc.returncode} before listening on port {port}:\n"
                             f"{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise BenchError(f"{what} did not listen on port {port} within {timeout:.0f} s; its log:\n{log.read_text()[-2000:]}")


def stop_process(proc: Any, timeout: float = 5.0) -> None:
    """Stop one process we started (a Popen or a multiprocessing Process): TERM, then KILL."""
    alive = proc.poll() is None if isinstance(proc, subprocess.Popen) else proc.is_alive()
    if not alive:
        return
    proc.terminate()
    try:
        if isinstance(proc, subprocess.Popen):
            proc.wait(timeout)
        else:
            proc.join(timeout)
            if proc.is_alive():
                raise subprocess.TimeoutExpired("process", timeout)
    except subprocess.TimeoutExpired:
        proc.kill()


def receive(conn: Any, proc: Any, what: str, timeout: float) -> Any:
    """The next message from a child process; ``BenchError`` if it dies or stays silent past ``timeout``."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if conn.poll(0.2):
            msg = conn.recv()
            if isinstance(msg, dict) and "error" in msg:
                raise BenchError(f"{what} failed: {msg['error']}")
            return msg
        if not proc.is_alive():
            if conn.poll(0):
                continue
            raise BenchError(f"{what} exited with code {proc.exitcode} without reporting (its output is above)")
    raise BenchError(f"{what} reported nothing within {timeout:.0f} s")


def child_main(fn: Callable[..., None], conn: Any, *args: Any) -> None:
    """Run ``fn(conn, *args)`` in a child; an exception is reported to the parent as its message."""
    try:
        fn(conn, *args)
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        try:
            conn.send({"error": f"{type(exc).__name__}: {exc}"})
        finally:
            raise


def spawn(fn: Callable[..., None], *args: Any) -> tuple[Any, Any]:
    """Start ``fn(conn, *args)`` in a fresh (spawned) process; returns (process, our end of its pipe)."""
    ctx = mp.get_context("spawn")
    ours, theirs = ctx.Pipe()
    proc = ctx.Process(target=child_main, args=(fn, theirs, *args), daemon=True)
    proc.start()
    _children.append(proc)
    return proc, ours


# -- magic-wormhole ------------------------------------------------------------------------------


class WormholeServers:
    """A magic-wormhole mailbox server and transit relay on 127.0.0.1, started and stopped by us."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.mailbox_port, self.relay_port = free_port(), free_port()
        self.procs: list[subprocess.Popen] = []

    def start(self) -> None:
        twist = BIN / "twist"
        if not twist.exists():
            raise BenchError(f"{twist} is missing; install the bench extra: pip install -e '.[bench]'")
        for what, args, port in (
            ("mailbox server", ["wormhole-mailbox", "--port", f"tcp:{self.mailbox_port}:interface=127.0.0.1"], self.mailbox_port),
            ("transit relay", ["transitrelay", "--port", f"tcp:{self.relay_port}:interface=127.0.0.1"], self.relay_port),
        ):
            log = self.workdir / f"{args[0]}.log"
            with open(log, "wb") as out:
                proc = subprocess.Popen([str(twist), *args], cwd=self.workdir, stdout=out, stderr=subprocess.STDOUT)
            self.procs.append(proc)
            _children.append(proc)
            wait_for_port(port, proc, f"the wormhole {what} (twist {args[0]})", log)
        say(f"  wormhole mailbox server on 127.0.0.1:{self.mailbox_port}, transit relay on 127.0.0.1:{self.relay_port} "
            f"(pids {self.procs[0].pid}, {self.procs[1].pid})")

    def stop(self) -> None:
        for proc in self.procs:
            stop_process(proc)
        self.procs.clear()

    def command(self, *args: str) -> list[str]:
        return [str(BIN / "wormhole"), "--relay-url", f"ws://127.0.0.1:{self.mailbox_port}/v1",
                "--transit-helper", f"tcp:127.0.0.1:{self.relay_port}", *args]


def run_wormhole(servers: WormholeServers, path: Path, size: int, digest: str, workdir: Path) -> dict[str, Any]:
    """One ``wormhole send`` / ``wormhole receive`` of ``path``; time until the receiver exits."""
    out = workdir / "wormhole-received.bin"
    logs = {side: workdir / f"wormhole-{side}.log" for side in ("send", "recv")}
    commands = {
        "send": servers.command("send", "--hide-progress", "--code", WORMHOLE_CODE, str(path)),
        "recv": servers.command("receive", "--hide-progress", "--accept-file", "--output-file", str(out), WORMHOLE_CODE),
    }
    procs: dict[str, subprocess.Popen] = {}
    watchers: dict[str, RssWatcher] = {}
    timeout = run_timeout(size)
    t0 = time.perf_counter()
    for side in ("send", "recv"):
        with open(logs[side], "wb") as log:
            procs[side] = subprocess.Popen(commands[side], cwd=workdir, stdout=log, stderr=subprocess.STDOUT,
                                           stdin=subprocess.DEVNULL)
        _children.append(procs[side])
        watchers[side] = RssWatcher(procs[side].pid)
    try:
        procs["recv"].wait(timeout)
        seconds = time.perf_counter() - t0
        procs["send"].wait(30)
    except subprocess.TimeoutExpired:
        raise BenchError(f"wormhole did not finish within {timeout:.0f} s; receiver log:\n"
                         f"{logs['recv'].read_text()[-2000:]}") from None
    finally:
        for proc in procs.values():
            stop_process(proc)
        rss = {side: w.stop() for side, w in watchers.items()}
        cpu = {side: w.cpu for side, w in watchers.items()}
    for side, proc in procs.items():
        if proc.returncode != 0:
            raise BenchError(f"wormhole {side} exited with code {proc.returncode}; its log:\n{logs[side].read_text()[-2000:]}")
    if not out.exists():
        raise BenchError(f"wormhole receive exited cleanly but {out} is missing; log:\n{logs['recv'].read_text()[-2000:]}")
    got = file_hash(out)
    out.unlink()
    if got != digest:
        raise BenchError(f"wormhole delivered a file whose BLAKE3 is {got[:16]}..., not {digest[:16]}...")
    return {"seconds": seconds, "rss_send": rss["send"], "rss_recv": rss["recv"],
            "cpu_send": cpu["send"], "cpu_recv": cpu["recv"], "note": ""}


# -- bare TLS 1.3 --------------------------------------------------------------------------------


def make_certificate(workdir: Path) -> tuple[Path, Path]:
    """A self-signed certificate for "localhost" and 127.0.0.1 (EC P-256), as PEM files in ``workdir``."""
    import datetime
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "localhost")])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.SubjectAlternativeName(
            [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]), critical=False)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = workdir / "bench-cert.pem", workdir / "bench-key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    return cert_path, key_path


def tls_server(conn: Any, cert: str, key: str, size: int, use_uvloop: bool, disk: str | None = None) -> None:
    """Child: accept one TLS 1.3 connection, read ``size`` bytes, answer one byte, report peak RSS.

    With ``disk`` (a file path) it also does what a verified-on-arrival receiver must: a
    thread writes every chunk to the file and BLAKE3-hashes it (one pass), and the receipt
    goes out once all is written and hashed: what storing and verifying costs a plain
    receiver (stream reads, no buffer reuse, no write-behind)."""
    use_uvloop_here(use_uvloop)
    import queue
    import threading

    import blake3

    chunks: "queue.Queue[bytes | None]" = queue.Queue(maxsize=8)  # at most 8 MiB waiting for the disk
    stored = threading.Event()

    def store() -> None:
        fd = os.open(disk, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        hasher = blake3.blake3()
        while (chunk := chunks.get()) is not None:
            os.write(fd, chunk)
            hasher.update(chunk)
        os.close(fd)
        hasher.hexdigest()
        stored.set()

    if disk:
        threading.Thread(target=store, daemon=True).start()

    async def main() -> None:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        ctx.load_cert_chain(cert, key)
        finished: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            got = 0
            try:
                while got < size:
                    chunk = await reader.read(MiB)
                    if not chunk:
                        break
                    got += len(chunk)
                    if disk:
                        try:
                            chunks.put_nowait(chunk)
                        except queue.Full:  # the disk is behind: wait off the loop
                            await asyncio.get_running_loop().run_in_executor(None, chunks.put, chunk)
                if disk:
                    await asyncio.get_running_loop().run_in_executor(None, chunks.put, None)
                    await asyncio.get_running_loop().run_in_executor(None, stored.wait)
                    os.unlink(disk)
                writer.write(b"k")
                await writer.drain()
                writer.close()
            finally:
                if not finished.done():
                    finished.set_result(got)

        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ctx, limit=4 * MiB)
        conn.send(server.sockets[0].getsockname()[1])
        c0 = time.process_time()
        got = await finished
        server.close()
        conn.send({"got": got, "rss": peak_rss_mib(), "cpu": time.process_time() - c0})

    asyncio.run(main())


def tls_client(conn: Any, cert: str, port: int, size: int, use_uvloop: bool) -> None:
    """Child: on "go", connect with TLS 1.3, write ``size`` bytes in 1 MiB writes, wait for the receipt."""
    use_uvloop_here(use_uvloop)

    async def main() -> None:
        ctx = ssl.create_default_context(cafile=cert)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_3
        payload = os.urandom(MiB)
        conn.recv()  # go
        t0, c0 = time.perf_counter(), time.process_time()
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
        version = writer.get_extra_info("ssl_object").version()
        sent = 0
        while sent < size:
            n = min(MiB, size - sent)
            writer.write(payload if n == MiB else payload[:n])
            await writer.drain()
            sent += n
        receipt = await reader.readexactly(1)
        seconds = time.perf_counter() - t0
        writer.close()
        conn.send({"seconds": seconds, "version": version, "receipt": receipt, "rss": peak_rss_mib(),
                   "cpu": time.process_time() - c0})

    asyncio.run(main())


def run_tls(size: int, cert: Path, key: Path, use_uvloop: bool, disk: str | None = None) -> dict[str, Any]:
    """One bare TLS 1.3 transfer of ``size`` bytes between two processes (``disk``: see tls_server)."""
    timeout = run_timeout(size)
    started: list[Any] = []
    try:
        server, sconn = spawn(tls_server, str(cert), str(key), size, use_uvloop, disk)
        started.append(server)
        port = receive(sconn, server, "the TLS server", 30)
        client, cconn = spawn(tls_client, str(cert), port, size, use_uvloop)
        started.append(client)
        cconn.send("go")
        c = receive(cconn, client, "the TLS client", timeout)
        s = receive(sconn, server, "the TLS server", 30)
        client.join(10)
        server.join(10)
    finally:
        for proc in started:
            stop_process(proc)
    if s["got"] != size:
        raise BenchError(f"the TLS server got {s['got']} bytes, not {size}")
    if c["version"] != "TLSv1.3":
        raise BenchError(f"the TLS pair negotiated {c['version']}, not TLSv1.3")
    return {"seconds": c["seconds"], "rss_send": c["rss"], "rss_recv": s["rss"], "cpu_send": c["cpu"],
            "cpu_recv": s["cpu"], "note": ""}


# -- raw aiortc (bench/transfer.py's baseline) ---------------------------------------------------


def run_raw(size: int, use_uvloop: bool) -> dict[str, Any]:
    """One raw aiortc data-channel transfer, through ``bench/transfer.py``'s ``run_raw``."""
    import transfer

    r = transfer.run_raw(size, use_uvloop)
    return {"seconds": r["seconds"], "rss_send": r["rss_send"], "rss_recv": r["rss_recv"], "cpu_send": r["cpu_send"],
            "cpu_recv": r["cpu_recv"], "note": ""}


# -- ivisit_nb -----------------------------------------------------------------------------------


def lane_supported() -> bool:
    """True once the direct lane is there: ``ivisit_nb.engine.direct`` and a way to choose a lane."""
    import importlib.util

    from ivisit_nb import Session, settings

    if importlib.util.find_spec("ivisit_nb.engine.direct") is None:
        return False
    return "lane" in inspect.signature(Session.__init__).parameters or "lane" in settings.FACTORY_DEFAULTS


def ivisit_side(conn: Any, role: str, url: str, workdir: str, lane: str | None, env: dict[str, str],
                use_uvloop: bool) -> None:
    """Child: one ivisit_nb session. ``send``: alice sends on command; ``recv``: bob accepts and reports.

    The receiver echoes every chat message from alice back to her. The sender, when asked
    for chat, says ``rtt <time>`` every 100 ms while the transfer runs and times the echoes.
    """
    os.environ.update(env)
    from ivisit_nb import Session
    from ivisit_nb import events as ev

    user, peer = ("alice", "bob") if role == "send" else ("bob", "alice")
    takes_lane = "lane" in inspect.signature(Session.__init__).parameters
    kwargs: dict[str, Any] = {"lane": lane} if lane and takes_lane else {}
    s = Session.join(url, user, "bench", config_dir=f"{workdir}/cfg", inbox=f"{workdir}/inbox-{user}",
                     use_uvloop=use_uvloop, **kwargs)
    if lane and not takes_lane:
        s.settings[peer].lane = lane  # the per-user way to choose a lane
    try:
        if role == "recv":
            _receiver(conn, s, ev)
        else:
            _sender(conn, s, ev)
    finally:
        s.leave()


def _receiver(conn: Any, s: Any, ev: Any) -> None:
    ended = threading.Event()
    facts: dict[str, Any] = {}

    def on_event(e: Any) -> None:
        if isinstance(e, ev.MessageReceived) and e.sender == "alice" and e.text and e.text.startswith("rtt "):
            s.say("echo " + e.text, to="alice")
        elif isinstance(e, ev.TransferProgress) and e.transfer.direction == "in" and e.bytes > 0:
            facts.setdefault("first_byte_at", e.time)
        elif isinstance(e, ev.TransferEnded) and e.transfer.direction == "in":
            t = e.transfer
            facts.update(status=t.status, reason=t.reason, lane=t.lane, path=t.path,
                         started_at=t.started_at, finished_at=t.finished_at)
            ended.set()

    s.on(on_event)
    s.receiving = True
    s.settings.defaults.files = "accept"
    s.wait_for_peers(["alice"], timeout=60).wait()
    conn.send("ready")
    timeout = conn.recv()
    c0 = time.process_time()
    if not ended.wait(timeout):
        raise TimeoutError(f"bob received no complete file within {timeout:.0f} s")
    facts["rss"], facts["cpu"] = peak_rss_mib(), time.process_time() - c0
    conn.send(facts)
    conn.recv()  # bye


def _sender(conn: Any, s: Any, ev: Any) -> None:
    rtts: list[float] = []
    pings: dict[str, bool] = {}  # ping text -> sent while bytes were moving
    lock = threading.Lock()  # pings is shared with the engine thread, which runs on_event

    def on_event(e: Any) -> None:
        if isinstance(e, ev.MessageReceived) and e.sender == "bob" and e.text and e.text.startswith("echo rtt "):
            text = e.text[len("echo "):]
            with lock:
                during = pings.pop(text, False)
            if during:
                rtts.append(time.time() - float(text.split()[1]))

    s.on(on_event)
    s.wait_for_peers(["bob"], timeout=60).wait()
    conn.send("ready")
    job = conn.recv()
    sent_at, c0 = time.time(), time.process_time()
    t = s.send_file(job["path"], to="bob")
    if job["chat"]:
        while not t.ended:
            text = f"rtt {time.time():.6f}"
            with lock:
                pings[text] = t.status == "transferring"
            s.say(text, to="bob")
            try:
                t.wait(CHAT_EVERY)
            except TimeoutError:
                pass
        deadline = time.monotonic() + 2  # let the last echoes come back
        while time.monotonic() < deadline:
            with lock:
                if not any(pings.values()):
                    break
            time.sleep(0.02)
    status = t.wait(job["timeout"])
    with lock:
        lost = sum(pings.values())
    conn.send({"status": status, "reason": t.reason, "lane": t.lane, "sent_at": sent_at,
               "started_at": t.started_at, "finished_at": t.finished_at, "rtts": rtts,
               "lost_pings": lost, "rss": peak_rss_mib(), "cpu": time.process_time() - c0})
    conn.recv()  # bye


def run_ivisit(path: Path, size: int, digest: str, workdir: Path, *, lane: str | None, expect_lane: str,
               chat: bool = False, env: dict[str, str] | None = None, use_uvloop: bool = True) -> dict[str, Any]:
    """One ivisit_nb transfer of ``path`` from alice to bob, both in processes of their own."""
    from ivisit_nb import RoomServer

    timeout = run_timeout(size)
    env = env or {}
    with RoomServer() as server, tempfile.TemporaryDirectory(dir=workdir) as work:
        recv, rconn = spawn(ivisit_side, "recv", server.url, work, lane, env, use_uvloop)
        send, sconn = spawn(ivisit_side, "send", server.url, work, lane, env, use_uvloop)
        try:
            receive(rconn, recv, "the receiving session (bob)", 90)
            receive(sconn, send, "the sending session (alice)", 90)
            rconn.send(timeout)
            sconn.send({"path": str(path), "chat": chat, "timeout": timeout})
            s = receive(sconn, send, "the sending session (alice)", timeout + 10)  # she ends once bob has it
            if s["status"] != "done":
                raise BenchError(f"the transfer ended {s['status']} at alice: {s['reason'] or 'no reason given'}")
            r = receive(rconn, recv, "the receiving session (bob)", 30)
            if r["status"] != "done":
                raise BenchError(f"the transfer ended {r['status']} at bob: {r['reason'] or 'no reason given'}")
            for c in (rconn, sconn):
                c.send("bye")
            recv.join(30)
            send.join(30)
        finally:
            stop_process(recv)
            stop_process(send)
        if s["lane"] != expect_lane:
            raise BenchError(f"asked for lane={lane or 'default'} and expected the {expect_lane} lane, "
                             f"but alice's transfer reports lane {s['lane']!r} (bob's: {r['lane']!r})")
        got = file_hash(r["path"])
        if got != digest:
            raise BenchError(f"bob's file {r['path']} has BLAKE3 {got[:16]}..., not {digest[:16]}...")
    return {
        "seconds": r["finished_at"] - s["sent_at"],
        "transfer_seconds": r["finished_at"] - r["started_at"],
        "rss_send": s["rss"], "rss_recv": r["rss"], "cpu_send": s["cpu"], "cpu_recv": r["cpu"], "lane": r["lane"],
        "rtts": s["rtts"], "lost_pings": s["lost_pings"],
        # bob's accept (he picks the lane and, for the direct lane, opens his listener) to his first file byte
        "accept_to_first_byte": (r["first_byte_at"] - r["started_at"]) if "first_byte_at" in r else None,
        "send_to_first_byte": (r["first_byte_at"] - s["sent_at"]) if "first_byte_at" in r else None,
        "note": f"accept to done {mbs(size, r['finished_at'] - r['started_at']):.1f} MB/s"
                + ("" if r["lane"] == s["lane"] else f"; NOTE: bob's transfer says lane {r['lane']!r}, alice's {s['lane']!r}"),
    }


class SilentListener:
    """A TCP port on 127.0.0.1 that completes the TCP handshake (the kernel does) but never answers:
    a direct-lane candidate whose TLS handshake hangs until the sender's connect timeout."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)  # never accepted, never read
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()


# -- the bench -----------------------------------------------------------------------------------


LABELS = {
    "wormhole": "magic-wormhole (local mailbox + transit relay)",
    "tls": "bare TLS 1.3 pair, 1 MiB writes, no disk",
    "tls-disk": "TLS 1.3 pair that writes and BLAKE3-hashes on arrival",
    "direct": "ivisit_nb, lane=\"direct\"",
    "datachannel": "ivisit_nb, lane=\"datachannel\"",
    "raw": "raw aiortc data channel (bench/transfer.py)",
    "chat": "ivisit_nb direct lane with chat every 100 ms",
    "fallback": "ivisit_nb fallback: the direct candidate refuses",
    "fallback-silent": "ivisit_nb fallback: the direct candidate never answers",
}


TIMED = {
    "wormhole": "starting both programs to the receiver's exit (CPU: whole programs)",
    "tls": "connect (handshake included) to the receiver's 1-byte receipt",
    "tls-disk": "connect to the receipt, sent once every byte is written and hashed",
    "raw": "first message to the receiver having every byte",
    **{t: "send_file (hashing included) to bob's verified done" for t in ("direct", "datachannel", "chat", *FALLBACK_TOOLS)},
}


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0..100) by linear interpolation between closest ranks."""
    xs = sorted(values)
    if len(xs) == 1:
        return xs[0]
    k = (len(xs) - 1) * q / 100
    lo = int(k)
    hi = min(lo + 1, len(xs) - 1)
    return xs[lo] + (xs[hi] - xs[lo]) * (k - lo)


def run_one(tool: str, ctx: dict[str, Any]) -> dict[str, Any]:
    """Run ``tool`` once with the bench context; returns seconds, peak RSS per side and extras."""
    path, size, digest, work, uv = ctx["path"], ctx["size"], ctx["digest"], ctx["work"], ctx["uvloop"]
    if tool == "wormhole":
        return run_wormhole(ctx["servers"], path, size, digest, work)
    if tool == "tls":
        return run_tls(size, ctx["cert"], ctx["key"], uv)
    if tool == "tls-disk":
        return run_tls(size, ctx["cert"], ctx["key"], uv, disk=str(work / "tls-received.bin"))
    if tool == "raw":
        return run_raw(size, uv)
    if tool == "datachannel":  # before the direct lane landed, the data channel was the only lane
        lane = "datachannel" if ctx["lanes"] else None
        return run_ivisit(path, size, digest, work, lane=lane, expect_lane="datachannel", use_uvloop=uv)
    if tool == "direct":
        return run_ivisit(path, size, digest, work, lane="direct", expect_lane="direct", use_uvloop=uv)
    if tool == "chat":
        return run_ivisit(path, size, digest, work, lane="direct", expect_lane="direct", chat=True, use_uvloop=uv)
    if tool in FALLBACK_TOOLS:
        candidate = REFUSING_CANDIDATE if tool == "fallback" else f"127.0.0.1:{ctx['silent'].port}"
        env = {CANDIDATES_ENV: candidate}
        return run_ivisit(path, size, digest, work, lane="auto", expect_lane="datachannel", env=env, use_uvloop=uv)
    raise ValueError(tool)


def describe_run(tool: str, size: int, r: dict[str, Any]) -> str:
    text = (f"{mbs(size, r['seconds']):7.1f} MB/s ({r['seconds']:.2f} s), peak RSS {r['rss_send']:.0f} / {r['rss_recv']:.0f} MiB, "
            f"CPU {r['cpu_send']:.1f} / {r['cpu_recv']:.1f} s")
    if r.get("note"):
        text += f", {r['note']}"
    if tool == "chat" and r["rtts"]:
        text += f", {len(r['rtts'])} chat RTTs p50 {percentile(r['rtts'], 50) * 1000:.1f} ms"
    if tool in FALLBACK_TOOLS and r["accept_to_first_byte"] is not None:
        text += f", accept to first data-channel byte {r['accept_to_first_byte']:.2f} s"
    return text


def table(size: int, results: dict[str, list[dict[str, Any]]], skipped: dict[str, str],
          failures: dict[str, list[str]]) -> list[str]:
    """The results as Markdown lines: throughput and RSS per tool, then ratios, chat RTT, fallback, goals,
    and the runs that failed."""
    lines = ["| what | runs | MB/s, median (each run) | peak RSS send / recv, MiB (max of runs) "
             "| CPU s send / recv (median) | timed from ... to ... |",
             "| --- | ---: | --- | --- | --- | --- |"]
    median: dict[str, float] = {}
    for tool in ALL_TOOLS:
        runs = results.get(tool, [])
        if tool in skipped:
            lines.append(f"| {LABELS[tool]} | 0 | not run: {skipped[tool]} | | | |")
            continue
        failed = f" (+{len(failures[tool])} failed)" if tool in failures else ""
        if not runs:
            if failed:
                lines.append(f"| {LABELS[tool]} | 0{failed} | every run failed (below) | | | |")
            continue
        rates = [mbs(size, r["seconds"]) for r in runs]
        median[tool] = statistics.median(rates)
        each = ", ".join(f"{x:.1f}" for x in rates)
        rss = f"{max(r['rss_send'] for r in runs):.0f} / {max(r['rss_recv'] for r in runs):.0f}"
        timed = TIMED[tool]
        if "transfer_seconds" in runs[0]:
            accept = statistics.median(mbs(size, r["transfer_seconds"]) for r in runs)
            timed += f" (accept to done: {accept:.1f} MB/s)"
        cpu = (f"{statistics.median(r['cpu_send'] for r in runs):.2f} / "
               f"{statistics.median(r['cpu_recv'] for r in runs):.2f}")
        lines.append(f"| {LABELS[tool]} | {len(runs)}{failed} | **{median[tool]:.1f}** ({each}) | {rss} | {cpu} | {timed} |")
    lines.append("")

    def ratio(a: str, b: str, label: str, goal: float | None) -> None:
        if a in median and b in median:
            value = median[a] / median[b]
            verdict = f" (goal >= {goal}: {'met' if value >= goal else 'NOT met'})" if goal else ""
            lines.append(f"- {label}: **{value:.2f}x**{verdict}")

    ratio("direct", "wormhole", "ours direct / magic-wormhole", 1.6)
    ratio("direct", "tls", "ours direct / bare TLS", 0.8)
    ratio("direct", "tls-disk", "ours direct / TLS that writes and hashes (a plain verify-on-arrival receiver)", None)
    ratio("tls-disk", "tls", "TLS that writes and hashes / bare TLS (what the disk and hash cost here)", None)
    ratio("datachannel", "raw", "ours data channel / raw aiortc", None)
    ratio("direct", "datachannel", "ours direct / ours data channel", None)
    if "chat" in results:
        rtts = [x for r in results["chat"] for x in r["rtts"]]
        lost = sum(r["lost_pings"] for r in results["chat"])
        if rtts:
            p50, p95 = percentile(rtts, 50) * 1000, percentile(rtts, 95) * 1000
            lines.append(f"- chat RTT during a direct-lane transfer: **p50 {p50:.1f} ms**, p95 {p95:.1f} ms, "
                         f"max {max(rtts) * 1000:.1f} ms ({len(rtts)} pings over {len(results['chat'])} runs, "
                         f"{lost} unanswered; goal p50 < 20 ms: {'met' if p50 < 20 else 'NOT met'})")
        else:
            lines.append("- chat RTT: no ping was sent while bytes were moving (the transfer was too short)")
    for tool, how in (("fallback", "the direct candidate refuses"), ("fallback-silent", "the direct candidate never answers")):
        for r in results.get(tool, []):
            first = r["accept_to_first_byte"]
            lines.append(
                f"- fallback ({how}): bob's accept to his first byte on the data channel **{first:.2f} s** "
                f"(send_file to first byte, hashing included: {r['send_to_first_byte']:.2f} s); completed on lane "
                f"{r['lane']!r} and verified, {mbs(size, r['seconds']):.1f} MB/s; "
                f"goal within 1 s: {'met' if first <= 1 else 'NOT met'}")
    rss_tools = [t for t in ("direct", "datachannel", "chat", *FALLBACK_TOOLS) if t in results]
    if rss_tools:
        worst = max(max(r["rss_send"], r["rss_recv"]) for t in rss_tools for r in results[t])
        lines.append(f"- peak RSS of ivisit_nb at {size_label(size)}: at most **{worst:.0f} MiB** on either side "
                     f"({worst * MiB / 1e6:.0f} MB; goal <= 100 MB per side: {'met' if worst * MiB <= 100e6 else 'NOT met'})")
    for tool, reasons in failures.items():
        for reason in reasons:
            lines.append(f"- **FAILED run** of {LABELS[tool]}: {reason}")
    return lines


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="1G", help="payload size, e.g. 256M, 1G, 4G (default 1G)")
    ap.add_argument("--runs", type=int, default=3, help="rounds; each tool runs once per round (default 3)")
    ap.add_argument("--tools", default=",".join(ALL_TOOLS), help=f"comma-separated subset of {','.join(ALL_TOOLS)}")
    ap.add_argument("--fallback-runs", type=int, default=1, help="fallback runs after the rounds (default 1)")
    ap.add_argument("--no-uvloop", action="store_true", help="plain asyncio loops for ivisit_nb, raw aiortc and TLS")
    ap.add_argument("--tmp", default=None, help="directory for the payload and received files (default: system temp)")
    args = ap.parse_args(argv)
    size = parse_size(args.size)
    tools = [t.strip() for t in args.tools.split(",") if t.strip()]
    unknown = sorted(set(tools) - set(ALL_TOOLS))
    if unknown:
        ap.error(f"unknown tools {', '.join(unknown)}; choose from {', '.join(ALL_TOOLS)}")
    uv = not args.no_uvloop and version_of("uvloop") != "not installed"

    began = time.monotonic()
    load_at_start = load_average()
    say(f"# bench/compare.py, {stamp()}: {size_label(size)}, {args.runs} rounds, tools {', '.join(tools)}")
    say(f"# machine: {machine_line()}; load average {load_at_start} (other work on the machine skews the figures)")
    say("# versions: " + ", ".join(f"{d} {version_of(d)}" for d in (
        "ivisit-nb", "aiortc", "magic-wormhole", "magic-wormhole-mailbox-server", "magic-wormhole-transit-relay",
        "twisted", "cryptography", "uvloop")) + f"; event loop: {'uvloop' if uv else 'asyncio'}")

    skipped: dict[str, str] = {}
    lanes = lane_supported()
    if {"direct", "chat", *FALLBACK_TOOLS} & set(tools) and not lanes:
        for t in ("direct", "chat", *FALLBACK_TOOLS):
            if t in tools:
                skipped[t] = "the direct lane has not landed (no ivisit_nb/engine/direct.py or no lane setting)"
        say("# the direct lane is not available yet: skipping direct, chat and fallback")
    results: dict[str, list[dict[str, Any]]] = {}
    failures: dict[str, list[str]] = {}  # tool -> what went wrong, per failed run
    servers: WormholeServers | None = None
    interrupted = ""  # why the bench stopped early, if it did
    with tempfile.TemporaryDirectory(prefix="ivisit-compare-", dir=args.tmp) as tmp:
        work = Path(tmp)
        path = work / f"payload-{size_label(size).replace(' ', '')}.bin"
        ctx: dict[str, Any] = {"path": path, "size": size, "work": work, "uvloop": uv, "lanes": lanes}
        try:
            t0 = time.monotonic()
            say(f"making {size_label(size)} of random bytes in {path} ...")
            make_file(path, size)
            ctx["digest"] = file_hash(path)
            say(f"  done in {time.monotonic() - t0:.1f} s, BLAKE3 {ctx['digest'][:16]}...")
            if "fallback-silent" in tools:
                ctx["silent"] = SilentListener()
            if "tls" in tools or "tls-disk" in tools:
                ctx["cert"], ctx["key"] = make_certificate(work)
            if "wormhole" in tools:
                servers = WormholeServers(work)
                servers.start()
                ctx["servers"] = servers
            plan = [(i, t) for i in range(args.runs) for t in ROUND_TOOLS if t in tools and t not in skipped]
            for tool in FALLBACK_TOOLS:
                if tool in tools and tool not in skipped:
                    plan += [(i, tool) for i in range(args.fallback_runs)]
            for i, tool in plan:
                rounds = args.fallback_runs if tool in FALLBACK_TOOLS else args.runs
                say(f"[{time.monotonic() - began:6.0f} s] run {i + 1}/{rounds} {tool}: {LABELS[tool]} ...")
                try:
                    r = run_one(tool, ctx)
                except BenchError as exc:  # one failed run is a finding, not the end of the bench
                    failures.setdefault(tool, []).append(str(exc))
                    say(f"         FAILED: {exc}")
                    continue
                results.setdefault(tool, []).append(r)
                say(f"         {describe_run(tool, size, r)}")
        except KeyboardInterrupt:
            interrupted = "interrupted"
            say("\ninterrupted: stopping the servers and processes we started, then printing what we have")
        except BenchError as exc:
            interrupted = "stopped by an error"
            say(f"\nERROR: {exc}\nstopping the servers and processes we started, then printing what we have")
        finally:
            if servers is not None:
                servers.stop()
            if "silent" in ctx:
                ctx["silent"].close()
            for proc in _children + mp.active_children():  # active_children: also bench/transfer.py's raw sides
                stop_process(proc)
    elapsed = time.monotonic() - began
    say("")
    say(f"## {size_label(size)}, {args.runs} rounds{f' ({interrupted})' if interrupted else ''}, "
        f"{stamp()}, wall time {elapsed / 60:.1f} min")
    say(f"Machine: {machine_line()}; event loop {'uvloop' if uv else 'asyncio'}; "
        f"load average at the start {load_at_start}, at the end {load_average()}")
    say("")
    for line in table(size, results, skipped, failures):
        say(line)
    if interrupted:
        sys.exit(130 if interrupted == "interrupted" else 1)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


if __name__ == "__main__":
    # Ctrl-C (SIGINT) and SIGTERM both stop the bench, even where it was started with SIGINT
    # ignored (a background job); main() then stops the servers and processes it started.
    signal.signal(signal.SIGINT, _interrupt)
    signal.signal(signal.SIGTERM, _interrupt)
    main()
