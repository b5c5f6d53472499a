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


@register("server", "run a room server (signalling only)", _configure_server)
def _run_server(args: argparse.Namespace) -> int:
    from .room.server import serve

    # Presence lines are written from a thread: a parent that reads only our first
    # line must never be able to stall the server by leaving the pipe full.
    out = Output(args.json, background=True)

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
                on_listening=listening, on_event=presence,
            )
        )
    except OSError as exc:
        out.error(
            f"cannot listen on {args.host}:{args.port}: {exc.strerror or exc}; "
            "pick another --port (0 picks a free one) or stop whatever uses it",
            code="listen-failed",
        )
        return 1
    except KeyboardInterrupt:
        pass
    finally:
        out.close()
    return 0
