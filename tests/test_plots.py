"""Every plot of ivisit_nb.plots from the logs of real transfers, drawn headless (Agg)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import pytest  # noqa: E402

from ivisit_nb import plots  # noqa: E402
from helpers import make_file, wait_until  # noqa: E402


@pytest.fixture(scope="module")
def logs(tmp_path_factory):
    """bob's logs after a data-channel file, a direct-lane file, a dedup, a refusal and a URL."""
    from ivisit_nb import RoomServer, Session

    tmp = tmp_path_factory.mktemp("plots")
    with RoomServer() as server:
        kw = {"config_dir": tmp / "config"}
        with Session.join(server.url, "alice", "lab", inbox=tmp / "in-alice", **kw) as alice, \
             Session.join(server.url, "bob", "lab", inbox=tmp / "in-bob", **kw) as bob:
            bob.wait_for_peers(timeout=30).wait()
            alice.wait_for_peers(timeout=30).wait()
            bob.receiving = True
            bob.settings["alice"].files = bob.settings["alice"].urls = "accept"
            small = make_file(tmp / "small.bin", 1_500_000)
            assert alice.send_file(small, to="bob").wait(30) == "done"
            alice.settings["bob"].lane = "direct"
            fast = alice.send_file(make_file(tmp / "fast.bin", 2_000_000), to="bob")
            assert fast.wait(30) == "done" and fast.lane == "direct"
            assert alice.send_file(small, to="bob").wait(30) == "done"  # dedup
            assert alice.send_url("https://example.org/", to="bob").wait(10) == "done"
            bob.settings["alice"].files = "refuse"
            assert alice.send_file(make_file(tmp / "no.bin", 10), to="bob").wait(10) == "refused"
            wait_until(lambda: len(bob.stats()["rtt"]) >= 2, 10)
            yield {"transfers": bob.transfers, "progress_log": bob.progress_log, "policy_log": bob.policy_log,
                   "rtt": bob.stats()["rtt"], "tmp": tmp}


@pytest.fixture(autouse=True)
def _close_figures():
    yield
    plt.close("all")


def saved(ax, path):
    ax.figure.savefig(path)
    return path.stat().st_size > 1000


def test_throughput_has_a_line_per_file_that_moved_bytes(logs):
    ax = plots.throughput(logs["progress_log"], logs["transfers"])
    assert sorted(line.get_label() for line in ax.get_lines()) == ["fast.bin (alice)", "small.bin (alice)"]
    assert all(max(line.get_ydata()) > 0 for line in ax.get_lines())
    assert ax.get_ylabel() == "MB/s" and ax.get_xlabel().endswith("UTC")
    assert saved(ax, logs["tmp"] / "throughput.png")


def test_timeline_has_a_bar_per_transfer_coloured_by_lane_and_hatched_by_status(logs):
    transfers = logs["transfers"]
    ax = plots.timeline(transfers)
    assert len(ax.get_yticklabels()) == len(transfers) == 5
    legend = {t.get_text() for t in ax.get_legend().get_texts()}
    assert {"datachannel", "direct", "dedup", "control", "done", "refused"} <= legend
    hatches = {p.get_hatch() for p in ax.patches}
    assert "//" in hatches  # the refused one
    assert saved(ax, logs["tmp"] / "timeline.png")


def test_size_vs_duration_is_on_log_axes_by_lane(logs):
    ax = plots.size_vs_duration(logs["transfers"])
    assert ax.get_xscale() == ax.get_yscale() == "log"
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert labels == ["datachannel", "dedup", "direct"]  # the URL (size 0) and the refused file are left out
    assert [len(c.get_offsets()) for c in ax.collections] == [1, 1, 1]


def test_decisions_by_sender_and_kind(logs):
    fig, ax = plt.subplots()
    assert plots.decisions(logs["policy_log"], ax=ax) is ax
    labels = [t.get_text() for t in ax.get_xticklabels()]
    assert labels == ["alice\nfile", "alice\nurl"]
    heights = {(round(p.get_x() + p.get_width() / 2), p.get_facecolor()[:3]): p.get_height() for p in ax.patches}
    assert sum(heights.values()) == len(logs["policy_log"]) == 5


def test_rtt_lines_per_link_with_transfers_shaded_behind(logs):
    ax = plots.rtt(logs["rtt"], logs["transfers"])
    assert [line.get_label() for line in ax.get_lines()] == ["alice"]
    started = logs["transfers"].started_at.notna().sum()
    assert len(ax.patches) == started >= 4  # axvspan: one per transfer that started
    assert saved(ax, logs["tmp"] / "rtt.png")


def test_empty_logs_still_plot(logs):
    empty = {name: df.iloc[0:0] for name, df in logs.items() if name != "tmp"}
    plots.throughput(empty["progress_log"], empty["transfers"])
    plots.timeline(empty["transfers"])
    plots.size_vs_duration(empty["transfers"])
    plots.decisions(empty["policy_log"])
    plots.rtt(empty["rtt"], empty["transfers"])
    plots.progress(empty["progress_log"])
