"""Cleaning: every reason code, time parsing, dedupe, bots, reconciliation, the job end to end."""
from __future__ import annotations

import collections
import datetime as dt
import json
import re

import pytest
from pyspark.sql import functions as F

from tests.conftest import TINY_SYNTHETIC as TINY
from tests.conftest import load_job as job
from tests.conftest import synthetic_job_argv
from recsys_spark.ingest import cleaning as C
from recsys_spark import io
from recsys_spark.ingest import sources
from recsys_spark.config import load_config
from recsys_spark.schemas import EVENTS_CLEAN, QUARANTINE

pytestmark = pytest.mark.spark

UTC = dt.timezone.utc
REFERENCE = "2026-03-02T00:00:00Z"  # the day after the synthetic span ends
RAW_FIELDS = (*sources.FIELDS, "source_file", "corrupt_record", "parse_error")
RAW_SCHEMA = ", ".join(f"{c} string" for c in RAW_FIELDS) + ", record_bytes int"


def raw_rows(spark, *rows: dict):
    """Rows as sources.read_source gives them (strings, record_bytes); unspecified fields null."""
    defaults = {"source_file": "f.json", "record_bytes": 100}
    data = [tuple(r.get(f, defaults.get(f)) for f in (*RAW_FIELDS, "record_bytes")) for r in rows]
    return spark.createDataFrame(data, RAW_SCHEMA)


def validate(df, **kw):
    args = dict(
        event_types=["view", "click", "add_to_cart", "purchase", "rating"],
        timestamp_format="iso8601",
        min_time="1995-01-01T00:00:00",
        max_time="2026-03-03T00:00:00",
        rating_min=0.0,
        rating_max=5.0,
    )
    args.update(kw)
    return C.validate_events(df, **args)


def ok(**kw) -> dict:
    row = {"event_id": None, "user_id": "u1", "item_id": "i1", "event_type": "view", "timestamp": "2026-01-05T10:00:00Z"}
    row.update(kw)
    return row


# --------------------------------------------------------------------------- time parsing


TIME_CASES = [
    ("iso8601", "2026-01-05T13:45:12.345Z", dt.datetime(2026, 1, 5, 13, 45, 12, 345000)),
    ("iso8601", "2026-01-05T13:45:12+02:00", dt.datetime(2026, 1, 5, 11, 45, 12)),  # offset -> UTC
    ("iso8601", "2026-01-05 13:45", dt.datetime(2026, 1, 5, 13, 45)),  # no offset: UTC
    ("iso8601", "2026-01-05", dt.datetime(2026, 1, 5)),
    ("iso8601", "2026-01-05T1", None),  # Spark's cast alone would read 01:00
    ("iso8601", "2026-02-30T10:00:00Z", None),
    ("iso8601", "13/01/2026 10:00:00", None),
    ("iso8601", "881250949", None),
    # 881250949 s = 10199 days (1997-12-04) + 57349 s (15:55:49)
    ("epoch_s", "881250949", dt.datetime(1997, 12, 4, 15, 55, 49)),
    ("epoch_s", " 881250949.5 ", dt.datetime(1997, 12, 4, 15, 55, 49, 500000)),
    ("epoch_s", "2026-01-05", None),
    ("epoch_s", "8.8e8", None),
    # 1700000000123 ms = 19675 days (2023-11-14) + 80000 s (22:13:20) + 123 ms
    ("epoch_ms", "1700000000123", dt.datetime(2023, 11, 14, 22, 13, 20, 123000)),
    ("epoch_ms", "1700000000123.5", dt.datetime(2023, 11, 14, 22, 13, 20, 123500)),
    ("epoch_ms", "abc", None),
    ("epoch_ms", "", None),
]


def test_parse_event_time(spark):
    df = spark.createDataFrame([(text,) for _, text, _ in TIME_CASES], "t string")
    parsed = [
        C.parse_event_time(F.col("t"), timestamp_format=fmt).alias(f"c{i}") for i, (fmt, _, _) in enumerate(TIME_CASES)
    ]
    rows = df.select(*parsed).collect()  # one job: case i is column i of row i
    got = [(fmt, text, rows[i][i]) for i, (fmt, text, _) in enumerate(TIME_CASES)]
    # The session time zone is UTC, so Spark hands back naive UTC datetimes.
    assert got == TIME_CASES


