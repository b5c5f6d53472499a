"""Live video over existing links: renegotiation, consent, sources (real aiortc peers, real room server)."""

from __future__ import annotations

import asyncio
import time
from fractions import Fraction

import av
import numpy as np
import pytest

from helpers import make_file, sparse_file, wait_until
from ivisit_nb import events as ev
from ivisit_nb.engine.jitter import MarkerJitterBuffer
from ivisit_nb.engine.video import LinkVideo
from ivisit_nb.media import NumpySource, TestPattern, VideoFile, read_stamp
from ivisit_nb.settings import Settings

SMALL = dict(fps=15, width=320, height=240)  # cheap enough for a loaded 2-core machine
T = 30  # generous limits: the suite also runs beside two busy loops


def small_pattern(user: str) -> TestPattern:
    return TestPattern(user, **SMALL)


def link_video(session, user: str) -> LinkVideo:
    return session.mesh.link_to(user).find(LinkVideo)


def recorder(session) -> list:
    seen: list = []
    session.on(lambda e: seen.append(e) if isinstance(e, (ev.VideoChanged, ev.RequestPending)) else None)
    return seen


def changed(seen, user, direction, active):
    return [e for e in seen if isinstance(e, ev.VideoChanged) and (e.user, e.direction, e.active) == (user, direction, active)]


def stamp_of(feed):
    frame = feed.latest_frame
    return read_stamp(frame) if frame is not None else None


def on_engine(session, fn, *args):
    session._engine.call_soon(fn, *args)


def assert_frames_flow(feed, more: int = 10):
    """The feed gets ``more`` new frames and the stamp's frame counter goes up."""
    wait_until(lambda: stamp_of(feed), T)
    first, n = stamp_of(feed), feed.stats.frames
    wait_until(lambda: feed.stats.frames >= n + more, T)
    later = wait_until(lambda: stamp_of(feed), T)
    assert later[0] > first[0], (first, later)


def assert_nothing_decoded(session, user: str, seconds: float = 1.5):
    """No frame of ``user``'s video is decoded: aiortc's receiver discards the packets."""
    lv = link_video(session, user)
    feed = session.video_feed(user)
    wait_until(lambda: not lv.receiver_enabled, T)
    frames, decoded = feed.stats.frames, lv.frames_received
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:  # watching for a change, not sleeping to pass
        assert feed.stats.frames == frames and lv.frames_received == decoded
        assert not lv.receiver_enabled
        time.sleep(0.1)


# -- video arrives -------------------------------------------------------------------------
def test_video_arrives_with_a_moving_stamp_and_a_bitrate(pair):
    alice, bob = pair
    bob.settings["alice"].calls = "accept"
    seen_a, seen_b = recorder(alice), recorder(bob)
    feed = bob.video_feed("alice")
    assert feed is bob.video_feed("alice") and not feed.active
    alice.start_video(small_pattern("alice"), to="bob")
    assert_frames_flow(feed)
    assert feed.active and (feed.stats.width, feed.stats.height) == (320, 240)
    wait_until(lambda: (feed.stats.bitrate or 0) > 10_000, T)
    assert alice.local_feed.active and alice.local_feed.stats.frames > 0
    wait_until(lambda: changed(seen_a, "bob", "out", True) and changed(seen_b, "alice", "in", True), T)
    assert link_video(alice, "bob").negotiated_direction == "sendonly"
    assert link_video(bob, "alice").negotiated_direction == "recvonly"
    # frames are decoded when their marked packet is in (engine/jitter.py), not one frame later
    assert isinstance(link_video(bob, "alice").transceiver.receiver._RTCRtpReceiver__jitter_buffer, MarkerJitterBuffer)


def test_both_directions_at_once(pair):
    alice, bob = pair
    alice.settings["bob"].calls = "accept"
    bob.settings["alice"].calls = "accept"
    alice.start_video(small_pattern("alice"))
    bob.start_video(small_pattern("bob"))
    assert_frames_flow(bob.video_feed("alice"))
    assert_frames_flow(alice.video_feed("bob"))
    wait_until(lambda: link_video(alice, "bob").negotiated_direction == "sendrecv", T)
    wait_until(lambda: link_video(bob, "alice").negotiated_direction == "sendrecv", T)
    alice.stop_video()  # bob's video to alice goes on
    wait_until(lambda: link_video(alice, "bob").negotiated_direction == "recvonly", T)
    assert_frames_flow(alice.video_feed("bob"))
    assert_nothing_decoded(bob, "alice", 1.0)


