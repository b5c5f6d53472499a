"""The pure room hub and its in-memory directory: no sockets, no event loop.

The hub is fed frames with an explicit clock and answers with an Outcome of
(connection id, text) sends and (connection id, code, reason) closes.
"""

from __future__ import annotations

import json
import threading
from typing import Any

import pytest

from ivisit_nb.room.directory import Address, Directory, MemoryDirectory
from ivisit_nb.room.hub import NAME_LEASE, Outcome, RoomHub


class Harness:
    """A hub plus helpers to join and read what each connection was sent."""

    def __init__(self, **options: Any) -> None:
        self.events: list[dict[str, Any]] = []
        self.hub = RoomHub(instance="here", on_event=self.events.append, **options)
        self.now = 1000.0

    def open(self, conn: str) -> None:
        self.hub.connect(conn, "127.0.0.1", self.now)

    def send(self, conn: str, message: dict[str, Any] | str) -> Outcome:
        text = message if isinstance(message, str) else json.dumps(message)
        return self.hub.receive(conn, text, self.now)

    def hello(self, conn: str, user: Any, room: str | None = "lab", **extra: Any) -> Outcome:
        self.open(conn)
        return self.send(conn, {"type": "hello", "version": 1, "user": user, "room": room, **extra})


def frames(out: Outcome, conn: str) -> list[dict[str, Any]]:
    return [json.loads(text) for c, text in out.sends if c == conn]


def only(out: Outcome, conn: str) -> dict[str, Any]:
    got = frames(out, conn)
    assert len(got) == 1, got
    return got[0]


def test_memory_directory_is_a_directory() -> None:
    assert isinstance(MemoryDirectory(), Directory)
    assert isinstance(RoomHub().directory, MemoryDirectory)


def test_join_presence_relay_and_leave() -> None:
    h = Harness()
    out = h.hello("a", "alice")
    assert only(out, "a") == {"type": "welcome", "user": "alice", "room": "lab", "members": [], "max_message": 65536}
    assert out.closes == []
    out = h.hello("b", "bob")
    assert only(out, "b")["members"] == ["alice"]
    assert only(out, "a") == {"type": "joined", "room": "lab", "user": "bob"}
    assert h.hub.rooms == {"lab": ["alice", "bob"]} and h.hub.users == ["alice", "bob"]
    assert h.hub.joined("a") and h.hub.connections == 2 and h.hub.accepted == 2

    out = h.send("a", {"type": "signal", "to": "bob", "data": {"sdp": "v=0"}})
    assert out.sends == [("b", '{"type":"signal","from":"alice","data":{"sdp":"v=0"}}')]
    assert h.send("a", {"type": "ping"}).sends == [("a", '{"type":"pong"}')]

    out = h.send("b", {"type": "leave"})
    assert only(out, "a") == {"type": "left", "room": "lab", "user": "bob"}
    assert out.closes == [("b", 1000, "leave")]
    assert h.send("b", {"type": "ping"}).sends == []  # nothing after leave
    assert h.hub.disconnect("b", h.now).sends == []  # idempotent: the room was told once
    err = only(h.send("a", {"type": "signal", "to": "bob", "data": {}}), "a")
    assert err["code"] == "no-such-user" and err["to"] == "bob"
    h.hub.disconnect("a", h.now)
    assert h.hub.rooms == {} and h.hub.users == [] and h.hub.connections == 0
    assert [(e["event"], e["user"]) for e in h.events] == [("joined", "alice"), ("joined", "bob"), ("left", "bob"), ("left", "alice")]


def test_connection_ids_may_be_strings_or_ints_but_not_reused() -> None:
    hub = RoomHub()
    hub.connect(7, "?", 0.0)
    hub.connect("7", "?", 0.0)
    with pytest.raises(ValueError, match="already in use"):
        hub.connect(7, "?", 0.0)


