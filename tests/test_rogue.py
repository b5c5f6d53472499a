"""A rogue peer (tests/rogue.py, written from docs/protocol.md alone) against a real, honest session.

bob is an ordinary Session receiving files; "mallory" is the rogue. Whatever mallory
sends, bob's link stays up, bob's tables stay usable, his disk stays tidy, and an
honest user's file still arrives.
"""

from __future__ import annotations

import ast
import json
import os
import threading
import uuid
from pathlib import Path

import pyarrow as pa
import pytest
from hypothesis import given, settings, strategies as st

from helpers import make_file, wait_until
from rogue import OMIT, Rogue, content_hash

ROGUE = "mallory"  # sorts after bob: bob makes the WebRTC offer


def connect(server, bob, name: str = ROGUE) -> Rogue:
    """A rogue called ``name`` in bob's room, linked to bob with the SAS agreed on both sides."""
    rogue = Rogue(server.url, name).start()
    try:
        link = rogue.wait_connected("bob")
        wait_until(lambda: bob.peers.get(name) and bob.peers[name].sas, 30)
        assert bob.peers[name].sas == link.sas
    except BaseException:
        rogue.close()
        raise
    return rogue


@pytest.fixture
def bob(server, make_session):
    bob = make_session(server.url, "bob", offer_timeout=30)
    bob.receiving = True
    return bob


@pytest.fixture
def rogue(server, bob):
    rogue = connect(server, bob)
    yield rogue
    rogue.close()


def parts_dir(bob) -> Path:
    return Path(bob.inbox_dir) / ".parts"


def incoming(bob, tid: str):
    """bob's handle for the transfer ``tid``, once he has one."""
    return wait_until(lambda: bob.sharing.transfers.get(tid), 20)


def assert_link_up(bob, rogue: Rogue, peer: str = ROGUE) -> None:
    """The link is connected and chat crosses it both ways (retrying while bob's rate limit refills)."""
    assert bob.peers[peer].state == "connected"
    token = uuid.uuid4().hex
    assert bob.say(token, to=peer).wait(10) == [peer]
    rogue.wait_message("bob", lambda m: m.get("t") == "chat" and m.get("text") == token)

    def heard() -> bool:
        rogue.run(rogue.chat("bob", token))
        return token in set(bob.messages.text)

    wait_until(heard, 30, step=0.5)
    rogue.run(rogue.ping("bob"))
    assert bob.peers[peer].state == "connected"


def assert_honest_file_arrives(alice, bob, tmp_path: Path, size: int = 30_000) -> None:
    bob.settings["alice"].files = "accept"
    f = make_file(tmp_path / f"honest-{uuid.uuid4().hex[:8]}.bin", size)
    t = alice.send_file(f, to="bob")
    assert t.wait(60) == "done", t.reason
    assert (Path(bob.inbox_dir) / "alice" / f.name).read_bytes() == f.read_bytes()


def assert_tables_usable(bob) -> None:
    """Every table converts to str and to Arrow: no lone surrogate got in."""
    for df in (bob.transfers, bob.policy_log, bob.inbox.items, bob.messages):
        df.astype(str)
        pa.Table.from_pandas(df)


def no_empty_parts(bob) -> bool:
    folder = parts_dir(bob)
    return not folder.exists() or all(p.stat().st_size > 0 for p in folder.glob("*.part"))


def part_fds(under: str | os.PathLike | None = None) -> int:
    """File descriptors of this process open on part files (under the folder ``under``, if given)."""
    n = 0
    prefix = os.path.realpath(under) if under is not None else ""
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        n += target.endswith(".part") and target.startswith(prefix)
    return n


# -- the rogue is a compatible client -----------------------------------------------------


