"""Generate the synthetic raw event log (config section `synthetic`).

    scripts/submit.sh jobs/generate_events.py --dataset synthetic [--set synthetic.num_events=10000000]

Writes JSON lines partitioned by date to `dataset.source.path` (where
clean_events reads them; the dataset must describe the generator's format) and
a ground-truth manifest (`_manifest.json` there: dirty rows per kind, bots,
expected counts).
"""
from __future__ import annotations

from recsys_spark.ingest import synthetic
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.session import build_spark


def add_args(parser) -> None:
    parser.add_argument("--output", default=None, help="output directory (default: dataset.source.path)")


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv, add_args)
    spark = build_spark(cfg, "generate_events")
    manifest = synthetic.write_events(spark, cfg, output=args.output)
    report = {k: v for k, v in manifest.items() if k != "config"}  # the config is in the manifest file
    print_report("generate_events", report)
    return manifest


if __name__ == "__main__":
    main()
