"""The Sharing viewer: shows ``inbox.current`` and steps through everything received.

Controls:

- **Back** / **Forward** step through the history; the **selector** jumps to any item;
- **Pause** holds the current item while new ones arrive (they queue; Forward shows them);
- **Stop** cancels every receive in progress;
- **Load files** opens JupyterLab's file dialog on the inbox folder (with the
  extension), or shows a path box and an upload button (without it), to open any
  local file in the viewer (``inbox.open(path)``);
- **Close** (and closing the widget) calls ``inbox.close()``, which also cancels
  receives in progress. The viewer opens again when the next item arrives.

With the extension, files and links dropped on the viewer are sent to the whole room.
"""

from __future__ import annotations

import tempfile
from html import escape
from pathlib import Path
from typing import TYPE_CHECKING, Any

import ipywidgets as widgets

from ..sharing.inbox import Item
from ..sharing.names import safe_name
from .drop import DropReceiver, Notice
from .frontend import Bridge, box
from .preview import preview
from .pump import UI_LOCK, InboxChanged, Pump, close_tree, closes_once, guard

if TYPE_CHECKING:
    from .api import SessionAPI as Session

MAX_OPTIONS = 1000  # the selector lists the newest items up to this many


def _button(label: str, icon: str, cls: str, tooltip: str) -> widgets.Button:
    b = guard(widgets.Button(description=label, icon=icon, tooltip=tooltip, layout=widgets.Layout(width="auto")))
    b.add_class(cls)
    return b


