"""Short authentication string (SAS) for a peer link, with commit-then-reveal.

Two users read six digits, ``"123 456"``, and compare them aloud. They match only
if each side's DTLS certificate is the one the other side sees, so a room server
that rewrote the SDP to put itself in the middle is noticed.

Why a commitment: digits made from the two fingerprints alone can be *ground*. A
server in the middle sees both real fingerprints in the offer and the answer
before it must present its own certificates, so it can try about 10^6 certificates
of its own until both users' strings agree. Here each side also adds a random
32-byte nonce, and the first to speak commits to its nonce before seeing the
other's (the ZRTP / Bluetooth SSP pattern)::

    offerer                                      answerer
      sas-commit  h = blake3(nonce_O)  ------->
                                       <-------  sas-nonce   n = nonce_A
      sas-reveal  n = nonce_O          ------->  checks blake3(nonce_O) == h
      (knows the SAS)                            (knows the SAS)

    SAS = blake3 in derive-key mode, context SAS_CONTEXT, over
          F_offerer, F_answerer, nonce_O, nonce_A      (each with a 4-byte length)
          -> first 8 bytes, big-endian, modulo 10^6, as "123 456"

``F`` is the ``a=fingerprint:sha-256`` value, upper-case hex with colons. A man in
the middle runs this exchange separately with each user and must fix its own
nonce on each side before it learns that side's nonce, so each string is a fresh
random draw for it: one chance in 10^6 per link that the two match.

:class:`SasExchange` is one side's state machine, sans I/O: feed it what arrives,
send what it returns. Every problem with what the peer sent raises :class:`SasError`
(and the exchange stays failed); nothing else is raised for any input.
"""

from __future__ import annotations

import re
import secrets
from typing import Any, Literal

import blake3

NONCE_BYTES = 32
SAS_CONTEXT = "ivisit-nb short authentication string v2"
MESSAGE_TYPES = frozenset({"sas-commit", "sas-nonce", "sas-reveal"})

Role = Literal["offerer", "answerer"]

_FINGERPRINT = re.compile(r"^a=fingerprint:sha-256\s+([0-9A-Fa-f:]+)\s*$", re.MULTILINE)
_HEX64 = re.compile(r"[0-9a-f]{64}")


class SasError(Exception):
    """The SAS exchange failed; ``reason`` (also the message) says why, for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def sdp_fingerprint(sdp: str) -> str:
    """The sha-256 DTLS fingerprint in an SDP, upper-case hex with colons."""
    m = _FINGERPRINT.search(sdp)
    if not m:
        raise ValueError("SDP has no a=fingerprint:sha-256 line")
    return m.group(1).upper()


def commitment(nonce: bytes) -> str:
    """The offerer's commitment to ``nonce``: blake3 of it, 64 lowercase hex digits."""
    return blake3.blake3(nonce).hexdigest()


def derive_sas(offerer_fingerprint: str, answerer_fingerprint: str, offerer_nonce: bytes, answerer_nonce: bytes) -> str:
    """Six digits, as ``"123 456"``, from both fingerprints and both nonces.

    Offerer's values first. Each part is length-prefixed, so no two different
    inputs give the same hashed bytes; blake3 is keyed by :data:`SAS_CONTEXT`, so
    this hash means nothing anywhere else.
    """
    h = blake3.blake3(derive_key_context=SAS_CONTEXT)
    for part in (offerer_fingerprint.upper().encode(), answerer_fingerprint.upper().encode(), offerer_nonce, answerer_nonce):
        h.update(len(part).to_bytes(4, "big") + part)
    value = int.from_bytes(h.digest(8), "big") % 1_000_000
    digits = f"{value:06d}"
    return f"{digits[:3]} {digits[3:]}"


def _hex_field(msg: dict[str, Any], key: str) -> bytes:
    value = msg.get(key)
    if not isinstance(value, str) or not _HEX64.fullmatch(value):
        raise SasError(f"{msg['t']} needs {key!r} as 64 lowercase hex digits")
    return bytes.fromhex(value)


