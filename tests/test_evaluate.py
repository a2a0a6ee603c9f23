"""Metrics: a hand-computed example, and parity with an independent NumPy implementation."""
from __future__ import annotations

import math

import numpy as np
import pytest

from recsys_spark.evaluate import ranking
from tests.metrics_reference import reference_metrics

pytestmark = pytest.mark.spark


def recs_df(spark, recs: dict[int, list[int]]):
    rows = [(int(u), int(item), float(-r), r + 1) for u, items in recs.items() for r, item in enumerate(items)]
    return spark.createDataFrame(rows, "user_index int, item_index int, score float, rank int")


def relevant_df(spark, relevant: dict[int, set[int]]):
    return spark.createDataFrame([(int(u), sorted(int(i) for i in v)) for u, v in relevant.items()], "user_index int, relevant array<int>")


HAND_RECS = {1: [10, 20, 30, 40], 2: [10, 20]}
HAND_RELEVANT = {1: {20, 40, 50}, 2: {10}, 3: {30}}  # user 3 got no recommendations


def test_hand_example(spark):
    m = ranking.ranking_metrics(
        recs_df(spark, HAND_RECS), relevant_df(spark, HAND_RELEVANT), ks=[2, 4], n_items=60
    )
    l2 = math.log2
    assert m["users"] == 3
    assert m["precision_at_2"] == pytest.approx((1 / 2 + 1 / 2 + 0) / 3)
    assert m["recall_at_2"] == pytest.approx((1 / 3 + 1 + 0) / 3)
    assert m["ndcg_at_2"] == pytest.approx(((1 / l2(3)) / (1 + 1 / l2(3)) + 1 + 0) / 3)
    assert m["map_at_2"] == pytest.approx(((1 / 2) / 2 + 1 + 0) / 3)
    assert m["precision_at_4"] == pytest.approx((2 / 4 + 1 / 4 + 0) / 3)  # divides by k even when short
    assert m["recall_at_4"] == pytest.approx((2 / 3 + 1 + 0) / 3)
    assert m["ndcg_at_4"] == pytest.approx(
        ((1 / l2(3) + 1 / l2(5)) / (1 + 1 / l2(3) + 1 / l2(4)) + 1 + 0) / 3
    )
    assert m["map_at_4"] == pytest.approx(((1 / 2 + 2 / 4) / 3 + 1 + 0) / 3)
    assert m["hit_rate_at_2"] == pytest.approx(2 / 3)
    assert m["mrr"] == pytest.approx((1 / 2 + 1 + 0) / 3)
    assert m["coverage_at_2"] == pytest.approx(2 / 60)
    assert m["coverage_at_4"] == pytest.approx(4 / 60)


def test_popularity_percentile(spark):
    pop = spark.createDataFrame([(i, i) for i in range(5)], "item_index int, popularity long")
    recs = recs_df(spark, {1: [4, 0]})
    m = ranking.ranking_metrics(recs, relevant_df(spark, {1: {4}}), ks=[1, 2], n_items=5, item_popularity=pop)
    assert m["popularity_percentile_at_1"] == pytest.approx(1.0)  # the most popular item
    assert m["popularity_percentile_at_2"] == pytest.approx(0.5)  # (1.0 + 0.0) / 2


def test_missing_column_is_named(spark):
    bad = spark.createDataFrame([(1, 2)], "user_index int, item int")
    with pytest.raises(ValueError, match="item_index"):
        ranking.ranking_metrics(bad, relevant_df(spark, {1: {2}}), ks=[1], n_items=3)


def test_parity_with_numpy_on_random_rankings(spark):
    rng = np.random.default_rng(7)
    n_items = 200
    recs = {u: list(rng.choice(n_items, size=30, replace=False)) for u in range(150)}
    relevant = {u: set(rng.choice(n_items, size=rng.integers(1, 25), replace=False)) for u in range(160)}
    got = ranking.ranking_metrics(recs_df(spark, recs), relevant_df(spark, relevant), ks=[5, 10, 30], n_items=n_items)
    want = reference_metrics(recs, relevant, [5, 10, 30], n_items)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, abs=1e-9), key


def test_several_rankings_judged_at_once_equal_each_judged_alone(spark):
    """ranking_metrics_by (the fallback's candidates, a night's models): each key's metrics are
    the NumPy reference's for that key's ranking alone; a key with no rows is all misses."""
    from pyspark.sql import functions as F

    rng = np.random.default_rng(11)
    n_items = 90
    relevant = {u: set(rng.choice(n_items, size=int(rng.integers(1, 12)), replace=False)) for u in range(70)}
    rankings = {name: {u: list(rng.choice(n_items, size=int(rng.integers(1, 15)), replace=False))
                       for u in range(int(rng.integers(40, 80)))} for name in ("a", "b", "c")}
    recs = None
    for name, r in rankings.items():
        df = recs_df(spark, r).withColumn("model", F.lit(name))
        recs = df if recs is None else recs.unionByName(df)
    pop = spark.createDataFrame([(i, float(rng.integers(0, 50))) for i in range(n_items)],
                                "item_index int, popularity double")
    got = ranking.ranking_metrics_by(recs, relevant_df(spark, relevant), by="model", keys=["a", "b", "c", "none"],
                                     ks=[3, 10], n_items=n_items, item_popularity=pop)
    for name, r in rankings.items():
        want = reference_metrics(r, relevant, [3, 10], n_items)
        alone = ranking.ranking_metrics(recs_df(spark, r), relevant_df(spark, relevant), ks=[3, 10], n_items=n_items,
                                        item_popularity=pop)
        for key, value in want.items():
            assert got[name][key] == pytest.approx(value, abs=1e-9), (name, key)
        assert got[name] == pytest.approx(alone, abs=1e-12), name
    assert got["none"]["users"] == len(relevant)
    assert all(v == 0 for key, v in got["none"].items() if key != "users"), got["none"]


