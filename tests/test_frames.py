"""Typed log frames (ivisit_nb/frames.py): one dtype per column in every log, whatever the rows hold."""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pytest

from ivisit_nb.chat import COLUMNS as CHAT_COLUMNS
from ivisit_nb.frames import DTYPES, SCHEMAS, frame, schema
from ivisit_nb.settings import Settings
from ivisit_nb.sharing.inbox import COLUMNS as INBOX_COLUMNS
from ivisit_nb.sharing.policy import Offer, Policy, as_row
from ivisit_nb.sharing.transfers import LOG_COLUMNS, Transfer

T0 = 1_700_000_000.25


def transfer_row(**over):
    t = Transfer("a" * 32, "in", "alice", "file", "data.csv", 1234, "blake3:" + "0" * 64)
    return {**t.as_row(), "offered_at": T0, **over}


def test_every_log_has_one_schema_that_matches_its_rows():
    assert SCHEMAS["transfers"] == LOG_COLUMNS
    assert SCHEMAS["items"] == INBOX_COLUMNS
    assert SCHEMAS["messages"] == CHAT_COLUMNS
    policy_row = as_row(Offer("alice", "file", "a", 1, "h"), Policy(Settings(None)).decide(Offer("alice", "file", "a", 1, "h")),
                        time=T0, transfer_id="t")
    assert set(policy_row) == set(SCHEMAS["policy_log"])
    assert all(c in DTYPES for cols in SCHEMAS.values() for c in cols), "every column has a dtype"


@pytest.mark.parametrize("log", list(SCHEMAS))
def test_empty_logs_already_have_their_dtypes(log):
    df = frame([], log)
    assert list(df.columns) == SCHEMAS[log]
    assert {c: str(t) for c, t in df.dtypes.items()} == schema(log)


def test_transfer_rows_get_times_categories_and_counts():
    df = frame([transfer_row(status="done", lane="datachannel", decision="accept", decided_by="user",
                             started_at=T0 + 1, finished_at=T0 + 3, bytes_transferred=1234),
                transfer_row(transfer_id="b" * 32, direction="out")], "transfers")
    assert str(df.offered_at.dtype) == "datetime64[ns, UTC]"
    assert df.offered_at[0] == pd.Timestamp(T0, unit="s", tz="UTC")
    assert pd.isna(df.finished_at[1])  # still active: NaT
    assert (df.finished_at - df.started_at)[0] == pd.Timedelta(seconds=2)
    for col in ("status", "decision", "decided_by", "kind", "direction", "lane"):
        assert df[col].dtype == "category", col
    assert list(df.status) == ["done", "offered"]
    assert pd.isna(df.decision[1]) and pd.isna(df.lane[1])
    assert df["size"].dtype == "Int64" and df.bytes_transferred.tolist() == [1234, 0]
    assert df.path.isna().all()


def test_values_that_do_not_fit_become_missing_never_an_error():
    df = frame([{"time": "soon", "transfer_id": 7, "bytes": "many", "total": 2.0},
                {"time": None, "transfer_id": None, "bytes": None, "total": None}], "progress_log")
    assert df.time.isna().all()
    assert df.transfer_id.tolist()[0] == "7"
    assert pd.isna(df.bytes[0]) and df.total[0] == 2
    assert str(df.total.dtype) == "Int64"


def test_strings_are_cleaned_everywhere_and_convert_to_arrow():
    bad = "lone \udc80 surrogate\x00"
    df = frame([{"time": T0, "sender": bad, "to": None, "text": bad, "decision": "accept"}], "messages")
    assert df.text[0] == df.sender[0] == "lone \ufffd surrogate"
    for log in SCHEMAS:
        pa.Table.from_pandas(frame([{c: None for c in SCHEMAS[log]}], log))
    buf = io.BytesIO()
    df.to_parquet(buf)
    back = pd.read_parquet(io.BytesIO(buf.getvalue()))
    assert str(back.time.dtype).startswith("datetime64") and str(back.time.dt.tz) == "UTC"
    assert back.decision.dtype == "category"


def test_frame_names_the_logs_when_given_a_wrong_one():
    with pytest.raises(KeyError, match="the logs are transfers, progress_log"):
        frame([], "transfer")


def test_unknown_columns_keep_what_pandas_infers():
    df = frame([{"x": 1, "size": 2}], ["x", "size"], dtypes={"size": "float64"})
    assert df.x.dtype == "int64" and df["size"].dtype == "float64"


def test_policy_replay_reads_the_typed_policy_log():
    settings = Settings(None)
    policy = Policy(settings, "bob")
    policy.receiving = True
    rows = []
    for name, size in (("a.csv", 10), ("b.exe", 20)):
        offer = Offer("alice", "file", name, size, "blake3:" + "1" * 64)
        rows.append(as_row(offer, policy.decide(offer), time=T0, transfer_id=name))
    log = frame(rows, "policy_log")
    assert list(log.decision) == ["ask", "ask"] and log.decision.dtype == "category"
    policy.rule = lambda o: "accept" if o.name.endswith(".csv") and o.size < 50 else None
    replay = policy.replay(log)
    assert list(replay.new_decision) == ["accept", "ask"]
    assert list(replay.changed) == [True, False]
    assert list(replay["size"]) == [10, 20]
