"""Sessions on real aiortc peer connections over loopback, with a real room server."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
import time

import psutil
import pytest

from ivisit_nb import RoomServer, Session
from ivisit_nb.engine.sas import SasProtocol
from ivisit_nb.protocol.sas import derive_sas, sdp_fingerprint
from ivisit_nb.room.client import JoinRefused
from helpers import wait_until


def test_two_sessions_form_a_link_and_chat(server, make_session):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob")
    bob.wait_for_peers(timeout=30).wait()
    alice.wait_for_peers(timeout=30).wait()
    assert alice.members == ["bob"]
    assert alice.peers["bob"].state == "connected"
    assert bob.peers["alice"].state == "connected"
    assert bob.members == ["alice"]

    reached = alice.say("hello bob").wait(5)
    assert reached == ["bob"]
    wait_until(lambda: len(bob.messages) == 1)
    row = bob.messages.iloc[0]
    assert (row.sender, row.text, row.decision) == ("alice", "hello bob", "accept")
    assert list(alice.messages.columns)[:5] == ["time", "sender", "to", "text", "decision"]
    wait_until(lambda: alice.peers["bob"].rtt is not None, 5)
    assert 0 <= alice.peers["bob"].rtt < 1.0


def test_five_sessions_form_a_full_mesh(server, make_session):
    names = ["ann", "ben", "cat", "dan", "eve"]
    sessions = [make_session(server.url, n) for n in names]
    for s in sessions:
        peers = s.wait_for_peers(timeout=60).wait()
        assert sorted(peers) == sorted(set(names) - {s.user})
        assert all(p.state == "connected" for p in peers.values())
    assert server.rooms["lab"] and sorted(server.rooms["lab"]) == names


def test_short_auth_string_matches_on_both_ends(server, make_session):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob")
    alice.wait_for_peers(timeout=30).wait()
    bob.wait_for_peers(timeout=30).wait()
    sas_a, sas_b = alice.peers["bob"].sas, bob.peers["alice"].sas
    assert sas_a and sas_a == sas_b
    assert len(sas_a.replace(" ", "")) == 6
    # alice offers (her name sorts first): recompute from the real SDPs and both nonces
    link = alice.peers["bob"].link
    fp_offer = sdp_fingerprint(link.pc.localDescription.sdp)
    fp_answer = sdp_fingerprint(link.pc.remoteDescription.sdp)
    assert fp_offer != fp_answer
    mine = link.find(SasProtocol).exchange
    theirs = bob.peers["alice"].link.find(SasProtocol).exchange
    n_offer, n_answer = mine.nonce, theirs.nonce
    assert derive_sas(fp_offer, fp_answer, n_offer, n_answer) == sas_a
    assert derive_sas(fp_answer, fp_offer, n_offer, n_answer) != sas_a  # swapped
    tampered = fp_answer[:-2] + ("00" if fp_answer[-2:] != "00" else "11")
    assert derive_sas(fp_offer, tampered, n_offer, n_answer) != sas_a  # a man in the middle's certificate


def test_call_accepted_refused_and_unanswered(server, make_session):
    alice = make_session(server.url, "alice", room=None, call_timeout=3.0)
    bob = make_session(server.url, "bob", room=None, call_timeout=3.0)
    assert alice.peers == {} and bob.peers == {}

    # ask (the default): the call waits for bob's decision
    call = alice.call("bob")
    req = wait_until(lambda: bob.pending_calls and bob.pending_calls[0])
    assert req.sender == "alice"
    req.accept()
    assert call.wait(30) == "connected"
    bob.wait_for_peers(["alice"], timeout=30).wait()
    assert bob.peers["alice"].sas == alice.peers["bob"].sas

    # refused, and "refuse always" is remembered
    alice.disconnect("bob")
    wait_until(lambda: bob.peers.get("alice") is None or bob.peers["alice"].state == "closed")
    call = alice.call("bob")
    req = wait_until(lambda: bob.pending_calls and bob.pending_calls[0])
    req.refuse(always=True)
    assert call.wait(10) == "refused"
    assert "bob" in call.reason and "refused" in call.reason
    assert bob.settings["alice"].calls == "refuse"
    call = alice.call("bob")
    assert call.wait(10) == "refused"
    assert call.reason == "bob refuses calls from alice"
    assert bob.pending_calls == []

    # unanswered: nobody decides within the timeout
    bob.settings["alice"].calls = "ask"
    call = alice.call("bob")
    assert call.wait(10) == "no answer"
    assert "did not answer" in call.reason
    wait_until(lambda: bob.pending_calls == [], 5)


def test_call_to_unknown_user_fails_clearly(server, make_session):
    alice = make_session(server.url, "alice", room=None)
    call = alice.call("nobody")
    assert call.wait(10) == "failed"
    assert "nobody" in call.reason


def test_accept_always_connects_next_call_without_asking(server, make_session):
    alice = make_session(server.url, "alice", room=None)
    bob = make_session(server.url, "bob", room=None)
    bob.settings["alice"].calls = "accept"
    assert alice.call("bob").wait(30) == "connected"
    assert bob.pending_calls == []


def test_duplicate_name_and_wrong_token_are_refused(tmp_path):
    with RoomServer(token="s3cret") as srv:
        with pytest.raises(JoinRefused) as err:
            Session.join(srv.url, "alice", "lab", config_dir=tmp_path, inbox=tmp_path / "i", token="wrong")
        assert err.value.code == "bad-token"
        alice = Session.join(srv.url, "alice", "lab", config_dir=tmp_path, inbox=tmp_path / "i", token="s3cret")
        try:
            with pytest.raises(JoinRefused) as err:
                Session.join(srv.url, "alice", "lab", config_dir=tmp_path, inbox=tmp_path / "j", token="s3cret")
            assert err.value.code == "name-taken"
            assert alice.connected
        finally:
            alice.leave()


def test_unreachable_server_gives_a_clear_error(tmp_path):
    with RoomServer() as srv:
        url = srv.url
    with pytest.raises(ConnectionError, match="cannot reach the room server"):
        Session.join(url, "alice", "lab", config_dir=tmp_path, inbox=tmp_path / "i")


def test_settings_persist_and_survive_corruption(server, make_session, tmp_path):
    alice = make_session(server.url, "alice")
    alice.settings["bob"].files = "refuse"
    alice.settings["bob"].blocked = True
    alice.settings.defaults.messages = "ask"
    with pytest.raises(ValueError, match="files must be one of"):
        alice.settings["bob"].files = "maybe"
    alice.leave()

    again = make_session(server.url, "alice")
    assert again.settings["bob"].files == "refuse"
    assert again.settings["bob"].blocked is True
    assert again.settings["carol"].messages == "ask"  # defaults for users not yet seen
    assert again.settings.decide("bob", "urls") == "refuse"  # blocked
    again.leave()

    path = tmp_path / "config" / "alice" / "settings.json"
    path.write_text("{not json")
    with pytest.warns(RuntimeWarning, match="moved it to"):
        third = make_session(server.url, "alice")
    assert third.settings["bob"].files == "ask"
    assert list(path.parent.glob("settings.json.corrupt-*"))
    third.settings["bob"].files = "accept"
    assert json.loads(path.read_text())["users"]["bob"]["files"] == "accept"


def test_messages_follow_the_receivers_setting(server, make_session):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob")
    alice.wait_for_peers(timeout=30).wait()
    bob.wait_for_peers(timeout=30).wait()
    bob.settings["alice"].messages = "refuse"
    alice.say("spam", to="bob").wait(5)
    wait_until(lambda: len(bob.messages) == 1)
    assert bob.messages.iloc[0].decision == "refuse"
    assert bob.messages.text.isna().iloc[0]  # a refused message's text is never kept (missing in the str column)

    bob.settings["alice"].messages = "ask"
    alice.say("may I?").wait(5)
    req = wait_until(lambda: bob.pending_messages and bob.pending_messages[0])
    assert req.text == "may I?"
    req.accept(always=True)
    wait_until(lambda: len(bob.messages) == 2)
    assert bob.messages.iloc[1].text == "may I?"
    assert bob.settings["alice"].messages == "accept"


def test_leave_leaves_no_threads_sockets_or_tasks(server, tmp_path):
    proc = psutil.Process()
    before_threads = {t.name for t in threading.enumerate()}
    before_socks = len(proc.net_connections(kind="all"))
    alice = Session.join(server.url, "alice", "lab", config_dir=tmp_path, inbox=tmp_path / "a")
    bob = Session.join(server.url, "bob", "lab", config_dir=tmp_path, inbox=tmp_path / "b")
    alice.wait_for_peers(timeout=30).wait()
    assert len(proc.net_connections(kind="all")) > before_socks
    loops = [alice._engine.loop, bob._engine.loop]
    alice.leave()
    bob.leave()
    alice.leave()  # idempotent
    assert {t.name for t in threading.enumerate()} - before_threads == set()
    assert all(loop.is_closed() for loop in loops)
    wait_until(lambda: len(proc.net_connections(kind="all")) <= before_socks, 5)


def _start_peer(peer_script, url, user, tmp_path):
    proc = subprocess.Popen(
        [sys.executable, peer_script, url, "lab", user, str(tmp_path / user)],
        stdout=subprocess.PIPE,
        text=True,
    )
    line = proc.stdout.readline()
    assert line.strip() == "ready", f"peer process said {line!r}"
    return proc


def test_killed_peer_is_noticed_within_5s(server, make_session, peer_script, tmp_path):
    alice = make_session(server.url, "alice")
    proc = _start_peer(peer_script, server.url, "zed", tmp_path)
    try:
        alice.wait_for_peers(["zed"], timeout=30).wait()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGKILL)
        wait_until(lambda: "zed" not in alice.peers or alice.peers["zed"].state in ("failed", "closed"), 5.0, 0.02)
        assert time.monotonic() - t0 < 5.0
    finally:
        proc.kill()
        proc.wait()


def test_frozen_peer_is_noticed_by_heartbeat_within_5s(server, make_session, peer_script, tmp_path):
    """SIGSTOP keeps the peer's sockets open, so only the heartbeat can notice."""
    alice = make_session(server.url, "alice")
    proc = _start_peer(peer_script, server.url, "zed", tmp_path)
    try:
        alice.wait_for_peers(["zed"], timeout=30).wait()
        t0 = time.monotonic()
        proc.send_signal(signal.SIGSTOP)
        wait_until(lambda: alice.peers["zed"].state == "failed", 5.0, 0.02)
        assert time.monotonic() - t0 < 5.0
        assert "heartbeat" in alice.peers["zed"].reason
        assert "zed" in server.rooms["lab"]  # the server still thinks zed is there
    finally:
        proc.kill()
        proc.wait()


def test_sessions_survive_a_room_server_restart(tmp_path, make_session):
    srv = RoomServer()
    port = srv.port
    try:
        alice = make_session(srv.url, "alice")
        bob = make_session(srv.url, "bob")
        alice.wait_for_peers(timeout=30).wait()
        srv.close()
        wait_until(lambda: not alice.connected and not bob.connected, 10)
        srv = RoomServer(port=port)
        wait_until(lambda: alice.connected and bob.connected, 15)
        carol = make_session(srv.url, "carol")
        for s in (alice, bob, carol):
            peers = s.wait_for_peers(timeout=60).wait()
            assert len(peers) == 2
        assert alice.peers["bob"].state == "connected"
        assert sorted(srv.rooms["lab"]) == ["alice", "bob", "carol"]
    finally:
        srv.close()
