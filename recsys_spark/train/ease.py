"""Training EASE: its lambda searched on validation, the best refitted on train + validation.

One Gram matrix of the training rows serves every lambda of ``ease.l2_grid``
(:func:`recsys_spark.models.baselines.ease_grid`: only the inverse is repeated);
each lambda's B is judged by the same full-ranking metric as every other model
(:func:`recsys_spark.evaluate.folds.validation_metrics`). The best is refitted
on train + validation (its own Gram matrix, once), scored on test and saved
with the whole grid's scores in its metadata.
"""
from __future__ import annotations

import time

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import split
from recsys_spark.config import Config
from recsys_spark.evaluate import folds
from recsys_spark.models import baselines, fitted

MODEL = baselines.EASE


def search(spark: SparkSession, cfg: Config, split_rows: DataFrame, *, n_items: int) -> list[dict]:
    """Every lambda of ``ease.l2_grid`` fitted on train and judged on validation, in grid order:
    ``[{"l2", <primary metric>, "metrics", "inverse_seconds"}]``."""
    conf, primary = cfg.ease, cfg.evaluation.primary_metric
    grid = []
    for l2, b, seconds in baselines.ease_grid(split.training_rows(split_rows, final=False), n_items, conf.l2_grid,
                                              max_items=conf.max_items,
                                              python_memory=cfg.spark.driver_python_memory_bytes):
        model = fitted.item_item(spark, MODEL, matrix=b, params={"l2": l2})  # B is written out: the buffer is reused
        metrics = folds.validation_metrics(model, split_rows, n_items, cfg)
        model.release()
        grid.append({"l2": l2, primary: metrics[primary], "metrics": metrics, "inverse_seconds": round(seconds, 2)})
        print(f"ease l2={l2:g} validation {primary}={metrics[primary]:.4f} (inverse {seconds:.1f} s)", flush=True)
    return grid


def best(grid: list[dict], primary: str) -> dict:
    """The grid's best entry by ``primary``; ties go to the first in grid order."""
    return max(grid, key=lambda entry: entry[primary])


def train(spark: SparkSession, cfg: Config, split_rows: DataFrame, *, n_users: int, n_items: int) -> dict:
    """Search, refit, score test and save ``models/ease``; returns the job's report."""
    conf, primary = cfg.ease, cfg.evaluation.primary_metric
    started = time.time()
    grid = search(spark, cfg, split_rows, n_items=n_items)
    search_seconds = time.time() - started
    chosen = best(grid, primary)

    started = time.time()
    b = baselines.fit_ease(split.training_rows(split_rows, final=True), n_items, l2=chosen["l2"],
                           max_items=conf.max_items, python_memory=cfg.spark.driver_python_memory_bytes)
    final = fitted.item_item(spark, MODEL, matrix=b, params={"l2": chosen["l2"]})
    del b
    extra = {"l2_grid": list(conf.l2_grid), "grid": [{k: v for k, v in g.items() if k != "metrics"} for g in grid],
             "search_seconds": round(search_seconds, 1),
             # The same shape as every searched model's (the comparison shows it).
             "search": {"chosen": {"l2": chosen["l2"]},
                        "trials": [{"values": {"l2": g["l2"]}, "best_metric": g[primary]} for g in grid]}}
    folds.finish(spark, cfg, final, split_rows, n_users=n_users, n_items=n_items, validation=chosen["metrics"],
                 extra={**extra, "refit_seconds": round(time.time() - started, 1)})
    final.release()
    return {"l2": chosen["l2"], f"{primary}_validation": chosen[primary], "candidates": len(grid),
            "search_seconds": round(search_seconds, 1), "refit_seconds": round(time.time() - started, 1),
            "grid": extra["grid"]}
