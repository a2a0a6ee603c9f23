"""What every trainer shares to be judged the same way: the users of a held-out
fold with their training items, their top-K from a scorer, and the metrics.

Model selection scores ``validation`` with models fitted on ``train``; the
final model, refitted on train + validation, is scored on ``test``.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, split, tables
from recsys_spark.scoring import blocked
from recsys_spark.evaluate import ranking
from recsys_spark.config import Config
from recsys_spark.models import artifacts, baselines
from recsys_spark.models.fitted import FittedModel
from recsys_spark.schemas import EVAL_RECS, MODEL_COMPARISON, SEEN, SEGMENT, USER_INDEX

FINAL_FOLD = "test"
SELECTION_FOLD = "validation"


def fold_users(split_rows: DataFrame, fold: str) -> DataFrame:
    """Warm users of ``fold`` with ``seen``: their items in the rows the model trained on."""
    train = split.training_rows(split_rows, final=(fold == FINAL_FOLD))
    held = split.fold(split_rows, fold, segment="warm").select(USER_INDEX).distinct()
    return held.join(tables.user_histories(train), USER_INDEX, "left")


def fold_relevant(split_rows: DataFrame, fold: str) -> DataFrame:
    return ranking.relevant_items(split.fold(split_rows, fold, segment="warm"))


def score_fold(users: DataFrame, scorer, cfg: Config) -> DataFrame:
    return blocked.top_k(
        users,
        scorer,
        k=max(cfg.evaluation.ks),
        exclude_seen=cfg.evaluation.exclude_seen,
        batch_users=cfg.evaluation.scoring_batch_users,
    )


def fold_metrics(split_rows: DataFrame, recs: DataFrame, fold: str, n_items: int, cfg: Config) -> dict:
    train = split.training_rows(split_rows, final=(fold == FINAL_FOLD))
    return ranking.ranking_metrics(
        recs,
        fold_relevant(split_rows, fold),
        ks=cfg.evaluation.ks,
        n_items=n_items,
        item_popularity=ranking.catalog_popularity(train, n_items),
    )


def write_eval_recs(recs: DataFrame, warehouse: str, model: str, fold: str) -> str:
    return io.write_table(recs, warehouse, EVAL_RECS, path=io.table_path(warehouse, EVAL_RECS, model=model, fold=fold))


def read_eval_recs(spark: SparkSession, warehouse: str, model: str, fold: str) -> DataFrame:
    return io.read_table(spark, warehouse, EVAL_RECS, path=io.table_path(warehouse, EVAL_RECS, model=model, fold=fold))


def score_model(model: FittedModel, split_rows: DataFrame, fold: str, cfg: Config) -> DataFrame:
    """Top-K of ``fold``'s warm users from ``model`` (users it has no vector for get none)."""
    return score_fold(model.prepare_users(fold_users(split_rows, fold)), model.scorer, cfg)


def validation_metrics(model: FittedModel, split_rows: DataFrame, n_items: int, cfg: Config) -> dict:
    """The selection fold's metrics of a model fitted on train (what selection and the quality gate compare)."""
    recs = score_model(model, split_rows, SELECTION_FOLD, cfg)
    return fold_metrics(split_rows, recs, SELECTION_FOLD, n_items, cfg)


def finish(spark: SparkSession, cfg: Config, model: FittedModel, split_rows: DataFrame, *, n_users: int,
           n_items: int, validation: dict, extra: dict | None = None) -> dict:
    """Score the final model (fitted on train + validation) on test, write its ``eval_recs``
    for the evaluate job, and save it with its validation metrics. Returns its metadata."""
    recs = score_model(model, split_rows, FINAL_FOLD, cfg)
    write_eval_recs(recs, cfg.warehouse, model.name, FINAL_FOLD)
    return model.save(spark, cfg.warehouse, config=cfg.to_dict(), n_users=n_users, n_items=n_items,
                      metrics={"validation": validation}, extra=extra)


def cold_start_report(split_rows: DataFrame, n_items: int, cfg: Config) -> dict:
    """Counts of cold rows in test, and the recent-popularity fallback's metrics on cold users.

    Cold users have no training history, so every model serves them the same
    fallback; they are judged apart from the warm users the models are compared on.
    """
    test = split.fold(split_rows, FINAL_FOLD)
    counts = {r[SEGMENT]: {"rows": r["rows"], "users": r["users"]} for r in test.groupBy(SEGMENT).agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct(USER_INDEX).alias("users")).collect()}
    report = {"test_segments": counts}
    if counts.get("cold_user", {}).get("rows", 0) == 0:
        return report
    cold = split.fold(split_rows, FINAL_FOLD, segment="cold_user")
    train = split.training_rows(split_rows, final=True)
    fallback = baselines.fit_popularity(split_rows.sparkSession, train, n_items, name=baselines.POPULARITY_RECENT,
                                        recent_days=cfg.popularity.recent_days)
    users = fallback.prepare_users(cold.select(USER_INDEX).distinct().withColumn(SEEN, F.lit(None).cast("array<int>")))
    recs = score_fold(users, fallback.scorer, cfg)
    # Relevant items of cold users include items new after the cutoff: none can be recommended,
    # and that is the truth about cold start.
    report["cold_user_metrics_popularity_recent"] = ranking.ranking_metrics(
        recs, ranking.relevant_items(cold), ks=cfg.evaluation.ks, n_items=n_items)
    return report


def test_fold_results(spark: SparkSession, cfg: Config, split_rows: DataFrame, models: list[str], *, n_items: int,
                 run_date: str, protocol: dict) -> list[dict]:
    """Each model's test-fold metrics from its ``eval_recs``, with its validation metrics and parameters."""
    results = []
    for model in models:
        recs = read_eval_recs(spark, cfg.warehouse, model, FINAL_FOLD)
        meta = artifacts.load_metadata(spark, cfg.warehouse, model)
        results.append({"model": model, "run_date": run_date, "fold": FINAL_FOLD, "split": protocol,
                        "metrics": fold_metrics(split_rows, recs, FINAL_FOLD, n_items, cfg),
                        "validation_metrics": meta.get("metrics", {}).get("validation", {}),
                        "params": meta.get("params", {}), "selected": selected_settings(meta)})
    return results


def selected_settings(meta: dict) -> dict | None:
    """What a model's search chose on validation (its metadata's ``search``): the chosen values,
    the trials run and pruned; None for a model that searched nothing."""
    searched = meta.get("search")
    if not searched:
        return None
    trials = searched.get("trials") or []
    return {"chosen": searched.get("chosen"), "trials": len(trials),
            "pruned": sum(bool(t.get("pruned")) for t in trials)}


def comparison_table(spark: SparkSession, results: list[dict]) -> DataFrame:
    """The ``model_comparison`` rows of :func:`test_fold_results`: one per model and metric."""
    rows = []
    for r in results:
        names = sorted(set(r["metrics"]) | set(r["validation_metrics"]))
        for name in names:
            test, val = r["metrics"].get(name), r["validation_metrics"].get(name)
            rows.append((r["model"], name, None if test is None else float(test), None if val is None else float(val)))
    return spark.createDataFrame(rows, MODEL_COMPARISON.schema)
