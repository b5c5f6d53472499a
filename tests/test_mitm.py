"""A room server that bridges the link (a real man in the middle) cannot make the SAS agree.

The malicious server (tests/mitm.py) terminates each honest side's WebRTC link with
its own aiortc peer connection and relays the control channel between the two legs,
so alice and bob really are linked to it, not to each other, and the SAS exchange
(sas-commit / sas-nonce / sas-reveal) still runs end to end through it. Each side
derives its string from the two certificates it actually sees, its own and the
MITM's, so the strings differ (unless the MITM is lucky: one chance in 10^6 a link).
A control run with the honest room server shows the strings do match there.
"""

from __future__ import annotations

import secrets
from typing import Any

import pytest
from helpers import wait_until
from mitm import TO_ANSWERER, TO_OFFERER, Bridge, MitmRoomServer

from ivisit_nb import events as ev
from ivisit_nb.protocol.sas import commitment, derive_sas, sdp_fingerprint

RUNS = 20  # links bridged by the MITM, each a fresh pair of links with fresh certificates and nonces
LINK_TIMEOUT = 30.0  # generous: 2 busy cores


@pytest.fixture
def mitm():
    with MitmRoomServer() as server:
        yield server
        server.close_bridges()


def _link(session: Any, other: str) -> Any:
    peer = session.peers.get(other)
    return peer.link if peer is not None else None


def _new_links(alice: Any, bob: Any, seen: list[Any], *, need_bob_sas: bool = True) -> tuple[Any, Any]:
    """Wait for a link alice->bob and bob->alice not in ``seen`` (alice's with its SAS, bob's with
    its SAS or, if not ``need_bob_sas``, failed); fail at once, with the reason, if one fails otherwise."""

    def ready() -> tuple[Any, Any] | None:
        a, b = _link(alice, "bob"), _link(bob, "alice")
        if a is None or b is None or any(a is s or b is s for s in seen):
            return None
        for link in (a, b):
            if link.state == "failed" and (need_bob_sas or link is a):
                raise AssertionError(f"{link!r} failed: {link.reason}")
        if a.sas is None:
            return None
        if b.sas is not None or (not need_bob_sas and b.state == "failed"):
            return a, b
        return None

    return wait_until(ready, timeout=LINK_TIMEOUT)


def _fingerprints(link: Any) -> tuple[str, str]:
    """(our certificate, the certificate we see as the peer's) of a link."""
    return sdp_fingerprint(link.pc.localDescription.sdp), sdp_fingerprint(link.pc.remoteDescription.sdp)


def _bridge_of(mitm: MitmRoomServer, alice_link: Any) -> Bridge:
    _, seen_by_alice = _fingerprints(alice_link)
    matches = [b for b in list(mitm.bridges) if b.mitm_to_offerer_fingerprint == seen_by_alice]
    assert len(matches) == 1, "alice's link does not end at exactly one of the MITM's bridges"
    return matches[0]


def _check_bridged(mitm: MitmRoomServer, a: Any, b: Any) -> Bridge:
    """Both links really end at the MITM, and each SAS is the one derived from what that side saw."""
    alice_fp, alice_sees = _fingerprints(a)
    bob_fp, bob_sees = _fingerprints(b)
    bridge = _bridge_of(mitm, a)
    assert (bridge.offerer, bridge.answerer) == ("alice", "bob")
    assert bridge.offerer_fingerprint == alice_fp and bridge.answerer_fingerprint == bob_fp
    assert bridge.mitm_to_answerer_fingerprint == bob_sees
    assert alice_sees != bob_fp and bob_sees != alice_fp  # neither sees the other's certificate
    assert a.initiator and not b.initiator

    commit = bridge.delivered(TO_ANSWERER, "sas-commit")
    nonce = bridge.delivered(TO_OFFERER, "sas-nonce")
    reveal = bridge.delivered(TO_ANSWERER, "sas-reveal")
    assert commit and nonce and reveal, f"the SAS exchange did not pass through the MITM: {bridge.relayed}"
    n_alice, n_bob = bytes.fromhex(reveal["n"]), bytes.fromhex(nonce["n"])
    assert commitment(n_alice) == commit["h"]
    assert a.sas == derive_sas(alice_fp, alice_sees, n_alice, n_bob)  # alice: her certificate and the MITM's
    return bridge


