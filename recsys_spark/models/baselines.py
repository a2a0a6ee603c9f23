"""Baselines that keep every other model honest.

* Popularity: items ranked by distinct training users, all time or over a
  recent window before the training cutoff. A rank-1 dot-product model (every
  user's vector is [1]), so it is scored and served like any factor model.
* EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019):
  B = I - P diagMat(1 / diag(P)) with P = (X^T X + lambda I)^-1, zero diagonal;
  a user's scores are their binary history times B. The training pairs are
  collected to the driver through Arrow; the Gram matrix X^T X is built there
  by sparse products and inverted in place in float32 (one items x items matrix
  at peak: 1.6 GB at 20,000 items). A search over lambda (:func:`ease_grid`)
  builds the Gram matrix once and inverts a copy of it per lambda (two such
  matrices at peak, or one and a Gram matrix rebuilt per lambda when two do not
  fit). The need is checked against the driver's memory first
  (:mod:`recsys_spark.memory`), and catalogs above ``ease.max_items`` are refused.
"""
from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterator, Sequence

import numpy as np
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import memory
from recsys_spark.config import Config
from recsys_spark.models import fitted
from recsys_spark.models.fitted import FittedModel
from recsys_spark.memory import MemoryBudgetError
from recsys_spark.schemas import ITEM_INDEX, LAST_TIME, USER_INDEX


def popularity_scores(train: DataFrame, *, n_items: int, since=None) -> np.ndarray:
    """Per-item popularity (distinct users) in ``train``, optionally only rows with ``last_time >= since``."""
    rows = train if since is None else train.where(F.col(LAST_TIME) >= F.lit(since))
    counts = rows.groupBy(ITEM_INDEX).agg(F.countDistinct(USER_INDEX).alias("n")).collect()
    pop = np.zeros(n_items, dtype=np.float32)
    for r in counts:
        pop[r[ITEM_INDEX]] = r["n"]
    return pop


def popularity_vector(train: DataFrame, n_items: int, *, recent_days: int | None = None) -> np.ndarray:
    """Distinct users per item; with ``recent_days`` only the window before the latest training time."""
    since = None
    if recent_days is not None:
        latest = train.agg(F.max(LAST_TIME)).first()[0]
        since = latest - dt.timedelta(days=recent_days)
    return popularity_scores(train, n_items=n_items, since=since)


def popularity_vectors(train: DataFrame, n_items: int, windows_days: Sequence[int | None]) -> list[np.ndarray]:
    """:func:`popularity_vector` for each window (None: all time) in one pass over ``train``."""
    latest = train.agg(F.max(LAST_TIME)).first()[0]
    counts = []
    for i, days in enumerate(windows_days):
        user = F.col(USER_INDEX)
        if days is not None:
            user = F.when(F.col(LAST_TIME) >= F.lit(latest - dt.timedelta(days=days)), user)
        counts.append(F.countDistinct(user).alias(f"n{i}"))
    rows = train.groupBy(ITEM_INDEX).agg(*counts).collect()
    pops = [np.zeros(n_items, dtype=np.float32) for _ in windows_days]
    for r in rows:
        for i, pop in enumerate(pops):
            pop[r[ITEM_INDEX]] = r[f"n{i}"]
    return pops


