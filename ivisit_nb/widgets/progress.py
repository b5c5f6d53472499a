"""Progress lines: ``Transferring NAME from USER, x% of yK received``, a bar, the rate and Stop.

One line per transfer in progress, both directions. Updates come through the
session's :class:`~ivisit_nb.widgets.pump.Pump`, so a line changes at most ten
times a second however fast the bytes flow. Ended lines stay (with how they
ended) until :data:`KEEP_ENDED` newer ones have ended.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .. import events as ev
from ..sharing.transfers import Transfer
from .frontend import box
from .pump import UI_LOCK, Pump, Tick, close_tree, closes_once, guard
from .units import human_rate

if TYPE_CHECKING:
    from .api import SessionAPI as Session

KEEP_ENDED = 3


class ProgressLine(widgets.VBox):
    """One transfer: its iVisit progress text, a bar, the rate and a Stop button."""

    def __init__(self, transfer: Transfer, user: str = "", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.transfer = transfer
        self.user = user  # who presses Stop
        self.text = widgets.HTML()
        self.text.add_class("ivisit-progress-text")
        self.bar = widgets.FloatProgress(min=0.0, max=1.0, layout=widgets.Layout(width="260px"))
        self.rate = widgets.HTML()
        self.rate.add_class("ivisit-rate")
        self.stop = guard(widgets.Button(description="Stop", icon="stop", layout=widgets.Layout(width="auto")))
        self.stop.add_class("ivisit-stop")
        self.stop.on_click(lambda _b: self.cancel())
        self.root = box(
            [self.text, widgets.HBox([self.bar, self.rate, self.stop])],
            classes=["ivisit-progress"],
            data={"transfer": transfer.transfer_id, "direction": transfer.direction, "peer": transfer.peer},
        )
        self.children = [self.root]
        self.show(transfer.received, transfer.rate, transfer.text)

    def show(self, received: int, rate: float, text: str) -> None:
        """Show ``received`` bytes at ``rate`` bytes/s with iVisit's line ``text``."""
        with UI_LOCK:
            t = self.transfer
            self.text.value = f"<span>{escape(text)}</span>"
            self.bar.value = min(1.0, received / t.size) if t.size > 0 else 0.0
            self.rate.value = f"<span>{escape(human_rate(rate))}</span>"

    def ended(self, status: str, reason: str) -> None:
        """Show how the transfer ended; Stop is disabled."""
        with UI_LOCK:
            t = self.transfer
            self.show(t.received, t.rate, t.text)
            if status == "done":
                self.bar.value = 1.0
                self.bar.bar_style = "success"
            else:
                self.bar.bar_style = "danger"
            extra = f": {reason}" if reason and status != "done" else ""
            self.rate.value = f'<span class="ivisit-status">{escape(status + extra)}</span>'
            self.stop.disabled = True
            self.root.add_class(f"ivisit-{status}")

    def cancel(self) -> None:
        """Stop the transfer (both sides learn it)."""
        self.transfer.cancel(f"{self.user or 'the user'} pressed Stop")


class ProgressList(widgets.VBox):
    """A :class:`ProgressLine` for every file transfer of a session in progress, both directions."""

    def __init__(self, session: "Session", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.add_class("ivisit-progress-list")
        self.lines: dict[str, ProgressLine] = {}
        self._ended: list[str] = []
        self._scan()
        self._stop = Pump.of(session).listen(self._on_event)

    def line(self, transfer: Transfer) -> ProgressLine:
        """The line of ``transfer``, added if new."""
        with UI_LOCK:
            line = self.lines.get(transfer.transfer_id)
            if line is None:
                line = self.lines[transfer.transfer_id] = ProgressLine(transfer, self.session.user)
                self.children = [*self.children, line]
            return line

    def _scan(self) -> None:
        # Transfers that started before this list existed (or whose first event was coalesced away).
        for t in list(self.session.active_transfers):
            if t.status == "transferring" and t.kind == "file" and t.transfer_id not in self.lines:
                self.line(t)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, ev.TransferProgress):
            t = event.transfer
            if not t.ended:
                self.line(t).show(event.bytes, event.rate, event.text)
        elif isinstance(event, ev.TransferEnded):
            line = self.lines.get(event.transfer.transfer_id)
            if line is not None:
                line.ended(event.status, event.reason)
                self._ended.append(event.transfer.transfer_id)
                self._prune()
        elif isinstance(event, Tick):
            self._scan()

    def _prune(self) -> None:
        while len(self._ended) > KEEP_ENDED:
            old = self.lines.pop(self._ended.pop(0), None)
            if old is not None:
                self.children = [c for c in self.children if c is not old]
                close_tree(old)

    @closes_once
    def close(self) -> None:
        with UI_LOCK:
            self._stop()
            for line in self.lines.values():
                close_tree(line)
            super().close()
