"""Plots of a session's logs (pandas DataFrames) with matplotlib.

    from ivisit_nb.logs import plot_progress, plot_decisions
    plot_progress(bob.progress_log, bob.transfers)
    plot_decisions(bob.policy_log)
"""

from __future__ import annotations

from typing import Any

import pandas as pd


def _axes(ax: Any) -> Any:
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=(7, 3.5))[1]


def plot_progress(progress_log: pd.DataFrame, transfers: pd.DataFrame | None = None, ax: Any = None) -> Any:
    """Bytes received over time, one line per transfer, labelled with its name and peer.

    Time is in seconds from each transfer's first sample, so transfers can be compared.
    Returns the matplotlib Axes.
    """
    ax = _axes(ax)
    names: dict[str, str] = {}
    if transfers is not None and len(transfers):
        names = {r.transfer_id: f"{r.name} ({r.peer})" for r in transfers.itertuples()}
    for tid, rows in progress_log.groupby("transfer_id", sort=False):
        rows = rows.sort_values("time")
        ax.plot(rows["time"] - rows["time"].iloc[0], rows["bytes"] / 1e6, marker=".", label=names.get(tid, tid[:8]))
    ax.set_xlabel("seconds since the first byte")
    ax.set_ylabel("MB received")
    ax.set_title("Transfer progress")
    if len(progress_log):
        ax.legend(fontsize="small")
    return ax


def plot_decisions(policy_log: pd.DataFrame, ax: Any = None) -> Any:
    """Offers per sender, stacked by decision (accept / refuse / ask), as bars. Returns the Axes."""
    ax = _axes(ax)
    if len(policy_log):
        counts = policy_log.groupby(["sender", "decision"]).size().unstack(fill_value=0)
        counts.plot.bar(stacked=True, ax=ax, rot=0)
    ax.set_xlabel("sender")
    ax.set_ylabel("offers")
    ax.set_title("Consent decisions")
    return ax
