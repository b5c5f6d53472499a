"""Short-lived TURN credentials for the room server's ``welcome`` (the TURN REST API scheme).

A TURN server such as coturn, started with ``--use-auth-secret --static-auth-secret=S``,
accepts any username of the form ``EXPIRY:NAME`` (``EXPIRY`` in Unix seconds) whose
password is ``base64(HMAC-SHA1(S, username))``, until ``EXPIRY`` passes. Whoever knows
``S`` can mint such credentials without talking to the TURN server, which is what the
room server does for each user it welcomes: users never see ``S``.

Everything here is pure (the time is passed in) except :meth:`TurnCredentials.welcome_extras`,
which reads the clock. See ``docs/turn.md`` for the deployment.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import time
from dataclasses import dataclass, field
from typing import Any

DEFAULT_TTL = 3600
#: turn:HOST[:PORT][?transport=udp|tcp] or turns:..., the forms aiortc accepts (IPv6 hosts are not).
TURN_URL = re.compile(r"turns?:[^?:/\[\]\s]+(:[0-9]{1,5})?(\?transport=(udp|tcp))?")


def turn_password(secret: str, username: str) -> str:
    """``base64(HMAC-SHA1(secret, username))``, the password the TURN server expects."""
    digest = hmac.new(secret.encode("utf-8"), username.encode("utf-8"), hashlib.sha1).digest()
    return base64.b64encode(digest).decode("ascii")


def check_turn_url(url: str) -> str:
    """Return ``url`` if it is a ``turn:`` or ``turns:`` URL; raise ``ValueError`` saying why not."""
    if not isinstance(url, str) or not TURN_URL.fullmatch(url):
        raise ValueError(
            f"not a TURN URL: {url!r}; write it as turn:HOST:PORT (e.g. turn:turn.example.org:3478), "
            "optionally with ?transport=tcp, or turns:HOST:PORT for TLS"
        )
    return url


@dataclass(frozen=True)
class TurnCredentials:
    """Mints time-limited TURN credentials from a shared secret.

    ``secret``: the TURN server's ``--static-auth-secret``; ``url``: its URL
    (``turn:HOST:3478``, ``turn:HOST:3478?transport=tcp`` or ``turns:HOST:5349?transport=tcp``;
    aiortc uses one TURN server per link, so there is one URL); ``ttl``: how many seconds
    each credential stays valid for new allocations.
    """

    secret: str = field(repr=False)  # never in logs or tracebacks
    url: str
    ttl: int = DEFAULT_TTL

    def __post_init__(self) -> None:
        if not self.secret:
            raise ValueError("the TURN secret is empty; pass the value of coturn's --static-auth-secret")
        check_turn_url(self.url)
        if self.ttl < 1:
            raise ValueError(f"the TURN credential lifetime must be at least 1 second, not {self.ttl}")

    def mint(self, name: str, now: float) -> dict[str, Any]:
        """One RTCIceServer-like dict for user ``name``, valid from ``now`` (Unix time) for ``ttl`` s.

        The username is ``EXPIRY:NAME``. A ``:`` in ``name`` would make the username
        ambiguous, so it is replaced by ``_`` (the name part is only informative).
        """
        username = f"{int(now) + self.ttl}:{name.replace(':', '_')}"
        return {"urls": self.url, "username": username, "credential": turn_password(self.secret, username)}

    def ice_servers(self, name: str, now: float) -> list[dict[str, Any]]:
        """The ``ice_servers`` list for user ``name`` at ``now`` (Unix time)."""
        return [self.mint(name, now)]

    def welcome_extras(self, name: str) -> dict[str, Any]:
        """Fields to add to ``name``'s ``welcome``: ``{"ice_servers": [...]}``, valid from now."""
        return {"ice_servers": self.ice_servers(name, time.time())}

    __call__ = welcome_extras  # pass the credentials themselves as the hub's ``welcome_extras``

    @property
    def refresh_every(self) -> float:
        """Seconds after which the hub sends a user fresh credentials: half their lifetime."""
        return self.ttl / 2
