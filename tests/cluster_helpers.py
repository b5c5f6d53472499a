"""Helpers for tests/test_cluster.py: a throw-away redis-server, cluster instances, raw clients.

Debian's ``redis-server`` runs in the foreground on 127.0.0.1 on a free port, with no
persistence (``make test`` installs it; the tests are skipped with a clear message
when the binary is missing). Instances run in this process (``RoomServer`` with a
``RedisDirectory``) or as ``python -m ivisit_nb server --redis ...`` subprocesses
when a test has to SIGKILL one.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterator

import aiohttp
import pytest

from helpers import wait_until

ROOT = Path(__file__).absolute().parents[1]
REDIS_SERVER = shutil.which("redis-server")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _answers_ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class Redis:
    """A redis-server process on 127.0.0.1:``port`` that can be stopped and started again."""

    def __init__(self, port: int | None = None) -> None:
        if REDIS_SERVER is None:
            pytest.skip("Debian's redis-server is not installed: run `make test` (it installs it) "
                        "or `apt-get install redis-server`")
        self.port = port or free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> "Redis":
        assert REDIS_SERVER is not None
        self.proc = subprocess.Popen(
            [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        wait_until(lambda: _answers_ping(self.port) or self.proc.poll() is not None, 20)
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server did not start on port {self.port}")
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None


@contextlib.contextmanager
def redis_server() -> Iterator[Redis]:
    r = Redis().start()
    try:
        yield r
    finally:
        r.stop()


class Instance:
    """``python -m ivisit_nb server --redis URL --port 0 --json`` in a subprocess."""

    def __init__(self, redis_url: str, *args: str) -> None:
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
        env.pop("IVISIT_NB_TOKEN", None)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "ivisit_nb", "server", "--json", "--redis", redis_url, "--port", "0", *args],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, cwd=ROOT,
        )
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        try:
            event = json.loads(line)
        except ValueError:
            event = {}
        if event.get("event") != "listening":
            self.kill()
            err = self.proc.stderr.read() if self.proc.stderr else ""
            raise RuntimeError(f"instance did not start: {line!r} {err[-2000:]}")
        self.url: str = event["url"]
        # keep draining its output so it never blocks on a full pipe
        for stream in (self.proc.stdout, self.proc.stderr):
            threading.Thread(target=stream.read, daemon=True).start()

    def sigkill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def kill(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def hello(user: str, room: str | None = "lab", **extra: Any) -> dict[str, Any]:
    return {"type": "hello", "version": 1, "user": user, "room": room, **extra}


async def recv(ws: aiohttp.ClientWebSocketResponse, timeout: float = 10.0) -> dict[str, Any]:
    msg = await ws.receive(timeout=timeout)
    assert msg.type == aiohttp.WSMsgType.TEXT, f"expected a text frame, got {msg.type.name} (close {ws.close_code})"
    data = json.loads(msg.data)
    assert isinstance(data, dict)
    return data


async def join(session: aiohttp.ClientSession, url: str, user: str, room: str | None = "lab",
               **extra: Any) -> tuple[aiohttp.ClientWebSocketResponse, dict[str, Any]]:
    """Connect, send hello, return the socket and the server's answer (welcome or error)."""
    ws = await session.ws_connect(url)
    await ws.send_str(json.dumps(hello(user, room, **extra)))
    return ws, await recv(ws)


async def until(ws: aiohttp.ClientWebSocketResponse, predicate: Any, timeout: float = 20.0) -> dict[str, Any]:
    """Read frames until one satisfies ``predicate``; return it."""
    deadline = time.monotonic() + timeout
    while True:
        left = deadline - time.monotonic()
        assert left > 0, "expected frame did not arrive"
        frame = await recv(ws, left)
        if predicate(frame):
            return frame


class Monitor:
    """Everything a Redis operator sees: a raw ``MONITOR`` connection, recorded in a thread."""

    def __init__(self, port: int) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(b"MONITOR\r\n")
        self.data = bytearray()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        while True:
            try:
                chunk = self.sock.recv(1 << 16)
            except OSError:
                return
            if not chunk:
                return
            self.data += chunk

    def text(self) -> str:
        """What was seen so far; MONITOR escapes non-ASCII bytes as \\xNN."""
        return self.data.decode("utf-8", "replace")

    def close(self) -> None:
        self.sock.close()
        self._thread.join(5)

