"""ivisit_nb: iVisit-style person-to-person sharing of files and URLs in Jupyter.

    from ivisit_nb import RoomServer, Session
    server = RoomServer()
    alice = Session.join(server.url, user="alice", room="lab")

Names are imported lazily, so the command line starts fast.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "RoomServer": "ivisit_nb.room.server",
    "Session": "ivisit_nb.session",
    "Peer": "ivisit_nb.session",
    "Call": "ivisit_nb.session",
    "Request": "ivisit_nb.consent",
    "Settings": "ivisit_nb.settings",
    "UserSettings": "ivisit_nb.settings",
    "JoinRefused": "ivisit_nb.room.client",
    "Policy": "ivisit_nb.sharing.policy",
    "Offer": "ivisit_nb.sharing.policy",
    "Transfer": "ivisit_nb.sharing.transfers",
    "BadURL": "ivisit_nb.protocol.urls",
    "TestPattern": "ivisit_nb.media.pattern",
    "VideoFile": "ivisit_nb.media.file",
    "NumpySource": "ivisit_nb.media.sources",
    "Camera": "ivisit_nb.media.camera",
}

__all__ = sorted(_EXPORTS)
__version__ = "0.1.0"


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'ivisit_nb' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(list(globals()) + __all__)
