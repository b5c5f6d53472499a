"""NAT traversal through coturn: TURN credentials in the welcome, and links between namespaces.

The first tests need nothing special. The namespace tests (see tests/netns.py) need root,
``ip`` and Debian's ``turnserver``, and skip with the reason when one is missing. They put
alice in namespace A and bob in B, which cannot reach each other, with coturn and the room
server in T; each peer is its own process (tests/netns_peer.py) driven over stdin/stdout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterator

import pytest

import netns
from helpers import wait_until
from ivisit_nb.cli import main as cli_main
from ivisit_nb.room.hub import RoomHub
from ivisit_nb.room.turn import TurnCredentials, check_turn_url, turn_password

SECRET = "turn-test-secret"
LINK_TIMEOUT = 120.0  # generous: the tests must hold with both cores busy


# -- credentials, without any network ----------------------------------------------------------


def test_password_is_base64_hmac_sha1_of_the_username() -> None:
    # printf '%s' "1700000000:alice" | openssl dgst -sha1 -hmac north -binary | base64
    assert turn_password("north", "1700000000:alice") == "Cd/49soE35ICqcJF/bCTn8Z4OyE="


def test_minted_credentials_expire_after_ttl() -> None:
    creds = TurnCredentials("north", "turn:turn.example:3478", ttl=600)
    server = creds.mint("alice", now=1_700_000_000.7)
    assert server == {
        "urls": "turn:turn.example:3478",
        "username": "1700000600:alice",
        "credential": turn_password("north", "1700000600:alice"),
    }
    odd = creds.mint("a:b", now=0)
    assert odd["username"] == "600:a_b"  # one colon only: EXPIRY:NAME
    [tcp] = TurnCredentials("north", "turn:h:3478?transport=tcp").ice_servers("bob", 0)
    assert tcp["urls"] == "turn:h:3478?transport=tcp" and tcp["username"] == "3600:bob"


@pytest.mark.parametrize(
    "kwargs, words",
    [
        ({"secret": "", "url": "turn:h:3478"}, "secret is empty"),
        ({"secret": "s", "url": ""}, "not a TURN URL"),
        ({"secret": "s", "url": "stun:h:3478"}, "turn:HOST:PORT"),
        ({"secret": "s", "url": "turn:h:3478", "ttl": 0}, "at least 1 second"),
    ],
)
def test_bad_turn_settings_say_what_to_fix(kwargs: dict[str, Any], words: str) -> None:
    with pytest.raises(ValueError, match=words):
        TurnCredentials(**kwargs)


def test_turn_url_check() -> None:
    assert check_turn_url("turns:h:5349") == "turns:h:5349"
    for bad in ("h:3478", "turns:", "turn::3478", "turn://h:3478", "stun:h:3478"):
        with pytest.raises(ValueError, match="not a TURN URL"):
            check_turn_url(bad)


def test_hub_adds_extras_to_each_welcome_but_never_replaces_its_fields() -> None:
    seen: list[str] = []

    def extras(user: str) -> dict[str, Any]:
        seen.append(user)
        return {"ice_servers": [{"urls": "turn:h:3478", "username": f"9:{user}", "credential": "c"}], "type": "evil"}

    hub = RoomHub(welcome_extras=extras)
    hub.connect(1, "test", 0.0)
    out = hub.receive(1, json.dumps({"type": "hello", "version": 1, "user": "alice", "room": "lab"}), 0.0)
    welcome = json.loads(out.sends[0][1])
    assert welcome["type"] == "welcome" and welcome["user"] == "alice" and welcome["room"] == "lab"
    assert welcome["ice_servers"] == [{"urls": "turn:h:3478", "username": "9:alice", "credential": "c"}]
    assert seen == ["alice"]
    plain = RoomHub()
    plain.connect(1, "test", 0.0)
    out = plain.receive(1, json.dumps({"type": "hello", "version": 1, "user": "bob", "room": None}), 0.0)
    assert "ice_servers" not in json.loads(out.sends[0][1])


def test_hub_refreshes_credentials_at_half_their_lifetime() -> None:
    """A session that stays longer than a credential's lifetime still gets working TURN
    credentials for its next link: tick() sends fresh ones in a ``refresh`` message."""
    creds = TurnCredentials("s3cret", "turn:h:3478", ttl=100)
    assert creds.refresh_every == 50
    hub = RoomHub(welcome_extras=creds)
    hub.connect(1, "test", 0.0)
    out = hub.receive(1, json.dumps({"type": "hello", "version": 1, "user": "alice", "room": "lab"}), 0.0)
    first = json.loads(out.sends[0][1])["ice_servers"][0]
    assert not hub.tick(49.0).sends  # not yet
    sends = hub.tick(50.0).sends
    assert [conn for conn, _ in sends] == [1]
    refresh = json.loads(sends[0][1])
    assert refresh["type"] == "refresh"
    fresh = refresh["ice_servers"][0]
    assert fresh["urls"] == first["urls"] and fresh["username"].endswith(":alice")
    assert int(fresh["username"].split(":")[0]) >= int(first["username"].split(":")[0])  # valid at least as long
    assert fresh["credential"] == turn_password("s3cret", fresh["username"])
    assert not hub.tick(60.0).sends and hub.tick(100.0).sends  # then every 50 s again
    plain = RoomHub(welcome_extras=lambda user: {"x": 1})  # no refresh_every: welcome only
    plain.connect(1, "test", 0.0)
    plain.receive(1, json.dumps({"type": "hello", "version": 1, "user": "bob", "room": None}), 0.0)
    assert not plain.tick(10_000.0).sends


@pytest.mark.parametrize(
    "argv, words",
    [
        (["--turn-secret", "s"], "--turn-secret needs --turn-url"),
        (["--turn-url", "turn:h:3478"], "--turn-url needs --turn-secret"),
        (["--turn-secret", "s", "--turn-url", "h:3478"], "not a TURN URL"),
    ],
)
def test_server_refuses_half_a_turn_configuration(argv: list[str], words: str, capsys: pytest.CaptureFixture[str],
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("IVISIT_NB_TURN_SECRET", raising=False)
    assert cli_main(["server", "--port", "0", *argv]) == 2
    assert words in capsys.readouterr().err


def test_server_hands_each_user_fresh_credentials_in_the_welcome() -> None:
    """The real CLI server on loopback, with the secret from the environment (not the command line)."""
    env = {**os.environ, "IVISIT_NB_TURN_SECRET": SECRET}
    proc = subprocess.Popen(
        [sys.executable, "-m", "ivisit_nb", "server", "--json", "--port", "0", "--token", "tok",
         "--turn-url", "turn:127.0.0.1:3478", "--turn-ttl", "120"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, stdin=subprocess.DEVNULL, text=True, env=env,
    )
    try:
        assert proc.stdout is not None
        url = json.loads(proc.stdout.readline())["url"]

        async def hello() -> dict[str, Any]:
            import aiohttp

            async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
                await ws.send_str(json.dumps({"type": "hello", "version": 1, "user": "alice", "room": "r", "token": "tok"}))
                return json.loads((await ws.receive(timeout=60)).data)

        before = time.time()
        welcome = asyncio.run(hello())
    finally:
        proc.terminate()
        proc.wait(30)
    assert welcome["type"] == "welcome"
    [server] = welcome["ice_servers"]
    expiry, name = server["username"].split(":")
    assert name == "alice" and server["urls"] == "turn:127.0.0.1:3478"
    assert int(before) + 120 <= int(expiry) <= time.time() + 120
    assert server["credential"] == turn_password(SECRET, server["username"])


def test_a_session_takes_refreshed_credentials_for_its_next_links(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A real embedded server refreshes the credentials (its tick made fast for the test), and a
    real session uses the fresh ones for links it makes from then on."""
    from ivisit_nb import Session
    from ivisit_nb.room import app as room_app
    from ivisit_nb.room.server import RoomServer

    monkeypatch.setattr(room_app, "RENEW_EVERY", 0.2)
    creds = TurnCredentials(SECRET, "turn:127.0.0.1:3478", ttl=2)  # refreshed every second
    with RoomServer(welcome_extras=creds) as server:
        s = Session.join(server.url, "alice", "lab", config_dir=tmp_path / "cfg", inbox=tmp_path / "inbox")
        try:
            first = wait_until(lambda: list(s.mesh.server_ice), 30)[0]
            fresh = wait_until(lambda: [x for x in s.mesh.server_ice if x["username"] != first["username"]], 30)[0]
        finally:
            s.leave()
    assert int(fresh["username"].split(":")[0]) > int(first["username"].split(":")[0])
    assert fresh["credential"] == turn_password(SECRET, fresh["username"])


