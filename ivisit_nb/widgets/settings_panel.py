"""User Settings (per sender: calls, messages, files, URLs) and the "Receive files and URLs" switch."""

from __future__ import annotations

from html import escape
from typing import TYPE_CHECKING, Any, Callable

import ipywidgets as widgets

from ..settings import CHOICES, KINDS
from .pump import UI_LOCK, Pump, SettingChanged, Tick, close_tree, closes_once, guard

if TYPE_CHECKING:
    from .api import SessionAPI as Session

LABELS = {"calls": "Calls", "messages": "Messages", "files": "Files", "urls": "URLs"}


class SettingsPanel(widgets.VBox):
    """User Settings for one sender: each of calls, messages, files, URLs is ask, accept or refuse.

    Changes are saved at once (``session.settings[user]``) and follow changes made from code.
    """

    def __init__(self, session: "Session", user: str, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session, self.user = session, user
        self.add_class("ivisit-settings")
        self.title = widgets.HTML(f"<b>User Settings for {escape(user)}</b>")
        self.choices: dict[str, widgets.ToggleButtons] = {}
        rows: list[widgets.Widget] = [self.title]
        current = session.settings[user]
        for kind in KINDS:
            toggle = guard(widgets.ToggleButtons(
                options=list(CHOICES), value=getattr(current, kind), description=LABELS[kind],
                style={"button_width": "70px"},
            ))
            toggle.add_class(f"ivisit-setting-{kind}")
            toggle.observe(self._changed(kind), names="value")
            self.choices[kind] = toggle
            rows.append(toggle)
        self.children = rows
        self._stop = Pump.of(session).listen(self._on_event)

    def _changed(self, kind: str) -> Callable[[dict[str, Any]], None]:
        def apply(change: dict[str, Any]) -> None:
            with UI_LOCK:
                if getattr(self.session.settings[self.user], kind) != change["new"]:
                    setattr(self.session.settings[self.user], kind, change["new"])

        return apply

    def refresh(self) -> None:
        """Show the saved values."""
        with UI_LOCK:
            current = self.session.settings[self.user]
            for kind, toggle in self.choices.items():
                toggle.value = getattr(current, kind)

    def _on_event(self, event: Any) -> None:
        if isinstance(event, SettingChanged) and event.user in (self.user, None):
            self.refresh()

    @closes_once
    def close(self) -> None:
        with UI_LOCK:
            self._stop()
            for child in list(self.children):
                close_tree(child)
            super().close()


class ReceiveToggle(widgets.HBox):
    """iVisit's "Receive files and URLs" switch (``session.receiving``); off refuses every offer at once."""

    def __init__(self, session: "Session", **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.session = session
        self.add_class("ivisit-receive")
        self.checkbox = guard(widgets.Checkbox(value=session.receiving, description="Receive files and URLs", indent=False))
        self.checkbox.observe(self._changed, names="value")
        self.children = [self.checkbox]
        self._stop = Pump.of(session).listen(self._on_event)

    def _changed(self, change: dict[str, Any]) -> None:
        with UI_LOCK:
            self.session.receiving = bool(change["new"])

    def _on_event(self, event: Any) -> None:
        if isinstance(event, Tick):  # receiving has no event: follow code that sets it
            self.checkbox.value = self.session.receiving

    @closes_once
    def close(self) -> None:
        with UI_LOCK:
            self._stop()
            self.checkbox.close()
            super().close()
