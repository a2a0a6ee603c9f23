"""A class-data-sharing (CDS) archive of Spark's JVM classes: every JVM starts about 2 s sooner.

Each JVM of a run (the driver of every ``spark-submit``, the local cluster's
master, worker and executors) loads and verifies the same several thousand
classes from Spark's jars before it does any work. Java's own facility for
that, application class-data sharing, dumps those classes once into an
archive that later JVMs map instead of loading them again
(``-XX:ArchiveClassesAtExit`` to write it, ``-XX:SharedArchiveFile`` to use it).

Measured here (2 cores, JDK 17): a Python process that starts a JVM, runs one
job and writes one Parquet file took 7.7 s without the archive and 5.4 s with
it; a cold ``run_clean`` of the demo log 27.5-27.7 against 24.0-25.4 s
(docs/benchmarks.md, "JVM start-up").

``scripts/setup.sh`` builds the archive into the virtual environment
(``.venv/spark-cds.jsa``) by running :func:`workload` under ``spark-submit``,
and builds it again when the environment or the JDK changes. The archive is
an optimisation only: the JVM checks that it matches its own build and class
path and otherwise runs without it, silently (the options below turn its CDS
warnings off), and without the file nothing is passed at all.
"""
from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

# Beside the interpreter that runs the jobs: one archive per environment (its jars, its JDK).
DEFAULT_ARCHIVE = Path(sys.prefix) / "spark-cds.jsa"
ARCHIVE_ENV = "RECSYS_JVM_ARCHIVE"  # another path (a missing one: no archive)
# An archive of another JDK build or class path is not used; the JVM would say so on stdout.
_QUIET = "-Xlog:cds=off -Xlog:cds+dynamic=off"


def archive_path() -> Path:
    """``$RECSYS_JVM_ARCHIVE``, else ``spark-cds.jsa`` in this interpreter's environment."""
    return Path(os.environ.get(ARCHIVE_ENV) or DEFAULT_ARCHIVE)


def java_options(archive: Path | None = None) -> str:
    """JVM options that use ``archive`` (default: :func:`archive_path`); empty when there is none."""
    archive = archive or archive_path()
    return f"-XX:SharedArchiveFile={archive} {_QUIET}" if archive.is_file() else ""


def with_archive(options: str | None, archive: Path | None = None) -> str:
    """``options`` (a JVM option string, e.g. ``SPARK_SUBMIT_OPTS``) plus the archive's, unless
    they already name an archive (the caller's choice wins)."""
    options = (options or "").strip()
    if "SharedArchiveFile" in options or "ArchiveClassesAtExit" in options:
        return options
    return " ".join(o for o in (options, java_options(archive)) if o)


def workload() -> None:
    """What a night's JVM loads early: a session, JSON text parsed, a shuffle, a window,
    a join, partitioned Parquet written and read, an ALS fit and an Arrow transfer."""
    from pyspark.ml.recommendation import ALS
    from pyspark.sql import SparkSession, Window
    from pyspark.sql import functions as F

    spark = SparkSession.builder.appName("recsys-spark-jvm-archive").getOrCreate()
    spark.conf.set("spark.sql.shuffle.partitions", "2")
    with tempfile.TemporaryDirectory() as tmp:
        lines = spark.range(2000).select(F.to_json(F.struct(
            (F.col("id") % 50).cast("string").alias("u"), (F.col("id") % 40).cast("string").alias("i"),
            F.lit("2026-01-05T10:00:00Z").alias("t"))).alias("value"))
        lines.write.text(f"{tmp}/raw")
        parsed = spark.read.text(f"{tmp}/raw").select(F.from_json("value", "u string, i string, t string").alias("j"))
        events = parsed.select(F.col("j.u").cast("int").alias("user"), F.col("j.i").cast("int").alias("item"),
                               F.to_timestamp("j.t").alias("time"), F.rand(7).cast("float").alias("rating"))
        ranked = events.withColumn("n", F.row_number().over(Window.partitionBy("user").orderBy("time", "item")))
        counts = ranked.groupBy("item").agg(F.count(F.lit(1)).alias("c"))
        joined = ranked.join(F.broadcast(counts), "item").withColumn("day", F.to_date("time"))
        joined.write.partitionBy("day").parquet(f"{tmp}/events")
        table = spark.read.parquet(f"{tmp}/events").cache()
        table.count()
        model = ALS(userCol="user", itemCol="item", ratingCol="rating", rank=4, maxIter=2, implicitPrefs=True,
                    seed=1).fit(table)
        model.recommendForAllUsers(3).toPandas()
        table.unpersist()
    spark.stop()


def build(archive: Path | None = None, *, timeout_s: int = 600) -> bool:
    """Write ``archive`` (default: :func:`archive_path`), replacing it only when the new one is
    complete. False when the JVM could not write one (for example a JDK without a base CDS
    archive): JVMs then start without it."""
    archive = archive or archive_path()
    bin_dir = Path(sys.executable).parent
    tmp = archive.with_name(f"{archive.name}.tmp{os.getpid()}")
    tmp.unlink(missing_ok=True)
    env = {**os.environ, "PYSPARK_PYTHON": sys.executable, "PYSPARK_DRIVER_PYTHON": sys.executable,
           "SPARK_LOCAL_IP": os.environ.get("SPARK_LOCAL_IP", "127.0.0.1")}
    env.pop("SPARK_SUBMIT_OPTS", None)  # an archive in use cannot be written
    cmd = [str(bin_dir / "spark-submit"), "--master", "local[2]", "--conf", "spark.ui.enabled=false",
           "--driver-java-options", f"-XX:ArchiveClassesAtExit={tmp} {_QUIET}", __file__, "workload"]
    try:
        # spark-submit is the driver JVM itself: when it has exited, the archive is written.
        done = subprocess.run(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                              timeout=timeout_s)
    except (OSError, subprocess.TimeoutExpired) as exc:
        print(f"jvm_archive: not built: {exc}", file=sys.stderr)
        tmp.unlink(missing_ok=True)
        return False
    if done.returncode != 0 or not tmp.is_file() or tmp.stat().st_size == 0:
        tail = done.stderr.strip().splitlines()[-3:]
        print(f"jvm_archive: not built (exit {done.returncode}): {' | '.join(tail)}", file=sys.stderr)
        tmp.unlink(missing_ok=True)
        return False
    os.replace(tmp, archive)
    return True


if __name__ == "__main__":
    if sys.argv[1:] == ["workload"]:
        workload()
    elif sys.argv[1:2] == ["build"]:
        sys.exit(0 if build(Path(sys.argv[2]) if len(sys.argv) > 2 else None) else 1)
    else:
        sys.exit("usage: python -m recsys_spark.jvm_archive build [PATH]")
