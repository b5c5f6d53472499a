"""The roster: one tile per connected user, with a reception button and User Settings.

A tile shows the user's video (:class:`~ivisit_nb.widgets.video.VideoView` of
``session.video_feed(user)``; "no video" while none comes), name, link state and
short authentication string (SAS). Under it:

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
from .pump import UI_LOCK, Pump, SettingChanged, Tick, close_tree, closes_once, guard
from .settings_panel import SettingsPanel
from .video import video_widget

if TYPE_CHECKING:
    from .api import PeerAPI as Peer
    from .api import SessionAPI as Session

STATE_COLOURS = {"connected": "green", "connecting": "orange", "new": "grey", "failed": "red", "closed": "grey"}


class Tile(widgets.VBox):
    """One user: video, name, link state, SAS, reception button and settings arrow.

    ``tile.latest_frame`` is the newest frame of the user's video (RGB numpy array) and
    ``tile.stats`` its statistics (:class:`~ivisit_nb.media.FeedStats`: received and
    displayed fps, resolution, bitrate, dropped frames, latency).
    """

    def __init__(self, session: "Session", user: str, *, feed: Any = None, video_width: int = 320, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session, self.user = session, user
        self.feed = feed if feed is not None else video_feed_of(session, user)
        self.video = video_widget(self.feed, width=video_width)
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
    def latest_frame(self) -> Any:
        """The newest frame of this user's video as an RGB ``uint8`` array (H x W x 3), or None."""
        return self.video.latest_frame

    @property
    def stats(self) -> Any:
        """This video's :class:`~ivisit_nb.media.FeedStats` with the frames this tile displayed, or None."""
        return self.video.stats

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
            self.video.active = bool(getattr(self.feed, "active", False))
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

    @closes_once
    def close(self) -> None:
        with UI_LOCK:
            self.drops.close()
            for child in list(self.children):
                close_tree(child)
            super().close()


class PreviewTile(widgets.VBox):
    """Your own video as the others get it (``session.local_feed``), with a Start/Stop video button.

    Its element is ``<div class="ivisit-tile ivisit-preview" data-local="NAME">``; it takes no drops.
    """

    def __init__(self, session: "Session", *, video_width: int = 320, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.feed = getattr(session, "local_feed", None)
        self.video = video_widget(self.feed, width=video_width)
        self.name = widgets.HTML(f"<b>{escape(session.user)}</b> (you)")
        self.button = guard(widgets.Button(layout=widgets.Layout(width="auto")))
        self.button.add_class("ivisit-video-button")
        self.button.on_click(lambda _b: self.toggle_video())
        self.message = widgets.HTML()
        self.root = box([self.video, self.name, self.button, self.message], classes=["ivisit-tile", "ivisit-preview"],
                        data={"local": session.user})
        self.add_class("ivisit-tile-holder")
        self.children = [self.root]
        self.refresh()

    @property
    def sending(self) -> bool:
        return bool(getattr(self.feed, "active", False))

    @property
    def latest_frame(self) -> Any:
        return self.video.latest_frame

    @property
    def stats(self) -> Any:
        return self.video.stats

    def toggle_video(self) -> None:
        """Start sending video to everyone linked (a test pattern unless a source was given), or stop."""
        with UI_LOCK:
            try:
                if self.sending:
                    self.session.stop_video()
                else:
                    self.session.start_video()
                self.message.value = ""
            except Exception as exc:  # no video support, no peers, a source that failed
                self.message.value = f'<small style="color:var(--jp-error-color1)">{escape(str(exc))}</small>'
            self.refresh()

    def refresh(self) -> None:
        with UI_LOCK:
            self.video.active = self.sending
            self.button.disabled = not hasattr(self.session, "start_video")
            self.button.description = "Stop video" if self.sending else "Start video"
            self.button.icon = "stop" if self.sending else "video-camera"

    @closes_once
    def close(self) -> None:
        with UI_LOCK:
            for child in list(self.children):
                close_tree(child)
            super().close()


def video_feed_of(session: "Session", user: str) -> Any:
    """``session.video_feed(user)``, or None for a session without video."""
    get = getattr(session, "video_feed", None)
    if get is None:
        return None
    try:
        return get(user)
    except Exception:  # not linked (yet)
        return None


VIDEO_EVENTS = tuple(e for e in (getattr(ev, "VideoChanged", None),) if e is not None)


class Roster(widgets.HBox):
    """A tile per user linked with (or joining) this session; follows joins, leaves and link changes."""

    def __init__(self, session: "Session", **kwargs: Any) -> None:
        kwargs.setdefault("layout", widgets.Layout(flex_flow="row wrap", flex="1 1 0", min_width="200px"))
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
        elif VIDEO_EVENTS and isinstance(event, VIDEO_EVENTS):
            tile = self.tiles.get(getattr(event, "user", "") or "")
            if tile is not None:
                tile.refresh()
        elif isinstance(event, SettingChanged) and event.field == "blocked":
            tile = self.tiles.get(event.user or "")
            for t in ([tile] if tile else self.tiles.values()):
                t.refresh()

    @closes_once
    def close(self) -> None:
        with UI_LOCK:
            self._stop()
            for tile in self.tiles.values():
                close_tree(tile)
            self.empty.close()
            super().close()
