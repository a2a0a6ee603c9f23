"""Baselines: EASE's closed form and Spark Gram matrix, popularity windows, the catalog cap."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

from recsys_spark.memory import MemoryBudgetError
from recsys_spark.models import baselines

T0 = dt.datetime(2026, 1, 1)


def train_df(spark, pairs, days=None):
    days = days or [0] * len(pairs)
    rows = [(u, i, 1.0, T0 + dt.timedelta(days=d)) for (u, i), d in zip(pairs, days)]
    return spark.createDataFrame(rows, "user_index int, item_index int, weight float, last_time timestamp")


def test_ease_closed_form_matches_the_paper():
    x = np.array([[1, 1, 0], [1, 0, 1], [0, 1, 1], [1, 1, 1]], dtype=float)
    lam = 0.5
    b = baselines.ease_from_gram(x.T @ x, lam)
    # Steck 2019, eq. 8: B = I - P diagMat(1/diag(P)), P = (X^T X + lam I)^-1
    p = np.linalg.inv(x.T @ x + lam * np.eye(3))
    want = np.eye(3) - p @ np.diag(1.0 / np.diag(p))
    np.testing.assert_allclose(b, want, atol=1e-6)
    assert np.all(np.diag(b) == 0)


def test_ease_float32_in_place_inverse_matches_float64():
    # A popularity-skewed binary matrix of EASE's usual shape and lambda: the
    # float32 Cholesky route must agree with a float64 inverse to ranking precision.
    rng = np.random.default_rng(7)
    popularity = 1.0 / np.arange(1, 301) ** 0.8
    x = (rng.random((2000, 300)) < 0.3 * popularity / popularity.mean() * 0.1).astype(np.float32)
    gram = x.T @ x
    p = np.linalg.inv(gram.astype(np.float64) + 250.0 * np.eye(300))
    want = -p / np.diag(p)
    np.fill_diagonal(want, 0.0)
    got = baselines.ease_from_gram(gram.copy(), 250.0)
    assert got.dtype == np.float32
    np.testing.assert_allclose(got, want, atol=1e-5 * np.abs(want).max())
    # In place: the Gram matrix's own memory becomes B.
    g = gram.copy()
    assert np.shares_memory(baselines.ease_from_gram(g, 250.0), g)


@pytest.mark.spark
def test_gram_matrix_from_collected_pairs_equals_numpy(spark):
    # (3, 2) twice: a pair counts once (the matrix is binary).
    pairs = [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2), (3, 2)]
    x = np.zeros((4, 4))
    for u, i in pairs:
        x[u, i] = 1
    users, items = baselines.interaction_pairs(train_df(spark, pairs))
    assert users.dtype == np.int32 and len(users) == 10
    np.testing.assert_allclose(baselines.gram_matrix(users, items, 4), x.T @ x)


def test_gram_matrix_blocks_cover_every_row(monkeypatch):
    # Blocks of 2 rows over 5 items: the last, partial block too.
    monkeypatch.setattr(baselines, "_GRAM_BLOCK_ENTRIES", 10)
    rng = np.random.default_rng(3)
    x = (rng.random((40, 5)) < 0.4).astype(np.float32)
    users, items = np.nonzero(x)
    np.testing.assert_array_equal(baselines.gram_matrix(users.astype(np.int32), items.astype(np.int32), 5), x.T @ x)


@pytest.mark.spark
def test_ease_refuses_large_catalogs(spark):
    with pytest.raises(MemoryBudgetError, match="ease.max_items=2"):
        baselines.fit_ease(train_df(spark, [(0, 0)]), 3, l2=1.0, max_items=2)


@pytest.mark.spark
def test_ease_refuses_before_computing_when_the_driver_budget_is_short(spark, monkeypatch):
    # 3,000 items: 34 MiB for B alone, over a 16 MiB cap. Nothing is collected.
    monkeypatch.setattr(baselines, "interaction_pairs", lambda train: pytest.fail("collected before the check"))
    with pytest.raises(MemoryBudgetError, match=r"spark.driver_python_memory") as refused:
        baselines.fit_ease(train_df(spark, [(0, 0), (1, 2999)]), 3000, l2=1.0, max_items=20_000,
                           python_memory=16 * 2**20)
    assert "EASE on 3000 items" in str(refused.value)


@pytest.mark.spark
def test_popularity_all_time_and_recent(spark):
    pairs = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 2)]
    days = [0, 0, 0, 29, 30, 30]
    train = train_df(spark, pairs, days)
    np.testing.assert_array_equal(baselines.popularity_vector(train, 4), [3, 2, 1, 0])
    # the last 7 days before the latest training time: only items 1 and 2
    np.testing.assert_array_equal(baselines.popularity_vector(train, 4, recent_days=7), [0, 2, 1, 0])