def interaction_pairs(train: DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Distinct (user_index, item_index) pairs of ``train`` as two int32 arrays on the driver.

    Collected through Arrow (8 bytes a pair), not as Python rows: EASE needs
    the binary user x item matrix whole to build its Gram matrix.
    """
    # No distinct(): training rows are one per pair, and gram_matrix counts a repeated pair once anyway.
    pairs = train.select(F.col(USER_INDEX).cast("int"), F.col(ITEM_INDEX).cast("int"))
    spark = train.sparkSession
    key = "spark.sql.execution.arrow.pyspark.enabled"
    before = spark.conf.get(key, "false")
    spark.conf.set(key, "true")
    try:
        pdf = pairs.toPandas()
    finally:
        spark.conf.set(key, before)
    return pdf[USER_INDEX].to_numpy(np.int32), pdf[ITEM_INDEX].to_numpy(np.int32)


# Rows of the Gram matrix computed per sparse product: bounds the temporary
# sparse block (at most block x n_items entries) whatever the catalog.
_GRAM_BLOCK_ENTRIES = 50_000_000


def gram_matrix(users: np.ndarray, items: np.ndarray, n_items: int, *, out: np.ndarray | None = None) -> np.ndarray:
    """X^T X (float32, [n_items, n_items]) for the binary matrix with ones at (users, items).

    Sparse products of row blocks of X^T with X (scipy's CSR kernels: work is
    the sum of squared history lengths, not users x items^2), each block written
    into one preallocated dense matrix (``out``, when given: every row is
    overwritten). Counts are exact in float32 up to 2^24 users per item pair.
    """
    import scipy.sparse as sp

    n_users = int(users.max()) + 1 if len(users) else 0
    x = sp.csr_matrix((np.ones(len(users), dtype=np.float32), (users, items)), shape=(n_users, n_items))
    x.sum_duplicates()
    x.data[:] = 1.0
    xt = x.T.tocsr()
    gram = np.zeros((n_items, n_items), dtype=np.float32) if out is None else out
    block = max(1, _GRAM_BLOCK_ENTRIES // max(1, n_items))
    for start in range(0, n_items, block):
        gram[start : start + block] = (xt[start : start + block] @ x).toarray()
    return gram


def ease_from_gram(gram: np.ndarray, l2: float) -> np.ndarray:
    """EASE's closed form from the Gram matrix, in place: ``gram`` becomes B (float32).

    P = (G + lambda I)^-1 by LAPACK's Cholesky factorisation and inverse
    (spotrf/spotri) in the matrix's own memory, then B = -P / diag(P) with a
    zero diagonal, column by column block. Peak memory is one items x items
    float32 matrix (the float64 ``np.linalg.inv`` route needed four times that).
    float32 is enough: G + lambda I is well conditioned for lambda in EASE's range
    (tests/test_baselines.py checks B against a float64 inverse).
    """
    from scipy.linalg import lapack

    g = gram if gram.dtype == np.float32 and gram.flags.c_contiguous else np.ascontiguousarray(gram, np.float32)
    n = g.shape[0]
    g[np.diag_indices(n)] += np.float32(l2)
    # g is symmetric, so its transpose is the same matrix in Fortran order: LAPACK
    # works in place on it. Its upper triangle is g's lower one.
    factor, info = lapack.spotrf(g.T, lower=0, clean=0, overwrite_a=1)
    if info != 0:
        raise ValueError(f"EASE: G + {l2} I is not positive definite (spotrf info={info}); "
                         "raise the lambdas of ease.l2_grid")
    inverse, info = lapack.spotri(factor, lower=0, overwrite_c=1)
    if info != 0:
        raise ValueError(f"EASE: inverting G + {l2} I failed (spotri info={info}); raise the lambdas of ease.l2_grid")
    if not np.shares_memory(inverse, g):  # LAPACK could not work in place: take its copy
        g[...] = inverse.T
        del inverse
    block = max(1, _GRAM_BLOCK_ENTRIES // max(1, n) // 4)
    cols = np.arange(n)
    for start in range(0, n, block):
        end = min(n, start + block)
        # Rows start:end, upper part (column >= row) from the valid lower triangle.
        upper = cols[None, start:] >= cols[start:end, None]
        g[start:end, start:] = np.where(upper, g[start:, start:end].T, g[start:end, start:])
    diag = g.diagonal().copy()
    for start in range(0, n, block):
        g[start : start + block] /= -diag  # column j divided by P_jj
    g[np.diag_indices(n)] = 0.0
    return g


def ease_memory_need(n_items: int, n_pairs: int, *, dense_copies: int = 1) -> int:
    """Bytes the driver holds for EASE: ``dense_copies`` items x items matrices (a search keeps the
    Gram matrix beside the one it inverts), X and X^T (CSR), one block."""
    dense = 4 * n_items * n_items * dense_copies
    csr = 2 * (8 * n_pairs + 8 * n_items) + 16 * n_pairs  # X and X^T, plus the collected pair arrays
    block = 3 * 4 * min(n_items * n_items, _GRAM_BLOCK_ENTRIES)  # a sparse block and its dense copy, at worst
    return dense + csr + block


_REMEDY = ("Lower ease.max_items to leave EASE out of catalogs this size, or run the driver "
           "where more memory is free (spark.driver_python_memory caps this budget).")


def _ease_budget(train: DataFrame, n_items: int, *, max_items: int, python_memory: int | None,
                 copies: int) -> tuple[int, int]:
    """Refuse EASE up front when it cannot fit; returns (training pairs, dense copies that fit: ``copies`` or 1).

    Raises:
        MemoryBudgetError: above ``ease.max_items``, or not even one dense matrix fits the driver.
    """
    if n_items > max_items:
        raise MemoryBudgetError(
            f"EASE: the catalog has {n_items} items, above ease.max_items={max_items}; its dense "
            f"item x item matrix ({memory.format_size(4 * n_items * n_items)}) is held on the driver. "
            "Raise ease.max_items (the driver needs ~4 x items^2 bytes free), or leave EASE out for this catalog."
        )
    n_pairs = train.count()
    what = f"EASE on {n_items} items ({n_pairs} training pairs)"
    if copies > 1:
        try:
            memory.require_python(what, ease_memory_need(n_items, n_pairs, dense_copies=copies), remedy=_REMEDY,
                                  cap=python_memory)
        except MemoryBudgetError:
            copies = 1  # the search rebuilds the Gram matrix per lambda in the one matrix that fits
    if copies == 1:
        memory.require_python(what, ease_memory_need(n_items, n_pairs), remedy=_REMEDY, cap=python_memory)
    # The pairs cross the driver JVM as Arrow batches before reaching Python.
    memory.require_driver_jvm(
        train.sparkSession, f"collecting EASE's {n_pairs} training pairs", 12 * n_pairs,
        remedy="Raise spark.driver_memory, or lower ease.max_items to leave EASE out.",
    )
    return n_pairs, copies


def fit_ease(
    train: DataFrame, n_items: int, *, l2: float, max_items: int, python_memory: int | None = None
) -> np.ndarray:
    """EASE's B ([n_items, n_items] float32) fitted on ``train`` with one lambda, within the driver's memory.

    Raises:
        MemoryBudgetError: the catalog is above ``ease.max_items``, or its
            matrices would not fit the driver's memory (checked before anything is computed).
    """
    n_pairs, _ = _ease_budget(train, n_items, max_items=max_items, python_memory=python_memory, copies=1)
    started = time.perf_counter()
    users, items = interaction_pairs(train)
    collected = time.perf_counter()
    gram = gram_matrix(users, items, n_items)
    del users, items
    built = time.perf_counter()
    b = ease_from_gram(gram, l2)
    print(f"EASE: {n_items} items, {n_pairs} pairs: collected in {collected - started:.1f} s, "
          f"Gram matrix in {built - collected:.1f} s, inverse in {time.perf_counter() - built:.1f} s", flush=True)
    return b


def ease_grid(
    train: DataFrame, n_items: int, l2_grid: Sequence[float], *, max_items: int, python_memory: int | None = None
) -> Iterator[tuple[float, np.ndarray, float]]:
    """EASE's B for each lambda of ``l2_grid`` from one Gram matrix: yields (lambda, B, seconds).

    The Gram matrix is built once and kept; each lambda inverts a copy of it
    in one working matrix, which every B yielded shares: use (or ship) a B
    before asking for the next. When the driver cannot hold both matrices,
    the Gram matrix is rebuilt per lambda from the collected pairs in the one
    matrix that fits (slower, never refused for the search alone).
    ``seconds`` is the lambda's own time (the copy or rebuild, and the inverse).

    Why copies and Cholesky rather than one eigendecomposition G = V diag(w) V^T
    (then P = V diag(1 / (w + lambda)) V^T per lambda): the eigendecomposition
    costs several Cholesky inverses up front and holds three matrices, and at the
    grid's six lambdas it was no faster (docs/benchmarks.md, "Self-tuning").

    Raises:
        MemoryBudgetError: as :func:`fit_ease`, checked before anything is computed.
    """
    copies = 2 if len(l2_grid) > 1 else 1
    n_pairs, copies = _ease_budget(train, n_items, max_items=max_items, python_memory=python_memory, copies=copies)
    started = time.perf_counter()
    users, items = interaction_pairs(train)
    gram = gram_matrix(users, items, n_items)
    keep = copies > 1
    work = np.empty_like(gram) if keep else gram
    if keep:
        del users, items
    print(f"EASE grid: {n_items} items, {n_pairs} pairs, {len(l2_grid)} lambdas: Gram matrix in "
          f"{time.perf_counter() - started:.1f} s, {'kept' if keep else 'rebuilt per lambda (memory)'}", flush=True)
    for i, l2 in enumerate(l2_grid):
        t0 = time.perf_counter()
        if keep:
            np.copyto(work, gram)
        elif i > 0:
            gram_matrix(users, items, n_items, out=work)
        b = ease_from_gram(work, l2)
        yield float(l2), b, time.perf_counter() - t0


# --------------------------------------------------------------------------- the baselines as fitted models

POPULARITY, POPULARITY_RECENT, EASE = "popularity", "popularity_recent", "ease"


def fit_popularity(spark, train: DataFrame, n_items: int, *, name: str = POPULARITY,
                   recent_days: int | None = None) -> FittedModel:
    """Popularity (all time, or ``recent_days`` before the latest training time) as a rank-1 model."""
    params = {"recent_days": recent_days} if recent_days is not None else {}
    return fitted.rank_one(spark, name, popularity_vector(train, n_items, recent_days=recent_days), params=params)


# The families' fits (registered in recsys_spark.models.registry): fit(spark, name, rows, *, n_items, cfg).


def fit_popularity_model(spark, name: str, train: DataFrame, *, n_items: int, cfg: Config) -> FittedModel:
    """``popularity`` (all time) or ``popularity_recent`` (``popularity.recent_days``) fitted on ``train``."""
    if name == POPULARITY_RECENT:
        return fit_popularity(spark, train, n_items, name=name, recent_days=cfg.popularity.recent_days)
    if name == POPULARITY:
        return fit_popularity(spark, train, n_items)
    raise ValueError(f"the popularity family has no model '{name}' ({POPULARITY}, {POPULARITY_RECENT})")
