"""Spark MLlib ALS: grid search on validation NDCG@K, refit on train + validation.

Writes user/item factors and metadata (chosen parameters, the whole grid's
scores) to <warehouse>/models/als/ and test top-K to <warehouse>/eval_recs/als/test.

    scripts/submit.sh jobs/train_als.py --dataset synthetic
"""
from __future__ import annotations

from recsys_spark import io
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.schemas import SPLIT
from recsys_spark.session import build_spark
from recsys_spark.train import als


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv)
    spark = build_spark(cfg, "train_als")
    split_rows = io.read_table(spark, cfg.warehouse, SPLIT).cache()
    n_users, n_items = io.catalog_sizes(spark, cfg.warehouse)
    report = als.train(spark, cfg, split_rows, n_users=n_users, n_items=n_items)
    split_rows.unpersist()
    print_report("train_als", report)
    return report


if __name__ == "__main__":
    main()
