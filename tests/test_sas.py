"""The short authentication string: commit-then-reveal (ivisit_nb.protocol.sas, ivisit_nb.engine.sas)."""

from __future__ import annotations

import re
from types import SimpleNamespace
from typing import Any

import blake3
import pytest
from hypothesis import given, settings, strategies as st

from ivisit_nb.engine.linkproto import BaseLinkProtocol
from ivisit_nb.engine.sas import SasProtocol
from ivisit_nb.protocol.sas import (
    MESSAGE_TYPES,
    SasError,
    SasExchange,
    commitment,
    derive_sas,
    sdp_fingerprint,
)

FP_A = ":".join(["AB"] * 32)  # the offerer's DTLS fingerprint
FP_B = ":".join(["CD"] * 32)  # the answerer's
FP_M = ":".join(["EE"] * 32)  # a man in the middle's certificate
NONCE_A = bytes(range(32))
NONCE_B = bytes(range(100, 132))
SAS_FORMAT = re.compile(r"\d{3} \d{3}")


def pair(nonce_a: bytes | None = NONCE_A, nonce_b: bytes | None = NONCE_B) -> tuple[SasExchange, SasExchange]:
    return (SasExchange("offerer", FP_A, FP_B, nonce=nonce_a), SasExchange("answerer", FP_B, FP_A, nonce=nonce_b))


def run(offerer: SasExchange, answerer: SasExchange) -> list[dict[str, Any]]:
    """The whole exchange; returns the messages in the order sent."""
    commit = offerer.start()
    nonce = answerer.receive(commit)
    reveal = offerer.receive(nonce)
    assert answerer.receive(reveal) is None
    return [commit, nonce, reveal]


# -- the exchange -------------------------------------------------------------------


def test_both_sides_get_the_same_string() -> None:
    a, b = pair()
    assert b.start() is None  # the answerer never speaks first
    commit, nonce, reveal = run(a, b)
    assert commit == {"t": "sas-commit", "h": blake3.blake3(NONCE_A).hexdigest()}
    assert nonce == {"t": "sas-nonce", "n": NONCE_B.hex()}
    assert reveal == {"t": "sas-reveal", "n": NONCE_A.hex()}
    assert a.sas == b.sas == derive_sas(FP_A, FP_B, NONCE_A, NONCE_B)
    assert SAS_FORMAT.fullmatch(a.sas)
    assert a.state == b.state == "done" and a.failure is b.failure is None
    assert a.nonce == NONCE_A and b.nonce == NONCE_B


def test_the_string_depends_on_everything_and_on_order() -> None:
    base = derive_sas(FP_A, FP_B, NONCE_A, NONCE_B)
    assert derive_sas(FP_A.lower(), FP_B, NONCE_A, NONCE_B) == base  # fingerprints are case-insensitive hex
    others = {
        derive_sas(FP_B, FP_A, NONCE_A, NONCE_B),  # roles swapped
        derive_sas(FP_A, FP_M, NONCE_A, NONCE_B),  # another certificate
        derive_sas(FP_A, FP_B, NONCE_B, NONCE_A),  # nonces swapped
        derive_sas(FP_A, FP_B, NONCE_A, bytes(32)),
        derive_sas(FP_A + FP_B[:3], FP_B[3:], NONCE_A, NONCE_B),  # parts are length-prefixed
    }
    assert base not in others


def test_fresh_nonces_give_fresh_strings() -> None:
    strings = set()
    for _ in range(20):
        a, b = pair(None, None)
        run(a, b)
        assert a.sas == b.sas
        strings.add(a.sas)
    assert len(strings) > 15


def test_wrong_reveal_is_caught() -> None:
    a, b = pair()
    b.receive(a.start())
    a.receive({"t": "sas-nonce", "n": NONCE_B.hex()})
    with pytest.raises(SasError, match="does not match its commitment: someone may be in the middle"):
        b.receive({"t": "sas-reveal", "n": bytes(32).hex()})
    assert b.state == "failed" and b.sas is None
    assert "someone may be in the middle" in b.failure
    with pytest.raises(SasError, match="already failed"):  # and it stays failed
        b.receive({"t": "sas-reveal", "n": NONCE_A.hex()})


