"""Building the SparkSession every job and test uses."""
from __future__ import annotations

import os
import sys

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from recsys_spark.config import Config


def build_spark(cfg: Config, app_name: str | None = None) -> SparkSession:
    """A SparkSession configured from ``cfg.spark``.

    The master comes from spark-submit when it gave one, else from config, so
    the same job runs on ``local[2]``, the local standalone cluster or any other
    master unchanged. Driver memory (``spark.driver_memory``) cannot change once
    the JVM is up: ``scripts/submit.sh`` passes it to spark-submit, and when this
    process is plain Python (tests, benchmarks) it is set here, before the JVM starts.
    """
    if "PYSPARK_GATEWAY_PORT" not in os.environ and SparkContext._gateway is None:
        os.environ.setdefault("PYSPARK_SUBMIT_ARGS", f"--driver-memory {cfg.spark.driver_memory} pyspark-shell")
        # Executors run this interpreter (the one with torch and the pins), not whatever
        # "python3" is on PATH; submit.sh sets it for spark-submit runs.
        os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # Connects to spark-submit's JVM, or starts one when run as plain Python.
    SparkContext._ensure_initialized()
    builder = SparkSession.builder.appName(app_name or cfg.spark.app_name)
    if not SparkConf().contains("spark.master"):
        builder = builder.master(cfg.spark.master)
    builder = (
        builder.config("spark.sql.shuffle.partitions", str(cfg.spark.shuffle_partitions))
        # Event times are stored and compared in UTC whatever the host's zone.
        .config("spark.sql.session.timeZone", "UTC")
        .config("spark.ui.showConsoleProgress", "false")
    )
    for key, value in cfg.spark.extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    return spark