# -- between network namespaces -------------------------------------------------------------


@pytest.fixture(scope="module")
def net(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[netns.Topology, netns.Coturn]]:
    """Namespaces A, B, T (A and B cannot reach each other) with coturn on 10.71.0.1:3478 in T."""
    reason = netns.unavailable()
    if reason:
        pytest.skip(f"namespace TURN tests skipped: {reason}")
    netns.sweep_stale()
    topo = netns.Topology("turn")
    turn: netns.Coturn | None = None
    try:
        topo.create()
        turn = netns.Coturn(topo, tmp_path_factory.mktemp("coturn"), SECRET).start()
        yield topo, turn
    finally:
        if turn is not None:
            turn.stop()
        topo.destroy()


class Procs:
    """Room servers and peers started by one test, stopped at its end whatever happens."""

    def __init__(self, topo: netns.Topology, workdir: Path) -> None:
        self.topo, self.workdir = topo, workdir
        self.servers: list[netns.RoomServerProcess] = []
        self.peers: list[netns.PeerProcess] = []

    def server(self, *extra: str) -> str:
        srv = netns.RoomServerProcess(self.topo, *extra)
        self.servers.append(srv)
        return srv.start().url

    def peer(self, where: str, url: str, user: str, room: str, *extra: str) -> netns.PeerProcess:
        """A session in namespace ``where``; files go on the data channel, which ICE routes."""
        work = self.workdir / user
        p = netns.PeerProcess(
            self.topo, where, "--url", url, "--user", user, "--room", room, "--workdir", str(work),
            "--lane", "datachannel", *extra, label=f"{user} in {where}",
        )
        self.peers.append(p)
        return p

    def close(self) -> None:
        for p in self.peers:
            p.quit()
        for s in self.servers:
            s.stop()


