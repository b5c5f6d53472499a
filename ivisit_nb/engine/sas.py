"""The short authentication string as a link protocol: one :class:`SasProtocol` per link.

Runs the commit-then-reveal exchange of :mod:`ivisit_nb.protocol.sas` over the
link's control channel once it is up. The link's ``initiator`` (the side that sent
the SDP offer) commits first. When the string is known it is stored in
``link.sas`` and ``on_ready(link)`` is called; if the exchange fails (a reveal that
does not match its commitment, a malformed or out-of-order message, no readable
DTLS fingerprint) ``on_failure(link, reason)`` is called once, and the owner closes
the link as failed with that reason.

Messages that arrive before :meth:`SasProtocol.on_link_up` (the peer's control
channel can open before ours reports it) are queued and handled then.
"""

from __future__ import annotations

import logging
from typing import Any, Callable

from ..protocol.sas import MESSAGE_TYPES, SasError, SasExchange, sdp_fingerprint
from .linkproto import BaseLinkProtocol

log = logging.getLogger("ivisit_nb.sas")

#: Messages kept before the link is up; the exchange needs at most two from a peer.
MAX_EARLY = 4


class SasProtocol(BaseLinkProtocol):
    """The SAS exchange on one link. See the module docstring.

    ``on_ready(link)`` is called once, when ``link.sas`` is set; ``on_failure(link,
    reason)`` once, if the exchange fails. A ``sas-*`` message after success (a
    duplicate) fails the exchange; after a failure or ``on_link_down`` they are ignored.
    """

    control_types = MESSAGE_TYPES

    def __init__(self, on_ready: Callable[[Any], None], on_failure: Callable[[Any, str], None]) -> None:
        self._on_ready = on_ready
        self._on_failure = on_failure
        self.exchange: SasExchange | None = None
        self._early: list[dict[str, Any]] = []
        self._ready = False
        self._failed = False
        self._down = False

    def on_link_up(self, link: Any) -> None:
        """Read both DTLS fingerprints, start the exchange and handle queued messages."""
        if self.exchange is not None or self._failed or self._down:
            return
        try:
            local = sdp_fingerprint(link.pc.localDescription.sdp)
            remote = sdp_fingerprint(link.pc.remoteDescription.sdp)
        except (AttributeError, TypeError, ValueError) as exc:
            self._fail(link, f"cannot read the DTLS fingerprints for the short authentication string: {exc}")
            return
        self.exchange = SasExchange("offerer" if link.initiator else "answerer", local, remote)
        first = self.exchange.start()
        if first is not None:
            link.send(first)
        early, self._early = self._early, []
        for msg in early:
            self._handle(link, msg)

    def on_control(self, link: Any, msg: dict[str, Any]) -> None:
        """A ``sas-*`` message from the peer: queue it until the link is up, else handle it."""
        if self._failed or self._down:
            return
        if self.exchange is None:
            if len(self._early) >= MAX_EARLY:
                self._fail(link, "too many short-authentication messages before the link was up")
                return
            self._early.append(msg)
            return
        self._handle(link, msg)

    def on_link_down(self, link: Any) -> None:
        """The link is gone: forget the exchange; late messages are ignored."""
        self._down = True
        self._early.clear()

    def _handle(self, link: Any, msg: dict[str, Any]) -> None:
        if self.exchange is None or self._failed:
            return
        try:
            reply = self.exchange.receive(msg)
        except SasError as exc:
            self._fail(link, exc.reason)
            return
        if reply is not None:
            link.send(reply)
        if self.exchange.sas is not None and not self._ready:
            self._ready = True
            link.sas = self.exchange.sas
            self._on_ready(link)

    def _fail(self, link: Any, reason: str) -> None:
        if self._failed:
            return
        self._failed = True
        self._early.clear()
        log.warning("short authentication string with %s failed: %s", getattr(link, "remote", "?"), reason)
        self._on_failure(link, reason)
