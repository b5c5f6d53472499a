"""Helpers shared by the benches in this folder: sizes, payload files, hashes, peak RSS, the machine.

Peak RSS is read from the kernel's high-water mark, ``VmHWM`` in ``/proc/<pid>/status``.
``getrusage().ru_maxrss`` is not used for processes we start: on Linux a process started
by fork (or vfork) and exec inherits the parent's high-water mark in ``ru_maxrss``, so a
child of a big bench process reports at least the parent's peak. ``VmHWM`` belongs to the
process's own address space and starts afresh at exec.
"""

from __future__ import annotations

import os
import platform
import re
import resource
import sys
import threading
import time
from pathlib import Path

MiB = 1 << 20
GiB = 1 << 30


def parse_size(text: str) -> int:
    """Bytes from ``"256M"``, ``"1G"``, ``"512MiB"``, ``"4GiB"`` or a plain byte count (K, M, G are powers of 2)."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if not m:
        raise ValueError(f"cannot read {text!r} as a size; write e.g. 256M, 1G or 1048576")
    number, unit = float(m.group(1)), m.group(2).upper()
    return int(number * {"": 1, "K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40}[unit])


def size_label(size: int) -> str:
    """``1 GiB``, ``256 MiB`` or ``1000 bytes``."""
    for unit, n in (("GiB", GiB), ("MiB", MiB), ("KiB", 1 << 10)):
        if size >= n and size % n == 0:
            return f"{size // n} {unit}"
    return f"{size} bytes"


def make_file(path: Path, size: int) -> None:
    """Write ``size`` random bytes (fresh from ``os.urandom``, 1 MiB at a time) to ``path``."""
    with open(path, "wb") as f:
        left = size
        while left:
            n = min(left, MiB)
            f.write(os.urandom(n))
            left -= n


def file_hash(path: str | Path) -> str:
    """BLAKE3 of a file, hex, read in 4 MiB blocks (so it costs no memory)."""
    import blake3

    h = blake3.blake3()
    with open(path, "rb") as f:
        while block := f.read(4 * MiB):
            h.update(block)
    return h.hexdigest()


def hwm_mib(pid: int | str = "self") -> float | None:
    """Peak RSS (``VmHWM``) of process ``pid`` in MiB, or None if it is gone or /proc lacks it."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError, PermissionError):
        return None
    return None


def peak_rss_mib() -> float:
    """This process's own peak RSS in MiB (``VmHWM``; ``ru_maxrss`` where there is no /proc)."""
    own = hwm_mib()
    if own is not None:
        return own
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class RssWatcher:
    """Polls the peak RSS and CPU time of a process and its descendants until stopped (for programs
    we don't own).

    ``peak`` is the largest sum of ``VmHWM`` over the process tree seen by any poll. ``VmHWM``
    only grows, so polling every ``interval`` seconds misses at most the growth of the
    last interval before the process exits. ``cpu`` is the tree's user + system CPU seconds
    at the last poll (its whole life, start-up included).
    """

    def __init__(self, pid: int, interval: float = 0.02) -> None:
        import psutil

        self._psutil = psutil
        self.pid, self.interval = pid, interval
        self.peak = 0.0
        self.cpu = 0.0
        self._cpu: dict[int, float] = {}  # pid -> CPU seconds at its last poll
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"rss-{pid}", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        try:
            proc = self._psutil.Process(self.pid)
            procs = [proc] + proc.children(recursive=True)
        except self._psutil.Error:
            return
        total = sum(v for v in (hwm_mib(p.pid) for p in procs) if v is not None)
        self.peak = max(self.peak, total)
        for p in procs:
            try:
                times = p.cpu_times()
            except self._psutil.Error:
                continue
            self._cpu[p.pid] = times.user + times.system
        self.cpu = sum(self._cpu.values())

    def _run(self) -> None:
        while not self._stop.is_set():
            self._poll()
            self._stop.wait(self.interval)

    def stop(self) -> float:
        """Stop polling and return the peak in MiB."""
        self._stop.set()
        self._thread.join()
        return self.peak


def version_of(dist: str) -> str:
    """The installed version of a distribution, or ``"not installed"``."""
    from importlib import metadata

    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not installed"


def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo (or what ``platform`` knows)."""
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def machine_line() -> str:
    """One line describing the machine and Python: cores, CPU, OS, Python, OpenSSL."""
    import ssl

    return (f"{os.cpu_count()} cores (nproc {len(os.sched_getaffinity(0))}), {cpu_model()}, "
            f"{platform.system()} {platform.release()}, Python {sys.version.split()[0]}, {ssl.OPENSSL_VERSION}")


def load_average() -> str:
    """The 1, 5 and 15 minute load averages, e.g. ``0.52 / 0.40 / 0.31``."""
    return " / ".join(f"{x:.2f}" for x in os.getloadavg())


def stamp() -> str:
    """The current time in UTC, for result headers."""
    return time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
