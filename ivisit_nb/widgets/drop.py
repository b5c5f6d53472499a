"""Drag and drop, kernel side: what the browser drops on a tile or the viewer is sent.

The extension's drop target (``labextension/src/drop.ts``) sends three kinds of things:

- files from the operating system: their bytes, in chunks. They are written to a
  fresh temporary staging folder under their sanitised name
  (:func:`ivisit_nb.sharing.names.safe_name`), then sent; the folder is removed
  once every recipient's transfer has ended;
- files dragged from JupyterLab's file browser: paths relative to the server
  root, which the browser sends along (the kernel's working directory if not);
- links dragged from a page (``text/uri-list``): sent with ``send_url``.

A drop on the viewer goes to the whole room (``to=None``); a drop on a tile goes
to that user. Sending runs on a short-lived thread so the kernel stays free.
"""

from __future__ import annotations

import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import ipywidgets as widgets

from .. import events as ev
from ..sharing.names import safe_name
from .frontend import DataBox
from .pump import Pump

if TYPE_CHECKING:
    from .api import SessionAPI as Session

log = logging.getLogger("ivisit_nb.widgets")

MAX_FILES = 100  # per drop


@dataclass(frozen=True)
class Notice(ev.Event):
    """A line for the panel's status bar (from drops and other UI actions)."""

    text: str
    error: bool = False


@dataclass
class _Drop:
    folder: Path
    files: list[Path]
    sizes: list[int]
    handles: list[BinaryIO]
    paths: list[Path]
    urls: list[str]


class DropReceiver:
    """Sends what is dropped on ``target`` to ``to`` (a user) or to the room (``to=None``).

    Does nothing if ``target`` is a plain Box (no extension). ``sent`` lists
    ``(what, handle or exception)`` for every item, newest last.
    """

    def __init__(self, session: "Session", target: widgets.Box, to: str | None = None) -> None:
        self.session, self.to = session, to
        self.target = target
        self.sent: list[tuple[str, Any]] = []
        self._drops: dict[str, _Drop] = {}
        self._closed = False
        if isinstance(target, DataBox):
            target.drop_target = True
            target.on_drop_message(self._on_message)

    @property
    def where(self) -> str:
        return "the room" if self.to is None else self.to

    def close(self) -> None:
        """Stop taking drops; abandon drops in progress."""
        self._closed = True
        for drop in self._drops.values():
            self._discard(drop)
        self._drops.clear()

    # -- messages from the browser (shell thread, under UI_LOCK) ---------------------------
    def _on_message(self, content: dict[str, Any], buffers: list[bytes]) -> None:
        kind, key = content.get("event"), str(content.get("drop", ""))
        if self._closed:
            return
        if kind == "drop-start":
            self._start(key, content)
        elif kind == "drop-chunk":
            self._chunk(key, content, buffers)
            if isinstance(self.target, DataBox):
                self.target.send({"event": "drop-ack", "drop": key})
        elif kind == "drop-end":
            drop = self._drops.pop(key, None)
            if drop is not None:
                self._finish(drop)

    def _start(self, key: str, content: dict[str, Any]) -> None:
        files = [f for f in content.get("files", []) if isinstance(f, dict)][:MAX_FILES]
        folder = Path(tempfile.mkdtemp(prefix="ivisit-drop-"))
        names: list[Path] = []
        for i, f in enumerate(files):
            name = safe_name(str(f.get("name", "")), fallback=f"dropped-{i + 1}")
            sub = folder / str(i)  # one subfolder each: two drops of "a.txt" keep their names
            sub.mkdir()
            names.append(sub / name)
        root = content.get("root")
        base = Path(str(root)).expanduser() if root else Path.cwd()
        paths = [base / str(p) for p in content.get("paths", []) if isinstance(p, str)][:MAX_FILES]
        urls = [str(u) for u in content.get("urls", []) if isinstance(u, str)][:MAX_FILES]
        sizes = [int(f.get("size", 0)) for f in files]
        self._drops[key] = _Drop(folder, names, sizes, [open(p, "wb") for p in names], paths, urls)

    def _chunk(self, key: str, content: dict[str, Any], buffers: list[bytes]) -> None:
        drop = self._drops.get(key)
        index, offset = content.get("file"), content.get("offset")
        if drop is None or not buffers or not isinstance(index, int) or not isinstance(offset, int):
            return
        if not 0 <= index < len(drop.handles) or offset < 0:
            return
        handle = drop.handles[index]
        handle.seek(offset)
        handle.write(buffers[0])

    def _discard(self, drop: _Drop) -> None:
        for handle in drop.handles:
            handle.close()
        shutil.rmtree(drop.folder, ignore_errors=True)

    def _finish(self, drop: _Drop) -> None:
        for handle in drop.handles:
            handle.close()
        items: list[tuple[str, str]] = []
        for path, size in zip(drop.files, drop.sizes):
            if path.stat().st_size != size:
                self._notice(f"{path.name} arrived incomplete from the browser; not sent", error=True)
                continue
            items.append(("file", str(path)))
        items += [("file", str(p)) for p in drop.paths]
        items += [("url", u) for u in drop.urls]
        if not items:
            shutil.rmtree(drop.folder, ignore_errors=True)
            return
        threading.Thread(target=self._send_all, args=(items, drop.folder), name="ivisit-drop", daemon=True).start()

    # -- sending (own thread) -------------------------------------------------------------
    def _send_all(self, items: list[tuple[str, str]], staging: Path) -> None:
        handles = []
        for kind, what in items:
            name = Path(what).name if kind == "file" else what
            try:
                if kind == "file":
                    handle = self.session.send_file(what, to=self.to)
                else:
                    handle = self.session.send_url(what, to=self.to)
            except Exception as exc:
                self.sent.append((what, exc))
                self._notice(f"Could not send {name} to {self.where}: {exc}", error=True)
                continue
            self.sent.append((what, handle))
            handles.append(handle)
            self._notice(f"Offered {name} to {self.where}")
        for handle in handles:  # keep the staged copies until every transfer has ended
            handle.wait()
        shutil.rmtree(staging, ignore_errors=True)

    def _notice(self, text: str, error: bool = False) -> None:
        Pump.of(self.session).post(Notice(text=text, error=error))