# -- consent: the four choices ---------------------------------------------------------------
@pytest.mark.parametrize("decision,always", [("accept", True), ("accept", False), ("refuse", True), ("refuse", False)])
def test_the_four_choices(pair, decision, always):
    alice, bob = pair
    seen_a, seen_b = recorder(alice), recorder(bob)
    alice.start_video(small_pattern("alice"), to="bob")
    req = wait_until(lambda: bob.video_requests, T)[0]
    assert (req.kind, req.sender) == ("video", "alice")
    assert any(isinstance(e, ev.RequestPending) and e.request is req for e in seen_b)
    feed = bob.video_feed("alice")
    (req.accept if decision == "accept" else req.refuse)(always=always)
    assert bob.settings["alice"].calls == (decision if always else "ask")
    if decision == "accept":
        assert_frames_flow(feed)
        wait_until(lambda: changed(seen_a, "bob", "out", True), T)
    else:
        refused = wait_until(lambda: changed(seen_a, "bob", "out", False), T)[0]
        assert "bob" in refused.reason
        assert feed.stats.frames == 0 and not feed.active
        assert_nothing_decoded(bob, "alice", 1.0)
        assert link_video(bob, "alice").frames_received == 0
    # the next start asks again only for "this one"
    alice.stop_video()
    wait_until(lambda: not link_video(alice, "bob").send_on and not link_video(bob, "alice").recv_on, T)
    alice.start_video(to="bob")
    if always:
        assert wait_until(lambda: changed(seen_a, "bob", "out", decision == "accept")[1:], T)
        assert not bob.video_requests
    else:
        wait_until(lambda: bob.video_requests, T)[0].refuse()


def test_an_offer_flood_makes_one_request_and_bad_messages_are_dropped(pair):
    alice, bob = pair
    link = alice.mesh.link_to("bob")
    for _ in range(50):
        on_engine(alice, link.send, {"t": "video-offer"})
    for bad in ({"t": "video-refuse", "reason": 5}, {"t": "video-accept"}, {"t": "video-offer", "x": [1, 2]},
                {"t": "sdp", "type": "answer", "sdp": "v=0"}, {"t": "sdp", "type": "pranswer"}, {"t": "renegotiate"}):
        on_engine(alice, link.send, bad)
    wait_until(lambda: bob.video_requests, T)
    assert alice.say("still here", to="bob").wait(T) == ["bob"]
    wait_until(lambda: "still here" in set(bob.messages.text), T)
    assert len(bob.video_requests) == 1
    assert bob.peers["alice"].state == "connected" and alice.peers["bob"].state == "connected"


def test_an_unusable_re_offer_fails_the_link(pair):
    alice, bob = pair  # alice offers (her name sorts first)
    bobs = bob.mesh.link_to("alice")
    on_engine(alice, alice.mesh.link_to("bob").send, {"t": "sdp", "type": "offer", "sdp": "v=0\r\nnot really"})
    wait_until(lambda: bobs.state == "failed", T)
    assert "unusable re-offer" in bobs.reason
    wait_until(lambda: bob.mesh.link_to("alice") is not bobs, T)  # the mesh links again
    bob.wait_for_peers(timeout=T).wait()


# -- stopping: by the receiver, the settings, blocking, the sender ----------------------------------
@pytest.mark.parametrize("how", ["calls", "blocked", "defaults"])
def test_the_receiver_stops_a_running_video(pair, how):
    alice, bob = pair
    bob.settings["alice"].calls = "accept"
    seen_a, seen_b = recorder(alice), recorder(bob)
    feed = bob.video_feed("alice")
    alice.start_video(small_pattern("alice"), to="bob")
    assert_frames_flow(feed, 5)
    if how == "calls":
        bob.settings["alice"].calls = "refuse"
    elif how == "blocked":
        bob.settings["alice"].blocked = True
    else:  # a default refuse does not override alice's own accept
        bob.settings.defaults.calls = "refuse"
        assert_frames_flow(feed, 5)
        return
    stopped = wait_until(lambda: changed(seen_b, "alice", "in", False), T)[0]
    assert not feed.active
    assert_nothing_decoded(bob, "alice")
    told = wait_until(lambda: changed(seen_a, "bob", "out", False), T)[0]
    assert told.reason == stopped.reason and "bob" in told.reason
    wait_until(lambda: not link_video(alice, "bob").sending, T)
    # chat stays, even for a blocked user
    assert alice.say("hello after", to="bob").wait(T) == ["bob"]
    wait_until(lambda: "hello after" in set(bob.messages.text), T)
    assert bob.peers["alice"].state == "connected"


