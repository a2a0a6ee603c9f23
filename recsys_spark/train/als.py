"""Training ALS: its grid searched on validation, the best refitted on train + validation.

Every candidate fits on the same cached training rows and is judged by the
same full-ranking metric as every other model
(:func:`recsys_spark.evaluate.folds.validation_metrics`); the candidate fits
run as concurrent Spark jobs (:func:`recsys_spark.models.als.search`).
"""
from __future__ import annotations

import time

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import split
from recsys_spark.config import Config
from recsys_spark.evaluate import folds
from recsys_spark.models import als

MODEL = "als"


def train(spark: SparkSession, cfg: Config, split_rows: DataFrame, *, n_users: int, n_items: int) -> dict:
    """Search, refit, score test and save ``models/als``; returns the job's report."""
    conf, primary = cfg.als, cfg.evaluation.primary_metric
    fit_args = dict(implicit_prefs=conf.implicit_prefs, seed=conf.seed, num_blocks=conf.num_blocks)
    # Cached: every candidate fits on the same rows.
    train_rows = split.training_rows(split_rows, final=False).cache()
    all_metrics = {}

    def score(params: als.AlsParams) -> float:
        model = als.fitted_model(spark, als.fit(train_rows, params, **fit_args), n_items=n_items,
                                 params=params.as_dict())
        all_metrics[params] = folds.validation_metrics(model, split_rows, n_items, cfg)
        print(f"als {params.as_dict()} validation {primary}={all_metrics[params][primary]:.4f}", flush=True)
        return all_metrics[params][primary]

    started = time.time()
    candidates = als.grid(conf)
    ranked = als.search(candidates, score, parallelism=conf.parallelism)
    search_seconds = time.time() - started
    best = ranked[0][0]
    train_rows.unpersist()

    started = time.time()
    final = als.fitted_model(
        spark, als.fit(split.training_rows(split_rows, final=True), best, **fit_args), n_items=n_items,
        params={**best.as_dict(), "implicit_prefs": conf.implicit_prefs, "seed": conf.seed})
    refit_extra = {"grid": [{**p.as_dict(), primary: s} for p, s in ranked], "search_seconds": search_seconds,
                   # The same shape as every searched model's (the comparison shows it).
                   "search": {"chosen": best.as_dict(), "trials": [{"values": p.as_dict(), "best_metric": s}
                                                                   for p, s in ranked]}}
    # The refit's time covers its fit, its test scoring and the save.
    folds.finish(spark, cfg, final, split_rows, n_users=n_users, n_items=n_items,
                 validation=all_metrics[best], extra={**refit_extra, "refit_seconds": time.time() - started})
    refit_seconds = time.time() - started
    return {"best": best.as_dict(), f"{primary}_validation": ranked[0][1], "candidates": len(candidates),
            "search_seconds": round(search_seconds, 1), "refit_seconds": round(refit_seconds, 1)}
