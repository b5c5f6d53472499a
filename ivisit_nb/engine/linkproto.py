"""What a link protocol is: the plug-in seam of :class:`~ivisit_nb.engine.peerlink.PeerLink`.

Heartbeat, the short authentication string, chat, calls and sharing each plug into a
link as a :class:`LinkProtocol`. Each one declares, in one place, the control message
types (the ``"t"`` field of a JSON object on the control channel) and the binary frame
types (the first byte of a frame on a lane) it owns. The link routes what arrives to
the one owner, so nobody routes messages by hand and no two protocols can claim the
same type.

A protocol may be shared by every link of a session (sharing, chat) or belong to one
link (heartbeat, SAS); either way each call names the link it concerns.

Handlers run on the engine loop and must not block. An exception raised by a handler
never reaches aiortc: the link logs it with the message type and drops the message.
"""

from __future__ import annotations

from typing import Any, Protocol, runtime_checkable


@runtime_checkable
class LinkView(Protocol):
    """What a link protocol may use of a link: who is at the other end, and how to talk to them."""

    local: str
    remote: str
    initiator: bool
    state: str

    def send(self, msg: dict[str, Any]) -> bool:
        """Send one JSON object on the control channel; False if it is not open."""
        ...


class LinkProtocol(Protocol):
    """A protocol that runs over peer links. See the module docstring."""

    #: "t" values of the control messages this protocol owns.
    control_types: frozenset[str]
    #: first bytes of the binary frames this protocol owns.
    frame_types: frozenset[int]

    def on_control(self, link: Any, msg: dict[str, Any]) -> None:
        """A control message of one of ``control_types`` arrived on ``link``."""
        ...

    def on_frame(self, link: Any, frame: bytes) -> None:
        """A binary frame whose first byte is in ``frame_types`` arrived on ``link``."""
        ...

    def on_link_up(self, link: Any) -> None:
        """``link`` is connected: its control channel is open."""
        ...

    def on_link_down(self, link: Any) -> None:
        """``link`` failed or closed; ``link.reason`` says why. Called once."""
        ...


class BaseLinkProtocol:
    """Convenience base: owns nothing and ignores everything; override what you need."""

    control_types: frozenset[str] = frozenset()
    frame_types: frozenset[int] = frozenset()

    def on_control(self, link: Any, msg: dict[str, Any]) -> None:
        pass

    def on_frame(self, link: Any, frame: bytes) -> None:
        pass

    def on_link_up(self, link: Any) -> None:
        pass

    def on_link_down(self, link: Any) -> None:
        pass
