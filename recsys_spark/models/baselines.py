"""Baselines that keep every other model honest.

* Popularity: items ranked by distinct training users, all time or over a
  recent window before the training cutoff. A rank-1 dot-product model (every
  user's vector is [1]), so it is scored and served like any factor model.
* EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019):
  B = I - P diagMat(1 / diag(P)) with P = (X^T X + lambda I)^-1, zero diagonal;
  a user's scores are their binary history times B. The Gram matrix X^T X is
  computed by Spark (``RowMatrix.computeGramianMatrix``); the inverse on the
  driver, so catalogs above ``ease.max_items`` are refused.
"""
from __future__ import annotations

import datetime as dt

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.schemas import ITEM_INDEX, USER_INDEX
from recsys_spark.scoring import popularity_scores


def popularity_vector(train: DataFrame, n_items: int, *, recent_days: int | None = None) -> np.ndarray:
    """Distinct users per item; with ``recent_days`` only the window before the latest training time."""
    since = None
    if recent_days is not None:
        latest = train.agg(F.max("last_time")).first()[0]
        since = latest - dt.timedelta(days=recent_days)
    return popularity_scores(train, n_items=n_items, since=since)


def gram_matrix(train: DataFrame, n_items: int) -> np.ndarray:
    """X^T X for the binary user x item matrix of ``train``, computed by Spark."""
    from pyspark.mllib.linalg import Vectors
    from pyspark.mllib.linalg.distributed import RowMatrix

    histories = train.groupBy(USER_INDEX).agg(F.array_sort(F.collect_set(ITEM_INDEX)).alias("items"))
    rows = histories.rdd.map(lambda r: Vectors.sparse(n_items, r["items"], [1.0] * len(r["items"])))
    return RowMatrix(rows).computeGramianMatrix().toArray()


def ease_from_gram(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's closed form from the Gram matrix (float64 for the inverse)."""
    g = np.array(gram, dtype=np.float64, copy=True)
    g[np.diag_indices_from(g)] += l2
    p = np.linalg.inv(g)
    b = -p / np.diag(p)  # column j divided by P_jj
    b[np.diag_indices_from(b)] = 0.0
    return b.astype(np.float32)


def fit_ease(train: DataFrame, n_items: int, *, l2: float, max_items: int) -> np.ndarray:
    if n_items > max_items:
        raise ValueError(
            f"EASE: the catalog has {n_items} items, above ease.max_items={max_items}; its dense "
            f"item x item inverse (~{2 * 8 * n_items * n_items / 2**30:.1f} GiB) is computed on the driver. "
            "Raise ease.max_items with driver memory to match, or leave EASE out for this catalog."
        )
    return ease_from_gram(gram_matrix(train, n_items), l2)
