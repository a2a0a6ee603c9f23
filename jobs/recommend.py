"""Publish the top-N recommendations per user for downstream readers.

Serves the model named by `recommend.model` (null / best: the best on validation
`evaluation.primary_metric`) to every user of the user_index table, the popularity
fallback chosen on validation's cold users (all time or a recent window:
`popularity.fallback_windows_days`) to users with too little history, and publishes
<warehouse>/recommendations/run_date=D/ (+ _manifest.json, _SUCCESS) atomically,
then <warehouse>/recommendations/_latest.json. See docs/tables.md#recommendations.

    scripts/submit.sh jobs/recommend.py --dataset synthetic [--force] [--set recommend.model=als]

Exit status: 0 published; 2 bad config or no such model to serve; 3 refused by the quality gate (metric
drop or coverage; --force publishes anyway and says so in the manifest);
4 the output failed validation (never published, --force or not).
"""
from __future__ import annotations

import sys

from recsys_spark.serve import errors, recommend
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.config import run_date
from recsys_spark.session import build_spark

EXIT_REFUSED = 3
EXIT_INVALID = 4


@job_main
def main(argv=None) -> dict:
    def add_args(parser):
        parser.add_argument("--force", action="store_true",
                            help="publish even when the quality gate fails (recorded in the manifest)")
        parser.add_argument("--models", default=None,
                            help="comma-separated models the serving model is chosen from (default: every model "
                                 "folder; scripts/pipeline.sh passes the models this run trained)")

    args, cfg = parse_job_args(__doc__, argv, add_args)
    spark = build_spark(cfg, "recommend")
    day = run_date(cfg)
    try:
        names = [m.strip() for m in args.models.split(",") if m.strip()] if args.models else None
        manifest = recommend.run(spark, cfg, run_date=day, force=args.force, model_names=names)
    except errors.QualityGateRefused as exc:
        print(f"recommend: NOT published for {day}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_REFUSED) from None
    except errors.ValidationFailed as exc:
        print(f"recommend: NOT published for {day}: {exc}", file=sys.stderr)
        raise SystemExit(EXIT_INVALID) from None
    except errors.RecommendError as exc:  # no such model, none to choose from: a setting to fix
        print(f"recommend: NOT published for {day}: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    report = {k: manifest[k] for k in ("run_date", "model", "model_metric", "counts", "forced", "latest",
                                        "deleted_runs", "code_version", "catalog")}
    report["fallback_model"] = manifest["fallback_model"]
    report["gate_failures_overridden"] = manifest["quality_gate"]["failures"] if manifest["forced"] else []
    print_report("recommend", report)
    return manifest


if __name__ == "__main__":
    main()
