"""Failure paths that had no test: the clean job when its counts do not reconcile, a
table on disk whose schema is not the declared one, and the serving exclusion list
(Parquet, missing, without an ``item_id`` column)."""
from __future__ import annotations

import datetime as dt
import json

import pytest
from pyspark.sql import functions as F

from tests.conftest import load_job
from recsys_spark import io
from recsys_spark.ingest import cleaning
from recsys_spark.schemas import EVENTS_CLEAN, QUARANTINE, QUARANTINED_FILES, USERS

pytestmark = pytest.mark.spark

REFERENCE = "2026-03-02T00:00:00Z"
# Five valid events, one of them a resent copy (a duplicate), one with an unknown type.
EVENTS = [
    {"eid": "e1", "uid": "u1", "iid": "i1", "type": "view", "ts": "2026-01-05T10:00:00Z"},
    {"eid": "e2", "uid": "u1", "iid": "i2", "type": "click", "ts": "2026-01-05T10:01:00Z"},
    {"eid": "e3", "uid": "u2", "iid": "i1", "type": "view", "ts": "2026-01-06T09:00:00Z"},
    {"eid": "e4", "uid": "u2", "iid": "lost", "type": "purchase", "ts": "2026-01-06T09:05:00Z"},
    {"eid": "e3", "uid": "u2", "iid": "i1", "type": "view", "ts": "2026-01-06T09:00:00Z"},
    {"eid": "e5", "uid": "u3", "iid": "i3", "type": "teleport", "ts": "2026-01-07T12:00:00Z"},
]
# input 6 = clean 4 + duplicates 1 + quarantined 1


