"""Training the baselines: each fitted on train and judged on validation, then refitted
on train + validation, scored on test and saved (:mod:`recsys_spark.models.baselines`)."""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import split
from recsys_spark.config import Config
from recsys_spark.evaluate import folds
from recsys_spark.models import baselines


def train(spark: SparkSession, cfg: Config, split_rows: DataFrame, names: list[str], *, n_users: int,
          n_items: int) -> dict:
    """Fit, judge, refit, score and save every baseline in ``names``; returns the job's report."""
    primary, report = cfg.evaluation.primary_metric, {}
    for name in names:
        selection = baselines.fit(spark, name, split.training_rows(split_rows, final=False), n_items=n_items, cfg=cfg)
        validation = folds.validation_metrics(selection, split_rows, n_items, cfg)
        selection.release()
        final = baselines.fit(spark, name, split.training_rows(split_rows, final=True), n_items=n_items, cfg=cfg)
        folds.finish(spark, cfg, final, split_rows, n_users=n_users, n_items=n_items, validation=validation)
        final.release()
        report[name] = {f"{primary}_validation": validation.get(primary)}
    return report
