"""Evaluate every model of the run on the same held-out test fold and compare them.

Reads <warehouse>/eval_recs/<model>/test for each model (all found, or --models),
computes full-ranking metrics against the split's warm test users, and writes
<warehouse>/metrics/run_date=D/<model>.json plus comparison.csv / comparison.md.
Cold-start test users (no training history) are evaluated separately with the
recent-popularity fallback every model serves them.

    scripts/submit.sh jobs/evaluate.py --dataset synthetic
"""
from __future__ import annotations

import numpy as np
from pyspark.sql import functions as F

from recsys_spark import evaluate, io, model_eval, split
from recsys_spark.cli import job_main, parse_job_args
from recsys_spark.config import run_date
from recsys_spark.models import artifacts, baselines
from recsys_spark.schemas import SPLIT, USER_INDEX
from recsys_spark.scoring import DotProductScorer
from recsys_spark.session import build_spark


def cold_start_report(spark, split_rows, n_items, cfg) -> dict:
    """Counts of cold rows in test, and the popularity fallback's metrics on cold users."""
    test = split.fold(split_rows, model_eval.FINAL_FOLD)
    counts = {r["segment"]: {"rows": r["rows"], "users": r["users"]} for r in test.groupBy("segment").agg(
        F.count(F.lit(1)).alias("rows"), F.countDistinct(USER_INDEX).alias("users")).collect()}
    report = {"test_segments": counts}
    cold = split.fold(split_rows, model_eval.FINAL_FOLD, segment="cold_user")
    if counts.get("cold_user", {}).get("rows", 0) == 0:
        return report
    train = split.training_rows(split_rows, final=True)
    pop = baselines.popularity_vector(train, n_items, recent_days=cfg.popularity.recent_days)[:, None]
    users = cold.select(USER_INDEX).distinct().withColumn("seen", F.lit(None).cast("array<int>")).withColumn(
        "factors", F.array(F.lit(1.0).cast("float")))
    recs = model_eval.score_fold(users, DotProductScorer(spark, pop, np.ones(n_items, dtype=bool)), cfg)
    # Relevant items of cold users include items new after the cutoff: none can be recommended,
    # and that is the truth about cold start.
    report["cold_user_metrics_popularity_recent"] = evaluate.ranking_metrics(
        recs, evaluate.relevant_items(cold), ks=cfg.evaluation.ks, n_items=n_items)
    return report


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv, lambda p: p.add_argument(
        "--models", default=None, help="comma-separated models (default: every model with test recs)"))
    spark = build_spark(cfg, "evaluate")
    wh, day = cfg.warehouse, run_date(cfg)
    models = args.models.split(",") if args.models else [
        m for m in io.list_dir(spark, f"{wh}/eval_recs") if not m.startswith((".", "_"))]
    if not models:
        raise FileNotFoundError(f"no model has test recommendations under {wh}/eval_recs; train one first")
    split_rows = io.read_table(spark, wh, SPLIT).cache()
    _, n_items = model_eval.catalog_sizes(spark, wh)
    protocol = io.read_json(spark, f"{wh}/split/_split.json")

    results = []
    out_dir = f"{wh}/metrics/run_date={day}"
    for model in models:
        recs = model_eval.read_eval_recs(spark, wh, model, model_eval.FINAL_FOLD)
        metrics = model_eval.fold_metrics(split_rows, recs, model_eval.FINAL_FOLD, n_items, cfg)
        meta = artifacts.load_metadata(spark, wh, model)
        result = {"model": model, "run_date": day, "fold": model_eval.FINAL_FOLD, "split": protocol,
                  "metrics": metrics, "validation_metrics": meta.get("metrics", {}).get("validation", {}),
                  "params": meta.get("params", {})}
        io.write_json(spark, f"{out_dir}/{model}.json", result)
        results.append(result)

    cold = cold_start_report(spark, split_rows, n_items, cfg)
    io.write_json(spark, f"{out_dir}/_cold_start.json", cold)
    header, rows = evaluate.comparison_rows(results, cfg.evaluation.ks)
    io.write_text(spark, f"{out_dir}/comparison.csv", evaluate.to_csv(header, rows))
    markdown = evaluate.to_markdown(header, rows)
    io.write_text(spark, f"{out_dir}/comparison.md", markdown)
    split_rows.unpersist()
    print(f"== evaluate: test fold, {protocol.get('protocol')} split, {len(results)} models -> {out_dir}")
    print(markdown)
    print("cold start:", cold.get("test_segments"))
    return {"results": results, "cold_start": cold, "metrics_dir": out_dir}


if __name__ == "__main__":
    main()
