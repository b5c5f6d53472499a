"""Network namespaces for tests and benchmarks: hosts that cannot reach each other, and coturn.

The topology (as in shared/NETNS-TURN.md)::

        A (10.71.1.2) --veth-- (10.71.1.1) T (10.71.2.1) --veth-- (10.71.2.2) B
                                          10.71.0.1 on T's loopback: coturn, room server

A and B each have one host route, to 10.71.0.1 via their T end, and no default route; T
does not forward. So A and B cannot reach each other, and both reach 10.71.0.1. With
``direct_link=True`` a third veth pair joins A (10.71.3.1) and B (10.71.3.2) directly, for
benchmarks that compare the relay with a direct path.

Every namespace is named ``ivnb-<pid>-<tag>-<X>``, so :func:`sweep_stale` can delete those
left by a run whose process is gone, and never touches a live run's. Needs root, ``ip``
(iproute2) and, for :class:`Coturn`, ``turnserver`` (Debian's ``coturn``);
:func:`unavailable` says which is missing. All traffic stays inside these namespaces.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any, Iterable

PREFIX = "ivnb-"
TURN_IP = "10.71.0.1"
TURN_PORT = 3478
A_IP, B_IP = "10.71.1.2", "10.71.2.2"
A_DIRECT_IP, B_DIRECT_IP = "10.71.3.1", "10.71.3.2"
PEER_SCRIPT = str(Path(__file__).with_name("netns_peer.py"))


class NetnsError(RuntimeError):
    """A namespace command failed; the message has the command and what it printed."""


def _run(argv: list[str], check: bool = True, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout)
    if check and proc.returncode != 0:
        raise NetnsError(f"`{' '.join(argv)}` exited {proc.returncode}: {(proc.stderr or proc.stdout).strip()}")
    return proc


def unavailable(need_turnserver: bool = True) -> str | None:
    """Why namespace tests cannot run here (a sentence), or None if they can."""
    if not sys.platform.startswith("linux"):
        return "network namespaces need Linux"
    if os.geteuid() != 0:
        return "creating network namespaces needs root (run the tests as root, as CI does)"
    if shutil.which("ip") is None:
        return "no `ip` command: install iproute2 (apt-get install iproute2)"
    if need_turnserver and shutil.which("turnserver") is None:
        return "no `turnserver`: install Debian's coturn (apt-get install coturn)"
    probe = f"{PREFIX}{os.getpid()}-probe"
    made = _run(["ip", "netns", "add", probe], check=False)
    if made.returncode != 0:
        return f"cannot create a network namespace here: {made.stderr.strip() or made.returncode}"
    _run(["ip", "netns", "del", probe], check=False)
    return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def namespace_pids(ns: str) -> list[int]:
    """Processes running in namespace ``ns``."""
    out = _run(["ip", "netns", "pids", ns], check=False).stdout
    return [int(x) for x in out.split() if x.isdigit()]


def delete_namespace(ns: str) -> None:
    """Kill every process in ``ns`` (TERM, then KILL after 5 s) and delete it."""
    pids = namespace_pids(ns)
    for pid in pids:
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 5.0
    while pids and time.monotonic() < deadline:
        pids = [p for p in pids if _pid_alive(p) and p in namespace_pids(ns)]
        if pids:
            time.sleep(0.05)  # waiting for processes to exit; nothing to be notified by
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    _run(["ip", "netns", "del", ns], check=False)


def sweep_stale() -> list[str]:
    """Delete ``ivnb-<pid>-...`` namespaces whose creating process is gone; return their names."""
    listed = _run(["ip", "netns", "list"], check=False).stdout.split("\n")
    swept = []
    for line in listed:
        name = line.split(" ", 1)[0].strip()
        if not name.startswith(PREFIX):
            continue
        owner = name[len(PREFIX):].split("-", 1)[0]
        if owner.isdigit() and _pid_alive(int(owner)) and int(owner) != 0:
            continue
        delete_namespace(name)
        swept.append(name)
    return swept


class Topology:
    """Namespaces A, B and T as in this module's docstring. :meth:`create`, then :meth:`destroy`.

    ``ns["A"]``, ``ns["B"]``, ``ns["T"]`` are the real namespace names.
    """

    def __init__(self, tag: str, *, direct_link: bool = False) -> None:
        self.tag = tag
        self.direct_link = direct_link
        self.ns = {x: f"{PREFIX}{os.getpid()}-{tag}-{x}" for x in "ABT"}

    def create(self) -> "Topology":
        """Build the namespaces, links, addresses and routes (deleting any half-built ones on error)."""
        a, b, t = self.ns["A"], self.ns["B"], self.ns["T"]
        existing = _run(["ip", "netns", "list"], check=False).stdout
        for ns in (a, b, t):  # left by a dead run that had our pid, or by an earlier create()
            if ns in existing.split():
                delete_namespace(ns)
        try:
            for ns in (a, b, t):
                _run(["ip", "netns", "add", ns])
                _run(["ip", "-n", ns, "link", "set", "lo", "up"])
            _run(["ip", "-n", t, "addr", "add", f"{TURN_IP}/32", "dev", "lo"])
            _run(["ip", "netns", "exec", t, "sysctl", "-qw", "net.ipv4.ip_forward=0"])
            for side, ns, mine, theirs in (("a", a, A_IP, "10.71.1.1"), ("b", b, B_IP, "10.71.2.1")):
                _run(["ip", "-n", ns, "link", "add", f"v{side}", "type", "veth", "peer", "name", f"t{side}", "netns", t])
                _run(["ip", "-n", ns, "addr", "add", f"{mine}/24", "dev", f"v{side}"])
                _run(["ip", "-n", t, "addr", "add", f"{theirs}/24", "dev", f"t{side}"])
                _run(["ip", "-n", ns, "link", "set", f"v{side}", "up"])
                _run(["ip", "-n", t, "link", "set", f"t{side}", "up"])
                _run(["ip", "-n", ns, "route", "add", f"{TURN_IP}/32", "via", theirs])
            if self.direct_link:
                _run(["ip", "-n", a, "link", "add", "vab", "type", "veth", "peer", "name", "vba", "netns", b])
                _run(["ip", "-n", a, "addr", "add", f"{A_DIRECT_IP}/24", "dev", "vab"])
                _run(["ip", "-n", b, "addr", "add", f"{B_DIRECT_IP}/24", "dev", "vba"])
                _run(["ip", "-n", a, "link", "set", "vab", "up"])
                _run(["ip", "-n", b, "link", "set", "vba", "up"])
        except BaseException:
            self.destroy()
            raise
        return self

    def destroy(self) -> None:
        """Kill everything running in the namespaces and delete them. Idempotent."""
        for ns in self.ns.values():
            delete_namespace(ns)

    def exec_argv(self, where: str, argv: Iterable[str]) -> list[str]:
        """``argv`` run inside namespace ``where`` (A, B or T)."""
        return ["ip", "netns", "exec", self.ns[where], *argv]

    def reaches(self, where: str, address: str) -> bool:
        """Whether namespace ``where`` gets an answer from ``address``.

        With ``ping`` installed: one echo request, one second to answer. Without it: whether
        the kernel has a route at all (a UDP ``connect`` fails at once with 'Network is
        unreachable' when it has none).
        """
        if shutil.which("ping"):
            return _run(self.exec_argv(where, ["ping", "-c1", "-W1", address]), check=False).returncode == 0
        probe = f"import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect(({address!r}, 9))"
        return _run(self.exec_argv(where, [sys.executable, "-c", probe]), check=False).returncode == 0

    def __enter__(self) -> "Topology":
        return self.create()

    def __exit__(self, *exc: object) -> None:
        self.destroy()


_ALLOCATE = """
import asyncio, sys
from aioice import turn

async def main() -> str:
    try:
        transport, _ = await turn.create_turn_endpoint(
            asyncio.DatagramProtocol, server_addr=(sys.argv[1], int(sys.argv[2])),
            username=sys.argv[3], password=sys.argv[4])
    except Exception as exc:
        return f"refused: {type(exc).__name__}: {exc}"
    transport.close()
    return "allocated"

print(asyncio.run(main()))
"""


def turn_allocate(topo: "Topology", where: str, username: str, password: str,
                  host: str = TURN_IP, port: int = TURN_PORT) -> str:
    """Ask the TURN server for one allocation from namespace ``where`` (aioice, as aiortc does).

    Returns ``"allocated"`` or ``"refused: <why>"`` (e.g. ``401 - Unauthorized``).
    """
    argv = topo.exec_argv(where, [sys.executable, "-c", _ALLOCATE, host, str(port), username, password])
    return _run(argv, check=False, timeout=120).stdout.strip()


class LineReader:
    """Reads a process's stdout lines on a daemon thread into a queue (JSON decoded where possible)."""

    def __init__(self, proc: subprocess.Popen[str], label: str) -> None:
        self.proc, self.label = proc, label
        self.lines: queue.Queue[Any] = queue.Queue()
        self.seen: list[Any] = []
        threading.Thread(target=self._read, name=f"read-{label}", daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            line = line.rstrip("\n")
            try:
                item: Any = json.loads(line)
            except ValueError:
                item = line
            self.seen.append(item)
            self.lines.put(item)
        self.lines.put(None)  # end of output

    def next(self, timeout: float) -> Any:
        """The next line; raises ``AssertionError`` on timeout or when the process ended."""
        try:
            item = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"{self.label} printed nothing for {timeout:.0f} s; it printed: {self.seen[-20:]}") from None
        if item is None:
            self.lines.put(None)
            raise AssertionError(f"{self.label} exited ({self.proc.poll()}); it printed: {self.seen[-20:]}")
        return item


class Coturn:
    """Debian's ``turnserver`` in namespace ``where`` on ``10.71.0.1:3478``, REST API credentials.

    ``secret`` is its ``--static-auth-secret``; :meth:`start` returns once its log says it is
    serving ("Total General servers").
    """

    def __init__(self, topo: Topology, workdir: Path, secret: str, where: str = "T") -> None:
        self.topo, self.workdir, self.secret, self.where = topo, Path(workdir), secret, where
        self.proc: subprocess.Popen[str] | None = None
        self.url = f"turn:{TURN_IP}:{TURN_PORT}"

    def start(self, timeout: float = 60.0) -> "Coturn":
        self.workdir.mkdir(parents=True, exist_ok=True)
        argv = [
            "turnserver", "-n", f"--listening-ip={TURN_IP}", f"--relay-ip={TURN_IP}",
            f"--listening-port={TURN_PORT}", "--min-port=49152", "--max-port=49400",
            "--use-auth-secret", f"--static-auth-secret={self.secret}", "--realm=ivisit-nb-test",
            "--no-tls", "--no-dtls", "--no-cli", "--log-file=stdout", "--simple-log",
            f"--userdb={self.workdir / 'turndb'}", f"--pidfile={self.workdir / 'turnserver.pid'}",
            "--no-software-attribute",
        ]
        self.proc = subprocess.Popen(
            self.topo.exec_argv(self.where, argv), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL, text=True,
        )
        reader = LineReader(self.proc, "turnserver")
        deadline = time.monotonic() + timeout
        while True:
            line = reader.next(max(deadline - time.monotonic(), 0.1))
            if "Total General servers" in str(line):
                break
        self.reader = reader
        return self

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class RoomServerProcess:
    """``python -m ivisit_nb server`` in namespace ``where`` on 10.71.0.1, a free port; ``url`` once up."""

    def __init__(self, topo: Topology, *extra: str, where: str = "T", env: dict[str, str] | None = None) -> None:
        argv = [sys.executable, "-m", "ivisit_nb", "server", "--json", "--host", TURN_IP, "--port", "0", *extra]
        self.proc = subprocess.Popen(
            topo.exec_argv(where, argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            stdin=subprocess.DEVNULL, text=True, env={**os.environ, **(env or {})},
        )
        self.reader = LineReader(self.proc, "room server")
        self.url = ""

    def start(self, timeout: float = 60.0) -> "RoomServerProcess":
        """Wait for its ``listening`` line; on anything else stop it and fail with its stderr."""
        try:
            first = self.reader.next(timeout)
            if not isinstance(first, dict) or first.get("event") != "listening":
                raise AssertionError(f"room server printed {first!r} instead of listening")
        except AssertionError as exc:
            self.stop()
            assert self.proc.stderr is not None
            raise AssertionError(f"{exc}; its stderr: {self.proc.stderr.read()[-2000:]}") from None
        self.url = first["url"]
        return self

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


class PeerProcess:
    """``tests/netns_peer.py`` in namespace ``where``: send it commands, read its JSON replies.

    :meth:`send` writes one command; :meth:`reply` waits for the next ``reply`` line (other
    lines, such as ``state`` events, are kept in :attr:`events`); :meth:`ask` does both.
    """

    def __init__(self, topo: Topology, where: str, *args: str, label: str | None = None) -> None:
        argv = [sys.executable, PEER_SCRIPT, *args]
        self.label = label or f"peer in {where}"
        self.proc = subprocess.Popen(
            topo.exec_argv(where, argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, text=True, bufsize=1,
        )
        self.reader = LineReader(self.proc, self.label)
        self.events: list[dict[str, Any]] = []
        self._stderr: list[str] = []
        threading.Thread(target=self._drain_stderr, name=f"stderr-{self.label}", daemon=True).start()

    def _drain_stderr(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self._stderr.append(line)
            del self._stderr[:-200]

    @property
    def stderr_tail(self) -> str:
        """The last lines the peer wrote to stderr (for failure messages)."""
        return "".join(self._stderr[-30:])

    def send(self, cmd: str, **fields: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps({"cmd": cmd, **fields}) + "\n")
        self.proc.stdin.flush()

    def reply(self, timeout: float) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            try:
                item = self.reader.next(max(deadline - time.monotonic(), 0.1))
            except AssertionError as exc:
                raise AssertionError(f"{exc}\n{self.label} stderr:\n{self.stderr_tail}") from None
            if isinstance(item, dict) and item.get("event") == "reply":
                return item
            if isinstance(item, dict):
                self.events.append(item)

    def ask(self, cmd: str, **fields: Any) -> dict[str, Any]:
        """Send ``cmd`` and return its reply; fails if the reply says ``ok: false``.

        Waits for the reply a minute longer than the command's own ``timeout`` field (if any).
        """
        self.send(cmd, **fields)
        answer = self.reply(float(fields.get("timeout", 0)) + 60.0)
        assert answer.get("ok"), f"{self.label}: {cmd} failed: {answer}\nstderr:\n{self.stderr_tail}"
        return answer

    def quit(self, timeout: float = 30.0) -> None:
        """Ask it to leave and exit; kill it if it does not."""
        if self.proc.poll() is None:
            try:
                self.send("quit")
                self.proc.wait(timeout)
            except (BrokenPipeError, OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(10)