def test_a_man_in_the_middle_gets_different_strings() -> None:
    """M terminates DTLS with each user and runs the exchange on both links itself.

    It must commit to (or send) its nonce on each link before it sees that user's,
    so it cannot steer either string; with these fixed nonces they differ.
    """
    alice = SasExchange("offerer", FP_A, FP_M, nonce=NONCE_A)
    m_to_alice = SasExchange("answerer", FP_M, FP_A, nonce=bytes([1]) * 32)
    m_to_bob = SasExchange("offerer", FP_M, FP_B, nonce=bytes([2]) * 32)
    bob = SasExchange("answerer", FP_B, FP_M, nonce=NONCE_B)
    run(alice, m_to_alice)
    run(m_to_bob, bob)
    assert alice.sas != bob.sas
    # relaying the users' own messages instead does not help: the fingerprints differ
    alice, bob = SasExchange("offerer", FP_A, FP_M, nonce=NONCE_A), SasExchange("answerer", FP_B, FP_M, nonce=NONCE_B)
    run(alice, bob)
    assert alice.sas != bob.sas


def test_the_answerer_cannot_change_its_nonce_after_the_reveal_and_the_offerer_cannot_change_its_own() -> None:
    a, b = pair()
    b.receive(a.start())
    a.receive({"t": "sas-nonce", "n": NONCE_B.hex()})
    with pytest.raises(SasError, match="after the SAS exchange had finished"):
        a.receive({"t": "sas-nonce", "n": bytes(32).hex()})
    a2, b2 = pair()
    b2.receive(a2.start())
    with pytest.raises(SasError, match="does not match"):
        b2.receive({"t": "sas-reveal", "n": bytes(range(1, 33)).hex()})


# -- out of order, duplicated, malformed ---------------------------------------------

COMMIT = {"t": "sas-commit", "h": "a" * 64}
NONCE = {"t": "sas-nonce", "n": "b" * 64}
REVEAL = {"t": "sas-reveal", "n": "c" * 64}


@pytest.mark.parametrize(
    "role, started, msg, reason",
    [
        ("offerer", True, COMMIT, "sas-commit arrived out of order; the offerer expected sas-nonce"),
        ("offerer", True, REVEAL, "sas-reveal arrived out of order"),
        ("offerer", False, NONCE, "the offerer expected nothing yet"),  # before our commitment went out
        ("answerer", False, NONCE, "sas-nonce arrived out of order; the answerer expected sas-commit"),
        ("answerer", False, REVEAL, "sas-reveal arrived out of order; the answerer expected sas-commit"),
        ("answerer", False, {"t": "ping"}, "not a message of the SAS exchange"),
        ("answerer", False, ["sas-commit"], "not a message of the SAS exchange"),
        ("answerer", False, None, "not a message of the SAS exchange"),
        ("answerer", False, {"t": ["sas-commit"]}, "not a message of the SAS exchange"),
        ("answerer", False, {"t": {"sas-commit": 1}}, "not a message of the SAS exchange"),
        ("answerer", False, {"t": "sas-commit"}, "needs 'h' as 64 lowercase hex digits"),
        ("answerer", False, {"t": "sas-commit", "h": "a" * 63}, "64 lowercase hex"),
        ("answerer", False, {"t": "sas-commit", "h": "a" * 66}, "64 lowercase hex"),
        ("answerer", False, {"t": "sas-commit", "h": "A" * 64}, "64 lowercase hex"),
        ("answerer", False, {"t": "sas-commit", "h": "g" * 64}, "64 lowercase hex"),
        ("answerer", False, {"t": "sas-commit", "h": "a" * 62 + " a"}, "64 lowercase hex"),
        ("answerer", False, {"t": "sas-commit", "h": "a" * 64 + "\n"}, "64 lowercase hex"),
        ("answerer", False, {"t": "sas-commit", "h": 5}, "64 lowercase hex"),
        ("offerer", True, {"t": "sas-nonce", "n": ["b" * 64]}, "needs 'n' as 64 lowercase hex"),
        ("offerer", True, {"t": "sas-nonce", "n": "\ud800" * 64}, "needs 'n'"),
    ],
)
def test_bad_messages_fail_clearly(role: str, started: bool, msg: Any, reason: str) -> None:
    ex = SasExchange(role, FP_A, FP_B, nonce=NONCE_A)  # type: ignore[arg-type]
    if started:
        ex.start()
    with pytest.raises(SasError, match=re.escape(reason)) as info:
        ex.receive(msg)
    assert ex.state == "failed" and ex.failure == info.value.reason and ex.sas is None


