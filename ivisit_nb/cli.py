"""The ``ivisit-nb`` command line (also ``python -m ivisit_nb``).

Subcommands live in the :data:`COMMANDS` registry; add one with
:func:`register`. Every subcommand accepts ``--json`` (before or after the
subcommand name): one JSON object per line on stdout instead of plain text.
Use :class:`Output` to print in whichever form was asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import queue
import signal
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable, Coroutine, Sequence

log = logging.getLogger("ivisit_nb.cli")


@dataclass(frozen=True)
class Command:
    """One subcommand: ``configure(parser)`` adds its arguments, ``run(args)`` returns the exit code."""

    name: str
    help: str
    configure: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], int]


COMMANDS: dict[str, Command] = {}


def register(
    name: str, help: str, configure: Callable[[argparse.ArgumentParser], None]
) -> Callable[[Callable[[argparse.Namespace], int]], Callable[[argparse.Namespace], int]]:
    """Decorator adding ``run(args) -> exit code`` to :data:`COMMANDS` as subcommand ``name``."""

    def decorate(run: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
        COMMANDS[name] = Command(name, help, configure, run)
        return run

    return decorate


class Output:
    """Prints events as plain text lines or, with ``--json``, as JSON lines. Always flushed.

    With ``background=True`` lines are written by a daemon thread, so a caller on an
    event loop never blocks when whoever reads our stdout stops reading (a full pipe);
    if more than ``max_pending`` lines pile up, further lines are dropped.
    Call :meth:`close` to write out what is pending.
    """

    def __init__(self, json_lines: bool, stream: Any = None, *, background: bool = False, max_pending: int = 10000) -> None:
        self.json = json_lines
        self.stream = stream if stream is not None else sys.stdout
        self.dropped = 0
        self._queue: queue.Queue[str | None] | None = None
        self._thread: threading.Thread | None = None
        if background:
            self._queue = queue.Queue(max_pending)
            self._thread = threading.Thread(target=self._drain, name="ivisit-nb-output", daemon=True)
            self._thread.start()

    def event(self, event: dict[str, Any], text: str) -> None:
        """Print ``event`` (a dict with an ``"event"`` key) or its ``text`` form."""
        line = json.dumps(event, ensure_ascii=False) if self.json else text
        if self._queue is None:
            self._write(line)
            return
        try:
            self._queue.put_nowait(line)
        except queue.Full:
            self.dropped += 1
            if self.dropped == 1:
                log.warning("stdout is not being read; dropping output lines")

    def _write(self, line: str) -> None:
        try:
            self.stream.write(line + "\n")
            self.stream.flush()
        except (BrokenPipeError, ValueError):
            pass  # nobody is reading any more; keep running

    def _drain(self) -> None:
        assert self._queue is not None
        while (line := self._queue.get()) is not None:
            self._write(line)

    def close(self, timeout: float = 2.0) -> None:
        """Write out pending lines (waiting at most ``timeout`` seconds) and stop the thread."""
        if self._queue is None or self._thread is None:
            return
        try:
            self._queue.put(None, timeout=timeout)
        except queue.Full:
            return
        self._thread.join(timeout)

    def error(self, message: str, **fields: Any) -> None:
        """Report a failure: a JSON ``error`` event on stdout, or plain text on stderr."""
        if self.json:
            self.event({"event": "error", "message": message, **fields}, message)
        else:
            print(f"ivisit-nb: error: {message}", file=sys.stderr, flush=True)


def _port(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a port number: {text!r}") from None
    if not 0 <= value <= 65535:
        raise argparse.ArgumentTypeError(f"port must be 0-65535 (0 picks a free port), not {value}")
    return value


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, not {value}")
    return value


def _common_options(suppress: bool) -> argparse.ArgumentParser:
    # The same options on the main parser and on every subcommand; on subcommands
    # their defaults are suppressed so they do not override the main parser's.
    parent = argparse.ArgumentParser(add_help=False)
    default: Any = argparse.SUPPRESS
    parent.add_argument(
        "--json", action="store_true", default=default if suppress else False,
        help="print one JSON object per line instead of text",
    )
    parent.add_argument(
        "-v", "--verbose", action="count", default=default if suppress else 0,
        help="log more to stderr (-v info, -vv debug)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    """The argument parser with every registered subcommand."""
    parser = argparse.ArgumentParser(
        prog="ivisit-nb",
        description="iVisit-style person-to-person sharing of files and URLs in Jupyter.",
        parents=[_common_options(suppress=False)],
    )
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    sub_parent = _common_options(suppress=True)
    for command in COMMANDS.values():
        sub = subparsers.add_parser(
            command.name, help=command.help, description=command.help, parents=[sub_parent]
        )
        command.configure(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Parse ``argv`` (default ``sys.argv[1:]``), run the subcommand, return its exit code."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return 2
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    logging.basicConfig(level=level, stream=sys.stderr, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    return COMMANDS[args.command].run(args)


def run_until_signal(coro: Coroutine[Any, Any, None]) -> None:
    """Run ``coro`` on a fresh event loop (uvloop if installed) until it ends or SIGINT/SIGTERM cancels it."""
    try:
        import uvloop  # type: ignore[import-not-found]

        loop: asyncio.AbstractEventLoop = uvloop.new_event_loop()
    except ImportError:
        loop = asyncio.new_event_loop()
    asyncio.set_event_loop(loop)
    task = loop.create_task(coro)
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, task.cancel)
        except (NotImplementedError, RuntimeError):  # not on Windows / not the main thread
            pass
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        pass
    finally:
        try:
            loop.run_until_complete(loop.shutdown_asyncgens())
        finally:
            asyncio.set_event_loop(None)
            loop.close()


# -- server ---------------------------------------------------------------------


def _configure_server(p: argparse.ArgumentParser) -> None:
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8765, help="port (default 8765; 0 picks a free one)")
    p.add_argument(
        "--token", default=os.environ.get("IVISIT_NB_TOKEN") or None,
        help="shared secret clients must send (default: $IVISIT_NB_TOKEN, else none)",
    )
    p.add_argument("--max-members", type=_positive, default=50, help="members per room (default 50)")
    p.add_argument(
        "--redis", default=None, metavar="URL",
        help="run as one instance of a cluster that shares rooms through Redis, e.g. "
        "redis://127.0.0.1:6379/0 (needs pip install 'ivisit-nb[cluster]'; see docs/room.md)",
    )
    p.add_argument(
        "--turn-secret", default=os.environ.get("IVISIT_NB_TURN_SECRET") or None,
        help="coturn's --static-auth-secret: hand each joining user short-lived TURN credentials "
        "(default: $IVISIT_NB_TURN_SECRET, else none); needs --turn-url",
    )
    p.add_argument(
        "--turn-url", default=None, metavar="URL",
        help="the TURN server for those credentials, e.g. turn:HOST:3478",
    )
    p.add_argument(
        "--turn-ttl", type=_positive, default=3600,
        help="seconds each TURN credential stays valid (default 3600); see docs/turn.md",
    )


def _turn_extras(args: argparse.Namespace) -> Callable[[str], dict[str, Any]] | None:
    """The ``welcome_extras`` callable for ``--turn-secret``/``--turn-url``, or None if neither
    was given. Raises ``ValueError`` with what to fix if only one was, or a URL is malformed."""
    if not args.turn_secret and not args.turn_url:
        return None
    if not args.turn_secret:
        raise ValueError("--turn-url needs --turn-secret (the TURN server's --static-auth-secret)")
    if not args.turn_url:
        raise ValueError("--turn-secret needs --turn-url, e.g. --turn-url turn:HOST:3478")
    from .room.turn import TurnCredentials

    return TurnCredentials(args.turn_secret, args.turn_url, args.turn_ttl)  # refreshed every ttl/2


@register("server", "run a room server (signalling only)", _configure_server)
def _run_server(args: argparse.Namespace) -> int:
    from .room.redis_directory import ClusterError
    from .room.server import serve

    # Presence lines are written from a thread: a parent that reads only our first
    # line must never be able to stall the server by leaving the pipe full.
    out = Output(args.json, background=True)
    try:
        welcome_extras = _turn_extras(args)
    except ValueError as exc:
        out.error(str(exc), code="bad-turn-options")
        out.close()
        return 2
    if welcome_extras is not None and args.token is None:
        log.warning("--turn-secret without --token: anyone who reaches this server gets TURN credentials")
    cluster: dict[str, Any] = {}
    if args.redis:
        try:
            from .room.redis_directory import RedisDirectory

            cluster["directory"] = RedisDirectory(args.redis)
        except ImportError as exc:
            out.error(str(exc), code="no-redis-client")
            out.close()
            return 2

    def listening(url: str) -> None:
        out.event({"event": "listening", "url": url}, f"listening on {url}")

    def presence(event: dict[str, Any]) -> None:
        room = event.get("room")
        where = room if room is not None else "(no room)"
        out.event(event, f"{event['user']} {event['event']} {where}")

    try:
        run_until_signal(
            serve(
                args.host, args.port, token=args.token, max_members=args.max_members,
                on_listening=listening, on_event=presence, welcome_extras=welcome_extras, **cluster,
            )
        )
    except OSError as exc:
        out.error(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
            "pick another --port (0 picks a free one) or stop whatever uses it",
            code="listen-failed",
        )
        return 1
    except ClusterError as exc:  # e.g. its --token differs from the cluster's
        out.error(str(exc), code="cluster-refused")
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        out.close()
    return 0


# -- shared by demo, send and receive -------------------------------------------------


def _configure_client(p: argparse.ArgumentParser, *, inbox: bool) -> None:
    p.add_argument("--server", required=True, help="room server URL, e.g. ws://127.0.0.1:8765/")
    p.add_argument("--room", default=None, help="room to join (default: none, 1:1 only)")
    p.add_argument("--user", required=True, help="your user name")
    p.add_argument("--token", default=os.environ.get("IVISIT_NB_TOKEN") or None, help="the server's token, if any")
    p.add_argument("--config-dir", default=None, help="where per-user settings live (default ~/.config/ivisit_nb)")
    p.add_argument("--timeout", type=float, default=60.0, help="seconds to wait for peers to connect (default 60)")
    if inbox:
        p.add_argument("--inbox", default=None, help="folder for received files (default ./inbox/USER)")


def _join(args: argparse.Namespace, out: Output, **kw: Any) -> Any:
    from .room.client import JoinRefused
    from .session import Session

    try:
        session = Session.join(
            args.server, args.user, args.room, token=args.token, config_dir=args.config_dir,
            inbox=getattr(args, "inbox", None), **kw,
        )
    except (JoinRefused, ConnectionError) as exc:
        out.error(str(exc), code=getattr(exc, "code", "connect-failed"))
        return None
    out.event({"event": "joined", "user": args.user, "room": args.room, "members": session.members},
              f"joined {args.room or '(no room)'} as {args.user}; members: {', '.join(session.members) or 'none'}")
    return session


def _print_events(session: Any, out: Output) -> None:
    """Subscribe ``out`` to the session's events, as text or JSON lines."""
    from . import events as ev

    last: dict[str, int] = {}

    def show(e: ev.Event) -> None:
        if isinstance(e, ev.PeerStateChanged):
            sas = session.peers[e.user].sas if e.user in session.peers else None
            out.event({**e.as_dict(), "sas": sas}, f"{e.user}: {e.state}" + (f" (sas {sas})" if sas and e.state == "connected" else "") + (f" - {e.reason}" if e.reason else ""))
        elif isinstance(e, ev.TransferProgress):
            pct = int(100 * e.bytes / e.total) if e.total else 100
            t = e.transfer
            if out.json or pct // 10 != last.get(t.transfer_id, -1):
                last[t.transfer_id] = pct // 10
                out.event({"event": "progress", "transfer_id": t.transfer_id, "bytes": e.bytes, "total": e.total,
                           "rate": e.rate, "text": e.text}, e.text)
        elif isinstance(e, ev.TransferEnded):
            t = e.transfer
            arrow = "to" if t.direction == "out" else "from"
            out.event({"event": "transfer", "transfer_id": t.transfer_id, "direction": t.direction, "peer": t.peer,
                       "name": t.name, "status": e.status, "reason": e.reason, "lane": t.lane,
                       "bytes_transferred": t.bytes_transferred, "path": t.path},
                      f"{t.name} {arrow} {t.peer}: {e.status}" + (f" ({e.reason})" if e.reason else "") + (f" via {t.lane}" if e.status == "done" else ""))
        elif isinstance(e, ev.MessageReceived):
            out.event(e.as_dict(), f"<{e.sender}> {e.text}" if e.text is not None else f"(message from {e.sender} refused)")

    session.on(show)