def test_welcome_carries_the_canonical_name_used_everywhere() -> None:
    h = Harness()
    out = h.hello("z", "Zoe\u0301", "Cafe\u0301")
    welcome = only(out, "z")
    assert welcome["user"] == "Zoé" and welcome["room"] == "Café"
    h.hello("b", "bob", "Café")
    assert h.hub.rooms == {"Café": ["Zoé", "bob"]}
    # either form reaches Zoé, and the relay names her canonically
    for to in ("Zoé", "Zoe\u0301"):
        out = h.send("b", {"type": "signal", "to": to, "data": {}})
        assert out.sends == [("z", '{"type":"signal","from":"bob","data":{}}')]
    out = h.send("z", {"type": "signal", "to": "bob", "data": {}})
    assert only(out, "b") == {"type": "signal", "from": "Zoé", "data": {}}


@pytest.mark.parametrize(
    "second, holder",
    [
        ("carol", None),
        ("Carol", "carol"),
        ("c\u0430rol", "carol"),  # Cyrillic а
        ("caro1", "carol"),
        ("caroI", "carol"),
        ("carol.", "carol"),
        ("\uff43arol", "carol"),  # fullwidth c
    ],
)
def test_lookalike_of_a_present_user_is_name_taken(second: str, holder: str | None) -> None:
    h = Harness()
    h.hello("c", "carol")
    out = h.hello("x", second, "elsewhere")
    err = only(out, "x")
    assert err["code"] == "name-taken" and err["fatal"] is True
    assert out.closes == [("x", 4002, "name-taken")]
    if holder is None:
        assert "'carol' is already connected" in err["message"]
    else:
        assert f"too similar to {holder!r}, who is already here" in err["message"]
    assert h.hub.rooms == {"lab": ["carol"]}
    # once carol leaves, the look-alike is free to join (it is a legal name on its own)
    h.hub.disconnect("c", h.now)
    assert only(h.hello("y", second), "y")["type"] == "welcome"


@pytest.mark.parametrize("user", ["carol\u200b", "carol\u202e", "\u2066carol", "carol\ufeff", " carol", ".", "..", "a/b", "a\\b", "a\x00b"])
def test_disguised_names_are_bad_name(user: str) -> None:
    h = Harness()
    out = h.hello("x", user)
    err = only(out, "x")
    assert err["code"] == "bad-name" and err["fatal"] is True, err
    assert err["message"].startswith("bad hello: 'user'")
    assert out.closes == [("x", 4005, "bad-name")]
    assert h.hub.users == []


def test_hello_checks_fields_then_token_then_name_then_room() -> None:
    h = Harness(token="s3cret", max_members=1)
    h.hello("a", "alice", token="s3cret")
    assert only(h.hello("b", "bob\u200b"), "b")["code"] == "bad-name"  # before the token
    assert only(h.hello("c", "alice"), "c")["code"] == "bad-token"  # before the name
    assert only(h.hello("d", "ALICE", token="s3cret"), "d")["code"] == "name-taken"  # before the room
    assert only(h.hello("e", "eve", token="s3cret"), "e")["code"] == "room-full"
    assert h.hub.users == ["alice"]  # the refused name was not kept
    assert only(h.hello("f", "eve", "other", token="s3cret"), "f")["type"] == "welcome"


def test_bad_frames_and_rate_limit() -> None:
    h = Harness(rate=1, burst=2)
    h.hello("a", "alice")  # uses one token
    assert only(h.send("a", "{oops"), "a")["code"] == "bad-json"  # the second
    err = only(h.send("a", {"type": "ping"}), "a")
    assert err["code"] == "rate-limited" and err["fatal"] is False
    h.now += 1.0  # refills one token
    assert h.send("a", {"type": "ping"}).sends == [("a", '{"type":"pong"}')]


def test_hello_timeout() -> None:
    h = Harness()
    h.open("a")
    out = h.hub.expire("a", h.now)
    assert only(out, "a")["code"] == "not-joined" and out.closes == [("a", 4004, "not-joined")]
    h.hello("b", "bob")
    assert h.hub.expire("b", h.now) == Outcome()  # joined: nothing to expire


