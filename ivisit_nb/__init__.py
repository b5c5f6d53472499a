"""ivisit_nb: iVisit-style person-to-person sharing of files and URLs in Jupyter.

    from ivisit_nb import RoomServer, Session
    server = RoomServer()
    alice = Session.join(server.url, user="alice", room="lab")
"""

from .consent import Request
from .room.client import JoinRefused
from .room.server import RoomServer
from .session import Call, Peer, Session
from .settings import Settings, UserSettings

__all__ = ["RoomServer", "Session", "Peer", "Call", "Request", "Settings", "UserSettings", "JoinRefused"]
__version__ = "0.1.0"
