"""The engine thread: one asyncio loop per session, off the notebook kernel's loop.

ipykernel 7 may stall asyncio tasks started from a cell once the cell ends
(ipykernel#1510), so every aiortc object lives on a loop in a thread of our own.
Calls cross in with ``run_coroutine_threadsafe`` and come back as :class:`Handle`.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import logging
import threading
from typing import Any, Awaitable, Callable, Coroutine, Generic, TypeVar

log = logging.getLogger("ivisit_nb.engine")

T = TypeVar("T")


class Handle(Generic[T]):
    """A result that will arrive from the engine thread.

    Wait for it with :meth:`wait` (plain code and notebook cells) or ``await`` it
    (async code, on any event loop).
    """

    def __init__(self, future: concurrent.futures.Future[T]) -> None:
        self._future = future

    def wait(self, timeout: float | None = None) -> T:
        """Block until done and return the result; ``TimeoutError`` after ``timeout`` s."""
        try:
            return self._future.result(timeout)
        except TimeoutError:
            if self._future.done():
                raise  # the work itself timed out: keep its message
            raise TimeoutError(f"still running after {timeout} s") from None

    def done(self) -> bool:
        """True once the result (or an error) is there."""
        return self._future.done()

    def __await__(self):
        return asyncio.wrap_future(self._future).__await__()


def _new_loop(use_uvloop: bool | None) -> asyncio.AbstractEventLoop:
    """uvloop when asked, or when ``None`` and it is installed (it doubles data-channel throughput)."""
    if use_uvloop is not False:
        try:
            import uvloop
        except ImportError:
            if use_uvloop:
                raise ImportError("use_uvloop=True needs uvloop: pip install 'ivisit-nb[fast]'") from None
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


class EngineLoop:
    """An asyncio event loop running in a daemon thread, started at construction."""

    def __init__(self, name: str = "ivisit-engine", use_uvloop: bool | None = None) -> None:
        self.loop = _new_loop(use_uvloop)
        self.loop.set_exception_handler(self._on_loop_error)
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        try:
            self.loop.run_forever()
        finally:
            self.loop.close()

    @staticmethod
    def _on_loop_error(loop: asyncio.AbstractEventLoop, context: dict[str, Any]) -> None:
        log.debug("engine loop: %s", context.get("message"), exc_info=context.get("exception"))

    @property
    def in_engine(self) -> bool:
        """True when called from the engine thread itself."""
        return threading.current_thread() is self._thread

    @property
    def alive(self) -> bool:
        return self._thread.is_alive()

    def submit(self, coro: Coroutine[Any, Any, T]) -> Handle[T]:
        """Run ``coro`` on the engine loop; returns a :class:`Handle` at once."""
        return Handle(asyncio.run_coroutine_threadsafe(coro, self.loop))

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the engine loop and wait for its result (not from the engine)."""
        if self.in_engine:
            coro.close()
            raise RuntimeError("EngineLoop.run() called from the engine thread; await it instead")
        return self.submit(coro).wait(timeout)

    def call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        """Schedule a plain function on the engine loop (thread-safe)."""
        self.loop.call_soon_threadsafe(fn, *args)

    def stop(self, timeout: float = 10.0) -> None:
        """Cancel leftover tasks, stop the loop and join the thread. Idempotent."""
        if not self._thread.is_alive():
            return

        async def _cancel_all() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            await self.loop.shutdown_asyncgens()

        try:
            self.run(_cancel_all(), timeout)
        except Exception:  # pragma: no cover - best effort on shutdown
            log.debug("engine shutdown", exc_info=True)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)


def spawn(coro: Awaitable[Any], name: str) -> asyncio.Task[Any]:
    """Start a background task whose failure is logged instead of lost."""
    task = asyncio.ensure_future(coro)
    task.set_name(name)

    def _done(t: asyncio.Task[Any]) -> None:
        if not t.cancelled() and t.exception() is not None:
            log.warning("task %s failed: %r", name, t.exception(), exc_info=t.exception())

    task.add_done_callback(_done)
    return task
