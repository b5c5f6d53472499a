"""The accept/refuse dialog: iVisit's four choices for every incoming file, URL or video request.

Each pending offer gets a card (name, size and sender) with four buttons::

    Accept always from alice | Accept this file | Refuse always from alice | Refuse this file

For a URL the middle words are "this URL", for video (``request.kind == "video"``: alice
wants to send you her video) "this call". Cards queue, oldest first. With the
extension the same question also pops up as a JupyterLab notification with the
same four buttons; it stays until answered, and goes away when the offer is
answered in the panel, times out or is cancelled.

1:1 calls and chat messages that wait for a decision are not shown here (files,
URLs and video only).
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .. import events as ev
from ..consent import Request
from ..sharing.transfers import kib
from .frontend import Bridge, box
from .pump import UI_LOCK, Pump, Tick, close_tree, closes_once, guard

VIDEO_EVENTS = tuple(e for e in (getattr(ev, "VideoChanged", None),) if e is not None)

if TYPE_CHECKING:
    from .api import SessionAPI as Session

KINDS = ("file", "url", "video")
THIS = {"file": "this file", "url": "this URL", "video": "this call"}


def choice_labels(request: Request) -> list[str]:
    """The four button labels, in order: accept always, accept this, refuse always, refuse this."""
    what = THIS.get(request.kind, "this file")
    return [
        f"Accept always from {request.sender}",
        f"Accept {what}",
        f"Refuse always from {request.sender}",
        f"Refuse {what}",
    ]


def describe(request: Request) -> str:
    """One line of plain text: who offers what."""
    if request.kind == "video":
        return f"{request.sender} wants to send you video"
    if request.kind == "url":
        return f"{request.sender} offers the URL {request.details.get('url') or request.details.get('name')}"
    return f"{request.sender} offers {request.details.get('name')} ({kib(int(request.details.get('size') or 0))})"


def decide(request: Request, index: int) -> bool:
    """Apply choice ``index`` (0..3, in :func:`choice_labels` order). False if it was already decided."""
    if not request.pending:
        return False
    try:
        if index == 0:
            request.accept(always=True)
        elif index == 1:
            request.accept()
        elif index == 2:
            request.refuse(always=True)
        elif index == 3:
            request.refuse()
        else:
            return False
    except RuntimeError:  # decided meanwhile (timed out, cancelled)
        return False
    return True


class OfferCard(widgets.VBox):
    """One offer with its four buttons."""

    def __init__(self, request: Request, on_answered: Any = None, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.request = request
        self._on_answered = on_answered
        d = request.details
        if request.kind == "video":
            what = "video"
        elif request.kind == "url":
            what = f"the URL <code>{escape(str(d.get('url') or d.get('name')))}</code>"
        else:
            what = f"<b>{escape(str(d.get('name')))}</b> ({escape(kib(int(d.get('size') or 0)))})"
        verb = "wants to send you" if request.kind == "video" else "offers"
        self.text = widgets.HTML(f"<b>{escape(request.sender)}</b> {verb} {what}")
        self.buttons: list[widgets.Button] = []
        for index, label in enumerate(choice_labels(request)):
            button = guard(widgets.Button(description=label, layout=widgets.Layout(width="auto")))
            button.button_style = "primary" if index == 1 else ""
            button.add_class(f"ivisit-choice-{index}")
            button.on_click(lambda _b, i=index: self.choose(i))
            self.buttons.append(button)
        self.root = box(
            [self.text, widgets.HBox(self.buttons, layout=widgets.Layout(flex_flow="row wrap"))],
            classes=["ivisit-offer"],
            data={"transfer": str(d.get("transfer_id", "")), "sender": request.sender, "kind": request.kind},
        )
        self.children = [self.root]

    def choose(self, index: int) -> bool:
        """Answer with choice ``index`` (0..3). False if the offer was no longer pending."""
        with UI_LOCK:
            done = decide(self.request, index)
            if self._on_answered is not None:
                self._on_answered(self)
            return done


class OfferDialog(widgets.VBox):
    """Every pending file/URL offer and video request of a session, oldest first, each answerable
    inline or from a notification."""

    def __init__(self, session: "Session", *, notify: bool = True, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.add_class("ivisit-offers")
        self.cards: dict[int, OfferCard] = {}  # id(request) -> card
        self.bridge = Bridge.of(session) if notify else None
        with UI_LOCK:
            for request in [*session.pending_offers, *getattr(session, "video_requests", [])]:
                self._add(request)
        self._stop = Pump.of(session).listen(self._on_event)

    @property
    def pending(self) -> list[Request]:
        """The requests shown, oldest first."""
        return [c.request for c in self.cards.values()]

    def _key(self, request: Request) -> str:
        if request.kind == "video":
            return f"video-{id(request)}"
        return f"offer-{request.details.get('transfer_id') or id(request)}"

    def _add(self, request: Request) -> None:
        if request.kind not in KINDS or not request.pending or id(request) in self.cards:
            return
        card = OfferCard(request, on_answered=self._remove)
        self.cards[id(request)] = card
        self.children = [*self.children, card]
        if self.bridge is not None:
            self.bridge.notify(self._key(request), describe(request), choice_labels(request), card.choose)

    def _remove(self, card: OfferCard) -> None:
        if self.cards.pop(id(card.request), None) is None:
            return
        self.children = [c for c in self.children if c is not card]
        if self.bridge is not None:
            self.bridge.dismiss(self._key(card.request))
        close_tree(card)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, ev.RequestPending):
            self._add(event.request)
        elif isinstance(event, (ev.TransferEnded, Tick, *VIDEO_EVENTS)):
            # answered elsewhere, timed out, cancelled by the sender or the link went down
            ended = event.transfer.transfer_id if isinstance(event, ev.TransferEnded) else None
            for card in list(self.cards.values()):
                if not card.request.pending or (ended is not None and card.request.details.get("transfer_id") == ended):
                    self._remove(card)

    @closes_once
    def close(self) -> None:
        with UI_LOCK:
            self._stop()
            for card in self.cards.values():
                if self.bridge is not None:
                    self.bridge.dismiss(self._key(card.request))
                close_tree(card)
            self.cards.clear()
            super().close()
