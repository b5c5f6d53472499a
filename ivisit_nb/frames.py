"""Log rows to pandas DataFrames whose strings are always valid.

Every log a session shows (transfers, policy, progress, messages, the inbox) is
built here, so one bad string from a peer (a lone surrogate, say) can never make a
DataFrame unprintable or unconvertible to Arrow. pandas is imported only here.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable

from .protocol.text import clean_text

if TYPE_CHECKING:
    import pandas as pd

MAX_CELL_CHARS = 1 << 20


def _clean(value: Any) -> Any:
    return clean_text(value, MAX_CELL_CHARS) if isinstance(value, str) else value


def frame(rows: Iterable[dict[str, Any]], columns: list[str]) -> "pd.DataFrame":
    """A DataFrame of ``rows`` with ``columns``, every string cleaned (see :func:`~.protocol.text.clean_text`)."""
    import pandas as pd

    return pd.DataFrame([{k: _clean(row.get(k)) for k in columns} for row in rows], columns=columns)