@pytest.mark.parametrize("name", ["mallory", "adam"], ids=["rogue-answers", "rogue-offers"])
def test_the_documented_protocol_is_enough_to_talk_to_a_session(server, bob, tmp_path, name):
    rogue = connect(server, bob, name)  # the SAS agrees: checked in connect()
    try:
        assert rogue.link("bob").offerer == (name < "bob")
        bob.settings[name].files = bob.settings[name].urls = "accept"
        wait_until(lambda: rogue.link("bob").pings > 0, 10)  # bob's heartbeat
        assert rogue.run(rogue.ping("bob")) >= 0

        # version 2 offer, version 1 offer (no "v", no "lanes"), unknown fields, a URL
        for i, fields in enumerate([{}, {"v": OMIT, "lanes": OMIT}, {"colour": "red", "v": 3}]):
            data = os.urandom(100_000 + i)
            tid = rogue.run(rogue.offer("bob", f"f{i}.bin", data, serve=True, **fields))
            answer = rogue.answer("bob", tid)
            assert answer == {"t": "accept", "id": tid, "offset": 0, "prefix_hash": None, "lane": "datachannel"}
            rogue.wait_message("bob", lambda m: m == {"t": "done", "id": tid})
            assert (Path(bob.inbox_dir) / name / f"f{i}.bin").read_bytes() == data
        tid = rogue.run(rogue.offer_url("bob", "https://example.org/a?b=c"))
        assert rogue.answer("bob", tid)["t"] == "accept"
        rogue.wait_message("bob", lambda m: m == {"t": "done", "id": tid})
        assert bob.inbox.current.url == "https://example.org/a?b=c"

        # the other direction: bob offers, the rogue receives as the document says
        f = make_file(tmp_path / "to-rogue.bin", 150_000)
        t = bob.send_file(f, to=name)
        offer = rogue.wait_message("bob", lambda m: m.get("t") == "offer")
        assert offer["v"] == 2 and "datachannel" in offer["lanes"]
        assert (offer["kind"], offer["name"], offer["size"]) == ("file", "to-rogue.bin", 150_000)
        rogue.run(rogue.send_control("bob", {"t": "accept", "id": offer["id"], "offset": 0,
                                             "prefix_hash": None, "lane": "datachannel"}))

        def received() -> bytes | None:
            """The offered bytes, once all arrived in contiguous 0x01 frames of at most 64 KiB."""
            frames = [fr for fr in list(rogue.link("bob").frames) if fr[0] == 0x01 and fr[1:17].hex() == offer["id"]]
            got, expected = b"", 0
            for fr in frames:
                assert int.from_bytes(fr[17:25], "big") == expected and len(fr) <= 64 * 1024
                got += fr[25:]
                expected += len(fr) - 25
            return got if len(got) == offer["size"] else None

        got = wait_until(received, 30)
        assert content_hash(got) == offer["hash"]
        rogue.run(rogue.send_control("bob", {"t": "done", "id": offer["id"]}))
        assert t.wait(10) == "done"
        assert_link_up(bob, rogue, name)
    finally:
        rogue.close()


def test_the_rogue_is_written_from_the_document_alone():
    """tests/rogue.py imports nothing from ivisit_nb: it is an executable specification."""
    tree = ast.parse(Path(__file__).with_name("rogue.py").read_text())
    modules = [a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names]
    modules += [n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)]
    assert modules and not [m for m in modules if m.split(".")[0] == "ivisit_nb"]


# -- hostile input: the link stays up ---------------------------------------------------------

NESTED = "[" * 1000 + "]" * 1000  # 2 KB; json.loads alone would raise RecursionError


def _attack_nesting(rogue: Rogue) -> None:
    rogue.run(rogue.send_text("bob", NESTED))
    rogue.run(rogue.send_text("bob", '{"t":"chat","text":' + NESTED + "}"))
    rogue.run(rogue.send_text("bob", NESTED, channel="data"))
    rogue.run(rogue.send_bytes("bob", NESTED.encode(), channel="control"))


