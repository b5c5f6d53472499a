"""Kernel-side helpers for the browser tests; the test notebook imports them.

``Env`` starts an embedded room server and two sessions in this kernel: bob (whose
panel the page shows) and alice (who sends to him, and receives what is dropped
on bob's panel).
"""

from __future__ import annotations

import os
from pathlib import Path

from ivisit_nb import RoomServer, Session


class Env:
    def __init__(self, root: str) -> None:
        self.root = Path(root).resolve()
        self.files = self.root / "files"
        self.files.mkdir(exist_ok=True)
        self.server = RoomServer()
        config = self.root / "config"
        self.alice = Session.join(self.server.url, "alice", "lab", inbox=self.root / "inbox" / "alice", config_dir=config)
        self.bob = Session.join(self.server.url, "bob", "lab", inbox=self.root / "inbox" / "bob", config_dir=config,
                                offer_timeout=120)
        self.bob.wait_for_peers(timeout=30).wait()
        self.alice.wait_for_peers(timeout=30).wait()
        self.bob.receiving = True
        self.alice.receiving = True
        self.alice.settings["bob"].files = "accept"
        self.alice.settings["bob"].urls = "accept"
        self.sent = {}

    def make(self, name: str, size: int = 1000, data: bytes | None = None) -> Path:
        """A file with unique content (so nothing is deduplicated); big ones are sparse."""
        path = self.files / name
        with open(path, "wb") as f:
            if data is not None:
                f.write(data)
            else:
                f.write(os.urandom(min(size, 1 << 20)))
                f.truncate(size)
        return path

    def offer(self, name: str, size: int = 1000, data: bytes | None = None) -> dict:
        """alice offers a new file to bob; returns its transfer id and when it was offered."""
        t = self.alice.send_file(self.make(name, size, data), to="bob")
        self.sent[t.transfer_id] = t
        return {"id": t.transfer_id, "offered_at": t.offered_at}

    def offer_url(self, url: str) -> dict:
        t = self.alice.send_url(url, to="bob")
        self.sent[t.transfer_id] = t
        return {"id": t.transfer_id, "offered_at": t.offered_at}

    def status(self, tid: str) -> dict:
        t = self.sent[tid]
        return {"status": t.status, "reason": t.reason, "received": getattr(t, "received", 0)}

    def incoming(self, tid: str) -> dict:
        t = self.bob.sharing.transfers.get(tid)
        return {"status": t.status, "reason": t.reason, "received": t.received} if t else {}
