"""Session: one user on a room server, linked to the others over WebRTC.

The public facade. The work is done by one module per concept, all on the session's
own engine thread (:mod:`ivisit_nb.engine.loop`):

- :mod:`ivisit_nb.mesh`: room presence and one :class:`~ivisit_nb.engine.peerlink.PeerLink` per peer;
- :mod:`ivisit_nb.calls`: 1:1 calls; :mod:`ivisit_nb.chat`: chat; :mod:`ivisit_nb.video`: video;
- :mod:`ivisit_nb.sharing.service`: files and URLs;
- per link, :mod:`ivisit_nb.engine.heartbeat` and :mod:`ivisit_nb.engine.sas`.

Public methods are safe to call from any thread and return plain values or
:class:`~ivisit_nb.engine.loop.Handle` objects that can be ``.wait()``-ed or awaited.
"""

from __future__ import annotations

import asyncio
import logging
import unicodedata
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable

from . import events as ev
from .calls import SIGNAL_KINDS as CALL_SIGNALS
from .calls import Call, Calls
from .chat import Chat
from .consent import Request
from .engine.heartbeat import Heartbeat
from .engine.linkproto import LinkProtocol
from .engine import stats as link_stats
from .engine.loop import EngineLoop, Handle
from .engine.sas import SasProtocol
from .frames import SCHEMAS, frame
from .listeners import Listeners
from .logbook import Logbook, logbook_path
from .media.feed import VideoFeed
from .media.sources import VideoSource
from .mesh import Mesh, Peer
from .protocol.urls import check_url
from .room.client import RoomClient
from .settings import LANES, Settings, default_config_dir
from .sharing.inbox import Inbox
from .sharing.names import safe_user_dir
from .sharing.policy import Policy
from .sharing.service import Sharing, SharingHost
from .sharing.transfers import RoomTransfer, Transfer
from .video import Video

log = logging.getLogger("ivisit_nb.session")

STATS_COLUMNS = {kind: SCHEMAS[kind] for kind in ("links", "candidates", "pairs", "rtt", "lanes")}


def link_facts(link: Any) -> dict[str, Any]:
    """One row of ``Session.stats()["links"]``."""
    sas = link.find(SasProtocol)
    exchange = sas.exchange if sas is not None else None
    lanes = link.lanes.values()
    return {
        "peer": link.remote, "state": link.state, "kind": link.kind,
        "role": "offerer" if link.initiator else "answerer",
        "local_fingerprint": exchange.local_fingerprint if exchange else None,
        "remote_fingerprint": exchange.remote_fingerprint if exchange else None,
        "sas": link.sas, "rtt": link.rtt,
        "bytes_sent": sum(getattr(l, "bytes_sent", 0) for l in lanes),
        "bytes_received": sum(getattr(l, "bytes_received", 0) for l in lanes),
        "lanes": ",".join(link.lanes), "dropped": link.dropped,
        **{k: v for k, v in link_stats.sctp_counters(link).items() if k in ("cwnd", "flight_size", "rto")},
    }

__all__ = ["Session", "Peer", "Call"]


