"""Heartbeat: notice a dead peer within seconds, and measure the round-trip time.

aiortc's ICE consent takes about 30 s to notice a killed peer, and SCTP has no
heartbeat, so each link pings on its control channel. Anything heard from the peer
(control or data) counts as a sign of life; silence for ``dead_after`` seconds fails
the link.
"""

from __future__ import annotations

import asyncio
import collections
import time
from typing import Any

from .linkproto import BaseLinkProtocol
from .loop import spawn
from .stats import sctp_acked

HEARTBEAT_INTERVAL = 0.5
DEAD_AFTER = 3.5
RTT_SAMPLES = 1200  # ten minutes at two pings a second


class Heartbeat(BaseLinkProtocol):
    """One per link: pings every ``interval`` s; the link fails after ``dead_after`` s of silence."""

    control_types = frozenset({"ping", "pong"})

    def __init__(self, interval: float = HEARTBEAT_INTERVAL, dead_after: float = DEAD_AFTER) -> None:
        self.interval, self.dead_after = interval, dead_after
        #: (unix time, rtt in seconds) for each pong, newest last.
        self.samples: collections.deque[tuple[float, float]] = collections.deque(maxlen=RTT_SAMPLES)
        self._task: asyncio.Task[None] | None = None

    def on_control(self, link: Any, msg: dict[str, Any]) -> None:
        ts = msg.get("ts")
        if not isinstance(ts, (int, float)) or isinstance(ts, bool):
            return
        if msg["t"] == "ping":
            link.send({"t": "pong", "ts": ts})
        else:
            rtt = time.monotonic() - ts
            if 0 <= rtt < 3600:  # a pong to a ping we sent
                link.rtt = rtt
                self.samples.append((time.time(), rtt))

    def on_link_up(self, link: Any) -> None:
        self._task = spawn(self._beat(link), f"heartbeat {link.remote}")

    def on_link_down(self, link: Any) -> None:
        if self._task is not None and self._task is not asyncio.current_task():
            self._task.cancel()

    async def _beat(self, link: Any) -> None:
        acked = sctp_acked(link)
        while link.state == "connected":
            await asyncio.sleep(self.interval)
            now = time.monotonic()
            link.send({"t": "ping", "ts": now})
            # A peer whose SCTP acknowledges our data is alive, even if its pings are stuck
            # behind a retransmission timer while we send a file at full speed.
            if (latest := sctp_acked(link)) != acked:
                acked, link.last_heard = latest, max(link.last_heard, now)
            silent = now - link.last_heard
            if silent > self.dead_after:
                await link.close("failed", f"no heartbeat from {link.remote} for {silent:.1f} s")
