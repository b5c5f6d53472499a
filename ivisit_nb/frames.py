"""Log rows to typed pandas DataFrames whose strings are always valid.

Every log a session shows (transfers, progress, policy, messages, the inbox, peers and
link statistics) is built here, so each column has one dtype in every log and one bad
string from a peer (a lone surrogate, say) can never make a DataFrame unprintable or
unconvertible to Arrow. The columns of each log are listed once, in :data:`SCHEMAS`, and
each column name has one dtype, in :data:`DTYPES` (docs/logs.md explains every column).

Rows are plain dicts with Unix seconds for times; this module is the only place that
turns them into pandas types, and it imports pandas only when a frame is asked for.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Iterable, Mapping, Sequence

from .protocol.text import clean_text

if TYPE_CHECKING:
    import pandas as pd

MAX_CELL_CHARS = 1 << 20

# The kinds of column. A dtype name here is what :func:`frame` gives the column.
TIME = "datetime64[ns, UTC]"  # from Unix seconds; missing is NaT
CATEGORY = "category"  # a few distinct words (status, decision ...); missing is NaN
COUNT = "Int64"  # integers (bytes, sizes, ports), nullable: missing is <NA>
NUMBER = "float64"  # seconds (rtt, rto); missing is NaN
FLAG = "bool"
TEXT = "str"  # pandas' string dtype (missing is NaN); the strings are cleaned

#: The dtype of every column that appears in a log; a name means the same in every log.
DTYPES: dict[str, str] = {
    **dict.fromkeys(["time", "offered_at", "started_at", "finished_at"], TIME),
    **dict.fromkeys(
        ["status", "decision", "decided_by", "kind", "direction", "lane", "state", "role", "side", "type",
         "local_type", "remote_type", "protocol"],
        CATEGORY,
    ),
    **dict.fromkeys(
        ["size", "bytes", "total", "bytes_transferred", "resumed_from", "bytes_sent", "bytes_received", "dropped",
         "port", "local_port", "remote_port", "priority", "cwnd", "flight_size", "transfers"],
        COUNT,
    ),
    **dict.fromkeys(["rtt", "rto"], NUMBER),
    "member": FLAG,
    **dict.fromkeys(
        ["transfer_id", "peer", "name", "hash", "reason", "path", "sender", "url", "to", "text", "sas", "lanes",
         "local_fingerprint", "remote_fingerprint", "address", "local_address", "remote_address"],
        TEXT,
    ),
}

#: The columns of every log, in order. The first five are what a session persists (ivisit_nb.logbook).
SCHEMAS: dict[str, list[str]] = {
    "transfers": [
        "transfer_id", "direction", "peer", "kind", "name", "size", "hash", "status", "decision",
        "decided_by", "lane", "bytes_transferred", "resumed_from", "offered_at", "started_at",
        "finished_at", "reason", "path",
    ],
    "progress_log": ["time", "transfer_id", "bytes", "total"],
    "policy_log": ["time", "transfer_id", "sender", "kind", "name", "size", "hash", "url", "decision", "decided_by", "reason"],
    "messages": ["time", "sender", "to", "text", "decision"],
    "items": ["time", "sender", "kind", "name", "path", "url", "hash", "size", "lane"],
    "peers": ["name", "member", "state", "reason", "rtt", "sas", "lanes"],
    "links": ["peer", "state", "kind", "role", "local_fingerprint", "remote_fingerprint", "sas", "rtt",
              "bytes_sent", "bytes_received", "lanes", "dropped", "cwnd", "flight_size", "rto"],
    "candidates": ["peer", "side", "type", "protocol", "address", "port", "priority"],
    "pairs": ["peer", "local_type", "local_address", "local_port", "remote_type", "remote_address", "remote_port", "protocol"],
    "rtt": ["peer", "time", "rtt"],
    "lanes": ["peer", "lane", "transfers", "bytes_sent", "bytes_received"],
}


def _clean(value: Any) -> Any:
    return clean_text(value, MAX_CELL_CHARS) if isinstance(value, str) else value


def _text_dtype() -> Any:
    import numpy as np
    import pandas as pd

    try:
        return pd.StringDtype(na_value=np.nan)  # pandas' "str" (the default string dtype from pandas 3)
    except TypeError:  # pandas before 2.3: plain Python strings, None when missing
        return object


def _column(values: list[Any], dtype: str | None) -> Any:
    """``values`` as a pandas array of ``dtype``; values that do not fit become missing, never an error."""
    import pandas as pd

    s = pd.Series(values, dtype=object)
    if dtype is None:
        return pd.Series(values)  # not a known column: let pandas choose
    if dtype == TIME:
        return pd.to_datetime(pd.to_numeric(s, errors="coerce"), unit="s", utc=True).astype(TIME)
    if dtype == COUNT:
        try:
            return pd.array(values, dtype=COUNT)
        except (TypeError, ValueError):  # a float or a word where a count belongs
            return pd.to_numeric(s, errors="coerce").round().astype(COUNT)
    if dtype == NUMBER:
        return pd.to_numeric(s, errors="coerce").astype(NUMBER)
    if dtype == FLAG:
        return pd.Series([v is not None and bool(v) for v in values], dtype=bool)
    if dtype == CATEGORY:
        return s.where(s.map(lambda v: isinstance(v, str)), None).astype(CATEGORY)
    if dtype == TEXT:
        return s.where(s.notna(), None).astype(_text_dtype())
    return s.astype(dtype)


def frame(
    rows: Iterable[Mapping[str, Any]], columns: Sequence[str] | str, dtypes: Mapping[str, str] | None = None
) -> "pd.DataFrame":
    """A typed DataFrame of ``rows``: one row per dict, every string cleaned (:func:`~.protocol.text.clean_text`).

    ``columns`` is a list of column names, or the name of a log in :data:`SCHEMAS`
    (``"transfers"``, ``"progress_log"`` ...). Each column gets its dtype from ``dtypes``,
    else from :data:`DTYPES` by name; a column known to neither keeps what pandas infers.
    A key missing from a row is a missing value. Times in rows are Unix seconds.
    """
    import pandas as pd

    if isinstance(columns, str):
        if columns not in SCHEMAS:
            raise KeyError(f"no log called {columns!r}; the logs are {', '.join(SCHEMAS)}")
        columns = SCHEMAS[columns]
    cols = list(columns)
    rows = list(rows)
    types = {**DTYPES, **(dtypes or {})}
    data = {c: _column([_clean(row.get(c)) for row in rows], types.get(c)) for c in cols}
    return pd.DataFrame(data, columns=cols, index=pd.RangeIndex(len(rows)))


def schema(log: str) -> dict[str, str]:
    """Column -> dtype name of the log called ``log`` (a key of :data:`SCHEMAS`)."""
    return {c: DTYPES.get(c, "object") for c in SCHEMAS[log]}
