"""Room servers in a cluster: several instances sharing rooms through a real redis-server.

Each test starts its own redis-server on 127.0.0.1 (tests/cluster_helpers.py; skipped
with a clear message when Debian's redis-server is missing). Instances run in this
process (``RoomServer(directory=RedisDirectory(url))``) or, where one is SIGKILLed, as
``python -m ivisit_nb server --redis URL`` subprocesses. Clients are raw websockets or
real sessions. Nothing waits by sleeping: everything polls with ``wait_until``.
"""

from __future__ import annotations

import asyncio
import json
import time
from typing import Any, Iterator

import aiohttp
import pytest

from cluster_helpers import Instance, Monitor, Redis, join, recv, redis_server, until
from helpers import make_file, wait_until
from ivisit_nb import events as ev
from ivisit_nb.room import RoomApp, RoomServer
from ivisit_nb.room.client import RoomClient
from ivisit_nb.room.directory import Address, MemoryDirectory
from ivisit_nb.room.hub import Hello, Outcome, RoomHub
from ivisit_nb.room.names import skeleton
from ivisit_nb.room.redis_directory import ClusterError, RedisDirectory
from ivisit_nb.sharing.hashing import hash_file

pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def redis() -> Iterator[Redis]:
    with redis_server() as r:
        yield r


def instances(redis: Redis, n: int, **options: Any) -> list[RoomServer]:
    return [RoomServer(directory=RedisDirectory(redis.url), **options) for _ in range(n)]


@pytest.fixture
def cluster(redis: Redis) -> Iterator[list[RoomServer]]:
    servers = instances(redis, 3)
    yield servers
    for s in servers:
        s.close()


def run(test: Any) -> None:
    async def main() -> None:
        async with aiohttp.ClientSession() as session:
            await test(session)

    asyncio.run(main())


# -- the hub's calls for a shared directory (pure, no Redis) -------------------------------


class Announcing(MemoryDirectory):
    """A memory directory shared by two hubs that, like a cluster's, announces presence itself."""

    announces_presence = True


def _hello(user: str, room: str | None = "lab", **extra: Any) -> str:
    return json.dumps({"type": "hello", "version": 1, "user": user, "room": room, **extra})


def test_hub_admission_is_pure_and_checks_fields_and_token() -> None:
    hub = RoomHub(token="t", instance="i1")
    hub.connect(1, "127.0.0.1", 0.0)
    assert hub.admission(1, _hello("Cаrol", "lab", token="t")) == Hello("Cаrol", "carol", "lab")
    assert hub.admission(1, _hello("carol", token="wrong")) is None
    assert hub.admission(1, _hello("caro\u200bl", token="t")) is None
    assert hub.admission(1, '{"type":"ping"}') is None and hub.admission(1, b"x") is None
    assert hub.admission(2, _hello("carol", token="t")) is None  # no such connection
    assert not hub.joined(1) and hub.users == []  # nothing changed


def test_hub_forwards_signals_for_other_instances_and_delivers_theirs() -> None:
    shared = Announcing()
    one, two = RoomHub(instance="i1", directory=shared), RoomHub(instance="i2", directory=shared)
    one.connect(1, "a", 0.0)
    two.connect(1, "b", 0.0)
    out = one.receive(1, _hello("alice"), 0.0)
    assert [json.loads(t)["type"] for _, t in out.sends] == ["welcome"]
    out = two.receive(1, _hello("bob"), 0.0)
    assert json.loads(out.sends[0][1])["members"] == ["alice"]
    assert len(out.sends) == 1  # an announcing directory tells the room, not the hub
    out = one.presence("lab", "bob", True, 0.0)
    assert out.sends == [(1, '{"type":"joined","room":"lab","user":"bob"}')]
    out = one.receive(1, json.dumps({"type": "signal", "to": "bob", "data": {"n": 1}}), 0.0)
    assert out.sends == [] and out.forwards == [(Address("i2", 1), '{"type":"signal","from":"alice","data":{"n":1}}')]
    assert two.deliver(1, out.forwards[0][1]).sends == [(1, out.forwards[0][1])]
    assert two.deliver(9, "x") == Outcome()
    out = one.unavailable(1, "no Redis")  # only for a hello, but any connection can be refused
    assert json.loads(out.sends[0][1])["code"] == "unavailable" and out.closes == [(1, 1013, "unavailable")]


# -- presence, relay and names across instances (raw websockets) -----------------------


