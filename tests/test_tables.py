"""Tables: stable indexes, interaction weights, users/items, the build_tables job."""
from __future__ import annotations

import datetime as dt

import pytest

from tests.conftest import load_job
from recsys_spark import io, tables
from recsys_spark.schemas import EVENTS_CLEAN, INTERACTIONS, ITEM_INDEX_TABLE, ITEMS, USER_INDEX_TABLE, USERS

pytestmark = pytest.mark.spark
T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def events_df(spark, rows):
    """rows: (user, item, type, minutes after T0, value)."""
    data = [
        (f"e{i}", u, it, t, T0 + dt.timedelta(minutes=m), v, None, "f.json", (T0 + dt.timedelta(minutes=m)).date())
        for i, (u, it, t, m, v) in enumerate(rows)
    ]
    return spark.createDataFrame(data, EVENTS_CLEAN.schema)


WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rating": 1.0}


def test_update_index_keeps_known_ids_and_appends_new(spark):
    first = spark.createDataFrame([("b", T0), ("a", T0 + dt.timedelta(hours=1)), ("c", T0)], ["user_id", "first_seen"])
    idx1 = tables.update_index(first, None, id_col="user_id", index_col="user_index", run_date="2026-01-01")
    got1 = {r.user_id: r.user_index for r in idx1.collect()}
    # ordered by first appearance, ties by id
    assert got1 == {"b": 0, "c": 1, "a": 2}

    second = spark.createDataFrame([("a", T0), ("z", T0), ("d", T0 - dt.timedelta(days=1))], ["user_id", "first_seen"])
    idx2 = tables.update_index(second, idx1, id_col="user_id", index_col="user_index", run_date="2026-01-02")
    got2 = {r.user_id: (r.user_index, str(r.first_indexed)) for r in idx2.collect()}
    assert {k: v[0] for k, v in got2.items() if k in got1} == got1  # known ids keep their index
    assert got2["d"] == (3, "2026-01-02") and got2["z"] == (4, "2026-01-02")
    assert got2["b"][1] == "2026-01-01"


def test_interaction_weights_sum_event_types_and_latest_rating(spark):
    ev = events_df(
        spark,
        [
            ("u1", "i1", "view", 0, None),
            ("u1", "i1", "view", 1, None),
            ("u1", "i1", "purchase", 2, None),
            ("u1", "i2", "rating", 0, 2.0),
            ("u1", "i2", "rating", 5, 4.0),  # re-rating replaces the first
            ("u2", "i1", "click", 3, None),
        ],
    )
    uidx = spark.createDataFrame([("u1", 0, T0.date()), ("u2", 1, T0.date())], USER_INDEX_TABLE.schema)
    iidx = spark.createDataFrame([("i1", 0, T0.date()), ("i2", 1, T0.date())], ITEM_INDEX_TABLE.schema)
    rows = tables.aggregate_interactions(ev, uidx, iidx, event_weights=WEIGHTS).collect()
    got = {(r.user_index, r.item_index): (r.weight, r.event_count) for r in rows}
    assert got == {(0, 0): (1 + 1 + 8, 3), (0, 1): (4.0, 2), (1, 0): (2.0, 1)}

    fixed = tables.aggregate_interactions(ev, uidx, iidx, event_weights=WEIGHTS, rating_value_as_weight=False)
    assert {(r.user_index, r.item_index): r.weight for r in fixed.collect()}[(0, 1)] == 2.0  # 2 ratings x 1.0


def test_users_and_items_from_pairs_count_what_the_events_hold(spark):
    """users/items are built from per-pair rows: distinct items/users and counts must be those of the events."""
    rows = [("u1", "i1", "view", 0, None), ("u1", "i1", "view", 1, None), ("u1", "i2", "purchase", 30, None),
            ("u2", "i1", "rating", 3, 4.0), ("u2", "i1", "click", 90, None), ("u3", "i2", "view", 10, None)]
    ev = events_df(spark, rows)
    pairs = tables.pair_aggregates(ev, event_weights=WEIGHTS)
    uidx = spark.createDataFrame([(u, k, T0.date()) for k, u in enumerate(("u1", "u2", "u3"))], USER_INDEX_TABLE.schema)
    iidx = spark.createDataFrame([(i, k, T0.date()) for k, i in enumerate(("i1", "i2"))], ITEM_INDEX_TABLE.schema)
    users = {r.user_id: r for r in tables.build_users(pairs, uidx).collect()}
    assert (users["u1"].n_events, users["u1"].n_items, users["u1"].n_view, users["u1"].n_purchase) == (3, 2, 2, 1)
    assert (users["u2"].n_events, users["u2"].n_items, users["u2"].n_rating, users["u2"].n_click) == (2, 1, 1, 1)
    assert users["u2"].first_seen == T0 + dt.timedelta(minutes=3)
    assert users["u2"].last_seen == T0 + dt.timedelta(minutes=90)
    items = {r.item_id: r for r in tables.build_items(pairs, iidx).collect()}
    assert (items["i1"].popularity, items["i1"].n_events) == (2, 4)  # u1 twice, u2 twice: two distinct users
    assert (items["i2"].popularity, items["i2"].n_events) == (2, 2)
    assert items["i1"].first_seen == T0 and items["i1"].last_seen == T0 + dt.timedelta(minutes=90)


