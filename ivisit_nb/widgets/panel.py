"""The panel ``session.ui()`` returns: everything in one place.

Top to bottom: who you are and the "Receive files and URLs" switch, your own
video preview beside the roster of tiles (one per linked user, with their
video), pending offers and video requests, transfers in progress, the Sharing
viewer, and a status line (drops sent, errors).
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .drop import Notice
from .frontend import Bridge, extension_available
from .offers import OfferDialog
from .progress import ProgressList
from .pump import UI_LOCK, Pump, Tick, close_tree, closes_once
from .roster import VIDEO_EVENTS, PreviewTile, Roster
from .settings_panel import ReceiveToggle
from .viewer import Viewer

if TYPE_CHECKING:
    from .api import SessionAPI as Session


class Panel(widgets.VBox):
    """Roster, receive switch, offers, progress and viewer for one session.

    The parts are attributes (``preview``, ``roster``, ``receive``, ``offers``, ``progress``,
    ``viewer``); each can also be built and displayed on its own.
    """

    def __init__(self, session: "Session", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.add_class("ivisit-panel")
        where = f" in {escape(session.room)}" if session.room else ""
        self.header = widgets.HTML(f'<b class="ivisit-me">{escape(session.user)}</b>{where}')
        self.receive = ReceiveToggle(session)
        self.preview = PreviewTile(session)
        self.roster = Roster(session)
        self.offers = OfferDialog(session)
        self.progress = ProgressList(session)
        self.viewer = Viewer(session)
        self.status = widgets.HTML()
        self.status.add_class("ivisit-status-line")
        hint = "" if extension_available() else " · drag and drop and notifications need the ivisit-nb JupyterLab extension"
        self.status.value = f"<small>{hint}</small>" if hint else ""
        self.children = [
            widgets.HBox([self.header, self.receive], layout=widgets.Layout(align_items="center", grid_gap="16px")),
            widgets.HBox([self.preview, self.roster], layout=widgets.Layout(flex_flow="row wrap")),
            self.offers, self.progress, self.viewer, self.status,
        ]
        self.bridge = Bridge.of(session)
        self._stop = Pump.of(session).listen(self._on_event)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Tick) or (VIDEO_EVENTS and isinstance(event, VIDEO_EVENTS)):
            self.preview.refresh()
        elif isinstance(event, Notice):
            colour = "var(--jp-error-color1)" if event.error else "var(--jp-ui-font-color2)"
            self.status.value = f'<small style="color:{colour}">{escape(event.text)}</small>'

    @closes_once
    def close(self) -> None:
        """Close every part; closing the viewer calls ``inbox.close()``."""
        with UI_LOCK:
            self._stop()
            for child in list(self.children):
                close_tree(child)  # the parts' own close() runs on the way
            super().close()
