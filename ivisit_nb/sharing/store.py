"""The inbox on disk: where received files go, resumable parts, and deduplication.

Layout under the inbox ``ROOT``::

    ROOT/<safe sender>/<safe name>     received files, mode 0o644
    ROOT/.parts/<hash hex>.part        partial content, keyed by its blake3 hash
    ROOT/.index.json                   content index: hash -> files holding it

Because parts are keyed by content, a receive interrupted half way resumes when
the same content is offered again, by anyone. The index is a cache: when it is
missing it is rebuilt by hashing the files; a corrupt one is moved aside.

Nothing is ever written outside ``ROOT`` and no symbolic link is followed: a
sender folder, target file, part file or index that is a link is refused with
:class:`UnsafePath`. Files are opened with ``O_NOFOLLOW`` where the OS has it.

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
    # on AllBytesReceived: path = store.finalize(part, sender, offer.name)  # IntegrityError -> proto.fail
"""

from __future__ import annotations

import errno
import json
import logging
import os
import re
import shutil
import stat
import threading
import time
import uuid
import warnings
from pathlib import Path
from typing import Any

import blake3

from .names import numbered_name, safe_name, safe_user_dir

log = logging.getLogger("ivisit_nb.store")

MiB = 1024 * 1024
PARTS_DIR = ".parts"
INDEX_FILE = ".index.json"
FILE_MODE = 0o644
READ_BLOCK = 1024 * 1024
MAX_NUMBERED = 10_000  # "name (2).ext" ... gives up after this many

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)
_O_BINARY = getattr(os, "O_BINARY", 0)
_O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO for reading must not hang
_SPACE_ERRORS = {errno.ENOSPC, getattr(errno, "EDQUOT", errno.ENOSPC)}
_HASH = re.compile(r"blake3:([0-9a-f]{64})")


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


def _read_into(hasher: Any, fd: int, length: int | None = None) -> None:
    """Feed the first ``length`` bytes of ``fd`` (all if None) into ``hasher``."""
    os.lseek(fd, 0, os.SEEK_SET)
    left = length
    while left is None or left > 0:
        block = os.read(fd, READ_BLOCK if left is None else min(READ_BLOCK, left))
        if not block:
            break
        hasher.update(block)
        if left is not None:
            left -= len(block)


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


class PartFile:
    """Partial content being received, hashed as it arrives.

    ``prefix_length`` bytes were already there when it was opened (resume from
    there, proving them with :meth:`prefix_hash`); those were hashed once from
    disk, and everything written afterwards is hashed on the way in, so
    finishing needs no second read.
    """

    def __init__(self, store: "Store", path: Path, content_hash: str, size: int, fd: int, length: int, hasher: Any) -> None:
        self.store = store
        self.path = path
        self.hash = content_hash
        self.size = size
        self.prefix_length = length
        self._fd: int | None = fd
        self._length = length
        self._hasher = hasher

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
        return self._fd is None

    @property
    def complete(self) -> bool:
        """All ``size`` bytes are held and they have the right hash: finalize without receiving."""
        return self._length == self.size and self.digest() == self.hash

    def prefix_hash(self) -> str | None:
        """``"blake3:<hex>"`` of the bytes held, or None if there are none (accept from 0)."""
        return self.digest() if self._length else None

    def digest(self) -> str:
        """``"blake3:<hex>"`` of the bytes held."""
        return "blake3:" + self._hasher.copy().hexdigest()

    def _require_open(self) -> int:
        if self._fd is None:
            raise ValueError(f"part file {self.path.name} is closed; open it again with Store.open_part")
        return self._fd

    def write(self, offset: int, data: bytes) -> None:
        """Append ``data``, which must start at :attr:`length` and end within ``size``.

        Raises :class:`StoreFull` if the disk fills up; the part is removed then.
        """
        fd = self._require_open()
        if offset != self._length:
            raise ValueError(f"write at offset {offset} but the part holds {self._length} bytes; writes must be contiguous")
        if offset + len(data) > self.size:
            raise ValueError(f"write up to byte {offset + len(data)} is beyond the declared size {self.size}")
        try:
            os.lseek(fd, offset, os.SEEK_SET)
            _write_all(fd, data)
        except OSError as exc:
            if exc.errno in _SPACE_ERRORS:
                self.store._disk_full(self, exc)
            try:
                os.ftruncate(fd, offset)  # keep what we know is good
            except OSError:
                pass
            raise
        self._hasher.update(data)
        self._length = offset + len(data)

    def truncate(self, length: int = 0) -> None:
        """Throw away the bytes held (the sender restarts from 0). Only 0 is supported."""
        fd = self._require_open()
        if length != 0:
            raise ValueError("a part can only be truncated to 0; resume points come from open_part")
        os.ftruncate(fd, 0)
        self._length = self.prefix_length = 0
        self._hasher = blake3.blake3()

    def close(self) -> None:
        """Close the file, keeping it on disk for a later resume. Safe to call twice."""
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
            self.store._release(self)


