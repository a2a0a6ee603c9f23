"""Build the user/item index, users, items and interactions tables from events_clean.

Known ids keep their index across runs; new ones are appended. Writes the run
report <warehouse>/reports/build_tables/<run_date>.json.

    scripts/submit.sh jobs/build_tables.py --dataset synthetic
"""
from __future__ import annotations

from recsys_spark import io, tables
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.config import run_date
from recsys_spark.session import build_spark


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv)
    spark = build_spark(cfg, "build_tables")
    day = run_date(cfg)
    report = tables.run_build_tables(spark, cfg, run_date=day)
    io.write_json(spark, io.report_path(cfg.warehouse, "build_tables", day), report)
    print_report("build_tables", report)
    return report


if __name__ == "__main__":
    main()
