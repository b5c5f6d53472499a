"""Shared fixtures: a real embedded room server and real sessions on it."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

from ivisit_nb import RoomServer, Session  # noqa: E402


@pytest.fixture
def server():
    with RoomServer() as srv:
        yield srv


@pytest.fixture
def make_session(tmp_path):
    """make_session(url, user, room=...) joins a session; all are left at teardown."""
    sessions: list[Session] = []

    def _make(url: str, user: str, room: str | None = "lab", **kw) -> Session:
        kw.setdefault("config_dir", tmp_path / "config")
        kw.setdefault("inbox", tmp_path / "inbox" / user)
        s = Session.join(url, user, room, **kw)
        sessions.append(s)
        return s

    yield _make
    for s in sessions:
        s.leave()


@pytest.fixture
def peer_script() -> str:
    """Path of the stand-alone peer used for kill tests."""
    return os.path.join(os.path.dirname(__file__), "_peer.py")


@pytest.fixture
def pair(server, make_session):
    """alice and bob linked in one room; bob receives and asks about every offer."""
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob", offer_timeout=30)
    bob.wait_for_peers(timeout=30).wait()
    alice.wait_for_peers(timeout=30).wait()
    bob.receiving = True
    return alice, bob
