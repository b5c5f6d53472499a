"""File hashing: same strings as the protocol, bounded memory, and a cache that skips re-reads."""

from __future__ import annotations

import os
import threading
import tracemalloc
from pathlib import Path

import pytest

from ivisit_nb.protocol.sharing import content_hash
from ivisit_nb.sharing import hashing


@pytest.fixture(autouse=True)
def fresh_cache():
    hashing.clear_cache()
    yield
    hashing.clear_cache()


def write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("size", [0, 1, 1023, 1024, 1025, 5000])
def test_hash_file_matches_content_hash(tmp_path: Path, size: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "BLOCK", 1024)  # exercise block boundaries with small files
    data = os.urandom(size)
    f = write(tmp_path / "f", data)
    assert hashing.hash_file(f) == content_hash(data)
    assert hashing.hash_file(str(f)) == content_hash(data)
    assert hashing.cached_hash(f) == content_hash(data)


def test_hash_file_prefix(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "BLOCK", 1000)
    data = os.urandom(10_000)
    f = write(tmp_path / "f", data)
    for length in (0, 1, 999, 1000, 1001, 9_999, 10_000):
        assert hashing.hash_file(f, length) == content_hash(data[:length])
    assert hashing.hash_file(f, 50_000) == content_hash(data)  # longer than the file: all of it
    with pytest.raises(ValueError, match="length must be None or >= 0"):
        hashing.hash_file(f, -1)


def test_threaded_hashing_gives_the_same_string(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(3 * 1024 * 1024 + 17)
    f = write(tmp_path / "f", data)
    monkeypatch.setattr(hashing, "BLOCK", 1024 * 1024)
    monkeypatch.setattr(hashing, "THREADED_FROM", 1)  # every input counts as large
    assert hashing.hash_file(f) == content_hash(data)
    assert hashing.hash_file(f, 2_000_000) == content_hash(data[:2_000_000])


def test_new_hasher_is_incremental() -> None:
    data = os.urandom(200_000)
    h = hashing.new_hasher()
    for off in range(0, len(data), 65536):
        h.update(data[off : off + 65536])
        assert hashing.digest(h.copy()) == content_hash(data[: off + 65536])
    assert hashing.digest(h) == content_hash(data)
    assert hashing.digest(hashing.new_hasher()) == content_hash(b"")
    assert hashing.digest(hashing.new_hasher(threaded=True)) == content_hash(b"")


def test_memory_stays_bounded(tmp_path: Path) -> None:
    f = tmp_path / "big"
    with open(f, "wb") as fh:
        fh.truncate(64 * 1024 * 1024)  # sparse: quick to make, still 64 MiB to read
    tracemalloc.start()
    try:
        digest = hashing.hash_file(f)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert digest == content_hash(bytes(64 * 1024 * 1024))
    assert peak < 2 * hashing.BLOCK + 1024 * 1024, f"peak {peak} bytes while hashing 64 MiB"


def test_not_a_regular_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="not a regular file"):
        hashing.hash_file(tmp_path)
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    with pytest.raises(ValueError, match="not a regular file"):  # and does not hang waiting for a writer
        hashing.cached_hash(fifo)
    with pytest.raises(FileNotFoundError):
        hashing.hash_file(tmp_path / "missing")


# -- the cache -------------------------------------------------------------------------


def test_cache_hit_does_not_read_the_file(tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"original content")
    first = hashing.cached_hash(f)
    assert first == content_hash(b"original content")
    assert hashing.cache_info()[:3] == (0, 1, 1)
    assert hashing.cached_hash(f) == first
    assert hashing.cache_info()[:3] == (1, 1, 1)
    # Proof that a hit reads nothing: change the bytes but keep size and mtime;
    # the cache still answers with the old hash (the documented trade-off).
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.write(b"ORIGINAL")
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert hashing.cached_hash(f) == first
    assert hashing.cache_info().misses == 1


def test_touched_or_resized_file_is_read_again(tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"version one")
    assert hashing.cached_hash(f) == content_hash(b"version one")
    st = f.stat()
    with open(f, "r+b") as fh:
        fh.write(b"VERSION")  # same size ...
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # ... but a new mtime
    assert hashing.cached_hash(f) == content_hash(b"VERSION one")
    assert hashing.cache_info().misses == 2
    with open(f, "ab") as fh:
        fh.write(b"!")  # a new size
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000))  # even with the mtime put back
    assert hashing.cached_hash(f) == content_hash(b"VERSION one!")
    assert hashing.cache_info().misses == 3


def test_cache_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(hashing, "CACHE_ENTRIES", 3)
    files = [write(tmp_path / f"f{i}", f"file {i}".encode()) for i in range(5)]
    for f in files:
        hashing.cached_hash(f)
    assert hashing.cache_info().entries == 3
    hashing.cached_hash(files[-1])  # recent: still there
    assert hashing.cache_info().hits == 1
    hashing.cached_hash(files[0])  # least recently used: was dropped
    assert hashing.cache_info().misses == 6


def test_cache_is_keyed_by_inode_not_name(tmp_path: Path) -> None:
    f = write(tmp_path / "f", b"linked")
    os.link(f, tmp_path / "g")
    hashing.cached_hash(f)
    assert hashing.cached_hash(tmp_path / "g") == content_hash(b"linked")
    assert hashing.cache_info()[:2] == (1, 1)
    write(tmp_path / "h", b"linked")  # same content, other file: read
    hashing.cached_hash(tmp_path / "h")
    assert hashing.cache_info().misses == 2


def test_cache_is_thread_safe(tmp_path: Path) -> None:
    datas = [os.urandom(50_000 + i) for i in range(6)]
    files = [write(tmp_path / f"f{i}", d) for i, d in enumerate(datas)]
    errors: list[str] = []
    rounds = 40

    def worker(k: int) -> None:
        for r in range(rounds):
            i = (k + r) % len(files)
            if hashing.cached_hash(files[i]) != content_hash(datas[i]):
                errors.append(f"thread {k} round {r}: wrong hash for file {i}")

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    info = hashing.cache_info()
    assert info.hits + info.misses == 8 * rounds
    assert len(files) <= info.misses <= 8 * len(files)  # each file read once, give or take a race
    assert info.entries == len(files)
