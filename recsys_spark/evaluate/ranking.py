"""Full-ranking evaluation on Spark.

Every model is judged the same way: its top-K over the whole catalog minus
the user's training items (``scoring.blocked.top_k``), against the user's held-out
items. Sampled-negative metrics are deliberately absent: they mis-rank models.

Precision/Recall/NDCG/MAP@K are ``pyspark.ml.evaluation.RankingEvaluator``'s
(binary relevance), computed with HitRate@K and MRR in one pass of SQL array
expressions per user (RankingEvaluator makes a pass per metric and k; the
tests check the two agree). Catalog coverage@K and the popularity bias of the
recommendations are computed with joins and window functions. Users are weighted equally; a user with no recommendations
counts as all misses.
"""
from __future__ import annotations

import json
import math
from collections.abc import Sequence

from pyspark.ml.evaluation import RegressionEvaluator
from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark.schemas import ITEM_INDEX, RANK, USER_INDEX

_SPARK_METRICS = {
    "precision": "precisionAtK",
    "recall": "recallAtK",
    "ndcg": "ndcgAtK",
    "map": "meanAveragePrecisionAtK",
}


def relevant_items(held_out: DataFrame) -> DataFrame:
    """``user_index``, ``relevant``: each user's held-out items as an array."""
    return held_out.groupBy(USER_INDEX).agg(F.collect_set(ITEM_INDEX).alias("relevant"))


_ONE = "_ranking"  # the one key of ranking_metrics' single ranking


def ranking_metrics(
    recs: DataFrame,
    relevant: DataFrame,
    *,
    ks: Sequence[int],
    n_items: int,
    item_popularity: DataFrame | None = None,
) -> dict[str, float]:
    """Ranking metrics of ``recs`` against ``relevant``.

    Args:
        recs: ``user_index``, ``item_index``, ``rank`` (1 = best), at least max(ks) per user.
        relevant: ``user_index``, ``relevant`` (array of item indexes); the evaluated users.
        n_items: catalog size, for coverage.
        item_popularity: ``item_index``, ``popularity`` over the catalog (training
            counts); when given, ``popularity_percentile_at_k`` is the mean
            popularity percentile of recommended items (1.0 = the most popular).

    Returns:
        ``{metric}_at_{k}`` for precision, recall, ndcg, map, hit_rate, coverage
        (and popularity_percentile), plus ``mrr`` (over the top max(ks)) and ``users``.
    """
    io.require_columns(recs, [USER_INDEX, ITEM_INDEX, RANK], "recommendations")
    return ranking_metrics_by(recs.withColumn(_ONE, F.lit(_ONE)), relevant, by=_ONE, keys=[_ONE], ks=ks,
                              n_items=n_items, item_popularity=item_popularity)[_ONE]


