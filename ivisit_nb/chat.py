"""Chat: short text messages over peer links, governed by each sender's ``messages`` setting.

A link protocol owning the ``chat`` control type (docs/protocol.md, section 2).
Text from a peer is cleaned before it is stored or shown. Runs on the engine loop.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any, Callable

from . import events as ev
from .consent import Request
from .engine.linkproto import BaseLinkProtocol
from .protocol.text import clean_line, clean_text
from .settings import Settings

log = logging.getLogger("ivisit_nb.chat")

MAX_CHAT = 16 * 1024  # bytes of UTF-8 in one message
MAX_LOG = 100_000  # messages kept in the log
COLUMNS = ["time", "sender", "to", "text", "decision"]


class Chat(BaseLinkProtocol):
    """The chat log and the ``chat`` message, shared by all of a session's links."""

    control_types = frozenset({"chat"})

    def __init__(self, user: str, settings: Settings, emit: Callable[[ev.Event], None]) -> None:
        self.user, self.settings, self._emit = user, settings, emit
        self.rows: list[dict[str, Any]] = []
        self.requests: list[Request] = []
        self._lock = threading.Lock()

    @staticmethod
    def check(text: Any) -> str:
        """``text`` if it can be sent, else ``TypeError`` / ``ValueError`` saying why."""
        if not isinstance(text, str):
            raise TypeError("text must be a string")
        try:
            size = len(text.encode())
        except UnicodeEncodeError:
            raise ValueError("text contains a lone surrogate, which is not valid Unicode; remove it") from None
        if size > MAX_CHAT:
            raise ValueError(f"message is {size} bytes; the limit is {MAX_CHAT}")
        return text

    def send(self, links: list[Any], text: str, to: str | None) -> list[str]:
        """Send ``text`` on ``links``; returns whom it reached, and logs it as sent."""
        reached = [link.remote for link in links if link.send({"t": "chat", "text": text, "to": to})]
        self.record(self.user, to, text, "sent", emit=False)
        return reached

    def record(self, sender: str, to: str | None, text: str | None, decision: str, emit: bool = True) -> None:
        with self._lock:
            self.rows.append({"time": time.time(), "sender": sender, "to": to, "text": text, "decision": decision})
            del self.rows[:-MAX_LOG]
        if emit:
            self._emit(ev.MessageReceived(sender=sender, to=to, text=text, decision=decision))

    def on_control(self, link: Any, msg: dict[str, Any]) -> None:
        text, to = msg.get("text"), msg.get("to")
        if not isinstance(text, str) or len(text) > MAX_CHAT:
            log.warning("%s sent an invalid or oversized chat message; dropped", link.remote)
            return
        text = clean_text(text, MAX_CHAT)
        to = clean_line(to, 256) if isinstance(to, str) else None
        sender = link.remote
        decision = self.settings.decide(sender, "messages")
        if decision == "accept":
            self.record(sender, to, text, "accept")
        elif decision == "refuse":
            self.record(sender, to, None, "refuse")
        else:
            def resolve(req: Request, decision: str, always: bool, by: str) -> None:
                if always:
                    self.settings[sender].messages = decision
                self.record(sender, to, text if decision == "accept" else None, decision)

            req = Request("message", sender, resolve, text=text, to=to)
            self.requests = [r for r in self.requests if r.pending][-1000:] + [req]
            self._emit(ev.RequestPending(request=req))
