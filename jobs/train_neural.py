"""Train a registered neural model with the Petastorm-fed DDP trainer (TorchDistributor).

Selection: train on the train fold, early stopping on validation
(evaluation.primary_metric); then, with neural.refit, retrain on train +
validation for the best epoch count (in the same launch of the training processes). Writes <warehouse>/models/<name>/ (factor
tables for dot-product models, else model.pt) with metadata.json, and test
top-K to <warehouse>/eval_recs/<name>/test for jobs/evaluate.py.

    scripts/submit.sh jobs/train_neural.py --model two_tower --dataset synthetic
"""
from __future__ import annotations

from recsys_spark import io, model_eval
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.models import registry
from recsys_spark.schemas import SPLIT
from recsys_spark.session import build_spark, run_job
from recsys_spark.train import neural


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv, lambda p: p.add_argument(
        "--model", required=True, help=f"registered neural model: {', '.join(registry.names())}"))
    name, wh, primary = args.model, cfg.warehouse, cfg.evaluation.primary_metric
    registry.get(name)  # an unknown name fails before any Spark work (exit 2, job_main)
    cfg = cfg.for_neural_model(name)  # neural.per_model.<name> over neural.*
    spark = build_spark(cfg, f"train_neural_{name}")
    # Cached: both phases and both scorings read it.
    split_rows = io.read_table(spark, wh, SPLIT).cache()
    n_users, n_items = model_eval.catalog_sizes(spark, wh)
    features = neural.item_features(spark, wh, n_items)
    sizes = dict(n_users=n_users, n_items=n_items, features=features)

    if cfg.neural.refit:  # both fits in one launch of the training processes
        selected, final = neural.fit_and_refit(spark, cfg, split_rows, name, **sizes)
    else:
        selected = final = neural.fit(spark, cfg, split_rows, name, final=False, **sizes)
    val_recs = neural.score_fold(spark, cfg, split_rows, selected, model_eval.SELECTION_FOLD)["recs"]
    validation = model_eval.fold_metrics(split_rows, val_recs, model_eval.SELECTION_FOLD, n_items, cfg)
    best_epochs = selected.best_epoch + 1

    scored = neural.score_fold(spark, cfg, split_rows, final, model_eval.FINAL_FOLD)
    model_eval.write_eval_recs(scored["recs"], wh, name, model_eval.FINAL_FOLD)
    neural.save(spark, cfg, final, scored, n_users=n_users, n_items=n_items,
                metrics={"validation": validation},
                extra={"best_epoch": best_epochs, "refit": cfg.neural.refit,
                       "selection_history": selected.history,
                       "selection_seconds": selected.seconds, "refit_seconds": final.seconds})
    neural.clear_checkpoints(cfg, name)
    split_rows.unpersist()
    report = {"model": name, f"{primary}_validation": validation[primary],
              f"{primary}_validation_in_trainer": selected.best_metric, "best_epoch": best_epochs,
              "stopped_early": selected.stopped_early, "processes": cfg.neural.num_processes,
              "use_gpu": selected.extra["use_gpu"], "selection_seconds": round(selected.seconds, 1),
              "refit_seconds": round(final.seconds, 1) if cfg.neural.refit else 0.0,
              "selection_phases": selected.extra["phases"],
              "refit_phases": final.extra["phases"] if cfg.neural.refit else None}
    print_report("train_neural", report)
    return report


if __name__ == "__main__":
    # Not main(): the barrier stage leaves a JVM thread that would keep spark-submit alive
    # after this script ends on a local master; run_job stops Spark and ends the JVM.
    run_job(main)
