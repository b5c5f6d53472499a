"""Plots of a session's logs with matplotlib; each takes the DataFrame(s) and returns the Axes.

    from ivisit_nb import plots
    plots.throughput(bob.progress_log, bob.transfers)
    plots.timeline(bob.transfers)
    plots.size_vs_duration(bob.transfers)
    plots.decisions(bob.policy_log)
    plots.rtt(bob.stats()["rtt"], bob.transfers)

Pass ``ax=`` to draw into an Axes of your own; without it each function makes a new figure
with pyplot (shown inline in a notebook). Nothing here needs a display: where there is none,
matplotlib draws with its Agg backend, and ``fig.savefig`` writes the picture. Times on the
x axes are seconds from the earliest time plotted (said in the axis label, in UTC), or from
``t0`` (a UTC Timestamp) where a function takes it, so that plots line up.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import pandas as pd
    from matplotlib.axes import Axes

LANE_COLORS = {"datachannel": "tab:blue", "direct": "tab:orange", "dedup": "tab:green", "resume": "tab:olive",
               "control": "tab:purple"}
DECISION_COLORS = {"accept": "tab:green", "refuse": "tab:red", "ask": "tab:orange", "sent": "tab:blue"}
STATUS_HATCHES = {"done": "", "refused": "//", "cancelled": "..", "failed": "xx"}  # still active: ``--``
MB = 1e6


def _axes(ax: Any, size: tuple[float, float] = (7, 3.5)) -> "Axes":
    if ax is not None:
        return ax
    import matplotlib.pyplot as plt

    return plt.subplots(figsize=size, layout="constrained")[1]


def _color(table: dict[str, str], key: Any) -> str:
    if key in table:
        return table[key]
    palette = ["tab:brown", "tab:pink", "tab:gray", "tab:cyan"]
    return palette[sum(map(ord, str(key))) % len(palette)]  # stable from run to run


def _labels(transfers: "pd.DataFrame | None") -> dict[str, str]:
    """transfer_id -> ``name (peer)``."""
    if transfers is None or not len(transfers):
        return {}
    return {r.transfer_id: f"{r.name} ({r.peer})" for r in transfers.itertuples()}


def _seconds(times: "pd.Series", t0: Any) -> "pd.Series":
    return (times - t0).dt.total_seconds()


def _since(t0: Any) -> str:
    return f"seconds since {t0:%H:%M:%S}.{t0.microsecond // 1000:03d} UTC" if t0 is not None else "seconds"


def progress(progress_log: "pd.DataFrame", transfers: "pd.DataFrame | None" = None, ax: Any = None) -> "Axes":
    """Bytes present at the receiver over time, one line per transfer, labelled ``name (peer)``.

    Time is in seconds from each transfer's first sample, so transfers can be compared.
    """
    ax = _axes(ax)
    names = _labels(transfers)
    for tid, rows in progress_log.groupby("transfer_id", sort=False, observed=True):
        rows = rows.sort_values("time")
        seconds = _seconds(rows["time"], rows["time"].iloc[0])
        ax.plot(seconds.to_numpy(), rows["bytes"].to_numpy(dtype=float, na_value=float("nan")) / MB,
                marker=".", label=names.get(tid, str(tid)[:8]))
    ax.set_xlabel("seconds since the first sample")
    ax.set_ylabel("MB received")
    ax.set_title("Transfer progress")
    if len(progress_log):
        ax.legend(fontsize="small")
    return ax


def throughput(
    progress_log: "pd.DataFrame", transfers: "pd.DataFrame | None" = None, ax: Any = None, t0: Any = None
) -> "Axes":
    """Throughput over time (MB/s between progress samples), one line per transfer.

    With ``transfers`` each line starts where its transfer started and is labelled
    ``name (peer)``. Transfers that moved no bytes (a dedup), or have a single sample and
    no start, have no line.
    """
    import pandas as pd

    ax = _axes(ax)
    names = _labels(transfers)
    starts: dict[str, tuple[Any, Any]] = {}
    if transfers is not None and len(transfers):
        starts = {r.transfer_id: (r.started_at, r.resumed_from) for r in transfers.itertuples()}
    if t0 is None and len(progress_log):
        begun = [s for s, _ in starts.values() if not pd.isna(s)]
        t0 = min([progress_log["time"].min(), *begun])
    for tid, rows in progress_log.groupby("transfer_id", sort=False, observed=True):
        times, done = rows["time"].tolist(), rows["bytes"].tolist()
        start, offset = starts.get(tid, (None, None))
        if start is not None and not pd.isna(start) and not pd.isna(offset):
            times, done = [start, *times], [offset, *done]
        points = sorted((t, b) for t, b in zip(times, done) if not pd.isna(t) and not pd.isna(b))
        while len(points) > 1 and points[-1][1] == points[-2][1]:
            points.pop()  # the row written when it ended repeats the last count
        if not points or points[-1][1] == points[0][1]:
            continue  # no bytes moved (a dedup, say): no throughput to show
        xs, ys = [], []
        for (ta, ba), (tb, bb) in zip(points, points[1:]):
            dt = (tb - ta).total_seconds()
            if dt > 0:
                xs.append((tb - t0).total_seconds())
                ys.append((bb - ba) / dt / MB)
        if xs:
            ax.step(xs, ys, where="pre", marker=".", label=names.get(tid, str(tid)[:8]))
    ax.set_xlabel(_since(t0))
    ax.set_ylabel("MB/s")
    ax.set_title("Throughput")
    if ax.get_lines():
        ax.legend(fontsize="small")
    return ax


def timeline(transfers: "pd.DataFrame", ax: Any = None, t0: Any = None) -> "Axes":
    """A Gantt chart of transfers: a bar from offer to end, solid from the first byte on.

    Bars are coloured by lane (grey before a lane was chosen) and hatched by status
    (done plain, refused ``//``, cancelled ``..``, failed ``xx``, still active ``--``).
    """
    import pandas as pd
    from matplotlib.patches import Patch

    ax = _axes(ax, (8, max(2.0, 0.35 * len(transfers) + 1.2)))
    rows = transfers.sort_values("offered_at").reset_index(drop=True)
    now = pd.Timestamp.now(tz="UTC")
    if t0 is None and len(rows):
        t0 = rows["offered_at"].min()
    for i, r in enumerate(rows.itertuples()):
        end = r.finished_at if not pd.isna(r.finished_at) else now
        begin = r.started_at if not pd.isna(r.started_at) else end
        lane = r.lane if isinstance(r.lane, str) else None
        color = _color(LANE_COLORS, lane) if lane else "lightgray"
        hatch = STATUS_HATCHES.get(str(r.status), "--")
        x0 = (r.offered_at - t0).total_seconds()
        ax.barh(i, (begin - r.offered_at).total_seconds(), left=x0, color=color, alpha=0.3, height=0.6)
        ax.barh(i, max((end - begin).total_seconds(), 1e-3), left=(begin - t0).total_seconds(),
                color=color, hatch=hatch, edgecolor="black", linewidth=0.5, height=0.6)
    ax.set_yticks(range(len(rows)), [f"{r.name} {'→' if r.direction == 'out' else '←'} {r.peer}" for r in rows.itertuples()])
    ax.invert_yaxis()
    ax.set_xlabel(_since(t0) + " (pale: waiting for a decision or a slot)")
    ax.set_title("Transfers")
    lanes = list(dict.fromkeys(rows["lane"].dropna().astype(str)))
    statuses = list(dict.fromkeys(rows["status"].dropna().astype(str)))
    handles = [Patch(color=_color(LANE_COLORS, x), label=x) for x in lanes]
    handles += [Patch(facecolor="white", edgecolor="black", hatch=STATUS_HATCHES.get(s, "--"), label=s) for s in statuses]
    if handles:
        ax.legend(handles=handles, fontsize="small", loc="best")
    return ax


def size_vs_duration(transfers: "pd.DataFrame", ax: Any = None) -> "Axes":
    """Size against duration (first byte to end) of the files that are done, by lane, on log axes.

    Dedups show up too (large sizes in milliseconds); URLs (size 0) cannot sit on a log axis.
    """
    ax = _axes(ax)
    done = transfers[(transfers["status"] == "done") & (transfers["size"] > 0)]
    seconds = (done["finished_at"] - done["started_at"]).dt.total_seconds()
    done = done.assign(seconds=seconds)[seconds > 0]
    for lane, rows in done.groupby("lane", sort=True, observed=True):
        ax.scatter(rows["seconds"].to_numpy(), rows["size"].to_numpy(dtype=float) / MB,
                   color=_color(LANE_COLORS, lane), label=str(lane), alpha=0.8)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("seconds (first byte to done)")
    ax.set_ylabel("MB")
    ax.set_title("Size against duration")
    if len(done):
        ax.legend(fontsize="small", title="lane")
    return ax


def decisions(policy_log: "pd.DataFrame", ax: Any = None) -> "Axes":
    """Consent decisions by sender and kind: one bar per (sender, kind), stacked by decision."""
    ax = _axes(ax)
    if len(policy_log):
        counts = policy_log.groupby(["sender", "kind", "decision"], observed=True).size().unstack("decision", fill_value=0)
        labels = [f"{sender}\n{kind}" for sender, kind in counts.index]
        bottom = [0] * len(counts)
        for decision in counts.columns:
            heights = counts[decision].tolist()
            ax.bar(labels, heights, bottom=bottom, label=str(decision), color=_color(DECISION_COLORS, decision))
            bottom = [b + h for b, h in zip(bottom, heights)]
        ax.legend(fontsize="small", title="decision")
    ax.set_xlabel("sender and kind")
    ax.set_ylabel("offers")
    ax.set_title("Consent decisions")
    return ax


def rtt(rtt_frame: "pd.DataFrame", transfers: "pd.DataFrame | None" = None, ax: Any = None, t0: Any = None) -> "Axes":
    """Heartbeat round-trip time over time, one line per link (``session.stats()["rtt"]``), in ms.

    With ``transfers`` each transfer's time on the wire (first byte to end) is shaded behind
    the lines in its lane's colour, so you can see what a transfer does to the round trip.
    """
    import pandas as pd

    ax = _axes(ax)
    times = [rtt_frame["time"]]
    spans = None
    if transfers is not None and len(transfers):
        spans = transfers.dropna(subset=["started_at"])
        times.append(spans["started_at"])
    if t0 is None:
        t0 = min((t.min() for t in times if len(t)), default=None)
    for peer, rows in rtt_frame.groupby("peer", sort=True, observed=True):
        rows = rows.sort_values("time")
        ax.plot(_seconds(rows["time"], t0).to_numpy(), rows["rtt"].to_numpy() * 1000, marker=".", linewidth=1, label=str(peer))
    if spans is not None and t0 is not None:
        now = pd.Timestamp.now(tz="UTC")
        for r in spans.itertuples():
            end = r.finished_at if not pd.isna(r.finished_at) else now
            ax.axvspan((r.started_at - t0).total_seconds(), (end - t0).total_seconds(),
                       color=_color(LANE_COLORS, r.lane), alpha=0.15, linewidth=0)
    ax.set_xlabel(_since(t0) + (" (shaded: transfers, by lane)" if spans is not None and len(spans) else ""))
    ax.set_ylabel("RTT (ms)")
    ax.set_title("Round-trip time")
    if len(rtt_frame):
        ax.legend(fontsize="small", title="link")
    return ax


__all__ = ["progress", "throughput", "timeline", "size_vs_duration", "decisions", "rtt"]
