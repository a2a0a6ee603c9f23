"""Split protocols: no leakage across cutoffs, cold start counted, reproducible random split."""
from __future__ import annotations

import datetime as dt
import math

import pytest
from pyspark.sql import functions as F

from recsys_spark import split
from recsys_spark.config import SplitConf, TablesConf
from recsys_spark.schemas import EVENTS_CLEAN, ITEM_INDEX_TABLE, USER_INDEX_TABLE

pytestmark = pytest.mark.spark
T0 = dt.datetime(2026, 1, 1)
WEIGHTS = {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rating": 1.0}


def make_events(spark, rows):
    """rows: (user, item, day offset, event type)."""
    data = [
        (f"e{i}", u, it, t, T0 + dt.timedelta(days=d), None, None, "f", (T0 + dt.timedelta(days=d)).date())
        for i, (u, it, d, t) in enumerate(rows)
    ]
    return spark.createDataFrame(data, EVENTS_CLEAN.schema)


def indexes(spark, users, items):
    u = spark.createDataFrame([(x, i, T0.date()) for i, x in enumerate(users)], USER_INDEX_TABLE.schema)
    it = spark.createDataFrame([(x, i, T0.date()) for i, x in enumerate(items)], ITEM_INDEX_TABLE.schema)
    return u, it


def test_temporal_split_has_no_leakage_and_marks_cold_start(spark):
    rows = [
        ("a", "x", 0, "view"), ("a", "y", 10, "view"), ("b", "x", 20, "view"),
        ("a", "x", 85, "purchase"),  # after the validation cutoff: must not raise a's training weight
        ("a", "z", 95, "view"),      # test, warm user, warm item? z unseen before -> cold item
        ("c", "x", 96, "view"),      # test, user first seen after cutoff -> cold user
        ("b", "y", 99, "click"),     # test, warm
        ("b", "y", 100, "view"),
        ("a", "y", 85, "view"),      # validation slice, but pair seen in train -> dropped
    ]
    ev = make_events(spark, rows)
    uidx, iidx = indexes(spark, ["a", "b", "c"], ["x", "y", "z"])
    out, info = split.temporal_split(ev, uidx, iidx, test_fraction=0.1, validation_fraction=0.1, event_weights=WEIGHTS)
    got = {(r.user_index, r.item_index, r.fold): (r.weight, r.segment, r.last_time) for r in out.collect()}
    val_cut = dt.datetime.fromisoformat(info["validation_cutoff"])
    test_cut = dt.datetime.fromisoformat(info["test_cutoff"])
    assert val_cut == T0 + dt.timedelta(days=80) and test_cut == T0 + dt.timedelta(days=90)
    assert got[(0, 0, "train")][0] == 1.0  # the later purchase stayed out of training
    assert all(v[2] < val_cut for k, v in got.items() if k[2] == "train")
    assert (0, 1, "validation") not in got  # already in train
    assert got[(0, 2, "test")][1] == "cold_item"
    assert got[(2, 0, "test")][1] == "cold_user"
    assert got[(1, 1, "test")] [:2] == (3.0, "warm")
    train_pairs = {(u, i) for (u, i, f) in got if f == "train"}
    held_pairs = {(u, i) for (u, i, f) in got if f != "train"}
    assert not train_pairs & held_pairs


def synthetic_interactions(spark, n_users=60, n_items=40):
    rows = [(u, (u * 7 + j * 3) % n_items, 1.0, T0 + dt.timedelta(hours=u + j)) for u in range(n_users) for j in range(4 + u % 9)]
    return spark.createDataFrame(rows, "user_index int, item_index int, weight float, last_time timestamp").dropDuplicates(
        ["user_index", "item_index"])


def test_random_split_is_stratified_and_reproducible(spark):
    inter = synthetic_interactions(spark)
    a, _ = split.random_split(inter, train_ratio=0.75, validation_ratio=0.0, seed=3)
    b, _ = split.random_split(inter, train_ratio=0.75, validation_ratio=0.0, seed=3)
    c, _ = split.random_split(inter, train_ratio=0.75, validation_ratio=0.0, seed=4)
    key = lambda df: sorted((r.user_index, r.item_index, r.fold) for r in df.collect())  # noqa: E731
    assert key(a) == key(b) and key(a) != key(c)
    per_user = a.groupBy("user_index").agg(
        F.count("*").alias("n"), F.sum(F.when(F.col("fold") == "train", 1).otherwise(0)).alias("train")
    ).collect()
    for r in per_user:
        assert r.train == math.floor(r.n * 0.75 + 0.5)  # every user keeps 75% in train (half up)
    assert a.count() == inter.count()


def tied_interactions(spark, n_users=40, n_items=30):
    """Users with 1 to 8 items, three items to a timestamp: most held-out items tie with others."""
    rows = [(u, (u * 11 + j * 7) % n_items, 1.0, T0 + dt.timedelta(hours=j // 3))
            for u in range(n_users) for j in range(1 + u % 8)]
    return spark.createDataFrame(rows, "user_index int, item_index int, weight float, last_time timestamp")


def test_leave_last_one_out_properties_under_ties(spark):
    """The sequential protocol: per user, train <= validation <= test in time; one test and one
    validation item for users with 3+ interactions, none for the others; ties in time broken by
    item_index (the higher one is later), so the split does not depend on the rows' order, and the
    held-out items are the last of tables.user_histories (what a last-item model reads)."""
    from recsys_spark import tables

    inter = tied_interactions(spark)
    out, _ = split.leave_last_n_split(inter, n=1)
    shuffled, _ = split.leave_last_n_split(inter.orderBy(F.rand(seed=9)).repartition(3), n=1)
    rows = out.collect()
    assert sorted((r.user_index, r.item_index, r.fold) for r in rows) == sorted(
        (r.user_index, r.item_index, r.fold) for r in shuffled.collect())

    by_user: dict = {}
    for r in rows:
        by_user.setdefault(r.user_index, {}).setdefault(r.fold, []).append((r.last_time, r.item_index))
    last_of = lambda rows: {r.user_index: list(r.seen)[-1] for r in tables.user_histories(rows).collect()}  # noqa: E731
    last_all = last_of(inter)
    last_train = last_of(split.training_rows(out, final=False))  # what validation users are scored from
    last_final = last_of(split.training_rows(out, final=True))  # what test users are scored from
    n_ties = 0
    assert len(by_user) == 40
    for user, folds in by_user.items():
        n = sum(len(v) for v in folds.values())
        if n < 3:
            assert set(folds) == {"train"}, user
            continue
        assert len(folds["test"]) == 1 and len(folds["validation"]) == 1, user
        (val,), (test,) = folds["validation"], folds["test"]
        assert max(folds["train"]) < val < test  # (time, item_index): the tie-break order
        assert max(t for t, _ in folds["train"]) <= val[0] <= test[0]
        assert test[1] == last_all[user] and val[1] == last_final[user] and max(folds["train"])[1] == last_train[user]
        n_ties += test[0] == val[0]
    assert n_ties > 5  # the rule was exercised


def test_training_rows_final_adds_validation(spark):
    inter = synthetic_interactions(spark)
    out, _ = split.random_split(inter, train_ratio=0.8, validation_ratio=0.25, seed=1)
    n = {f: split.fold(out, f).count() for f in ("train", "validation", "test")}
    assert n["validation"] > 0
    assert split.training_rows(out, final=False).count() == n["train"]
    assert split.training_rows(out, final=True).count() == n["train"] + n["validation"]


def test_the_protocol_setting_chooses_the_split_and_the_tables_it_reads(spark):
    uidx, iidx = indexes(spark, ["a", "b"], ["x", "y"])
    frames = {EVENTS_CLEAN.name: make_events(spark, [("a", "x", 0, "view"), ("b", "y", 99, "click")]),
              USER_INDEX_TABLE.name: uidx, ITEM_INDEX_TABLE.name: iidx, "interactions": synthetic_interactions(spark)}
    for protocol, tables, info in [
        ("temporal", ["events_clean", "user_index", "item_index"], {"validation_cutoff", "test_cutoff"}),
        ("leave_last_n", ["interactions"], {"leave_n"}),
        ("random", ["interactions"], {"train_ratio", "validation_ratio", "seed"}),
    ]:
        read = []
        out, got = split.split_by_protocol(SplitConf(protocol=protocol, leave_n=2, seed=5),
                                           lambda t: read.append(t.name) or frames[t.name], tables=TablesConf())
        assert read == tables and set(got) == info, protocol
        assert {"fold", "segment"} <= set(out.columns)
    assert got["seed"] == 5