# -- send --------------------------------------------------------------------------------


def _configure_send(p: argparse.ArgumentParser) -> None:
    _configure_client(p, inbox=False)
    p.add_argument("--to", default=None, help="recipient (default: every member of the room)")
    p.add_argument("items", nargs="+", metavar="PATH_OR_URL", help="files and http(s) URLs to send")


def _is_url(text: str) -> bool:
    return "://" in text or text.split(":", 1)[0].lower() in ("javascript", "data", "file", "mailto")


@register("send", "send files and URLs; exit 0 only if every recipient has them", _configure_send)
def _run_send(args: argparse.Namespace) -> int:
    from pathlib import Path

    from .protocol.urls import BadURL, check_url

    out = Output(args.json)
    for item in args.items:  # check everything before connecting
        try:
            check_url(item) if _is_url(item) else None
        except BadURL as exc:
            out.error(f"{item}: {exc}", code="bad-url")
            return 2
        if not _is_url(item) and not Path(item).is_file():
            out.error(f"{item} is not a file", code="no-such-file")
            return 2
    session = _join(args, out)
    if session is None:
        return 1
    try:
        _print_events(session, out)
        if args.to is None and not session.members:
            out.error(f"nobody else is in room {args.room}; use --to USER or wait for members", code="nobody")
            return 1
        try:
            session.wait_for_peers([args.to] if args.to else None, timeout=args.timeout).wait()
        except TimeoutError as exc:
            out.error(str(exc), code="not-connected")
            return 1
        handles = [session.send_url(i, to=args.to) if _is_url(i) else session.send_file(i, to=args.to) for i in args.items]
        failed = 0
        for item, h in zip(args.items, handles):
            h.wait()
            for peer, status in h.results.items():
                ok = status == "done"
                failed += not ok
                part = h.parts[peer] if hasattr(h, "parts") else h
                out.event({"event": "result", "item": item, "to": peer, "status": status, "reason": part.reason,
                           "lane": part.lane}, f"{'ok' if ok else 'FAILED'}: {item} -> {peer}: {status}" + (f" ({part.reason})" if part.reason else ""))
        return 0 if failed == 0 else 1
    finally:
        session.leave()


