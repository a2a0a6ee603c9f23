"""EASE: its lambda searched on validation (ease.l2_grid, one Gram matrix for every lambda),
the best refitted on train + validation.

Writes B and metadata (the chosen lambda, every lambda's validation score) to
<warehouse>/models/ease/ and test top-K to <warehouse>/eval_recs/ease/test.

    scripts/submit.sh jobs/train_ease.py --dataset synthetic
"""
from __future__ import annotations

from recsys_spark import io
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.schemas import SPLIT
from recsys_spark.session import build_spark
from recsys_spark.train import ease


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv)
    spark = build_spark(cfg, "train_ease")
    # Cached: every lambda's validation scoring and the refit read it.
    split_rows = io.read_table(spark, cfg.warehouse, SPLIT).cache()
    n_users, n_items = io.catalog_sizes(spark, cfg.warehouse)
    report = ease.train(spark, cfg, split_rows, n_users=n_users, n_items=n_items)
    split_rows.unpersist()
    print_report("train_ease", report)
    return report


if __name__ == "__main__":
    main()
