"""MarkerJitterBuffer: a video frame goes to the decoder when its last (marked) packet is in.

Real aiortc RtpPackets, fed as aiortc's receiver feeds them (``_data`` is the depayloaded part).
"""

from __future__ import annotations

from aiortc.jitterbuffer import JitterBuffer
from aiortc.rtp import RtpPacket

from ivisit_nb.engine.jitter import MarkerJitterBuffer


def packet(seq: int, ts: int, data: bytes, marker: bool = False) -> RtpPacket:
    p = RtpPacket(payload_type=96, sequence_number=seq % 65536, timestamp=ts, marker=int(marker))
    p._data = data  # type: ignore[attr-defined]
    return p


def frames(first_seq: int, count: int, parts: int = 3) -> list[RtpPacket]:
    """``count`` frames of ``parts`` packets each; the last packet of a frame is marked."""
    out, seq = [], first_seq
    for f in range(count):
        for i in range(parts):
            out.append(packet(seq, 3000 * f, f"f{f}p{i};".encode(), marker=i == parts - 1))
            seq += 1
    return out


def feed(buffer: JitterBuffer, packets: list[RtpPacket]) -> list[tuple[int, int, bytes]]:
    """(index of the packet that completed the frame, timestamp, data) for each frame handed on."""
    out = []
    for i, p in enumerate(packets):
        _pli, frame = buffer.add(p)
        if frame is not None:
            out.append((i, frame.timestamp, frame.data))
    return out


def test_a_frame_is_handed_on_at_its_marked_packet_not_one_frame_later():
    packets = frames(1000, 4)
    ours = feed(MarkerJitterBuffer(capacity=128, is_video=True), packets)
    aiortcs = feed(JitterBuffer(capacity=128, is_video=True), packets)
    assert [i for i, _, _ in ours] == [2, 5, 8, 11]  # the marked packets
    assert [i for i, _, _ in aiortcs] == [3, 6, 9]  # the next frame's first packets
    assert [(ts, d) for _, ts, d in ours[:3]] == [(ts, d) for _, ts, d in aiortcs]  # the same frames
    assert ours[0][2] == b"f0p0;f0p1;f0p2;"


def test_a_reordered_frame_waits_for_its_missing_packet():
    p = frames(5, 2)
    order = [p[0], p[2], p[1], p[3], p[4], p[5]]  # the marked packet comes before the middle one
    got = feed(MarkerJitterBuffer(capacity=128, is_video=True), order)
    assert [(i, d) for i, _, d in got] == [(2, b"f0p0;f0p1;f0p2;"), (5, b"f1p0;f1p1;f1p2;")]


def test_a_lost_packet_falls_back_to_aiortcs_rule():
    p = frames(200, 12)
    lossy = p[:1] + p[2:]  # frame 0 lost its middle packet
    ours = feed(MarkerJitterBuffer(capacity=16, is_video=True), lossy)
    aiortcs = feed(JitterBuffer(capacity=16, is_video=True), lossy)
    # the same recovery (after the buffer overflows), plus the newest frame, which aiortc still holds
    assert [(ts, d) for _, ts, d in ours[:-1]] == [(ts, d) for _, ts, d in aiortcs] and len(aiortcs) >= 8
    assert ours[-1][2] == b"f11p0;f11p1;f11p2;"
    assert all(not d.startswith(b"f0") for _, _, d in ours)  # the torn frame is never decoded


def test_sequence_numbers_wrap():
    got = feed(MarkerJitterBuffer(capacity=128, is_video=True), frames(65534, 3))
    assert [d for _, _, d in got] == [b"f0p0;f0p1;f0p2;", b"f1p0;f1p1;f1p2;", b"f2p0;f2p1;f2p2;"]


def test_without_markers_it_is_aiortcs_buffer():
    packets = [packet(p.sequence_number, p.timestamp, p._data) for p in frames(300, 30, parts=2)]
    ours = feed(MarkerJitterBuffer(capacity=128, is_video=True), packets)
    aiortcs = feed(JitterBuffer(capacity=128, is_video=True), packets)
    assert ours == aiortcs and len(ours) == 29
