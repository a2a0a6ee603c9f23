"""What every trainer shares to be judged the same way: the users of a held-out
fold with their training items, their top-K from a scorer, and the metrics.

Model selection scores ``validation`` with models fitted on ``train``; the
final model, refitted on train + validation, is scored on ``test``. The
cold-user fallback is chosen the same way, on validation's cold users
(:func:`choose_fallback`), and reported on test's (:func:`cold_start_report`).
"""
from __future__ import annotations

import dataclasses
import functools
import hashlib
import json

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, split, tables
from recsys_spark.scoring import blocked
from recsys_spark.evaluate import ranking
from recsys_spark.config import Config
from recsys_spark.models import artifacts, baselines, fitted
from recsys_spark.models.fitted import FittedModel
from recsys_spark.schemas import (EVAL_RECS, ITEM_INDEX_TABLE, MODEL_COMPARISON, SEEN, SEGMENT, SPLIT,
                                  USER_INDEX)

FINAL_FOLD = "test"
SELECTION_FOLD = "validation"
CANDIDATE = "candidate"  # the column telling rankings apart when several are judged at once


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


def fold_metrics(split_rows: DataFrame, recs: DataFrame, fold: str, n_items: int, cfg: Config, *,
                 models: list[str] | None = None) -> dict:
    """``recs``' metrics on ``fold``; with ``models``, ``recs`` holds each model's rankings (column
    :data:`CANDIDATE`) and the result is ``{model: metrics}``, all judged in one pass."""
    train = split.training_rows(split_rows, final=(fold == FINAL_FOLD))
    common = dict(ks=cfg.evaluation.ks, n_items=n_items, item_popularity=ranking.catalog_popularity(train, n_items))
    relevant = fold_relevant(split_rows, fold)
    if models is None:
        return ranking.ranking_metrics(recs, relevant, **common)
    return ranking.ranking_metrics_by(recs, relevant, by=CANDIDATE, keys=models, **common)


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


def validation_metrics_of(models: list[FittedModel], split_rows: DataFrame, n_items: int, cfg: Config) -> dict:
    """:func:`validation_metrics` of several models, ``{name: metrics}``, judged in one pass."""
    if len(models) == 1:
        return {models[0].name: validation_metrics(models[0], split_rows, n_items, cfg)}
    recs = functools.reduce(DataFrame.unionByName, [
        score_model(m, split_rows, SELECTION_FOLD, cfg).withColumn(CANDIDATE, F.lit(m.name)) for m in models])
    return fold_metrics(split_rows, recs, SELECTION_FOLD, n_items, cfg, models=[m.name for m in models])


def finish(spark: SparkSession, cfg: Config, model: FittedModel, split_rows: DataFrame, *, n_users: int,
           n_items: int, validation: dict, extra: dict | None = None) -> dict:
    """Score the final model (fitted on train + validation) on test, write its ``eval_recs``
    for the evaluate job, and save it with its validation metrics. Returns its metadata."""
    recs = score_model(model, split_rows, FINAL_FOLD, cfg)
    write_eval_recs(recs, cfg.warehouse, model.name, FINAL_FOLD)
    return model.save(spark, cfg.warehouse, config=cfg.to_dict(), n_users=n_users, n_items=n_items,
                      metrics={"validation": validation}, extra=extra)


# --------------------------------------------------------------------------- the cold-user fallback

JUDGED_ON_COLD = "cold_users"
JUDGED_ON_WARM = "warm_users_no_cold"
JUDGED_ON_NOBODY = "no_users"  # the fold is empty: all time is kept
COLD_START_FILE = "_cold_start.json"  # evaluate's cold-start report, under the run date's metrics


def fallback_candidates(cfg: Config) -> list[tuple[str, int | None]]:
    """The cold-user fallback's candidates, (name, window in days or None for all time), in tie-break order:
    all-time popularity first, then recent popularity over each of ``popularity.fallback_windows_days``, shortest first."""
    windows = sorted(set(cfg.popularity.fallback_windows_days))
    return [(baselines.POPULARITY, None)] + [(f"{baselines.POPULARITY_RECENT}_{d}d", d) for d in windows]


