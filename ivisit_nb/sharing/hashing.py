"""Content hashes of files: the one place where files are hashed.

A content hash is ``"blake3:<64 hex>"``, the form offers carry; for bytes in
memory use :func:`ivisit_nb.protocol.sharing.content_hash`, which gives the same
string. Files are read in blocks of :data:`BLOCK` bytes, so memory stays
bounded whatever their size. Hashing is single-threaded: on this project's 2-core
machines blake3's ``max_threads=AUTO`` was slower (1 GiB from the page cache in 4 MiB
blocks: 0.48 s threaded, 0.25 s not). Set :data:`THREADED_FROM` to a size to hash inputs
of that size or more on several cores where that pays.

:func:`cached_hash` remembers hashes by ``(st_dev, st_ino, st_size,
st_mtime_ns)``, so offering the same unchanged file again does not read it
again. The cache is shared by everything in the process (every session) and
holds at most :data:`CACHE_ENTRIES` files. A file that changes size or mtime is
read again; one rewritten in place with the same size *and* mtime is not
noticed (the same trade-off ``make`` and ``rsync`` make).
"""

from __future__ import annotations

import os
import stat
import threading
from collections import OrderedDict
from pathlib import Path
from typing import NamedTuple

import blake3

PREFIX = "blake3:"
BLOCK = 4 * 1024 * 1024  # bytes read per system call, into one reused buffer
THREADED_FROM: int | None = None  # hash on several cores from this many bytes (None: never; see above)
CACHE_ENTRIES = 4096  # files remembered by cached_hash

_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO must not hang


def new_hasher(threaded: bool = False) -> "blake3.blake3":
    """An empty incremental hasher (``update(bytes)``, ``copy()``, ``hexdigest()``).

    ``threaded=True`` lets one large ``update`` use several cores.
    :func:`digest` turns it into the ``"blake3:<hex>"`` string.
    """
    return blake3.blake3(max_threads=blake3.blake3.AUTO) if threaded else blake3.blake3()


def digest(hasher: "blake3.blake3") -> str:
    """``"blake3:<64 hex>"`` of what ``hasher`` has been fed (the hasher can go on)."""
    return PREFIX + hasher.hexdigest()


def feed_fd(hasher: "blake3.blake3", fd: int, length: int | None = None) -> int:
    """Feed an open file from its start into ``hasher``: all of it, or its first
    ``length`` bytes (fewer if the file is shorter). Returns the bytes fed.
    Moves the file position."""
    if length is not None and length < 0:
        raise ValueError(f"length must be None or >= 0, not {length}")
    os.lseek(fd, 0, os.SEEK_SET)
    fed = 0
    buffer = bytearray(BLOCK)  # one buffer, read into again and again
    view = memoryview(buffer)
    while length is None or fed < length:
        n = os.readv(fd, [view if length is None else view[: min(BLOCK, length - fed)]])
        if not n:
            break
        hasher.update(view[:n])
        fed += n
    return fed


def hash_fd(fd: int, length: int | None = None) -> str:
    """``"blake3:<hex>"`` of an open file from its start: all of it, or its first
    ``length`` bytes (fewer if the file is shorter). Moves the file position."""
    size = os.fstat(fd).st_size if length is None else length
    hasher = new_hasher(threaded=THREADED_FROM is not None and size >= THREADED_FROM)
    feed_fd(hasher, fd, length)
    return digest(hasher)


def _open_file(path: str | Path) -> int:
    """Open ``path`` for reading; it must be a regular file (not a FIFO or device)."""
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC | _O_BINARY | _O_NONBLOCK)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise ValueError(f"{path} is not a regular file; only regular files can be hashed and sent")
    return fd


def hash_file(path: str | Path, length: int | None = None) -> str:
    """``"blake3:<hex>"`` of the file at ``path``, or of its first ``length`` bytes.

    Follows symbolic links (the caller chose the path). Raises ``OSError`` if it
    cannot be read and ``ValueError`` if it is not a regular file.
    """
    fd = _open_file(path)
    try:
        return hash_fd(fd, length)
    finally:
        os.close(fd)


class CacheInfo(NamedTuple):
    """How :func:`cached_hash` has done: ``misses`` counts files actually read."""

    hits: int
    misses: int
    entries: int
    max_entries: int


_Key = tuple[int, int, int, int]
_cache: OrderedDict[_Key, str] = OrderedDict()  # least recently used first
_cache_lock = threading.Lock()
_hits = 0
_misses = 0


def _key(st: os.stat_result) -> _Key:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def cached_hash(path: str | Path) -> str:
    """Like :func:`hash_file` for a whole file, but an unchanged file (same device,
    inode, size and mtime) is not read again. Thread-safe."""
    global _hits, _misses
    fd = _open_file(path)
    try:
        key = _key(os.fstat(fd))
        with _cache_lock:
            found = _cache.get(key)
            if found is not None:
                _cache.move_to_end(key)
                _hits += 1
                return found
            _misses += 1
        result = hash_fd(fd)  # outside the lock: other files are hashed meanwhile
        if _key(os.fstat(fd)) != key:
            return result  # changed while being read: correct for now, not worth keeping
        with _cache_lock:
            _cache[key] = result
            _cache.move_to_end(key)
            while len(_cache) > max(CACHE_ENTRIES, 0):
                _cache.popitem(last=False)
        return result
    finally:
        os.close(fd)


def cache_info() -> CacheInfo:
    """Hits, misses (files read) and size of the :func:`cached_hash` cache."""
    with _cache_lock:
        return CacheInfo(_hits, _misses, len(_cache), CACHE_ENTRIES)


def clear_cache() -> None:
    """Forget every cached hash and reset the counters."""
    global _hits, _misses
    with _cache_lock:
        _cache.clear()
        _hits = _misses = 0


__all__ = [
    "PREFIX", "BLOCK", "THREADED_FROM", "CACHE_ENTRIES", "CacheInfo",
    "new_hasher", "digest", "feed_fd", "hash_fd", "hash_file", "cached_hash", "cache_info", "clear_cache",
]