class Store:
    """The inbox folder: received files by sender, resumable parts, content index.

    ``max_size`` (bytes) refuses larger files with :class:`TooLarge`;
    ``reserve`` bytes of disk are always left free (:class:`InsufficientSpace`).
    Thread-safe.
    """

    def __init__(self, root: Path | str, *, max_size: int | None = None, reserve: int = 16 * MiB) -> None:
        root = Path(root)
        root.mkdir(parents=True, exist_ok=True)
        self.root = root.resolve()
        self.max_size = max_size
        self.reserve = reserve
        self._lock = threading.RLock()
        self._open_parts: set[str] = set()
        self.parts_dir = self._real_dir(self.root / PARTS_DIR)
        self._index: dict[str, list[dict[str, Any]]] = {}
        self._load_index()

    def __repr__(self) -> str:
        return f"<Store {self.root}: {sum(len(v) for v in self._index.values())} files indexed>"

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
        """The folder for files from ``sender`` (created if needed)."""
        with self._lock:
            return self._real_dir(self.root / safe_user_dir(sender))

    # -- space -------------------------------------------------------------------

    def check_space(self, size: int, held: int = 0) -> None:
        """Raise :class:`TooLarge` or :class:`InsufficientSpace` unless a file of
        ``size`` bytes, ``held`` of which are already on disk, fits."""
        self._check_max_size(size)
        need = max(size - held, 0) + self.reserve
        free = shutil.disk_usage(self.root).free
        if free < need:
            raise InsufficientSpace(
                f"need {_mib(need)} MiB, only {_mib(free)} MiB free on {self.root}; free space or "
                f"choose another inbox (the need includes {_mib(self.reserve)} MiB always kept free)"
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
        """Open (or create) the part file for ``content_hash`` of ``size`` bytes.

        Bytes already there from an earlier attempt become ``prefix_length``
        (cut to ``size``; dropped if they are ``size`` long but hash wrong).
        Checks ``max_size`` and free space; raises :class:`PartInUse` if the
        same content is being received right now.
        """
        hex_ = _hash_hex(content_hash)
        if not isinstance(size, int) or size < 0:
            raise ValueError(f"size must be a non-negative integer, not {size!r}")
        self._check_max_size(size)
        with self._lock:
            if hex_ in self._open_parts:
                raise PartInUse(
                    f"content {content_hash} is already being received; wait for that transfer, "
                    "after which this one can be answered with 'have'"
                )
            path = self._real_dir(self.parts_dir) / f"{hex_}.part"
            fd = _open_regular(path, os.O_RDWR | os.O_CREAT)
            try:
                length = os.fstat(fd).st_size
                if length > size:
                    os.ftruncate(fd, size)
                    length = size
                hasher = blake3.blake3()
                _read_into(hasher, fd, length)
                if length == size and "blake3:" + hasher.hexdigest() != content_hash:
                    os.ftruncate(fd, 0)  # full length but wrong: useless for resuming
                    length, hasher = 0, blake3.blake3()
                self.check_space(size, held=length)
            except BaseException:
                if os.fstat(fd).st_size == 0:
                    os.unlink(path)  # leave no empty part behind
                os.close(fd)
                raise
            self._open_parts.add(hex_)
            return PartFile(self, path, content_hash, size, fd, length, hasher)

    def _release(self, part: PartFile) -> None:
        with self._lock:
            self._open_parts.discard(_hash_hex(part.hash))

    def discard(self, part: PartFile) -> None:
        """Close and delete a part (after a failure or a cancel that should not resume)."""
        part.close()
        try:
            os.unlink(part.path)
        except FileNotFoundError:
            pass

    def finalize(self, part: PartFile, sender: str, name: str) -> Path:
        """Move a complete part into the sender's folder and return its path.

        Raises :class:`IntegrityError` (and deletes the part) if the hash is
        wrong. If a file of that name already holds the same content, that file
        is returned; if it holds other content, ``name (2).ext`` ... is used.
        """
        fd = part._require_open()
        if part.length != part.size:
            raise ValueError(
                f"only {part.length} of {part.size} bytes are in; finalize after all bytes were received"
            )
        actual = part.digest()
        if actual != part.hash:
            self.discard(part)
            raise IntegrityError(part.hash, actual)
        try:
            if hasattr(os, "fchmod"):
                os.fchmod(fd, FILE_MODE)
            os.fsync(fd)
        except OSError as exc:
            if exc.errno in _SPACE_ERRORS:
                self._disk_full(part, exc)
            raise
        with self._lock:
            try:
                folder = self.sender_dir(sender)
                target, same = self._target(folder, safe_name(name), part.hash, part.size)
            except BaseException:
                part.close()  # the verified bytes stay in .parts for a later attempt
                raise
            if same:
                self.discard(part)
            else:
                part.close()
                if not hasattr(os, "fchmod"):
                    os.chmod(part.path, FILE_MODE)
                os.replace(part.path, target)
                _fsync_dir(folder)
            self._index_add(part.hash, target)
            return target

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
                self._indexed_unchanged(candidate, content_hash, st) or self._hash_path(candidate)[0] == content_hash
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
            try:
                os.unlink(tmp)
            except OSError:
                pass
            if exc.errno in _SPACE_ERRORS:
                raise StoreFull(f"the disk holding {self.root} is full; free space or choose another inbox") from exc
            raise
        finally:
            os.close(src)

    # -- content index -------------------------------------------------------------

    def _hash_path(self, path: Path | str) -> tuple[str, os.stat_result]:
        """``("blake3:<hex>", stat)`` of a regular file, never following a link."""
        fd = _open_regular(path, os.O_RDONLY | _O_NONBLOCK)
        try:
            hasher = blake3.blake3()
            _read_into(hasher, fd)
            return "blake3:" + hasher.hexdigest(), os.fstat(fd)
        finally:
            os.close(fd)

    @staticmethod
    def _valid_rel(rel: Any) -> bool:
        """An index path must be ``sender/name``: two plain components, no dots up front."""
        if not isinstance(rel, str):
            return False
        parts = rel.split("/")
        return len(parts) == 2 and all(p and not p.startswith(".") and "\\" not in p for p in parts)

    def _load_index(self) -> None:
        path = self.root / INDEX_FILE
        try:
            fd = _open_regular(path, os.O_RDONLY | _O_NONBLOCK)
            with os.fdopen(fd, "rb") as f:
                data = json.loads(f.read().decode("utf-8"))
            self._index = self._parse_index(data)
        except FileNotFoundError:
            self._rebuild_index()
        except (ValueError, UnicodeDecodeError, RecursionError, UnsafePath) as exc:  # corrupt, or a link
            aside = path.with_name(f"{INDEX_FILE}.corrupt-{int(time.time())}")
            os.replace(path, aside)
            msg = f"inbox index {path} was unreadable ({exc}); moved it to {aside} and rebuilt it from the files"
            warnings.warn(msg, RuntimeWarning, stacklevel=3)
            log.warning(msg)
            self._rebuild_index()

    def _parse_index(self, data: Any) -> dict[str, list[dict[str, Any]]]:
        """The index from its JSON; entries with bad paths (``../x``) are dropped."""
        if not isinstance(data, dict) or data.get("version") != 1 or not isinstance(data.get("files"), dict):
            raise ValueError("not an inbox index (expected version 1 with 'files')")
        index: dict[str, list[dict[str, Any]]] = {}
        for h, entries in data["files"].items():
            if not isinstance(entries, list):
                raise ValueError(f"entries for {h!r:.80} are not a list")
            good = [
                {"path": e["path"], "size": e["size"], "mtime_ns": e["mtime_ns"]}
                for e in entries
                if isinstance(e, dict)
                and self._valid_rel(e.get("path"))
                and isinstance(e.get("size"), int)
                and isinstance(e.get("mtime_ns"), int)
            ]
            if _HASH.fullmatch(h) and good:
                index[h] = good
        return index

    def _rebuild_index(self) -> None:
        """Hash every file in every sender folder (links and hidden entries skipped)."""
        index: dict[str, list[dict[str, Any]]] = {}
        for folder in os.scandir(self.root):
            if folder.name.startswith(".") or not folder.is_dir(follow_symlinks=False):
                continue
            for entry in os.scandir(folder.path):
                if entry.name.startswith(".") or not entry.is_file(follow_symlinks=False):
                    continue
                try:
                    h, st = self._hash_path(entry.path)
                except (OSError, UnsafePath):
                    continue
                rel = f"{folder.name}/{entry.name}"
                index.setdefault(h, []).append({"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        self._index = index
        self._save_index()

    def _save_index(self) -> None:
        path = self.root / INDEX_FILE
        tmp = self.root / f"{INDEX_FILE}.tmp"
        data = json.dumps({"version": 1, "files": self._index}, indent=1).encode("utf-8")
        fd = _open_regular(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC)
        try:
            _write_all(fd, data)
        finally:
            os.close(fd)
        os.replace(tmp, path)

    def _indexed_unchanged(self, path: Path, content_hash: str, st: os.stat_result) -> bool:
        """True if the index says ``path`` holds ``content_hash`` and it has not changed since."""
        rel = path.relative_to(self.root).as_posix()
        return any(
            e["path"] == rel and e["size"] == st.st_size and e["mtime_ns"] == st.st_mtime_ns
            for e in self._index.get(content_hash, [])
        )

    def _index_add(self, content_hash: str, path: Path) -> None:
        rel = path.relative_to(self.root).as_posix()
        st = os.lstat(path)
        entries = [e for e in self._index.get(content_hash, []) if e["path"] != rel]
        entries.append({"path": rel, "size": st.st_size, "mtime_ns": st.st_mtime_ns})
        self._index[content_hash] = entries
        self._save_index()

    def lookup(self, content_hash: str) -> Path | None:
        """A file in the inbox holding ``content_hash``, or None.

        Entries whose file is gone, changed size, became a link, or (after an
        mtime change) no longer hashes right are dropped from the index.
        """
        _hash_hex(content_hash)
        with self._lock:
            entries = self._index.get(content_hash, [])
            kept: list[dict[str, Any]] = []
            found: Path | None = None
            changed = False
            for e in entries:
                if found is not None:
                    kept.append(e)
                    continue
                path = self.root / e["path"]
                ok = self._still_holds(path, e, content_hash)
                changed |= ok is not True
                if ok:
                    kept.append(e)
                    found = path
            if changed:
                if kept:
                    self._index[content_hash] = kept
                else:
                    self._index.pop(content_hash, None)
                self._save_index()
            return found

    def _still_holds(self, path: Path, entry: dict[str, Any], content_hash: str) -> bool | str:
        """True if unchanged, ``"rehashed"`` if its mtime moved but content is the same, else False."""
        try:
            if stat.S_ISLNK(os.lstat(path.parent).st_mode):
                return False
            st = os.lstat(path)
            if not stat.S_ISREG(st.st_mode) or st.st_size != entry["size"]:
                return False
            if st.st_mtime_ns == entry["mtime_ns"]:
                return True
            h, st = self._hash_path(path)
        except (OSError, UnsafePath):
            return False
        if h != content_hash:
            return False
        entry["mtime_ns"] = st.st_mtime_ns
        return "rehashed"

    def files(self) -> dict[str, list[Path]]:
        """The content index: hash -> files holding it (as recorded; see :meth:`lookup`)."""
        with self._lock:
            return {h: [self.root / e["path"] for e in es] for h, es in self._index.items()}
