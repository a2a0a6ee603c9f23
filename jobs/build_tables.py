"""Build the user/item index, users, items and interactions tables from events_clean.

    scripts/submit.sh jobs/build_tables.py --dataset synthetic
"""
from __future__ import annotations

from pyspark.sql import functions as F

from recsys_spark import io, tables
from recsys_spark.cli import job_main, parse_job_args, print_report
from recsys_spark.config import run_date
from recsys_spark.schemas import (
    EVENTS_CLEAN,
    INTERACTIONS,
    ITEM_ID,
    ITEM_INDEX_TABLE,
    ITEMS,
    USER_ID,
    USER_INDEX_TABLE,
    USERS,
)
from recsys_spark.session import build_spark


def read_item_metadata(spark, items_conf):
    """The optional item file as string columns (CSV or Parquet), or None."""
    if not items_conf.path:
        return None
    if not io.path_exists(spark, items_conf.path):
        raise FileNotFoundError(f"dataset.items.path: item metadata file not found: {items_conf.path}")
    if items_conf.format == "parquet":
        raw = spark.read.parquet(items_conf.path)
    else:
        # RFC 4180 quoting: a title may hold the delimiter or a doubled quote ("Bird, The ""Big"" (1990)").
        raw = spark.read.csv(items_conf.path, header=items_conf.csv_header, sep=items_conf.csv_delimiter,
                             quote='"', escape='"')
    for key in ("item_id", "title", "year", "genres"):
        column = getattr(items_conf, key)
        if column and column not in raw.columns:
            raise ValueError(f"{items_conf.path}: dataset.items.{key} names column '{column}', not in {raw.columns}")
    return tables.parse_item_metadata(
        raw,
        item_id=items_conf.item_id,
        title=items_conf.title,
        year=items_conf.year,
        genres=items_conf.genres,
        genres_delimiter=items_conf.genres_delimiter,
        year_from_title=items_conf.year_from_title,
    )


def previous_index(spark, warehouse, table):
    return io.read_table(spark, warehouse, table) if io.path_exists(spark, io.table_path(warehouse, table)) else None


@job_main
def main(argv=None) -> dict:
    args, cfg = parse_job_args(__doc__, argv)
    spark = build_spark(cfg, "build_tables")
    wh, today = cfg.warehouse, run_date(cfg)

    # events_clean is read by every aggregate below; cache once instead of re-scanning.
    events = io.read_table(spark, wh, EVENTS_CLEAN).cache()
    user_index = tables.update_index(
        tables.first_seen(events, id_col=USER_ID), previous_index(spark, wh, USER_INDEX_TABLE),
        id_col=USER_ID, index_col="user_index", run_date=today,
    )
    item_index = tables.update_index(
        tables.first_seen(events, id_col=ITEM_ID), previous_index(spark, wh, ITEM_INDEX_TABLE),
        id_col=ITEM_ID, index_col="item_index", run_date=today,
    )
    io.write_table(user_index, wh, USER_INDEX_TABLE)
    io.write_table(item_index, wh, ITEM_INDEX_TABLE)
    # Read back what was published so every table below uses the same numbering.
    # (Not cached: the index tables are small, and a cached read of a path that
    # is rewritten on the next run would serve stale rows in a long-lived session.)
    user_index = io.read_table(spark, wh, USER_INDEX_TABLE)
    item_index = io.read_table(spark, wh, ITEM_INDEX_TABLE)

    interactions = tables.filter_min_activity(
        tables.aggregate_interactions(
            events, user_index, item_index,
            event_weights=cfg.tables.event_weights,
            rating_value_as_weight=cfg.tables.rating_value_as_weight,
        ),
        min_user=cfg.tables.min_user_interactions,
        min_item=cfg.tables.min_item_interactions,
    )
    io.write_table(interactions, wh, INTERACTIONS)
    io.write_table(tables.build_users(events, user_index), wh, USERS)
    metadata = read_item_metadata(spark, cfg.dataset.items)
    io.write_table(tables.build_items(events, item_index, metadata), wh, ITEMS)

    written = io.read_table(spark, wh, INTERACTIONS)
    report = {
        "users": io.read_table(spark, wh, USERS).count(),
        "items": io.read_table(spark, wh, ITEMS).count(),
        "interactions": written.count(),
        "interaction_users": written.select("user_index").distinct().count(),
        "interaction_items": written.select("item_index").distinct().count(),
        "user_index_size": user_index.count(),
        "item_index_size": item_index.count(),
        "items_with_metadata": io.read_table(spark, wh, ITEMS).where(F.col("title").isNotNull()).count(),
        "warehouse": wh,
    }
    events.unpersist()
    io.write_json(spark, io.report_path(wh, "build_tables", today), report)
    print_report("build_tables", report)
    return report


if __name__ == "__main__":
    main()
