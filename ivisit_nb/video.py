"""Video between users: who sends to whom, with the receiver's consent.

A link protocol owning ``video-offer``, ``video-accept``, ``video-refuse`` and
``video-stop`` (docs/protocol.md, *Video*), shared by all of a session's links like
chat. The sender asks; the receiver's ``calls`` setting for the sender decides (``ask``
waits for one of the four choices, as a :class:`~ivisit_nb.consent.Request` of kind
``video``). Only after an accept does the receiver open its side and the sender attach
its track (:mod:`ivisit_nb.engine.video`). A receiver may stop a video at any time: a
refusal, ``calls`` set to ``refuse`` or the sender ``blocked``. Runs on the engine loop.
"""

from __future__ import annotations

import asyncio
import logging
import threading
from dataclasses import dataclass
from typing import Any, Callable

from . import events as ev
from .consent import Request
from .engine.linkproto import BaseLinkProtocol
from .engine.video import LinkVideo, VideoBroadcast
from .media.feed import VideoFeed
from .media.sources import VideoSource
from .protocol.text import clean_text
from .settings import Settings

log = logging.getLogger("ivisit_nb.video")

ASK_TIMEOUT = 60.0  # an unanswered video request is refused after this many seconds
MAX_REASON = 1000


@dataclass
class _LinkState:
    """Consent state of one link (it dies with the link)."""

    offered: bool = False  # we asked to send our video (and did not stop)
    request: Request | None = None  # their video-offer waiting for our decision