def test_stop_video_keeps_chat_and_files(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].calls = "accept"
    bob.settings["alice"].files = "accept"
    seen_b = recorder(bob)
    alice.start_video(small_pattern("alice"), to="bob")
    assert_frames_flow(bob.video_feed("alice"), 5)
    alice.stop_video(to="bob")
    wait_until(lambda: changed(seen_b, "alice", "in", False), T)
    assert not bob.video_feed("alice").active
    assert_nothing_decoded(bob, "alice", 1.0)
    assert not alice.local_feed.active  # nobody left to send to: the source stops
    f = make_file(tmp_path / "after.bin", 300_000)
    assert alice.send_file(f, to="bob").wait(T) == "done"
    assert (tmp_path / "inbox" / "bob" / "alice" / "after.bin").read_bytes() == f.read_bytes()
    assert bob.say("and chat", to="alice").wait(T) == ["alice"]
    wait_until(lambda: "and chat" in set(alice.messages.text), T)


def test_a_transfer_survives_renegotiations(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].calls = "accept"
    bob.settings["alice"].files = "accept"
    big = sparse_file(tmp_path / "big.bin", 160 * 1024 * 1024)  # too large to finish before a renegotiation
    t = alice.send_file(big, to="bob")
    wait_until(lambda: t.progress > 0, 60)  # bytes flow
    link = alice.mesh.link_to("bob")
    during = 0  # renegotiations that finished while the transfer ran
    for i in range(8):
        if t.ended:
            break
        n = link.negotiations
        if i % 2 == 0:
            alice.start_video(small_pattern("alice"), to="bob")
        else:
            alice.stop_video(to="bob")
        wait_until(lambda: t.ended or link.negotiations > n, T)
        if not t.ended:
            during += link.negotiations - n
    assert t.wait(120) == "done"
    assert during >= 1, "no renegotiation finished while the transfer ran"
    assert link is alice.mesh.link_to("bob") and link.state == "connected"
    got = tmp_path / "inbox" / "bob" / "alice" / "big.bin"
    assert got.stat().st_size == big.stat().st_size
    with open(big, "rb") as a, open(got, "rb") as b:
        a.seek(big.stat().st_size // 2), b.seek(big.stat().st_size // 2)
        assert a.read(8192) == b.read(8192)


# -- the room ---------------------------------------------------------------------------------
def test_start_video_to_the_room_reaches_who_joins_later(server, make_session, tmp_path):
    alice = make_session(server.url, "alice")
    bob = make_session(server.url, "bob")
    Settings(tmp_path / "config" / "bob" / "settings.json")["alice"].calls = "accept"
    Settings(tmp_path / "config" / "carol" / "settings.json")["alice"].calls = "accept"
    bob.settings["alice"].calls = "accept"
    alice.wait_for_peers(timeout=T).wait()
    alice.start_video(small_pattern("alice"))  # to the whole room
    assert_frames_flow(bob.video_feed("alice"), 5)
    carol = make_session(server.url, "carol")  # joins later, accepts alice's video by her settings
    assert_frames_flow(carol.video_feed("alice"), 5)
    assert_frames_flow(bob.video_feed("alice"), 5)


# -- sources --------------------------------------------------------------------------------
def test_numpy_source_frames_arrive(pair):
    alice, bob = pair
    bob.settings["alice"].calls = "accept"
    src = NumpySource(fps=15, width=160, height=120)
    red = np.zeros((120, 160, 3), np.uint8)
    red[..., 0] = 220
    blue = np.zeros((120, 160, 3), np.uint8)
    blue[..., 2] = 220
    src.push(red)
    alice.start_video(src, to="bob")
    feed = bob.video_feed("alice")

    def colour():
        frame = feed.latest_frame
        return None if frame is None else frame.reshape(-1, 3).mean(axis=0)

    wait_until(lambda: colour() is not None and colour()[0] > 150 and colour()[2] < 60, T)
    src.push(blue)
    wait_until(lambda: colour()[2] > 150 and colour()[0] < 60, T)
    assert (feed.stats.width, feed.stats.height) == (160, 120)


def _write_video(path, frames: int = 8, size=(160, 120)):
    with av.open(str(path), "w") as out:
        stream = out.add_stream("mpeg4", rate=Fraction(15))
        stream.width, stream.height, stream.pix_fmt = size[0], size[1], "yuv420p"
        for i in range(frames):
            img = np.full((size[1], size[0], 3), 20 * i, np.uint8)
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            for packet in stream.encode(frame):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    return path


def test_video_file_loops(tmp_path):
    path = _write_video(tmp_path / "clip.mp4", frames=8)
    src = VideoFile(path, fps=120)
    assert (src.width, src.height, src.fps) == (160, 120, 120)
    assert VideoFile(path).fps == 15

    async def pull(n):
        return [await src.recv() for _ in range(n)]

    frames = asyncio.run(pull(20))
    src.stop()
    assert src.loops >= 2
    assert all((f.width, f.height) == (160, 120) for f in frames)
    pts = [f.pts for f in frames]
    assert pts == sorted(pts) and len(set(pts)) == len(pts)  # never rewinds across a loop
    with pytest.raises(FileNotFoundError):
        VideoFile(tmp_path / "missing.mp4")
    garbage = make_file(tmp_path / "garbage.mp4", 4096)
    with pytest.raises(ValueError, match="not a video file"):
        VideoFile(garbage)


def test_a_video_file_goes_over_the_link(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].calls = "accept"
    alice.start_video(VideoFile(_write_video(tmp_path / "clip.mp4", frames=6), fps=15), to="bob")
    feed = bob.video_feed("alice")
    wait_until(lambda: feed.stats.frames > 20, T)  # more than the file holds: it loops
    assert (feed.stats.width, feed.stats.height) == (160, 120)


def test_swapping_the_source_keeps_the_video_going(pair):
    alice, bob = pair
    bob.settings["alice"].calls = "accept"
    alice.start_video(small_pattern("alice"), to="bob")
    feed = bob.video_feed("alice")
    assert_frames_flow(feed, 5)
    src = NumpySource(fps=15, width=320, height=240)
    src.push(np.full((240, 320, 3), 200, np.uint8))
    alice.start_video(src)  # a new source for everyone we send to; pts keep growing
    wait_until(lambda: feed.latest_frame is not None and feed.latest_frame.mean() > 150, T)
    n = feed.stats.frames
    wait_until(lambda: feed.stats.frames > n + 5, T)


def test_test_pattern_is_cheap_and_stamped():
    src = TestPattern("zoë", fps=30, width=640, height=480)
    t0 = time.perf_counter()
    frames = [src.make_frame(i) for i in range(30)]
    per_frame = (time.perf_counter() - t0) / 30
    assert per_frame < 0.05  # generous under load; about 1-2 ms idle
    images = [f.to_ndarray(format="rgb24") for f in frames]
    assert [read_stamp(im)[0] for im in images[:3]] == [0, 1, 2]
    assert not np.array_equal(images[0][100:], images[5][100:])  # it moves
    with pytest.raises(ValueError):
        TestPattern(width=321)


def test_leaving_ends_the_video_tasks(pair):
    alice, bob = pair
    bob.settings["alice"].calls = "accept"
    alice.start_video(small_pattern("alice"), to="bob")
    feed = bob.video_feed("alice")
    assert_frames_flow(feed, 5)
    tasks = list(link_video(bob, "alice")._tasks) + list(link_video(alice, "bob")._tasks)
    assert tasks
    seen_b = recorder(bob)
    alice.leave()
    wait_until(lambda: changed(seen_b, "alice", "in", False), T)
    assert not feed.active and not alice.local_feed.active
    wait_until(lambda: all(t.done() for t in tasks), T)


# -- renegotiation itself ----------------------------------------------------------------------
def test_renegotiations_are_serialized_and_coalesced(pair):
    alice, bob = pair  # alice offers
    link, bobs = alice.mesh.link_to("bob"), bob.mesh.link_to("alice")

    async def during_one() -> int:
        n = link.negotiations
        link.renegotiate()
        while link._answer_waiter is None:  # the first is under way ...
            await asyncio.sleep(0.001)
        for _ in range(5):  # ... so these make exactly one more
            link.renegotiate()
        while link.negotiating:
            await asyncio.sleep(0.01)
        return link.negotiations - n

    assert alice._engine.run(during_one(), T) == 2
    n = bobs.negotiations
    on_engine(bob, bobs.renegotiate)  # the answerer asks; the offerer offers
    wait_until(lambda: bobs.negotiations == n + 1, T)
    assert link.state == bobs.state == "connected"
    assert alice.say("after", to="bob").wait(T) == ["bob"]


def test_a_peer_that_never_answers_a_re_offer_fails_the_link(pair, monkeypatch):
    from ivisit_nb.engine import linkproto, peerlink

    alice, bob = pair
    monkeypatch.setattr(peerlink, "RENEGOTIATE_TIMEOUT", 1.0)
    link, bobs = alice.mesh.link_to("bob"), bob.mesh.link_to("alice")
    bobs._control_owner["sdp"] = linkproto.BaseLinkProtocol()  # bob ignores re-offers
    on_engine(alice, link.renegotiate)
    wait_until(lambda: link.state == "failed", T)
    assert "did not answer a renegotiation" in link.reason