def test_users_on_three_instances_see_each_other_and_relay(cluster: list[RoomServer]) -> None:
    a, b, c = cluster

    async def test(s: aiohttp.ClientSession) -> None:
        alice, welcome = await join(s, a.url, "alice")
        assert welcome["members"] == []
        bob, welcome = await join(s, b.url, "bob")
        assert welcome["members"] == ["alice"]
        assert await recv(alice) == {"type": "joined", "room": "lab", "user": "bob"}
        carol, welcome = await join(s, c.url, "carol")
        assert welcome["members"] == ["alice", "bob"]
        assert await recv(alice) == {"type": "joined", "room": "lab", "user": "carol"}
        assert await recv(bob) == {"type": "joined", "room": "lab", "user": "carol"}
        # another room on another instance hears nothing of lab
        dave, welcome = await join(s, a.url, "dave", "attic")
        assert welcome["members"] == []
        # signals cross instances, in order, whatever the rooms
        for n in range(5):
            await carol.send_json({"type": "signal", "to": "alice", "data": {"n": n}})
        for n in range(5):
            assert await recv(alice) == {"type": "signal", "from": "carol", "data": {"n": n}}
        await dave.send_json({"type": "signal", "to": "bob", "data": {"kind": "call"}})
        assert await recv(bob) == {"type": "signal", "from": "dave", "data": {"kind": "call"}}
        await bob.send_json({"type": "signal", "to": "nobody", "data": {}})
        err = await recv(bob)
        assert err["code"] == "no-such-user" and err["to"] == "nobody"
        # every instance shows the same rooms
        for server in cluster:
            wait_until(lambda: server.rooms == {"lab": ["alice", "bob", "carol"], "attic": ["dave"]})
        await bob.close()
        assert await recv(alice) == {"type": "left", "room": "lab", "user": "bob"}
        assert await recv(carol) == {"type": "left", "room": "lab", "user": "bob"}
        for ws in (alice, carol, dave):
            await ws.close()
        for server in cluster:
            wait_until(lambda: server.rooms == {})

    run(test)


def test_names_and_lookalikes_are_unique_across_instances(cluster: list[RoomServer]) -> None:
    a, b, _ = cluster

    async def test(s: aiohttp.ClientSession) -> None:
        carol, welcome = await join(s, a.url, "carol", "one")
        assert welcome["type"] == "welcome"
        for name in ("carol", "Carol", "cаrol", "caro1", "carol."):  # the 2nd 'а' is Cyrillic
            ws, err = await join(s, b.url, name, "two")
            assert err["code"] == "name-taken" and err["fatal"] is True, err
            assert "carol" in err["message"]
            await ws.close()
        await carol.close()
        # free again everywhere once she left
        ws, welcome = await join(s, b.url, "Carol", "two")
        assert welcome["type"] == "welcome"
        await ws.close()

    run(test)


def test_concurrent_claims_of_one_name_on_two_instances_admit_exactly_one(redis: Redis) -> None:
    servers = instances(redis, 2)
    try:
        async def test(s: aiohttp.ClientSession) -> None:
            for round_ in range(10):
                names = [f"carol{round_}", f"Carol{round_}", f"cаrol{round_}", f"CAROL{round_}", f"carol{round_}."]
                sockets = [await s.ws_connect(servers[i % 2].url) for i in range(10)]
                await asyncio.gather(*(
                    ws.send_str(json.dumps({"type": "hello", "version": 1, "user": names[i % 5], "room": "race"}))
                    for i, ws in enumerate(sockets)
                ))
                answers = await asyncio.gather(*(recv(ws) for ws in sockets))
                kinds = sorted(a["type"] if a["type"] == "welcome" else a["code"] for a in answers)
                assert kinds == ["name-taken"] * 9 + ["welcome"], answers
                for ws in sockets:
                    await ws.close()
                for server in servers:
                    wait_until(lambda: server.rooms == {})

        run(test)
    finally:
        for server in servers:
            server.close()


def test_room_size_limit_holds_across_instances(redis: Redis) -> None:
    servers = instances(redis, 2, max_members=3)
    try:
        async def test(s: aiohttp.ClientSession) -> None:
            sockets = [await s.ws_connect(servers[i % 2].url) for i in range(8)]
            await asyncio.gather(*(
                ws.send_str(json.dumps({"type": "hello", "version": 1, "user": f"u{i}", "room": "small"}))
                for i, ws in enumerate(sockets)
            ))
            answers = await asyncio.gather(*(recv(ws) for ws in sockets))
            kinds = sorted(a["type"] if a["type"] == "welcome" else a["code"] for a in answers)
            assert kinds == ["room-full"] * 5 + ["welcome"] * 3, answers
            for ws in sockets:
                await ws.close()

        run(test)
    finally:
        for server in servers:
            server.close()


