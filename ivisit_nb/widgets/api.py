"""What the widgets use of a session: its public API only, as a typing.Protocol.

The widgets never import :mod:`ivisit_nb.session` (an import-linter contract says
so); they are written against these protocols, which :class:`ivisit_nb.Session`
satisfies.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Protocol


class PeerAPI(Protocol):
    name: str

    @property
    def state(self) -> str: ...

    @property
    def reason(self) -> str: ...

    @property
    def rtt(self) -> float | None: ...

    @property
    def sas(self) -> str | None: ...


class SessionAPI(Protocol):
    user: str
    room: str | None
    settings: Any
    receiving: bool

    @property
    def closed(self) -> bool: ...

    @property
    def peers(self) -> dict[str, PeerAPI]: ...

    @property
    def members(self) -> list[str]: ...

    @property
    def inbox(self) -> Any: ...

    @property
    def pending_offers(self) -> list[Any]: ...

    @property
    def active_transfers(self) -> list[Any]: ...

    def on(self, callback: Callable[[Any], None]) -> Callable[[], None]: ...

    def send_file(self, path: str | Path, to: str | None = None) -> Any: ...

    def send_url(self, url: str, to: str | None = None) -> Any: ...

    # video (the widgets read these with getattr, so a session without video still works)
    @property
    def local_feed(self) -> Any: ...

    def video_feed(self, user: str) -> Any: ...

    @property
    def video_requests(self) -> list[Any]: ...

    def start_video(self, source: Any = None, to: str | None = None) -> Any: ...

    def stop_video(self, to: str | None = None) -> Any: ...