# --------------------------------------------------------------------------- validation


def test_each_reason_code_on_hand_written_rows(spark):
    cases = {
        "good": (ok(), None),
        "good_rating": (ok(event_type=" Rating ", value="4.5"), None),
        "malformed": (ok(user_id=None, corrupt_record='{"uid":"u1'), C.REASON_MALFORMED),
        "no_user": (ok(user_id=None), C.REASON_MISSING_USER),
        "blank_user": (ok(user_id="  "), C.REASON_MISSING_USER),
        "no_item": (ok(item_id=None), C.REASON_MISSING_ITEM),
        "hover": (ok(event_type="hover"), C.REASON_UNKNOWN_TYPE),
        "no_type": (ok(event_type=None), C.REASON_UNKNOWN_TYPE),
        "bad_time": (ok(timestamp="yesterday"), C.REASON_INVALID_TS),
        "no_time": (ok(timestamp=None), C.REASON_INVALID_TS),
        "old": (ok(timestamp="1994-12-31T23:59:59Z"), C.REASON_TOO_OLD),
        "future": (ok(timestamp="2026-03-03T00:00:01Z"), C.REASON_FUTURE),
        "edge_future": (ok(timestamp="2026-03-03T00:00:00Z"), None),  # exactly max_time is fine
        "five": (ok(event_type="rating", value="five"), C.REASON_INVALID_VALUE),
        "nan": (ok(event_type="rating", value="NaN"), C.REASON_INVALID_VALUE),
        "rating_no_value": (ok(event_type="rating"), C.REASON_INVALID_VALUE),
        "rating_too_high": (ok(event_type="rating", value="5.5"), C.REASON_INVALID_VALUE),
        "view_bad_value": (ok(value="true"), C.REASON_INVALID_VALUE),
        # Several faults: the first check in REASON_CODES order wins.
        "no_user_and_bad_time": (ok(user_id="", timestamp="x", event_type="hover"), C.REASON_MISSING_USER),
    }
    rows = [dict(r, session_id=name) for name, (r, _) in cases.items()]
    got = {r["session_id"]: (r["reason"], r["detail"]) for r in validate(raw_rows(spark, *rows)).collect()}
    assert {k: v[0] for k, v in got.items()} == {k: v[1] for k, v in cases.items()}
    assert all(detail for reason, detail in got.values() if reason)
    assert "five" in got["five"][1] and "hover" in got["hover"][1]


def test_fixed_event_type_and_normalised_columns(spark):
    df = validate(
        raw_rows(spark, ok(event_type=None, value="3", timestamp="881250949", session_id=" ")),
        timestamp_format="epoch_s",
        fixed_event_type="rating",
    )
    (row,) = C.to_events_clean(df).collect()
    assert row["event_type"] == "rating" and row["value"] == 3.0 and row["session_id"] is None
    assert row["event_time"] == dt.datetime(1997, 12, 4, 15, 55, 49)
    assert row["event_date"] == dt.date(1997, 12, 4)


# --------------------------------------------------------------------------- dedupe and bots


def dedupe(df, **kw):
    return C.mark_duplicates(df, C.duplicate_groups(df), **kw)


def test_dedupe_by_event_id_keeps_one_deterministically(spark):
    rows = [
        ok(event_id="e1", timestamp="2026-01-05T10:00:02Z", session_id="late"),
        ok(event_id="e1", timestamp="2026-01-05T10:00:01Z", session_id="early"),
        ok(event_id="e1", timestamp="2026-01-05T10:00:01Z", session_id="early"),
        ok(event_id="e2", timestamp="2026-01-05T10:00:01Z"),  # same content, other id: kept
        ok(event_id=" ", item_id="i2"),  # blank id: deduped by key, no clash with others
    ]
    marked = dedupe(validate(raw_rows(spark, *rows))).collect()
    kept = sorted((r["_event_id"] or "-", r["session_id"]) for r in marked if not r["is_duplicate"])
    assert kept == [("-", None), ("e1", "early"), ("e2", None)]
    assert sum(r["is_duplicate"] for r in marked) == 2