# -- receive ----------------------------------------------------------------------------


def _configure_receive(p: argparse.ArgumentParser) -> None:
    _configure_client(p, inbox=True)
    p.add_argument("--accept", choices=["ask", "always", "never"], default="ask",
                   help="ask on the terminal for each offer (default), accept all, or refuse all")
    p.add_argument("--count", type=_positive, default=None, help="exit after N items have arrived")


_CHOICES = {"a": ("accept", True), "t": ("accept", False), "r": ("refuse", True), "f": ("refuse", False)}


@register("receive", "receive files and URLs into a folder per sender", _configure_receive)
def _run_receive(args: argparse.Namespace) -> int:
    from . import events as ev

    out = Output(args.json)
    session = _join(args, out)
    if session is None:
        return 1
    arrived = threading.Semaphore(0)
    asks: queue.Queue[Any] = queue.Queue()
    try:
        _print_events(session, out)
        if args.accept == "always":
            session.policy.rule = lambda offer: "accept"
        elif args.accept == "never":
            session.policy.rule = lambda offer: "refuse"

        def on_event(e: ev.Event) -> None:
            if isinstance(e, ev.ItemReceived):
                item = e.item
                out.event({"event": "received", "sender": item.sender, "kind": item.kind, "name": item.name,
                           "path": item.path, "url": item.url, "lane": item.lane},
                          f"received {item.kind} {item.url or item.path} from {item.sender}")
                arrived.release()
            elif isinstance(e, ev.RequestPending) and e.request.kind in ("file", "url"):
                asks.put(e.request)

        session.on(on_event)
        session.receiving = True
        out.event({"event": "receiving", "inbox": str(session.inbox_dir)}, f"receiving into {session.inbox_dir}")
        got = 0
        while args.count is None or got < args.count:
            if arrived.acquire(timeout=0.2):
                got += 1
                continue
            try:
                req = asks.get_nowait()
            except queue.Empty:
                continue
            if not req.pending:
                continue
            what = "file" if req.kind == "file" else "URL"
            print(f"{req.sender} offers {req.name} ({req.size} bytes). [a] Accept always from {req.sender}, "
                  f"[t] Accept this {what}, [r] Refuse always from {req.sender}, [f] Refuse this {what}? ",
                  end="", file=sys.stderr, flush=True)
            answer = sys.stdin.readline().strip().lower()[:1]
            decision, always = _CHOICES.get(answer, ("refuse", False))
            if req.pending:
                getattr(req, decision)(always=always)
        return 0
    except KeyboardInterrupt:
        return 0
    finally:
        session.leave()