def test_a_stopped_instance_s_users_leave_at_once(redis: Redis) -> None:
    a, b = instances(redis, 2)
    try:
        async def test(s: aiohttp.ClientSession) -> None:
            alice, _ = await join(s, a.url, "alice")
            bob, _ = await join(s, b.url, "bob")
            assert await recv(alice) == {"type": "joined", "room": "lab", "user": "bob"}
            t0 = time.monotonic()
            await asyncio.get_running_loop().run_in_executor(None, b.close)
            assert await recv(alice) == {"type": "left", "room": "lab", "user": "bob"}
            assert time.monotonic() - t0 < 2.5  # not the 3 s heartbeat TTL: b said goodbye
            assert a.rooms == {"lab": ["alice"]}
            await alice.close()

        run(test)
    finally:
        a.close()
        b.close()


def test_leases_are_renewed_and_a_lapsed_name_goes_to_the_next_claimer(redis: Redis) -> None:
    import redis.asyncio as aioredis

    async def test(s: aiohttp.ClientSession) -> None:
        one, two = RoomApp(directory=RedisDirectory(redis.url)), RoomApp(directory=RedisDirectory(redis.url))
        one.hub.name_lease = 1.0  # one's names lapse a second after their last renewal
        await one.start()
        await two.start()
        store = aioredis.Redis.from_url(redis.url)
        key = f"ivisit:claim:{skeleton('alice')}"
        try:
            old, _ = await join(s, one.url, "alice")
            watcher, _ = await join(s, two.url, "walt")
            assert await recv(old) == {"type": "joined", "room": "lab", "user": "walt"}
            deadline = time.monotonic() + 3.0  # three leases long, renewed by tick()
            while time.monotonic() < deadline:
                one._dispatch(one.hub.tick(time.monotonic()))
                await asyncio.sleep(0.2)  # the lease's clock, not a synchronisation
                assert await store.pttl(key) > 0
            while await store.exists(key):  # no more ticks: the lease runs out
                await asyncio.sleep(0.05)
            new, welcome = await join(s, two.url, "Alice")
            assert welcome["type"] == "welcome" and welcome["members"] == ["walt"], welcome
            # one learns at its next renewal that the name is gone, and closes the old connection
            one._dispatch(one.hub.tick(time.monotonic()))
            err = await until(old, lambda f: f.get("type") == "error")
            assert err["code"] == "name-taken" and err["fatal"] is True
            for ws in (old, watcher, new):
                await ws.close()
        finally:
            await store.aclose()
            await one.stop()
            await two.stop()

    run(test)


def test_token_is_enforced_by_every_instance_and_must_match(redis: Redis) -> None:
    servers = instances(redis, 2, token="s3cret")
    try:
        async def test(s: aiohttp.ClientSession) -> None:
            for server in servers:
                ws, err = await join(s, server.url, "eve")
                assert err["code"] == "bad-token", err
                ws, err = await join(s, server.url, "eve", token="guess")
                assert err["code"] == "bad-token", err
            alice, welcome = await join(s, servers[0].url, "alice", token="s3cret")
            bob, welcome = await join(s, servers[1].url, "bob", token="s3cret")
            assert welcome["members"] == ["alice"]
            await alice.close()
            await bob.close()

        run(test)
        # an instance started with another token refuses to join the cluster, and says why
        with pytest.raises(ClusterError, match="--token"):
            RoomServer(directory=RedisDirectory(redis.url), token="other")
        with pytest.raises(ClusterError, match="--token"):
            RoomServer(directory=RedisDirectory(redis.url))
    finally:
        for server in servers:
            server.close()


# -- real sessions across instances -----------------------------------------------------------


