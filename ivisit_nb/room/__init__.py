"""Room server (signalling only) and the client a session uses to reach it.

One module per concept: ``names`` (allowed names, look-alikes), ``directory``
(name claims, rooms, routes), ``hub`` (the pure decisions), ``app`` (the
aiohttp server), ``server`` (``serve()`` and the threaded ``RoomServer``),
``client`` (``RoomClient``). See ``docs/room.md``.
"""

from .app import RoomApp
from .directory import Address, Directory, MemoryDirectory
from .hub import RoomHub
from .server import RoomServer, serve

__all__ = ["RoomServer", "RoomHub", "RoomApp", "serve", "Directory", "MemoryDirectory", "Address"]