# -- demo ---------------------------------------------------------------------------------


@register("demo", "two users in one process: connect, chat, share a file and a URL", lambda p: None)
def _run_demo(args: argparse.Namespace) -> int:
    import tempfile
    import time
    from pathlib import Path

    from .room.server import RoomServer
    from .session import Session

    out = Output(args.json)
    with tempfile.TemporaryDirectory(prefix="ivisit-demo-") as tmp, RoomServer() as server:
        out.event({"event": "server", "url": server.url}, f"room server at {server.url}")
        kw = {"config_dir": Path(tmp) / "config"}
        with Session.join(server.url, "alice", "demo", inbox=Path(tmp) / "alice", **kw) as alice, \
             Session.join(server.url, "bob", "demo", inbox=Path(tmp) / "bob", **kw) as bob:
            _print_events(bob, out)
            t0 = time.monotonic()
            bob.wait_for_peers(timeout=30).wait()
            alice.wait_for_peers(timeout=30).wait()
            link = bob.peers["alice"]
            deadline = time.monotonic() + 3
            while link.rtt is None and time.monotonic() < deadline:  # first heartbeat round trip
                time.sleep(0.05)
            out.event({"event": "connected", "seconds": round(time.monotonic() - t0, 3), "sas": link.sas},
                      f"alice and bob connected in {time.monotonic() - t0:.2f} s; "
                      f"short authentication string {link.sas} on both sides: {alice.peers['bob'].sas == link.sas}")
            alice.say("hello bob, sending you the notes").wait(5)
            bob.receiving = True
            bob.settings["alice"].files = "accept"
            bob.settings["alice"].urls = "accept"
            notes = Path(tmp) / "notes.txt"
            notes.write_text("iVisit-style sharing, in a notebook.\n" * 1000)
            statuses = [alice.send_file(notes, to="bob").wait(30), alice.send_url("https://jupyter.org/", to="bob").wait(30)]
            again = alice.send_file(notes, to="bob")
            statuses.append(again.wait(30))
            out.event({"event": "dedup", "lane": again.lane, "bytes_transferred": again.bytes_transferred},
                      f"sent notes.txt again: {again.status} via {again.lane}, {again.bytes_transferred} payload bytes")
            time.sleep(0.2)
            ok = statuses == ["done"] * 3 and len(bob.messages) == 1
            summary = {"event": "summary", "ok": ok, "messages": len(bob.messages), "items": len(bob.inbox.items),
                       "rtt_ms": round((link.rtt or 0) * 1000, 2)}
            out.event(summary, f"summary: {'OK' if ok else 'FAILED'} - {len(bob.messages)} message, "
                               f"{len(bob.inbox.items)} items in bob's inbox, rtt {summary['rtt_ms']} ms")
    return 0 if ok else 1