def _attack_lone_surrogates(rogue: Rogue) -> None:
    rogue.run(rogue.send_text("bob", '{"t":"chat","text":"lone \\ud800 here","to":"\\udfff"}'))
    rogue.run(rogue.chat("bob", "\udc00\ud800 \u202eevil\r\n", to="b\ud800ob"))
    rogue.run(rogue.offer("bob", "evil\ud800name.txt", b"surrogate", serve=True))


def _attack_not_json(rogue: Rogue) -> None:
    for text in ["hello", "{", '{"t": NaN}', '{"t": 1}', '{"t": "chat", "t": "ping"}', "[]", "null", "1e999",
                 '{"no": "t"}', "\x00", "", "9" * 5000, '"' + "\\" * 3000]:
        rogue.run(rogue.send_text("bob", text))
    rogue.run(rogue.send_text("bob", json.dumps({"t": "chat", "text": "x" * 70_000})))  # over 64 KiB


def _attack_binary_on_control(rogue: Rogue) -> None:
    for data in [b"\xff\xfe\xfd", b"\x01" + bytes(40), b"", bytes(range(256)), b'{"t":"ping","ts":1}']:
        rogue.run(rogue.send_bytes("bob", data, channel="control"))


def _attack_text_on_data(rogue: Rogue) -> None:
    for text in ["hello", '{"t":"chat","text":"hi"}', "", "\x01" * 30]:
        rogue.run(rogue.send_text("bob", text, channel="data"))


def _attack_unknown_frames(rogue: Rogue) -> None:
    tid = uuid.uuid4().hex
    for frame in [b"", b"\x00", b"\x02" + bytes(30), b"\xff" * 100, b"\x01", b"\x01" + bytes(24), b"\x01" + bytes(100)]:
        rogue.run(rogue.send_bytes("bob", frame))
    rogue.run(rogue.send_data("bob", tid, 2**64 - 1, b"far away"))


def _attack_floods(rogue: Rogue) -> None:
    async def flood() -> None:
        for i in range(4000):
            await rogue.send_control("bob", {"t": "no-such-type", "i": i})
        for i in range(3000):
            await rogue.chat("bob", f"spam {i}")
        for i in range(1000):
            await rogue.send_bytes("bob", b"\x7f" + bytes(100))
        await rogue.drain("bob")

    rogue.run(flood(), 120)


ATTACKS = {
    "nested-brackets": _attack_nesting,
    "lone-surrogates": _attack_lone_surrogates,
    "not-json": _attack_not_json,
    "binary-on-control": _attack_binary_on_control,
    "text-on-data": _attack_text_on_data,
    "unknown-frames": _attack_unknown_frames,
    "floods": _attack_floods,
}


@pytest.mark.parametrize("attack", list(ATTACKS), ids=list(ATTACKS))
def test_hostile_input_leaves_the_link_up(server, make_session, bob, rogue, tmp_path, attack):
    alice = make_session(server.url, "alice")
    alice.wait_for_peers(["bob"], timeout=30).wait()
    bob.settings[ROGUE].files = "accept"
    ATTACKS[attack](rogue)
    assert_link_up(bob, rogue)
    assert_honest_file_arrives(alice, bob, tmp_path)
    # the rogue, honest again, still gets a file through
    data = os.urandom(5000)
    tid = rogue.run(rogue.offer("bob", "after.bin", data, serve=True))
    assert incoming(bob, tid).wait(30) == "done"
    assert_tables_usable(bob)


JSON_LEAVES = (st.none() | st.booleans() | st.integers() | st.floats()
               | st.text(st.characters() | st.characters(categories=["Cs"]), max_size=20))
JSON_VALUES = st.recursive(
    JSON_LEAVES,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4),
    max_leaves=12,
)
# Types of every kind but sas-*: a sas message out of turn fails the link by design (section 2).
TYPES = st.sampled_from(["ping", "pong", "chat", "offer", "accept", "have", "refuse", "done", "fail", "cancel"]) | st.text(
    max_size=12
).filter(lambda t: not t.startswith("sas-"))
MESSAGES = JSON_VALUES | st.builds(lambda t, d: {**d, "t": t}, TYPES, st.dictionaries(st.text(max_size=8), JSON_VALUES, max_size=6))


