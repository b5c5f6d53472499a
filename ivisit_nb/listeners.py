"""One listener mechanism for the whole package: session events, inbox changes, settings changes.

    changes = Listeners("inbox change")
    unsubscribe = changes.add(lambda: print("changed"))
    changes()          # calls every listener; one that raises is logged, the rest still run
    unsubscribe()
"""

from __future__ import annotations

import logging
import threading
from typing import Any, Callable, Generic, TypeVar

log = logging.getLogger("ivisit_nb.listeners")

F = TypeVar("F", bound=Callable[..., Any])


class Listeners(Generic[F]):
    """A thread-safe list of callbacks, called in the order they were added."""

    def __init__(self, what: str) -> None:
        self.what = what
        self._callbacks: list[F] = []
        self._lock = threading.Lock()

    def add(self, callback: F) -> Callable[[], None]:
        """Call ``callback`` on every notification; returns a function that removes it again."""
        with self._lock:
            self._callbacks.append(callback)

        def remove() -> None:
            with self._lock:
                if callback in self._callbacks:
                    self._callbacks.remove(callback)

        return remove

    def __call__(self, *args: Any) -> None:
        with self._lock:
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(*args)
            except Exception:
                log.exception("a %s listener failed", self.what)

    def __len__(self) -> int:
        return len(self._callbacks)
