"""The published output as Spark SQL tables, for downstream readers.

In database ``catalog.database`` (``recsys``):

* ``recommendations``: every published run, partitioned by ``run_date``
  (external: the data stays where the publish protocol put it; a partition is
  registered only for a run with ``_SUCCESS``, and dropped when the run is pruned);
* ``recommendations_latest``: a view of the run ``_latest.json`` names, moved
  each time a run is published;
* ``model_comparison``: every run's metrics per model (``jobs/evaluate.py``).

The metastore is set by ``catalog.metastore`` (:func:`recsys_spark.session.build_spark`):
an embedded Derby database under the warehouse (one JVM at a time), a Hive
metastore, or the session's own catalog. Registering is idempotent and
re-derives the partitions from the files, so a missed registration is repaired
by the next one.
"""
from __future__ import annotations

import os

from pyspark.sql import SparkSession

from recsys_spark import io
from recsys_spark.config import Config
from recsys_spark.schemas import MODEL_COMPARISON, RECOMMENDATIONS, Table

LATEST_VIEW = "recommendations_latest"


def _absolute(path: str) -> str:
    """A table location the metastore can keep: a local path made absolute, a URI as it is."""
    return path if "://" in path else os.path.abspath(path)


def _columns(table: Table) -> str:
    return ", ".join(f"`{f.name}` {f.dataType.simpleString()}" for f in table.schema.fields)


def _sync_partitions(spark: SparkSession, name: str, root: str, dates: list[str]) -> None:
    """One partition per date in ``dates``, each at its folder under ``root``; no other."""
    registered = {row[0].split("=", 1)[1] for row in spark.sql(f"SHOW PARTITIONS {name}").collect()}
    for day in sorted(registered - set(dates)):
        spark.sql(f"ALTER TABLE {name} DROP IF EXISTS PARTITION (run_date='{day}')")
    for day in sorted(dates):
        spec, where = f"PARTITION (run_date='{day}')", f"'{root}/run_date={day}'"
        if day in registered:  # a rerun of the date may have replaced the folder: point at it again
            spark.sql(f"ALTER TABLE {name} {spec} SET LOCATION {where}")
        else:
            spark.sql(f"ALTER TABLE {name} ADD IF NOT EXISTS {spec} LOCATION {where}")
    spark.catalog.refreshTable(name)


def _location(spark: SparkSession, name: str) -> str | None:
    if not spark.catalog.tableExists(name):
        return None
    rows = spark.sql(f"DESCRIBE TABLE EXTENDED {name}").collect()
    return next((r[1] for r in rows if r[0] == "Location"), None)


def _external_table(spark: SparkSession, name: str, table: Table, root: str) -> None:
    """An external table at ``root`` (recreated when it points elsewhere: dropping an external
    table leaves its files alone)."""
    location = _location(spark, name)
    if location is not None and location.rstrip("/").removeprefix("file:") != root.rstrip("/").removeprefix("file:"):
        spark.sql(f"DROP TABLE {name}")
    spark.sql(f"CREATE TABLE IF NOT EXISTS {name} ({_columns(table)}, run_date string) USING parquet "
              f"PARTITIONED BY (run_date) LOCATION '{root}'")


def register_recommendations(spark: SparkSession, cfg: Config, published: list[str], latest: str | None) -> dict:
    """``<db>.recommendations`` with a partition per published run, and the latest view."""
    db, wh = cfg.catalog.database, cfg.warehouse
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    name, root = f"{db}.{RECOMMENDATIONS.name}", _absolute(io.recommendations_root(wh))
    _external_table(spark, name, RECOMMENDATIONS, root)
    _sync_partitions(spark, name, root, published)
    if latest:
        spark.sql(f"CREATE OR REPLACE VIEW {db}.{LATEST_VIEW} AS SELECT * FROM {name} WHERE run_date = '{latest}'")
    return {"database": db, "tables": [name, f"{db}.{LATEST_VIEW}"], "partitions": len(published), "latest": latest}


def register_comparison(spark: SparkSession, cfg: Config) -> dict:
    """``<db>.model_comparison`` with a partition per evaluated run date."""
    db, wh = cfg.catalog.database, cfg.warehouse
    root = _absolute(io.run_dated_root(wh, MODEL_COMPARISON))
    dates = sorted(n.split("=", 1)[1] for n in io.list_dir(spark, root) if n.startswith("run_date=")) \
        if io.path_exists(spark, root) else []
    spark.sql(f"CREATE DATABASE IF NOT EXISTS {db}")
    name = f"{db}.{MODEL_COMPARISON.name}"
    _external_table(spark, name, MODEL_COMPARISON, root)
    _sync_partitions(spark, name, root, dates)
    return {"database": db, "tables": [name], "partitions": len(dates)}


def try_register(what: str, register, *args) -> dict:
    """Run a registration; a catalog that cannot be reached (a Derby metastore another JVM
    holds, a Hive metastore down) is reported, not fatal: the files are published either
    way, and the next registration re-derives the partitions from them."""
    try:
        return register(*args)
    except Exception as exc:  # noqa: BLE001 - the catalog is a convenience over published files
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:300]
        print(f"catalog: {what} not registered ({type(exc).__name__}: {line}); the files are published; "
              f"the next run registers them", flush=True)
        return {"error": line}


__all__ = ["LATEST_VIEW", "register_comparison", "register_recommendations", "try_register"]