def test_arbitrary_json_and_bytes_on_both_channels(bob, rogue):
    bob.settings[ROGUE].files = "accept"

    @settings(max_examples=60, deadline=None, database=None)
    @given(message=MESSAGES, blob=st.binary(max_size=300))
    def one_example(message, blob):
        text = json.dumps(message)  # NaN and Infinity included
        for channel in ("control", "data"):
            rogue.run(rogue.send_text("bob", text, channel))
            rogue.run(rogue.send_bytes("bob", text.encode(), channel))
            rogue.run(rogue.send_bytes("bob", blob, channel))
        rogue.run(rogue.send_bytes("bob", b"\x01" + blob))
        assert bob.peers[ROGUE].state == "connected"

    one_example()
    rogue.run(rogue.drain("bob"))
    assert_link_up(bob, rogue)
    assert_tables_usable(bob)


# -- bob's tables -----------------------------------------------------------------------------


def test_tables_stay_usable_with_hostile_strings_and_after_a_restart(server, make_session, bob, rogue, tmp_path):
    bob.settings[ROGUE].files = bob.settings[ROGUE].urls = "accept"
    # chat text and addressee with lone surrogates, as JSON "\ud800" escapes
    rogue.run(rogue.send_text("bob", '{"t":"chat","text":"lone \\ud800 here","to":"\\udfff"}'))
    wait_until(lambda: "lone \ufffd here" in set(bob.messages.text), 10)
    assert bob.messages.iloc[-1].to == "\ufffd"
    # file names with lone surrogates and control characters: cleaned, the file arrives
    for i, name in enumerate(["evil\ud800.txt", "\udfff\ud800", "tab\tbidi\u202e\ud83d.txt"]):
        tid = rogue.run(rogue.offer("bob", name, f"content {i}".encode(), serve=True))
        t = incoming(bob, tid)
        assert t.wait(20) == "done"
        t.name.encode("utf-8")  # no surrogate left
        assert Path(t.path).read_bytes() == f"content {i}".encode()
    # reasons with lone surrogates: a peer's fail, and a peer's refusal of bob's offer
    tid = rogue.run(rogue.offer("bob", "to-fail.bin", os.urandom(1000)))
    t = incoming(bob, tid)
    wait_until(lambda: t.status == "transferring", 20)
    rogue.run(rogue.send_control("bob", {"t": "fail", "id": tid, "reason": "broken \ud800 disk"}))
    assert t.wait(10) == "failed" and t.reason == "broken \ufffd disk"
    out = bob.send_file(make_file(tmp_path / "for-mallory.txt", 10), to=ROGUE)
    offer = rogue.wait_message("bob", lambda m: m.get("t") == "offer")
    rogue.run(rogue.send_control("bob", {"t": "refuse", "id": offer["id"], "reason": "no \udbff thanks"}))
    assert out.wait(10) == "refused" and out.reason == "no \ufffd thanks"
    assert_tables_usable(bob)

    # bob restarts with the same inbox: the history reads back clean
    inbox = bob.inbox_dir
    items = len(bob.inbox.items)
    rogue.close()
    bob.leave()
    again = make_session(server.url, "bob", inbox=inbox)
    assert len(again.inbox.items) == items
    assert_tables_usable(again)


# -- resources ------------------------------------------------------------------------------


