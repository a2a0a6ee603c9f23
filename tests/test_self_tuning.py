"""Self-tuning on validation (issue 14): EASE's lambda from a grid, and the cold-user fallback
among all-time and recent popularity, each chosen by the validation metric every model is judged by."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recsys_spark import memory
from recsys_spark.config import load_config
from recsys_spark.evaluate import folds
from recsys_spark.models import baselines
from recsys_spark.schemas import SPLIT
from recsys_spark.train import ease as train_ease

pytestmark = pytest.mark.spark

T0 = dt.datetime(2026, 1, 1)
N_USERS, N_ITEMS = 90, 30


def split_frame(spark, rows):
    """SPLIT rows from (user, item, fold, segment, day) tuples."""
    return spark.createDataFrame([(int(u), int(i), 1.0, T0 + dt.timedelta(days=d), seg, fold)
                                  for u, i, fold, seg, d in rows],
                                 SPLIT.schema)


def planted_split(seed=5):
    """Three taste groups over 30 items; each user's pairs 60% train, 40% validation (warm when the item is in train)."""
    rng = np.random.default_rng(seed)
    x = np.zeros((N_USERS, N_ITEMS), dtype=bool)
    for u in range(N_USERS):
        group = u % 3
        x[u] = rng.random(N_ITEMS) < np.where(np.arange(N_ITEMS) // 10 == group, 0.55, 0.08)
    in_train = x & (rng.random(x.shape) < 0.6)
    held = x & ~in_train
    seen_items = in_train.any(axis=0)
    rows = [(u, i, "train", "warm", 0) for u, i in zip(*np.nonzero(in_train))]
    rows += [(u, i, "validation", "warm" if seen_items[i] else "cold_item", 1) for u, i in zip(*np.nonzero(held))]
    return rows, in_train.astype(np.float64), held & seen_items


def numpy_ndcg_at_10(train: np.ndarray, relevant: np.ndarray, l2: float) -> float:
    """EASE in float64 from the definition, each validation user's top 10 of their unseen items,
    NDCG@10 with binary relevance (RankingMetrics' ideal: min(|relevant|, 10) hits)."""
    p = np.linalg.inv(train.T @ train + l2 * np.eye(train.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    scores = train @ b
    scores[train > 0] = -np.inf
    values = []
    for u in np.nonzero(relevant.any(axis=1))[0]:
        top = np.argsort(-scores[u], kind="stable")[:10]
        dcg = sum(1.0 / np.log2(r + 2) for r, item in enumerate(top) if relevant[u, item])
        ideal = sum(1.0 / np.log2(r + 2) for r in range(min(int(relevant[u].sum()), 10)))
        values.append(dcg / ideal)
    return float(np.mean(values))


def test_the_ease_grid_picks_the_lambda_with_the_best_validation_ndcg(spark):
    rows, train, relevant = planted_split()
    grid_l2 = [0.5, 5.0, 50.0, 500.0]
    cfg = load_config(overrides=["evaluation.ks=[10]", f"ease.l2_grid={grid_l2}"])
    grid = train_ease.search(spark, cfg, split_frame(spark, rows), n_items=N_ITEMS)
    want = {l2: numpy_ndcg_at_10(train, relevant, l2) for l2 in grid_l2}
    assert [g["l2"] for g in grid] == grid_l2
    for g in grid:
        assert g["ndcg_at_10"] == pytest.approx(want[g["l2"]], abs=1e-6), g["l2"]
    assert len(set(round(v, 6) for v in want.values())) == len(grid_l2)  # a real choice: no two lambdas tie
    assert train_ease.best(grid, "ndcg_at_10")["l2"] == max(want, key=want.get)


def test_one_gram_matrix_gives_every_lambdas_b_and_is_rebuilt_when_two_matrices_do_not_fit(spark, monkeypatch,
                                                                                            capsys):
    rows, train, _ = planted_split()
    train_rows = split_frame(spark, [r for r in rows if r[2] == "train"]).select(
        "user_index", "item_index", "weight", "last_time")
    gram = (train.T @ train).astype(np.float32)
    want = {l2: baselines.ease_from_gram(gram.copy(), l2) for l2 in (1.0, 10.0, 100.0)}

    def run():
        got = {}
        for l2, b, seconds in baselines.ease_grid(train_rows, N_ITEMS, list(want), max_items=1000):
            got[l2] = b.copy()  # every lambda's B is the same working matrix: copied before the next
            assert seconds >= 0
        return got

    for l2, b in run().items():
        np.testing.assert_allclose(b, want[l2], atol=1e-6)
    assert "kept" in capsys.readouterr().out

    # A driver that holds one items x items matrix but not two: the Gram matrix is rebuilt per lambda.
    one = baselines.ease_memory_need(N_ITEMS, len(train_rows.collect()))
    real = memory.require_python

    def tight(what, need, *, remedy, cap=None):
        if need > one:
            raise memory.MemoryBudgetError(f"{what}: {need} > {one}")
        return real(what, need, remedy=remedy, cap=cap)

    monkeypatch.setattr(memory, "require_python", tight)
    for l2, b in run().items():
        np.testing.assert_allclose(b, want[l2], atol=1e-6)
    assert "rebuilt per lambda" in capsys.readouterr().out


# --------------------------------------------------------------------------- the cold-user fallback

STALE_ITEMS = range(0, 5)  # popular long ago
RECENT_ITEMS = range(10, 22)  # 12 items (more than K) one user met on the last training day


def fallback_split(cold_users_like: range):
    """Train: 30 users on the stale items 200 days before the cutoff; one user on the recent items on the
    last day (so every recent window holds only those). Validation: 10 new users on ``cold_users_like``."""
    rows = [(u, i, "train", "warm", 0) for u in range(30) for i in STALE_ITEMS]
    rows += [(30, i, "train", "warm", 200) for i in RECENT_ITEMS]
    rows += [(100 + u, i, "validation", "cold_user", 201) for u in range(10) for i in cold_users_like]
    return rows


def test_recent_popularity_with_nothing_recent_loses_to_all_time(spark):
    cfg = load_config(overrides=["evaluation.ks=[10]"])
    choice = folds.choose_fallback(split_frame(spark, fallback_split(STALE_ITEMS)), N_ITEMS, cfg)
    assert choice["judged_on"] == folds.JUDGED_ON_COLD and choice["users"] == 10
    assert choice["chosen"] == "popularity" and choice["recent_days"] is None
    assert choice["candidates"]["popularity"] == pytest.approx(1.0)  # the 5 stale items lead all time
    assert set(choice["candidates"]) == {"popularity", "popularity_recent_7d", "popularity_recent_14d",
                                         "popularity_recent_30d", "popularity_recent_90d"}
    assert all(v == 0.0 for k, v in choice["candidates"].items() if k != "popularity")


def test_the_fallback_follows_the_metric_to_a_recent_window(spark):
    # Newcomers who want what is recent: every window beats all time, and ties go to the shortest.
    cfg = load_config(overrides=["evaluation.ks=[10]", "popularity.fallback_windows_days=[30, 7]"])
    choice = folds.choose_fallback(split_frame(spark, fallback_split(RECENT_ITEMS)), N_ITEMS, cfg)
    assert choice["chosen"] == "popularity_recent_7d" and choice["recent_days"] == 7
    assert choice["candidates"]["popularity_recent_7d"] > choice["candidates"]["popularity"]


def test_without_cold_users_the_fallback_is_judged_on_warm_users_as_models_are(spark):
    rows, _, _ = planted_split()
    cfg = load_config(overrides=["evaluation.ks=[10]"])
    split_rows = split_frame(spark, rows)
    choice = folds.choose_fallback(split_rows, N_ITEMS, cfg)
    assert choice["judged_on"] == folds.JUDGED_ON_WARM
    # All time is popularity as the models are judged: the same number as the popularity baseline's validation.
    pop = baselines.fit_popularity(spark, split_rows.where("fold = 'train'"), N_ITEMS)
    assert choice["candidates"]["popularity"] == pytest.approx(
        folds.validation_metrics(pop, split_rows, N_ITEMS, cfg)["ndcg_at_10"])


def test_popularity_vectors_in_one_pass_equal_one_window_at_a_time(spark):
    from tests.test_baselines import train_df

    train = train_df(spark, [(0, 1), (1, 1), (1, 2), (2, 3), (3, 3), (0, 3)], days=[0, 10, 20, 25, 29, 30])
    got = baselines.popularity_vectors(train, 5, [None, 3, 12])
    for pop, days in zip(got, [None, 3, 12]):
        np.testing.assert_array_equal(pop, baselines.popularity_vector(train, 5, recent_days=days))