def test_dedupe_without_event_id_uses_the_full_key(spark):
    rows = [
        ok(event_type="rating", value="4"),
        ok(event_type="rating", value="4.0", source_file="g.json"),  # same value once parsed
        ok(event_type="rating", value="3"),  # other value: another event
        ok(event_type="click"),
        ok(event_type="click", timestamp="2026-01-05T10:00:00.001Z"),  # other time
        ok(event_type="click", user_id="u2"),
    ]
    df = validate(raw_rows(spark, *rows))
    marked = dedupe(df).collect()
    assert sorted(map(tuple, marked)) == sorted(map(tuple, dedupe(df, broadcast_groups=False).collect()))
    kept = [r for r in marked if not r["is_duplicate"]]
    assert len(kept) == 5
    # Of the two copies the first by (time, source_file, ...) is kept.
    assert [r["source_file"] for r in kept if r["_value"] == 4.0] == ["f.json"]


def _burst(user, start, n, step_ms):
    t0 = dt.datetime.fromisoformat(start)
    return [
        ok(user_id=user, event_id=f"{user}-{i}", timestamp=(t0 + dt.timedelta(milliseconds=i * step_ms)).isoformat() + "Z")
        for i in range(n)
    ]


def test_bot_users_by_sliding_minute(spark):
    rows = (
        _burst("fast", "2026-01-05T10:00:00", 121, 490)  # 121 events in 58.8 s
        + _burst("edge", "2026-01-05T10:00:00", 120, 490)  # exactly the limit: not a bot
        # 121 events in 59 s across a minute boundary (61 + 60 per calendar minute)
        + _burst("straddle", "2026-01-05T10:00:29.5", 121, 490)
        + _burst("steady", "2026-01-05T10:00:00", 400, 1000)  # 60 per minute for 6 minutes
    )
    df = validate(raw_rows(spark, *rows))
    bots = sorted(r["user_id"] for r in C.find_bot_users(df, max_events_per_minute=120).collect())
    assert bots == ["fast", "straddle"]
    flagged = C.flag_bot_users(df, spark.createDataFrame([("fast",)], "user_id string"))
    counts = collections.Counter((r["user_id"], r["is_bot"]) for r in flagged.collect())
    assert counts[("fast", True)] == 121 and counts[("edge", False)] == 120 and counts[("fast", False)] == 0


# --------------------------------------------------------------------------- the run, on generated data