def test_bridging_mitm_gets_different_strings(mitm, make_session) -> None:
    alice = make_session(mitm.url, "alice")
    bob = make_session(mitm.url, "bob")
    seen: list[Any] = []
    strings = []
    for run in range(RUNS):
        if run:
            mitm.relink()  # both hear the other leave and join again: fresh links, certificates, nonces
        a, b = _new_links(alice, bob, seen)
        seen += [a, b]
        bridge = _check_bridged(mitm, a, b)
        bob_fp, bob_sees = _fingerprints(b)
        n_alice = bytes.fromhex(bridge.delivered(TO_ANSWERER, "sas-reveal")["n"])
        n_bob = bytes.fromhex(bridge.delivered(TO_OFFERER, "sas-nonce")["n"])
        assert b.sas == derive_sas(bob_sees, bob_fp, n_alice, n_bob)  # bob: the MITM's certificate and his
        assert alice.peers["bob"].sas == a.sas and bob.peers["alice"].sas == b.sas
        assert a.sas != b.sas, f"run {run}: the MITM got lucky (1 in 10^6) or the SAS ignores the certificates"
        strings.append((a.sas, b.sas))
        if run == 0:
            # the bridge is transparent otherwise: heartbeats and chat get through it
            wait_until(lambda: a.rtt is not None and b.rtt is not None, timeout=LINK_TIMEOUT)
            assert alice.say("through the middle", to="bob").wait(10) == ["bob"]
            wait_until(lambda: "through the middle" in list(bob.messages["text"]), timeout=LINK_TIMEOUT)
    assert len(mitm.bridges) >= RUNS
    assert len({s for pair in strings for s in pair}) > RUNS  # fresh nonces: fresh strings each run


def test_mitm_rewriting_the_reveal_fails_the_commitment(mitm, make_session) -> None:
    alice = make_session(mitm.url, "alice")
    bob = make_session(mitm.url, "bob")
    seen: list[Any] = list(_new_links(alice, bob, []))  # an untouched link first

    failures: list[ev.PeerStateChanged] = []
    bob.on(lambda e: failures.append(e) if isinstance(e, ev.PeerStateChanged) and e.state == "failed" else None)

    def rewrite_reveal(bridge: Bridge, direction: str, msg: dict[str, Any]) -> dict[str, Any]:
        if direction == TO_ANSWERER and msg.get("t") == "sas-reveal":
            return {"t": "sas-reveal", "n": secrets.token_hex(32)}  # not the nonce alice committed to
        return msg

    mitm.tamper = rewrite_reveal
    mitm.relink()
    a, b = _new_links(alice, bob, seen, need_bob_sas=False)
    failure = wait_until(lambda: next((e for e in list(failures) if e.user == "alice"), None), timeout=LINK_TIMEOUT)
    assert "commitment" in failure.reason, failure.reason
    assert b.state == "failed" and "commitment" in b.reason and b.sas is None
    assert a.sas is not None  # alice learnt bob's nonce before revealing, so she has a string to compare

    bridge = _bridge_of(mitm, a)
    received = next(m for d, m, _ in bridge.relayed if d == TO_ANSWERER and m.get("t") == "sas-reveal")
    delivered = bridge.delivered(TO_ANSWERER, "sas-reveal")
    assert commitment(bytes.fromhex(received["n"])) == bridge.delivered(TO_ANSWERER, "sas-commit")["h"]
    assert delivered["n"] != received["n"]


def test_honest_relay_strings_match(server, make_session) -> None:
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob")
    a, b = _new_links(alice, bob, [])
    alice_fp, alice_sees = _fingerprints(a)
    bob_fp, bob_sees = _fingerprints(b)
    assert alice_sees == bob_fp and bob_sees == alice_fp  # a direct link: each sees the other's certificate
    assert alice.peers["bob"].sas == bob.peers["alice"].sas == a.sas
