"""The sans-I/O sharing protocol: two protocol objects wired back to back."""

from __future__ import annotations

import uuid
from typing import Any

import pytest
from hypothesis import given, settings, strategies as st

from ivisit_nb.protocol.sharing import (
    HEADER_LEN,
    AllBytesReceived,
    ChunkReceived,
    OfferAccepted,
    OfferFlooded,
    OfferHad,
    OfferReceived,
    OfferRefused,
    ProtocolViolation,
    SharingProtocol,
    SharingStateError,
    TransferCancelled,
    TransferDone,
    TransferFailed,
    content_hash,
)

CONTENT = bytes(range(256)) * 40  # 10240 bytes
HASH = content_hash(CONTENT)
CHUNK = 4096


def new_id() -> str:
    return uuid.uuid4().hex


def pump(a: SharingProtocol, b: SharingProtocol) -> None:
    """Deliver everything each side has to send to the other, until quiet."""
    while True:
        moved = False
        for src, dst in ((a, b), (b, a)):
            for msg in src.take_control():
                dst.receive_control(msg)
                moved = True
            for frame in src.take_data():
                dst.receive_data(frame)
                moved = True
        if not moved:
            return


@pytest.fixture
def pair() -> tuple[SharingProtocol, SharingProtocol]:
    return SharingProtocol("alice", "bob"), SharingProtocol("bob", "alice")


def send_all(sender: SharingProtocol, tid: str, data: bytes, start: int = 0) -> None:
    for off in range(start, len(data), CHUNK):
        assert sender.send_chunk(tid, off, data[off : off + CHUNK])


def received_bytes(events: list[Any]) -> bytearray:
    """Apply ChunkReceived events the way the adapter does (offset 0 truncates)."""
    buf = bytearray()
    for e in events:
        if isinstance(e, ChunkReceived):
            if e.offset == 0:
                buf.clear()
            assert e.offset == len(buf)
            buf += e.data
    return buf


def frame(tid: str, offset: int, payload: bytes) -> bytes:
    return b"\x01" + bytes.fromhex(tid) + offset.to_bytes(8, "big") + payload


# -- full flows ------------------------------------------------------------------


def test_offer_accept_chunks_done(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "notes.txt", len(CONTENT), HASH)
    pump(alice, bob)
    assert bob.take_events() == [OfferReceived(tid, "file", "notes.txt", len(CONTENT), HASH, None)]
    assert bob.pending_offers == 1

    bob.accept(tid)
    pump(alice, bob)
    assert alice.take_events() == [OfferAccepted(tid, 0, None)]
    alice.start_sending(tid, 0)
    send_all(alice, tid, CONTENT)
    pump(alice, bob)
    events = bob.take_events()
    assert isinstance(events[-1], AllBytesReceived)
    assert bytes(received_bytes(events)) == CONTENT
    assert bob.state(tid) == "received"

    bob.complete(tid)
    pump(alice, bob)
    assert alice.take_events() == [TransferDone(tid)]
    assert alice.state(tid) == bob.state(tid) == "done"
    assert alice.live_transfers() == bob.live_transfers() == []


def test_wire_format(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "a.bin", 3, content_hash(b"abc"))
    [offer] = alice.take_control()
    assert offer == {"t": "offer", "v": 2, "id": tid, "kind": "file", "name": "a.bin", "size": 3,
                     "hash": content_hash(b"abc"), "lanes": ["datachannel"]}
    bob.receive_control(offer)
    bob.accept(tid)
    assert bob.take_control() == [{"t": "accept", "id": tid, "offset": 0, "prefix_hash": None, "lane": "datachannel"}]
    alice.receive_control({"t": "accept", "id": tid, "offset": 0, "prefix_hash": None})
    alice.start_sending(tid, 0)
    alice.send_chunk(tid, 0, b"abc")
    [data] = alice.take_data()
    assert data == b"\x01" + uuid.UUID(tid).bytes + (0).to_bytes(8, "big") + b"abc"
    assert len(data) == HEADER_LEN + 3


