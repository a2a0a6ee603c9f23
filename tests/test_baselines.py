"""Baselines: EASE's closed form and Spark Gram matrix, popularity windows, the catalog cap."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest

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


@pytest.mark.spark
def test_spark_gram_matrix_equals_numpy(spark):
    pairs = [(0, 0), (0, 1), (1, 0), (1, 2), (2, 1), (2, 2), (3, 0), (3, 1), (3, 2)]
    x = np.zeros((4, 4))
    for u, i in pairs:
        x[u, i] = 1
    np.testing.assert_allclose(baselines.gram_matrix(train_df(spark, pairs), 4), x.T @ x)


@pytest.mark.spark
def test_ease_refuses_large_catalogs(spark):
    with pytest.raises(ValueError, match="ease.max_items=2"):
        baselines.fit_ease(train_df(spark, [(0, 0)]), 3, l2=1.0, max_items=2)


@pytest.mark.spark
def test_popularity_all_time_and_recent(spark):
    pairs = [(0, 0), (1, 0), (2, 0), (0, 1), (1, 1), (2, 2)]
    days = [0, 0, 0, 29, 30, 30]
    train = train_df(spark, pairs, days)
    np.testing.assert_array_equal(baselines.popularity_vector(train, 4), [3, 2, 1, 0])
    # the last 7 days before the latest training time: only items 1 and 2
    np.testing.assert_array_equal(baselines.popularity_vector(train, 4, recent_days=7), [0, 2, 1, 0])
