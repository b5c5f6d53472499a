"""The first two plots of a session's logs, kept under their old names; see :mod:`ivisit_nb.plots` for all.

    from ivisit_nb.logs import plot_progress, plot_decisions
    plot_progress(bob.progress_log, bob.transfers)
    plot_decisions(bob.policy_log)
"""

from __future__ import annotations

from .plots import decisions as plot_decisions
from .plots import progress as plot_progress

__all__ = ["plot_progress", "plot_decisions"]
