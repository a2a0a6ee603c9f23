"""Building the SparkSession every job and test uses."""
from __future__ import annotations

import logging
import os
import sys
import traceback
from collections.abc import Callable
from typing import Any, NoReturn

from pyspark import SparkConf, SparkContext
from pyspark.sql import SparkSession

from recsys_spark import jvm_archive
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
        # This process starts the JVM: it maps the environment's class archive (recsys_spark.jvm_archive).
        if opts := jvm_archive.with_archive(os.environ.get("SPARK_SUBMIT_OPTS")):
            os.environ["SPARK_SUBMIT_OPTS"] = opts
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
        # Spark's own advice for HotSpot: a whole-stage method over the JVM's 8,000-byte
        # HugeMethodLimit is never JIT-compiled and runs interpreted. Clean's parse-and-check
        # stage is one (from_json plus every check); capped, Spark splits it instead: that stage
        # 9.4 -> 4.9 s per million lines, clean_events at 10M 228 -> 191 s (docs/cleaning.md, "Cost").
        .config("spark.sql.codegen.hugeMethodLimit", "8000")
    )
    builder = _with_metastore(builder, cfg)
    for key, value in cfg.spark.extra.items():
        builder = builder.config(key, value)
    spark = builder.getOrCreate()
    spark.sparkContext.setLogLevel("WARN")
    _watch_executors(spark.sparkContext, cfg)
    return spark


def _watch_executors(sc: SparkContext, cfg: Config) -> None:
    """On a ``spark://`` master, end a job that has no executor for ``spark.lost_executors_timeout_s``
    (:mod:`recsys_spark.watchdog`) instead of letting it wait forever; the reason says what to check."""
    from recsys_spark import watchdog

    if not sc.master.startswith("spark://"):
        return  # local[N]: the executor is this driver
    watchdog.watch(sc, cfg.spark.lost_executors_timeout_s, hint=_cluster_hint(sc.master, cfg))


def _cluster_hint(master: str, cfg: Config) -> str:
    """What to check when the executors are gone: the local cluster's status and worker log when
    ``master`` is the cluster scripts/cluster.sh runs (submit.sh names its run dir), else the master's UI."""
    from pathlib import Path

    for run_dir in (os.environ.get("RECSYS_CLUSTER_RUN_DIR"), cfg.cluster.run_dir):
        if not run_dir:
            continue
        try:
            url = (Path(run_dir) / "master.url").read_text().strip()
        except OSError:
            continue
        if url == master:
            return f"check `scripts/cluster.sh status` and {Path(run_dir).resolve() / 'worker.log'}"
    return f"check the workers of {master} (the master's web UI) and their logs"


def _with_metastore(builder, cfg: Config):
    """The SQL catalog the published tables are registered in (``catalog.metastore``).

    ``embedded``: a Derby metastore under the warehouse when it is a local path
    (Derby needs one), else under ``cluster.run_dir``; ``hive``: a Hive
    metastore service; ``session``: Spark's in-memory catalog (nothing outlives
    the session). The metastore is opened on first use, by the jobs that register
    tables (evaluate, recommend), not by every job.
    """
    from recsys_spark import io

    cat = cfg.catalog
    if cat.metastore == "session" or SparkContext._active_spark_context is not None:
        return builder  # a running session keeps the catalog it was built with
    builder = builder.config("spark.sql.catalogImplementation", "hive")
    if cat.metastore == "hive":
        return builder.config("spark.hadoop.hive.metastore.uris", cat.hive_metastore_uris)
    root = io.metastore_dir(cfg.warehouse, fallback=f"{cfg.cluster.run_dir}/metastore")
    # Nothing is created here: Derby makes its database (and folders) on first use, by the
    # jobs that register tables, so a job that fails early leaves no trace in the warehouse.
    # Derby's own log goes to the driver's stderr (driver.log in a pipeline run), not to a
    # derby.log in the working directory.
    SparkContext._jvm.java.lang.System.setProperty("derby.stream.error.field", "java.lang.System.err")
    return (builder.config("spark.hadoop.javax.jdo.option.ConnectionURL",
                           f"jdbc:derby:;databaseName={root}/metastore_db;create=true")
            .config("spark.sql.warehouse.dir", f"{root}/spark-warehouse"))


def exit_code_of(exc: BaseException) -> int:
    """The process exit status Python would give for ``exc`` (SystemExit's code; 1 for any other error)."""
    if isinstance(exc, SystemExit):
        if exc.code is None:
            return 0
        if isinstance(exc.code, int):
            return exc.code
        print(exc.code, file=sys.stderr)  # sys.exit("message"): Python prints it and exits 1
        return 1
    return 1


def run_job(main: Callable[[], Any]) -> NoReturn:
    """Run a spark-submit job's ``main()``, then stop Spark and end the driver with the job's status.

    For jobs that run a barrier stage (TorchDistributor). On a local master
    the barrier tasks run in the driver's JVM, and Spark 3.5 leaves a
    non-daemon thread there, ``Barrier task timer for barrier() calls.``
    (the ``java.util.Timer`` of the ``BarrierTaskContext`` object, created
    non-daemon and never cancelled). spark-submit runs the Python driver as a child
    of its JVM: when Python exits 0, ``PythonRunner`` returns from ``main`` and
    the JVM then waits for its non-daemon threads, that is forever; only a
    non-zero status made it call ``System.exit``. Ending Python alone
    (``os._exit``) therefore leaves the JVM hanging. So, after Spark is
    stopped and Python's output flushed, this ends the JVM with
    ``System.exit(status)`` (spark-submit's, hence ``scripts/submit.sh``'s,
    exit status) and then this process with the same status, skipping an
    interpreter teardown nobody waits for. An exception in ``main`` is printed
    and gives status 1, as an uncaught one would.
    """
    try:
        main()
        code = 0
    except BaseException as exc:  # noqa: BLE001 - every way out must end the JVM too
        if not isinstance(exc, SystemExit):
            traceback.print_exc()
        code = exit_code_of(exc)
    end_driver(code)


def end_driver(code: int) -> NoReturn:
    """Stop the active SparkContext, end the JVM with ``System.exit(code)``, then this process (see :func:`run_job`)."""
    sc = SparkContext._active_spark_context
    if sc is not None:
        try:
            sc.stop()
        except Exception:  # noqa: BLE001 - a failed stop must not keep the driver alive
            traceback.print_exc()
            code = code or 1
    sys.stdout.flush()
    sys.stderr.flush()
    jvm = SparkContext._jvm
    if jvm is not None:
        # The JVM dies inside this call, so py4j sees its connection drop: expected, not worth a log line.
        logging.getLogger("py4j").setLevel(logging.CRITICAL)
        try:
            jvm.java.lang.System.exit(code)
        except Exception:  # noqa: BLE001
            pass
    os._exit(code)
