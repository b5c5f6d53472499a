"""The inbox on disk: where received files go, resumable parts, and deduplication.

Layout under the inbox ``ROOT``::

    ROOT/<sender folder>/<safe name>   received files, mode 0o644
    ROOT/.parts/<hash hex>.part        partial content, keyed by its blake3 hash
    ROOT/.index.sqlite                 content index (hash -> files) and sender folders
                                       (sqlite in WAL mode, plus its -wal/-shm files)

Every exact sender name gets a folder of its own, recorded in the index: the
first name that cleans up to ``carol`` gets ``carol/``; another one that also
cleans up to ``carol`` (``"carol."``, ``"../carol"``, ``"Carol"`` ...) gets
``carol~3f9a2c/``, a tag taken from the blake3 of its exact name. See
:meth:`Store.sender_dir`.

Because parts are keyed by content, a receive interrupted half way resumes when
the same content is offered again, by anyone. The file index is a cache: when
it is missing it is rebuilt by hashing the files; a corrupt one is moved aside.
An old ``.index.json`` (earlier versions) is imported once and renamed
``.index.json.migrated``. Changes are committed one by one, so a crash loses
nothing already placed.

Nothing is ever written outside ``ROOT`` and no symbolic link is followed: a
sender folder, target file, part file or index that is a link is refused with
:class:`UnsafePath`. Files are opened with ``O_NOFOLLOW`` where the OS has it.

A :class:`PartFile` holds no file descriptor until its first byte arrives and
none after :meth:`PartFile.close`, so accepted transfers waiting for their
first bytes cost no descriptors. Parts holding nothing are removed when
closed; :meth:`Store.sweep_parts` (run when the store opens) removes junk and
keeps the resumable parts under ``max_parts_bytes``.

Typical receive (the adapter around :mod:`ivisit_nb.protocol.sharing`)::

    store.check_space(offer.size)                  # before asking the user (optional)
    if store.lookup(offer.hash):                   # dedup: no bytes need to cross
        path = store.place_copy(sender, offer.name, offer.hash); proto.have(tid)
    else:
        part = store.open_part(offer.hash, offer.size)  # checks max_size and space too
        if part.complete:                          # an earlier attempt got it all
            path = store.finalize(part, sender, offer.name); proto.have(tid)
        else:
            proto.accept(tid, part.prefix_length, part.prefix_hash())
    # on ChunkReceived:   if offset == 0: part.truncate(0)
    #                     part.write(offset, data)
    # on AllBytesReceived: store.verify(part)      # IntegrityError -> proto.fail
    #                      if still wanted: path = store.place(part, sender, offer.name)
    #                      else: part.close()      # verified bytes kept in .parts
    # on cancel / failure: part.close() (keep for resume) or store.discard(part)
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import json
import logging
import os
import re
import shutil
import sqlite3
import stat
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any, Iterator

from . import hashing
from .names import numbered_name, safe_name, safe_user_dir, tagged_name

log = logging.getLogger("ivisit_nb.store")

MiB = 1024 * 1024
GiB = 1024 * MiB
PARTS_DIR = ".parts"
INDEX_FILE = ".index.sqlite"
OLD_INDEX_FILE = ".index.json"  # the index of earlier versions, imported once
FILE_MODE = 0o644
READ_BLOCK = 1024 * 1024
MAX_NUMBERED = 10_000  # "name (2).ext" ... gives up after this many
DEFAULT_MAX_PARTS_BYTES = 4 * GiB
INDEX_VERSION = 1  # PRAGMA user_version of a filled index

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO for reading must not hang
_SPACE_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
WRITE_BEHIND = 8 << 20  # a part starts writing its bytes to disk every this many bytes ...


def _load_sync_file_range() -> Any:
    """Linux's ``sync_file_range`` (ctypes), or None where there is none."""
    try:
        import ctypes
        import ctypes.util

        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        fn = libc.sync_file_range
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
    return fn


_sync_file_range = _load_sync_file_range() if os.name == "posix" else None
_SYNC_FILE_RANGE_WRITE = 2


def start_writeback(fd: int, offset: int, nbytes: int) -> None:
    """Ask the kernel to start writing ``nbytes`` from ``offset`` to disk, without waiting
    (... so the fsync that makes a verified part durable has almost nothing left to do:
    1 GiB's final fsync took 0.25-0.3 s here, and 0.00-0.01 s with write-behind)."""
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, nbytes, _SYNC_FILE_RANGE_WRITE)  # errors: the fsync will report them
_HASH = re.compile(r"blake3:([0-9a-f]{64})")
_PART_NAME = re.compile(r"[0-9a-f]{64}\.part")
_TAG_LENGTHS = (6, 12, 24, 64)  # hex digits of the tag telling colliding senders apart

