"""Who is served by what, and each user's candidate pool.

Every known user gets a time-ordered history and a source: the serving model,
or the popularity fallback for users it cannot score (too little history, no
vector). Candidates come from the blocked scorer
(:func:`recsys_spark.scoring.blocked.top_k`, never a users x items cross join)
with seen and excluded items masked.
"""
from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark.models.fitted import FittedModel
from recsys_spark.schemas import ITEM_ID, SEEN, SOURCE, USER_INDEX
from recsys_spark.scoring.blocked import top_k
from recsys_spark.scoring.scorers import CatalogScorer

SOURCE_MODEL = "model"

SOURCE_FALLBACK = "popularity_fallback"

SOURCES = (SOURCE_MODEL, SOURCE_FALLBACK)


def assign_sources(
    user_index: DataFrame,
    histories: DataFrame,
    *,
    min_history: int,
    model_users: DataFrame | None = None,
    max_users: int | None = None,
) -> DataFrame:
    """Every known user with ``seen`` (empty when none), ``n_history`` and ``source``.

    A user is served by the model when they have at least ``min_history`` items
    and the model can score them: a row in ``model_users`` (dot-product
    models' user factors) and an index below ``max_users`` (torch models), when
    given. Everyone else gets the popularity fallback.
    """
    users = user_index.select(USER_INDEX).join(histories, USER_INDEX, "left").withColumn(
        SEEN, F.coalesce(F.col(SEEN), F.array().cast("array<int>"))
    ).withColumn("n_history", F.size(SEEN))
    ok = F.col("n_history") >= F.lit(min_history)
    if max_users is not None:
        ok = ok & (F.col(USER_INDEX) < F.lit(max_users))
    if model_users is not None:
        users = users.join(model_users.select(USER_INDEX).withColumn("_has_model", F.lit(True)), USER_INDEX, "left")
        ok = ok & F.col("_has_model").isNotNull()
    return users.withColumn(SOURCE, F.when(ok, SOURCE_MODEL).otherwise(SOURCE_FALLBACK)).select(
        USER_INDEX, SEEN, "n_history", SOURCE
    )


def candidates(
    users: DataFrame,
    model: FittedModel,
    fallback: FittedModel,
    *,
    n_items: int,
    pool: int,
    exclude_seen: bool,
    excluded: np.ndarray | None = None,
    batch_users: int = 512,
) -> DataFrame:
    """Each user's top ``pool`` items from their source, blocked scoring for both.

    Args:
        users: :func:`assign_sources` output.
        model / fallback: the serving model and the cold-start fallback (popularity, all time or a recent
            window, chosen on validation: :func:`recsys_spark.evaluate.folds.choose_fallback`).
        n_items: today's catalog; items the model never saw score -inf.
        excluded: [n_items] bool, items never to recommend.

    Returns:
        ``user_index``, ``item_index``, ``score``, ``rank``, ``source``.
    """
    spark = users.sparkSession
    common = dict(k=pool, exclude_seen=exclude_seen, batch_users=batch_users)
    pools = []
    for source, served_by in ((SOURCE_MODEL, model), (SOURCE_FALLBACK, fallback)):
        scorer = CatalogScorer(spark, served_by.scorer, n_items, excluded)
        rows = served_by.prepare_users(users.where(F.col(SOURCE) == source))
        pools.append(top_k(rows, scorer, **common).withColumn(SOURCE, F.lit(source)))
    return pools[0].unionByName(pools[1])


def read_exclusion_list(spark: SparkSession, path: str) -> DataFrame:
    """``item_id`` s from a CSV with a header or a Parquet file/directory (by its name)."""
    df = io.read_side_file(spark, path, setting="recommend.exclude_items_path")
    if ITEM_ID not in df.columns:
        raise ValueError(f"recommend.exclude_items_path: {path} has no '{ITEM_ID}' column (has {df.columns})")
    return df.select(F.trim(F.col(ITEM_ID).cast("string")).alias(ITEM_ID)).where(F.col(ITEM_ID) != "").distinct()