def test_duplicates_fail() -> None:
    a, b = pair()
    commit = a.start()
    b.receive(commit)
    with pytest.raises(SasError, match="sas-commit arrived out of order; the answerer expected sas-reveal"):
        b.receive(commit)
    a, b = pair()
    commit, nonce, reveal = run(a, b)
    with pytest.raises(SasError, match="after the SAS exchange had finished"):
        b.receive(reveal)
    with pytest.raises(SasError, match="already started"):
        a.start()


def test_local_misuse_raises_value_error() -> None:
    with pytest.raises(ValueError, match="role"):
        SasExchange("caller", FP_A, FP_B)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="32 bytes"):
        SasExchange("offerer", FP_A, FP_B, nonce=b"short")


@settings(max_examples=400, deadline=None)
@given(
    st.sampled_from(["offerer", "answerer"]),
    st.booleans(),
    st.lists(
        st.one_of(
            st.none(), st.integers(), st.text(max_size=5),
            st.fixed_dictionaries({"t": st.one_of(st.sampled_from(sorted(MESSAGE_TYPES) + ["x"]), st.lists(st.none(), max_size=1))},
                                  optional={"h": st.one_of(st.text(max_size=70), st.just("a" * 64), st.integers()),
                                            "n": st.one_of(st.text(max_size=70), st.just("b" * 64), st.none())}),
        ),
        max_size=6,
    ),
)
def test_any_input_gives_a_string_or_a_sas_error(role: str, start: bool, msgs: list[Any]) -> None:
    ex = SasExchange(role, FP_A, FP_B)  # type: ignore[arg-type]
    if start:
        ex.start()
    for msg in msgs:
        try:
            reply = ex.receive(msg)
        except SasError:
            assert ex.state == "failed"
            continue
        assert reply is None or reply["t"] in MESSAGE_TYPES
    assert ex.sas is None or SAS_FORMAT.fullmatch(ex.sas)


def test_sdp_fingerprint() -> None:
    sdp = "v=0\r\no=- 1 1 IN IP4 0.0.0.0\r\na=fingerprint:sha-256 ab:cd:EF\r\na=setup:actpass\r\n"
    assert sdp_fingerprint(sdp) == "AB:CD:EF"
    with pytest.raises(ValueError, match="no a=fingerprint"):
        sdp_fingerprint("v=0\r\na=fingerprint:sha-1 AB:CD\r\n")


def test_commitment_is_blake3_of_the_nonce() -> None:
    assert commitment(NONCE_A) == blake3.blake3(NONCE_A).hexdigest() and len(commitment(NONCE_A)) == 64


# -- the link protocol (engine/sas.py) -------------------------------------------------


def _sdp(fp: str) -> SimpleNamespace:
    return SimpleNamespace(sdp=f"v=0\r\na=fingerprint:sha-256 {fp}\r\n")


class FakeLink:
    """What SasProtocol uses of a PeerLink: pc's descriptions, initiator, send, sas."""

    def __init__(self, name: str, initiator: bool, local_fp: str | None, remote_fp: str) -> None:
        self.remote = name
        self.initiator = initiator
        self.pc = SimpleNamespace(localDescription=_sdp(local_fp) if local_fp else None, remoteDescription=_sdp(remote_fp))
        self.sas: str | None = None
        self.sent: list[dict[str, Any]] = []

    def send(self, msg: dict[str, Any]) -> bool:
        self.sent.append(msg)
        return True


class Side:
    def __init__(self, link: FakeLink) -> None:
        self.link = link
        self.ready: list[str] = []
        self.failures: list[str] = []
        self.proto = SasProtocol(on_ready=lambda l: self.ready.append(l.sas), on_failure=lambda l, r: self.failures.append(r))


def make_sides(fp_seen_by_a: str = FP_B, fp_seen_by_b: str = FP_A) -> tuple[Side, Side]:
    return Side(FakeLink("bob", True, FP_A, fp_seen_by_a)), Side(FakeLink("alice", False, FP_B, fp_seen_by_b))


