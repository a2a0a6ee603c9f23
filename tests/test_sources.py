"""Reading raw sources by config alone: JSON lines, CSV (any header/delimiter), Parquet."""
from __future__ import annotations

import json

import pytest

from recsys_spark.ingest import sources
from recsys_spark.config import load_config

pytestmark = pytest.mark.spark


def _source(path, *overrides):
    return load_config(dataset="synthetic", overrides=[f"dataset.source.path={path}", *overrides]).dataset.source


def _rows(df):
    return sorted((r.asDict() for r in df.collect()), key=lambda r: r["user_id"])


def test_json_keeps_text_and_flags_malformed_lines(spark, tmp_path):
    good = {"eid": "e1", "uid": "u1", "iid": "i9", "type": "rating", "ts": "2026-01-05T13:45:12.345Z", "val": 4.5, "sid": "s1"}
    lines = [
        json.dumps(good),
        '{"eid":"e2","iid":"i9","type":"view","ts":"2026-01-05T13:45:12.345Z"}',  # no uid key
        '{"eid":"e3","uid":"u1","iid":"i9","type":"rat',  # truncated
        '{"eid":4,"uid":"u2","iid":null,"type":"rating","ts":"x","val":"five"}',
    ]
    (tmp_path / "date=2026-01-05").mkdir()
    (tmp_path / "date=2026-01-05" / "part-0.json").write_text("\n".join(lines) + "\n")
    df = sources.read_source(spark, _source(tmp_path))
    assert df.columns == [*sources.FIELDS, "source_file", "corrupt_record", "parse_error", "record_bytes", "raw_record"]
    assert all(f.dataType.simpleString() == "string" for f in df.schema.fields if f.name != "record_bytes")
    by_eid = {r["event_id"]: r for r in df.collect()}
    assert len(by_eid) == 4

    r = by_eid["e1"]
    assert (r["user_id"], r["item_id"], r["event_type"], r["timestamp"], r["value"], r["session_id"]) == (
        "u1", "i9", "rating", "2026-01-05T13:45:12.345Z", "4.5", "s1")
    assert r["corrupt_record"] is None
    assert json.loads(r["raw_record"]) == {k: str(v) for k, v in good.items()}  # source names, values as text
    assert r["source_file"].endswith("date=2026-01-05/part-0.json")

    assert by_eid["e2"]["user_id"] is None
    assert "uid" not in json.loads(by_eid["e2"]["raw_record"])
    bad = by_eid[None]
    assert bad["corrupt_record"] == bad["raw_record"] == lines[2]
    r4 = by_eid["4"]  # a number kept as its text
    assert (r4["item_id"], r4["value"], r4["timestamp"]) == (None, "five", "x")


def test_csv_without_header_semicolon_by_config_alone(spark, tmp_path):
    (tmp_path / "ratings.csv").write_text("u1;i1;881250949;4\nu2;i7;881250950;2.5\nu3;i8\n")
    src = _source(
        tmp_path,
        "dataset.source.format=csv",
        "dataset.source.csv_header=false",
        "dataset.source.csv_delimiter=;",
        "dataset.source.timestamp_format=epoch_s",
        "dataset.source.fixed_event_type=rating",
        "dataset.source.columns={user_id: _c0, item_id: _c1, timestamp: _c2, value: _c3, event_type: null, event_id: null, session_id: null}",
    )
    rows = _rows(sources.read_source(spark, src))
    assert [(r["user_id"], r["item_id"], r["timestamp"], r["value"], r["event_type"], r["event_id"]) for r in rows] == [
        ("u1", "i1", "881250949", "4", None, None),
        ("u2", "i7", "881250950", "2.5", None, None),
        ("u3", "i8", None, None, None, None),
    ]
    assert [r["corrupt_record"] for r in rows] == [None, None, "u3;i8"]  # too few fields: malformed
    assert json.loads(rows[0]["raw_record"]) == {"_c0": "u1", "_c1": "i1", "_c2": "881250949", "_c3": "4"}


def test_csv_with_header_any_column_order(spark, tmp_path):
    (tmp_path / "a.csv").write_text("when|rating|movie|who\n881250949|3|242|196\n")
    src = _source(
        tmp_path,
        "dataset.source.format=csv",
        "dataset.source.csv_delimiter='|'",  # quoted: a bare | is YAML syntax
        "dataset.source.fixed_event_type=rating",
        "dataset.source.columns={user_id: who, item_id: movie, timestamp: when, value: rating, event_type: null, event_id: null, session_id: null}",
    )
    (row,) = sources.read_source(spark, src).collect()
    assert (row["user_id"], row["item_id"], row["timestamp"], row["value"]) == ("196", "242", "881250949", "3")


def test_parquet_columns_cast_to_string(spark, tmp_path):
    import datetime as dt

    spark.createDataFrame(
        [(196, 242, 3, dt.datetime(2026, 1, 5, 13, 45, 12))], "who long, what long, stars int, at timestamp"
    ).write.parquet(str(tmp_path / "p"))
    src = _source(
        tmp_path / "p",
        "dataset.source.format=parquet",
        "dataset.source.fixed_event_type=rating",
        "dataset.source.columns={user_id: who, item_id: what, timestamp: at, value: stars, event_type: null, event_id: null, session_id: null}",
    )
    (row,) = sources.read_source(spark, src).collect()
    assert (row["user_id"], row["item_id"], row["value"], row["timestamp"]) == ("196", "242", "3", "2026-01-05 13:45:12")
    assert row["corrupt_record"] is None


@pytest.mark.parametrize("fmt", ["csv", "json", "parquet"])
def test_missing_mapped_column_names_column_and_file(spark, tmp_path, fmt):
    data = tmp_path / "events"
    rows = [("e1", "u1", "i1", "view", "2026-01-05T00:00:00Z", "1", "s1")]
    schema = "eid string, user string, iid string, type string, ts string, val string, sid string"
    spark.createDataFrame(rows, schema).coalesce(1).write.format(fmt).option(
        "header", "true"
    ).save(str(data))
    src = _source(data, f"dataset.source.format={fmt}")  # maps user_id to 'uid', the file has 'user'
    with pytest.raises(sources.SourceError) as err:
        sources.read_source(spark, src)
    msg = str(err.value)
    assert "'uid'" in msg and "dataset.source.columns.user_id" in msg
    assert str(data) in msg and "part-00000" in msg  # names the file


def test_missing_path_names_it(spark, tmp_path):
    missing = tmp_path / "nowhere"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        sources.read_source(spark, _source(missing))


def test_empty_directory_is_an_error(spark, tmp_path):
    with pytest.raises(sources.SourceError, match="holds no json files"):
        sources.read_source(spark, _source(tmp_path))