class Viewer(widgets.VBox):
    """iVisit's Sharing viewer for one session's inbox."""

    def __init__(self, session: "Session", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.inbox = session.inbox
        self.add_class("ivisit-viewer-holder")
        self.back = _button("Back", "arrow-left", "ivisit-back", "Show the previous item")
        self.forward = _button("Forward", "arrow-right", "ivisit-forward", "Show the next item")
        self.pause = guard(widgets.ToggleButton(description="Pause", icon="pause", value=self.inbox.paused,
                                                tooltip="Hold the current item while new ones arrive",
                                                layout=widgets.Layout(width="auto")))
        self.pause.add_class("ivisit-pause")
        self.stop = _button("Stop", "stop", "ivisit-viewer-stop", "Cancel every receive in progress")
        self.load = _button("Load files", "folder-open", "ivisit-load", "Open a local file in the viewer")
        self.close_button = _button("Close", "times", "ivisit-close", "Close the viewer (cancels receives in progress)")
        self.back.on_click(lambda _b: self.step(-1))
        self.forward.on_click(lambda _b: self.step(+1))
        self.pause.observe(self._pause_changed, names="value")
        self.stop.on_click(lambda _b: self.stop_receiving())
        self.load.on_click(lambda _b: self.load_files())
        self.close_button.on_click(lambda _b: self.close_viewer())
        self.selector = guard(widgets.Dropdown(options=[], description="Item", layout=widgets.Layout(width="auto")))
        self.selector.add_class("ivisit-selector")
        self.selector.observe(self._selected, names="value")
        self.title = widgets.HTML()
        self.title.add_class("ivisit-viewer-title")
        self.content = widgets.Box(layout=widgets.Layout(display="flex", flex_flow="column", min_height="60px"))
        self.content.add_class("ivisit-content")
        # Without the extension: a path box and an upload button.
        self.path = widgets.Text(placeholder="path of a local file", layout=widgets.Layout(width="320px"))
        self.open_path = _button("Open", "check", "ivisit-open-path", "Open this file in the viewer")
        self.open_path.on_click(lambda _b: self.open_file(self.path.value))
        self.upload = guard(widgets.FileUpload(multiple=True, description="Upload"))
        self.upload.observe(self._uploaded, names="value")
        self.load_row = widgets.HBox([self.path, self.open_path, self.upload], layout=widgets.Layout(display="none"))
        self.load_row.add_class("ivisit-load-row")
        self.root = box(
            [
                widgets.HBox([self.back, self.forward, self.pause, self.stop, self.load, self.close_button]),
                self.selector, self.load_row, self.title, self.content,
            ],
            classes=["ivisit-viewer"],
            data={"user": session.user},
        )
        self.drops = DropReceiver(session, self.root, to=None)
        self.children = [self.root]
        self._shown: tuple[Any, ...] | None = None  # what the content shows now
        self._count = -1  # items in the selector
        self._updating = False
        self._was_closed = self.inbox.closed
        self._peeking = False  # stepped through the history after a close
        self.refresh()
        self._stop = Pump.of(session).listen(self._on_event)

    # -- actions ---------------------------------------------------------------------------
    def step(self, n: int) -> Item | None:
        """Move ``n`` items (negative: back) through the history."""
        with UI_LOCK:
            self._peeking = True
            item = self.inbox.current
            for _ in range(abs(n)):
                item = self.inbox.back() if n < 0 else self.inbox.forward()
            self.refresh()
            return item

    def show_index(self, index: int) -> None:
        """Show item ``index`` (0 is the oldest)."""
        with UI_LOCK:
            if self.inbox.index is not None:
                self.step(index - self.inbox.index)

    def stop_receiving(self) -> int:
        """Cancel every receive in progress; returns how many were cancelled."""
        reason = f"{self.session.user} pressed Stop in the Sharing viewer"
        active = [t for t in list(self.session.active_transfers) if t.direction == "in" and not t.ended]
        for t in active:
            t.cancel(reason)
        return len(active)

    def open_file(self, path: str | Path) -> Item | None:
        """Show a local file (``inbox.open``); problems go to the status line."""
        with UI_LOCK:
            try:
                item = self.inbox.open(str(path).strip())
            except (OSError, ValueError) as exc:
                Pump.of(self.session).post(Notice(text=f"Cannot open {path}: {exc}", error=True))
                return None
            self.refresh()
            return item

    def load_files(self) -> None:
        """JupyterLab's file dialog on the inbox folder, or the path box and upload button."""
        with UI_LOCK:
            bridge = Bridge.of(self.session)
            folder = self.inbox.root.resolve()
            if bridge is not None and bridge.pick_files(folder, lambda paths: [self.open_file(p) for p in paths]):
                return
            shown = self.load_row.layout.display != "none"
            self.load_row.layout.display = "none" if shown else "flex"
            if not self.path.value:
                self.path.value = str(folder)

    def close_viewer(self) -> None:
        """Close the viewer: ``inbox.close()`` cancels receives in progress."""
        with UI_LOCK:
            self.inbox.close()
            self.refresh()

    # -- showing -----------------------------------------------------------------------------
    def refresh(self) -> None:
        """Show the current item, the position and the selector."""
        with UI_LOCK:
            inbox = self.inbox
            n, index, item = len(inbox), inbox.index, inbox.current
            self._updating = True  # our own changes to the selector are not user choices
            try:
                if n != self._count:
                    self._count = n
                    start = max(0, n - MAX_OPTIONS)
                    frame = inbox.items.iloc[start:]
                    options = [(f"{i + 1}. {row.name} — {row.sender}", i) for i, row in zip(range(start, n), frame.itertuples())]
                    self.selector.options = options
                if index is not None and self.selector.value != index and index >= n - MAX_OPTIONS:
                    self.selector.value = index
            finally:
                self._updating = False
            self.back.disabled = not index
            self.forward.disabled = index is None or index >= n - 1
            if self.pause.value != inbox.paused:
                self.pause.value = inbox.paused
            if inbox.closed and not self._was_closed:
                self._peeking = False
            self._was_closed = inbox.closed
            if inbox.closed and not self._peeking:
                self.title.value = '<span class="ivisit-closed"><i>Viewer closed. It opens again when the next item arrives.</i></span>'
                shown: tuple[Any, ...] = ("closed",)
                make = lambda: widgets.HTML("")
            else:
                self.title.value = self._title(item, index, n)
                shown = ("item", index, item)
                make = lambda: preview(item)
            if shown != self._shown:
                self._shown = shown
                old = list(self.content.children)
                self.content.children = [make()]
                for w in old:
                    close_tree(w)

    def _title(self, item: Item | None, index: int | None, n: int) -> str:
        if item is None or index is None:
            return '<span class="ivisit-viewer-name"><i>Nothing received yet.</i></span>'
        queued = f" · paused, {self.inbox.queued} new" if self.inbox.paused and self.inbox.queued else (" · paused" if self.inbox.paused else "")
        origin = "opened here" if item.lane == "local" else f"from {escape(item.sender)}"
        return (
            f'<span class="ivisit-viewer-name"><b>{escape(item.name)}</b></span> {origin} '
            f'<span class="ivisit-position">({index + 1} of {n}{queued})</span>'
        )

    def _pause_changed(self, change: dict[str, Any]) -> None:
        with UI_LOCK:
            self.inbox.paused = bool(change["new"])
            self.refresh()

    def _selected(self, change: dict[str, Any]) -> None:
        with UI_LOCK:
            if not self._updating and change["new"] is not None and change["new"] != self.inbox.index:
                self.show_index(int(change["new"]))

    def _uploaded(self, change: dict[str, Any]) -> None:
        with UI_LOCK:
            files = change["new"] or ()
            if not files:
                return
            folder = Path(tempfile.mkdtemp(prefix="ivisit-upload-"))
            for f in files:
                target = folder / safe_name(str(f["name"]), fallback="upload")
                target.write_bytes(bytes(f["content"]))
                self.open_file(target)
            self.upload.value = ()

    def _on_event(self, event: Any) -> None:
        if isinstance(event, InboxChanged):
            self.refresh()

    @closes_once
    def close(self) -> None:
        """Closing the widget closes the viewer too (``inbox.close()``)."""
        if getattr(self, "_closing", False) or not hasattr(self, "_stop"):
            super().close()  # closed already, or never fully built
            return
        with UI_LOCK:
            self._closing = True
            self._stop()
            self.drops.close()
            try:
                self.inbox.close()
            finally:
                close_tree(self.root)
                super().close()
