"""aiortc's video jitter buffer, but a frame ends at its RTP marker bit.

aiortc's ``JitterBuffer`` hands a frame to the decoder only when the first packet of the
*next* frame arrives (a new RTP timestamp): every frame waits one frame interval, 33 ms at
30 fps, before it is decoded. Senders mark the last packet of each video frame (RFC 3550's
marker bit; RFC 7741 for VP8, RFC 6184 for H.264; aiortc and browsers set it), so a gapless
run of packets with one timestamp that ends with a marked packet is a whole frame, and it is
handed on at once. Anything else (a gap, no marker yet) is left to aiortc's own rule.
"""

from __future__ import annotations

from typing import Any

from aiortc.jitterbuffer import JitterBuffer, JitterFrame


class MarkerJitterBuffer(JitterBuffer):
    """A ``JitterBuffer`` that also ends a frame at a packet with the marker bit."""

    def _remove_frame(self, sequence_number: int) -> JitterFrame | None:
        if self._origin is not None:
            timestamp = None
            for count in range(self.capacity):
                packet = self._packets[(self._origin + count) % self._capacity]
                if packet is None or (timestamp is not None and packet.timestamp != timestamp):
                    break
                timestamp = packet.timestamp
                if packet.marker:
                    run = [self._packets[(self._origin + i) % self._capacity] for i in range(count + 1)]
                    self.remove(count + 1)
                    return JitterFrame(data=b"".join(p._data for p in run), timestamp=timestamp)
        return super()._remove_frame(sequence_number)


def end_frames_at_marker(receiver: Any) -> bool:
    """Give a video ``RTCRtpReceiver`` a :class:`MarkerJitterBuffer`, before its first packet.

    False (and nothing changed) when the receiver has no video jitter buffer where aiortc 1.x
    keeps it, or packets already went into it.
    """
    name = "_RTCRtpReceiver__jitter_buffer"
    current = getattr(receiver, name, None)
    if type(current) is not JitterBuffer or not getattr(current, "_is_video", False) or current._origin is not None:
        return isinstance(current, MarkerJitterBuffer)
    setattr(receiver, name, MarkerJitterBuffer(capacity=current.capacity, is_video=True))
    return True