def ranking_metrics_by(
    recs: DataFrame,
    relevant: DataFrame,
    *,
    by: str,
    keys: Sequence[str],
    ks: Sequence[int],
    n_items: int,
    item_popularity: DataFrame | None = None,
) -> dict[str, dict[str, float]]:
    """:func:`ranking_metrics` of several rankings of the same users at once, ``{key: metrics}``.

    ``recs`` holds every ranking, told apart by its string column ``by``; each
    of ``keys`` is judged against all of ``relevant`` (a key with no rows in
    ``recs`` counts as all misses). One pass over the data for all of them:
    on small folds Spark's cost is per stage, not per row, and the fallback's
    candidates or a night's models, judged one by one, paid it once each
    (about 2 s a ranking on 2 cores, whatever its size).

    Raises:
        ValueError: ``relevant`` has no users.
    """
    io.require_columns(recs, [by, USER_INDEX, ITEM_INDEX, RANK], "recommendations")
    io.require_columns(relevant, [USER_INDEX, "relevant"], "relevant items")
    ks = sorted(set(int(k) for k in ks))
    max_k = ks[-1]
    recs = recs.where(F.col(RANK) <= max_k)
    spark = recs.sparkSession
    key_rows = spark.createDataFrame([(str(k),) for k in keys], f"`{by}` string")

    predictions = recs.groupBy(by, USER_INDEX).agg(
        F.transform(
            F.array_sort(F.collect_list(F.struct(RANK, ITEM_INDEX))), lambda x: x[ITEM_INDEX]
        ).alias("prediction")
    )
    # One row per ranking and evaluated user: its top max(ks) as hit flags (1 where the item is relevant).
    per_user = (
        F.broadcast(key_rows).crossJoin(relevant).join(predictions, [by, USER_INDEX], "left")
        .select(
            by,
            USER_INDEX,
            F.transform(F.coalesce("prediction", F.array().cast("array<int>")),
                        lambda x: F.when(F.array_contains("relevant", x), 1).otherwise(0)).alias("hits"),
            F.size("relevant").alias("n_relevant"),
            "prediction",
        )
        .cache()  # read by the metrics pass, coverage and popularity: recs (often scored on the fly) are read once
    )
    out: dict[str, dict[str, float]] = {}
    for row in per_user.groupBy(by).agg(F.count(F.lit(1)).alias("users"), *_per_user_metric_means(ks)).collect():
        values = row.asDict()
        key = values.pop(by)
        out[key] = {k: float(v) for k, v in values.items()}
    if not out:
        per_user.unpersist()
        raise ValueError("evaluation: no users with held-out items")

    # Coverage@K over the catalog; recommendations of the evaluated users only, ranked by
    # their place in the user's list (as the metrics above are).
    evaluated_recs = per_user.select(by, F.posexplode("prediction").alias("position", ITEM_INDEX)).select(
        by, ITEM_INDEX, (F.col("position") + 1).alias(RANK))
    coverage = {row[by]: row for row in evaluated_recs.groupBy(by).agg(
        *[F.countDistinct(F.when(F.col(RANK) <= k, F.col(ITEM_INDEX))).alias(f"c{k}") for k in ks]).collect()}
    for key, metrics in out.items():
        for k in ks:
            metrics[f"coverage_at_{k}"] = (coverage[key][f"c{k}"] if key in coverage else 0) / float(n_items)

    if item_popularity is not None:
        # percent_rank over the whole catalog: 0 = least popular, 1 = most popular.
        # A global window: Spark warns "Moving all data to a single partition", but the
        # rows are items (one per catalog entry, tens of thousands), never events.
        pct = item_popularity.select(
            ITEM_INDEX, F.percent_rank().over(Window.orderBy("popularity")).alias("pop_pct")
        )
        pop = {row[by]: row for row in evaluated_recs.join(pct, ITEM_INDEX, "left").groupBy(by).agg(
            *[F.avg(F.when(F.col(RANK) <= k, F.coalesce("pop_pct", F.lit(0.0)))).alias(f"p{k}") for k in ks]
        ).collect()}
        for key, metrics in out.items():
            for k in ks:
                metrics[f"popularity_percentile_at_{k}"] = float((pop[key][f"p{k}"] if key in pop else None) or 0.0)
    per_user.unpersist()
    return out


def _sum(array_col):
    return F.aggregate(array_col, F.lit(0.0), lambda acc, x: acc + x)


def _per_user_metric_means(ks: Sequence[int]) -> list:
    """Mean over users of precision, recall, NDCG, MAP and hit rate at each k, and MRR, from ``hits``
    (0/1 per rank) and ``n_relevant``: one pass over the users for every metric.

    The definitions are ``pyspark.mllib.evaluation.RankingMetrics``' (what
    ``RankingEvaluator`` computes), which tests/test_evaluate.py checks on random
    rankings: precision divides by k even when fewer than k were recommended;
    NDCG's ideal ranks ``min(|relevant|, k)`` hits; average precision divides by
    ``min(|relevant|, k)``. ``RankingEvaluator`` itself makes one pass over the
    data per (metric, k), 12 Spark jobs for the default ks, in every model's
    validation and in the comparison; these expressions make one.
    """
    hits = F.col("hits")
    n_rel = F.greatest(F.col("n_relevant"), F.lit(1))  # no relevant items: every metric 0, as RankingMetrics
    means = []
    for k in ks:
        top = F.slice(hits, 1, k)
        found = _sum(top)
        dcg = _sum(F.transform(top, lambda h, i: h / F.log2(i + 2)))
        ideal = _sum(F.transform(F.sequence(F.lit(1), F.least(n_rel, F.lit(k))), lambda i: 1.0 / F.log2(i + 1)))
        # Precision at each hit's rank: hits so far / rank.
        precision_at_hits = _sum(F.transform(top, lambda h, i: h * _sum(F.slice(top, 1, i + 1)) / (i + 1)))
        means += [
            F.avg(found / k).alias(f"precision_at_{k}"),
            F.avg(found / n_rel).alias(f"recall_at_{k}"),
            F.avg(dcg / ideal).alias(f"ndcg_at_{k}"),
            F.avg(precision_at_hits / F.least(n_rel, F.lit(k))).alias(f"map_at_{k}"),
            F.avg(F.when(found > 0, 1.0).otherwise(0.0)).alias(f"hit_rate_at_{k}"),
        ]
    first_hit = F.array_position(F.slice(hits, 1, max(ks)), 1)  # 1-based; 0 when none
    means.append(F.avg(F.when(first_hit > 0, 1.0 / first_hit).otherwise(0.0)).alias("mrr"))
    return means