_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path TEXT PRIMARY KEY,            -- "<sender folder>/<name>", relative to the root
    hash TEXT NOT NULL,               -- "blake3:<hex>"
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL         -- with size: an edited file is not trusted
);
CREATE INDEX IF NOT EXISTS files_by_hash ON files (hash);
CREATE TABLE IF NOT EXISTS senders (
    name BLOB PRIMARY KEY,            -- exact sender name, UTF-8 (surrogatepass)
    folder TEXT NOT NULL,
    folder_key TEXT NOT NULL UNIQUE   -- casefolded: distinct on case-insensitive disks too
);
"""


class StoreError(Exception):
    """Something went wrong in the inbox; the message says what to do."""


class UnsafePath(StoreError):
    """A path in the inbox is a symbolic link or otherwise not what it must be."""


class IntegrityError(StoreError):
    """The received bytes do not have the offered hash; they were deleted."""

    def __init__(self, expected: str, actual: str) -> None:
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"received content has hash {actual} but {expected} was offered; "
            "the bytes were discarded. Ask the sender to send it again"
        )


class InsufficientSpace(StoreError):
    """Not enough free disk space for a file (checked before receiving)."""


class TooLarge(StoreError):
    """A file is larger than the inbox's ``max_size``."""


class StoreFull(StoreError):
    """The disk filled up while receiving; the partial file was removed."""


class PartInUse(StoreError):
    """The same content is already being received by another transfer."""


class MissingContent(StoreError):
    """No file in the inbox holds the asked-for content."""


def _mib(n: int) -> str:
    return f"{n / MiB:.1f}"


def _hash_hex(content_hash: str) -> str:
    """The 64 hex digits of ``"blake3:<hex>"``, or ValueError."""
    m = _HASH.fullmatch(content_hash) if isinstance(content_hash, str) else None
    if m is None:
        raise ValueError(f"content hash must be 'blake3:' and 64 lowercase hex digits, not {content_hash!r:.80}")
    return m.group(1)


