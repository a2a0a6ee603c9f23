"""The nightly run: every stage, in order, in one driver (see recsys_spark/pipeline.py).

    scripts/pipeline.sh --dataset movielens-100k --warehouse warehouse/ml-100k --set split.protocol=random

Every argument goes to every stage's job, except the run's own: --from STAGE
(rerun from that stage on), --force (rerun every stage; by default a rerun
of the same date skips the stages that succeeded with unchanged inputs, see
recsys_spark/nightly.py) and --backfill START END (the clean stage cleans the
source's date folders in that range again, recsys_spark/ingest/incremental.py). The run itself is set from the environment, as
scripts/pipeline.sh documents: RECSYS_STAGES (which stages), RECSYS_MODELS
(which neural models; empty: none), RECSYS_GENERATE=1 (write the synthetic log
first), RECSYS_LOG_DIR (logs and status.json), RECSYS_ISOLATED=1 (one
spark-submit per stage instead of one driver; run this file with plain Python
then). Exit status: recsys_spark.pipeline's (0 to 4).
"""
from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from recsys_spark import nightly, pipeline
from recsys_spark.cli import iso_date
from recsys_spark.models import registry
from recsys_spark.session import end_driver

JOBS = Path(__file__).resolve().parent
REPO = JOBS.parent


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    own = argparse.ArgumentParser(add_help=False)
    own.add_argument("--from", dest="from_stage", default=None)
    own.add_argument("--force", action="store_true")
    own.add_argument("--backfill", nargs=2, metavar=("START", "END"), type=iso_date, default=None)
    opts, job_args = own.parse_known_args(argv)
    isolated = os.environ.get("RECSYS_ISOLATED", "0") == "1"
    models = os.environ.get("RECSYS_MODELS")
    neural = registry.names() if models is None else models.replace(",", " ").split()
    log_dir = Path(os.environ.get("RECSYS_LOG_DIR", "run/pipeline-logs"))
    mode = "isolated" if isolated else "one driver"
    wanted = os.environ.get("RECSYS_STAGES")
    try:
        stages = pipeline.selected(pipeline.plan(neural, generate=os.environ.get("RECSYS_GENERATE", "0") == "1",
                                                 backfill=tuple(opts.backfill) if opts.backfill else None), wanted)
        if opts.from_stage and opts.from_stage not in {s.key for s in stages}:
            raise ValueError(f"--from {opts.from_stage} is no stage of this run "
                             f"(its stages: {' '.join(dict.fromkeys(s.key for s in stages))})")
    except ValueError as exc:
        return pipeline.refuse(str(exc), log_dir=log_dir, mode=mode).exit_code
    job_args, resume, lock = nightly.prepare(job_args, from_stage=opts.from_stage, force=opts.force)
    if lock is not None:
        try:
            lock.acquire()
        except nightly.LockHeld as exc:
            return pipeline.refuse(str(exc), log_dir=log_dir, mode=mode, code=pipeline.EXIT_LOCKED).exit_code
        if lock.replaced:
            print(f"pipeline: replaced a stale lock (its process is gone): {lock.replaced}", flush=True)
    runner = (pipeline.isolated_runner(JOBS, submit=REPO / "scripts" / "submit.sh", cwd=REPO) if isolated
              else pipeline.in_driver_runner(JOBS))
    try:
        # In one driver, the night's neural models share one launch of the training processes.
        status = pipeline.run(stages, job_args, runner, log_dir=log_dir, mode=mode, resume=resume,
                              share_launch=not isolated)
    finally:
        if lock is not None:
            lock.release()
    return status.exit_code


if __name__ == "__main__":
    code = main()
    if os.environ.get("RECSYS_ISOLATED", "0") == "1":
        sys.exit(code)
    # One driver ran barrier stages (TorchDistributor): end Spark and the JVM
    # explicitly, or a local master's leftover barrier timer keeps it alive.
    end_driver(code)
