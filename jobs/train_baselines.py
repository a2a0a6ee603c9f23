"""Fit the baselines (popularity, recent popularity, EASE: every model of a family registered
with a fit in recsys_spark/models/registry.py) and score the held-out folds.

Each is fitted on train and scored on validation (its selection metric), then
refitted on train + validation and scored on test; its artifacts and metadata
go to <warehouse>/models/<name>/, test top-K to <warehouse>/eval_recs/<name>/test.

    scripts/submit.sh jobs/train_baselines.py --dataset synthetic
"""
from __future__ import annotations

from recsys_spark import io
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.models import registry
from recsys_spark.schemas import SPLIT
from recsys_spark.session import build_spark
from recsys_spark.train import baselines as train_baselines


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv, lambda p: p.add_argument(
        "--models", default=",".join(registry.baseline_names()), help="comma-separated baselines to fit"))
    names = [m.strip() for m in args.models.split(",") if m.strip()]
    for name in names:  # an unknown name fails before any Spark work (exit 2, job_main)
        registry.baseline_fit(name)
    spark = build_spark(cfg, "train_baselines")
    # Cached: every baseline reads the split twice (fit and scoring users).
    split_rows = io.read_table(spark, cfg.warehouse, SPLIT).cache()
    n_users, n_items = io.catalog_sizes(spark, cfg.warehouse)
    report = train_baselines.train(spark, cfg, split_rows, names, n_users=n_users, n_items=n_items)
    split_rows.unpersist()
    print_report("train_baselines", report)
    return report


if __name__ == "__main__":
    main()