# -- logs ---------------------------------------------------------------------------------


def _configure_logs(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config-dir", default=None,
                   help="the config dir the sessions used (default $IVISIT_NB_CONFIG, else ~/.config/ivisit_nb)")
    p.add_argument("--user", required=True, help="whose logs to export")
    where = p.add_mutually_exclusive_group(required=True)
    where.add_argument("--csv", metavar="OUT_DIR", help="write one CSV file per log into OUT_DIR")
    where.add_argument("--parquet", metavar="OUT_DIR", help="write one Parquet file per log into OUT_DIR")


@register("logs", "export a user's persisted logs (transfers, progress, policy, messages, items) as CSV or Parquet",
          _configure_logs)
def _run_logs(args: argparse.Namespace) -> int:
    from .logbook import export, load
    from .settings import default_config_dir

    out = Output(args.json)
    config_dir = args.config_dir or default_config_dir()
    try:
        frames = load(config_dir, args.user)
    except FileNotFoundError as exc:
        out.error(str(exc), code="no-logbook")
        return 1
    fmt, target = ("csv", args.csv) if args.csv else ("parquet", args.parquet)
    try:
        written = export(frames, target, fmt)
    except (OSError, ImportError) as exc:
        out.error(f"cannot write {fmt} files into {target}: {exc}", code="export-failed")
        return 1
    for (name, df), path in zip(frames.items(), written):
        out.event({"event": "exported", "log": name, "rows": len(df), "path": str(path)}, f"{name}: {len(df)} rows -> {path}")
    return 0
