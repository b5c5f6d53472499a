"""engine/stats.py, the one place that reads aiortc's private state, on a real linked pair.

The pinned aiortc range (pyproject.toml) is what these tests were run with; if a new aiortc
moves these internals, this file says so before the notebooks and session.stats() go blank."""

from __future__ import annotations

from helpers import make_file, wait_until
from ivisit_nb.engine import stats


def test_candidates_and_the_selected_pair(pair):
    alice, bob = pair
    link = alice.peers["bob"].link
    cands = stats.candidates(link)
    assert {c.side for c in cands} == {"local", "remote"}
    assert all(c.type in ("host", "srflx", "prflx", "relay") and 0 < c.port < 65536 for c in cands)
    local, remote = stats.selected_pair(link)
    assert (local.type, remote.type) == ("host", "host")  # two sessions on one machine, no TURN
    assert any(c.side == "local" and (c.address, c.port) == (local.address, local.port) for c in cands)
    frames = alice.stats()
    assert list(frames["pairs"].local_type) == ["host"]
    assert set(frames["candidates"].side) == {"local", "remote"}


def test_sctp_acknowledgements_move_while_data_flows(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    bob.settings["alice"].lane = "datachannel"
    link = alice.peers["bob"].link
    before = stats.sctp_acked(link)
    assert isinstance(before, int)
    assert alice.send_file(make_file(tmp_path / "x.bin", 2_000_000), to="bob").wait(60) == "done"
    assert stats.sctp_acked(link) != before
    wait_until(lambda: not stats.sctp_unacked(link), 10)  # everything acknowledged once idle
    counters = stats.sctp_counters(link)
    assert set(counters) == {"cwnd", "flight_size", "rto", "outbound_queue", "sent_queue"}
    assert counters["cwnd"] > 0
