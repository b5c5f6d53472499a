"""The Python side of the ivisit-nb JupyterLab extension (source in ``labextension/``).

Two widget models live in the extension:

- :class:`DataBox`, a Box whose element carries ``data-*`` attributes and can be
  a drop target: files and links dropped on it reach :attr:`DataBox.on_drop`
  callbacks (see :mod:`ivisit_nb.widgets.drop` for what is done with them);
- :class:`Bridge`, a model without a view, one per session, through which the
  kernel shows JupyterLab notifications with buttons and JupyterLab's own file
  dialog.

Without the extension these models cannot load in the browser, so
:func:`extension_available` decides what to build: :func:`box` then returns a
plain ``ipywidgets.Box`` (same CSS classes, no ``data-*`` attributes, no drops)
and the bridge does nothing. Set ``IVISIT_NB_EXTENSION=0`` (or ``1``) to force
the choice.
"""

from __future__ import annotations

import json
import logging
import os
import threading
import weakref
from functools import lru_cache
from pathlib import Path
from typing import Any, Callable, Sequence

import ipywidgets as widgets
from traitlets import Bool, Dict, Unicode

from .pump import UI_LOCK, guard

log = logging.getLogger("ivisit_nb.widgets")

MODULE_NAME = "ivisit-nb"
MODULE_VERSION = "0.1.0"  # must match labextension/src/version.ts and package.json


@lru_cache(maxsize=1)
def _installed() -> bool:
    try:
        from jupyter_core.paths import jupyter_path
    except ImportError:
        return False
    for folder in jupyter_path("labextensions"):
        meta = Path(folder) / MODULE_NAME / "package.json"
        try:
            if json.loads(meta.read_text(encoding="utf-8")).get("version") == MODULE_VERSION:
                return True
        except (OSError, ValueError):
            continue
    return False


def extension_available() -> bool:
    """True if the ivisit-nb JupyterLab extension (this version) is installed.

    ``IVISIT_NB_EXTENSION=0`` or ``=1`` in the environment overrides the check.
    """
    forced = os.environ.get("IVISIT_NB_EXTENSION", "").strip()
    if forced in ("0", "1"):
        return forced == "1"
    return _installed()


