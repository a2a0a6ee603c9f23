"""First-order Markov chain: the next item from the user's last one.

The sequential baseline of the leave-last-one-out protocol (issue 15); as
popularity is to ranking, a first-order chain is the bar a sequence model has
to clear (Rendle, Freudenthaler, Schmidt-Thieme, "Factorizing Personalized
Markov Chains for Next-Basket Recommendation", WWW 2010, its "MC" baseline).

Training (Spark): each user's training rows in time order (``last_time``, then
``item_index``: the order of :func:`recsys_spark.tables.user_histories` and of
the ``leave_last_n`` split) give consecutive pairs (i, j), by ``lead`` over the
user's partition; ``groupBy(i, j).count()`` is c(i -> j). Per source item the
``markov.max_next_items`` most frequent next items are kept (ties: lower item
index first); c(i) counts all of i's transitions, so the kept ones keep their
true probabilities.

Scoring, for a user whose last item is i (a ``last_item``-kind model,
:class:`recsys_spark.scoring.scorers.LastItemScorer`)::

    s(j) = (c(i -> j) + a * pop(j)) / (c(i) + a)
         = w(i) * P(j | i) + (1 - w(i)) * pop(j),   w(i) = c(i) / (c(i) + a)

``pop(j)``: j's share of the training users (distinct users per item, summing
to 1); ``a`` = ``markov.backoff``, a pseudo-count. Popularity backs off the
chain: it orders the items no transition reaches, breaks ties among equal
counts, and is the whole score after a last item with no transitions (or one
the model never saw). Seen items are masked by the scorer's caller, as for
every model.
"""
from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import memory
from recsys_spark.config import Config
from recsys_spark.models import fitted
from recsys_spark.models.baselines import popularity_scores
from recsys_spark.models.fitted import FittedModel
from recsys_spark.schemas import ITEM_INDEX, LAST_TIME, USER_INDEX

NEXT_ITEM = "next_item_index"  # the item that followed ``item_index`` in a user's history
COUNT = "count"  # transitions i -> j
SOURCE_COUNT = "source_count"  # all transitions out of i (before the top-K cut)


def transition_counts(rows: DataFrame) -> DataFrame:
    """c(i -> j) over consecutive items of each user's time-ordered rows.

    Args:
        rows: interactions-shaped rows (``user_index``, ``item_index``, ``last_time``).

    Returns:
        ``item_index``, ``next_item_index``, ``count``: one row per observed transition.
    """
    order = Window.partitionBy(USER_INDEX).orderBy(F.col(LAST_TIME), F.col(ITEM_INDEX))
    pairs = rows.select(
        F.col(ITEM_INDEX).cast("int").alias(ITEM_INDEX),
        F.lead(F.col(ITEM_INDEX).cast("int")).over(order).alias(NEXT_ITEM),
    ).where(F.col(NEXT_ITEM).isNotNull())
    return pairs.groupBy(ITEM_INDEX, NEXT_ITEM).agg(F.count(F.lit(1)).alias(COUNT))


def top_transitions(counts: DataFrame, *, max_next_items: int) -> DataFrame:
    """Each source's ``max_next_items`` most frequent next items (ties: lower index), with its total.

    Returns:
        ``item_index``, ``next_item_index``, ``count``, ``source_count``.
    """
    by_source = Window.partitionBy(ITEM_INDEX)
    ranked = counts.withColumn(SOURCE_COUNT, F.sum(COUNT).over(by_source)).withColumn(
        "_rank", F.row_number().over(by_source.orderBy(F.col(COUNT).desc(), F.col(NEXT_ITEM)))
    )
    return ranked.where(F.col("_rank") <= max_next_items).drop("_rank")


def transition_arrays(kept, popularity: np.ndarray, *, n_items: int, backoff: float) -> dict[str, np.ndarray]:
    """The :class:`LastItemScorer` arrays from kept transitions (a pandas frame of
    :func:`top_transitions`' columns) and per-item popularity counts."""
    kept = kept.sort_values([ITEM_INDEX, COUNT, NEXT_ITEM], ascending=[True, False, True])
    src = kept[ITEM_INDEX].to_numpy(np.int64)
    indptr = np.zeros(n_items + 1, dtype=np.int64)
    indptr[1:] = np.cumsum(np.bincount(src, minlength=n_items))
    totals = np.zeros(n_items, dtype=np.float64)
    totals[src] = kept[SOURCE_COUNT].to_numpy(np.float64)
    values = kept[COUNT].to_numpy(np.float64) / (totals[src] + backoff)
    pop = np.asarray(popularity, dtype=np.float64)
    share = pop / pop.sum() if pop.sum() > 0 else pop
    return {
        "indptr": indptr,
        "indices": kept[NEXT_ITEM].to_numpy(np.int64),
        "values": values.astype(np.float32),
        "source_weight": (backoff / (totals + backoff)).astype(np.float32),
        "backoff": share.astype(np.float32),
    }


def fit_markov(train: DataFrame, n_items: int, *, max_next_items: int, backoff: float) -> dict[str, np.ndarray]:
    """The chain's arrays fitted on ``train`` (counted by Spark, at most ``n_items x max_next_items``
    kept transitions collected through Arrow)."""
    spark = train.sparkSession
    memory.require_driver_jvm(
        spark, f"collecting at most {max_next_items} next items for each of {n_items} items",
        16 * n_items * max_next_items,
        remedy="Lower markov.max_next_items, or raise spark.driver_memory.",
    )
    kept = top_transitions(transition_counts(train), max_next_items=max_next_items)
    key = "spark.sql.execution.arrow.pyspark.enabled"
    before = spark.conf.get(key, "false")
    spark.conf.set(key, "true")
    try:
        pdf = kept.select(ITEM_INDEX, NEXT_ITEM, COUNT, SOURCE_COUNT).toPandas()
    finally:
        spark.conf.set(key, before)
    return transition_arrays(pdf, popularity_scores(train, n_items=n_items), n_items=n_items, backoff=backoff)


# The family's fit (registered in recsys_spark.models.registry): fit(spark, name, rows, *, n_items, cfg).


def fit_markov_model(spark, name: str, train: DataFrame, *, n_items: int, cfg: Config) -> FittedModel:
    """The first-order chain fitted on ``train`` with ``cfg.markov``'s settings."""
    conf = cfg.markov
    arrays = fit_markov(train, n_items, max_next_items=conf.max_next_items, backoff=conf.backoff)
    return fitted.last_item(spark, name, **arrays,
                            params={"max_next_items": conf.max_next_items, "backoff": conf.backoff})
