"""Time, lanes and sealing in the sans-I/O sharing protocol: deterministic, no aiortc, no waiting.

Time is whatever number the test passes as ``now``.
"""

from __future__ import annotations

import uuid

import pytest

from ivisit_nb.protocol.sharing import (
    AllBytesReceived,
    OfferAccepted,
    OfferExpired,
    OfferReceived,
    ProtocolViolation,
    SharingProtocol,
    TransferFailed,
    content_hash,
)

DATA = b"C" * 1000
HASH = content_hash(DATA)


def new_id() -> str:
    return uuid.uuid4().hex


def frame(tid: str, offset: int, payload: bytes) -> bytes:
    return b"\x01" + bytes.fromhex(tid) + offset.to_bytes(8, "big") + payload


def deliver(src: SharingProtocol, dst: SharingProtocol, now: float) -> None:
    for msg in src.take_control():
        dst.receive_control(msg, now)
    for f in src.take_data():
        dst.receive_data(f, now)


@pytest.fixture
def pair() -> tuple[SharingProtocol, SharingProtocol]:
    opts = dict(stall_timeout=30.0, offer_timeout=120.0, answer_grace=10.0, now=0.0)
    return SharingProtocol("alice", "bob", **opts), SharingProtocol("bob", "alice", **opts)


def accepted(pair, now: float = 0.0) -> str:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x.bin", len(DATA), HASH, now=now)
    deliver(alice, bob, now)
    bob.take_events()
    bob.accept(tid, now=now)
    deliver(bob, alice, now)
    alice.take_events()
    alice.start_sending(tid, 0, now=now)
    return tid


def test_no_timer_without_transfers(pair):
    alice, bob = pair
    assert alice.get_timer() is None and bob.get_timer() is None


def test_an_unanswered_offer_expires_at_the_receiver_then_the_sender_gives_up(pair):
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x.bin", 3, content_hash(b"abc"), now=5.0)
    deliver(alice, bob, 5.0)
    assert isinstance(bob.take_events()[0], OfferReceived)
    assert bob.get_timer() == 125.0 and alice.get_timer() == 135.0
    bob.handle_timer(124.9)
    assert bob.take_events() == [] and bob.state(tid) == "offered"
    bob.handle_timer(125.0)
    assert bob.take_events() == [OfferExpired(tid)]
    assert bob.take_control() == [{"t": "refuse", "id": tid, "reason": "bob did not answer within 120 s"}]
    assert bob.get_timer() is None
    # the refuse was lost: the sender gives up by itself, answer_grace later
    alice.handle_timer(135.0)
    assert alice.take_events() == [TransferFailed(tid, "bob did not answer the offer", by_peer=False)]
    assert alice.take_control()[0]["t"] == "cancel"
    assert alice.state(tid) == "failed"


def test_fewer_bytes_then_silence_fails_after_the_stall_timeout(pair):
    alice, bob = pair
    tid = accepted(pair, now=0.0)
    alice.send_chunk(tid, 0, DATA[:400], now=10.0)
    deliver(alice, bob, 10.0)
    assert bob.get_timer() == 40.0  # 30 s after the last bytes
    bob.handle_timer(39.0)
    assert bob.state(tid) == "accepted"
    bob.handle_timer(40.0)
    events = bob.take_events()
    assert events[-1] == TransferFailed(tid, "no progress from alice for 30 s", by_peer=False)
    [fail] = bob.take_control()
    assert fail == {"t": "fail", "id": tid, "reason": "no progress from alice for 30 s"}
    alice.receive_control(fail, 41.0)
    assert alice.take_events()[-1] == TransferFailed(tid, "no progress from alice for 30 s", by_peer=True)


def test_progress_pushes_the_stall_deadline(pair):
    alice, bob = pair
    tid = accepted(pair, now=0.0)
    for i, now in enumerate((20.0, 45.0, 70.0)):
        alice.send_chunk(tid, i * 100, DATA[i * 100 : (i + 1) * 100], now=now)
        deliver(alice, bob, now)
        bob.handle_timer(now)
    assert bob.state(tid) == "accepted" and bob.get_timer() == 100.0
    assert alice.get_timer() == 100.0  # the sender's clock runs on what it sent


def test_a_sender_whose_receiver_stops_reading_fails(pair):
    alice, bob = pair
    tid = accepted(pair, now=0.0)
    alice.send_chunk(tid, 0, DATA[:100], now=1.0)
    alice.handle_timer(31.0)
    assert alice.take_events() == [TransferFailed(tid, "no progress from bob for 30 s", by_peer=False)]


def test_verifying_is_not_a_stall(pair):
    alice, bob = pair
    tid = accepted(pair, now=0.0)
    alice.send_chunk(tid, 0, DATA, now=1.0)
    deliver(alice, bob, 1.0)
    assert isinstance(bob.take_events()[-1], AllBytesReceived)
    assert bob.get_timer() is None  # our own verify and place, however slow
    bob.handle_timer(1000.0)
    assert bob.state(tid) == "received"


