"""The sharing history: what was received, in order, and which item is shown.

This is the model behind iVisit's Sharing viewer. Every received file or URL
(and every local file opened in the viewer) is an :class:`Item`. Items are
appended to ``ROOT/.history.jsonl``, one JSON object a line, and read back when
an :class:`Inbox` is created, so the history survives a restart.

The viewer shows :attr:`Inbox.current`. A new item becomes current at once,
unless the viewer is :attr:`~Inbox.paused`: then it is queued, and
:meth:`~Inbox.forward` steps to it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pandas is imported only when a DataFrame is asked for
    import pandas as pd

import json
import logging
import os
import threading
import time
import warnings
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable

from ..frames import frame
from ..listeners import Listeners
from ..protocol.text import clean_text


log = logging.getLogger("ivisit_nb.inbox")

HISTORY_FILE = ".history.jsonl"


@dataclass(frozen=True)
class Item:
    """One entry of the history.

    ``kind`` is ``"file"`` (``path`` set) or ``"url"`` (``url`` set); ``lane``
    says where it came from (``"local"`` for files opened here).
    """

    time: float
    sender: str
    kind: str
    name: str
    path: str | None
    url: str | None
    hash: str | None
    size: int
    lane: str

    def __post_init__(self) -> None:
        if self.kind not in ("file", "url"):
            raise ValueError(f"item kind must be 'file' or 'url', not {self.kind!r}")
        for name in ("sender", "name", "path", "url"):  # valid strings, even from an old history file
            value = getattr(self, name)
            if isinstance(value, str):
                object.__setattr__(self, name, clean_text(value, 1 << 16))


COLUMNS = [f.name for f in fields(Item)]


class Inbox:
    """The history of shared items with a current position. Thread-safe.

    ``on_change()`` is called (outside the lock) after anything that changes
    what the viewer shows: an item added, current moved, paused, closed.
    """

    def __init__(self, root: Path | str, on_change: Callable[[], None] | None = None) -> None:
        self.root = Path(root)
        self.root.mkdir(parents=True, exist_ok=True)
        self.path = self.root / HISTORY_FILE
        self.on_change = on_change
        self._lock = threading.RLock()
        self._torn = False
        self._items: list[Item] = self._load()
        self._index: int | None = len(self._items) - 1 if self._items else None
        self._paused = False
        self._closed = False
        #: listeners called after every change (``changes.add(fn)``), and when the viewer closes
        self.changes: Listeners[Callable[[], None]] = Listeners("inbox change")
        self.closes: Listeners[Callable[[], None]] = Listeners("viewer close")
        if on_change is not None:
            self.changes.add(on_change)

    def __repr__(self) -> str:
        return f"<Inbox {self.root}: {len(self)} items, current {self._index}{' paused' if self._paused else ''}>"

    def __len__(self) -> int:
        return len(self._items)

    # -- persistence ----------------------------------------------------------------

    def _load(self) -> list[Item]:
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        self._torn = bool(raw) and not raw.endswith(b"\n")  # a crash cut the last line short
        items = []
        for number, line in enumerate(raw.split(b"\n"), start=1):
            if not line.strip():
                continue
            try:
                data = json.loads(line.decode("utf-8"))
                items.append(Item(**{k: data[k] for k in COLUMNS}))
            except Exception as exc:  # any damage: skip the line
                msg = f"skipped line {number} of {self.path}: it is not a history item ({exc!r:.200})"
                warnings.warn(msg, RuntimeWarning, stacklevel=3)
                log.warning(msg)
        return items

    def _append(self, item: Item) -> None:
        line = json.dumps(asdict(item)) + "\n"  # ASCII: even a lone surrogate is written safely
        if self._torn:
            line, self._torn = "\n" + line, False  # keep the new item off the broken line
        with open(self.path, "a", encoding="utf-8") as f:
            f.write(line)
            f.flush()
            os.fsync(f.fileno())

    def _changed(self) -> None:
        self.changes()

    def subscribe(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` after every change; returns an unsubscribe function (``changes.add``)."""
        return self.changes.add(callback)

    # -- adding ---------------------------------------------------------------------

    def add(self, item: Item) -> None:
        """Append ``item``; it becomes current unless paused (the very first item
        always does). Reopens a closed viewer."""
        if not isinstance(item, Item):
            raise TypeError(f"add() takes an Item, not {type(item).__name__}")
        with self._lock:
            self._append(item)
            self._items.append(item)
            if not self._paused or self._index is None:
                self._index = len(self._items) - 1
            self._closed = False
        self._changed()

    def open(self, path: Path | str) -> Item:
        """Show a local file in the viewer (at once, even when paused) and return its item."""
        p = Path(path).expanduser()
        if not p.is_file():
            raise FileNotFoundError(f"{p} is not a file; give the path of a file to show")
        p = p.resolve()
        item = Item(
            time=time.time(), sender="local", kind="file", name=p.name, path=str(p),
            url=None, hash=None, size=p.stat().st_size, lane="local",
        )
        with self._lock:
            self._append(item)
            self._items.append(item)
            self._index = len(self._items) - 1
            self._closed = False
        self._changed()
        return item

    # -- position ---------------------------------------------------------------------

    @property
    def current(self) -> Item | None:
        """The item the viewer shows, or None when the history is empty."""
        with self._lock:
            return None if self._index is None else self._items[self._index]

    @property
    def index(self) -> int | None:
        """Position of :attr:`current` in :attr:`items` (0 is the oldest), None when empty."""
        return self._index

    def _move(self, step: int) -> Item | None:
        with self._lock:
            if self._index is None:
                return None
            new = min(max(self._index + step, 0), len(self._items) - 1)
            moved, self._index = new != self._index, new
            item = self._items[new]
        if moved:
            self._changed()
        return item

    def back(self) -> Item | None:
        """Step to the previous (older) item and return it; stays put at the oldest."""
        return self._move(-1)

    def forward(self) -> Item | None:
        """Step to the next (newer) item and return it; stays put at the newest."""
        return self._move(+1)

    @property
    def paused(self) -> bool:
        """While True, new items are queued instead of shown. Unpausing does not
        move :attr:`current`; the next item added becomes current again."""
        return self._paused

    @paused.setter
    def paused(self, value: bool) -> None:
        with self._lock:
            changed, self._paused = self._paused != bool(value), bool(value)
        if changed:
            self._changed()

    @property
    def queued(self) -> int:
        """Items newer than the current one (waiting while paused)."""
        with self._lock:
            return 0 if self._index is None else len(self._items) - 1 - self._index

    @property
    def items(self) -> pd.DataFrame:
        """The whole history, oldest first, one row per item."""
        with self._lock:
            rows = [asdict(i) for i in self._items]
        return frame(rows, COLUMNS)

    # -- closing -----------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True after :meth:`close` until the next item arrives."""
        return self._closed

    def on_close(self, callback: Callable[[], None]) -> Callable[[], None]:
        """Call ``callback()`` whenever the viewer is closed; returns it (usable as a decorator)."""
        self.closes.add(callback)
        return callback

    def close(self) -> None:
        """Close the viewer: run the close listeners (e.g. cancel receives in progress)."""
        with self._lock:
            self._closed = True
        self.closes()
        self._changed()