@pytest.fixture
def procs(net: tuple[netns.Topology, netns.Coturn], tmp_path: Path) -> Iterator[Procs]:
    p = Procs(net[0], tmp_path)
    try:
        yield p
    finally:
        p.close()


def _types(pairs: list[dict[str, Any]]) -> list[tuple[str, str]]:
    return [(p["local_type"], p["remote_type"]) for p in pairs]


def _assert_isolated(topo: netns.Topology) -> None:
    assert not topo.reaches("A", netns.B_IP), "A can reach B: the namespaces are not isolated"
    assert not topo.reaches("B", netns.A_IP), "B can reach A: the namespaces are not isolated"
    assert topo.reaches("A", netns.TURN_IP) and topo.reaches("B", netns.TURN_IP), "A or B cannot reach T"


@pytest.mark.timeout(600)
def test_relay_only_carries_files_chat_and_heartbeat(net: tuple[netns.Topology, netns.Coturn], procs: Procs,
                                                     tmp_path: Path) -> None:
    """Credentials come from the room server's welcome (--turn-secret); ICE is relay-only."""
    topo, turn = net
    _assert_isolated(topo)
    url = procs.server("--turn-secret", SECRET, "--turn-url", turn.url, "--turn-ttl", "600")
    alice = procs.peer("A", url, "alice", "relay", "--ice-policy", "relay")
    bob = procs.peer("B", url, "bob", "relay", "--ice-policy", "relay")
    alice.ask("wait_linked", peer="bob", timeout=LINK_TIMEOUT)
    bob.ask("wait_linked", peer="alice", timeout=LINK_TIMEOUT)

    payload = tmp_path / "payload.bin"
    data = os.urandom(3 * 1024 * 1024 + 17)
    payload.write_bytes(data)
    alice.send("send_file", path=str(payload), to="bob")
    got = bob.ask("wait_file", sender="alice", timeout=LINK_TIMEOUT)
    sent = alice.reply(LINK_TIMEOUT)
    assert sent["ok"] and sent["status"] == "done", sent
    [file] = got["files"]
    assert file["size"] == len(data) and file["sha256"] == hashlib.sha256(data).hexdigest()

    assert alice.ask("say", text="through the relay", to="bob")["reached"] == ["bob"]
    bob.ask("wait_message", sender="alice", text="through the relay", timeout=LINK_TIMEOUT)

    for me, other in ((alice, "bob"), (bob, "alice")):
        me.ask("wait_rtt", peer=other, count=3, timeout=LINK_TIMEOUT)
    a, b = alice.ask("stats"), bob.ask("stats")
    for st in (a, b):
        [ice] = st["welcome_ice_servers"]  # from the welcome, not from the command line
        assert ice["urls"] == turn.url and int(ice["username"].split(":")[0]) > time.time()
        assert st["rtt_samples"] >= 3
        assert {c["type"] for c in st["candidates"] if c["side"] == "local"} == {"relay"}, st["candidates"]
    types = _types(a["pairs"]) + _types(b["pairs"])
    assert types and all("relay" in t for t in types), types