def expected_reason(line: str) -> str | None:
    """What a raw synthetic line must get, judged from the line alone."""
    try:
        r = json.loads(line)
    except json.JSONDecodeError:
        return C.REASON_MALFORMED
    if not r.get("uid"):
        return C.REASON_MISSING_USER
    if r.get("iid") is None:
        return C.REASON_MISSING_ITEM
    if r["type"] == "hover":
        return C.REASON_UNKNOWN_TYPE
    if not re.match(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{3}Z$", r["ts"]):
        return C.REASON_INVALID_TS
    if r["ts"] < "1995":
        return C.REASON_TOO_OLD
    if r["ts"] > "2027":
        return C.REASON_FUTURE
    if r.get("val") == "five":
        return C.REASON_INVALID_VALUE
    return None


@pytest.fixture(scope="module")
def cleaned(spark, tmp_path_factory):
    argv, raw, wh = synthetic_job_argv(tmp_path_factory.mktemp("clean"), TINY)
    manifest = job("generate_events").main(argv)
    report = job("clean_events").main(argv + ["--reference-time", REFERENCE, "--run-id", "test-run"])
    lines = [l for p in sorted(raw.rglob("part-*")) for l in p.read_text().splitlines()]
    clean = io.read_table(spark, str(wh), EVENTS_CLEAN)
    quarantine = io.read_table(spark, str(wh), QUARANTINE)
    return dict(manifest=manifest, report=report, lines=lines, wh=wh, clean=clean, quarantine=quarantine)


def test_reconciles_exactly(cleaned):
    r, m = cleaned["report"], cleaned["manifest"]
    assert r["reconciles"] is True
    assert r["input_rows"] == len(cleaned["lines"]) == m["total_lines"]
    assert r["input_rows"] == r["clean_rows"] + r["duplicates"] + r["quarantined_rows"]
    assert cleaned["clean"].count() == r["clean_rows"] == m["expected"]["clean_rows"]
    assert cleaned["quarantine"].count() == r["quarantined_rows"]
    assert r["duplicates"] == m["expected"]["duplicates"] == m["dirty"]["duplicate"] > 0


def test_every_dirty_kind_in_quarantine_with_its_reason(cleaned):
    r, m = cleaned["report"], cleaned["manifest"]
    expected = {code: m["expected"]["quarantined_by_reason"].get(code, 0) for code in C.REASON_CODES}
    assert r["quarantined_by_reason"] == expected
    # Every kind the generator plants occurs (hostile inputs: tests/test_hostile_input.py).
    assert set(m["expected"]["quarantined_by_reason"]) >= {
        C.REASON_MALFORMED, C.REASON_MISSING_USER, C.REASON_MISSING_ITEM, C.REASON_UNKNOWN_TYPE,
        C.REASON_INVALID_TS, C.REASON_TOO_OLD, C.REASON_FUTURE, C.REASON_INVALID_VALUE, C.REASON_BOT,
    }
    assert all(n > 0 for n in m["expected"]["quarantined_by_reason"].values())
    assert r["quarantined_files"] == 0 and r["input_files"] == len(list(cleaned["wh"].parent.joinpath("raw").rglob("part-*")))
    table = {row["reason"]: row["count"] for row in cleaned["quarantine"].groupBy("reason").count().collect()}
    assert table == {code: n for code, n in expected.items() if n}


def test_each_quarantined_row_has_the_reason_its_raw_line_calls_for(cleaned):
    want = collections.Counter(filter(None, map(expected_reason, cleaned["lines"])))
    q = cleaned["quarantine"].collect()
    got = collections.Counter(row["reason"] for row in q if row["reason"] != C.REASON_BOT)
    assert got == want
    for row in q:
        assert row["run_id"] == "test-run" and row["source_file"].startswith("file:") and row["detail"]
        if row["reason"] == C.REASON_MALFORMED:
            assert row["raw_record"] in cleaned["lines"]  # the line as it came
        elif row["reason"] != C.REASON_BOT:
            # Rendered from the source columns: judged again, the same reason.
            assert expected_reason(row["raw_record"]) == row["reason"], row


def test_resent_events_kept_once(cleaned):
    resent = {json.loads(l)["eid"] for l, n in collections.Counter(cleaned["lines"]).items() if n > 1}
    assert len(resent) == cleaned["manifest"]["dirty"]["duplicate"]
    clean = cleaned["clean"]
    assert clean.where(F.col("event_id").isin(*resent)).count() == len(resent)
    assert clean.groupBy("event_id").count().where("count > 1").count() == 0


def test_bot_users_quarantined_and_absent_from_clean(cleaned):
    bots = cleaned["manifest"]["bot_users"]
    assert cleaned["report"]["bot_users"] == len(bots) and cleaned["report"]["bot_user_ids"] == sorted(bots)
    assert cleaned["clean"].where(F.col("user_id").isin(*bots)).count() == 0
    q = cleaned["quarantine"].where(F.col("reason") == C.REASON_BOT).collect()
    assert collections.Counter(json.loads(r["raw_record"])["uid"] for r in q) == {b: 300 for b in bots}


def test_events_clean_content(cleaned, spark):
    r = cleaned["report"]
    clean = cleaned["clean"]
    by_type = {row["event_type"]: row["count"] for row in clean.groupBy("event_type").count().collect()}
    assert by_type == {t: n for t, n in r["events_by_type"].items() if n}
    line = next(l for l in cleaned["lines"] if expected_reason(l) is None and '"type":"rating"' in l)
    src = json.loads(line)
    row = clean.where(F.col("event_id") == src["eid"]).first()
    assert row["event_time"] == dt.datetime.strptime(src["ts"], "%Y-%m-%dT%H:%M:%S.%fZ")
    assert row["event_date"] == row["event_time"].date()
    assert (row["user_id"], row["item_id"], row["value"], row["session_id"]) == (src["uid"], src["iid"], float(src["val"]), src["sid"])
    dates = sorted(p.name for p in (cleaned["wh"] / "events_clean").iterdir() if p.name.startswith("event_date="))
    assert dates[0] == "event_date=2026-01-01" and dates[-1] == "event_date=2026-03-01"


def test_report_written_beside_the_tables(cleaned, spark):
    path = io.report_path(str(cleaned["wh"]), "clean_events", "test-run")
    on_disk = io.read_json(spark, path)
    assert on_disk["input_rows"] == cleaned["report"]["input_rows"] and on_disk["reconciles"] is True
    assert on_disk["reference_time"] == "2026-03-02T00:00:00+00:00"


def test_reference_time_decides_the_future(spark, cleaned, tmp_path):
    """Same data, 'now' set to the span's middle: the later half becomes future."""
    cfg = load_config(
        dataset="synthetic",
        overrides=[f"dataset.source.path={cleaned['manifest']['output']}", f"warehouse={tmp_path}"],
    )
    report = C.run_clean(spark, cfg, reference_time=dt.datetime(2026, 2, 1, tzinfo=UTC), run_id="mid")
    cutoff = "2026-02-02T00:00:00.000Z"  # reference + max_future_hours (24)
    # The future check comes before the value check, and before dedupe and
    # bot detection: every line that was valid or had only a bad value, and
    # lies after the cutoff, is now future, as are the year-2100 lines.
    later = sum(
        1
        for line in cleaned["lines"]
        if expected_reason(line) in (None, C.REASON_INVALID_VALUE) and json.loads(line)["ts"] > cutoff
    )
    assert later > 1000
    assert report["quarantined_by_reason"][C.REASON_FUTURE] == later + cleaned["manifest"]["dirty"]["future_timestamp"]
    assert report["reconciles"] is True and report["input_rows"] == cleaned["report"]["input_rows"]


def test_missing_source_exits_2_naming_the_path(spark, tmp_path, capsys):
    missing = tmp_path / "no-such-dir"
    argv = ["--dataset", "synthetic", "--warehouse", str(tmp_path / "wh"), "--set", f"dataset.source.path={missing}"]
    with pytest.raises(SystemExit) as exit_info:
        job("clean_events").main(argv)
    assert exit_info.value.code == 2  # a missing input: the user's to fix (docs/operations.md, "Exit codes")
    assert str(missing) in capsys.readouterr().err
    assert not (tmp_path / "wh").exists()  # nothing written


# --------------------------------------------------------------------------- MovieLens


@pytest.mark.movielens
def test_movielens_import(spark, ml100k_dir, tmp_path):
    wh = tmp_path / "wh"
    argv = [
        "--dataset", "movielens-100k", "--warehouse", str(wh),
        "--set", f"dataset.source.path={ml100k_dir / 'ratings.csv'}",
    ]
    report = job("clean_events").main(argv)
    assert report["input_rows"] == 100_000 and report["clean_rows"] == 100_000
    assert report["quarantined_rows"] == 0 and report["duplicates"] == 0 and report["reconciles"] is True
    assert report["events_by_type"]["rating"] == 100_000
    clean = io.read_table(spark, str(wh), EVENTS_CLEAN)
    stats = clean.agg(
        F.countDistinct("user_id").alias("users"),
        F.countDistinct("item_id").alias("items"),
        F.min("event_time").alias("first"),
        F.max("event_time").alias("last"),
        F.min("value").alias("lo"),
        F.max("value").alias("hi"),
    ).first()
    assert (stats["users"], stats["items"]) == (943, 1682)
    assert (stats["lo"], stats["hi"]) == (1.0, 5.0)
    assert stats["first"].year == 1997 and stats["last"].year == 1998
