"""A scripted session for namespace tests and benchmarks: joins, then does what it is told.

usage: python netns_peer.py --url URL --user NAME --room ROOM --workdir DIR
           [--ice-policy all|relay] [--turn-url URL --turn-username U --turn-credential C]
           [--lane auto|direct|datachannel]

It joins (with the ICE servers given here, plus any the room server's welcome hands out),
receives files from anyone, then reads one JSON command per line on stdin and answers each
with one JSON line on stdout: ``{"event": "reply", "cmd": ..., "ok": true|false, ...}``.
Between replies it may print ``{"event": "state", ...}`` lines (link state changes).

Commands (each a JSON object with ``"cmd"``):

* ``wait_linked`` ``peer`` ``timeout``: until the link to ``peer`` is connected.
* ``wait_failed`` ``peer`` ``count`` ``timeout``: until ``count`` links to ``peer`` failed;
  the reply says whether any ever connected.
* ``send_file`` ``path`` ``to``: send and wait; replies with status and seconds on the wire.
* ``wait_file`` ``sender`` ``count`` ``timeout``: until ``count`` files from ``sender`` are done;
  replies with their names, sizes and SHA-256.
* ``say`` ``text`` ``to``, ``wait_message`` ``sender`` ``text`` ``timeout``: chat.
* ``wait_rtt`` ``peer`` ``count`` ``timeout``: until that many heartbeat RTT samples exist.
* ``stats``: ``session.stats()`` pairs, candidates and rtt summary, plus the welcome's ICE
  server URLs and usernames (never the credentials).
* ``quit``: leave and exit.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
import threading
import time
from pathlib import Path
from typing import Any

from ivisit_nb import Session
from ivisit_nb import events as ev

_print_lock = threading.Lock()


def emit(event: str, **fields: Any) -> None:
    """One JSON line on stdout."""
    with _print_lock:
        print(json.dumps({"event": event, **fields}, default=str), flush=True)


def sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            h.update(block)
    return h.hexdigest()


class Peer:
    """The session and what it has seen, for the command handlers."""

    def __init__(self, session: Session) -> None:
        self.s = session
        self.cond = threading.Condition()
        self.states: list[dict[str, Any]] = []
        self.files: list[dict[str, Any]] = []
        self.messages: list[dict[str, Any]] = []
        session.on(self._on_event)

    def _on_event(self, e: ev.Event) -> None:
        with self.cond:
            if isinstance(e, ev.PeerStateChanged):
                row = {"peer": e.user, "state": e.state, "reason": e.reason}
                self.states.append(row)
                emit("state", **row)
            elif isinstance(e, ev.TransferEnded) and e.transfer.direction == "in":
                t = e.transfer
                self.files.append({"sender": t.peer, "name": t.name, "status": e.status, "path": t.path, "lane": t.lane})
            elif isinstance(e, ev.MessageReceived):
                self.messages.append({"sender": e.sender, "text": e.text})
            self.cond.notify_all()

    def wait(self, predicate: Any, timeout: float) -> bool:
        """Wait until ``predicate()`` is true (re-checked on every event, and twice a second)."""
        deadline = time.monotonic() + timeout
        with self.cond:
            while not predicate():
                left = deadline - time.monotonic()
                if left <= 0:
                    return False
                self.cond.wait(min(left, 0.5))
            return True

    # -- commands: each returns the reply's fields --------------------------------------
    def wait_linked(self, peer: str, timeout: float = 120.0) -> dict[str, Any]:
        try:
            self.s.wait_for_peers([peer], timeout=timeout).wait()
        except TimeoutError as exc:
            return {"ok": False, "error": str(exc)}
        return {"ok": True}

    def wait_failed(self, peer: str, count: int = 1, timeout: float = 120.0) -> dict[str, Any]:
        def failed() -> list[dict[str, Any]]:
            return [r for r in self.states if r["peer"] == peer and r["state"] == "failed"]

        ok = self.wait(lambda: len(failed()) >= count, timeout)
        connected = any(r["peer"] == peer and r["state"] == "connected" for r in self.states)
        return {"ok": ok, "failures": len(failed()), "ever_connected": connected,
                "reasons": [r["reason"] for r in failed()]}

    def send_file(self, path: str, to: str) -> dict[str, Any]:
        t = self.s.send_file(path, to=to)
        status = t.wait()
        seconds = (t.finished_at - t.started_at) if t.finished_at and t.started_at else None
        return {"ok": status == "done", "status": status, "reason": t.reason, "lane": t.lane,
                "seconds": seconds, "bytes": Path(path).stat().st_size}

    def wait_file(self, sender: str, count: int = 1, timeout: float = 120.0) -> dict[str, Any]:
        def mine() -> list[dict[str, Any]]:
            return [f for f in self.files if f["sender"] == sender]

        ok = self.wait(lambda: len(mine()) >= count, timeout)
        files = [{**f, "size": Path(f["path"]).stat().st_size if f["path"] and f["status"] == "done" else None,
                  "sha256": sha256(Path(f["path"])) if f["path"] and f["status"] == "done" else None}
                 for f in mine()]
        return {"ok": ok and all(f["status"] == "done" for f in files), "files": files}

    def say(self, text: str, to: str | None = None) -> dict[str, Any]:
        reached = self.s.say(text, to=to).wait()
        return {"ok": bool(reached), "reached": reached}

    def wait_message(self, sender: str, text: str, timeout: float = 120.0) -> dict[str, Any]:
        ok = self.wait(lambda: any(m["sender"] == sender and m["text"] == text for m in self.messages), timeout)
        return {"ok": ok, "messages": self.messages[-10:]}

    def wait_rtt(self, peer: str, count: int = 3, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            rtt = self.s.stats()["rtt"]
            samples = rtt[rtt["peer"] == peer]["rtt"].tolist()
            if len(samples) >= count or time.monotonic() > deadline:
                return {"ok": len(samples) >= count, "samples": len(samples), "rtt": samples[-count:]}
            self.wait(lambda: False, 0.5)  # the heartbeat pings twice a second; poll at that pace

    def stats(self) -> dict[str, Any]:
        st = self.s.stats()
        rtt = st["rtt"]
        welcome_ice = [{"urls": s.get("urls"), "username": s.get("username")} for s in self.s.mesh.server_ice]
        return {
            "ok": True,
            "pairs": st["pairs"].to_dict("records"),
            "candidates": st["candidates"].to_dict("records"),
            "rtt_samples": len(rtt),
            "rtt_median": float(rtt["rtt"].median()) if len(rtt) else None,
            "welcome_ice_servers": welcome_ice,
        }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--url", required=True)
    ap.add_argument("--user", required=True)
    ap.add_argument("--room", required=True)
    ap.add_argument("--workdir", required=True)
    ap.add_argument("--ice-policy", choices=("all", "relay"), default="all")
    ap.add_argument("--turn-url", default=None)
    ap.add_argument("--turn-username", default=None)
    ap.add_argument("--turn-credential", default=None)
    ap.add_argument("--lane", choices=("auto", "direct", "datachannel"), default="auto", help="how files travel")
    args = ap.parse_args(argv)

    ice = []
    if args.turn_url:
        ice.append({"urls": args.turn_url, "username": args.turn_username, "credential": args.turn_credential})
    work = Path(args.workdir)
    session = Session.join(
        args.url, args.user, args.room, config_dir=work / "config", inbox=work / "inbox",
        ice_servers=ice, ice_policy=args.ice_policy, lane=args.lane,
    )
    peer = Peer(session)
    session.receiving = True
    session.settings.defaults.files = "accept"
    emit("joined", user=args.user, members=session.members)
    handlers = {
        "wait_linked": peer.wait_linked, "wait_failed": peer.wait_failed, "send_file": peer.send_file,
        "wait_file": peer.wait_file, "say": peer.say, "wait_message": peer.wait_message,
        "wait_rtt": peer.wait_rtt, "stats": peer.stats,
    }
    try:
        for line in sys.stdin:
            if not line.strip():
                continue
            command = json.loads(line)
            name = command.pop("cmd", None)
            if name == "quit":
                break
            handler = handlers.get(name)
            if handler is None:
                emit("reply", cmd=name, ok=False, error=f"unknown command {name!r}; known: {', '.join(handlers)}, quit")
                continue
            try:
                result = handler(**command)
            except Exception as exc:  # report it to the driver rather than die silently
                result = {"ok": False, "error": f"{type(exc).__name__}: {exc}"}
            emit("reply", cmd=name, **result)
    finally:
        session.leave()
    emit("left")
    return 0


if __name__ == "__main__":
    sys.exit(main())
