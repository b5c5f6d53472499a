"""Small helpers shared by the tests."""

from __future__ import annotations

import os
import time
from pathlib import Path


def wait_until(predicate, timeout: float = 10.0, step: float = 0.05):
    """Poll ``predicate`` until it returns something truthy; return that, or fail after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(step)
    raise AssertionError(f"condition not met within {timeout} s")


def make_file(path: Path, size: int) -> Path:
    """A file of ``size`` random bytes."""
    path.write_bytes(os.urandom(size))
    return path


def sparse_file(path: Path, size: int) -> Path:
    """A sparse file of ``size`` bytes, zeros but for 4 KiB of random bytes in the middle.

    Free to make at any size, so a test that must act mid-transfer can use a file far too
    large to finish before it acts, even on a fast, idle machine."""
    with open(path, "wb") as f:
        f.truncate(size)
        f.seek(size // 2)
        f.write(os.urandom(4096))  # not all zeros, so a wrong byte would show
    return path
