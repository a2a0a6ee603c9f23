"""The publish protocol: what readers of ``recommendations/`` can rely on.

Write to a staging directory, read it back and validate it, gate it, add
``_manifest.json`` and ``_SUCCESS``, rename it into
``recommendations/run_date=D`` (``io.publish_directory``: a reader sees the
old run or the new one, never a mix), then replace ``_latest.json``
atomically and delete runs beyond ``recommend.keep_runs``.
"""
from __future__ import annotations

import datetime as dt
import subprocess
import uuid
from pathlib import Path

from pyspark.sql import DataFrame, SparkSession

from recsys_spark import io
from recsys_spark.config import RecommendConf
from recsys_spark.schemas import RECOMMENDATIONS, SCHEMA_VERSION
from recsys_spark.serve.checks import Checks, output_counts, quality_gate, validate
from recsys_spark.serve.errors import QualityGateRefused, ValidationFailed

MANIFEST = "_manifest.json"

SUCCESS = "_SUCCESS"

LATEST = "_latest.json"

STAGING = "_staging"
PRUNING = "_pruning"  # runs being deleted: renamed here first

RUN_PREFIX = "run_date="


def published_runs(spark: SparkSession, warehouse: str) -> list[str]:
    """Run dates with a ``_SUCCESS`` marker, oldest first."""
    root = io.recommendations_root(warehouse)
    dates = []
    for name in io.list_dir(spark, root):
        if name.startswith(RUN_PREFIX) and "." not in name:
            day = name[len(RUN_PREFIX):]
            if io.path_exists(spark, f"{root}/{name}/{SUCCESS}"):
                dates.append(day)
    return sorted(dates)


def read_latest(spark: SparkSession, warehouse: str) -> dict | None:
    return io.read_json_if_exists(spark, f"{io.recommendations_root(warehouse)}/{LATEST}")


def latest_manifest(spark: SparkSession, warehouse: str) -> dict | None:
    """The manifest of the run ``_latest.json`` names, or None before the first publish."""
    latest = read_latest(spark, warehouse)
    if not latest:
        return None
    return io.read_json_if_exists(spark, f"{io.recommendations_run_path(warehouse, latest['run_date'])}/{MANIFEST}")


def write_latest(spark: SparkSession, warehouse: str) -> dict | None:
    """Point ``_latest.json`` at the newest published run: written aside, then renamed over the old one."""
    runs = published_runs(spark, warehouse)
    if not runs:
        return None
    root = io.recommendations_root(warehouse)
    day = runs[-1]
    manifest = io.read_json(spark, f"{io.recommendations_run_path(warehouse, day)}/{MANIFEST}")
    pointer = {"run_date": day, "path": io.recommendations_run_path(warehouse, day), "model": manifest.get("model"),
               "published_at": manifest.get("created_at")}
    tmp = f"{root}/.{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
    io.write_json(spark, tmp, pointer)
    try:
        io.replace_file(spark, tmp, f"{root}/{LATEST}")
    finally:
        io.delete_path(spark, tmp)
    return pointer


def prune_runs(spark: SparkSession, warehouse: str, *, keep: int, protect: str | None = None) -> list[str]:
    """Delete published runs beyond the ``keep`` newest (never ``protect``, never the latest); returns the dates.

    A run is first renamed under ``_pruning/`` (hidden from readers, one atomic
    step) and deleted there, so a process killed while deleting leaves no
    half-deleted run among the published ones; the next prune finishes the job.
    Directories without ``_SUCCESS`` are not runs this protocol published; they are left alone.
    """
    root = io.recommendations_root(warehouse)
    trash = f"{root}/{PRUNING}"
    for name in io.list_dir(spark, trash) if io.path_exists(spark, trash) else []:
        io.delete_path(spark, f"{trash}/{name}")  # left by a prune that did not finish
    dates = sorted(published_runs(spark, warehouse), reverse=True)
    latest = (read_latest(spark, warehouse) or {}).get("run_date")
    deleted = []
    for day in dates[keep:]:
        if day in (protect, latest):
            continue
        aside = f"{trash}/{RUN_PREFIX}{day}-{uuid.uuid4().hex[:8]}"
        io.rename_path(spark, io.recommendations_run_path(warehouse, day), aside)
        io.delete_path(spark, aside)
        deleted.append(day)
    return deleted


def code_version() -> str:
    """``git describe`` of the checkout the package runs from, else the package version."""
    from recsys_spark import __version__

    repo = Path(__file__).resolve().parents[1]
    if repo.is_dir():
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=repo,
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return f"git {out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"recsys_spark {__version__}"


def write_manifest(spark: SparkSession, directory: str, manifest: dict) -> None:
    io.write_json(spark, f"{directory}/{MANIFEST}", manifest)


def publish(
    spark: SparkSession,
    warehouse: str,
    run_date: str,
    recs: DataFrame,
    checks: Checks,
    *,
    model: str,
    metric_name: str,
    metric_value: float | None,
    n_items: int,
    conf: RecommendConf,
    manifest_extra: dict,
    force: bool = False,
) -> dict:
    """Stage, validate, gate and atomically publish ``recs`` as ``recommendations/run_date=<run_date>``.

    Raises:
        ValidationFailed: the staged output breaks a rule (never overridable).
        QualityGateRefused: the gate failed and ``force`` is off.

    Nothing under the run's final path changes unless every step succeeds; the
    staging directory is removed either way.
    """
    root = io.recommendations_root(warehouse)
    final = io.recommendations_run_path(warehouse, run_date)
    staging = f"{root}/{STAGING}/{RUN_PREFIX}{run_date}-{uuid.uuid4().hex[:8]}"
    try:
        io.write_table(recs, warehouse, RECOMMENDATIONS, path=staging)
        # Spark's own marker says "files committed"; ours says "validated and published".
        io.delete_path(spark, f"{staging}/{SUCCESS}")
        staged = io.read_table(spark, warehouse, RECOMMENDATIONS, path=staging)
        problems = validate(staged, checks.expected, model=model, seen=checks.seen, excluded=checks.excluded,
                            reranked=checks.reranked)
        if problems:
            raise ValidationFailed(problems)
        counts = output_counts(staged, n_items)
        previous = latest_manifest(spark, warehouse)
        gate = quality_gate(metric_name=metric_name, metric_value=metric_value, previous=previous,
                            coverage=counts["coverage"], max_metric_drop=conf.max_metric_drop,
                            min_coverage=conf.min_coverage)
        if gate["failures"] and not force:
            raise QualityGateRefused(gate["failures"])
        manifest = {
            "run_date": run_date,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "schema_version": SCHEMA_VERSION,
            "model": model,
            "model_metric": {"name": metric_name, "value": metric_value},
            "counts": counts,
            "reranked": checks.reranked,
            "quality_gate": gate,
            "forced": bool(force),
            "code_version": code_version(),
            **manifest_extra,
        }
        write_manifest(spark, staging, manifest)
        io.write_text(spark, f"{staging}/{SUCCESS}", "")
        io.publish_directory(spark, staging, final)
    finally:
        io.delete_path(spark, staging)
    manifest["latest"] = write_latest(spark, warehouse)
    manifest["deleted_runs"] = prune_runs(spark, warehouse, keep=conf.keep_runs, protect=run_date)
    return manifest