class Session:
    """One user in a room (or in no room, for 1:1 calls). Use :meth:`join`.

    Options: ``inbox`` (received files, a folder per sender), ``config_dir`` (settings),
    ``token`` (the room server's secret), ``ice_servers`` (STUN/TURN; none by default) and
    ``ice_policy`` (``"relay"``: TURN only), ``lane`` (how files travel when a user has no
    setting of their own: ``"auto"``, the direct TLS lane for large files with the data
    channel as fallback; ``"direct"`` or ``"datachannel"`` to force one), the timeouts
    ``call_timeout``, ``offer_timeout`` and ``stall_timeout`` (seconds),
    ``max_pending_offers`` per peer, ``max_size`` of a received file, and ``use_uvloop``.
    """

    def __init__(
        self,
        url: str | list[str],
        user: str,
        room: str | None = None,
        *,
        inbox: str | Path | None = None,
        config_dir: str | Path | None = None,
        token: str | None = None,
        ice_servers: list[Any] | None = None,
        ice_policy: str = "all",
        lane: str = "auto",
        call_timeout: float = 30.0,
        offer_timeout: float = 120.0,
        max_pending_offers: int = 20,
        max_size: int | None = None,
        stall_timeout: float = 30.0,
        use_uvloop: bool | None = None,
    ) -> None:
        if not isinstance(user, str) or not user.strip():
            raise ValueError("user must be a non-empty name")
        if lane not in LANES:
            raise ValueError(f"lane must be one of {', '.join(LANES)}, not {lane!r}")
        if ice_policy not in ("all", "relay"):
            raise ValueError(f"ice_policy must be 'all' or 'relay' (TURN only), not {ice_policy!r}")
        user = unicodedata.normalize("NFC", user)  # the form the room server uses
        self.url, self.user, self.room = url, user, room
        self.config_dir = Path(config_dir) if config_dir is not None else default_config_dir()
        self.inbox_dir = Path(inbox) if inbox is not None else Path("inbox") / safe_user_dir(user)
        self.settings = Settings(self.config_dir / safe_user_dir(user) / "settings.json")
        self.connected = False
        self.refused: str | None = None  # why the room server refused us for good, if it did
        self._closed = False
        self._events: Listeners[Callable[[ev.Event], None]] = Listeners("session event")
        self._engine = EngineLoop(name=f"ivisit-engine-{user}", use_uvloop=use_uvloop)
        self._client = RoomClient(url, user, room, self._on_server, token=token)
        self.chat = Chat(user, self.settings, self._emit)
        self.video = Video(user, self.settings, emit=self._emit, call_soon=self._call_soon, links=self._links)
        self.sharing = Sharing(
            SharingHost(user, self.settings, self._emit, self._link_to, self._member_names, self._call_soon),
            self.inbox_dir,
            max_size=max_size,
            offer_timeout=offer_timeout,
            max_pending_offers=max_pending_offers,
            stall_timeout=stall_timeout,
            # relay-only means every byte goes through TURN: no direct lane unless a user's setting asks
            lane="datachannel" if ice_policy == "relay" and lane == "auto" else lane,
        )
        self.mesh = Mesh(
            user,
            self._client,
            ice_servers=ice_servers,
            relay_only=ice_policy == "relay",
            emit=self._emit,
            link_protocols=self._link_protocols,
            may_link=lambda sender, offer: self.calls.may_link(sender, offer),
        )
        self.calls = Calls(
            user, self._client, self.settings, self.mesh,
            emit=self._emit, call_soon=self._call_soon, call_timeout=call_timeout,
        )

    def _link_protocols(self, name: str) -> list[LinkProtocol]:
        return [
            Heartbeat(), SasProtocol(on_ready=self._on_sas, on_failure=self._on_sas_failure), self.chat, self.sharing,
            self.video.link_protocol(name), self.video,
        ]

    def _links(self) -> list[Any]:
        return [p.link for p in self.mesh.peers.values() if p.link is not None]

    def _on_sas(self, link: Any) -> None:
        self._emit(ev.PeerStateChanged(user=link.remote, state=link.state, reason=link.reason))

    def _on_sas_failure(self, link: Any, reason: str) -> None:
        link.fail(reason)

    def _call_soon(self, fn: Callable[..., Any], *args: Any) -> None:
        try:
            self._engine.call_soon(fn, *args)
        except RuntimeError:  # the session has left and its loop is closed
            log.debug("dropped %s: the session has left", getattr(fn, "__name__", fn))

    def _link_to(self, name: str) -> Any:
        return self.mesh.link_to(name)

    def _member_names(self) -> list[str]:
        with self.mesh.lock:
            return sorted(name for name, p in self.mesh.peers.items() if p.member)

    # -- joining and leaving ----------------------------------------------------
    @classmethod
    def join(cls, url: str | list[str], user: str, room: str | None = None, timeout: float = 20.0, **kwargs: Any) -> "Session":
        """Connect to the room server and return once the room roster is known.

        ``url`` is one room-server URL, or the URLs of a cluster's instances: tried in order,
        and on a reconnect the one that worked last goes first (docs/room.md).

        Raises :class:`~ivisit_nb.room.client.JoinRefused` if the server says no
        (name taken, wrong token, room full) and ``ConnectionError`` if it cannot
        be reached.
        """
        session = cls(url, user, room, **kwargs)
        session._attach_logbook()
        try:
            session._engine.run(session._start(), timeout)
        except BaseException:
            session.sharing.close()
            session._engine.stop()
            session._close_logbook()
            raise
        return session

    @classmethod
    async def join_async(cls, url: str | list[str], user: str, room: str | None = None, **kwargs: Any) -> "Session":
        """:meth:`join` for async code: joins without blocking the caller's loop."""
        return await asyncio.get_running_loop().run_in_executor(None, lambda: cls.join(url, user, room, **kwargs))

    async def _start(self) -> None:
        self.mesh.start()
        try:
            welcome = await self._client.connect()
        except (OSError, asyncio.TimeoutError) as exc:
            where = ", ".join(self._client.urls)
            raise ConnectionError(f"cannot reach the room server at {where}: {exc}") from None
        await self._on_server(welcome)

    def leave(self) -> None:
        """Close every link, leave the server and stop the engine thread. Idempotent."""
        if self._closed:
            return
        self._closed = True
        if self._engine.alive:
            try:
                self._engine.run(self._shutdown(), 15.0)
            except Exception:
                log.debug("shutdown", exc_info=True)
            self._engine.stop()
        self.sharing.close()
        self._close_logbook()

    async def _shutdown(self) -> None:
        self.calls.end_all("the session left")
        self.video.close()
        for name in list(self.mesh.peers):
            self.sharing.cancel_with(name, f"{self.user} left")  # peers learn why, not just "link lost"
        links = [p.link for p in self.mesh.peers.values() if p.link and p.link.state == "connected"]
        await asyncio.gather(*(link.flush() for link in links))
        await self._client.close()
        await self.mesh.close()

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.leave()

    def __repr__(self) -> str:
        return f"<Session {self.user} in {self.room or 'no room'}: {len(self.mesh.peers)} peers>"

    @property
    def closed(self) -> bool:
        """True once :meth:`leave` was called."""
        return self._closed

    def ui(self) -> Any:
        """The notebook panel for this session: roster, offers, progress and the Sharing viewer.

        See :mod:`ivisit_nb.widgets`; needs ipywidgets (and the ivisit-nb JupyterLab
        extension for drag and drop and notifications).
        """
        from .widgets import Panel  # ipywidgets only when a panel is asked for

        return Panel(self)

    # -- events ------------------------------------------------------------------
    def on(self, callback: Callable[[ev.Event], None]) -> Callable[[], None]:
        """Call ``callback(event)`` for every event (on the engine thread). Returns an unsubscribe function."""
        return self._events.add(callback)

    def _emit(self, event: ev.Event) -> None:
        self._events(event)
        self.mesh.changed()

    # -- room server messages ---------------------------------------------------------
    async def _on_server(self, msg: dict[str, Any]) -> None:
        t = msg.get("type")
        if t == "welcome":
            self.connected = True
            members = [m for m in msg.get("members", []) if isinstance(m, str)]
            await self.mesh.on_welcome(members, msg.get("ice_servers"))
            self._emit(ev.Connected(room=self.room, members=tuple(sorted(members))))
        elif t == "joined":
            user = msg.get("user")
            if isinstance(user, str) and user != self.user:
                await self.mesh.on_joined(user)
                self._emit(ev.MemberJoined(user=user, room=msg.get("room")))
        elif t == "left":
            user = msg.get("user")
            if isinstance(user, str):
                await self.mesh.drop_member(user)
                self._emit(ev.MemberLeft(user=user, room=msg.get("room")))
        elif t == "pong":
            self.mesh.on_pong()
        elif t == "refresh":  # fresh TURN credentials, before the welcome's expire
            self.mesh.use_server_ice(msg.get("ice_servers"))
        elif t == "signal":
            sender, data = msg.get("from"), msg.get("data")
            if isinstance(sender, str) and isinstance(data, dict):
                if data.get("kind") in CALL_SIGNALS:
                    await self.calls.on_signal(sender, data)
                else:
                    await self.mesh.on_signal(sender, data)
        elif t == "error":
            code, text = str(msg.get("code")), str(msg.get("message"))
            log.warning("room server: %s [%s]", text, code)
            if code == "no-such-user":
                target = msg.get("to") or msg.get("user")
                if isinstance(target, str) and self.calls.ringing(target):
                    self.calls.end(target, "failed", f"{target} is not connected to this server")
            self._emit(ev.ServerError(code=code, message=text))
        elif t == "refused":  # a fatal refusal on reconnect: the client stopped trying
            code, text = str(msg.get("code")), str(msg.get("message"))
            self.connected = False
            self.refused = f"{text} [{code}]"
            log.error("the room server refused %s for good: %s", self.user, self.refused)
            self._emit(ev.ServerError(code=code, message=text, fatal=True))
        elif t == "disconnected":
            self.connected = False
            self._emit(ev.Disconnected(reason=str(msg.get("reason"))))

    # -- who is there -----------------------------------------------------------------
    @property
    def peers(self) -> dict[str, Peer]:
        """Other users we are (or try to be) linked with, by name."""
        with self.mesh.lock:
            return dict(self.mesh.peers)

    @property
    def members(self) -> list[str]:
        """The other members of our room, as the room server reports them."""
        with self.mesh.lock:
            return sorted(self.mesh.members)

    def wait_for_peers(self, users: list[str] | None = None, timeout: float = 30.0) -> Handle[dict[str, Peer]]:
        """A handle that completes when ``users`` are connected (and, given a few seconds, their SAS is known here).

        With ``users=None`` it waits for every room member: everyone the room server had
        let in when this was called (one round trip makes sure we heard of them), and
        anyone who joins while it waits.
        """
        return self._engine.submit(self.mesh.wait_for(users, timeout))

    def peers_frame(self) -> Any:
        """One row per peer (pandas DataFrame): name, member, state, reason, rtt, sas, lanes (docs/logs.md)."""
        rows = [
            {"name": name, "member": p.member, "state": p.state, "reason": p.reason, "rtt": p.rtt, "sas": p.sas,
             "lanes": ",".join(list(p.link.lanes)) if p.link else None}
            for name, p in sorted(self.peers.items())
        ]
        return frame(rows, "peers")

    def stats(self) -> dict[str, Any]:
        """Per-link networking facts as typed DataFrames (docs/logs.md): ``links``, ``candidates``,
        ``pairs`` (the selected ICE pair), ``rtt`` (heartbeat round trips over time) and ``lanes``
        (payload bytes sent and received per peer and lane, summed over this run's transfers)."""

        async def _collect() -> dict[str, list[dict[str, Any]]]:
            out: dict[str, list[dict[str, Any]]] = {kind: [] for kind in STATS_COLUMNS}
            for name, peer in self.mesh.peers.items():
                link = peer.link
                if link is None:
                    continue
                out["links"].append(link_facts(link))
                out["candidates"] += [{"peer": name, **asdict(c)} for c in link_stats.candidates(link)]
                pair = link_stats.selected_pair(link)
                if pair:
                    local, remote = pair
                    out["pairs"].append({
                        "peer": name, "local_type": local.type, "local_address": local.address, "local_port": local.port,
                        "remote_type": remote.type, "remote_address": remote.address, "remote_port": remote.port,
                        "protocol": local.protocol,
                    })
                beat = link.find(Heartbeat)
                if beat is not None:
                    out["rtt"] += [{"peer": name, "time": t, "rtt": rtt} for t, rtt in beat.samples]
            lanes: dict[tuple[str, str], dict[str, Any]] = {}
            for r in self.sharing.log_rows():
                if r["lane"]:
                    row = lanes.setdefault((r["peer"], r["lane"]), {
                        "peer": r["peer"], "lane": r["lane"], "transfers": 0, "bytes_sent": 0, "bytes_received": 0})
                    row["transfers"] += 1
                    row["bytes_sent" if r["direction"] == "out" else "bytes_received"] += r["bytes_transferred"]
            out["lanes"] = [lanes[k] for k in sorted(lanes)]
            return out

        rows = self._engine.run(_collect(), 10) if self._engine.alive else {k: [] for k in STATS_COLUMNS}
        return {kind: frame(rows[kind], cols) for kind, cols in STATS_COLUMNS.items()}

    # -- calls ------------------------------------------------------------------------
    def call(self, user: str) -> Call:
        """Ask ``user`` (anyone on this server) for a private 1:1 link.

        The returned :class:`Call` ends as ``connected``, ``refused`` (with the
        callee's reason), ``no answer`` after ``call_timeout`` s, or ``failed``.
        """
        return self.calls.call(user)

    @property
    def pending_calls(self) -> list[Request]:
        """Calls waiting for accept()/refuse()."""
        return [r for r in self.calls.requests if r.pending]

    def disconnect(self, user: str) -> None:
        """Hang up on ``user``: close the link and do not re-form it until a new call or join."""

        async def _hang_up() -> None:
            self.mesh.hung_up.add(user)
            self.sharing.cancel_with(user, f"{self.user} disconnected from {user}")
            link = self.mesh.link_to(user)
            if link and link.state == "connected":
                await link.flush()  # the cancel reaches them before the link goes
            await self._client.signal(user, {"kind": "bye", "reason": "hung up"})
            if link:
                await link.close("closed", f"{self.user} hung up")

        self._engine.run(_hang_up(), 10.0)

    # -- chat --------------------------------------------------------------------------
    def say(self, text: str, to: str | None = None) -> Handle[list[str]]:
        """Send a chat message to ``to`` or to everyone connected; the handle gives who it reached."""
        Chat.check(text)

        async def _say() -> list[str]:
            if to is not None:
                link = self.mesh.link_to(to)
                if to not in self.mesh.peers:
                    raise KeyError(f"{to} is not a peer of {self.user}; peers: {sorted(self.mesh.peers)}")
                links = [link] if link else []
            else:
                links = [p.link for p in self.mesh.peers.values() if p.link]
            return self.chat.send(links, text, to)

        return self._engine.submit(_say())

    @property
    def pending_messages(self) -> list[Request]:
        """Chat messages held because ``messages`` is ``ask`` for their sender."""
        return [r for r in self.chat.requests if r.pending]

    @property
    def messages(self) -> Any:
        """Chat log (pandas DataFrame): time, sender, to, text, decision (sent / accept / refuse / ask).

        Like every log it starts with the rows of earlier runs (:attr:`logbook`)."""
        with self.chat._lock:
            rows = list(self.chat.rows)
        return frame(self._earlier("messages") + rows, "messages")

    # -- video (docs/protocol.md, "Video") ------------------------------------------------
    def start_video(self, source: VideoSource | None = None, to: str | None = None) -> None:
        """Send our video to ``to``, or when None to everyone we are linked with: the whole room,
        also users who join later, and 1:1 calls.

        Returns at once; each receiver's ``calls`` setting decides (or asks), and a
        :class:`~ivisit_nb.events.VideoChanged` event (direction ``"out"``) says when a video
        starts or is refused. ``source`` is any :class:`~ivisit_nb.media.VideoSource`
        (``TestPattern``, ``VideoFile``, ``NumpySource``, ``Camera``); the default is a
        ``TestPattern`` with our name. Given while video runs, it replaces the source for
        every receiver. Call from any thread.
        """
        if source is not None and not isinstance(source, VideoSource):
            raise TypeError(f"source must be a VideoSource (TestPattern, VideoFile, NumpySource ...), not {type(source).__name__}")
        if to is not None and not isinstance(to, str):
            raise TypeError("to must be a user name or None (the whole room)")
        self._call_soon(self.video.start, source, to)

    def stop_video(self, to: str | None = None) -> None:
        """Stop our video to ``to``, or to everyone. The links, chat and files go on. Returns at once."""
        if to is not None and not isinstance(to, str):
            raise TypeError("to must be a user name or None (everyone)")
        self._call_soon(self.video.stop, to)

    def video_feed(self, user: str) -> VideoFeed:
        """``user``'s video as it arrives: one :class:`~ivisit_nb.media.VideoFeed` per user for the
        session's life (``feed.active`` is True while we take their video)."""
        return self.video.feed(user)

    @property
    def local_feed(self) -> VideoFeed:
        """Our own video (the preview), while :meth:`start_video` runs."""
        return self.video.local_feed

    @property
    def video_requests(self) -> list[Request]:
        """Video offers waiting for one of the four choices (``calls`` is ``ask`` for their sender)."""
        return [r for r in self.video.requests if r.pending]

    # -- files and URLs ---------------------------------------------------------------
    @property
    def receiving(self) -> bool:
        """iVisit's "Receive" switch; off by default. While off, every offer is refused at once."""
        return self.sharing.policy.receiving

    @receiving.setter
    def receiving(self, value: bool) -> None:
        self.sharing.policy.receiving = bool(value)

    @property
    def policy(self) -> Policy:
        """The consent policy; set ``policy.rule = fn(offer)`` to prototype your own."""
        return self.sharing.policy

    @property
    def inbox(self) -> Inbox:
        """The history of received items: ``current``, ``back()``, ``forward()``, ``paused``."""
        return self.sharing.inbox

    @property
    def pending_offers(self) -> list[Request]:
        """File and URL offers waiting for one of the four choices."""
        return [r for r in self.sharing.requests if r.pending]

    @property
    def active_transfers(self) -> list[Transfer]:
        """Transfers (both directions) that have not ended yet."""
        return [t for t in list(self.sharing.transfers.values()) if not t.ended]

    def send_file(self, path: str | Path, to: str | None = None) -> Transfer | RoomTransfer:
        """Offer a file to ``to``, or to every room member when ``to`` is None.

        Returns at once with a handle (status ``hashing`` while the file is hashed in a
        worker; an unchanged file is not hashed twice): ``.wait()``, ``await``,
        ``.status``, ``.progress``, ``.cancel()`` (and ``.results`` for a room send).
        """
        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"{p} is not a file; give the path of a file to send")
        return self.sharing.send_file(p, to)

    def send_url(self, url: str, to: str | None = None) -> Transfer | RoomTransfer:
        """Offer an http(s) URL; others raise :class:`~ivisit_nb.protocol.urls.BadURL`. Returns at once."""
        return self.sharing.send_url(check_url(url), to)

    @property
    def transfers(self) -> Any:
        """One row per transfer, both directions (pandas DataFrame; columns in docs/logs.md).

        Ended transfers of earlier runs with the same ``config_dir`` come first (:attr:`logbook`)."""
        return frame(self._earlier("transfers") + self._engine_rows(self.sharing.log_rows), "transfers")

    @property
    def policy_log(self) -> Any:
        """Every consent decision: who sent what, the decision and what made it (pandas DataFrame).

        Decisions of earlier runs come first (:attr:`logbook`)."""
        return frame(self._earlier("policy_log") + list(self.sharing.policy_rows), "policy_log")

    @property
    def progress_log(self) -> Any:
        """Timestamped byte counts per transfer (pandas DataFrame); earlier runs' rows come first."""
        return frame(self._earlier("progress_log") + list(self.sharing.progress_rows), "progress_log")

    # -- the logbook: logs that survive a restart (ivisit_nb/logbook.py) -----------------
    _logbook: Logbook | None = None

    @property
    def logbook(self) -> Logbook | None:
        """Where the logs are persisted as they happen (``config_dir/<user>/logs.sqlite``), once joined.

        ``logbook.earlier`` holds the rows of earlier runs that the logs show first, and
        ``logbook.opened_at`` is when this run began (rows of earlier runs are older)."""
        return self._logbook

    def _earlier(self, log: str) -> list[dict[str, Any]]:
        return self._logbook.earlier[log] if self._logbook is not None else []

    def _attach_logbook(self) -> None:
        self._logbook = Logbook(logbook_path(self.config_dir, self.user))
        self._logbook.follow(
            self.on,
            progress_log=self.sharing.progress_rows,
            policy_log=self.sharing.policy_rows,
            messages=self.chat.rows,
        )

    def _close_logbook(self) -> None:
        if self._logbook is not None:
            self._logbook.close()

    def _engine_rows(self, fn: Callable[[], list[dict[str, Any]]]) -> list[dict[str, Any]]:
        if self._engine.alive and not self._engine.in_engine:
            async def _rows() -> list[dict[str, Any]]:
                return fn()
            return self._engine.run(_rows(), 10)
        return fn()
