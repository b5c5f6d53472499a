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