def test_the_one_pass_metrics_equal_sparks_ranking_evaluator(spark):
    """Precision, recall, NDCG and MAP are computed with SQL array expressions in one pass;
    they must be RankingEvaluator's numbers, short and empty rankings included."""
    from pyspark.ml.evaluation import RankingEvaluator
    from pyspark.sql import functions as F

    rng = np.random.default_rng(3)
    n_items = 120
    recs = {u: list(rng.choice(n_items, size=int(rng.integers(0, 25)), replace=False)) for u in range(200)}
    recs = {u: r for u, r in recs.items() if r}
    relevant = {u: set(rng.choice(n_items, size=int(rng.integers(1, 40)), replace=False)) for u in range(220)}
    ks = [1, 5, 20]
    got = ranking.ranking_metrics(recs_df(spark, recs), relevant_df(spark, relevant), ks=ks, n_items=n_items)
    table = spark.createDataFrame(
        [([float(i) for i in recs.get(u, [])], [float(i) for i in sorted(rel)]) for u, rel in relevant.items()],
        "prediction array<double>, label array<double>")
    names = {"precision": "precisionAtK", "recall": "recallAtK", "ndcg": "ndcgAtK", "map": "meanAveragePrecisionAtK"}
    for k in ks:
        for ours, theirs in names.items():
            want = RankingEvaluator(metricName=theirs, k=k).evaluate(table)
            assert got[f"{ours}_at_{k}"] == pytest.approx(want, abs=1e-12), (ours, k)
    assert table.where(F.size("prediction") == 0).count() >= 20  # users without recommendations count as misses


def test_rating_errors(spark):
    df = spark.createDataFrame([(4.0, 3.0), (2.0, 2.5), (5.0, float("nan"))], "rating double, prediction double")
    m = ranking.rating_errors(df)
    assert m["rmse"] == pytest.approx(math.sqrt((1 + 0.25) / 2))
    assert m["mae"] == pytest.approx(0.75)


@pytest.mark.movielens
def test_parity_with_numpy_on_movielens(spark, ml100k_dir):
    """Real rankings on real data: each user's last quarter of ratings (by time) held
    out, the rest ranked by item co-occurrence with the user's history (seen items
    excluded). Spark's metrics must equal the NumPy reference to rounding."""
    import pandas as pd

    ratings = pd.read_csv(ml100k_dir / "ratings.csv")
    ratings.columns = [c.lower() for c in ratings.columns]
    user_col = next(c for c in ratings.columns if "user" in c)
    item_col = next(c for c in ratings.columns if "item" in c or "movie" in c)
    time_col = next(c for c in ratings.columns if "time" in c)
    users = {u: i for i, u in enumerate(sorted(ratings[user_col].unique()))}
    items = {v: i for i, v in enumerate(sorted(ratings[item_col].unique()))}
    r = pd.DataFrame({"u": ratings[user_col].map(users), "i": ratings[item_col].map(items), "t": ratings[time_col]})
    r = r.sort_values(["u", "t", "i"], kind="stable")
    position = r.groupby("u").cumcount()
    size = r.groupby("u")["i"].transform("size")
    held_mask = position >= (size * 0.75).round()
    train, held = r[~held_mask], r[held_mask]
    n_users, n_items = len(users), len(items)

    x = np.zeros((n_users, n_items), dtype=np.float32)
    x[train["u"].to_numpy(), train["i"].to_numpy()] = 1.0
    scores = x @ (x.T @ x)  # item co-occurrence, summed over each user's history
    scores[x > 0] = -np.inf
    top = np.argsort(-scores, axis=1, kind="stable")[:, :50]
    recs = {u: [int(i) for i in top[u]] for u in range(n_users)}
    relevant = {int(u): set(g.tolist()) for u, g in held.groupby("u")["i"]}
    assert len(relevant) == 943 and len(held) > 20_000

    ks = [10, 20, 50]
    got = ranking.ranking_metrics(recs_df(spark, recs), relevant_df(spark, relevant), ks=ks, n_items=n_items)
    want = reference_metrics(recs, relevant, ks, n_items)
    for key, value in want.items():
        assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key
    assert want["ndcg_at_10"] > 0.05  # a real ranking, not noise: the comparison means something