def _open_regular(path: Path | str, flags: int, mode: int = FILE_MODE) -> int:
    """Open ``path`` without following a symlink; it must be a regular file."""
    try:
        fd = os.open(path, flags | _O_NOFOLLOW | _O_CLOEXEC | _O_BINARY, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise UnsafePath(f"{path} is a symbolic link; refusing to use it. Remove the link") from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafePath(f"{path} is not a regular file; refusing to use it. Move it out of the inbox")
    return fd


def _hash_path(path: Path | str) -> tuple[str, os.stat_result]:
    """``("blake3:<hex>", stat)`` of a regular file, never following a link."""
    fd = _open_regular(path, os.O_RDONLY | _O_NONBLOCK)
    try:
        return hashing.hash_fd(fd), os.fstat(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _fsync_dir(path: Path) -> None:
    """Make a rename in ``path`` durable; best effort (not possible on every OS)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _unlink(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _storable(text: str) -> bool:
    """True if ``text`` can be stored as sqlite TEXT (no lone surrogates)."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _valid_rel(rel: Any) -> bool:
    """An index path must be ``sender/name``: two plain components, no dots up front."""
    if not isinstance(rel, str) or not _storable(rel):
        return False
    parts = rel.split("/")
    return len(parts) == 2 and all(p and not p.startswith(".") and "\\" not in p for p in parts)


def _valid_folder(folder: Any) -> bool:
    """A sender folder must be a name :func:`safe_user_dir` leaves alone."""
    return isinstance(folder, str) and bool(folder) and safe_user_dir(folder) == folder


class PartFile:
    """Partial content being received, hashed as it arrives.

    ``prefix_length`` bytes were already there when it was opened (resume from
    there, proving them with :meth:`prefix_hash`); those were hashed once from
    disk, and everything written afterwards is hashed on the way in, so
    finishing needs no second read.

    No file descriptor is held until the first :meth:`write` or
    :meth:`truncate` (the file is created then if needed), and none after
    :meth:`close`. A part must end with :meth:`close`, :meth:`Store.discard`,
    or :meth:`Store.place` / :meth:`Store.finalize`.
    """

    def __init__(
        self, store: "Store", path: Path, content_hash: str, size: int, length: int, hasher: Any,
        ident: tuple[int, int] | None,
    ) -> None:
        self.store = store
        self.path = path
        self.hash = content_hash
        self.size = size
        self.prefix_length = length
        self._length = length
        self._hasher = hasher
        self._ident = ident  # (st_dev, st_ino) of the file on disk, None while there is none
        self._fd: int | None = None
        self._closed = False
        self._verified = False
        self._written_back = length  # bytes up to which write-behind has started

    def __repr__(self) -> str:
        return f"<PartFile {self.hash[:19]}… {self._length}/{self.size} bytes{' closed' if self.closed else ''}>"

    def __enter__(self) -> "PartFile":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def length(self) -> int:
        """Bytes held now."""
        return self._length

    @property
    def closed(self) -> bool:
        return self._closed

    @property
    def holds_fd(self) -> bool:
        """True while a file descriptor is open (between the first write and close)."""
        return self._fd is not None

    @property
    def verified(self) -> bool:
        """True after :meth:`Store.verify` passed (and nothing was written since)."""
        return self._verified

    @property
    def complete(self) -> bool:
        """All ``size`` bytes are held and they have the right hash: finalize without receiving."""
        return self._length == self.size and self.digest() == self.hash

    def prefix_hash(self) -> str | None:
        """``"blake3:<hex>"`` of the bytes held, or None if there are none (accept from 0)."""
        return self.digest() if self._length else None

    def digest(self) -> str:
        """``"blake3:<hex>"`` of the bytes held."""
        return hashing.digest(self._hasher)

    def _file(self, *, check: bool = True) -> int:
        """The file descriptor, opening (and if needed creating) the part file on first use.

        With ``check``, the file must still be the one opened, holding :attr:`length` bytes.
        """
        if self._closed:
            raise ValueError(f"part file {self.path.name} is closed; open it again with Store.open_part")
        if self._fd is None:
            self.store._real_dir(self.store.parts_dir)  # not swapped for a link meanwhile
            fd = _open_regular(self.path, os.O_RDWR | os.O_CREAT)
            st = os.fstat(fd)
            if check and (st.st_size != self._length or self._ident not in (None, (st.st_dev, st.st_ino))):
                os.close(fd)
                raise StoreError(
                    f"part file {self.path} changed on disk since it was opened (another program?); "
                    "discard it and ask for the file again"
                )
            self._fd, self._ident = fd, (st.st_dev, st.st_ino)
        return self._fd

    def _close_fd(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)

    def write(self, offset: int, data: bytes) -> None:
        """Append ``data``, which must start at :attr:`length` and end within ``size``.

        Raises :class:`StoreFull` if the disk fills up; the part is removed then.
        """
        if self._closed:
            self._file()  # raises the "closed" error
        if offset != self._length:
            raise ValueError(f"write at offset {offset} but the part holds {self._length} bytes; writes must be contiguous")
        if offset + len(data) > self.size:
            raise ValueError(f"write up to byte {offset + len(data)} is beyond the declared size {self.size}")
        try:
            fd = self._file()
        except OSError as exc:
            if exc.errno in _SPACE_ERRORS:
                self.store._disk_full(self, exc)
            raise
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, data)
        except OSError as exc:
            if exc.errno in _SPACE_ERRORS:
                self.store._disk_full(self, exc)
            with contextlib.suppress(OSError):
                os.ftruncate(fd, offset)  # keep what we know is good
            raise
        self._hasher.update(data)
        self._length = offset + len(data)
        self._verified = False
        if self._length - self._written_back >= WRITE_BEHIND:
            start_writeback(fd, self._written_back, self._length - self._written_back)
            self._written_back = self._length

    def truncate(self, length: int = 0) -> None:
        """Throw away the bytes held (the sender restarts from 0). Only 0 is supported."""
        if length != 0:
            raise ValueError("a part can only be truncated to 0; resume points come from open_part")
        os.ftruncate(self._file(check=False), 0)
        self._length = self.prefix_length = self._written_back = 0
        self._hasher = hashing.new_hasher()
        self._verified = False

    def close(self) -> None:
        """Close the file, keeping it on disk for a later resume; a part holding
        no bytes is removed. Safe to call twice."""
        self.store._close_part(self, remove_empty=True)


class Store:
    """The inbox folder: received files by sender, resumable parts, content index.

    ``max_size`` (bytes) refuses larger files with :class:`TooLarge`;
    ``reserve`` bytes of disk are always left free (:class:`InsufficientSpace`);
    ``max_parts_bytes`` caps the resumable parts kept in ``.parts`` when the
    store opens (default 4 GiB; None for no cap; see :meth:`sweep_parts`).
    Thread-safe. :meth:`close` (or ``with Store(...)``) closes the index.
    """

    def __init__(
        self,
        root: Path | str,
        *,
        max_size: int | None = None,
        reserve: int = 16 * MiB,
        max_parts_bytes: int | None = DEFAULT_MAX_PARTS_BYTES,
    ) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.max_size = max_size
        self.reserve = reserve
        self.max_parts_bytes = max_parts_bytes
        self._lock = threading.RLock()
        self._live: dict[str, PartFile] = {}  # hash hex -> open part
        self._opening: set[str] = set()  # hash hex of parts being opened right now
        self.parts_dir = self._real_dir(self.root / PARTS_DIR)
        self._db: sqlite3.Connection
        self._open_index()
        self.sweep_parts()

    def __repr__(self) -> str:
        with self._lock:
            n = self._db.execute("SELECT count(*) FROM files").fetchone()[0]
        return f"<Store {self.root}: {n} files indexed>"

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close the index database. Open parts stay usable until closed; the
        store itself must not be used afterwards."""
        with self._lock:
            self._db.close()

    # -- folders ----------------------------------------------------------------

    def _real_dir(self, path: Path) -> Path:
        """Create ``path`` (a direct child of root) if needed; refuse links and non-folders."""
        try:
            os.mkdir(path, 0o755)
        except FileExistsError:
            pass
        st = os.lstat(path)
        if stat.S_ISLNK(st.st_mode):
            raise UnsafePath(
                f"{path} is a symbolic link; refusing to write through it. "
                f"Remove the link: received files go only in real folders under {self.root}"
            )
        if not stat.S_ISDIR(st.st_mode):
            raise UnsafePath(f"{path} is not a folder; move it out of the inbox {self.root}")
        if path.resolve() != self.root / path.name:
            raise UnsafePath(f"{path} resolves outside the inbox {self.root}; refusing to use it")
        return path

    def sender_dir(self, sender: str) -> Path:
        """The folder for files from exactly ``sender`` (created if needed).

        Each distinct name gets its own folder, kept in the index so it is the
        same after a restart: the first name cleaning up to ``carol`` (see
        :func:`~ivisit_nb.sharing.names.safe_user_dir`) gets ``carol``, any
        other gets ``carol~<tag>`` with a tag from the blake3 of the exact name.
        Folder names are compared ignoring case. Never raises for a ``str``
        name (lone surrogates included) except :class:`UnsafePath` if the
        folder on disk is a link or not a folder.
        """
        if not isinstance(sender, str):
            raise TypeError(f"a sender name must be a str, not {type(sender).__name__}")
        with self._lock:
            return self._real_dir(self.root / self._sender_folder(sender))

    def _sender_folder(self, sender: str) -> str:
        """The folder name recorded for ``sender``, recording a new one if needed."""
        key = sender.encode("utf-8", "surrogatepass")
        recorded = self._recorded_folder(sender, key)
        if recorded is not None:
            return recorded
        base = safe_user_dir(sender)
        hasher = hashing.new_hasher()
        hasher.update(key)
        tag = hasher.hexdigest()
        candidates = itertools.chain(
            [base],
            (tagged_name(base, tag[:n]) for n in _TAG_LENGTHS),
            (tagged_name(base, f"{tag[:6]}-{n}") for n in range(2, MAX_NUMBERED)),  # never needed in practice
        )
        for folder in candidates:
            if not _valid_folder(folder):
                continue
            cur = self._db.execute(
                "INSERT OR IGNORE INTO senders (name, folder, folder_key) VALUES (?, ?, ?)",
                (key, folder, folder.casefold()),
            )
            if cur.rowcount == 1:
                if folder != base:
                    log.info("sender %r gets folder %s: %s belongs to another sender name", sender, folder, base)
                return folder
            recorded = self._recorded_folder(sender, key)  # another process may have just recorded it
            if recorded is not None:
                return recorded
        raise StoreError(f"no free folder for sender {sender!r:.80} in {self.root}; clean up the inbox")

    def _recorded_folder(self, sender: str, key: bytes) -> str | None:
        row = self._db.execute("SELECT folder FROM senders WHERE name = ?", (key,)).fetchone()
        if row is None:
            return None
        if not _valid_folder(row[0]):
            raise UnsafePath(
                f"the inbox index maps sender {sender!r:.80} to {row[0]!r:.80}, which is not a plain "
                f"folder name; remove {self.root / INDEX_FILE} to rebuild it"
            )
        return row[0]

    # -- space -------------------------------------------------------------------

    def bytes_to_come(self) -> int:
        """Bytes still to arrive for the parts open in this store (they will need the disk)."""
        with self._lock:
            return sum(max(p.size - p.length, 0) for p in self._live.values())

    def check_space(self, size: int, held: int = 0) -> None:
        """Raise :class:`TooLarge` or :class:`InsufficientSpace` unless a file of
        ``size`` bytes, ``held`` of which are already on disk, fits next to the
        bytes still to come for the parts open now (:meth:`bytes_to_come`)."""
        self._check_max_size(size)
        coming = self.bytes_to_come()
        need = max(size - held, 0) + coming + self.reserve
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise InsufficientSpace(
                f"need {_mib(need)} MiB, only {_mib(free)} MiB free on {self.root}; free space or "
                f"choose another inbox (the need includes {_mib(self.reserve)} MiB always kept free "
                f"and {_mib(coming)} MiB still to come for transfers under way)"
            )

    def _check_max_size(self, size: int) -> None:
        if self.max_size is not None and size > self.max_size:
            raise TooLarge(
                f"the file is {_mib(size)} MiB, over this inbox's limit of {_mib(self.max_size)} MiB; "
                "raise max_size or ask the sender for a smaller file"
            )

    def _disk_full(self, part: PartFile, exc: OSError) -> None:
        """A write hit ENOSPC: remove the part and raise :class:`StoreFull`."""
        self.discard(part)
        raise StoreFull(
            f"the disk holding {self.root} filled up while receiving {part.hash} "
            f"({part.length} of {part.size} bytes in); the partial file was removed. "
            "Free space or choose another inbox, then ask for it again"
        ) from exc

    # -- parts -------------------------------------------------------------------

    def open_part(self, content_hash: str, size: int) -> PartFile:
        """Open (or start) the part file for ``content_hash`` of ``size`` bytes.

        Bytes already there from an earlier attempt become ``prefix_length``
        (cut to ``size``; dropped if they are ``size`` long but hash wrong).
        Checks ``max_size`` and free space (counting bytes still to come for
        other open parts); raises :class:`PartInUse` if the same content is
        being received right now. No file descriptor stays open.
        """
        hex_ = _hash_hex(content_hash)
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative integer, not {size!r}")
        self._check_max_size(size)
        with self._lock:
            if hex_ in self._live or hex_ in self._opening:
                raise PartInUse(
                    f"content {content_hash} is already being received; wait for that transfer, "
                    "after which this one can be answered with 'have'"
                )
            path = self._real_dir(self.parts_dir) / f"{hex_}.part"
            self._opening.add(hex_)
        try:
            length, hasher, ident = self._read_part(path, content_hash, size)  # may take a while: no lock
            with self._lock:
                self.check_space(size, held=length)  # a part with bytes stays for later if not
                part = PartFile(self, path, content_hash, size, length, hasher, ident)
                self._live[hex_] = part
                return part
        finally:
            with self._lock:
                self._opening.discard(hex_)

    def _read_part(self, path: Path, content_hash: str, size: int) -> tuple[int, Any, tuple[int, int] | None]:
        """``(length, hasher, (dev, ino))`` of the usable bytes in an existing part file.

        A part holding nothing useful is removed (it is created again at the first write).
        """
        hasher = hashing.new_hasher()
        try:
            fd = _open_regular(path, os.O_RDWR)
        except FileNotFoundError:
            return 0, hasher, None
        try:
            st = os.fstat(fd)
            length = st.st_size
            if length > size:
                os.ftruncate(fd, size)
                length = size
            hashing.feed_fd(hasher, fd, length)
            if length == size and hashing.digest(hasher) != content_hash:
                length = 0  # full length but wrong: useless for resuming
            if length == 0:
                _unlink(path)
                return 0, hashing.new_hasher(), None
            return length, hasher, (st.st_dev, st.st_ino)
        finally:
            os.close(fd)

    def _close_part(self, part: PartFile, *, remove_empty: bool) -> None:
        """Close ``part`` and forget it; remove its file if it holds nothing and ``remove_empty``."""
        with self._lock:
            if part._closed:
                return
            part._closed = True
            try:
                part._close_fd()
                if remove_empty and part._length == 0:
                    _unlink(part.path)
            finally:
                if self._live.get(_hash_hex(part.hash)) is part:
                    del self._live[_hash_hex(part.hash)]

    def discard(self, part: PartFile) -> None:
        """Close and delete a part (after a failure or a cancel that should not resume)."""
        with self._lock:
            was_open = not part.closed
            self._close_part(part, remove_empty=False)
            hex_ = _hash_hex(part.hash)
            if was_open or (hex_ not in self._live and hex_ not in self._opening):
                _unlink(part.path)  # not if another transfer reopened it meanwhile

    def sweep_parts(self, max_total_bytes: int | None = None) -> list[Path]:
        """Tidy ``.parts`` and return what was removed. Run when the store opens.

        Removes empty parts, anything not named like a part (``<64 hex>.part``,
        e.g. leftovers of an interrupted copy), and then, while the parts
        together hold more than ``max_total_bytes`` (default: the store's
        ``max_parts_bytes``; no cap if that is None), the oldest by mtime.
        Resumable parts under the cap are kept; parts open in this store are
        not touched (nor counted). Folders in ``.parts`` are left alone.
        """
        cap = self.max_parts_bytes if max_total_bytes is None else max_total_bytes
        removed: list[Path] = []
        with self._lock:
            busy = {f"{h}.part" for h in (*self._live, *self._opening)}
            kept: list[tuple[int, int, Path]] = []  # (mtime_ns, size, path)
            with os.scandir(self._real_dir(self.parts_dir)) as entries:
                for entry in entries:
                    if entry.name in busy:
                        continue
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if stat.S_ISDIR(st.st_mode):
                        log.warning("leaving folder %s in %s alone; it does not belong there", entry.name, self.parts_dir)
                        continue
                    path = self.parts_dir / entry.name
                    if not _PART_NAME.fullmatch(entry.name) or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
                        _unlink(path)
                        removed.append(path)
                    else:
                        kept.append((st.st_mtime_ns, st.st_size, path))
            total = sum(size for _, size, _ in kept)
            if cap is not None:
                for _, size, path in sorted(kept, key=lambda k: (k[0], k[2].name)):
                    if total <= cap:
                        break
                    _unlink(path)
                    removed.append(path)
                    total -= size
        if removed:
            log.info("removed %d stale part file(s) from %s", len(removed), self.parts_dir)
        return removed

    # -- finishing a part --------------------------------------------------------

    def verify(self, part: PartFile) -> None:
        """Check a fully received part and make it durable (fsync), ready for :meth:`place`.

        Raises :class:`IntegrityError` (and deletes the part) if the hash is
        wrong, :class:`StoreFull` (part deleted) if the disk is full. On any
        other error the part is closed, its bytes kept for a later attempt.
        On success the part stays open (holding no file descriptor): then
        :meth:`place` it, or :meth:`PartFile.close` it to keep it for later.
        """
        if part.closed:
            part._file()  # raises the "closed" error
        if part.length != part.size:
            raise ValueError(
                f"only {part.length} of {part.size} bytes are in; verify/finalize after all bytes were received"
            )
        actual = part.digest()
        if actual != part.hash:
            self.discard(part)
            raise IntegrityError(part.hash, actual)
        try:
            fd = part._file()
            if hasattr(os, "fchmod"):
                os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        except OSError as exc:
            if exc.errno in _SPACE_ERRORS:
                self._disk_full(part, exc)
            part.close()
            raise
        except BaseException:
            part.close()
            raise
        part._close_fd()
        part._verified = True

    def place(self, part: PartFile, sender: str, name: str) -> Path:
        """Move a verified part into ``sender``'s folder as ``name``; return its path.

        If a file of that name already holds the same content, that file is
        returned (and the part deleted); if it holds other content,
        ``name (2).ext`` ... is used. Afterwards the part is closed, also on
        error (then its verified bytes stay in ``.parts`` for a later attempt).
        """
        if part.closed:
            part._file()  # raises the "closed" error
        if not part.verified:
            raise ValueError(f"part {part.hash} was not verified; call Store.verify(part) before place")
        with self._lock:
            try:
                folder = self.sender_dir(sender)
                target, same = self._target(folder, safe_name(name), part.hash, part.size)
                if same:
                    self.discard(part)
                else:
                    st = os.lstat(part.path)
                    if not stat.S_ISREG(st.st_mode) or (st.st_dev, st.st_ino) != part._ident:
                        raise UnsafePath(f"part file {part.path} was replaced since it was verified; ask for the file again")
                    if not hasattr(os, "fchmod"):
                        os.chmod(part.path, FILE_MODE)
                    os.replace(part.path, target)
                    self._close_part(part, remove_empty=False)
                    _fsync_dir(folder)
                self._index_add(part.hash, target)
            except BaseException:
                part.close()  # the verified bytes stay in .parts for a later attempt
                raise
            return target

    def finalize(self, part: PartFile, sender: str, name: str) -> Path:
        """:meth:`verify` then :meth:`place`: for callers with nothing to check in between."""
        self.verify(part)
        return self.place(part, sender, name)

    # -- placing files -------------------------------------------------------------

    def _target(self, folder: Path, name: str, content_hash: str, size: int) -> tuple[Path, bool]:
        """A free path for ``name`` in ``folder`` (numbering it if taken), and
        whether that path already holds exactly this content."""
        for n in range(1, MAX_NUMBERED + 1):
            candidate = folder / (name if n == 1 else numbered_name(name, n))
            try:
                st = os.lstat(candidate)
            except FileNotFoundError:
                return candidate, False
            if stat.S_ISLNK(st.st_mode):
                raise UnsafePath(
                    f"{candidate} is a symbolic link; refusing to write there. Remove the link from the inbox"
                )
            if stat.S_ISREG(st.st_mode) and st.st_size == size and (
                self._indexed_unchanged(candidate, content_hash, st) or _hash_path(candidate)[0] == content_hash
            ):
                return candidate, True
        raise StoreError(f"{MAX_NUMBERED} files named like {name!r} in {folder}; clean up that folder")

    def place_copy(self, sender: str, name: str, content_hash: str) -> Path:
        """Make content already in the inbox appear in ``sender``'s folder as ``name``
        (a hard link, else a copy). Raises :class:`MissingContent` if it is not held."""
        _hash_hex(content_hash)
        with self._lock:
            source = self.lookup(content_hash)
            if source is None:
                raise MissingContent(f"no file in {self.root} holds {content_hash}; receive it instead")
            folder = self.sender_dir(sender)
            target, same = self._target(folder, safe_name(name), content_hash, os.lstat(source).st_size)
            if not same:
                try:
                    if os.link in os.supports_follow_symlinks:
                        os.link(source, target, follow_symlinks=False)
                    else:
                        os.link(source, target)
                except FileExistsError:
                    raise StoreError(f"{target} appeared while placing a copy; try again") from None
                except OSError:  # no hard links here (other file system, FAT ...): copy
                    self._copy(source, target)
                _fsync_dir(folder)
            self._index_add(content_hash, target)
            return target

    def _copy(self, source: Path, target: Path) -> None:
        tmp = self.parts_dir / f"{uuid.uuid4().hex}.copy"
        src = _open_regular(source, os.O_RDONLY | _O_NONBLOCK)
        try:
            dst = _open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
            try:
                while block := os.read(src, READ_BLOCK):
                    _write_all(dst, block)
                if hasattr(os, "fchmod"):
                    os.fchmod(dst, FILE_MODE)
                os.fsync(dst)
            finally:
                os.close(dst)
            os.replace(tmp, target)
        except OSError as exc:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            if exc.errno in _SPACE_ERRORS:
                raise StoreFull(f"the disk holding {self.root} is full; free space or choose another inbox") from exc
            raise
        finally:
            os.close(src)

    # -- the index database ----------------------------------------------------------

    def _move_aside(self, path: Path, why: str) -> Path:
        """Rename a bad index file out of the way, with a warning saying what happened."""
        aside = path.with_name(f"{path.name}.corrupt-{int(time.time())}-{uuid.uuid4().hex[:6]}")
        os.replace(path, aside)
        msg = (
            f"inbox index {path} was unreadable ({why}); moved it to {aside}. "
            "A missing index is rebuilt from the files in the inbox"
        )
        warnings.warn(msg, RuntimeWarning, stacklevel=4)
        log.warning(msg)
        return aside

    def _db_paths(self) -> list[Path]:
        db = self.root / INDEX_FILE
        return [db] + [db.with_name(db.name + sfx) for sfx in ("-wal", "-shm", "-journal")]

    def _connect(self) -> sqlite3.Connection:
        """Open (creating) the index database: WAL mode, full sync, schema in place.

        sqlite follows links, so the database and its side files must be regular
        files (or absent) first; anything else is moved aside.
        """
        for path in self._db_paths():
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                continue
            if not stat.S_ISREG(st.st_mode):
                kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "not a regular file"
                self._move_aside(path, kind)
        conn = sqlite3.connect(
            self.root / INDEX_FILE, timeout=30, isolation_level=None, check_same_thread=False
        )
        try:
            if conn.execute("PRAGMA quick_check").fetchone()[0] != "ok":
                raise sqlite3.DatabaseError("quick_check found damage")
            if conn.execute("PRAGMA journal_mode=WAL").fetchone()[0].lower() != "wal":
                log.info("the file system of %s has no WAL support; using a rollback journal", self.root)
            conn.execute("PRAGMA synchronous=FULL")  # a sender's folder must survive a power cut
            conn.executescript(_SCHEMA)
            version = conn.execute("PRAGMA user_version").fetchone()[0]
            if version > INDEX_VERSION:
                raise StoreError(
                    f"{self.root / INDEX_FILE} was written by a newer version of ivisit_nb (index version "
                    f"{version}); update ivisit_nb or choose another inbox"
                )
        except BaseException:
            conn.close()
            raise
        return conn

    def _open_index(self) -> None:
        """Open the index as ``self._db``; fill it (import ``.index.json`` or hash the files) if new."""
        try:
            conn = self._connect()
        except sqlite3.OperationalError as exc:  # locked, no permission ...: the index may be fine
            raise StoreError(
                f"cannot open the inbox index {self.root / INDEX_FILE}: {exc}; check its permissions, "
                "or whether another program holds it locked"
            ) from exc
        except sqlite3.DatabaseError as exc:  # not a database, or damaged
            db, *side_files = self._db_paths()
            self._move_aside(db, str(exc))
            for path in side_files:  # they belong to the damaged database
                _unlink(path)
            conn = self._connect()
        self._db = conn
        fresh = conn.execute("PRAGMA user_version").fetchone()[0] == 0
        old = self._read_old_index()
        rows = self._scan_files() if fresh and old is None else (old or [])
        with self._transaction():
            conn.executemany("INSERT OR IGNORE INTO files (hash, path, size, mtime_ns) VALUES (?, ?, ?, ?)", rows)
            if fresh:
                self._claim_existing_folders()
                conn.execute(f"PRAGMA user_version = {INDEX_VERSION}")
        if old is not None:
            json_path = self.root / OLD_INDEX_FILE
            os.replace(json_path, json_path.with_name(OLD_INDEX_FILE + ".migrated"))
            log.info("imported %s into %s", json_path, self.root / INDEX_FILE)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        """One write transaction: all of it is committed, or none."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def _claim_existing_folders(self) -> None:
        """In a new index, give each existing sender folder to the sender named exactly like it,
        so no other name is handed a folder that already holds someone's files."""
        with os.scandir(self.root) as entries:
            for entry in entries:
                if entry.is_dir(follow_symlinks=False) and _valid_folder(entry.name):
                    self._db.execute(
                        "INSERT OR IGNORE INTO senders (name, folder, folder_key) VALUES (?, ?, ?)",
                        (entry.name.encode("utf-8"), entry.name, entry.name.casefold()),
                    )

    def _read_old_index(self) -> list[tuple[str, str, int, int]] | None:
        """Rows from an ``.index.json`` of an earlier version; None if there is none
        (or it was unreadable and moved aside)."""
        path = self.root / OLD_INDEX_FILE
        try:
            fd = _open_regular(path, os.O_RDONLY | _O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            return self._parse_old_index(data)
        except FileNotFoundError:
            return None
        except (ValueError, UnicodeDecodeError, RecursionError, UnsafePath) as exc:  # corrupt, or a link
            self._move_aside(path, str(exc))
            return None

    @staticmethod
    def _parse_old_index(data: Any) -> list[tuple[str, str, int, int]]:
        """``(hash, path, size, mtime_ns)`` rows from the old JSON; bad paths (``../x``) are dropped."""
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("files"), dict):
            raise ValueError("not an inbox index (expected version 1 with 'files')")
        rows = []
        for h, entries in data["files"].items():
            if not isinstance(entries, list):
                raise ValueError(f"entries for {h!r:.80} are not a list")
            if not (isinstance(h, str) and _HASH.fullmatch(h)):
                continue
            rows += [
                (h, e["path"], e["size"], e["mtime_ns"])
                for e in entries
                if isinstance(e, dict)
                and _valid_rel(e.get("path"))
                and type(e.get("size")) is int
                and type(e.get("mtime_ns")) is int
            ]
        return rows

    def _scan_files(self) -> list[tuple[str, str, int, int]]:
        """Hash every file in every sender folder (links and hidden entries skipped)."""
        rows = []
        with os.scandir(self.root) as folders:
            for folder in folders:
                if folder.name.startswith(".") or not folder.is_dir(follow_symlinks=False):
                    continue
                with os.scandir(folder.path) as entries:
                    for entry in entries:
                        rel = f"{folder.name}/{entry.name}"
                        if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False) or not _valid_rel(rel):
                            continue
                        try:
                            h, st = _hash_path(entry.path)
                        except (OSError, UnsafePath):
                            continue
                        rows.append((h, rel, st.st_size, st.st_mtime_ns))
        return rows

    # -- content index -------------------------------------------------------------

    def _indexed_unchanged(self, path: Path, content_hash: str, st: os.stat_result) -> bool:
        """True if the index says ``path`` holds ``content_hash`` and it has not changed since."""
        rel = path.relative_to(self.root).as_posix()
        with self._lock:
            row = self._db.execute(
                "SELECT 1 FROM files WHERE path = ? AND hash = ? AND size = ? AND mtime_ns = ?",
                (rel, content_hash, st.st_size, st.st_mtime_ns),
            ).fetchone()
        return row is not None

    def _index_add(self, content_hash: str, path: Path) -> None:
        rel = path.relative_to(self.root).as_posix()
        if not _valid_rel(rel):
            return  # not a name the store makes; never happens for placed files
        st = os.lstat(path)
        with self._lock:
            self._db.execute(
                "INSERT OR REPLACE INTO files (hash, path, size, mtime_ns) VALUES (?, ?, ?, ?)",
                (content_hash, rel, st.st_size, st.st_mtime_ns),
            )

    def lookup(self, content_hash: str) -> Path | None:
        """A file in the inbox holding ``content_hash``, or None.

        Entries whose file is gone, changed size, became a link, or (after an
        mtime change) no longer hashes right are dropped from the index.
        """
        _hash_hex(content_hash)
        with self._lock:
            rows = self._db.execute(
                "SELECT path, size, mtime_ns FROM files WHERE hash = ? ORDER BY rowid", (content_hash,)
            ).fetchall()
            for rel, size, mtime_ns in rows:
                path = self.root / rel
                new_mtime = self._still_holds(path, size, mtime_ns, content_hash) if _valid_rel(rel) else None
                if new_mtime is None:
                    self._db.execute("DELETE FROM files WHERE path = ? AND hash = ?", (rel, content_hash))
                    continue
                if new_mtime != mtime_ns:
                    self._db.execute("UPDATE files SET mtime_ns = ? WHERE path = ?", (new_mtime, rel))
                return path
            return None

    def _still_holds(self, path: Path, size: int, mtime_ns: int, content_hash: str) -> int | None:
        """The file's mtime if it still holds ``content_hash`` (re-hashed if its mtime moved), else None."""
        try:
            if stat.S_ISLNK(os.lstat(path.parent).st_mode):
                return None
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != size:
                return None
            if st.st_mtime_ns == mtime_ns:
                return mtime_ns
            h, st = _hash_path(path)
        except (OSError, UnsafePath):
            return None
        return st.st_mtime_ns if h == content_hash else None

    def files(self) -> dict[str, list[Path]]:
        """The content index: hash -> files holding it (as recorded; see :meth:`lookup`)."""
        with self._lock:
            rows = self._db.execute("SELECT hash, path FROM files ORDER BY rowid").fetchall()
        out: dict[str, list[Path]] = {}
        for h, rel in rows:
            out.setdefault(h, []).append(self.root / rel)
        return out

    def senders(self) -> dict[str, Path]:
        """Exact sender name -> its folder, for every sender recorded in the index."""
        with self._lock:
            rows = self._db.execute("SELECT name, folder FROM senders ORDER BY rowid").fetchall()
        return {bytes(name).decode("utf-8", "surrogatepass"): self.root / folder for name, folder in rows}
