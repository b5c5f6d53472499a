"""The logs of a real transfer, plotted with matplotlib (Agg backend, no display)."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

from ivisit_nb.logs import plot_decisions, plot_progress  # noqa: E402
from helpers import make_file  # noqa: E402


def test_plots_from_real_logs(pair, tmp_path):
    alice, bob = pair
    bob.settings["alice"].files = "accept"
    assert alice.send_file(make_file(tmp_path / "a.bin", 3_000_000), to="bob").wait(30) == "done"
    bob.receiving = False
    assert alice.send_file(make_file(tmp_path / "b.bin", 10), to="bob").wait(10) == "refused"

    ax = plot_progress(bob.progress_log, bob.transfers)
    lines = ax.get_lines()
    assert len(lines) == 1
    assert lines[0].get_label() == "a.bin (alice)"
    assert max(lines[0].get_ydata()) == 3.0  # MB, the last sample is the whole file

    ax = plot_decisions(bob.policy_log)
    labels = [t.get_text() for t in ax.get_legend().get_texts()]
    assert sorted(labels) == ["accept", "refuse"]
    heights = sorted(p.get_height() for p in ax.patches)
    assert heights == [1, 1]
    ax.figure.savefig(tmp_path / "decisions.png")
    assert (tmp_path / "decisions.png").stat().st_size > 1000
