"""Room server (signalling only) and the client a session uses to reach it.

One module per concept: ``names`` (allowed names, look-alikes), ``directory``
(name claims, rooms, routes), ``redis_directory`` (the same shared by a cluster
of servers through Redis), ``hub`` (the pure decisions), ``app`` (the aiohttp
server), ``server`` (``serve()`` and the threaded ``RoomServer``), ``client``
(``RoomClient``). See ``docs/room.md``.
"""

from .app import RoomApp
from .directory import Address, Directory, MemoryDirectory, SharedDirectory, Unavailable
from .hub import RoomHub
from .redis_directory import ClusterError, RedisDirectory
from .server import RoomServer, serve

__all__ = [
    "RoomServer", "RoomHub", "RoomApp", "serve", "Directory", "MemoryDirectory", "Address",
    "SharedDirectory", "RedisDirectory", "Unavailable", "ClusterError",
]