def test_three_hundred_offers_cannot_hog_bob(server, make_session, bob, rogue, tmp_path):
    alice = make_session(server.url, "alice")
    alice.wait_for_peers(["bob"], timeout=30).wait()
    bob.settings[ROGUE].files = "accept"
    assert_honest_file_arrives(alice, bob, tmp_path, 1000)  # the store is open: a fair baseline
    fds_before = len(os.listdir("/proc/self/fd"))

    # bob's engine thread counts the rogue's receives, transferring and waiting, after every event
    most = {"waiting": 0, "transferring": 0}

    def count(event) -> None:
        mine = [t for t in bob.sharing.transfers.values() if t.peer == ROGUE and t.direction == "in" and not t.ended]
        transferring = sum(t.status == "transferring" for t in mine)
        most["transferring"] = max(most["transferring"], transferring)
        most["waiting"] = max(most["waiting"], len(mine) - transferring)

    unsubscribe = bob.on(count)
    # a sampler counts part files held open
    stop, most_fds = threading.Event(), [0]

    def sample() -> None:
        while not stop.is_set():
            most_fds[0] = max(most_fds[0], part_fds(bob.inbox_dir))
            stop.wait(0.02)

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    try:
        async def offer_all() -> list[str]:
            return [await rogue.offer("bob", f"flood{i}.bin", os.urandom(1000 + i), serve=True) for i in range(300)]

        tids = rogue.run(offer_all(), 60)
        assert_honest_file_arrives(alice, bob, tmp_path, 30_000)  # while the rogue's offers are handled

        def final(tid: str) -> str | None:
            done = [m["t"] for m in rogue.messages("bob") if m.get("id") == tid and m.get("t") in ("done", "refuse", "fail")]
            return done[0] if done else None

        wait_until(lambda: all(final(tid) for tid in tids), 120, step=0.5)
    finally:
        stop.set()
        sampler.join(5)
        unsubscribe()

    outcomes = [final(tid) for tid in tids]
    refusals = [m for m in rogue.messages("bob", "refuse") if m["id"] in set(tids)]
    assert outcomes.count("done") + outcomes.count("refuse") == 300
    assert outcomes.count("done") >= 20  # the first 20 wait their turn and arrive
    assert all(m["reason"] == f"too many pending offers from {ROGUE}" for m in refusals)
    assert 1 <= most["transferring"] <= 4  # per-peer cap on concurrent receives
    assert most["waiting"] <= 20  # queued receives count as pending offers: the rest were refused
    assert most_fds[0] <= 5  # the rogue's four, and alice's one
    wait_until(lambda: part_fds(bob.inbox_dir) == 0, 10)  # bob's writer threads close the last ones
    wait_until(lambda: len(os.listdir("/proc/self/fd")) <= fds_before + 10, 10)
    log = bob.policy_log
    assert (log.decided_by == "flood limit").sum() == len(refusals)
    assert_link_up(bob, rogue)


def test_bytes_beyond_the_declared_size(bob, rogue):
    bob.settings[ROGUE].files = "accept"
    folder = Path(bob.inbox_dir) / ROGUE
    outcomes = []
    for i in range(6):
        data = os.urandom(1000)
        name = f"extra{i}.bin"
        tid = rogue.run(rogue.offer("bob", name, data))
        assert rogue.answer("bob", tid)["t"] == "accept"
        # every declared byte, then more (one frame each, or all in one frame)
        if i % 3 == 2:
            rogue.run(rogue.send_data("bob", tid, 0, data + b"X" * 100))
        else:
            rogue.run(rogue.send_data("bob", tid, 0, data))
            rogue.run(rogue.send_data("bob", tid, 1000, b"X" * 100))
        t = incoming(bob, tid)
        status = t.wait(20)
        outcomes.append(status)
        if status == "failed":
            assert t.reason == "more bytes than declared"
            assert rogue.wait_message("bob", lambda m: m.get("id") == tid and m["t"] == "fail")["reason"] == "more bytes than declared"
            assert not (folder / name).exists() and t.path is None
            assert name not in set(bob.inbox.items.name)
        else:  # the extra bytes came after the file was sealed: ignored
            assert status == "done", t.reason
            assert (folder / name).read_bytes() == data
            assert name in set(bob.inbox.items.name)
        if i % 3 == 2:
            assert status == "failed"  # beyond the size within one frame: always refused
    failed = [t for t in bob.sharing.transfers.values() if t.status == "failed"]
    assert len(failed) == outcomes.count("failed")
    assert all(t.path is None and not (folder / t.name).exists() for t in failed)
    assert_link_up(bob, rogue)


