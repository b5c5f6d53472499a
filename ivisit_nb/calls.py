"""1:1 calls: ask a user anywhere on the server for a private link, with iVisit's four choices.

Calls are signalled through the room server (``call``, ``call-accepted``,
``call-refused``, ``call-cancel``; docs/protocol.md); an accepted call lets the
caller's WebRTC offer through the mesh. The callee's ``calls`` setting decides, or
asks. Runs on the session's engine loop.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import uuid
from typing import Any, Callable

from . import events as ev
from .consent import Request
from .engine.loop import Handle, spawn
from .mesh import Mesh
from .room.client import RoomClient
from .settings import Settings

SIGNAL_KINDS = frozenset({"call", "call-accepted", "call-refused", "call-cancel"})


class Call(Handle[str]):
    """A 1:1 call in progress. ``status``: ringing, connected, refused, no answer, failed."""

    def __init__(self, user: str, future: Any) -> None:
        super().__init__(future)
        self.user = user
        self.call_id = uuid.uuid4().hex
        self.status = "ringing"
        self.reason = ""

    def __repr__(self) -> str:
        return f"<Call to {self.user}: {self.status}{' - ' + self.reason if self.reason else ''}>"


class Calls:
    """Placing and answering 1:1 calls for one user."""

    def __init__(
        self,
        user: str,
        client: RoomClient,
        settings: Settings,
        mesh: Mesh,
        *,
        emit: Callable[[ev.Event], None],
        call_soon: Callable[..., None],
        call_timeout: float,
    ) -> None:
        self.user, self.client, self.settings, self.mesh = user, client, settings, mesh
        self._emit, self._call_soon = emit, call_soon
        self.call_timeout = call_timeout
        self.requests: list[Request] = []
        self._calls: dict[str, tuple[Call, Any]] = {}
        self._allowed: dict[str, str] = {}  # user -> call id we accepted
        mesh.link_changed.add(self._on_link)

    def may_link(self, sender: str, offer: dict[str, Any]) -> bool:
        """True if ``offer`` is the caller's link for a call we accepted (used once)."""
        if offer.get("link") == "call" and self._allowed.get(sender) == offer.get("call_id"):
            del self._allowed[sender]
            return True
        return False

    # -- placing ----------------------------------------------------------------------
    def call(self, user: str) -> Call:
        """Ring ``user`` (from any thread); see :meth:`ivisit_nb.session.Session.call`."""
        fut: concurrent.futures.Future[str] = concurrent.futures.Future()
        call = Call(user, fut)
        self._call_soon(lambda: spawn(self._place(call, fut), f"call {user}"))
        return call

    async def _place(self, call: Call, fut: Any) -> None:
        user = call.user
        self.mesh.hung_up.discard(user)
        peer = self.mesh.peers.get(user)
        if peer and peer.state == "connected":
            call.status = "connected"
            fut.set_result("connected")
            return
        self._calls[user] = (call, fut)
        if not await self.client.signal(user, {"kind": "call", "call_id": call.call_id}):
            self.end(user, "failed", "not connected to the room server")
            return
        asyncio.get_running_loop().call_later(self.call_timeout, self._timed_out, user, call)

    def _timed_out(self, user: str, call: Call) -> None:
        entry = self._calls.get(user)
        if entry and entry[0] is call:
            spawn(self.client.signal(user, {"kind": "call-cancel", "call_id": call.call_id}), "call-cancel")
            self.end(user, "no answer", f"{user} did not answer within {self.call_timeout:g} s")

    def end(self, user: str, status: str, reason: str) -> None:
        """End our call to ``user`` with ``status`` (if one is ringing)."""
        entry = self._calls.pop(user, None)
        if entry is None:
            return
        call, fut = entry
        call.status, call.reason = status, reason
        if not fut.done():
            fut.set_result(status)
        self._emit(ev.CallEnded(user=user, status=status, reason=reason))

    def end_all(self, reason: str) -> None:
        for user in list(self._calls):
            self.end(user, "failed", reason)

    def ringing(self, user: str) -> bool:
        return user in self._calls

    def _on_link(self, link: Any) -> None:
        if link.remote in self._calls and link.state in ("connected", "failed"):
            self.end(link.remote, link.state, link.reason)

    # -- signals from the room server ---------------------------------------------------
    async def on_signal(self, sender: str, data: dict[str, Any]) -> None:
        kind, call_id = data.get("kind"), data.get("call_id")
        if kind == "call":
            if isinstance(call_id, str) and len(call_id) <= 64:
                await self._answer(sender, call_id)
        elif kind == "call-accepted":
            entry = self._calls.get(sender)
            if entry and call_id == entry[0].call_id:
                await self.mesh.new_link(sender, initiator=True, kind="call", call_id=entry[0].call_id)
        elif kind == "call-refused":
            if sender in self._calls:
                reason = data.get("reason")
                self.end(sender, "refused", reason[:500] if isinstance(reason, str) else f"{sender} refused the call")
        elif kind == "call-cancel":
            for r in self.requests:
                if r.sender == sender and r.pending:
                    r._decide("refuse", False, "caller hung up")

    async def _answer(self, caller: str, call_id: str) -> None:
        decision = self.settings.decide(caller, "calls")

        def answer(decision: str, reason: str) -> None:
            if decision == "accept":
                self._allowed[caller] = call_id
                self.mesh.hung_up.discard(caller)
                msg = {"kind": "call-accepted", "call_id": call_id}
            else:
                msg = {"kind": "call-refused", "call_id": call_id, "reason": reason}
            spawn(self.client.signal(caller, msg), f"answer {caller}")

        if decision != "ask":
            answer(decision, f"{self.user} refuses calls from {caller}")
            return

        def resolve(req: Request, decision: str, always: bool, by: str) -> None:
            if always:
                self.settings[caller].calls = decision
            reason = f"{self.user} did not answer" if by in ("no answer", "caller hung up") else f"{self.user} refused the call"
            self._call_soon(answer, decision, reason)

        req = Request("call", caller, resolve, call_id=call_id)
        self.requests = [r for r in self.requests if r.pending][-100:] + [req]
        asyncio.get_running_loop().call_later(self.call_timeout, req.expire)
        self._emit(ev.RequestPending(request=req))
