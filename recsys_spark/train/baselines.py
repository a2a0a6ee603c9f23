"""Training the families ``jobs/train_baselines.py`` fits (popularity, EASE, any family registered
with a fit in :mod:`recsys_spark.models.registry`): each model fitted on train and judged on
validation, then refitted on train + validation, scored on test and saved."""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import split
from recsys_spark.config import Config
from recsys_spark.evaluate import folds
from recsys_spark.models import registry


def train(spark: SparkSession, cfg: Config, split_rows: DataFrame, names: list[str], *, n_users: int,
          n_items: int) -> dict:
    """Fit, judge, refit, score and save every model in ``names``; returns the job's report.

    Raises:
        recsys_spark.models.registry.UnknownModel: a name no family with a fit trains (before any fit).
    """
    primary, report = cfg.evaluation.primary_metric, {}
    fits = [(name, registry.baseline_fit(name)) for name in names]
    # Every model's selection fit judged on validation in one Spark pass (the popularity stage's
    # two models: one pass instead of two, each a few seconds of fixed cost on any size of fold).
    # The selection fits are held together until then: fine for these families' small state
    # (popularity vectors, Markov's transitions); EASE's catalog-wide matrix has its own stage.
    selections = [fit(spark, name, split.training_rows(split_rows, final=False), n_items=n_items, cfg=cfg)
                  for name, fit in fits]
    validations = folds.validation_metrics_of(selections, split_rows, n_items, cfg)
    for selection in selections:
        selection.release()
    for name, fit in fits:
        final = fit(spark, name, split.training_rows(split_rows, final=True), n_items=n_items, cfg=cfg)
        folds.finish(spark, cfg, final, split_rows, n_users=n_users, n_items=n_items, validation=validations[name])
        final.release()
        report[name] = {f"{primary}_validation": validations[name].get(primary)}
    return report
