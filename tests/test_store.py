"""The inbox on disk, with real files: layout, attacks, dedup, resume, integrity, full disk."""

from __future__ import annotations

import contextlib
import errno
import gc
import json
import os
import shutil
import sqlite3
import stat
import resource
import subprocess
import sys
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import blake3
import pytest

from ivisit_nb.protocol.sharing import content_hash
from ivisit_nb.sharing.store import (
    InsufficientSpace,
    IntegrityError,
    MissingContent,
    PartInUse,
    Store,
    StoreError,
    StoreFull,
    TooLarge,
    UnsafePath,
)

DATA = os.urandom(300_000)
HASH = content_hash(DATA)


@pytest.fixture
def store(tmp_path: Path) -> Store:
    return Store(tmp_path / "inbox", reserve=0)


def receive(store: Store, data: bytes, sender: str, name: str, chunk: int = 65536) -> Path:
    part = store.open_part(content_hash(data), len(data))
    for off in range(part.length, len(data), chunk):
        part.write(off, data[off : off + chunk])
    return store.finalize(part, sender, name)


def files_under(path: Path) -> list[str]:
    """Files under ``path``, leaving out the index database (``.index.sqlite`` and its -wal/-shm)."""
    return sorted(
        str(p.relative_to(path))
        for p in path.rglob("*")
        if (p.is_file() or p.is_symlink()) and not p.name.startswith(".index.sqlite")
    )


def index_rows(store: Store) -> list[tuple[str, str]]:
    """``(hash, path)`` rows of the index database, read with a connection of our own."""
    with contextlib.closing(sqlite3.connect(store.root / ".index.sqlite")) as db:
        return db.execute("SELECT hash, path FROM files ORDER BY rowid").fetchall()


# -- layout -----------------------------------------------------------------------


def test_receive_and_finalize(store: Store) -> None:
    path = receive(store, DATA, "alice", "notes.bin")
    assert path == store.root / "alice" / "notes.bin"
    assert path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert list(store.parts_dir.iterdir()) == []
    assert store.lookup(HASH) == path
    assert index_rows(store) == [(HASH, "alice/notes.bin")]


def test_large_parts_start_writing_behind_and_arrive_intact(store: Store) -> None:
    """Every WRITE_BEHIND bytes a part asks the kernel to start writing them out (so the final
    fsync has little left); the bytes placed are exactly the bytes sent."""
    from ivisit_nb.sharing import store as store_module

    data = os.urandom(2 * store_module.WRITE_BEHIND + 12345)
    part = store.open_part(content_hash(data), len(data))
    starts: list[int] = []
    for off in range(0, len(data), 1 << 20):
        part.write(off, data[off : off + (1 << 20)])
        starts.append(part._written_back)
    assert sorted(set(starts)) == [0, store_module.WRITE_BEHIND, 2 * store_module.WRITE_BEHIND]
    if sys.platform.startswith("linux"):
        assert store_module._sync_file_range is not None  # the kernel call is there, not a no-op
    assert store.finalize(part, "alice", "big.bin").read_bytes() == data


def test_executable_bit_never_set(store: Store) -> None:
    old = os.umask(0o000)
    try:
        path = receive(store, b"#!/bin/sh\necho hi\n", "alice", "run.sh")
    finally:
        os.umask(old)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644


def test_hostile_names_stay_inside(store: Store) -> None:
    path = receive(store, b"x", "../../mallory", "../../../etc/passwd")
    assert path == store.root / "mallory" / "passwd"
    path = receive(store, b"y", ".parts", ".index.sqlite")
    assert path == store.root / "parts" / "index.sqlite"
    assert (store.root / ".index.sqlite").is_file() and (store.root / ".parts").is_dir()


# -- symlink attacks ---------------------------------------------------------------