def test_sessions_on_different_instances_link_chat_and_send_a_file(cluster, make_session, tmp_path) -> None:
    a, b, c = cluster
    alice = make_session(a.url, "alice")
    bob = make_session(b.url, "bob")
    carol = make_session(c.url, "carol")
    for s in (alice, bob, carol):
        s.wait_for_peers(timeout=60).wait()
    assert sorted(alice.peers) == ["bob", "carol"] and alice.peers["bob"].sas == bob.peers["alice"].sas
    assert sorted(alice.say("hello from instance a").wait(10)) == ["bob", "carol"]
    wait_until(lambda: len(bob.messages) == 1 and len(carol.messages) == 1, 20)
    assert carol.messages.iloc[0]["sender"] == "alice"

    bob.receiving = True
    bob.settings["carol"].files = "accept"
    f = make_file(tmp_path / "notes.bin", 3_000_000)
    t = carol.send_file(f, to="bob")
    assert t.wait(60) == "done"
    assert hash_file(tmp_path / "inbox" / "bob" / "carol" / "notes.bin") == hash_file(f)


def test_redis_sees_presence_and_signalling_but_no_chat_file_or_sas(redis: Redis, make_session, tmp_path) -> None:
    a, b = instances(redis, 2)
    monitor = Monitor(redis.port)
    try:
        alice = make_session(a.url, "alice")
        bob = make_session(b.url, "bob")
        alice.wait_for_peers(["bob"], timeout=60).wait()
        bob.wait_for_peers(["alice"], timeout=60).wait()
        wait_until(lambda: alice.peers["bob"].sas is not None and bob.peers["alice"].sas is not None, 20)
        assert alice.say("the-secret-chat-line", to="bob").wait(10) == ["bob"]
        bob.receiving = True
        bob.settings["alice"].files = "accept"
        bob.settings["alice"].urls = "accept"
        content = b"the-secret-file-content" * 1000
        f = tmp_path / "private-notes-name.bin"
        f.write_bytes(content)
        assert alice.send_file(f, to="bob").wait(60) == "done"
        assert alice.send_url("https://example.org/the-secret-url", to="bob").wait(30) == "done"
        wait_until(lambda: "alice" in monitor.text() and "v=0" in monitor.text(), 10)
        seen = monitor.text()
    finally:
        monitor.close()
        a.close()
        b.close()
    # presence and signalling (SDP with its ICE candidates and DTLS fingerprints) go through Redis...
    assert '"PUBLISH" "ivisit:to:' in seen and "offer" in seen and "a=fingerprint" in seen and "a=candidate" in seen
    # ...but nothing of what the link carries: chat, files, URLs, the SAS exchange
    for secret in ("the-secret-chat-line", "the-secret-file-content", "private-notes-name", "the-secret-url",
                   "sas-commit", "sas-nonce", "sas-reveal"):
        assert secret not in seen, secret


def test_client_rotates_through_its_urls(cluster: list[RoomServer]) -> None:
    a, b, _ = cluster
    dead = f"ws://127.0.0.1:{_closed_port()}/"

    async def test(s: aiohttp.ClientSession) -> None:
        seen: list[dict[str, Any]] = []

        async def handler(msg: dict[str, Any]) -> None:
            seen.append(msg)

        client = RoomClient([dead, b.url, a.url], "rita", "lab", handler)
        welcome = await client.connect()
        assert welcome["type"] == "welcome" and client.url == b.url
        await client.close()
        with pytest.raises(ValueError):
            RoomClient([], "rita", "lab", handler)

    run(test)


def _closed_port() -> int:
    from cluster_helpers import free_port

    return free_port()


# -- failures ------------------------------------------------------------------------------------


