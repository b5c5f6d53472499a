"""Short authentication string (SAS) from the two DTLS fingerprints of a link.

Both users read the same six digits only if each side's DTLS certificate is the
one the other side sees. A room server that rewrites the SDP to put itself in the
middle changes at least one fingerprint, so the strings differ. No I/O here.
"""

from __future__ import annotations

import hashlib
import re

_FINGERPRINT = re.compile(r"^a=fingerprint:sha-256\s+([0-9A-Fa-f:]+)\s*$", re.MULTILINE)


def sdp_fingerprint(sdp: str) -> str:
    """The sha-256 DTLS fingerprint in an SDP, upper-case hex with colons."""
    m = _FINGERPRINT.search(sdp)
    if not m:
        raise ValueError("SDP has no a=fingerprint:sha-256 line")
    return m.group(1).upper()


def short_auth_string(offerer_fingerprint: str, answerer_fingerprint: str) -> str:
    """Six digits, as ``"123 456"``, from the offerer's then the answerer's fingerprint.

    The order is by role, so both ends compute the same string, and swapping or
    replacing either fingerprint gives a different one.
    """
    material = f"ivisit-nb-sas-v1\n{offerer_fingerprint.upper()}\n{answerer_fingerprint.upper()}"
    value = int.from_bytes(hashlib.sha256(material.encode()).digest()[:8], "big") % 1_000_000
    digits = f"{value:06d}"
    return f"{digits[:3]} {digits[3:]}"
