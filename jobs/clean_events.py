"""Validate, normalise and deduplicate the raw events of `dataset.source`.

    scripts/submit.sh jobs/clean_events.py --dataset synthetic [--reference-time 2026-03-02T00:00:00Z]
        [--backfill 2026-01-05 2026-01-07]

Writes `events_clean` (by event_date), `quarantine` (by reason),
`quarantined_files` (source files it could not read, left out of the run) and
the run report `<warehouse>/reports/clean_events/<run_id>.json`. With
`clean.incremental` (the default) and a source in date=YYYY-MM-DD folders,
only the folders new or changed since the last run are cleaned, and
`--backfill START END` cleans the folders in that range again
(recsys_spark/ingest/incremental.py); the report's `mode` says which ran. Exits 2 (one
line on stderr) when the source is missing or the config is bad; fails (exit
1, one line on stderr) when the source holds no readable file or does not
match its config, when a file cannot be read and `clean.on_unreadable_file` is
`fail`, and when input rows != clean + duplicates + quarantined.
"""
from __future__ import annotations

import sys

from recsys_spark.ingest import cleaning, incremental, sources
from recsys_spark.cli import iso_date, job_main, parse_job_args, print_report
from recsys_spark.session import build_spark


def add_args(parser) -> None:
    parser.add_argument(
        "--reference-time",
        default=None,
        help="ISO time that counts as 'now' for the future-timestamp check (default: the current time)",
    )
    parser.add_argument("--run-id", default=None, help="names the report (default: UTC time + random suffix)")
    parser.add_argument("--backfill", nargs=2, metavar=("START", "END"), type=iso_date, default=None,
                        help="clean the source's date partitions from START to END (inclusive) again")


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv, add_args)
    spark = build_spark(cfg, "clean_events")
    try:
        report = incremental.run(spark, cfg, reference_time=args.reference_time, run_id=args.run_id,
                                 backfill=tuple(args.backfill) if args.backfill else None)
    except (sources.SourceError, cleaning.ReconciliationError) as exc:
        print(f"clean_events: {exc}", file=sys.stderr)
        raise SystemExit(1) from None
    print_report("clean_events", report)
    return report


if __name__ == "__main__":
    main()