def test_send_framed_writes_the_header_in_place_and_checks_like_send_chunk(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "a.bin", 5, content_hash(b"abcde"))
    pump(alice, bob)
    bob.accept(tid)
    pump(bob, alice)
    alice.start_sending(tid, 0)
    buf = bytearray(HEADER_LEN + 3)
    buf[HEADER_LEN:] = b"abc"  # as if read from the file into the frame
    assert alice.send_framed(tid, 0, memoryview(buf))
    [frame] = alice.take_data()
    assert bytes(frame) == b"\x01" + uuid.UUID(tid).bytes + (0).to_bytes(8, "big") + b"abc"
    assert frame.obj is buf  # no copy: the frame is the caller's buffer
    with pytest.raises(ValueError, match="next byte to send is 3"):
        alice.send_framed(tid, 0, memoryview(bytearray(HEADER_LEN + 2)))
    with pytest.raises(ValueError, match="beyond the offered size"):
        alice.send_framed(tid, 3, memoryview(bytearray(HEADER_LEN + 3)))
    with pytest.raises(ValueError, match="empty chunk"):
        alice.send_framed(tid, 3, memoryview(bytearray(HEADER_LEN)))
    bob.receive_data(frame)
    assert bob.take_events()  # the receiver reads it like any frame


def test_url_offer(pair) -> None:
    alice, bob = pair
    tid, url = new_id(), "https://example.org/page"
    alice.offer(tid, "url", url, 0, content_hash(url.encode()), url=url)
    pump(alice, bob)
    assert bob.take_events() == [OfferReceived(tid, "url", url, 0, content_hash(url.encode()), url)]
    bob.accept(tid)
    assert bob.take_events() == [AllBytesReceived(tid)]
    bob.complete(tid)
    pump(alice, bob)
    assert alice.take_events() == [OfferAccepted(tid, 0, None), TransferDone(tid)]


def test_zero_size_file(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "empty", 0, content_hash(b""))
    pump(alice, bob)
    bob.take_events()
    bob.accept(tid)
    assert bob.take_events() == [AllBytesReceived(tid)]
    bob.complete(tid)
    pump(alice, bob)
    assert alice.take_events() == [OfferAccepted(tid, 0, None), TransferDone(tid)]