def fallback_users(split_rows: DataFrame, fold: str) -> tuple[DataFrame, DataFrame, str]:
    """(users with ``seen``, their ``relevant`` items, the rule) the fallback is judged on in ``fold``.

    The fold's cold users (no training rows), with an empty history, as serving
    meets them. A fold without any (the random and leave-last-n splits keep every
    user in train) judges the fallback on its warm users instead, as every model
    is judged (their training items excluded): a popularity ranking is then
    judged on the items each user had yet to meet. Judging them with an empty
    history instead would reward the candidate that wastes fewest slots on items
    the split put in the user's train fold, a property of the split, not of
    newcomers.
    """
    cold = split.fold(split_rows, fold, segment="cold_user")
    if cold.limit(1).count():
        users = cold.select(USER_INDEX).distinct().withColumn(SEEN, F.lit(None).cast("array<int>"))
        # Relevant items of cold users include items new after the cutoff: none can be recommended,
        # and that is the truth about cold start.
        return users, ranking.relevant_items(cold), JUDGED_ON_COLD
    return fold_users(split_rows, fold), fold_relevant(split_rows, fold), JUDGED_ON_WARM


def judge_fallbacks(split_rows: DataFrame, fold: str, n_items: int, cfg: Config) -> dict:
    """Every fallback candidate's metrics on ``fold``'s cold users (:func:`fallback_users`), each fitted on the
    rows the fold's models train on (train for validation, train + validation for test).

    Returns:
        ``{"fold", "judged_on", "candidates": {name: {"recent_days": days or None, "metrics": {...}}}}``.
    """
    spark = split_rows.sparkSession
    candidates = fallback_candidates(cfg)
    train = split.training_rows(split_rows, final=(fold == FINAL_FOLD))
    pops = baselines.popularity_vectors(train, n_items, [days for _, days in candidates])
    users, relevant, rule = fallback_users(split_rows, fold)
    users, relevant = users.cache(), relevant.cache()  # read once per candidate
    if relevant.limit(1).count() == 0:  # a fold with no held-out users at all: nothing to judge on
        rule = JUDGED_ON_NOBODY
    metrics = {}
    if rule != JUDGED_ON_NOBODY:  # every candidate's top-K, judged in one pass (ranking_metrics_by)
        recs = []
        for (name, days), pop in zip(candidates, pops):
            model = fitted.rank_one(spark, name, pop, params={"recent_days": days})
            recs.append(score_fold(model.prepare_users(users), model.scorer, cfg).withColumn(CANDIDATE, F.lit(name)))
        metrics = ranking.ranking_metrics_by(functools.reduce(DataFrame.unionByName, recs), relevant, by=CANDIDATE,
                                             keys=[name for name, _ in candidates], ks=cfg.evaluation.ks,
                                             n_items=n_items)
    judged = {name: {"recent_days": days, "metrics": metrics.get(name)} for name, days in candidates}
    users.unpersist()
    relevant.unpersist()
    return {"fold": fold, "judged_on": rule, "candidates": judged}


def choose_fallback(split_rows: DataFrame, n_items: int, cfg: Config) -> dict:
    """The cold-user fallback chosen on validation by ``evaluation.primary_metric`` (ties: the earlier
    candidate of :func:`fallback_candidates`, all time first).

    Returns:
        ``{"chosen", "recent_days", "metric", "fold", "judged_on", "users", "candidates": {name: value}}``:
        what serving fits (on every interaction) and what the run's manifest records.
    """
    primary = cfg.evaluation.primary_metric
    judged = judge_fallbacks(split_rows, SELECTION_FOLD, n_items, cfg)
    values = {name: (c["metrics"] or {}).get(primary) for name, c in judged["candidates"].items()}
    chosen = max(values, key=lambda name: values[name] or 0.0)  # the first of equals
    users = (next(iter(judged["candidates"].values()))["metrics"] or {}).get("users", 0)
    return {"chosen": chosen, "recent_days": judged["candidates"][chosen]["recent_days"], "metric": primary,
            "fold": SELECTION_FOLD, "judged_on": judged["judged_on"], "users": int(users), "candidates": values}


