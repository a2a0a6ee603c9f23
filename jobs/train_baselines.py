"""Fit the baselines (popularity, recent popularity, EASE) and score the held-out folds.

Each is fitted on train and scored on validation (its selection metric), then
refitted on train + validation and scored on test; vectors and metadata go to
<warehouse>/models/<name>/, test top-K to <warehouse>/eval_recs/<name>/test.

    scripts/submit.sh jobs/train_baselines.py --dataset synthetic
"""
from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from recsys_spark import io, model_eval, split
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.models import artifacts, baselines
from recsys_spark.schemas import ITEM_INDEX, SPLIT, USER_INDEX
from recsys_spark.scoring import DotProductScorer, ItemItemScorer
from recsys_spark.session import build_spark


def fit_scorer(spark, name, train, n_items, cfg):
    """(scorer, item matrix to save, kind) for baseline ``name`` fitted on ``train``."""
    if name == "ease":
        b = baselines.fit_ease(train, n_items, l2=cfg.ease.l2, max_items=cfg.ease.max_items,
                               python_memory=cfg.spark.driver_python_memory_bytes)
        scorer = ItemItemScorer(spark, b)  # written to a local file and shipped: B is not kept
        return scorer, None, artifacts.KIND_ITEM_ITEM
    recent = cfg.popularity.recent_days if name == "popularity_recent" else None
    pop = baselines.popularity_vector(train, n_items, recent_days=recent)[:, None]
    return DotProductScorer(spark, pop, np.ones(n_items, dtype=bool)), pop, artifacts.KIND_DOT_PRODUCT


def with_unit_factors(users):
    """Popularity as a rank-1 dot-product model: every user's vector is [1]."""
    return users.withColumn("factors", F.array(F.lit(1.0).cast("float")))


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv, lambda p: p.add_argument(
        "--models", default="popularity,popularity_recent,ease", help="comma-separated baselines to fit"))
    spark = build_spark(cfg, "train_baselines")
    wh = cfg.warehouse
    # Cached: every baseline reads the split twice (fit and scoring users).
    split_rows = io.read_table(spark, wh, SPLIT).cache()
    n_users, n_items = model_eval.catalog_sizes(spark, wh)
    report = {}
    for name in [m.strip() for m in args.models.split(",") if m.strip()]:
        results = {}
        for fold in (model_eval.SELECTION_FOLD, model_eval.FINAL_FOLD):
            train = split.training_rows(split_rows, final=fold == model_eval.FINAL_FOLD)
            scorer, matrix, kind = fit_scorer(spark, name, train, n_items, cfg)
            users = with_unit_factors(model_eval.fold_users(split_rows, fold))
            recs = model_eval.score_fold(users, scorer, cfg)
            if fold == model_eval.FINAL_FOLD:
                model_eval.write_eval_recs(recs, wh, name, fold)
                if kind == artifacts.KIND_ITEM_ITEM:
                    artifacts.save_item_item(spark, wh, name, scorer.matrix.local_path)
                else:
                    all_users = spark.range(n_users).select(F.col("id").cast("int").alias(USER_INDEX))
                    artifacts.save_factors(wh, name, user_factors=with_unit_factors(all_users),
                                           item_factors=artifacts.factors_frame(spark, matrix, ITEM_INDEX))
            else:
                results = model_eval.fold_metrics(split_rows, recs, fold, n_items, cfg)
            if kind == artifacts.KIND_ITEM_ITEM:  # the fold is scored (and B saved): its file is done
                scorer.matrix.release()
        params = {"l2": cfg.ease.l2} if name == "ease" else (
            {"recent_days": cfg.popularity.recent_days} if name == "popularity_recent" else {})
        artifacts.save_metadata(
            spark, wh, name, kind=kind, params=params, config=cfg.to_dict(),
            n_users=n_users, n_items=n_items, metrics={"validation": results},
        )
        report[name] = {cfg.evaluation.primary_metric + "_validation": results.get(cfg.evaluation.primary_metric)}
    split_rows.unpersist()
    print_report("train_baselines", report)
    return report


if __name__ == "__main__":
    main()
