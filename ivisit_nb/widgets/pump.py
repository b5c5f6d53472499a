"""The one place where widgets change: a lock, and a thread that turns session events into UI updates.

A session emits its events on its engine thread, which must never wait for a
widget. So each session gets one :class:`Pump`: the engine thread only puts
events on a queue, and the pump's own thread hands them to the widgets'
listeners, holding :data:`UI_LOCK`. Button clicks and other messages from the
browser arrive on the kernel's shell thread; :func:`guard` makes them take the
same lock. So no two threads ever update ivisit_nb's widgets at once.

The pump also:

- coalesces progress: at most one :class:`~ivisit_nb.events.TransferProgress`
  per transfer every :data:`PROGRESS_INTERVAL` seconds, always ending with the
  latest one (so a 1 GiB transfer costs the browser about ten updates a second);
- turns inbox and settings changes into :class:`InboxChanged` and
  :class:`SettingChanged` events;
- sends a :class:`Tick` every :data:`TICK` seconds, for state that has no event
  (link RTT, the receive switch set from code).
"""

from __future__ import annotations

import functools
import logging
import queue
import threading
import time
import weakref
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

from .. import events as ev

if TYPE_CHECKING:
    from ipywidgets import Widget

    from .api import SessionAPI as Session

log = logging.getLogger("ivisit_nb.widgets")

UI_LOCK = threading.RLock()
"""Held while ivisit_nb changes any widget, whatever the thread."""

PROGRESS_INTERVAL = 0.1  # seconds between progress updates of one transfer
TICK = 1.0  # seconds between Tick events


@dataclass(frozen=True)
class InboxChanged(ev.Event):
    """The inbox moved, got an item, was paused or closed."""


@dataclass(frozen=True)
class SettingChanged(ev.Event):
    """``session.settings[user].field`` changed (user None: the defaults)."""

    user: str | None
    field: str
    value: Any


@dataclass(frozen=True)
class Tick(ev.Event):
    """Sent every :data:`TICK` seconds."""


Listener = Callable[[ev.Event], None]


def guard(widget: "Widget") -> "Widget":
    """Make messages from the browser to ``widget`` (clicks, value changes) run under :data:`UI_LOCK`.

    Returns the widget, so ``guard(Button(...))`` reads naturally.
    """
    comm = getattr(widget, "comm", None)
    if comm is None:
        return widget
    handle = widget._handle_msg  # ipywidgets' own handler, which comm.on_msg replaces below

    def locked(msg: dict[str, Any]) -> None:
        with UI_LOCK:
            handle(msg)

    comm.on_msg(locked)
    return widget


def closes_once(close: Callable[[Any], None]) -> Callable[[Any], None]:
    """Decorate a widget's ``close()``: once the widget is closed, calling it again does nothing.

    ipywidgets' ``Widget.__del__`` calls ``close()`` again when the garbage collector frees a
    closed widget, on whatever thread the collector happens to run in. Our ``close()`` methods
    take :data:`UI_LOCK`; when that thread is one being started by a thread that holds the lock
    (and waits for it to start), both hang. The suite, run beside two busy loops, hung so.
    """

    @functools.wraps(close)
    def guarded(self: Any) -> None:
        if getattr(self, "comm", None) is None:  # closed already (ipywidgets drops the comm)
            return
        close(self)

    return guarded


def close_tree(widget: "Widget") -> None:
    """Close ``widget`` and every widget inside it (ipywidgets' ``close()`` leaves children open)."""
    for child in list(getattr(widget, "children", ())):
        close_tree(child)
    widget.close()


class Pump:
    """Delivers one session's events to widget listeners on one thread. Use :meth:`of`."""

    _pumps: "weakref.WeakKeyDictionary[Session, Pump]" = weakref.WeakKeyDictionary()
    _pumps_lock = threading.Lock()

    @classmethod
    def of(cls, session: "Session") -> "Pump":
        """The session's pump, started on first use."""
        with cls._pumps_lock:
            pump = cls._pumps.get(session)
            if pump is None:
                pump = cls._pumps[session] = cls(session)
            return pump

    def __init__(self, session: "Session") -> None:
        self.session = session
        self._queue: queue.SimpleQueue[ev.Event] = queue.SimpleQueue()
        self._listeners: list[Listener] = []
        self._unsubscribe = [
            session.on(self.post),
            session.inbox.changes.add(lambda: self.post(InboxChanged())),
            session.settings.changes.add(lambda user, field, value: self.post(SettingChanged(user=user, field=field, value=value))),
        ]
        self._thread = threading.Thread(target=self._run, name=f"ivisit-ui-{session.user}", daemon=True)
        self._thread.start()

    # -- any thread -------------------------------------------------------------
    def post(self, event: ev.Event) -> None:
        """Queue ``event`` for the listeners; returns at once (safe on the engine thread)."""
        self._queue.put(event)

    def listen(self, listener: Listener) -> Callable[[], None]:
        """Call ``listener(event)`` (on the pump thread, under :data:`UI_LOCK`). Returns an unsubscribe function."""
        with UI_LOCK:
            self._listeners.append(listener)

        def unsubscribe() -> None:
            with UI_LOCK:
                if listener in self._listeners:
                    self._listeners.remove(listener)

        return unsubscribe

    # -- the pump thread -----------------------------------------------------------
    def _run(self) -> None:
        held: dict[str, ev.TransferProgress] = {}  # transfer id -> latest progress not yet shown
        last_shown: dict[str, float] = {}
        next_tick = time.monotonic() + TICK
        while not self.session.closed:
            now = time.monotonic()
            due = min([next_tick] + [last_shown.get(tid, 0.0) + PROGRESS_INTERVAL for tid in held])
            try:
                batch = [self._queue.get(timeout=max(0.0, due - now))]
            except queue.Empty:
                batch = []
            while True:  # take everything already queued, so repeats coalesce
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            out: list[ev.Event] = []
            inbox_changed = False
            for event in batch:
                if isinstance(event, ev.TransferProgress):
                    held[event.transfer.transfer_id] = event
                elif isinstance(event, ev.TransferEnded):
                    tid = event.transfer.transfer_id
                    if tid in held:
                        out.append(held.pop(tid))
                    last_shown.pop(tid, None)
                    out.append(event)
                elif isinstance(event, InboxChanged):
                    inbox_changed = True
                else:
                    out.append(event)
            now = time.monotonic()
            for tid in list(held):
                if now - last_shown.get(tid, 0.0) >= PROGRESS_INTERVAL:
                    out.append(held.pop(tid))
                    last_shown[tid] = now
            if inbox_changed:
                out.append(InboxChanged())
            if now >= next_tick:
                out.append(Tick())
                next_tick = now + TICK
            self._deliver(out)
        for unsubscribe in self._unsubscribe:
            unsubscribe()

    def _deliver(self, events: list[ev.Event]) -> None:
        if not events:
            return
        with UI_LOCK:
            listeners = list(self._listeners)
            for event in events:
                for listener in listeners:
                    try:
                        listener(event)
                    except Exception:
                        log.exception("widget listener failed on %s", type(event).__name__)
