"""PartWriter: writes a part file on a thread of its own, so the engine loop never waits for the disk.

The engine loop hands it chunks in order (:meth:`PartWriter.write`); the thread
writes them to the :class:`~ivisit_nb.sharing.store.PartFile`, which hashes as it
writes (one pass). A lane that can push back (the direct lane) awaits
:meth:`PartWriter.ready` between frames, so a slow disk slows the sender instead of
growing memory. Before verifying, :meth:`flush` waits for every queued write.
"""

from __future__ import annotations

import asyncio
import queue
import threading
from typing import Any, Callable

HIGH = 2 << 20  # bytes queued before ready() makes the lane wait ...
LOW = 1 << 20  # ... until they drop to this


class PartWriter:
    """The one writer of ``part`` while a transfer receives. Create and use on the engine loop.

    ``on_error(exc)`` is called on the loop if a write fails (disk full ...); later
    writes are dropped.
    """

    def __init__(self, part: Any, on_error: Callable[[BaseException], None], name: str = "part") -> None:
        self.part = part
        self.error: BaseException | None = None
        self._loop = asyncio.get_running_loop()
        self._on_error = on_error
        self._queue: queue.SimpleQueue[tuple[Any, ...] | None] = queue.SimpleQueue()
        self._lock = threading.Lock()
        self._pending = 0  # bytes queued and not yet written
        self._stopped = False  # drop what is still queued
        self._idle = asyncio.Event()
        self._idle.set()
        self._room = asyncio.Event()
        self._room.set()
        self._thread = threading.Thread(target=self._run, name=f"ivisit-write-{name}", daemon=True)
        self._thread.start()

    # -- engine loop ---------------------------------------------------------------------
    def write(self, offset: int, data: bytes) -> None:
        """Queue ``data`` for ``offset``; returns at once."""
        with self._lock:
            self._pending += len(data)
            full = self._pending > HIGH
        self._idle.clear()
        if full:
            self._room.clear()
        self._queue.put(("write", offset, data))

    def truncate(self) -> None:
        """Queue a truncation to 0 (the sender restarts a resume from the first byte)."""
        self._idle.clear()
        self._queue.put(("truncate",))

    @property
    def has_room(self) -> bool:
        """True unless more than ``HIGH`` bytes are queued (and not yet back down to ``LOW``)."""
        return self._room.is_set()

    async def ready(self) -> None:
        """Wait while more than ``HIGH`` bytes are queued (until ``LOW``)."""
        await self._room.wait()

    async def flush(self) -> None:
        """Wait until every queued write is on the part file; raise the write error if one failed."""
        self._idle.clear()
        self._queue.put(("sync",))
        await self._idle.wait()
        if self.error is not None:
            raise self.error

    def close(self, close_part: bool = True) -> None:
        """Finish the queued writes (they are kept for a resume), then close the part (unless
        ``close_part`` is False) and end the thread."""
        self._room.set()
        self._queue.put(("close", close_part))

    # -- the writer thread -----------------------------------------------------------------
    def _signal(self) -> None:  # on the loop: wake waiters if still true now
        with self._lock:
            pending = self._pending
        if pending <= LOW:
            self._room.set()
        if pending == 0 and self._queue.empty():
            self._idle.set()

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            op = item[0] if item else "close"
            try:
                if op == "write":
                    if not self._stopped:
                        self.part.write(item[1], item[2])
                    with self._lock:
                        self._pending -= len(item[2])
                elif op == "truncate" and not self._stopped:
                    self.part.truncate(0)
                elif op == "close":
                    if item and item[1]:
                        self.part.close()
                    self._loop.call_soon_threadsafe(self._idle.set)
                    return
            except BaseException as exc:  # report once; drop the rest
                if self.error is None:
                    self.error = exc
                    self._stopped = True
                    try:
                        self._loop.call_soon_threadsafe(self._on_error, exc)
                    except RuntimeError:
                        return  # the loop is gone
                if op == "write":
                    with self._lock:
                        self._pending -= len(item[2])
            try:
                self._loop.call_soon_threadsafe(self._signal)
            except RuntimeError:
                return