def test_min_activity_filter(spark):
    inter = spark.createDataFrame(
        [(0, 0), (0, 1), (0, 2), (1, 0), (2, 0), (2, 1)], ["user_index", "item_index"]
    )
    kept = tables.filter_min_activity(inter, min_user=2, min_item=2)
    # item 2 has one interaction -> dropped first; then user 1 (one left) is dropped
    assert sorted(map(tuple, kept.collect())) == [(0, 0), (0, 1), (2, 0), (2, 1)]


def test_item_metadata_parsing(spark):
    raw = spark.createDataFrame(
        [("1", "Toy Story", "1995", "Animation|Children's|Comedy"), ("2", "Unknown", "n/a", "")],
        ["item_id", "title", "year", "genres"],
    )
    meta = {r.item_id: r for r in tables.parse_item_metadata(
        raw, item_id="item_id", title="title", year="year", genres="genres").collect()}
    assert meta["1"].genres == ["Animation", "Children's", "Comedy"] and meta["1"].year == 1995
    assert meta["2"].year is None


def test_build_tables_job_is_stable_across_runs(spark, tmp_path):
    wh = str(tmp_path / "wh")
    job = load_job("build_tables")
    first = events_df(spark, [("u1", "i1", "view", 0, None), ("u2", "i2", "click", 1, None), ("u1", "i2", "purchase", 2, None)])
    io.write_table(first, wh, EVENTS_CLEAN)
    report1 = job.main(["--warehouse", wh, "--set", "run_date=2026-01-01"])
    assert (report1["users"], report1["items"], report1["interactions"]) == (2, 2, 3)
    users1 = {r.user_id: r.user_index for r in io.read_table(spark, wh, USERS).collect()}
    items1 = {r.item_id: r.item_index for r in io.read_table(spark, wh, ITEMS).collect()}

    # The second run sees new users and items (and not all of the old ones).
    second = events_df(spark, [("u3", "i3", "view", 10, None), ("u2", "i2", "view", 11, None), ("u4", "i1", "rating", 12, 5.0)])
    io.write_table(second, wh, EVENTS_CLEAN)
    job.main(["--warehouse", wh, "--set", "run_date=2026-01-02"])
    uidx = {r.user_id: r.user_index for r in io.read_table(spark, wh, USER_INDEX_TABLE).collect()}
    iidx = {r.item_id: r.item_index for r in io.read_table(spark, wh, ITEM_INDEX_TABLE).collect()}
    assert {k: uidx[k] for k in users1} == users1
    assert {k: iidx[k] for k in items1} == items1
    assert sorted(uidx.values()) == list(range(4)) and sorted(iidx.values()) == list(range(3))
    users2 = {r.user_id: r.user_index for r in io.read_table(spark, wh, USERS).collect()}
    assert users2 == {k: uidx[k] for k in ("u2", "u3", "u4")}
    inter = io.read_table(spark, wh, INTERACTIONS)
    assert inter.schema == io.conform(inter, INTERACTIONS).schema
    assert {(r.user_index, r.item_index, r.weight) for r in inter.collect()} == {
        (uidx["u3"], iidx["i3"], 1.0), (uidx["u2"], iidx["i2"], 1.0), (uidx["u4"], iidx["i1"], 5.0)}


def test_missing_item_metadata_column_is_named(spark, tmp_path):
    wh = str(tmp_path / "wh")
    io.write_table(events_df(spark, [("u1", "i1", "view", 0, None)]), wh, EVENTS_CLEAN)
    meta = tmp_path / "items.csv"
    meta.write_text("id,name\n i1,Thing\n")
    with pytest.raises(ValueError, match="dataset.items.item_id.*'item_id'"):
        load_job("build_tables").main(["--warehouse", wh, "--set", f"dataset.items.path={meta}"])