class Video(BaseLinkProtocol):
    """Video consent and fan-out for one user. See the module docstring."""

    control_types = frozenset({"video-offer", "video-accept", "video-refuse", "video-stop"})

    def __init__(
        self,
        user: str,
        settings: Settings,
        *,
        emit: Callable[[ev.Event], None],
        call_soon: Callable[..., None],
        links: Callable[[], list[Any]],
    ) -> None:
        self.user, self.settings = user, settings
        self._emit, self._call_soon, self._links = emit, call_soon, links
        self.local_feed = VideoFeed(user, local=True)
        self.broadcast = VideoBroadcast(self.local_feed, on_error=self._source_failed)
        self.requests: list[Request] = []
        self._feeds: dict[str, VideoFeed] = {}
        self._feeds_lock = threading.Lock()
        self._state: dict[Any, _LinkState] = {}
        self._to_all = False
        self._to: set[str] = set()
        self._except: set[str] = set()
        settings.changes.add(lambda user, field, value: self._call_soon(self._setting_changed, user, field))

    # -- feeds (any thread) -------------------------------------------------------------
    def feed(self, user: str) -> VideoFeed:
        """``user``'s video feed: one object per user for the session's life."""
        with self._feeds_lock:
            feed = self._feeds.get(user)
            if feed is None:
                feed = self._feeds[user] = VideoFeed(user)
            return feed

    def link_protocol(self, name: str) -> LinkVideo:
        """The per-link media protocol for a new link to ``name``."""
        return LinkVideo(self.broadcast, self.feed(name))

    # -- sending (engine thread) -------------------------------------------------------------
    def wants(self, user: str) -> bool:
        """True if our video should go to ``user``."""
        return (self._to_all and user not in self._except) or user in self._to

    def start(self, source: VideoSource | None, to: str | None) -> None:
        """Start (or re-target, or swap the source of) our video; see ``Session.start_video``."""
        if source is not None:
            self.broadcast.start(source)
        elif not self.broadcast.running:
            from .media.pattern import TestPattern  # numpy: loaded once video is used

            self.broadcast.start(TestPattern(user=self.user))
        self.local_feed.active = True
        if to is None:
            self._to_all = True
            self._except.clear()
        else:
            self._to.add(to)
            self._except.discard(to)
        for link in self._links():
            if link.state == "connected" and self.wants(link.remote):
                self._offer(link)

    def stop(self, to: str | None, reason: str = "stopped") -> None:
        """Stop our video to ``to``, or to everyone; see ``Session.stop_video``."""
        if to is None:
            self._to_all = False
            self._to.clear()
            self._except.clear()
        else:
            self._to.discard(to)
            if self._to_all:
                self._except.add(to)
        for link in self._links():
            if not self.wants(link.remote):
                self._stop_out(link, reason, tell=True)
        if not self._to_all and not self._to:
            self.broadcast.stop()
            self.local_feed.active = False

    def close(self) -> None:
        """Stop everything (the session leaves)."""
        self.stop(None)

    def _offer(self, link: Any) -> None:
        st = self._st(link)
        if not st.offered:
            st.offered = True
            link.send({"t": "video-offer"})

    def _stop_out(self, link: Any, reason: str, tell: bool) -> None:
        st = self._state.get(link)
        if st is None or not st.offered:
            return
        st.offered = False
        lv = link.find(LinkVideo)
        if lv is not None:
            lv.want(link, send=False)
        if tell:
            link.send({"t": "video-stop"})
        self._emit(ev.VideoChanged(user=link.remote, direction="out", active=False, reason=reason))

    def _source_failed(self, message: str) -> None:
        log.warning("%s's video stopped: the source failed: %s", self.user, message)
        self.stop(None, f"the video source failed: {message}")

    # -- receiving (engine thread) ------------------------------------------------------------
    def _st(self, link: Any) -> _LinkState:
        st = self._state.get(link)
        if st is None:
            st = self._state[link] = _LinkState()
        return st

    def _refusal(self, sender: str) -> str | None:
        """Why ``sender``'s video is refused now (blocked, or calls set to refuse), or None."""
        if self.settings[sender].blocked:
            return f"{self.user} has blocked {sender}"
        if self.settings.decide(sender, "calls") == "refuse":
            return f"{self.user} refuses video from {sender}"
        return None

    def _on_offer(self, link: Any) -> None:
        sender, st = link.remote, self._st(link)
        lv = link.find(LinkVideo)
        if lv is None:
            return
        if lv.recv_on:  # already taking it: say so again
            link.send({"t": "video-accept"})
            return
        if st.request is not None and st.request.pending:
            return  # one pending request per sender, however many offers
        refusal = self._refusal(sender)
        if refusal is not None:
            link.send({"t": "video-refuse", "reason": refusal})
            return
        if self.settings.decide(sender, "calls") == "accept":
            self._accept_in(link, "accepted by the calls setting")
            return

        def resolve(req: Request, decision: str, always: bool, by: str) -> None:
            if always:
                self.settings[sender].calls = decision
            self._call_soon(self._resolved, link, req, decision, by)

        req = Request("video", sender, resolve)
        st.request = req
        self.requests = [r for r in self.requests if r.pending][-100:] + [req]
        asyncio.get_running_loop().call_later(ASK_TIMEOUT, req.expire)
        self._emit(ev.RequestPending(request=req))

    def _resolved(self, link: Any, req: Request, decision: str, by: str) -> None:
        st = self._state.get(link)
        if st is None or st.request is not req or link.state != "connected":
            return  # the link went, or the sender stopped meanwhile
        st.request = None
        if by in ("sender stopped", "settings"):
            return  # the sender stopped, or _stop_in already sent the refusal
        if decision == "accept" and self._refusal(link.remote) is None:
            self._accept_in(link, "accepted")
        else:
            why = f"{self.user} did not answer" if by == "no answer" else f"{self.user} refused the video"
            link.send({"t": "video-refuse", "reason": self._refusal(link.remote) or why})

    def _accept_in(self, link: Any, reason: str) -> None:
        lv = link.find(LinkVideo)
        link.send({"t": "video-accept"})
        lv.feed.active = True
        lv.want(link, recv=True)
        self._emit(ev.VideoChanged(user=link.remote, direction="in", active=True, reason=reason))

    def _stop_in(self, link: Any, reason: str, tell: bool) -> None:
        st = self._state.get(link)
        if st is not None and st.request is not None and st.request.pending:
            st.request._decide("refuse", False, "settings" if tell else "sender stopped")
            if tell:
                link.send({"t": "video-refuse", "reason": reason})
            return
        lv = link.find(LinkVideo)
        if lv is None or not lv.recv_on:
            return
        if tell:
            link.send({"t": "video-refuse", "reason": reason})
        lv.want(link, recv=False)
        lv.feed.active = False
        self._emit(ev.VideoChanged(user=link.remote, direction="in", active=False, reason=reason))

    def stop_incoming(self, user: str, reason: str) -> None:
        """Stop taking ``user``'s video (our refusal reaches them)."""
        for link in self._links():
            if link.remote == user:
                self._stop_in(link, reason, tell=True)

    def _setting_changed(self, user: str | None, field: str) -> None:
        if field not in ("calls", "blocked"):
            return
        for link in self._links():
            if user is not None and link.remote != user:
                continue
            refusal = self._refusal(link.remote)
            if refusal is not None:
                self._stop_in(link, refusal, tell=True)

    # -- the link protocol -----------------------------------------------------------------
    def on_control(self, link: Any, msg: dict[str, Any]) -> None:
        t = msg["t"]
        if t == "video-offer":
            self._on_offer(link)
        elif t == "video-stop":
            self._stop_in(link, f"{link.remote} stopped their video", tell=False)
        elif t == "video-accept":
            st = self._state.get(link)
            lv = link.find(LinkVideo)
            if st is None or not st.offered or lv is None:
                log.debug("%s accepted a video we did not offer; dropped", link.remote)
                return
            if not lv.send_on:
                lv.want(link, send=True)
                self._emit(ev.VideoChanged(user=link.remote, direction="out", active=True, reason="accepted"))
        elif t == "video-refuse":
            reason = msg.get("reason")
            reason = clean_text(reason, MAX_REASON) if isinstance(reason, str) else f"{link.remote} refused the video"
            self._stop_out(link, reason, tell=False)

    def on_link_up(self, link: Any) -> None:
        if self.wants(link.remote):
            self._offer(link)

    def on_link_down(self, link: Any) -> None:
        st = self._state.pop(link, None)
        lv = link.find(LinkVideo)
        why = f"link lost: {link.reason}" if link.reason else "link lost"
        if st is not None and st.request is not None and st.request.pending:
            st.request._decide("refuse", False, "sender stopped")
        if st is not None and st.offered:
            self._emit(ev.VideoChanged(user=link.remote, direction="out", active=False, reason=why))
        if lv is not None and lv.recv_on:
            lv.recv_on = False
            lv.feed.active = False
            self._emit(ev.VideoChanged(user=link.remote, direction="in", active=False, reason=why))
