"""Train a registered neural model with the Petastorm-fed DDP trainer (TorchDistributor).

Selection: train on the train fold, early stopping on validation
(evaluation.primary_metric); then, with neural.refit, retrain on train +
validation for the best epoch count (in the same launch of the training processes). Writes <warehouse>/models/<name>/ (factor
tables for dot-product models, else model.pt) with metadata.json, and test
top-K to <warehouse>/eval_recs/<name>/test for jobs/evaluate.py.

    scripts/submit.sh jobs/train_neural.py --model two_tower --dataset synthetic
"""
from __future__ import annotations

from recsys_spark import io
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.models import registry
from recsys_spark.schemas import SPLIT
from recsys_spark.session import build_spark, run_job
from recsys_spark.train import neural


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv, lambda p: p.add_argument(
        "--model", required=True, help=f"registered neural model: {', '.join(registry.names())}"))
    registry.get(args.model)  # an unknown name fails before any Spark work (exit 2, job_main)
    cfg.for_neural_model(args.model)  # its neural.per_model entry is checked before any Spark work
    spark = build_spark(cfg, f"train_neural_{args.model}")
    # Cached: both phases and both scorings read it.
    split_rows = io.read_table(spark, cfg.warehouse, SPLIT).cache()
    n_users, n_items = io.catalog_sizes(spark, cfg.warehouse)
    report = neural.train(spark, cfg, split_rows, args.model, n_users=n_users, n_items=n_items)
    split_rows.unpersist()
    print_report("train_neural", report)
    return report


if __name__ == "__main__":
    # Not main(): the barrier stage leaves a JVM thread that would keep spark-submit alive
    # after this script ends on a local master; run_job stops Spark and ends the JVM.
    run_job(main)
