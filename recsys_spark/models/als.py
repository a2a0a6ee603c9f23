"""Spark MLlib ALS, the matrix-factorisation baseline (implicit feedback by default).

Hyperparameters are searched on the validation fold by full-ranking NDCG@K,
the candidate fits running as concurrent Spark jobs from a thread pool (the
mechanism ``pyspark.ml.tuning`` uses for its ``parallelism``; its evaluators
cannot score a full-catalog ranking, so the search loop is ours).
"""
from __future__ import annotations

import itertools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass

from pyspark.ml.recommendation import ALS, ALSModel
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.config import AlsConf
from recsys_spark.models import fitted
from recsys_spark.models.fitted import FittedModel
from recsys_spark.schemas import FACTORS, ITEM_INDEX, USER_INDEX, WEIGHT


@dataclass(frozen=True)
class AlsParams:
    rank: int
    reg_param: float
    alpha: float
    max_iter: int

    def as_dict(self) -> dict:
        return asdict(self)


def grid(conf: AlsConf) -> list[AlsParams]:
    return [
        AlsParams(rank, reg, alpha, iters)
        for rank, reg, alpha, iters in itertools.product(conf.ranks, conf.reg_params, conf.alphas, conf.max_iters)
    ]


def fit(train: DataFrame, params: AlsParams, *, implicit_prefs: bool = True, seed: int = 42,
        num_blocks: int | None = None) -> ALSModel:
    """Fit ALS on ``train`` (``user_index``, ``item_index``, ``weight``).

    Args:
        num_blocks: user and item blocks; None: the session's default parallelism (its task slots).
    """
    blocks = num_blocks or max(1, train.sparkSession.sparkContext.defaultParallelism)
    als = ALS(
        numUserBlocks=blocks,
        numItemBlocks=blocks,
        rank=params.rank,
        maxIter=params.max_iter,
        regParam=params.reg_param,
        alpha=params.alpha,
        implicitPrefs=implicit_prefs,
        userCol=USER_INDEX,
        itemCol=ITEM_INDEX,
        ratingCol=WEIGHT,
        # Unknown users/items get no prediction rather than NaN; cold start is
        # handled explicitly downstream (popularity fallback).
        coldStartStrategy="drop",
        seed=seed,
    )
    return als.fit(train.select(USER_INDEX, ITEM_INDEX, WEIGHT))


def factor_tables(model: ALSModel) -> tuple[DataFrame, DataFrame]:
    """(user_factors, item_factors) in the warehouse's factor-table shape."""
    users = model.userFactors.select(F.col("id").cast("int").alias(USER_INDEX), F.col("features").alias(FACTORS))
    items = model.itemFactors.select(F.col("id").cast("int").alias(ITEM_INDEX), F.col("features").alias(FACTORS))
    return users, items


def search(
    candidates: list[AlsParams],
    score: Callable[[AlsParams], float],
    *,
    parallelism: int,
) -> list[tuple[AlsParams, float]]:
    """Score every candidate (concurrently) and return them best first."""
    with ThreadPoolExecutor(max_workers=max(1, parallelism)) as pool:
        scores = list(pool.map(score, candidates))
    return sorted(zip(candidates, scores), key=lambda pair: -pair[1])


def fitted_model(spark, model: ALSModel, *, n_items: int, params: dict, name: str = "als") -> FittedModel:
    """A fitted ALSModel as the project's :class:`FittedModel` (a dot-product model)."""
    user_factors, item_factors = factor_tables(model)
    return fitted.dot_product(spark, name, item_factors=item_factors, n_items=n_items,
                              user_factors=user_factors, params=params)
