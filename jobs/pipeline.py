"""The nightly run: every stage, in order, in one driver (see recsys_spark/pipeline.py).

    scripts/pipeline.sh --dataset movielens-100k --warehouse warehouse/ml-100k --set split.protocol=random

Every argument goes to every stage's job. The run itself is set from the
environment, as scripts/pipeline.sh documents: RECSYS_STAGES (which stages),
RECSYS_MODELS (which neural models; empty: none), RECSYS_GENERATE=1 (write the
synthetic log first), RECSYS_LOG_DIR (logs and status.json), RECSYS_ISOLATED=1
(one spark-submit per stage instead of one driver; run this file with plain
Python then). Exit status: recsys_spark.pipeline's (0, 1, 2, 3).
"""
from __future__ import annotations

import gc
import importlib.util
import os
import subprocess
import sys
import traceback
from contextlib import redirect_stderr, redirect_stdout
from pathlib import Path

from recsys_spark import pipeline
from recsys_spark.session import end_driver, exit_code_of

JOBS = Path(__file__).resolve().parent
REPO = JOBS.parent


class _Capture:
    """A stage's stdout or stderr: written to its log, stderr's text also kept for the failure reason."""

    def __init__(self, log, keep: list[str] | None = None):
        self.log, self.keep = log, keep

    def write(self, text: str) -> int:
        if self.keep is not None:
            self.keep.append(text)
        return self.log.write(text)

    def flush(self) -> None:
        self.log.flush()


def run_in_driver(stage: pipeline.Stage, argv: list[str], log: Path) -> tuple[int, str | None]:
    """The stage's job ``main(argv)`` in this process; a raised error is the stage's failure, not the run's."""
    spec = importlib.util.spec_from_file_location(f"recsys_job_{stage.job}", JOBS / f"{stage.job}.py")
    job = importlib.util.module_from_spec(spec)
    stderr_text: list[str] = []
    with open(log, "w", encoding="utf-8") as f, redirect_stdout(_Capture(f)), \
            redirect_stderr(_Capture(f, stderr_text)):
        try:
            spec.loader.exec_module(job)
            job.main(argv)
            code, reason = 0, None
        except KeyboardInterrupt:
            raise
        except SystemExit as exc:
            code = exit_code_of(exc)
            reason = pipeline.reason_from_log("".join(stderr_text))
        except BaseException as exc:  # noqa: BLE001 - one stage's error is recorded; the run goes on
            traceback.print_exc()
            code, reason = 1, pipeline.reason_from_exception(exc)
        finally:
            _between_stages()
    return code, reason


def _between_stages() -> None:
    """What one stage cached or broadcast is not the next one's: a stage that failed half-way
    does not leave its cached tables holding executor memory for the rest of the night."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is not None:
        spark.catalog.clearCache()
    gc.collect()


def run_isolated(stage: pipeline.Stage, argv: list[str], log: Path) -> tuple[int, str | None]:
    """The stage as its own ``scripts/submit.sh`` (its own JVM and Spark application)."""
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.call([str(REPO / "scripts" / "submit.sh"), str(JOBS / f"{stage.job}.py"), *argv],
                               cwd=REPO, stdout=f, stderr=subprocess.STDOUT)
    return code, (None if code == 0 else pipeline.reason_from_log(log.read_text(encoding="utf-8", errors="replace")))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    isolated = os.environ.get("RECSYS_ISOLATED", "0") == "1"
    models = os.environ.get("RECSYS_MODELS")
    if models is None:
        from recsys_spark.models import registry

        neural = registry.names()
    else:
        neural = models.replace(",", " ").split()
    stages = pipeline.selected(pipeline.plan(neural, generate=os.environ.get("RECSYS_GENERATE", "0") == "1"),
                               os.environ.get("RECSYS_STAGES"))
    status = pipeline.run(stages, argv, run_isolated if isolated else run_in_driver,
                          log_dir=Path(os.environ.get("RECSYS_LOG_DIR", "run/pipeline-logs")),
                          mode="isolated" if isolated else "one driver")
    return status.exit_code


if __name__ == "__main__":
    code = main()
    if os.environ.get("RECSYS_ISOLATED", "0") == "1":
        sys.exit(code)
    # One driver ran barrier stages (TorchDistributor): end Spark and the JVM
    # explicitly, or a local master's leftover barrier timer keeps it alive.
    end_driver(code)