def deliver(src: Side, dst: Side) -> int:
    """Pass what src sent to dst's protocol; how many messages."""
    msgs, src.link.sent = src.link.sent, []
    for m in msgs:
        dst.proto.on_control(dst.link, m)
    return len(msgs)


def test_protocol_declares_its_types() -> None:
    proto = SasProtocol(lambda l: None, lambda l, r: None)
    assert isinstance(proto, BaseLinkProtocol)
    assert proto.control_types == {"sas-commit", "sas-nonce", "sas-reveal"} and not proto.frame_types


def test_two_links_agree() -> None:
    a, b = make_sides()
    a.proto.on_link_up(a.link)
    b.proto.on_link_up(b.link)
    assert [m["t"] for m in a.link.sent] == ["sas-commit"] and not b.link.sent
    while deliver(a, b) + deliver(b, a):
        pass
    assert a.link.sas and a.link.sas == b.link.sas and SAS_FORMAT.fullmatch(a.link.sas)
    assert a.ready == [a.link.sas] and b.ready == [b.link.sas]  # on_ready once each
    assert not a.failures and not b.failures


def test_messages_before_link_up_are_queued() -> None:
    a, b = make_sides()
    a.proto.on_link_up(a.link)
    deliver(a, b)  # the commit reaches bob before his control channel reports open
    assert not b.link.sent and b.proto.exchange is None
    b.proto.on_link_up(b.link)
    assert [m["t"] for m in b.link.sent] == ["sas-nonce"]
    while deliver(b, a) + deliver(a, b):
        pass
    assert a.link.sas == b.link.sas is not None


def test_a_man_in_the_middle_makes_the_strings_differ() -> None:
    a, b = make_sides(fp_seen_by_a=FP_M, fp_seen_by_b=FP_M)  # each sees M's certificate
    a.proto.on_link_up(a.link)
    b.proto.on_link_up(b.link)
    while deliver(a, b) + deliver(b, a):  # M relays the SAS messages unchanged
        pass
    assert a.link.sas and b.link.sas and a.link.sas != b.link.sas


def test_a_forged_reveal_fails_the_link() -> None:
    a, b = make_sides()
    a.proto.on_link_up(a.link)
    b.proto.on_link_up(b.link)
    deliver(a, b)
    deliver(b, a)
    a.link.sent = [{"t": "sas-reveal", "n": "0" * 64}]  # M swaps the reveal
    deliver(a, b)
    assert b.link.sas is None and not b.ready
    assert b.failures == ["the other side's reveal does not match its commitment: someone may be in the middle"]
    b.proto.on_control(b.link, {"t": "sas-reveal", "n": "0" * 64})  # later messages: ignored, no second failure
    assert len(b.failures) == 1


def test_duplicate_after_success_fails() -> None:
    a, b = make_sides()
    a.proto.on_link_up(a.link)
    b.proto.on_link_up(b.link)
    deliver(a, b)
    deliver(b, a)
    reveal = a.link.sent[0]
    deliver(a, b)
    b.proto.on_control(b.link, reveal)
    assert b.ready and b.failures == ["sas-reveal after the SAS exchange had finished"]


def test_unreadable_fingerprint_fails() -> None:
    side = Side(FakeLink("bob", True, None, FP_B))
    side.proto.on_link_up(side.link)
    assert len(side.failures) == 1 and "cannot read the DTLS fingerprints" in side.failures[0]
    assert not side.link.sent and side.link.sas is None


def test_a_flood_before_link_up_fails() -> None:
    b = make_sides()[1]
    for _ in range(5):
        b.proto.on_control(b.link, {"t": "sas-commit", "h": "a" * 64})
    assert b.failures == ["too many short-authentication messages before the link was up"]
    b.proto.on_link_up(b.link)
    assert not b.link.sent


def test_nothing_after_link_down() -> None:
    a, b = make_sides()
    a.proto.on_link_up(a.link)
    deliver(a, b)
    b.proto.on_link_down(b.link)
    b.proto.on_link_up(b.link)
    assert not b.link.sent and not b.failures and b.link.sas is None