def _source(tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    (src / "events.json").write_text("".join(json.dumps(e) + "\n" for e in EVENTS))
    return src


def _clean(src, wh, run_id):
    return load_job("clean_events").main([
        "--dataset", "synthetic", "--warehouse", str(wh), "--set", f"dataset.source.path={src}",
        "--reference-time", REFERENCE, "--run-id", run_id])


def _drops_item(frame, item="lost"):
    return frame.where(F.col("item_id") != item)


def test_clean_counts_that_do_not_reconcile_exit_1_naming_them_and_write_nothing(spark, tmp_path, monkeypatch,
                                                                                  capsys):
    """A transform that loses a row between validation and the clean table: the counts are
    checked before anything is written, the job exits 1 with one line naming them."""
    src, wh = _source(tmp_path), tmp_path / "wh"
    real = cleaning.flag_bot_users
    monkeypatch.setattr(cleaning, "flag_bot_users", lambda df, bots, **kw: _drops_item(real(df, bots, **kw)))
    with pytest.raises(SystemExit) as exit_info:
        _clean(src, wh, "lossy")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["clean_events: input 6 != clean 3 + duplicates 1 + quarantined 1"]
    assert not wh.exists()  # no table, no report


def test_clean_rows_lost_on_the_way_to_disk_keep_the_previous_tables(spark, tmp_path, monkeypatch, capsys):
    """The written tables are counted again before they replace the last run's; when they differ
    from the counts, the job exits 1 naming both, and the warehouse keeps the last good run's
    tables and report."""
    src, wh = _source(tmp_path), tmp_path / "wh"
    # The last good run's outputs (written directly: a clean run of its own costs seconds).
    previous = [("old", "u9", "i9", "view", dt.datetime(2026, 1, 1), None, None, "f.json", dt.date(2026, 1, 1))]
    io.write_table(spark.createDataFrame(previous, EVENTS_CLEAN.schema), str(wh), EVENTS_CLEAN)
    for table in (QUARANTINE, QUARANTINED_FILES):
        io.write_table(spark.createDataFrame([], table.schema), str(wh), table)
    io.write_json(spark, io.report_path(str(wh), "clean_events", "good"), {"reconciles": True})

    real = cleaning.to_events_clean
    monkeypatch.setattr(cleaning, "to_events_clean", lambda df: _drops_item(real(df)))
    with pytest.raises(SystemExit) as exit_info:
        _clean(src, wh, "lossy")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["clean_events: written rows differ from counted: events_clean 3 vs 4, quarantine 1 vs 1, "
                   "quarantined_files 0 vs 0"], err
    # The last good run's tables, untouched; no report claims the failed run reconciled.
    assert [r["event_id"] for r in io.read_table(spark, str(wh), EVENTS_CLEAN).collect()] == ["old"]
    assert io.read_table(spark, str(wh), QUARANTINE).count() == 0
    assert sorted(p.name for p in (wh / "reports" / "clean_events").iterdir() if p.suffix == ".json") == ["good.json"]
    assert not [p.name for p in wh.iterdir() if "._staging-" in p.name or "._old-" in p.name]  # nothing half-way


# --------------------------------------------------------------------------- schema checks on read


def test_a_table_with_a_wrong_column_type_is_refused_naming_table_column_and_types(spark, tmp_path):
    wh = str(tmp_path / "wh")
    # users with user_index written as a string: what an older writer or a hand-made table gives.
    spark.createDataFrame([("u1", "0", 3, 2)], "user_id string, user_index string, n_interactions long, "
                          "n_items long").write.parquet(io.table_path(wh, USERS))
    with pytest.raises(io.SchemaMismatch) as err:
        io.read_table(spark, wh, USERS)
    message = str(err.value)
    assert "table 'users'" in message and "column 'user_index'" in message, message
    assert "is string, expected int" in message and io.table_path(wh, USERS) in message, message


def test_a_table_missing_a_declared_column_is_refused_naming_it(spark, tmp_path):
    wh = str(tmp_path / "wh")
    full = [f for f in USERS.schema.fields]
    kept = [f for f in full if f.name != full[-1].name]
    row = tuple({"string": "u1", "int": 0, "bigint": 3}.get(f.dataType.simpleString(), None) for f in kept)
    spark.createDataFrame([row], ", ".join(f"{f.name} {f.dataType.simpleString()}" for f in kept)) \
        .write.parquet(io.table_path(wh, USERS))
    with pytest.raises(io.SchemaMismatch, match=rf"table 'users' lacks column '{full[-1].name}'"):
        io.read_table(spark, wh, USERS)


def test_a_missing_table_names_the_stage_to_run(spark, tmp_path):
    with pytest.raises(FileNotFoundError, match=r"table 'users' not found at .*run the stage that writes it first"):
        io.read_table(spark, str(tmp_path / "wh"), USERS)


# --------------------------------------------------------------------------- the serving exclusion list


def _exclusion_list(spark, path):
    from recsys_spark.serve import candidates

    return candidates.read_exclusion_list(spark, str(path))


def test_exclusion_list_from_parquet_trimmed_distinct_without_blanks(spark, tmp_path):
    path = tmp_path / "blocked.parquet"
    spark.createDataFrame([(" i1 ", "why"), ("i2", None), ("i1", "again"), ("", None), (None, None)],
                          "item_id string, note string").coalesce(1).write.parquet(str(path))
    got = _exclusion_list(spark, path)
    assert got.columns == ["item_id"]
    assert sorted(r["item_id"] for r in got.collect()) == ["i1", "i2"]


def test_exclusion_list_with_numeric_ids_reads_them_as_strings(spark, tmp_path):
    path = tmp_path / "blocked"
    spark.createDataFrame([(7,), (42,)], "item_id long").write.parquet(str(path))
    assert sorted(r["item_id"] for r in _exclusion_list(spark, path).collect()) == ["42", "7"]


def test_missing_exclusion_list_is_an_error_naming_the_setting_and_path(spark, tmp_path):
    path = tmp_path / "no-such-list.parquet"
    with pytest.raises(FileNotFoundError) as err:
        _exclusion_list(spark, path)
    assert "recommend.exclude_items_path" in str(err.value) and str(path) in str(err.value)


@pytest.mark.parametrize("fmt", ["parquet", "csv"])
def test_exclusion_list_without_item_id_is_an_error_naming_the_columns(spark, tmp_path, fmt):
    if fmt == "csv":
        path = tmp_path / "blocked.csv"
        path.write_text("sku,reason\ni1,recalled\n")
    else:
        path = tmp_path / "blocked.parquet"
        spark.createDataFrame([("i1", "recalled")], "sku string, reason string").write.parquet(str(path))
    with pytest.raises(ValueError) as err:
        _exclusion_list(spark, path)
    message = str(err.value)
    assert "recommend.exclude_items_path" in message and "no 'item_id' column" in message, message
    assert "sku" in message and "reason" in message, message