def test_sender_dir_symlink_to_outside_is_refused(store: Store, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (store.root / "mallory").symlink_to(outside)
    part = store.open_part(HASH, len(DATA))
    part.write(0, DATA)
    with pytest.raises(UnsafePath, match="symbolic link"):
        store.finalize(part, "mallory", "x.bin")
    assert part.closed
    assert list(outside.iterdir()) == []
    assert (store.parts_dir / f"{HASH[7:]}.part").exists()  # good bytes kept for a retry


def test_sender_dir_swapped_for_symlink_later(store: Store, tmp_path: Path) -> None:
    receive(store, b"first", "bob", "a.txt")
    outside = tmp_path / "outside"
    outside.mkdir()
    shutil.rmtree(store.root / "bob")
    (store.root / "bob").symlink_to(outside)
    with pytest.raises(UnsafePath):
        receive(store, b"second", "bob", "b.txt")
    assert list(outside.iterdir()) == []


def test_target_name_symlink_is_refused(store: Store, tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("keep me")
    store.sender_dir("alice")
    (store.root / "alice" / "x.txt").symlink_to(secret)
    with pytest.raises(UnsafePath, match="symbolic link"):
        receive(store, b"overwrite!", "alice", "x.txt")
    assert secret.read_text() == "keep me"
    assert (store.root / "alice" / "x.txt").is_symlink()


def test_part_file_symlink_is_refused(store: Store, tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_text("precious")
    (store.parts_dir / f"{HASH[7:]}.part").symlink_to(victim)
    with pytest.raises(UnsafePath, match="symbolic link"):
        store.open_part(HASH, len(DATA))
    assert victim.read_text() == "precious"


def test_parts_dir_symlink_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    root.mkdir()
    (tmp_path / "elsewhere").mkdir()
    (root / ".parts").symlink_to(tmp_path / "elsewhere")
    with pytest.raises(UnsafePath, match="symbolic link"):
        Store(root)


def test_sender_dir_that_is_a_file_is_refused(store: Store) -> None:
    (store.root / "carol").write_text("not a folder")
    with pytest.raises(UnsafePath, match="not a folder"):
        receive(store, b"x", "carol", "x")


def test_bad_hash_cannot_make_a_path(store: Store) -> None:
    for bad in ("blake3:../../../etc/passwd", "blake3:" + "0" * 63, "md5:" + "0" * 64, "../x"):
        with pytest.raises(ValueError, match="64 lowercase hex"):
            store.open_part(bad, 1)
        with pytest.raises(ValueError):
            store.lookup(bad)


# -- collisions and dedup --------------------------------------------------------------


def test_name_collisions(store: Store) -> None:
    a = receive(store, b"one", "alice", "x.txt")
    b = receive(store, b"two", "alice", "x.txt")
    c = receive(store, b"three", "alice", "x.txt")
    assert [p.name for p in (a, b, c)] == ["x.txt", "x (2).txt", "x (3).txt"]
    assert c.read_bytes() == b"three"
    again = receive(store, b"two", "alice", "x.txt")  # same content as x (2).txt, but x.txt differs
    assert again.name == "x (2).txt"
    assert files_under(store.root / "alice") == ["x (2).txt", "x (3).txt", "x.txt"]
    assert list(store.parts_dir.iterdir()) == []


def test_same_name_same_content_returns_existing(store: Store) -> None:
    a = receive(store, DATA, "alice", "x.bin")
    b = receive(store, DATA, "alice", "x.bin")
    assert a == b and files_under(store.root) == ["alice/x.bin"]


def test_place_copy_hardlinks(store: Store) -> None:
    original = receive(store, DATA, "alice", "data.bin")
    copy = store.place_copy("bob", "also data.bin", HASH)
    assert copy == store.root / "bob" / "also data.bin"
    assert copy.read_bytes() == DATA
    assert os.stat(copy).st_ino == os.stat(original).st_ino
    assert store.place_copy("bob", "also data.bin", HASH) == copy  # already there
    assert sorted(str(p.relative_to(store.root)) for p in store.files()[HASH]) == ["alice/data.bin", "bob/also data.bin"]
    with pytest.raises(MissingContent, match="receive it instead"):
        store.place_copy("bob", "x", content_hash(b"never received"))


def test_place_copy_copies_when_links_fail(store: Store, monkeypatch: pytest.MonkeyPatch) -> None:
    original = receive(store, DATA, "alice", "data.bin")

    def no_links(*args, **kwargs):
        raise OSError(errno.EXDEV, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_links)
    copy = store.place_copy("bob", "data.bin", HASH)
    assert copy.read_bytes() == DATA
    assert os.stat(copy).st_ino != os.stat(original).st_ino
    assert stat.S_IMODE(copy.stat().st_mode) == 0o644
    assert list(store.parts_dir.iterdir()) == []


def test_place_copy_collision_with_other_content(store: Store) -> None:
    receive(store, DATA, "alice", "x.bin")
    receive(store, b"other", "bob", "x.bin")
    assert store.place_copy("bob", "x.bin", HASH).name == "x (2).bin"


# -- content index ---------------------------------------------------------------------


def test_corrupt_json_index_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    (root / "alice").mkdir(parents=True)
    (root / "alice" / "x.bin").write_bytes(DATA)
    (root / ".index.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="moved it to"):
        store = Store(root, reserve=0)
    assert store.lookup(HASH) == root / "alice" / "x.bin"  # rebuilt by hashing
    assert [p.name.startswith(".index.json.corrupt-") for p in root.iterdir()].count(True) == 1
    assert not (root / ".index.json").exists()


def test_corrupt_sqlite_index_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", reserve=0)
    path = receive(store, DATA, "alice", "x.bin")
    store.close()
    for p in store.root.glob(".index.sqlite*"):
        p.unlink()
    (store.root / ".index.sqlite").write_bytes(b"this is not a database" * 100)
    with pytest.warns(RuntimeWarning, match="moved it to"):
        again = Store(store.root, reserve=0)
    assert again.lookup(HASH) == path
    assert [p.name.startswith(".index.sqlite.corrupt-") for p in store.root.iterdir()].count(True) == 1


def test_index_symlink_is_moved_aside(tmp_path: Path) -> None:
    victim = tmp_path / "victim.json"
    victim.write_text('{"version": 1, "files": {}}')
    root = tmp_path / "inbox"
    root.mkdir()
    (root / ".index.json").symlink_to(victim)
    with pytest.warns(RuntimeWarning, match="symbolic link"):
        store = Store(root, reserve=0)
    receive(store, b"x", "alice", "x")
    assert victim.read_text() == '{"version": 1, "files": {}}'
    assert not (root / ".index.json").is_symlink()


def test_sqlite_index_symlink_is_moved_aside(tmp_path: Path) -> None:
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    root = tmp_path / "inbox"
    root.mkdir()
    (root / ".index.sqlite").symlink_to(victim)
    (root / ".index.sqlite-wal").symlink_to(victim)
    with pytest.warns(RuntimeWarning, match="symbolic link"):
        store = Store(root, reserve=0)
    receive(store, b"x", "alice", "x")
    assert victim.read_bytes() == b"precious"
    assert not (root / ".index.sqlite").is_symlink() and not (root / ".index.sqlite-wal").is_symlink()
    assert store.lookup(content_hash(b"x")) == root / "alice" / "x"


def test_missing_index_is_rebuilt(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", reserve=0)
    path = receive(store, DATA, "alice", "x.bin")
    store.close()
    for p in store.root.glob(".index.sqlite*"):
        p.unlink()
    assert Store(store.root, reserve=0).lookup(HASH) == path


def test_rebuild_skips_symlinks(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret")
    root = tmp_path / "inbox"
    (root / "mallory").mkdir(parents=True)
    (root / "mallory" / "link").symlink_to(secret)
    (root / "linkdir").symlink_to(tmp_path)
    store = Store(root, reserve=0)
    assert store.lookup(content_hash(b"top secret")) is None
    assert store.files() == {}


def test_index_with_traversal_paths_is_ignored(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_bytes(b"top secret")
    root = tmp_path / "inbox"
    root.mkdir()
    st = secret.stat()
    entry = {"path": "../secret", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    (root / ".index.json").write_text(json.dumps({"version": 1, "files": {content_hash(b"top secret"): [entry]}}))
    store = Store(root, reserve=0)
    assert store.lookup(content_hash(b"top secret")) is None


def test_lookup_drops_stale_entries(store: Store) -> None:
    path = receive(store, b"hello", "alice", "x.txt")
    # touched but unchanged: re-hashed and kept
    os.utime(path, ns=(1, 1))
    assert store.lookup(content_hash(b"hello")) == path
    # changed in place, same size: re-hashed, dropped
    path.write_bytes(b"HELLO")
    os.utime(path, ns=(2, 2))
    assert store.lookup(content_hash(b"hello")) is None
    assert content_hash(b"hello") not in store.files()
    # deleted
    other = receive(store, b"bye", "alice", "y.txt")
    other.unlink()
    assert store.lookup(content_hash(b"bye")) is None


def test_lookup_falls_back_to_another_copy(store: Store) -> None:
    a = receive(store, DATA, "alice", "x.bin")
    b = store.place_copy("bob", "x.bin", HASH)
    a.unlink()
    assert store.lookup(HASH) == b


# -- parts: resume, restart, integrity --------------------------------------------------


def test_resume_prefix(store: Store) -> None:
    half = len(DATA) // 2
    part = store.open_part(HASH, len(DATA))
    assert part.prefix_length == 0 and part.prefix_hash() is None
    part.write(0, DATA[:half])
    part.close()
    part = store.open_part(HASH, len(DATA))
    assert part.prefix_length == half
    assert part.prefix_hash() == content_hash(DATA[:half])
    part.write(half, DATA[half:])
    path = store.finalize(part, "bob", "x.bin")  # resumed by someone else: keyed by content
    assert path.read_bytes() == DATA


def test_restart_truncates(store: Store) -> None:
    part = store.open_part(HASH, len(DATA))
    part.write(0, b"garbage" * 100)
    part.close()
    part = store.open_part(HASH, len(DATA))
    assert part.prefix_length == 700
    part.truncate(0)
    assert part.length == 0 and part.prefix_hash() is None
    part.write(0, DATA)
    assert store.finalize(part, "alice", "x").read_bytes() == DATA


def test_part_longer_than_size_is_cut(store: Store) -> None:
    (store.parts_dir / f"{HASH[7:]}.part").write_bytes(DATA + b"extra")
    part = store.open_part(HASH, len(DATA))
    assert part.prefix_length == len(DATA) and part.complete
    assert store.finalize(part, "alice", "x").read_bytes() == DATA


def test_full_length_part_with_wrong_hash_is_dropped(store: Store) -> None:
    (store.parts_dir / f"{HASH[7:]}.part").write_bytes(b"\0" * len(DATA))
    part = store.open_part(HASH, len(DATA))
    assert part.prefix_length == 0 and not part.complete


def test_integrity_failure_deletes_part(store: Store) -> None:
    part = store.open_part(HASH, len(DATA))
    part.write(0, bytes(len(DATA)))
    with pytest.raises(IntegrityError) as info:
        store.finalize(part, "alice", "x.bin")
    assert info.value.expected == HASH
    assert info.value.actual == content_hash(bytes(len(DATA)))
    assert HASH in str(info.value) and info.value.actual in str(info.value)
    assert list(store.parts_dir.iterdir()) == []
    assert not (store.root / "alice" / "x.bin").exists()


def test_write_rules(store: Store) -> None:
    part = store.open_part(content_hash(b"abcdef"), 6)
    with pytest.raises(ValueError, match="contiguous"):
        part.write(3, b"def")
    part.write(0, b"abc")
    with pytest.raises(ValueError, match="beyond the declared size 6"):
        part.write(3, b"defg")
    with pytest.raises(ValueError, match="only 3 of 6 bytes"):
        store.finalize(part, "alice", "x")
    part.write(3, b"def")
    store.finalize(part, "alice", "x")
    with pytest.raises(ValueError, match="closed"):
        part.write(6, b"")


def test_zero_size_file(store: Store) -> None:
    part = store.open_part(content_hash(b""), 0)
    assert part.complete
    assert store.finalize(part, "alice", "empty").read_bytes() == b""


def test_same_content_twice_at_once(store: Store) -> None:
    part = store.open_part(HASH, len(DATA))
    with pytest.raises(PartInUse, match="already being received"):
        store.open_part(HASH, len(DATA))
    part.close()
    store.open_part(HASH, len(DATA)).close()


def test_discard(store: Store) -> None:
    part = store.open_part(HASH, len(DATA))
    part.write(0, DATA[:10])
    store.discard(part)
    assert list(store.parts_dir.iterdir()) == []
    assert store.open_part(HASH, len(DATA)).prefix_length == 0


# -- size limits and full disk --------------------------------------------------------------


def test_max_size(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", max_size=1000, reserve=0)
    with pytest.raises(TooLarge, match="over this inbox's limit"):
        store.open_part(HASH, len(DATA))
    with pytest.raises(TooLarge):
        store.check_space(1001)
    store.check_space(1000)
    assert list(store.parts_dir.iterdir()) == []


def test_insufficient_space(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", reserve=2**62)
    with pytest.raises(InsufficientSpace, match=r"need .* MiB, only .* MiB free on .*; free space or choose another inbox"):
        store.check_space(1)
    with pytest.raises(InsufficientSpace):
        store.open_part(HASH, len(DATA))
    assert list(store.parts_dir.iterdir()) == []  # no empty part left behind


@pytest.fixture
def tiny_disk(tmp_path: Path):
    """A 1 MiB tmpfs to fill up (needs root, which the test machines have)."""
    mnt = tmp_path / "tiny"
    mnt.mkdir()
    try:
        res = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mnt)], capture_output=True, text=True
        )
    except FileNotFoundError:
        pytest.skip("no mount command, so no small disk to fill up")
    if res.returncode != 0:
        pytest.skip(f"cannot mount a 1 MiB tmpfs to fill up (needs root): {res.stderr.strip()}")
    try:
        yield mnt
    finally:
        gc.collect()  # close the index databases of stores the test left behind
        if subprocess.run(["umount", str(mnt)], check=False, capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)  # still busy: detach it anyway


def test_full_disk(tiny_disk: Path) -> None:
    with pytest.raises(InsufficientSpace, match="free space or choose another inbox"):
        Store(tiny_disk / "inbox").check_space(100)  # default 16 MiB reserve: a 1 MiB disk never fits
    with pytest.raises(InsufficientSpace, match="need 2.0 MiB, only"):
        Store(tiny_disk / "inbox", reserve=0).open_part(content_hash(b"x"), 2 * 1024 * 1024)

    store = Store(tiny_disk / "inbox", reserve=0)
    data = os.urandom(700 * 1024)
    part = store.open_part(content_hash(data), len(data))  # fits now ...
    (tiny_disk / "filler").write_bytes(b"\0" * 600 * 1024)  # ... until another program fills the disk
    with pytest.raises(StoreFull, match="filled up .* partial file was removed. Free space or choose another inbox"):
        for off in range(0, len(data), 65536):
            part.write(off, data[off : off + 65536])
    assert part.closed
    assert list(store.parts_dir.iterdir()) == []
    assert files_under(store.root) == []
    (tiny_disk / "filler").unlink()
    # the disk is usable again once the part is gone
    assert receive(store, b"small", "alice", "ok.txt").read_bytes() == b"small"


# -- with the protocol: what the adapter does ------------------------------------------------


def _adapter_transfer(store: Store, sender: str, data: bytes, stop_after: int | None = None) -> Path | None:
    """One transfer through two protocol objects and the store, as the session adapter
    would run it; ``stop_after`` bytes cuts the link early (returns None then)."""
    import uuid

    from ivisit_nb.protocol.sharing import (
        AllBytesReceived, ChunkReceived, OfferAccepted, OfferReceived, SharingProtocol, TransferDone,
    )

    tx, rx = SharingProtocol(sender, "me"), SharingProtocol("me", sender)
    tid = uuid.uuid4().hex
    tx.offer(tid, "file", "data.bin", len(data), content_hash(data))
    for m in tx.take_control():
        rx.receive_control(m)
    [offer] = rx.take_events()
    assert isinstance(offer, OfferReceived)
    part = store.open_part(offer.hash, offer.size)
    rx.accept(tid, part.prefix_length, part.prefix_hash())
    for m in rx.take_control():
        tx.receive_control(m)
    [accepted] = tx.take_events()
    assert isinstance(accepted, OfferAccepted)
    start = accepted.offset if accepted.prefix_hash == content_hash(data[: accepted.offset]) else 0
    tx.start_sending(tid, start)
    end = len(data) if stop_after is None else stop_after
    for off in range(start, end, 50_000):
        tx.send_chunk(tid, off, data[off : min(off + 50_000, end)])
    path = None
    for f in tx.take_data():
        rx.receive_data(f)
    for ev in rx.take_events():
        if isinstance(ev, ChunkReceived):
            if ev.offset == 0:
                part.truncate(0)
            part.write(ev.offset, ev.data)
        elif isinstance(ev, AllBytesReceived):
            path = store.finalize(part, sender, offer.name)
            rx.complete(tid)
    if path is None:
        part.close()  # link lost: keep the part for a resume
        return None
    for m in rx.take_control():
        tx.receive_control(m)
    assert tx.take_events() == [TransferDone(tid)]
    return path


def test_interrupted_receive_resumes_from_another_sender(store: Store) -> None:
    assert _adapter_transfer(store, "alice", DATA, stop_after=120_000) is None
    assert (store.parts_dir / f"{HASH[7:]}.part").stat().st_size == 120_000
    path = _adapter_transfer(store, "carol", DATA)
    assert path == store.root / "carol" / "data.bin" and path.read_bytes() == DATA


def test_bad_prefix_makes_the_sender_restart(store: Store) -> None:
    (store.parts_dir / f"{HASH[7:]}.part").write_bytes(b"not the start of DATA" * 1000)
    path = _adapter_transfer(store, "alice", DATA)
    assert path is not None and path.read_bytes() == DATA


# -- a folder for each exact sender name ----------------------------------------------------


def tag(name: str, n: int = 6) -> str:
    """The tag the store gives a sender whose clean name is taken."""
    return blake3.blake3(name.encode("utf-8", "surrogatepass")).hexdigest()[:n]


COLLIDING = ["carol", "carol.", ".carol", "carol\u200b", "carol\u202e", "../carol", "Carol", "CAROL", "carol\ud800"]


def test_colliding_sender_names_get_distinct_stable_folders(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", reserve=0)
    folders = {name: store.sender_dir(name) for name in COLLIDING}
    assert len(set(folders.values())) == len(COLLIDING)
    assert folders["carol"] == store.root / "carol"  # the first one gets the clean name
    assert folders["carol."] == store.root / f"carol~{tag('carol.')}"
    assert folders["carol\ud800"] == store.root / f"carol~{tag('carol' + chr(0xD800))}"
    assert folders["Carol"].name == f"Carol~{tag('Carol')}"  # distinct on case-insensitive disks too
    for i, name in enumerate(COLLIDING):
        receive(store, f"file {i}".encode(), name, "same.txt")
    store.close()

    again = Store(store.root, reserve=0)
    for i, name in enumerate(reversed(COLLIDING)):  # another order after a restart: same folders
        assert again.sender_dir(name) == folders[name]
    for i, name in enumerate(COLLIDING):
        assert (folders[name] / "same.txt").read_bytes() == f"file {i}".encode()
    assert again.senders() == folders


def test_dot_names_and_traversal_do_not_share(store: Store) -> None:
    mallory = store.sender_dir("../mallory")
    assert mallory == store.root / "mallory"  # first come
    assert store.sender_dir("mallory") == store.root / f"mallory~{tag('mallory')}"
    dots = [store.sender_dir(n) for n in (".", "..", "", "\u202e", "unknown")]
    assert len(set(dots)) == 5 and dots[0] == store.root / "unknown"
    assert all(d.parent == store.root and not d.name.startswith(".") for d in dots)


def test_tag_collision_moves_to_a_longer_tag(store: Store) -> None:
    store.sender_dir("carol")
    squatter = f"carol~{tag('carol.')}"  # a sender who names itself after carol.'s folder
    assert store.sender_dir(squatter) == store.root / squatter
    assert store.sender_dir("carol.") == store.root / f"carol~{tag('carol.', 12)}"
    assert len(set(store.senders().values())) == 3


def test_lone_surrogates_in_sender_names(store: Store) -> None:
    names = ["sur\ud800rogate", "surrogate", "\udcff", "\ud800"]
    paths = [receive(store, n.encode("utf-8", "surrogatepass"), n, "x") for n in names]
    assert len({p.parent for p in paths}) == 4
    assert paths[0].parent == store.root / "surrogate"
    assert set(store.senders()) == set(names)


def test_tampered_sender_folder_in_index_is_refused(store: Store) -> None:
    store.sender_dir("eve")
    with contextlib.closing(sqlite3.connect(store.root / ".index.sqlite")) as db:
        with db:
            db.execute("UPDATE senders SET folder = '.parts' WHERE folder = 'eve'")
    with pytest.raises(UnsafePath, match="not a plain folder name"):
        receive(store, b"x", "eve", "x")


# -- the index: sqlite, migration, crashes ---------------------------------------------------


def test_json_index_is_migrated(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    (root / "carol").mkdir(parents=True)
    f = root / "carol" / "a.bin"
    f.write_bytes(b"A" * 100)
    st = f.stat()
    # Not what the file holds: a lookup that finds it proves the entry came from the JSON, not from hashing.
    claimed = content_hash(b"B" * 100)
    entry = {"path": "carol/a.bin", "size": 100, "mtime_ns": st.st_mtime_ns}
    (root / ".index.json").write_text(json.dumps({"version": 1, "files": {claimed: [entry]}}))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        store = Store(root, reserve=0)
    assert store.lookup(claimed) == f
    assert not (root / ".index.json").exists() and (root / ".index.json.migrated").is_file()
    assert store.sender_dir("carol") == root / "carol"  # an existing folder stays with its name
    assert store.sender_dir("carol.") == root / f"carol~{tag('carol.')}"
    store.close()
    again = Store(root, reserve=0)
    assert again.lookup(claimed) == f
    assert again.sender_dir("carol.") == root / f"carol~{tag('carol.')}"


def test_json_index_next_to_sqlite_is_merged(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", reserve=0)
    a = receive(store, b"aaa", "alice", "a")
    b = receive(store, b"bbb", "bob", "b")
    store.close()
    # a crash between filling the database and renaming the JSON: import again, idempotently
    st = b.stat()
    entry = {"path": "bob/b", "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    (store.root / ".index.json").write_text(json.dumps({"version": 1, "files": {content_hash(b"bbb"): [entry]}}))
    again = Store(store.root, reserve=0)
    assert again.lookup(content_hash(b"aaa")) == a and again.lookup(content_hash(b"bbb")) == b
    assert [len(v) for v in again.files().values()] == [1, 1]
    assert (store.root / ".index.json.migrated").is_file()


def test_index_is_sqlite_in_wal_mode(store: Store) -> None:
    receive(store, b"x", "alice", "x")
    with contextlib.closing(sqlite3.connect(store.root / ".index.sqlite")) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert not (store.root / ".index.json").exists()


_WRITER = """
import sys
from ivisit_nb.protocol.sharing import content_hash
from ivisit_nb.sharing.store import Store

store = Store(sys.argv[1], reserve=0)
i = int(sys.argv[2])
while True:
    data = b"file number %d " % i + bytes(j % 251 for j in range(i % 500))
    part = store.open_part(content_hash(data), len(data))
    part.write(0, data)
    path = store.finalize(part, "sender%d" % (i % 7), "f%d.bin" % i)
    store.place_copy("copies", "c%d.bin" % i, content_hash(data))
    print(content_hash(data), path.relative_to(store.root).as_posix(), flush=True)
    i += 1
"""


def test_killed_mid_update_leaves_a_readable_index(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    done: list[tuple[str, str]] = []
    for round_, lines in enumerate((20, 45, 70)):  # killed at a different point each time
        proc = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(root), str(round_ * 1000)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=Path(__file__).parent.parent,
        )
        try:
            for _ in range(lines):
                line = proc.stdout.readline()
                assert line, f"the writer stopped early: {proc.stderr.read().decode()}"
                done.append(tuple(line.decode().split()))  # type: ignore[arg-type]
        finally:
            proc.kill()  # SIGKILL, in the middle of whatever it was doing
            out, _ = proc.communicate()
        done += [tuple(line.split()) for line in out.decode().splitlines()]  # type: ignore[misc]
        with warnings.catch_warnings():
            warnings.simplefilter("error")  # no "moved it aside": nothing to repair
            store = Store(root, reserve=0)
        with contextlib.closing(sqlite3.connect(root / ".index.sqlite")) as db:
            assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        for h, rel in done:  # everything reported placed survived the kill
            assert store.lookup(h) == root / rel
        assert len(store.senders()) == 8
        store.close()


def test_store_used_from_many_threads(store: Store) -> None:
    datas = [os.urandom(5000) + bytes([i]) for i in range(40)]
    with ThreadPoolExecutor(8) as pool:
        paths = list(pool.map(lambda i: receive(store, datas[i], f"s{i % 5}", f"f{i}"), range(40)))
        copies = list(pool.map(lambda i: store.place_copy(f"t{i % 3}", f"c{i}", content_hash(datas[i])), range(40)))
    for d, p, c in zip(datas, paths, copies):
        assert store.lookup(content_hash(d)) == p and p.read_bytes() == d == c.read_bytes()
    assert len(store.senders()) == 8 and sum(len(v) for v in store.files().values()) == 80


# -- parts: no idle file descriptors, no piles --------------------------------------------------


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


@pytest.mark.skipif(not Path("/proc/self/fd").is_dir(), reason="needs /proc/self/fd to count descriptors")
def test_idle_open_parts_hold_no_fd(store: Store) -> None:
    datas = [os.urandom(1000) + i.to_bytes(2, "big") for i in range(1000)]
    for d in datas[:30]:  # some resume an earlier attempt
        (store.parts_dir / f"{content_hash(d)[7:]}.part").write_bytes(d[:500])
    gc.collect()  # stores of earlier tests must not close their databases mid-count
    before = fd_count()
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(before + 20, hard), hard))
    try:  # 1,000 accepted transfers waiting for their first bytes, under a limit of 20 more descriptors
        parts = [store.open_part(content_hash(d), len(d)) for d in datas]
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    assert fd_count() == before
    assert parts[0].prefix_length == 500 and parts[999].prefix_length == 0
    assert not any(p.holds_fd for p in parts)
    parts[0].write(500, datas[0][500:])
    parts[999].write(0, datas[999][:10])
    assert fd_count() == before + 2 and parts[0].holds_fd
    store.verify(parts[0])  # verified, waiting to be placed: no descriptor either
    assert fd_count() == before + 1 and not parts[0].holds_fd
    store.place(parts[0], "alice", "x")
    for p in parts:
        p.close()
    assert fd_count() == before


def test_closing_an_empty_part_removes_it(store: Store) -> None:
    path = store.parts_dir / f"{HASH[7:]}.part"
    store.open_part(HASH, len(DATA)).close()
    assert not path.exists()
    part = store.open_part(HASH, len(DATA))
    part.write(0, b"")  # the file is made at the first write ...
    assert path.exists()
    part.close()  # ... and removed with nothing in it
    assert not path.exists()
    part = store.open_part(HASH, len(DATA))
    part.write(0, DATA[:10])
    part.truncate(0)
    part.close()
    assert not path.exists()
    path.write_bytes(b"")  # an empty part left by a crash
    part = store.open_part(HASH, len(DATA))
    assert part.prefix_length == 0 and not path.exists()
    part.write(0, DATA[:10])
    part.close()  # bytes in it: kept for a resume
    assert path.stat().st_size == 10


def test_part_changed_on_disk_is_refused(store: Store) -> None:
    path = store.parts_dir / f"{HASH[7:]}.part"
    path.write_bytes(DATA[:1000])
    part = store.open_part(HASH, len(DATA))
    path.write_bytes(DATA[:10])  # another program meddles before the first byte arrives
    with pytest.raises(StoreError, match="changed on disk since it was opened"):
        part.write(1000, DATA[1000:2000])
    store.discard(part)
    assert not path.exists()


def test_check_space_counts_bytes_still_to_come(tiny_disk: Path) -> None:
    store = Store(tiny_disk / "inbox", reserve=0)
    a, b = os.urandom(600 * 1024), os.urandom(600 * 1024)
    part_a = store.open_part(content_hash(a), len(a))  # fits alone ...
    assert store.bytes_to_come() == len(a)
    with pytest.raises(InsufficientSpace, match=r"0\.6 MiB still to come for transfers under way"):
        store.open_part(content_hash(b), len(b))  # ... but not both at once
    with pytest.raises(InsufficientSpace):
        store.check_space(len(b))
    part_a.write(0, a[: 200 * 1024])
    assert store.bytes_to_come() == 400 * 1024
    store.discard(part_a)
    assert store.bytes_to_come() == 0
    part_b = store.open_part(content_hash(b), len(b))
    part_b.write(0, b)
    assert store.finalize(part_b, "bob", "b").read_bytes() == b


def test_sweep_parts(tmp_path: Path) -> None:
    root = tmp_path / "inbox"
    parts = root / ".parts"
    parts.mkdir(parents=True)
    now = time.time()

    def old_part(data: bytes, age: float) -> Path:
        p = parts / f"{content_hash(data)[7:]}.part"
        p.write_bytes(data[: len(data) // 2])
        os.utime(p, (now - age, now - age))
        return p

    datas = [os.urandom(200_000) for _ in range(3)]
    oldest, middle, newest = (old_part(d, age) for d, age in zip(datas, (300, 200, 100)))
    (parts / ("0" * 64 + ".part")).write_bytes(b"")  # empty
    (parts / "notes.txt").write_text("junk")
    (parts / "abc.copy").write_bytes(b"left by an interrupted copy")
    (parts / ("A" * 64 + ".part")).write_bytes(b"not a hash name")
    outside = tmp_path / "outside"
    outside.write_bytes(b"precious")
    (parts / ("1" * 64 + ".part")).symlink_to(outside)
    (parts / "somedir").mkdir()

    store = Store(root, reserve=0, max_parts_bytes=250_000)  # three parts of 100,000 bytes: one too many
    assert sorted(os.listdir(parts)) == sorted([middle.name, newest.name, "somedir"])
    assert outside.read_bytes() == b"precious"
    assert store.open_part(content_hash(datas[2]), 200_000).prefix_length == 100_000  # resumable: kept
    assert store.sweep_parts(max_total_bytes=0) == [middle]  # an open part is left alone
    assert newest.exists()
    assert Store(root, reserve=0).max_parts_bytes == 4 * 1024**3


def test_sweep_keeps_parts_under_the_default_cap(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", reserve=0)
    part = store.open_part(HASH, len(DATA))
    part.write(0, DATA[:1000])
    part.close()
    assert Store(store.root, reserve=0).open_part(HASH, len(DATA)).prefix_length == 1000


# -- verify, then place: a failed transfer leaves nothing in view ----------------------------


def test_verify_then_place(store: Store) -> None:
    part = store.open_part(HASH, len(DATA))
    part.write(0, DATA)
    with pytest.raises(ValueError, match="was not verified"):
        store.place(part, "alice", "x.bin")
    store.verify(part)
    assert part.verified and not part.closed and not part.holds_fd
    assert files_under(store.root) == [f".parts/{HASH[7:]}.part"]  # nothing in view yet
    path = store.place(part, "alice", "x.bin")
    assert part.closed and path.read_bytes() == DATA and store.lookup(HASH) == path


def test_verified_but_no_longer_wanted(store: Store) -> None:
    part = store.open_part(HASH, len(DATA))
    part.write(0, DATA)
    store.verify(part)
    part.close()  # cancelled between verify and place: nothing in view, the bytes kept
    assert files_under(store.root) == [f".parts/{HASH[7:]}.part"]
    again = store.open_part(HASH, len(DATA))
    assert again.complete
    assert store.finalize(again, "alice", "x.bin").read_bytes() == DATA


def test_failed_verify_leaves_nothing(store: Store) -> None:
    part = store.open_part(HASH, len(DATA))
    part.write(0, bytes(len(DATA)))
    with pytest.raises(IntegrityError):
        store.verify(part)
    assert part.closed and files_under(store.root) == []
    with pytest.raises(ValueError, match="closed"):
        store.place(part, "alice", "x.bin")
    assert files_under(store.root) == []


def test_write_after_verify_needs_a_new_verify(store: Store) -> None:
    data = b"abcdef"
    part = store.open_part(content_hash(data), 6)
    part.write(0, data)
    store.verify(part)
    part.truncate(0)
    part.write(0, data)
    assert not part.verified
    assert store.finalize(part, "alice", "x").read_bytes() == data