class DataBox(widgets.Box):
    """A Box with ``data-*`` attributes on its element that can take drops (needs the extension)."""

    _model_name = Unicode("IVisitBoxModel").tag(sync=True)
    _model_module = Unicode(MODULE_NAME).tag(sync=True)
    _model_module_version = Unicode(MODULE_VERSION).tag(sync=True)
    _view_name = Unicode("IVisitBoxView").tag(sync=True)
    _view_module = Unicode(MODULE_NAME).tag(sync=True)
    _view_module_version = Unicode(MODULE_VERSION).tag(sync=True)

    data = Dict(value_trait=Unicode()).tag(sync=True)
    """Shown as ``data-KEY="VALUE"`` attributes on the element."""

    drop_target = Bool(False).tag(sync=True)
    """When True, drops on the element are sent to the kernel."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._drop_handlers: list[Callable[[dict[str, Any], list[bytes]], None]] = []
        self.on_msg(self._on_frontend_msg)
        guard(self)

    def on_drop_message(self, handler: Callable[[dict[str, Any], list[bytes]], None]) -> None:
        """Call ``handler(content, buffers)`` for every drop message (see labextension/src/drop.ts)."""
        self._drop_handlers.append(handler)

    def _on_frontend_msg(self, _widget: Any, content: dict[str, Any], buffers: list[bytes]) -> None:
        if not isinstance(content, dict) or not str(content.get("event", "")).startswith("drop-"):
            return
        for handler in list(self._drop_handlers):
            try:
                handler(content, buffers)
            except Exception:
                log.exception("drop handler failed")


def box(
    children: Sequence[widgets.Widget] = (),
    *,
    classes: Sequence[str] = (),
    data: dict[str, str] | None = None,
    vertical: bool = True,
    layout: dict[str, str] | None = None,
) -> widgets.Box:
    """A vertical (or horizontal) box with CSS ``classes``; a :class:`DataBox` carrying ``data`` when the
    extension is available, else a plain Box (where ``data`` is dropped)."""
    lay = widgets.Layout(display="flex", flex_flow="column" if vertical else "row", **(layout or {}))
    if extension_available():
        b: widgets.Box = DataBox(list(children), data=dict(data or {}), layout=lay)
    else:
        b = widgets.Box(list(children), layout=lay)
    for cls in classes:
        b.add_class(cls)
    return b


class Bridge(widgets.Widget):
    """The kernel's line to JupyterLab: notifications with buttons and the file dialog.

    One per session (:meth:`of`). Without the extension every call is a no-op and
    :attr:`ready` stays False.
    """

    _model_name = Unicode("BridgeModel").tag(sync=True)
    _model_module = Unicode(MODULE_NAME).tag(sync=True)
    _model_module_version = Unicode(MODULE_VERSION).tag(sync=True)

    _bridges: "weakref.WeakKeyDictionary[Any, Bridge]" = weakref.WeakKeyDictionary()
    _bridges_lock = threading.Lock()

    @classmethod
    def of(cls, session: Any) -> "Bridge | None":
        """The session's bridge, or None without the extension."""
        if not extension_available():
            return None
        with cls._bridges_lock:
            bridge = cls._bridges.get(session)
            if bridge is None:
                bridge = cls._bridges[session] = cls()
            return bridge

    def __init__(self, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.ready = False
        self.root: str | None = None  # the server's root directory, once the browser said hello
        self._notes: dict[str, tuple[str, list[str], Callable[[int], None]]] = {}
        self._picks: dict[str, Callable[[list[Path]], None]] = {}
        self._count = 0
        self.on_msg(self._on_frontend_msg)
        guard(self)

    # -- notifications ----------------------------------------------------------------
    def notify(self, key: str, message: str, actions: list[str], on_action: Callable[[int], None]) -> None:
        """Show ``message`` with one button per label in ``actions``; it stays until answered or
        :meth:`dismiss`-ed. ``on_action(index)`` is called (under UI_LOCK) for a click."""
        with UI_LOCK:
            self._notes[key] = (message, list(actions), on_action)
            self.send({"action": "notify", "key": key, "message": message, "actions": list(actions)})

    def dismiss(self, key: str) -> None:
        """Remove the notification ``key`` (no-op if it is gone)."""
        with UI_LOCK:
            if self._notes.pop(key, None) is not None:
                self.send({"action": "dismiss", "key": key})

    # -- file dialog --------------------------------------------------------------------
    def pick_files(self, folder: Path, on_picked: Callable[[list[Path]], None], title: str = "Load files") -> bool:
        """Open JupyterLab's file dialog at ``folder``; ``on_picked(paths)`` gets the chosen files.

        Returns False (and opens nothing) before the browser has said hello.
        """
        with UI_LOCK:
            if not self.ready:
                return False
            self._count += 1
            key = f"pick-{self._count}"
            self._picks[key] = on_picked
            self.send({"action": "pick", "key": key, "path": self.relative(folder), "title": title})
            return True

    def relative(self, path: Path) -> str:
        """``path`` relative to the server root, or "" if it is outside (or the root is unknown)."""
        if not self.root:
            return ""
        try:
            return Path(path).resolve().relative_to(self.root_path()).as_posix()
        except ValueError:
            return ""

    def root_path(self) -> Path:
        """The server root as a path (the kernel's working directory until the browser says)."""
        return Path(os.path.expanduser(self.root)).resolve() if self.root else Path.cwd()

    # -- from the browser ------------------------------------------------------------------
    def _on_frontend_msg(self, _widget: Any, content: dict[str, Any], _buffers: list[bytes]) -> None:
        event = content.get("event") if isinstance(content, dict) else None
        if event == "hello":
            self.ready = True
            self.root = str(content.get("root") or "") or None
            for key, (message, actions, _cb) in list(self._notes.items()):  # after a page reload
                self.send({"action": "notify", "key": key, "message": message, "actions": actions})
        elif event == "action":
            note = self._notes.pop(str(content.get("key")), None)
            if note is not None:
                try:
                    note[2](int(content.get("index", -1)))
                except Exception:
                    log.exception("notification action failed")
        elif event == "picked":
            callback = self._picks.pop(str(content.get("key")), None)
            if callback is not None:
                root = Path(os.path.expanduser(str(content.get("root") or ""))) if content.get("root") else Path.cwd()
                callback([root / str(p) for p in content.get("paths", []) if isinstance(p, str)])
