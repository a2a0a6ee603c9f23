"""Evaluate every model of the run on the same held-out test fold and compare them.

Reads <warehouse>/eval_recs/<model>/test for each model (all found, or --models),
computes full-ranking metrics against the split's warm test users, and writes
<warehouse>/metrics/run_date=D/<model>.json plus comparison.csv / comparison.md.
Cold-start test users (no training history) are evaluated separately with the
popularity fallback every model serves them, chosen on validation's cold users
among all-time and recent popularity, each candidate reported (_cold_start.json).

    scripts/submit.sh jobs/evaluate.py --dataset synthetic
"""
from __future__ import annotations

from recsys_spark import catalog, io
from recsys_spark.cli import job_main, parse_job_args
from recsys_spark.config import run_date
from recsys_spark.evaluate import folds, ranking
from recsys_spark.schemas import MODEL_COMPARISON, SPLIT
from recsys_spark.session import build_spark


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv, lambda p: p.add_argument(
        "--models", default=None, help="comma-separated models (default: every model with test recs)"))
    spark = build_spark(cfg, "evaluate")
    wh, day = cfg.warehouse, run_date(cfg)
    models = args.models.split(",") if args.models else [
        m for m in io.list_dir(spark, io.eval_recs_root(wh)) if not io.is_hidden(m)]
    if not models:
        raise FileNotFoundError(f"no model has test recommendations under {io.eval_recs_root(wh)}; train one first")
    split_rows = io.read_table(spark, wh, SPLIT).cache()
    _, n_items = io.catalog_sizes(spark, wh)
    protocol = io.read_json(spark, io.split_protocol_path(wh))
    results = folds.test_fold_results(spark, cfg, split_rows, models, n_items=n_items, run_date=day, protocol=protocol)
    cold = {**folds.cold_start_report(split_rows, n_items, cfg), "made_on": folds.fallback_made_on(spark, cfg)}
    split_rows.unpersist()

    header, rows = ranking.comparison_rows(results, cfg.evaluation.ks)
    markdown = ranking.to_markdown(header, rows)
    for result in results:
        io.write_json(spark, io.metrics_path(wh, day, f"{result['model']}.json"), result)
    io.write_json(spark, io.metrics_path(wh, day, folds.COLD_START_FILE), cold)
    io.write_text(spark, io.metrics_path(wh, day, "comparison.csv"), ranking.to_csv(header, rows))
    io.write_text(spark, io.metrics_path(wh, day, "comparison.md"), markdown)
    io.write_table(folds.comparison_table(spark, results), wh, MODEL_COMPARISON,
                   path=io.table_path(wh, MODEL_COMPARISON, run_date=day))
    registered = catalog.try_register("model_comparison", catalog.register_comparison, spark, cfg)
    out_dir = io.metrics_dir(wh, day)
    print(f"== evaluate: test fold, {protocol.get('protocol')} split, {len(results)} models -> {out_dir}")
    print(markdown)
    print("cold start:", cold.get("test_segments"))
    return {"results": results, "cold_start": cold, "metrics_dir": out_dir, "catalog": registered}


if __name__ == "__main__":
    main()