def test_bytes_beyond_the_size_fail_before_sealing_and_are_ignored_after(pair):
    alice, bob = pair
    tid = accepted(pair)
    bob.receive_data(frame(tid, 0, DATA), 1.0)
    bob.receive_data(frame(tid, len(DATA), b"more"), 1.0)
    assert bob.take_events()[-1] == TransferFailed(tid, "more bytes than declared", by_peer=False)
    assert bob.seal(tid) is False  # so nothing is placed

    alice2, bob2 = SharingProtocol("alice", "bob"), SharingProtocol("bob", "alice")
    tid2 = accepted((alice2, bob2))
    bob2.receive_data(frame(tid2, 0, DATA), 1.0)
    assert bob2.seal(tid2) is True
    bob2.receive_data(frame(tid2, len(DATA), b"more"), 1.0)
    assert isinstance(bob2.take_events()[-1], ProtocolViolation)
    assert bob2.state(tid2) == "sealed"
    bob2.complete(tid2)
    assert bob2.state(tid2) == "done"


def test_lanes_are_negotiated(pair):
    alice = SharingProtocol("alice", "bob", lanes=("direct", "datachannel"))
    bob = SharingProtocol("bob", "alice", lanes=("datachannel",))
    tid = new_id()
    alice.offer(tid, "file", "x.bin", 3, content_hash(b"abc"))
    [offer] = alice.take_control()
    assert offer["v"] == 2 and offer["lanes"] == ["direct", "datachannel"]
    bob.receive_control(offer)
    assert bob.take_events()[0].lanes == ("direct", "datachannel")
    bob.accept(tid)  # bob only has the data channel
    deliver(bob, alice, 0.0)
    assert alice.take_events() == [OfferAccepted(tid, 0, None, "datachannel")]


def test_an_older_peer_without_lanes_gets_the_data_channel():
    bob = SharingProtocol("bob", "alice", lanes=("direct", "datachannel"))
    tid = new_id()
    v1_offer = {"t": "offer", "id": tid, "kind": "file", "name": "x", "size": 3, "hash": content_hash(b"abc")}
    bob.receive_control(v1_offer)
    assert bob.take_events()[0].lanes == ("datachannel",)
    bob.accept(tid)
    assert bob.take_control()[0]["lane"] == "datachannel"


def test_an_accept_on_a_lane_not_offered_fails_the_transfer():
    alice = SharingProtocol("alice", "bob")
    tid = new_id()
    alice.offer(tid, "file", "x.bin", 3, content_hash(b"abc"))
    alice.take_control()
    alice.receive_control({"t": "accept", "id": tid, "offset": 0, "prefix_hash": None, "lane": "carrier-pigeon"})
    events = alice.take_events()
    assert isinstance(events[0], ProtocolViolation) and "not offered" in events[0].reason
    assert alice.state(tid) == "failed"


@pytest.mark.parametrize("lanes", [[], "datachannel", [1], ["UPPER"], ["x"] * 9, [None]])
def test_malformed_lane_lists_refuse_the_offer(lanes):
    bob = SharingProtocol("bob", "alice")
    tid = new_id()
    bob.receive_control({"t": "offer", "id": tid, "kind": "file", "name": "x", "size": 3,
                         "hash": content_hash(b"abc"), "lanes": lanes})
    assert bob.take_control()[0]["t"] == "refuse"
    assert isinstance(bob.take_events()[0], ProtocolViolation)


def test_peer_strings_are_cleaned():
    bob = SharingProtocol("bob", "alice")
    tid = new_id()
    bob.receive_control({"t": "offer", "id": tid, "kind": "file", "name": "sur\ud800rogate\u202e.txt",
                         "size": 3, "hash": content_hash(b"abc")})
    name = bob.take_events()[0].name
    name.encode("utf-8")  # valid Unicode now
    assert "\u202e" not in name and name.startswith("sur")
    bob.receive_control({"t": "cancel", "id": tid, "reason": "bye\ud800"})
    bob.take_events()[-1].reason.encode("utf-8")


def test_a_5000_byte_url_can_be_offered():
    alice, bob = SharingProtocol("alice", "bob"), SharingProtocol("bob", "alice")
    url = "https://example.org/" + "a" * 4980
    tid = new_id()
    alice.offer(tid, "url", url, 0, content_hash(url.encode()), url=url)
    deliver(alice, bob, 0.0)
    assert bob.take_events()[0].url == url


def test_a_sealed_transfer_is_past_cancelling(pair):
    alice, bob = pair
    tid = accepted(pair)
    bob.receive_data(frame(tid, 0, DATA), 1.0)
    assert bob.seal(tid)
    bob.receive_control({"t": "cancel", "id": tid, "reason": "too late"}, 2.0)
    bob.receive_control({"t": "fail", "id": tid, "reason": "too late"}, 2.0)
    bob.cancel(tid, "the user pressed Stop")  # also too late
    assert bob.state(tid) == "sealed" and bob.take_control() == []
    bob.complete(tid)
    assert bob.take_control() == [{"t": "done", "id": tid}]