def rating_errors(predictions: DataFrame, *, label_col: str = "rating", prediction_col: str = "prediction") -> dict:
    """RMSE and MAE for models that predict ratings (rows with a NaN prediction dropped)."""
    rows = predictions.where(~F.isnan(prediction_col))
    return {
        metric: float(RegressionEvaluator(metricName=metric, labelCol=label_col, predictionCol=prediction_col).evaluate(rows))
        for metric in ("rmse", "mae")
    }


def catalog_popularity(train: DataFrame, n_items: int) -> DataFrame:
    """``item_index``, ``popularity`` (distinct training users) for every catalog item, zeros included."""
    spark = train.sparkSession
    counts = train.groupBy(ITEM_INDEX).agg(F.countDistinct(USER_INDEX).alias("popularity"))
    catalog = spark.range(n_items).select(F.col("id").cast("int").alias(ITEM_INDEX))
    return catalog.join(counts, ITEM_INDEX, "left").select(ITEM_INDEX, F.coalesce("popularity", F.lit(0)).alias("popularity"))


# --------------------------------------------------------------------------- reporting

_TABLE_METRICS = ("ndcg", "recall", "precision", "map", "hit_rate", "coverage")


def comparison_rows(results: Sequence[dict], ks: Sequence[int]) -> tuple[list[str], list[list]]:
    """Header and rows of the cross-model table, best primary metric first."""
    ks = sorted(ks)
    header = ["model"] + [f"{m}@{k}" for m in _TABLE_METRICS for k in ks] + ["mrr", "users", "selected on validation"]
    rows = []
    for res in results:
        m = res["metrics"]
        rows.append(
            [res["model"]]
            + [m.get(f"{name}_at_{k}", math.nan) for name in _TABLE_METRICS for k in ks]
            + [m.get("mrr", math.nan), int(m.get("users", 0)), describe_selection(res.get("selected"))]
        )
    first_ndcg = header.index(f"ndcg@{ks[0]}")
    rows.sort(key=lambda r: -r[first_ndcg] if not math.isnan(r[first_ndcg]) else math.inf)
    return header, rows


def describe_selection(selected: dict | None) -> str:
    """``lr=0.003 embedding_dim=64 (8 trials, 3 pruned)``: a model's settings chosen on validation."""
    if not selected:
        return ""

    def fmt(v):
        return f"{v:.3g}" if isinstance(v, float) else json.dumps(v) if isinstance(v, (list, dict)) else str(v)

    values = " ".join(f"{k}={fmt(v)}" for k, v in (selected.get("chosen") or {}).items())
    pruned = f", {selected['pruned']} pruned" if selected.get("pruned") else ""
    return f"{values} ({selected.get('trials', 0)} trials{pruned})"


def to_markdown(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        return f"{v:.4f}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def to_csv(header: list[str], rows: list[list]) -> str:
    def fmt(v):
        if isinstance(v, float):
            return f"{v:.6f}"
        text = str(v)
        return '"' + text.replace('"', '""') + '"' if any(c in text for c in ',"\n') else text

    return "\n".join([",".join(fmt(h) for h in header)] + [",".join(fmt(v) for v in row) for row in rows]) + "\n"
