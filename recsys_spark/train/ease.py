"""Training EASE: its lambda searched on validation, the best refitted on train + validation.

One Gram matrix of the training rows serves every lambda of ``ease.l2_grid``
(:func:`recsys_spark.models.baselines.ease_grid`: only the inverse is repeated);
each lambda's B is judged by the same full-ranking metric as every other model
(:func:`recsys_spark.evaluate.folds.validation_metrics_of`), several lambdas in
one Spark pass when their B files are small (:data:`ONE_PASS_BYTES`). The best is refitted
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
# A Spark pass over the validation fold costs about 2 s on 2 cores whatever the catalog, and
# on a small catalog that is most of a lambda's time: lambdas are judged together in one pass
# while their B files (shipped to the executors, each n_items^2 float32) take at most this
# much disk together; at 20,000 items (1.6 GB each) every lambda has its own pass, as before.
ONE_PASS_BYTES = 256 * 2**20


def lambdas_per_pass(n_items: int) -> int:
    """How many lambdas' B files one validation pass judges (at least one)."""
    return max(1, ONE_PASS_BYTES // (4 * n_items * n_items))


def search(spark: SparkSession, cfg: Config, split_rows: DataFrame, *, n_items: int) -> list[dict]:
    """Every lambda of ``ease.l2_grid`` fitted on train and judged on validation, in grid order:
    ``[{"l2", <primary metric>, "metrics", "inverse_seconds"}]``."""
    conf, primary = cfg.ease, cfg.evaluation.primary_metric
    grid: list[dict] = []
    waiting: list[tuple[float, fitted.FittedModel, float]] = []  # shipped, not yet judged

    def judge() -> None:
        metrics = folds.validation_metrics_of([model for _, model, _ in waiting], split_rows, n_items, cfg)
        for l2, model, seconds in waiting:
            model.release()
            found = metrics[model.name]
            grid.append({"l2": l2, primary: found[primary], "metrics": found, "inverse_seconds": round(seconds, 2)})
            print(f"ease l2={l2:g} validation {primary}={found[primary]:.4f} (inverse {seconds:.1f} s)", flush=True)
        waiting.clear()

    per_pass = lambdas_per_pass(n_items)
    for l2, b, seconds in baselines.ease_grid(split.training_rows(split_rows, final=False), n_items, conf.l2_grid,
                                              max_items=conf.max_items,
                                              python_memory=cfg.spark.driver_python_memory_bytes):
        # B is written out here (the grid reuses its buffer); named by lambda to be told apart in the pass.
        waiting.append((l2, fitted.item_item(spark, f"{MODEL} l2={l2:g}", matrix=b, params={"l2": l2}), seconds))
        if len(waiting) == per_pass:
            judge()
    if waiting:
        judge()
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