def fallback_made_on(spark: SparkSession, cfg: Config) -> dict:
    """What a fallback choice depends on: the split table's and the item index's versions (their paths
    inside the warehouse and modification times) and the settings :func:`choose_fallback` reads (the
    ``evaluation`` and ``popularity`` sections). The evaluate job records it beside its choice
    (``_cold_start.json``) so that recommend, later in the same night, reuses the choice instead of
    judging the candidates again (:func:`recorded_fallback`). Serving's own settings (``recommend.*``,
    the run date) change what is served, not which candidate is best on validation; a warehouse
    copied with its files' times is the same data."""
    versions = {table.name: {"path": table.path,
                             "modified": io.modification_time(spark, io.table_path(cfg.warehouse, table))}
                for table in (SPLIT, ITEM_INDEX_TABLE)}
    settings = {"evaluation": dataclasses.asdict(cfg.evaluation), "popularity": dataclasses.asdict(cfg.popularity)}
    digest = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:16]
    return {**versions, "settings": digest}


def recorded_fallback(spark: SparkSession, cfg: Config, run_date: str) -> dict | None:
    """The choice evaluate recorded for ``run_date``, when made on this same split and item index under
    the same settings (:func:`fallback_made_on`); None otherwise (the caller chooses again)."""
    report = io.read_json_if_exists(spark, io.metrics_path(cfg.warehouse, run_date, COLD_START_FILE))
    if not report or report.get("made_on") != fallback_made_on(spark, cfg) or "fallback" not in report:
        return None
    return report["fallback"]


def fit_fallback(spark: SparkSession, rows: DataFrame, n_items: int, choice: dict) -> FittedModel:
    """The chosen fallback (:func:`choose_fallback`) fitted on ``rows`` (serving: every interaction)."""
    return baselines.fit_popularity(spark, rows, n_items, name=choice["chosen"], recent_days=choice["recent_days"])


def cold_start_report(split_rows: DataFrame, n_items: int, cfg: Config) -> dict:
    """Counts of cold rows in test; the fallback chosen on validation and every candidate on test's cold users.

    Cold users have no training history, so every model serves them the same
    fallback; they are judged apart from the warm users the models are compared
    on (a test fold without cold users: its warm users, :func:`fallback_users`).
    """
    test = split.fold(split_rows, FINAL_FOLD)
    counts = {r[SEGMENT]: {"rows": r["rows"], "users": r["users"]} for r in test.groupBy(SEGMENT).agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct(USER_INDEX).alias("users")).collect()}
    choice = choose_fallback(split_rows, n_items, cfg)
    on_test = judge_fallbacks(split_rows, FINAL_FOLD, n_items, cfg)
    return {"test_segments": counts, "fallback": choice, "fallback_test": on_test,
            "cold_user_metrics_fallback": on_test["candidates"][choice["chosen"]]["metrics"]}


def test_fold_results(spark: SparkSession, cfg: Config, split_rows: DataFrame, models: list[str], *, n_items: int,
                 run_date: str, protocol: dict) -> list[dict]:
    """Each model's test-fold metrics from its ``eval_recs``, with its validation metrics and parameters."""
    if not models:
        return []
    recs = functools.reduce(DataFrame.unionByName, [
        read_eval_recs(spark, cfg.warehouse, model, FINAL_FOLD).withColumn(CANDIDATE, F.lit(model)) for model in models])
    metrics = fold_metrics(split_rows, recs, FINAL_FOLD, n_items, cfg, models=models)  # every model in one pass
    results = []
    for model in models:
        meta = artifacts.load_metadata(spark, cfg.warehouse, model)
        results.append({"model": model, "run_date": run_date, "fold": FINAL_FOLD, "split": protocol,
                        "metrics": metrics[model],
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