class SasExchange:
    """One side of the SAS exchange on one link. See the module docstring.

    ``role`` is ``"offerer"`` (the side that sent the SDP offer; it commits first)
    or ``"answerer"``. ``nonce`` is for tests; by default 32 random bytes.

    Use: the offerer sends what :meth:`start` returns; both sides pass every
    ``sas-*`` message from the peer to :meth:`receive` and send what it returns.
    :attr:`sas` is set once the string is known; :attr:`failure` once it failed.
    """

    def __init__(self, role: Role, local_fingerprint: str, remote_fingerprint: str, *, nonce: bytes | None = None) -> None:
        if role not in ("offerer", "answerer"):
            raise ValueError(f"role must be 'offerer' or 'answerer', not {role!r}")
        nonce = secrets.token_bytes(NONCE_BYTES) if nonce is None else nonce
        if not isinstance(nonce, bytes) or len(nonce) != NONCE_BYTES:
            raise ValueError(f"the nonce must be {NONCE_BYTES} bytes")
        self.role: Role = role
        self.local_fingerprint = local_fingerprint.upper()
        self.remote_fingerprint = remote_fingerprint.upper()
        self._nonce = nonce
        self._peer_commitment: str | None = None  # answerer: the offerer's h
        #: "new", then "committed" (offerer) or "nonce-sent" (answerer), then "done" or "failed".
        self.state = "new"
        #: The six digits, ``"123 456"``, once known.
        self.sas: str | None = None
        #: Why the exchange failed, once it has.
        self.failure: str | None = None

    @property
    def nonce(self) -> bytes:
        """Our own nonce (for tests and diagnostics; the peer learns it during the exchange)."""
        return self._nonce

    def start(self) -> dict[str, Any] | None:
        """The first message to send: the offerer's ``sas-commit``; ``None`` for the answerer."""
        if self.role == "answerer":
            return None
        if self.state != "new":
            raise SasError("the SAS exchange was already started")
        self.state = "committed"
        return {"t": "sas-commit", "h": commitment(self._nonce)}

    def receive(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        """Handle a ``sas-*`` message from the peer; return the reply to send, if any.

        Raises :class:`SasError` for anything wrong: a malformed, unexpected,
        duplicated or out-of-order message, a reveal that does not match its
        commitment, or any message after the exchange failed. After a
        :class:`SasError` the exchange stays failed.
        """
        if self.state == "failed":
            raise SasError(f"the SAS exchange already failed: {self.failure}")
        try:
            return self._receive(msg)
        except SasError as exc:
            self.state, self.failure = "failed", exc.reason
            raise

    def _receive(self, msg: dict[str, Any]) -> dict[str, Any] | None:
        t = msg.get("t") if isinstance(msg, dict) else None
        if not isinstance(t, str) or t not in MESSAGE_TYPES:  # str first: a list is unhashable
            raise SasError("not a message of the SAS exchange")
        if self.state == "done":
            raise SasError(f"{t} after the SAS exchange had finished")
        expected = {
            ("offerer", "new"): "nothing yet (we have not committed)",
            ("offerer", "committed"): "sas-nonce",
            ("answerer", "new"): "sas-commit",
            ("answerer", "nonce-sent"): "sas-reveal",
        }[(self.role, self.state)]
        if t != expected:
            raise SasError(f"{t} arrived out of order; the {self.role} expected {expected}")

        if t == "sas-commit":  # answerer: remember h, answer with our nonce
            self._peer_commitment = _hex_field(msg, "h").hex()
            self.state = "nonce-sent"
            return {"t": "sas-nonce", "n": self._nonce.hex()}
        if t == "sas-nonce":  # offerer: now reveal, and the string is known
            answerer_nonce = _hex_field(msg, "n")
            self._finish(self.local_fingerprint, self.remote_fingerprint, self._nonce, answerer_nonce)
            return {"t": "sas-reveal", "n": self._nonce.hex()}
        # sas-reveal, answerer: the nonce must be the one committed to
        offerer_nonce = _hex_field(msg, "n")
        if commitment(offerer_nonce) != self._peer_commitment:
            raise SasError("the other side's reveal does not match its commitment: someone may be in the middle")
        self._finish(self.remote_fingerprint, self.local_fingerprint, offerer_nonce, self._nonce)
        return None

    def _finish(self, offerer_fp: str, answerer_fp: str, offerer_nonce: bytes, answerer_nonce: bytes) -> None:
        self.sas = derive_sas(offerer_fp, answerer_fp, offerer_nonce, answerer_nonce)
        self.state = "done"
