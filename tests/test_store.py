"""The inbox on disk, with real files: layout, attacks, dedup, resume, integrity, full disk."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

from ivisit_nb.protocol.sharing import content_hash
from ivisit_nb.sharing.store import (
    InsufficientSpace,
    IntegrityError,
    MissingContent,
    PartInUse,
    Store,
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
    return sorted(str(p.relative_to(path)) for p in path.rglob("*") if p.is_file() or p.is_symlink())


# -- layout -----------------------------------------------------------------------


def test_receive_and_finalize(store: Store) -> None:
    path = receive(store, DATA, "alice", "notes.bin")
    assert path == store.root / "alice" / "notes.bin"
    assert path.read_bytes() == DATA
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert list(store.parts_dir.iterdir()) == []
    assert store.lookup(HASH) == path
    index = json.loads((store.root / ".index.json").read_text())
    assert index["files"][HASH][0]["path"] == "alice/notes.bin"


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
    path = receive(store, b"y", ".parts", ".index.json")
    assert path == store.root / "parts" / "index.json"
    assert (store.root / ".index.json").is_file()


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
    assert a == b and files_under(store.root) == [".index.json", "alice/x.bin"]


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


def test_corrupt_index_is_moved_aside_and_rebuilt(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", reserve=0)
    path = receive(store, DATA, "alice", "x.bin")
    (store.root / ".index.json").write_text("{not json")
    with pytest.warns(RuntimeWarning, match="moved it to"):
        again = Store(store.root, reserve=0)
    assert again.lookup(HASH) == path
    assert [p.name.startswith(".index.json.corrupt-") for p in store.root.iterdir()].count(True) == 1


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


def test_missing_index_is_rebuilt(tmp_path: Path) -> None:
    store = Store(tmp_path / "inbox", reserve=0)
    path = receive(store, DATA, "alice", "x.bin")
    (store.root / ".index.json").unlink()
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
        subprocess.run(["umount", str(mnt)], check=False)


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
    assert files_under(store.root) == [".index.json"]
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