def _accepted(bob, rogue: Rogue, data: bytes, name: str, **fields):
    """The rogue offers ``data``; bob (accepting files from it) answers accept and waits for bytes."""
    tid = rogue.run(rogue.offer("bob", name, data, **fields))
    assert rogue.answer("bob", tid)["t"] == "accept"
    t = incoming(bob, tid)
    wait_until(lambda: t.status == "transferring", 20)
    return tid, t


def test_no_empty_part_file_stays_behind(bob, rogue):
    bob.settings[ROGUE].files = "accept"
    # the rogue cancels before any byte
    tid, t = _accepted(bob, rogue, os.urandom(5000), "a.bin")
    rogue.run(rogue.send_control("bob", {"t": "cancel", "id": tid, "reason": "changed my mind"}))
    assert t.wait(10) == "cancelled" and no_empty_parts(bob)
    # bob cancels before any byte
    tid, t = _accepted(bob, rogue, os.urandom(5000), "b.bin")
    t.cancel("bob pressed Stop")
    assert t.wait(10) == "cancelled" and no_empty_parts(bob)
    rogue.wait_message("bob", lambda m: m.get("id") == tid and m["t"] == "cancel")
    # a part with bytes stays for a resume; offered again, the rogue restarts from 0
    # with an empty frame, then fails
    data = os.urandom(5000)
    tid, t = _accepted(bob, rogue, data, "c.bin")
    rogue.run(rogue.send_data("bob", tid, 0, data[:1000]))
    part = parts_dir(bob) / f"{content_hash(data).removeprefix('blake3:')}.part"
    wait_until(lambda: part.exists() and part.stat().st_size == 1000, 10)  # written by bob's writer thread
    rogue.run(rogue.send_control("bob", {"t": "cancel", "id": tid, "reason": "later"}))
    assert t.wait(10) == "cancelled" and no_empty_parts(bob)

    def resumed() -> tuple[str, dict] | None:
        # bob's writer thread releases the part just after the cancel; until then the same
        # content is refused as "already being received" (see the report), so offer again
        tid = rogue.run(rogue.offer("bob", "c.bin", data))
        answer = rogue.answer("bob", tid)
        return (tid, answer) if answer["t"] == "accept" else None

    tid, answer = wait_until(resumed, 20, step=0.2)
    assert (answer["offset"], answer["prefix_hash"]) == (1000, content_hash(data[:1000]))
    rogue.run(rogue.send_data("bob", tid, 0, b""))
    rogue.run(rogue.send_control("bob", {"t": "fail", "id": tid, "reason": "oops"}))
    assert incoming(bob, tid).wait(10) == "failed" and no_empty_parts(bob)
    # an empty file with a wrong hash
    tid = rogue.run(rogue.offer("bob", "e.bin", b"", hash=content_hash(b"not empty")))
    assert incoming(bob, tid).wait(10) == "failed" and no_empty_parts(bob)
    # refused by the setting
    bob.settings[ROGUE].files = "refuse"
    tid = rogue.run(rogue.offer("bob", "f.bin", os.urandom(100)))
    assert rogue.answer("bob", tid)["t"] == "refuse" and no_empty_parts(bob)
    # the link goes while a receive waits for bytes
    bob.settings[ROGUE].files = "accept"
    tid, t = _accepted(bob, rogue, os.urandom(5000), "g.bin")
    rogue.close()
    assert t.wait(20) == "failed"
    assert no_empty_parts(bob)
    assert [p.stat().st_size for p in parts_dir(bob).glob("*.part")] == [1000]  # c.bin's, for a resume


