"""Spark MLlib ALS: grid search on validation NDCG@K, refit on train + validation.

Writes user/item factors and metadata (chosen parameters, the whole grid's
scores) to <warehouse>/models/als/ and test top-K to <warehouse>/eval_recs/als/test.

    scripts/submit.sh jobs/train_als.py --dataset synthetic
"""
from __future__ import annotations

import time

from recsys_spark import io, model_eval, split
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.models import als, artifacts
from recsys_spark.schemas import SPLIT
from recsys_spark.session import build_spark

MODEL = "als"


def score_model(spark, model, split_rows, fold, n_items, cfg):
    """Top-K for the fold's warm users from a fitted ALSModel."""
    user_factors, item_factors = als.factor_tables(model)
    scorer = artifacts.dot_product_scorer(spark, item_factors, n_items)
    users = artifacts.users_with_factors(model_eval.fold_users(split_rows, fold), user_factors)
    return model_eval.score_fold(users, scorer, cfg), user_factors, item_factors


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv)
    spark = build_spark(cfg, "train_als")
    wh, primary = cfg.warehouse, cfg.evaluation.primary_metric
    split_rows = io.read_table(spark, wh, SPLIT).cache()
    n_users, n_items = model_eval.catalog_sizes(spark, wh)
    # Cached: every candidate fits on the same rows.
    train = split.training_rows(split_rows, final=False).cache()

    def validation_score(params):
        model = als.fit(train, params, implicit_prefs=cfg.als.implicit_prefs, seed=cfg.als.seed,
                      num_blocks=cfg.als.num_blocks)
        recs, _, _ = score_model(spark, model, split_rows, model_eval.SELECTION_FOLD, n_items, cfg)
        metrics = model_eval.fold_metrics(split_rows, recs, model_eval.SELECTION_FOLD, n_items, cfg)
        print(f"als {params.as_dict()} validation {primary}={metrics[primary]:.4f}", flush=True)
        return metrics

    started = time.time()
    candidates = als.grid(cfg.als)
    all_metrics = {}

    def score(params):
        all_metrics[params] = validation_score(params)
        return all_metrics[params][primary]

    ranked = als.search(candidates, score, parallelism=cfg.als.parallelism)
    search_seconds = time.time() - started
    best = ranked[0][0]
    train.unpersist()

    started = time.time()
    final_train = split.training_rows(split_rows, final=True)
    model = als.fit(final_train, best, implicit_prefs=cfg.als.implicit_prefs, seed=cfg.als.seed,
                      num_blocks=cfg.als.num_blocks)
    recs, user_factors, item_factors = score_model(spark, model, split_rows, model_eval.FINAL_FOLD, n_items, cfg)
    artifacts.save_factors(wh, MODEL, user_factors=user_factors, item_factors=item_factors)
    model_eval.write_eval_recs(recs, wh, MODEL, model_eval.FINAL_FOLD)
    refit_seconds = time.time() - started
    artifacts.save_metadata(
        spark, wh, MODEL,
        kind=artifacts.KIND_DOT_PRODUCT,
        params={**best.as_dict(), "implicit_prefs": cfg.als.implicit_prefs, "seed": cfg.als.seed},
        config=cfg.to_dict(), n_users=n_users, n_items=n_items,
        metrics={"validation": all_metrics[best]},
        extra={"grid": [{**p.as_dict(), primary: s} for p, s in ranked],
               "search_seconds": search_seconds, "refit_seconds": refit_seconds},
    )
    split_rows.unpersist()
    report = {"best": best.as_dict(), f"{primary}_validation": ranked[0][1],
              "candidates": len(candidates), "search_seconds": round(search_seconds, 1),
              "refit_seconds": round(refit_seconds, 1)}
    print_report("train_als", report)
    return report


if __name__ == "__main__":
    main()
