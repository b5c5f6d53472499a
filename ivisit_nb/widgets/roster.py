"""The roster: one tile per connected user, with a reception button and User Settings.

A tile shows the user's name, link state and short authentication string (SAS),
with a placeholder where video will go. Under it:

- the **reception button** blocks or unblocks files and URLs from that user
  (``session.settings[user].blocked``); its label always says which;
- the **settings arrow** opens that user's :class:`~ivisit_nb.widgets.settings_panel.SettingsPanel`.

With the extension, a tile's element is ``<div class="ivisit-tile" data-user="NAME">``
and takes drops: what is dropped is sent to that user only.
"""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from .. import events as ev
from .drop import DropReceiver
from .frontend import box
from .pump import UI_LOCK, Pump, SettingChanged, Tick, close_tree, guard
from .settings_panel import SettingsPanel

if TYPE_CHECKING:
    from .api import PeerAPI as Peer
    from .api import SessionAPI as Session

STATE_COLOURS = {"connected": "green", "connecting": "orange", "new": "grey", "failed": "red", "closed": "grey"}


class Tile(widgets.VBox):
    """One user: name, link state, SAS, video placeholder, reception button and settings arrow."""

    def __init__(self, session: "Session", user: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session, self.user = session, user
        self.video = widgets.HTML('<div class="ivisit-video">no video</div>')
        self.name = widgets.HTML(f"<b>{escape(user)}</b>")
        self.state = widgets.HTML()
        self.sas = widgets.HTML()
        self.reception = guard(widgets.Button(layout=widgets.Layout(width="auto")))
        self.reception.add_class("ivisit-reception")
        self.reception.on_click(lambda _b: self.toggle_blocked())
        self.arrow = guard(widgets.Button(description="Settings ▸", layout=widgets.Layout(width="auto")))
        self.arrow.add_class("ivisit-settings-arrow")
        self.arrow.on_click(lambda _b: self.toggle_settings())
        self.settings_panel: SettingsPanel | None = None
        self.root = box(
            [self.video, self.name, self.state, self.sas, widgets.HBox([self.reception, self.arrow])],
            classes=["ivisit-tile"],
            data={"user": user},
        )
        self.drops = DropReceiver(session, self.root, to=user)
        self.add_class("ivisit-tile-holder")
        self.children = [self.root]
        self.refresh()

    @property
    def blocked(self) -> bool:
        """True while files and URLs from this user are refused."""
        return bool(self.session.settings[self.user].blocked)

    def toggle_blocked(self) -> None:
        """Block or unblock files and URLs from this user (the reception button)."""
        with UI_LOCK:
            self.session.settings[self.user].blocked = not self.blocked
            self.refresh()

    def toggle_settings(self) -> None:
        """Open or close User Settings for this user (the settings arrow)."""
        with UI_LOCK:
            if self.settings_panel is None:
                self.settings_panel = SettingsPanel(self.session, self.user)
                self.children = [self.root, self.settings_panel]
                self.arrow.description = "Settings ▾"
            else:
                close_tree(self.settings_panel)
                self.settings_panel = None
                self.children = [self.root]
                self.arrow.description = "Settings ▸"

    def refresh(self) -> None:
        """Show the current link state, SAS and reception state."""
        with UI_LOCK:
            peer: Peer | None = self.session.peers.get(self.user)
            state = peer.state if peer else "gone"
            colour = STATE_COLOURS.get(state, "grey")
            rtt = f" · {peer.rtt * 1000:.0f} ms" if peer and peer.rtt is not None else ""
            self.state.value = f'<span class="ivisit-state" style="color:{colour}">{escape(state)}</span>{rtt}'
            sas = peer.sas if peer else None
            self.sas.value = f'<span class="ivisit-sas">SAS: <code>{escape(sas)}</code></span>' if sas else '<span class="ivisit-sas">SAS: –</span>'
            if self.blocked:
                self.reception.description = f"Blocked: {self.user}"
                self.reception.button_style = "danger"
                self.reception.icon = "ban"
                self.reception.tooltip = f"Files and URLs from {self.user} are refused; click to receive them again"
            else:
                self.reception.description = f"Receiving from {self.user}"
                self.reception.button_style = "success"
                self.reception.icon = "check"
                self.reception.tooltip = f"Click to block files and URLs from {self.user}"

    def close(self) -> None:
        with UI_LOCK:
            self.drops.close()
            for child in list(self.children):
                close_tree(child)
            super().close()


class Roster(widgets.HBox):
    """A tile per user linked with (or joining) this session; follows joins, leaves and link changes."""

    def __init__(self, session: "Session", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.add_class("ivisit-roster")
        self.tiles: dict[str, Tile] = {}
        self.empty = widgets.HTML("<i>Nobody else is here yet.</i>")
        self.refresh()
        self._stop = Pump.of(session).listen(self._on_event)

    def refresh(self) -> None:
        """Add tiles for new peers, drop tiles of peers gone, update the rest."""
        with UI_LOCK:
            names = sorted(self.session.peers)
            for gone in [n for n in self.tiles if n not in names]:
                close_tree(self.tiles.pop(gone))
            for name in names:
                if name in self.tiles:
                    self.tiles[name].refresh()
                else:
                    self.tiles[name] = Tile(self.session, name)
            children = [self.tiles[n] for n in names] or [self.empty]
            if list(self.children) != children:
                self.children = children

    def _on_event(self, event: Any) -> None:
        if isinstance(event, (ev.PeerStateChanged, ev.MemberJoined, ev.MemberLeft, ev.Connected, Tick)):
            self.refresh()
        elif isinstance(event, SettingChanged) and event.field == "blocked":
            tile = self.tiles.get(event.user or "")
            for t in ([tile] if tile else self.tiles.values()):
                t.refresh()

    def close(self) -> None:
        with UI_LOCK:
            self._stop()
            for tile in self.tiles.values():
                close_tree(tile)
            self.empty.close()
            super().close()