@pytest.mark.timeout(600)
def test_ice_falls_back_to_the_relay_when_the_direct_path_is_blocked(
        net: tuple[netns.Topology, netns.Coturn], procs: Procs) -> None:
    """No relay-only policy, credentials passed to Session.join: host candidates fail, TURN carries it."""
    topo, turn = net
    _assert_isolated(topo)
    url = procs.server()
    creds = TurnCredentials(SECRET, turn.url, ttl=600)
    peers = {}
    for where, user in (("A", "carol"), ("B", "dave")):
        ice = creds.mint(user, time.time())
        peers[user] = procs.peer(where, url, user, "fallback", "--turn-url", ice["urls"],
                                 "--turn-username", ice["username"], "--turn-credential", ice["credential"])
    carol, dave = peers["carol"], peers["dave"]
    carol.ask("wait_linked", peer="dave", timeout=LINK_TIMEOUT)
    dave.ask("wait_linked", peer="carol", timeout=LINK_TIMEOUT)
    assert carol.ask("say", text="fell back", to="dave")["reached"] == ["dave"]
    dave.ask("wait_message", sender="carol", text="fell back", timeout=LINK_TIMEOUT)
    c, d = carol.ask("stats"), dave.ask("stats")
    for st in (c, d):
        assert st["welcome_ice_servers"] == []  # this server hands out nothing
        local = {x["type"] for x in st["candidates"] if x["side"] == "local"}
        assert {"host", "relay"} <= local, local  # host candidates were tried: no relay-only policy
    types = _types(c["pairs"]) + _types(d["pairs"])
    assert types and all("relay" in t for t in types), types


@pytest.mark.timeout(600)
def test_relay_only_option_really_applies(net: tuple[netns.Topology, netns.Coturn], procs: Procs) -> None:
    """Two peers on one host (both in A) and a TURN server that refuses their credentials:
    relay-only must never link; without it they link directly (host to host)."""
    topo, turn = net
    url = procs.server()
    username = f"{int(time.time()) + 600}:x"
    refused = netns.turn_allocate(topo, "A", username, "wrong")
    assert refused.startswith("refused") and "401" in refused, refused
    assert netns.turn_allocate(topo, "A", username, turn_password(SECRET, username)) == "allocated"
    bad = ["--turn-url", turn.url, "--turn-username", username, "--turn-credential", "wrong"]

    erin = procs.peer("A", url, "erin", "control-on", "--ice-policy", "relay", *bad)
    fred = procs.peer("A", url, "fred", "control-on", "--ice-policy", "relay", *bad)
    # With no candidate at all, the link fails at the link's connect timeout (30 s).
    on = erin.ask("wait_failed", peer="fred", count=1, timeout=LINK_TIMEOUT)
    assert on["failures"] >= 1 and not on["ever_connected"], on
    answered = fred.ask("wait_failed", peer="erin", count=1, timeout=LINK_TIMEOUT)
    assert not answered["ever_connected"], answered
    st = erin.ask("stats")
    assert not [c for c in st["candidates"] if c["side"] == "local"], st["candidates"]  # TURN refused, host not allowed

    gina = procs.peer("A", url, "gina", "control-off", *bad)
    hank = procs.peer("A", url, "hank", "control-off", *bad)
    gina.ask("wait_linked", peer="hank", timeout=LINK_TIMEOUT)
    hank.ask("wait_linked", peer="gina", timeout=LINK_TIMEOUT)
    assert gina.ask("say", text="direct", to="hank")["reached"] == ["hank"]
    g, h = gina.ask("stats"), hank.ask("stats")
    types = _types(g["pairs"]) + _types(h["pairs"])
    assert types and all(t == ("host", "host") for t in types), types


@pytest.mark.timeout(600)
def test_relayed_link_fails_when_coturn_stops_and_reforms_when_it_is_back(
        net: tuple[netns.Topology, netns.Coturn], procs: Procs) -> None:
    """Runs last: it restarts the module's coturn."""
    topo, turn = net
    url = procs.server("--turn-secret", SECRET, "--turn-url", turn.url)
    ivan = procs.peer("A", url, "ivan", "restart", "--ice-policy", "relay")
    judy = procs.peer("B", url, "judy", "restart", "--ice-policy", "relay")
    ivan.ask("wait_linked", peer="judy", timeout=LINK_TIMEOUT)
    judy.ask("wait_linked", peer="ivan", timeout=LINK_TIMEOUT)
    turn.stop()
    down = ivan.ask("wait_failed", peer="judy", count=1, timeout=LINK_TIMEOUT)
    assert down["ever_connected"], down
    turn.start()
    ivan.ask("wait_linked", peer="judy", timeout=LINK_TIMEOUT)  # the mesh re-forms it, with new allocations
    assert ivan.ask("say", text="back", to="judy")["reached"] == ["judy"]
    types = _types(ivan.ask("stats")["pairs"])
    assert types and all(t == ("relay", "relay") for t in types), types
