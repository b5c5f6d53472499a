"""Room server (signalling only) and the client a session uses to reach it."""

from .server import RoomApp, RoomHub, RoomServer, serve

__all__ = ["RoomServer", "RoomHub", "RoomApp", "serve"]