def test_a_stalled_receive_leaves_no_empty_part(server, make_session):
    bob = make_session(server.url, "bob", stall_timeout=1)
    bob.receiving = True
    rogue = connect(server, bob)
    try:
        bob.settings[ROGUE].files = "accept"
        tid, t = _accepted(bob, rogue, os.urandom(5000), "d.bin")  # then silence
        assert t.wait(20) == "failed" and t.reason.startswith(f"no progress from {ROGUE} for")
        fail = rogue.wait_message("bob", lambda m: m.get("id") == tid and m["t"] == "fail")
        assert fail["reason"] == t.reason
        assert no_empty_parts(bob)
    finally:
        rogue.close()


def test_a_direct_lane_offer_without_a_usable_certificate(bob, rogue):
    """bob (lane setting "auto") prefers "direct", but needs the sender's certificate for it."""
    bob.settings[ROGUE].files = "accept"
    data = os.urandom(2000)
    tid = rogue.run(rogue.offer("bob", "x.bin", data, serve=True, lanes=["direct", "datachannel"]))
    assert rogue.answer("bob", tid)["lane"] == "datachannel"  # no certificate: the data channel instead
    assert incoming(bob, tid).wait(20) == "done"
    tid = rogue.run(rogue.offer("bob", "y.bin", data + b"y", lanes=["direct"], lane_info={"direct": {"cert": "nope"}}))
    assert rogue.answer("bob", tid) == {"t": "refuse", "id": tid, "reason": f"{ROGUE} sent no usable certificate for the direct lane"}
    tid = rogue.run(rogue.offer("bob", "z.bin", data + b"z", lane_info=["not", "an", "object"]))
    assert rogue.answer("bob", tid)["reason"].startswith("malformed offer: lane_info")
    assert_link_up(bob, rogue)


@pytest.mark.parametrize("kind", ["file", "url"])
def test_an_offer_on_lanes_bob_lacks_is_answered(bob, rogue, kind):
    """An offer on no lane bob has is refused at once, not left waiting with a receive slot held."""
    bob.settings[ROGUE].files = bob.settings[ROGUE].urls = "accept"
    if kind == "file":
        tid = rogue.run(rogue.offer("bob", "x.bin", b"abc", lanes=["carrier-pigeon"]))
    else:
        tid = rogue.run(rogue.offer_url("bob", "https://example.org/", lanes=["carrier-pigeon"]))
    answer = rogue.answer("bob", tid, 10)
    assert answer["t"] == "refuse" or answer.get("lane") == "carrier-pigeon"


def test_a_cancel_while_the_file_is_placed_leaves_a_consistent_result(bob, rogue):
    """Once sealed, either the transfer completes (done, file shown) or nothing is shown.

    A slow disk cannot be made on demand, so bob's store.place is held until the cancel is in."""
    bob.settings[ROGUE].files = "accept"
    real_place = bob.sharing.store.place
    entered, release, placed = threading.Event(), threading.Event(), threading.Event()

    def held_place(*args):
        entered.set()
        release.wait(30)
        try:
            return real_place(*args)
        finally:
            placed.set()

    bob.sharing.store.place = held_place
    data = os.urandom(3000)
    tid = rogue.run(rogue.offer("bob", "late.bin", data))
    assert rogue.answer("bob", tid)["t"] == "accept"
    rogue.run(rogue.send_data("bob", tid, 0, data))
    assert entered.wait(20)  # verified and sealed: bob is placing the file
    rogue.run(rogue.send_control("bob", {"t": "cancel", "id": tid, "reason": "too late"}))
    rogue.run(rogue.ping("bob"))  # the control channel is ordered: bob has handled the cancel
    t = incoming(bob, tid)
    release.set()
    assert placed.wait(20)
    target = Path(bob.inbox_dir) / ROGUE / "late.bin"

    def consistent() -> bool:
        shown = target.exists() or "late.bin" in set(bob.inbox.items.name)
        return (t.status == "done") == shown

    wait_until(consistent, 10)
