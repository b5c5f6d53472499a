"""A request waiting for the user's decision: iVisit's four choices.

Calls, messages and file/URL offers that the settings say to *ask* about wait as
:class:`Request` objects until one of these is chosen::

    req.accept(always=True)   # Accept always from USER
    req.accept()              # Accept this one
    req.refuse(always=True)   # Refuse always from USER
    req.refuse()              # Refuse this one
"""

from __future__ import annotations

import threading
import time
from typing import Any, Callable

Resolver = Callable[["Request", str, bool, str], None]


class Request:
    """One pending decision. ``kind`` is ``call``, ``message``, ``file`` or ``url``."""

    def __init__(self, kind: str, sender: str, resolver: Resolver, **details: Any) -> None:
        self.kind = kind
        self.sender = sender
        self.details = details
        self.created = time.time()
        self.decision: str | None = None
        self.decided_by: str | None = None
        self._resolver = resolver
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        details = self.__dict__.get("details", {})
        if name in details:
            return details[name]
        raise AttributeError(name)

    @property
    def pending(self) -> bool:
        return self.decision is None

    def _decide(self, decision: str, always: bool, by: str) -> bool:
        with self._lock:
            if self.decision is not None:
                return False
            self.decision = decision
            self.decided_by = by
        self._resolver(self, decision, always, by)
        return True

    def accept(self, always: bool = False) -> None:
        """Accept this one; with ``always=True`` also accept all future ones from this sender."""
        if not self._decide("accept", always, "user (always)" if always else "user"):
            raise RuntimeError(f"this {self.kind} from {self.sender} was already decided: {self.decision}")

    def refuse(self, always: bool = False) -> None:
        """Refuse this one; with ``always=True`` also refuse all future ones from this sender."""
        if not self._decide("refuse", always, "user (always)" if always else "user"):
            raise RuntimeError(f"this {self.kind} from {self.sender} was already decided: {self.decision}")

    def expire(self, reason: str = "no answer") -> bool:
        """Refuse because nobody answered in time. False if it was already decided."""
        return self._decide("refuse", False, reason)

    def __repr__(self) -> str:
        state = self.decision or "pending"
        extra = " ".join(f"{k}={v!r}" for k, v in self.details.items())
        return f"<Request {self.kind} from {self.sender} {extra} [{state}]>"