def test_refuse(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x", 1, content_hash(b"x"))
    pump(alice, bob)
    bob.refuse(tid, "bob is not receiving files")
    pump(alice, bob)
    assert alice.take_events() == [OfferRefused(tid, "bob is not receiving files")]
    assert alice.state(tid) == "refused"
    alice.start_sending(tid, 0)  # finished: the late call does nothing
    assert alice.send_chunk(tid, 0, b"x") is False
    assert alice.take_data() == [] and alice.state(tid) == "refused"


def test_have(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x", len(CONTENT), HASH)
    pump(alice, bob)
    bob.have(tid)
    pump(alice, bob)
    assert alice.take_events() == [OfferHad(tid)]
    assert alice.take_data() == [] and alice.state(tid) == "had" and bob.state(tid) == "had"


def test_sender_cancels_before_answer(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x", 1, content_hash(b"x"))
    pump(alice, bob)
    bob.take_events()
    alice.cancel(tid, "changed my mind")
    pump(alice, bob)
    assert bob.take_events() == [TransferCancelled(tid, "changed my mind", by_peer=True)]
    assert bob.pending_offers == 0
    bob.accept(tid)  # the user clicked accept too late: nothing happens
    assert bob.take_control() == []


def test_sender_cancels_mid_transfer(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x", len(CONTENT), HASH)
    pump(alice, bob)
    bob.accept(tid)
    pump(alice, bob)
    alice.start_sending(tid, 0)
    alice.send_chunk(tid, 0, CONTENT[:CHUNK])
    alice.cancel(tid, "stopped")
    pump(alice, bob)
    events = bob.take_events()
    assert events[-1] == TransferCancelled(tid, "stopped", by_peer=True)
    assert bob.state(tid) == "cancelled"


def test_receiver_cancels_mid_transfer_late_chunks_ignored(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x", len(CONTENT), HASH)
    pump(alice, bob)
    bob.accept(tid)
    pump(alice, bob)
    alice.take_events()
    alice.start_sending(tid, 0)
    alice.send_chunk(tid, 0, CONTENT[:CHUNK])
    in_flight = alice.take_data()
    bob.cancel(tid, "closed the viewer")
    pump(alice, bob)
    assert alice.take_events() == [TransferCancelled(tid, "closed the viewer", by_peer=True)]
    assert alice.send_chunk(tid, CHUNK, CONTENT[CHUNK : 2 * CHUNK]) is False
    bob.take_events()
    for f in in_flight:  # bytes still on the wire after the cancel
        bob.receive_data(f)
    assert bob.take_events() == [] and bob.take_control() == []


def test_receiver_fails_on_bad_hash(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x", 3, content_hash(b"abc"))
    pump(alice, bob)
    bob.accept(tid)
    pump(alice, bob)
    alice.start_sending(tid, 0)
    alice.send_chunk(tid, 0, b"abd")
    pump(alice, bob)
    assert isinstance(bob.take_events()[-1], AllBytesReceived)
    bob.fail(tid, "hash mismatch")
    pump(alice, bob)
    assert alice.take_events()[-1] == TransferFailed(tid, "hash mismatch", by_peer=True)
    assert alice.state(tid) == "failed"


def test_resume_from_offset(pair) -> None:
    alice, bob = pair
    tid, held = new_id(), 5000
    alice.offer(tid, "file", "x", len(CONTENT), HASH)
    pump(alice, bob)
    bob.accept(tid, held, content_hash(CONTENT[:held]))
    pump(alice, bob)
    [accepted] = alice.take_events()
    assert accepted == OfferAccepted(tid, held, content_hash(CONTENT[:held]))
    # the adapter compares the prefix hash with its own file: it matches
    assert accepted.prefix_hash == content_hash(CONTENT[: accepted.offset])
    alice.start_sending(tid, held)
    for off in range(held, len(CONTENT), CHUNK):
        alice.send_chunk(tid, off, CONTENT[off : off + CHUNK])
    pump(alice, bob)
    events = bob.take_events()
    chunks = [e for e in events if isinstance(e, ChunkReceived)]
    assert chunks[0].offset == held
    assert bytes(CONTENT[:held]) + b"".join(c.data for c in chunks) == CONTENT
    assert isinstance(events[-1], AllBytesReceived)
    bob.complete(tid)
    pump(alice, bob)
    assert alice.take_events() == [TransferDone(tid)]


def test_restart_from_zero_on_prefix_mismatch(pair) -> None:
    alice, bob = pair
    tid, held = new_id(), 5000
    alice.offer(tid, "file", "x", len(CONTENT), HASH)
    pump(alice, bob)
    bob.accept(tid, held, content_hash(b"something else"))
    pump(alice, bob)
    [accepted] = alice.take_events()
    assert accepted.prefix_hash != content_hash(CONTENT[:held])
    with pytest.raises(ValueError, match="0 or the accepted offset"):
        alice.start_sending(tid, 17)
    alice.start_sending(tid, 0)
    send_all(alice, tid, CONTENT)
    pump(alice, bob)
    events = bob.take_events()
    first = next(e for e in events if isinstance(e, ChunkReceived))
    assert first.offset == 0  # the adapter truncates its part file
    assert bytes(received_bytes(events)) == CONTENT
    assert isinstance(events[-1], AllBytesReceived)


def test_restart_only_as_first_frame(pair) -> None:
    alice, bob = pair
    tid, held = new_id(), 5000
    alice.offer(tid, "file", "x", len(CONTENT), HASH)
    pump(alice, bob)
    bob.accept(tid, held, content_hash(CONTENT[:held]))
    pump(alice, bob)
    bob.take_events()
    bob.receive_data(frame(tid, held, CONTENT[held : held + 10]))
    bob.receive_data(frame(tid, 0, CONTENT[:10]))  # a jump back after resuming: not allowed
    events = bob.take_events()
    assert isinstance(events[0], ChunkReceived)
    assert isinstance(events[1], ProtocolViolation) and "expected 5010" in events[1].reason
    assert isinstance(events[2], TransferFailed) and not events[2].by_peer


# -- local misuse raises --------------------------------------------------------------


def test_local_misuse(pair) -> None:
    alice, bob = pair
    tid = new_id()
    with pytest.raises(ValueError, match="32 lowercase hex"):
        alice.offer("not-an-id", "file", "x", 1, HASH)
    with pytest.raises(ValueError, match="hash"):
        alice.offer(tid, "file", "x", 1, "sha256:abc")
    with pytest.raises(ValueError, match="scheme 'javascript'"):
        u = "javascript:alert(1)"
        alice.offer(tid, "url", u, 0, content_hash(u.encode()), url=u)
    alice.offer(tid, "file", "x", 10, HASH)
    with pytest.raises(ValueError, match="already used"):
        alice.offer(tid, "file", "x", 10, HASH)
    with pytest.raises(SharingStateError, match="while it is offered"):
        alice.send_chunk(tid, 0, b"x")
    with pytest.raises(SharingStateError, match="we are sending it"):
        alice.accept(tid)
    with pytest.raises(SharingStateError, match="no transfer"):
        alice.cancel(new_id(), "x")
    pump(alice, bob)
    with pytest.raises(ValueError, match="prefix_hash"):
        bob.accept(tid, 5)
    with pytest.raises(ValueError, match="resume offset"):
        bob.accept(tid, 10, HASH)
    bob.accept(tid)
    pump(alice, bob)
    alice.start_sending(tid, 0)
    with pytest.raises(ValueError, match="next byte to send is 0"):
        alice.send_chunk(tid, 3, b"x")
    with pytest.raises(ValueError, match="beyond the offered size"):
        alice.send_chunk(tid, 0, b"x" * 11)
    with pytest.raises(SharingStateError, match="while it is accepted"):
        bob.complete(tid)


# -- hostile peer ---------------------------------------------------------------------

TID = "0123456789abcdef0123456789abcdef"
GOOD_OFFER = {"t": "offer", "id": TID, "kind": "file", "name": "x", "size": 3, "hash": content_hash(b"abc")}
JS = "javascript:alert(1)"

HOSTILE_OFFERS = [
    ({"kind": "exe"}, "kind"),
    ({"kind": None}, "kind"),
    ({"name": 5}, "name must be a string"),
    ({"name": None}, "name must be a string"),
    ({"name": "x" * 4097}, "4097 characters"),
    ({"size": -1}, "size"),
    ({"size": "3"}, "size"),
    ({"size": 3.0}, "size"),
    ({"size": True}, "size"),
    ({"size": 2**64}, "size"),
    ({"hash": "blake3:xyz"}, "hash"),
    ({"hash": "sha256:" + "0" * 64}, "hash"),
    ({"hash": "blake3:" + "A" * 64}, "hash"),
    ({"hash": None}, "hash"),
    ({"url": "https://example.org/"}, "must not carry a url"),
    ({"kind": "url", "url": None}, "url as a string"),
    ({"kind": "url", "url": JS, "name": JS, "size": 0, "hash": content_hash(JS.encode())}, "scheme 'javascript'"),
    ({"kind": "url", "url": "https://a.org/", "name": "https://a.org/", "size": 5, "hash": content_hash(b"https://a.org/")}, "size 0"),
    ({"kind": "url", "url": "https://a.org/", "name": "https://good.org/", "size": 0, "hash": content_hash(b"https://a.org/")}, "name must be the url"),
    ({"kind": "url", "url": "https://a.org/", "name": "https://a.org/", "size": 0, "hash": content_hash(b"other")}, "not the blake3"),
]


@pytest.mark.parametrize("change, reason", HOSTILE_OFFERS)
def test_malformed_offer_is_refused(change: dict[str, Any], reason: str) -> None:
    bob = SharingProtocol("bob", "alice")
    bob.receive_control({**GOOD_OFFER, **change})
    [violation] = bob.take_events()
    assert isinstance(violation, ProtocolViolation) and reason in violation.reason
    [refuse] = bob.take_control()
    assert refuse["t"] == "refuse" and refuse["id"] == TID and reason in refuse["reason"]
    # the same id again is a duplicate
    bob.receive_control(GOOD_OFFER)
    [dup] = bob.take_events()
    assert isinstance(dup, ProtocolViolation) and "duplicate" in dup.reason


HOSTILE_MESSAGES = [
    ([1, 2], "not a JSON object"),
    ("offer", "not a JSON object"),
    (None, "not a JSON object"),
    ({}, "unknown control message type"),
    ({"t": "delete_all", "id": TID}, "unknown control message type"),
    ({"t": ["offer"], "id": TID}, "unknown control message type"),
    ({"t": "offer"}, "bad id"),
    ({"t": "offer", "id": TID.upper()}, "bad id"),
    ({"t": "offer", "id": "../../x"}, "bad id"),
    ({"t": "accept", "id": 12}, "bad id"),
    ({"t": "accept", "id": TID, "offset": 0, "prefix_hash": None}, "unknown transfer"),
    ({"t": "done", "id": TID}, "unknown transfer"),
    ({"t": "cancel", "id": TID, "reason": "x"}, "unknown transfer"),
]


@pytest.mark.parametrize("msg, reason", HOSTILE_MESSAGES)
def test_hostile_control_messages(msg: Any, reason: str) -> None:
    bob = SharingProtocol("bob", "alice")
    bob.receive_control(msg)
    [violation] = bob.take_events()
    assert isinstance(violation, ProtocolViolation) and reason in violation.reason
    assert bob.take_control() == []


def offered(size: int = 3) -> tuple[SharingProtocol, SharingProtocol, str]:
    """alice has offered ``size`` bytes of CONTENT to bob, who has the OfferReceived."""
    alice, bob = SharingProtocol("alice", "bob"), SharingProtocol("bob", "alice")
    tid = new_id()
    alice.offer(tid, "file", "x", size, content_hash(CONTENT[:size]))
    pump(alice, bob)
    bob.take_events()
    return alice, bob, tid


BAD_ANSWERS = [
    ({"t": "accept", "offset": -1, "prefix_hash": None}, "outside"),
    ({"t": "accept", "offset": "0", "prefix_hash": None}, "integer"),
    ({"t": "accept", "offset": 0, "prefix_hash": HASH}, "null"),
    ({"t": "accept", "offset": 3, "prefix_hash": HASH}, "outside"),
    ({"t": "accept", "offset": 1, "prefix_hash": None}, "needs prefix_hash"),
    ({"t": "accept", "offset": 1, "prefix_hash": "blake3:1"}, "needs prefix_hash"),
    ({"t": "done"}, "done before all bytes"),
    ({"t": "refuse"}, "reason"),
    ({"t": "refuse", "reason": 5}, "reason"),
    ({"t": "cancel"}, "reason"),
    ({"t": "fail", "reason": None}, "reason"),
]


@pytest.mark.parametrize("msg, reason", BAD_ANSWERS)
def test_bad_answers_fail_the_transfer(msg: dict[str, Any], reason: str) -> None:
    alice, bob, tid = offered()
    alice.receive_control({**msg, "id": tid})
    violation, failed = alice.take_events()
    assert isinstance(violation, ProtocolViolation) and reason in violation.reason
    assert isinstance(failed, TransferFailed) and failed.transfer_id == tid and not failed.by_peer
    assert alice.take_control() == [{"t": "fail", "id": tid, "reason": failed.reason}]
    assert alice.state(tid) == "failed"


def test_answers_from_the_wrong_side_are_violations() -> None:
    alice, bob, tid = offered()
    bob.receive_control({"t": "accept", "id": tid, "offset": 0, "prefix_hash": None})
    bob.receive_control({"t": "done", "id": tid})
    events = bob.take_events()
    assert [type(e) for e in events] == [ProtocolViolation, ProtocolViolation]
    assert "the peer is sending" in events[0].reason
    assert bob.state(tid) == "offered"  # still waiting for the local decision


def test_second_accept_fails_the_transfer() -> None:
    alice, bob, tid = offered()
    bob.accept(tid)
    pump(alice, bob)
    alice.take_events()
    alice.receive_control({"t": "accept", "id": tid, "offset": 0, "prefix_hash": None})
    assert [type(e) for e in alice.take_events()] == [ProtocolViolation, TransferFailed]


def test_messages_for_finished_transfers_are_ignored() -> None:
    alice, bob, tid = offered()
    bob.refuse(tid, "no")
    pump(alice, bob)
    alice.take_events()
    for msg in ({"t": "accept", "id": tid, "offset": 0, "prefix_hash": None}, {"t": "done", "id": tid},
                {"t": "cancel", "id": tid, "reason": "x"}, {"t": "fail", "id": tid, "reason": "x"}):
        alice.receive_control(msg)
        bob.receive_control(msg)
    bob.receive_data(frame(tid, 0, b"abc"))
    assert alice.take_events() == bob.take_events() == []
    assert alice.take_control() == bob.take_control() == []


def test_bytes_beyond_declared_size() -> None:
    alice, bob, tid = offered(size=3)
    bob.accept(tid)
    bob.take_control()
    bob.receive_data(frame(tid, 0, b"abcd"))
    violation, failed = bob.take_events()
    assert isinstance(violation, ProtocolViolation) and "declared 3" in violation.reason
    assert failed == TransferFailed(tid, "more bytes than declared", by_peer=False)
    assert bob.take_control() == [{"t": "fail", "id": tid, "reason": "more bytes than declared"}]
    bob.receive_data(frame(tid, 4, b"e"))  # later frames: ignored
    assert bob.take_events() == []


def test_bytes_after_all_received() -> None:
    alice, bob, tid = offered(size=3)
    bob.accept(tid)
    bob.receive_data(frame(tid, 0, b"abc"))
    bob.receive_data(frame(tid, 3, b"d"))
    events = bob.take_events()
    assert [type(e) for e in events] == [ChunkReceived, AllBytesReceived, ProtocolViolation, TransferFailed]
    assert events[-1].reason == "more bytes than declared"


def test_lying_peer_sends_more_on_the_wire_than_it_offered(pair) -> None:
    alice, bob = pair
    tid = new_id()
    alice.offer(tid, "file", "x", 4, content_hash(b"abcd"))
    pump(alice, bob)
    bob.accept(tid)
    pump(alice, bob)
    bob.receive_data(frame(tid, 0, b"abcd" * 1000))  # a hostile sender ignores its own offer
    assert isinstance(bob.take_events()[-1], TransferFailed)
    pump(alice, bob)
    assert alice.take_events()[-1] == TransferFailed(tid, "more bytes than declared", by_peer=True)


BAD_FRAMES = [
    (b"", "too short"),
    (b"\x01" + b"\x00" * 23, "too short"),
    (b"\x02" + bytes.fromhex(TID) + b"\x00" * 8 + b"x", "unknown data frame type"),
    (frame(TID, 0, b"x"), "unknown transfer"),
]


@pytest.mark.parametrize("data, reason", BAD_FRAMES)
def test_bad_frames(data: bytes, reason: str) -> None:
    bob = SharingProtocol("bob", "alice")
    bob.receive_data(data)
    [violation] = bob.take_events()
    assert isinstance(violation, ProtocolViolation) and reason in violation.reason


def test_data_before_accept_fails() -> None:
    alice, bob, tid = offered()
    bob.receive_data(frame(tid, 0, b"abc"))
    violation, failed = bob.take_events()
    assert "before it was accepted" in violation.reason and isinstance(failed, TransferFailed)
    assert bob.pending_offers == 0


def test_data_at_wrong_offset_fails() -> None:
    alice, bob, tid = offered(size=100)
    bob.accept(tid)
    bob.receive_data(frame(tid, 0, b"a" * 10))
    bob.receive_data(frame(tid, 20, b"a" * 10))
    events = bob.take_events()
    assert "offset 20, expected 10" in events[1].reason
    assert isinstance(events[2], TransferFailed)


def test_data_for_a_transfer_we_are_sending() -> None:
    alice, bob, tid = offered()
    alice.receive_data(frame(tid, 0, b"abc"))
    [violation] = alice.take_events()
    assert "we are sending" in violation.reason
    assert alice.state(tid) == "offered"


def test_flood_of_offers_is_capped() -> None:
    bob = SharingProtocol("bob", "alice", max_pending_offers=3)
    ids = [new_id() for _ in range(5)]
    for tid in ids:
        bob.receive_control({**GOOD_OFFER, "id": tid, "name": f"f{tid[:4]}"})
    events = bob.take_events()
    assert [type(e) for e in events] == [OfferReceived] * 3 + [OfferFlooded] * 2
    assert events[3] == OfferFlooded(ids[3], f"f{ids[3][:4]}")
    assert bob.take_control() == [
        {"t": "refuse", "id": tid, "reason": "too many pending offers from alice"} for tid in ids[3:]
    ]
    assert bob.pending_offers == 3
    bob.refuse(ids[0], "no")  # a decision frees a slot
    bob.receive_control({**GOOD_OFFER, "id": new_id()})
    assert isinstance(bob.take_events()[0], OfferReceived)


def test_connection_lost_fails_live_transfers() -> None:
    alice, bob, tid = offered()
    alice.connection_lost("peer gone")
    assert alice.take_events() == [TransferFailed(tid, "peer gone", by_peer=False)]
    assert alice.take_control() == []


def test_long_reason_from_peer_is_cut() -> None:
    alice, bob, tid = offered()
    alice.receive_control({"t": "refuse", "id": tid, "reason": "x" * 100_000})
    [refused] = alice.take_events()
    assert len(refused.reason) == 1000


# -- nothing a peer sends raises -----------------------------------------------------

json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=10,
)
field_values = st.one_of(
    json_values,
    st.sampled_from([TID, new_id(), "file", "url", "https://example.org/", HASH, 0, 3, -1, 2**70]),
)
messages = st.fixed_dictionaries(
    {"t": st.sampled_from(["offer", "accept", "have", "refuse", "done", "fail", "cancel", "x"]) | json_values},
    optional={k: field_values for k in ("id", "kind", "name", "size", "hash", "url", "offset", "prefix_hash", "reason")},
) | json_values
frames = st.binary(max_size=64) | st.builds(
    frame, st.sampled_from([TID]), st.integers(0, 10), st.binary(max_size=8)
) | st.builds(lambda b: b"\x01" + b, st.binary(min_size=24, max_size=40))


@settings(max_examples=400, deadline=None)
@given(st.lists(st.one_of(messages.map(lambda m: ("c", m)), frames.map(lambda f: ("d", f))), max_size=30))
def test_random_input_never_raises(inputs: list[tuple[str, Any]]) -> None:
    bob = SharingProtocol("bob", "alice", max_pending_offers=2)
    bob.receive_control(GOOD_OFFER)  # something live for the noise to hit
    for how, value in inputs:
        if how == "c":
            bob.receive_control(value)
        else:
            bob.receive_data(value)
        if bob.state(TID) == "offered":
            bob.accept(TID)
    for e in bob.take_events():
        assert e.__class__.__module__ == "ivisit_nb.protocol.sharing"
    for msg in bob.take_control():
        assert msg["t"] in ("accept", "refuse", "fail") and isinstance(msg["id"], str)


@settings(max_examples=200, deadline=None)
@given(st.lists(messages, max_size=20))
def test_random_answers_to_our_offer_never_raise(msgs: list[Any]) -> None:
    alice = SharingProtocol("alice", "bob")
    alice.offer(TID, "file", "x", 3, content_hash(b"abc"))
    sent = False
    for m in msgs:
        if isinstance(m, dict) and "id" not in m:
            m = {**m, "id": TID}
        alice.receive_control(m)
        if alice.state(TID) == "accepted":
            alice.start_sending(TID, 0)
        if alice.state(TID) == "sending" and not sent:
            sent = alice.send_chunk(TID, 0, b"abc")
    alice.take_events()