def test_tick_keeps_names_claimed_past_the_lease() -> None:
    h = Harness()
    h.hello("a", "alice")
    for _ in range(10):  # ten leases long, renewed every third of one
        h.now += NAME_LEASE / 3
        assert h.hub.tick(h.now) == Outcome()
    assert only(h.hello("b", "alice", "other"), "b")["code"] == "name-taken"


def test_a_lapsed_name_goes_to_the_next_claimer_and_the_old_connection_is_closed() -> None:
    directory = MemoryDirectory()
    h = Harness(directory=directory)
    h.hello("a", "alice")
    h.now += NAME_LEASE + 1  # nobody called tick(): alice's lease lapsed
    h.hello("w", "watcher")
    out = h.hello("b", "Alice")
    assert only(out, "b")["user"] == "Alice" and only(out, "w")["user"] == "Alice"
    assert directory.route("alice", h.now) is None
    assert directory.route("Alice", h.now) == Address("here", "b")
    out = h.hub.tick(h.now)  # the old connection finds out it lost the name
    assert only(out, "a")["code"] == "name-taken" and out.closes == [("a", 4002, "name-taken")]
    # when it goes, its stale room place goes too, and the room hears of it
    out = h.hub.disconnect("a", h.now)
    assert h.hub.rooms == {"lab": ["watcher", "Alice"]}
    assert [f["user"] for f in frames(out, "w")] == ["alice"]


def test_a_lapsed_name_taken_over_exactly_keeps_the_new_owners_room_place() -> None:
    h = Harness()
    h.hello("a", "alice")
    h.now += NAME_LEASE + 1
    h.hello("b", "alice")
    assert h.hub.disconnect("a", h.now) == Outcome()  # not alice's departure: nobody is told
    assert h.hub.rooms == {"lab": ["alice"]}
    assert h.send("b", {"type": "ping"}).sends == [("b", '{"type":"pong"}')]


def test_memory_directory_claims_leases_and_rooms() -> None:
    d = MemoryDirectory()
    a, b = Address("i1", 1), Address("i2", 1)
    assert d.claim("carol", "carol", a, 10, now=0)
    assert d.claim("carol", "carol", a, 10, now=1)  # the owner may claim again
    assert not d.claim("Carol", "carol", b, 10, now=5)
    assert d.holder("carol", now=5) == "carol"
    assert d.route("carol", now=5) == a and d.route("Carol", now=5) is None
    assert d.renew("carol", a, 10, now=9) and not d.renew("carol", b, 10, now=9)
    assert d.route("carol", now=18) == a  # renewed until 19
    assert d.route("carol", now=19) is None and d.holder("carol", now=19) is None
    assert d.claim("Carol", "carol", b, 10, now=19)  # lapsed: b takes it
    assert not d.renew("carol", a, 10, now=20)
    assert not d.release("carol", a)  # not a's any more
    assert d.route("Carol", now=20) == b
    assert d.release("carol", b) and not d.release("carol", b)
    assert d.names() == []

    assert d.join("lab", "x", limit=2) and d.join("lab", "y", limit=2)
    assert d.join("lab", "x", limit=2)  # already in: no change
    assert not d.join("lab", "z", limit=2)
    assert d.members("lab") == ["x", "y"] and d.rooms() == {"lab": ["x", "y"]}
    d.leave("lab", "x")
    d.leave("lab", "y")
    d.leave("lab", "y")
    assert d.members("lab") == [] and d.rooms() == {}


def test_memory_directory_claims_are_atomic_across_threads() -> None:
    d = MemoryDirectory()
    wins: list[int] = []
    start = threading.Barrier(8)

    def claim(i: int) -> None:
        start.wait()
        if d.claim(f"n{i}", "key", Address("i", i), 60, now=0):
            wins.append(i)

    threads = [threading.Thread(target=claim, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and d.holder("key", now=1) == f"n{wins[0]}"
