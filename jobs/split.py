"""Split interactions into train / validation / test (protocol from config `split`).

    scripts/submit.sh jobs/split.py --dataset synthetic [--set split.protocol=random]
"""
from __future__ import annotations

from recsys_spark import io, split
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.config import run_date
from recsys_spark.schemas import SPLIT
from recsys_spark.session import build_spark


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv)
    spark = build_spark(cfg, "split")
    wh, conf = cfg.warehouse, cfg.split
    rows, info = split.split_by_protocol(conf, lambda table: io.read_table(spark, wh, table), tables=cfg.tables)
    io.write_table(rows, wh, SPLIT)
    report = {
        "protocol": conf.protocol,
        **info,
        "folds": split.split_summary(io.read_table(spark, wh, SPLIT)),
    }
    io.write_json(spark, io.split_protocol_path(wh), report)
    io.write_json(spark, io.report_path(wh, "split", run_date(cfg)), report)
    print_report("split", report)
    return report


if __name__ == "__main__":
    main()
