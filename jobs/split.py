"""Split interactions into train / validation / test (protocol from config `split`).

    scripts/submit.sh jobs/split.py --dataset synthetic [--set split.protocol=random]
"""
from __future__ import annotations

from recsys_spark import io, split
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.config import run_date
from recsys_spark.schemas import EVENTS_CLEAN, INTERACTIONS, ITEM_INDEX_TABLE, SPLIT, USER_INDEX_TABLE
from recsys_spark.session import build_spark


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv)
    spark = build_spark(cfg, "split")
    wh, conf = cfg.warehouse, cfg.split

    if conf.protocol == "temporal":
        rows, info = split.temporal_split(
            io.read_table(spark, wh, EVENTS_CLEAN),
            io.read_table(spark, wh, USER_INDEX_TABLE),
            io.read_table(spark, wh, ITEM_INDEX_TABLE),
            test_fraction=conf.test_fraction,
            validation_fraction=conf.validation_fraction,
            event_weights=cfg.tables.event_weights,
            rating_value_as_weight=cfg.tables.rating_value_as_weight,
        )
    elif conf.protocol == "leave_last_n":
        rows, info = split.leave_last_n_split(io.read_table(spark, wh, INTERACTIONS), n=conf.leave_n)
    else:
        rows, info = split.random_split(
            io.read_table(spark, wh, INTERACTIONS),
            train_ratio=conf.train_ratio,
            validation_ratio=conf.validation_ratio,
            seed=conf.seed,
        )
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