def test_sigkill_of_an_instance_members_leave_reconnect_elsewhere_and_resume(redis: Redis, make_session, tmp_path) -> None:
    one, two, three = (Instance(redis.url) for _ in range(3))
    try:
        alice = make_session([one.url], "alice")
        bob = make_session([two.url, three.url], "bob")
        left_at: list[float] = []
        alice.on(lambda e: left_at.append(time.monotonic()) if isinstance(e, ev.MemberLeft) and e.user == "bob" else None)
        alice.wait_for_peers(["bob"], timeout=60).wait()
        bob.wait_for_peers(["alice"], timeout=60).wait()

        # a transfer that is still running when the instance dies: bob reads slowly
        slow = {"on": True}

        def throttle(e: ev.Event) -> None:
            if slow["on"] and isinstance(e, ev.TransferProgress):
                time.sleep(0.3)  # on bob's engine thread: about 4 s of every 4.1 s asleep

        bob.on(throttle)
        bob.receiving = True
        bob.settings["alice"].files = "accept"
        bob.settings["alice"].lane = "datachannel"
        size = 24_000_000
        f = make_file(tmp_path / "movie.bin", size)
        first = alice.send_file(f, to="bob")
        incoming = wait_until(lambda: [x for x in bob.sharing.transfers.values() if x.received > 1_000_000], 60)[0]

        killed_at = time.monotonic()
        two.sigkill()
        # bob leaves everyone's presence within 5 s
        wait_until(lambda: left_at, 10)
        assert left_at[0] - killed_at < 5.0, f"bob left alice's presence {left_at[0] - killed_at:.2f} s after the kill"
        assert first.wait(30) in ("failed", "cancelled")
        slow["on"] = False
        assert incoming.wait(30) in ("failed", "cancelled")
        assert 0 < incoming.received < size

        # bob's session found the next instance by itself, and the link re-formed
        wait_until(lambda: bob.connected, 30)  # instance two is dead: it can only be three
        alice.wait_for_peers(["bob"], timeout=60).wait()
        bob.wait_for_peers(["alice"], timeout=60).wait()

        again = alice.send_file(f, to="bob")
        assert again.wait(90) == "done"
        resumed = bob.sharing.transfers[again.transfer_id]
        assert resumed.resumed_from > 0
        assert resumed.bytes_transferred == size - resumed.resumed_from
        assert hash_file(tmp_path / "inbox" / "bob" / "alice" / "movie.bin") == hash_file(f)
    finally:
        for instance in (one, two, three):
            instance.kill()


def test_redis_going_away_refuses_joins_keeps_links_and_recovers(redis: Redis, make_session) -> None:
    a, b = instances(redis, 2)
    try:
        alice = make_session(a.url, "alice")
        bob = make_session(b.url, "bob")
        alice.wait_for_peers(["bob"], timeout=60).wait()
        bob.wait_for_peers(["alice"], timeout=60).wait()
        gone: list[str] = []
        for s in (alice, bob):
            s.on(lambda e: gone.append(e.user) if isinstance(e, ev.MemberLeft) else None)

        redis.stop()
        wait_until(lambda: not a.hub.directory.available and not b.hub.directory.available, 20)

        async def refused(s: aiohttp.ClientSession) -> None:
            for server in (a, b):
                async with s.get(server.url.replace("ws://", "http://") + "health") as r:
                    assert r.status == 503 and "unavailable" in await r.text()
                ws, err = await join(s, server.url, "newcomer")
                assert err["code"] == "unavailable" and err["fatal"] is True, err
                assert "Redis" in err["message"] and "try again" in err["message"]
                msg = await ws.receive(timeout=10)
                assert msg.type == aiohttp.WSMsgType.CLOSE and msg.data == 1013

        run(refused)
        # the peer-to-peer link does not need the server
        assert alice.say("still here", to="bob").wait(10) == ["bob"]
        wait_until(lambda: len(bob.messages) == 1, 20)

        redis.start()  # empty: it lost every key
        wait_until(lambda: a.hub.directory.available and b.hub.directory.available, 30)

        async def recovered(s: aiohttp.ClientSession) -> None:
            carol, welcome = await join(s, b.url, "carol")
            assert welcome["type"] == "welcome", welcome
            assert sorted(welcome["members"]) == ["alice", "bob"]
            # the names came back with their users: nobody else can take them
            ws, err = await join(s, a.url, "Bob", "elsewhere")
            assert err["code"] == "name-taken", err
            await carol.close()

        run(recovered)
        # past the grace after the data loss, with a full resync: nobody was ever shown as gone
        directory = a.hub.directory
        wait_until(lambda: time.monotonic() > directory._grace_until + 2 * directory.heartbeat_every, 20)
        for server in (a, b):
            wait_until(lambda: {room: sorted(m) for room, m in server.rooms.items()} == {"lab": ["alice", "bob"]}, 20)
        assert "alice" not in gone and "bob" not in gone, gone
        assert alice.peers["bob"].state == "connected"
        assert alice.say("after", to="bob").wait(10) == ["bob"]
    finally:
        a.close()
        b.close()


def test_a_cli_instance_refuses_a_different_token(redis: Redis) -> None:
    first = Instance(redis.url, "--token", "s3cret")
    try:
        with pytest.raises(RuntimeError, match="--token"):
            Instance(redis.url, "--token", "other")
    finally:
        first.kill()


def test_embedded_default_needs_no_redis() -> None:
    with RoomServer() as server:
        assert type(server.hub.directory).__name__ == "MemoryDirectory"
