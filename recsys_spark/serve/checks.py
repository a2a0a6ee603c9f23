"""What a published run must be: expected row counts, the contract's rules, and the quality gate.

:func:`validate` checks every rule a published run must meet;
:func:`quality_gate` compares the serving model's validation metric with the
last published run's, and checks catalog coverage.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark.schemas import ITEM_ID, RANK, RECOMMENDATIONS, SCORE, SEEN, SOURCE, USER_ID, USER_INDEX
from recsys_spark.serve.candidates import SOURCE_FALLBACK, SOURCE_MODEL, SOURCES


def expected_counts(
    users: DataFrame,
    *,
    n: int,
    exclude_seen: bool,
    model_available: np.ndarray,
    fallback_available: np.ndarray,
) -> DataFrame:
    """``user_index``, ``source``, ``expected_n``: how many rows each user must get.

    ``min(n, available)``, where available is the source's recommendable items
    (catalog minus excluded items; for the model, also minus items it has no
    vector for) minus the user's seen items when they are excluded. Computed
    from the inputs, independently of the scoring path it checks.
    """
    masks = {SOURCE_MODEL: np.asarray(model_available, bool), SOURCE_FALLBACK: np.asarray(fallback_available, bool)}

    def run(batches):
        for pdf in batches:
            counts = []
            for seen, source in zip(pdf[SEEN], pdf[SOURCE]):
                mask = masks[source]
                total = int(mask.sum())
                if exclude_seen and seen is not None and len(seen):
                    s = np.unique(np.asarray(seen, dtype=np.int64))
                    s = s[(s >= 0) & (s < len(mask))]
                    total -= int(mask[s].sum())
                counts.append(min(n, total))
            yield pd.DataFrame({"user_index": pdf["user_index"].astype(np.int32), SOURCE: pdf[SOURCE],
                                "expected_n": np.asarray(counts, dtype=np.int32)})

    return users.select(USER_INDEX, SEEN, SOURCE).mapInPandas(
        run, "user_index int, source string, expected_n int"
    )


def _examples(df: DataFrame, cols: list[str], limit: int = 3) -> str:
    rows = df.select(*cols).limit(limit).collect()
    return ", ".join(str(tuple(r)) if len(cols) > 1 else str(r[0]) for r in rows)


def validate(
    recs: DataFrame,
    expected: DataFrame,
    *,
    model: str,
    seen: DataFrame | None = None,
    excluded: DataFrame | None = None,
    reranked: bool = False,
) -> list[str]:
    """Every rule a published run must meet; an empty list means it may be published.

    Args:
        recs: the staged output (``RECOMMENDATIONS`` columns).
        expected: ``user_id``, ``source``, ``expected_n`` for every known user.
        model: the serving model's name (every row's ``model``).
        seen: ``user_id``, ``item_id`` pairs that must not appear (when seen items are excluded).
        excluded: ``item_id`` s that must never appear.
        reranked: MMR output: ranks are checked, score order is not (MMR trades score for diversity).

    Returns:
        One message per broken rule, with a count and a few examples.
    """
    try:
        io.check_schema(recs, RECOMMENDATIONS, "staged recommendations")
    except io.SchemaMismatch as exc:
        return [f"schema: {exc}"]
    # One aggregation per user holds every rule (row-level rules as per-user sums),
    # so validation costs one shuffle whatever the number of rules.
    any_null = F.lit(False)
    for f in RECOMMENDATIONS.schema.fields:
        if not f.nullable:
            any_null = any_null | F.col(f.name).isNull()
    row_rules = {
        "null in a required column": any_null,
        "score not finite": F.isnan(SCORE) | F.col(SCORE).isin(float("inf"), float("-inf")),
        f"source not one of {list(SOURCES)}": ~F.col(SOURCE).isin(*SOURCES),
        f"model is not '{model}'": F.col("model") != F.lit(model),
    }
    rows = recs
    if seen is not None:
        marked = seen.select(USER_ID, ITEM_ID).distinct().withColumn("_seen", F.lit(True))
        rows = rows.join(marked, [USER_ID, ITEM_ID], "left")
        row_rules["seen items recommended"] = F.col("_seen").isNotNull()
    if excluded is not None:
        marked = excluded.select(ITEM_ID).distinct().withColumn("_excluded", F.lit(True))
        rows = rows.join(F.broadcast(marked), ITEM_ID, "left")
        row_rules["excluded items recommended"] = F.col("_excluded").isNotNull()

    aggs = [F.sum(F.when(cond, 1).otherwise(0)).alias(f"_r{i}") for i, cond in enumerate(row_rules.values())]
    aggs += [
        F.count(F.lit(1)).alias("n_rows"),
        F.size(F.collect_set(ITEM_ID)).alias("n_items"),
        F.min(RANK).alias("min_rank"),
        F.max(RANK).alias("max_rank"),
        F.size(F.collect_set(RANK)).alias("n_ranks"),
        F.size(F.collect_set(SOURCE)).alias("n_sources"),
        F.first(SOURCE).alias("got_source"),
    ]
    if not reranked:
        aggs.append(F.array_sort(F.collect_list(F.struct(RANK, SCORE))).alias("_by_rank"))
    per_user = rows.groupBy(USER_ID).agg(*aggs)
    if not reranked:
        per_user = per_user.withColumn("rising", F.expr(
            "exists(sequence(1, greatest(size(_by_rank) - 1, 1)), "
            "i -> size(_by_rank) > 1 AND _by_rank[i].score > _by_rank[i - 1].score)")).drop("_by_rank")
    joined = per_user.join(expected.select(USER_ID, SOURCE, "expected_n"), USER_ID, "full_outer")

    has_rows, known = F.col("n_rows").isNotNull(), F.col("expected_n").isNotNull()
    # (name, condition on a per-user row, count expression, example columns)
    rules = [(name, F.col(f"_r{i}") > 0, F.col(f"_r{i}"), [USER_ID, f"_r{i}"])
             for i, name in enumerate(row_rules)]
    user_rules = [
        ("users missing", ~has_rows & (F.col("expected_n") > 0), [USER_ID, "expected_n"]),
        ("users not in user_index", has_rows & ~known, [USER_ID]),
        ("wrong number of rows for a user", has_rows & known & (F.col("n_rows") != F.col("expected_n")),
         [USER_ID, "n_rows", "expected_n"]),
        ("duplicate items for a user", has_rows & (F.col("n_items") < F.col("n_rows")), [USER_ID, "n_rows", "n_items"]),
        ("ranks are not 1..n per user", has_rows & (
            (F.col("min_rank") != 1) | (F.col("max_rank") != F.col("n_rows")) | (F.col("n_ranks") != F.col("n_rows"))),
         [USER_ID, "min_rank", "max_rank", "n_rows"]),
        ("wrong source for a user", has_rows & known & (
            (F.col("n_sources") > 1) | (F.col("got_source") != F.col(SOURCE))), [USER_ID, "got_source", SOURCE]),
    ]
    if not reranked:
        user_rules.append(("score rises with rank (users)", has_rows & F.col("rising"), [USER_ID]))
    rules += [(name, cond, F.when(cond, 1).otherwise(0), cols) for name, cond, cols in user_rules]

    totals = joined.agg(*[F.sum(count).alias(f"_t{i}") for i, (_, _, count, _) in enumerate(rules)]).first()
    problems = []
    for i, (name, cond, _, cols) in enumerate(rules):
        if totals[f"_t{i}"]:
            # Examples recompute the plan: only for broken rules, on a run that is not published anyway.
            problems.append(f"{name}: {totals[f'_t{i}']} (e.g. {_examples(joined.where(cond), cols)})")
    return problems


def quality_gate(
    *,
    metric_name: str,
    metric_value: float | None,
    previous: dict | None,
    coverage: float,
    max_metric_drop: float,
    min_coverage: float,
) -> dict:
    """Compare this run with the last published one.

    Args:
        metric_value: the serving model's validation ``metric_name``.
        previous: the last published run's manifest (None: first run, no comparison).
        coverage: share of the catalog recommended to at least one user.

    Returns:
        ``{"checks": {...}, "failures": [reason, ...]}``; no failures = may publish.
    """
    failures: list[str] = []
    checks: dict[str, Any] = {"metric": metric_name, "value": metric_value, "coverage": coverage,
                              "min_coverage": min_coverage, "max_metric_drop": max_metric_drop}
    if metric_value is None:
        failures.append(f"the serving model has no validation '{metric_name}' to compare")
    prev = (previous or {}).get("model_metric") or {}
    if metric_value is not None and prev.get("name") == metric_name and prev.get("value"):
        prev_value = float(prev["value"])
        checks.update(previous_value=prev_value, previous_run_date=previous.get("run_date"),
                      previous_model=previous.get("model"))
        if prev_value > 0 and metric_value < prev_value * (1.0 - max_metric_drop):
            drop = 1.0 - metric_value / prev_value
            failures.append(
                f"validation {metric_name} {metric_value:.4f} is {drop:.1%} below the last published run's "
                f"{prev_value:.4f} ({previous.get('run_date')}, model {previous.get('model')}); "
                f"recommend.max_metric_drop={max_metric_drop}"
            )
    if coverage < min_coverage:
        failures.append(f"catalog coverage {coverage:.4f} is under recommend.min_coverage={min_coverage}")
    return {"checks": checks, "failures": failures}


def output_counts(recs: DataFrame, n_items: int) -> dict:
    """Rows, users (by source), distinct items and catalog coverage of an output."""
    by_source = {r[SOURCE]: {"users": r["users"], "rows": r["rows"]} for r in recs.groupBy(SOURCE).agg(
        F.countDistinct(USER_ID).alias("users"), F.count(F.lit(1)).alias("rows")).collect()}
    distinct_items = recs.select(ITEM_ID).distinct().count()
    return {
        "rows": sum(v["rows"] for v in by_source.values()),
        "users": recs.select(USER_ID).distinct().count(),
        "by_source": by_source,
        "distinct_items": distinct_items,
        "catalog_items": n_items,
        "coverage": distinct_items / n_items if n_items else 0.0,
    }


@dataclass
class Checks:
    """What :func:`validate` needs besides the output itself."""

    expected: DataFrame
    seen: DataFrame | None
    excluded: DataFrame | None
    reranked: bool
