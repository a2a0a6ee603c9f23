"""The nightly run's plan, its stage bookkeeping, its status file and its exit code.

``jobs/pipeline.py`` (through ``scripts/pipeline.sh`` and ``scripts/demo.sh``)
runs the stages in order, each one a job's ``main(argv)``:

* in one driver (the default): one ``spark-submit`` for the whole run, so the
  JVM, the Spark application, the executors and the Python imports are paid
  once, not once per stage. A stage's exception is caught and recorded like a
  failed ``spark-submit`` would be; what the memory budgets
  (:mod:`recsys_spark.memory`) refuse never reaches the JVM.
* isolated (``--isolated``): one ``scripts/submit.sh`` per stage, each in its
  own JVM, for a night where a stage that kills its process (a native crash)
  must not take the others with it. Slower by a JVM and application start per stage.

Either way (:func:`in_driver_runner`, :func:`isolated_runner`) the plan, the
rules (which stage is required, which models evaluate and recommend may use)
and the outcome are the ones below.

Exit status (docs/operations.md, "Exit codes"):

* 0 every stage succeeded and recommendations were published
* 1 nothing was published (a required stage failed, or the cluster lost every executor:
  :mod:`recsys_spark.watchdog`)
* 2 a usage or config error (a job said so with its own exit code 2); nothing published
* 3 recommendations were published, but some model (or the evaluation) failed
* 4 another run holds the warehouse's lock; nothing run

With a :class:`Resume` (what ``jobs/pipeline.py`` passes), each stage's
result goes into the date's run manifest, and a rerun of the same date skips
the stages that succeeded with unchanged inputs (:mod:`recsys_spark.nightly`).
"""
from __future__ import annotations

import contextlib
import functools
import gc
import importlib.util
import json
import os
import re
import subprocess
import sys
import time
import traceback
from contextlib import redirect_stderr, redirect_stdout
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TextIO

from recsys_spark.models import registry
from recsys_spark.session import exit_code_of
from recsys_spark.train import shared_launch
from recsys_spark.watchdog import ExecutorsLostError

EXIT_OK, EXIT_NOTHING_PUBLISHED, EXIT_CONFIG, EXIT_PARTIAL, EXIT_LOCKED = 0, 1, 2, 3, 4


@dataclass(frozen=True)
class Stage:
    """One step of the run: a job and its own arguments.

    Attributes:
        name: what the status calls it (``train_neural neumf``); its first word
            is what ``RECSYS_STAGES`` selects.
        job: the job file's stem under ``jobs/``.
        args: the job's own arguments, before the run's shared ones.
        required: a failure ends the run with nothing published.
        models: the models this stage trains (what evaluate and recommend may use).
        takes_models: evaluate and recommend: given ``--models`` of this run's trained models.
    """

    name: str
    job: str
    args: tuple[str, ...] = ()
    required: bool = False
    models: tuple[str, ...] = ()
    takes_models: bool = False

    @property
    def key(self) -> str:
        return self.name.split()[0]


def plan(neural_models: Sequence[str], *, generate: bool = False,
         backfill: tuple[str, str] | None = None) -> list[Stage]:
    """The stages of a run, in order: the data stages, a ``train_<family>`` stage per family
    registered in :mod:`recsys_spark.models.registry` (in registration order: popularity, EASE,
    ALS, then any added), a ``train_neural <model>`` stage per model of ``neural_models``,
    then evaluate and recommend. ``backfill`` (START, END) goes to the clean stage only."""
    stages = [Stage("generate_events", "generate_events", required=True)] if generate else []
    stages += [
        Stage("clean_events", "clean_events", ("--backfill", *backfill) if backfill else (), required=True),
        Stage("build_tables", "build_tables", required=True),
        Stage("split", "split", required=True),
    ]
    stages += [Stage(f.stage, f.job, f.args, required=f.required, models=f.models) for f in registry.families()]
    stages += [Stage(f"train_neural {m}", "train_neural", ("--model", m), models=(m,)) for m in neural_models]
    stages += [
        Stage("evaluate", "evaluate", takes_models=True),
        # Required: a run that publishes nothing has failed, whatever else trained.
        Stage("recommend", "recommend", required=True, takes_models=True),
    ]
    return stages


def selected(stages: Sequence[Stage], wanted: str | None) -> list[Stage]:
    """The stages ``RECSYS_STAGES`` names (space-separated first words), in plan order; all when unset or blank.

    Raises:
        ValueError: a name that is no stage of this plan (a typo would otherwise
            leave its stage out silently, and the run would report success).
    """
    keys = set((wanted or "").split())
    plan_keys = list(dict.fromkeys(s.key for s in stages))
    unknown = sorted(keys - set(plan_keys))
    if unknown:
        raise ValueError(f"RECSYS_STAGES names no stage of this run: {' '.join(unknown)} "
                         f"(its stages: {' '.join(plan_keys)})")
    return [s for s in stages if not keys or s.key in keys]


@dataclass
class StageResult:
    stage: str
    status: str  # ok | failed | skipped (done earlier for this date, inputs unchanged)
    seconds: int
    started_at: int
    ended_at: int
    log: str
    reason: str | None = None  # "exit N: why" for a failure


@dataclass
class RunStatus:
    """What ``status.json`` holds: the run's outcome and each stage's result."""

    outcome: str = "running"
    exit_code: int | None = None
    mode: str = "one driver"
    stages: list[StageResult] = field(default_factory=list)

    def to_json(self) -> str:
        return json.dumps({"outcome": self.outcome, "exit_code": self.exit_code, "mode": self.mode,
                           "stages": [asdict(s) for s in self.stages]}, indent=2)


# A stage runner: (stage, full argv for its job, log path) -> (exit code, failure reason or None)
# or (exit code, reason, the job's report).
StageRunner = Callable[[Stage, list[str], Path], tuple]


def run(stages: Sequence[Stage], job_args: Sequence[str], run_stage: StageRunner, *, log_dir: Path,
        mode: str, out: TextIO | None = None, resume: Any = None, share_launch: bool = False) -> RunStatus:
    """Run ``stages`` in order through ``run_stage`` and return the run's status (also written to
    ``log_dir/status.json`` after every stage, so a killed run still shows how far it got).

    Optional stages that fail are recorded and the run goes on; evaluate and
    recommend get ``--models`` with the models trained so far (none trained in
    this run, e.g. a partial rerun: every model on disk). With ``resume`` (a
    :class:`recsys_spark.nightly.Resume`), each result goes into the date's run
    manifest and a stage done earlier with unchanged inputs is skipped. With ``share_launch``
    (a night in one driver), the neural models that the run's stages will train share one
    launch of the training processes (:mod:`recsys_spark.train.shared_launch`).
    """
    with contextlib.ExitStack() as planned:  # the plan lasts until the run ends

        def plan_shared_launch(first_neural: int, before_from: bool) -> None:
            models = _neural_models_to_run(stages[first_neural:], job_args, resume, before_from)
            planned.enter_context(shared_launch.planned(models))

        return _run(stages, job_args, run_stage, log_dir=log_dir, mode=mode, out=out, resume=resume,
                    plan_shared_launch=plan_shared_launch if share_launch else None)


def _neural_models_to_run(stages: Sequence[Stage], job_args: Sequence[str], resume: Any,
                          before_from: bool) -> list[str]:
    """The models of the ``train_neural`` stages among ``stages`` that this run will not skip."""
    models = []
    for stage in stages:
        if stage.job != "train_neural":
            continue
        if resume is not None:
            if before_from and stage.key == resume.from_stage:
                before_from = False
            argv = [*stage.args, *job_args]
            if resume.skip_reason(stage, argv, resume.inputs(stage), before_from=before_from) is not None:
                continue
        models += stage.models
    return models


def _run(stages, job_args, run_stage, *, log_dir, mode, out, resume, plan_shared_launch) -> RunStatus:
    out = out or sys.stdout

    def say(text: str, end: str = "\n") -> None:
        out.write(text + end)
        out.flush()

    log_dir.mkdir(parents=True, exist_ok=True)
    status = RunStatus(mode=mode)
    trained: list[str] = []
    partial = False

    run_started = time.time()

    def finish(outcome: str, code: int) -> RunStatus:
        status.outcome, status.exit_code = outcome, code
        _write(log_dir, status)
        if resume is not None:
            resume.finish_run(started=_utc(run_started), ended=_utc(time.time()), outcome=outcome, code=code,
                              mode=mode, status=str(log_dir / "status.json"))
        say(f"pipeline: {outcome} (exit {code}); status: {log_dir / 'status.json'}")
        return status

    before_from = resume is not None and resume.from_stage is not None
    for i, stage in enumerate(stages):
        argv = [*stage.args]
        if stage.takes_models and trained:
            argv += ["--models", ",".join(trained)]
        argv += list(job_args)
        log = log_dir / f"{stage.name.replace(' ', '_')}.log"
        if before_from and stage.key == resume.from_stage:
            before_from = False
        inputs = None
        if resume is not None:
            inputs = resume.inputs(stage)
            why = resume.skip_reason(stage, argv, inputs, before_from=before_from)
            if why is not None:
                now = int(time.time())
                status.stages.append(StageResult(stage.name, "skipped", 0, now, now, str(log), why))
                _write(log_dir, status)
                say(f"{stage.name:<34}skipped ({why})")
                if resume.succeeded_before(stage):
                    trained += stage.models
                continue
        if plan_shared_launch is not None and stage.job == "train_neural":
            plan_shared_launch(i, before_from)  # at the first neural stage that runs: its inputs are made
            plan_shared_launch = None
        started = time.time()
        say(f"{stage.name:<34}", end="")
        code, reason, *rest = run_stage(stage, argv, log)
        ended = time.time()
        seconds = int(round(ended - started))
        result = StageResult(stage.name, "ok" if code == 0 else "failed", seconds, int(started), int(ended),
                             str(log), None if code == 0 else f"exit {code}: {reason or 'see the log'}")
        status.stages.append(result)
        _write(log_dir, status)
        if resume is not None:
            resume.record(stage, {**asdict(result), "started_at_utc": _utc(started), "ended_at_utc": _utc(ended)},
                          argv=argv, inputs=inputs,
                          report=_counts(rest[0]) if rest and isinstance(rest[0], dict) else None)
        if code == 0:
            say(f"ok ({seconds} s)")
            trained += stage.models
            continue
        say(f"FAILED (exit {code}, {seconds} s): {reason or 'see the log'}; log: {log}")
        if reason and ExecutorsLostError.__name__ in reason:
            # The cluster has no executor left (recsys_spark.watchdog): every later stage would wait
            # the same timeout and fail the same way. A rerun of the date resumes from this stage.
            return finish(f"stage '{stage.name}' failed: the Spark application lost every executor, "
                          "nothing published", EXIT_NOTHING_PUBLISHED)
        if stage.required:
            if code == EXIT_CONFIG:
                return finish(f"config or usage error in stage '{stage.name}', nothing published", EXIT_CONFIG)
            return finish(f"stage '{stage.name}' failed, nothing published", EXIT_NOTHING_PUBLISHED)
        partial = True
    if not any(s.name == "recommend" for s in stages):
        return finish("stages done, nothing to publish in this selection", EXIT_PARTIAL if partial else EXIT_OK)
    if partial:
        return finish("published; some stages failed (see status)", EXIT_PARTIAL)
    return finish("every stage succeeded, published", EXIT_OK)


def refuse(reason: str, *, log_dir: Path, mode: str, out: TextIO | None = None,
           code: int = EXIT_CONFIG) -> RunStatus:
    """A run that cannot start (a usage error, e.g. an unknown stage in ``RECSYS_STAGES``,
    or another run holding the lock): no stage runs; ``status.json`` and the exit code say why."""
    log_dir.mkdir(parents=True, exist_ok=True)
    what = "another run is working on this warehouse" if code == EXIT_LOCKED else "usage error"
    status = RunStatus(outcome=f"{what}, nothing run: {reason}", exit_code=code, mode=mode)
    _write(log_dir, status)
    (out or sys.stderr).write(f"pipeline: {status.outcome} (exit {code})\n")
    return status


def _utc(seconds: float) -> str:
    import datetime as dt

    return dt.datetime.fromtimestamp(seconds, dt.timezone.utc).isoformat(timespec="seconds")


def _counts(report: dict) -> dict:
    """The numbers of a job's report (row counts, metrics), without its nested detail."""
    return {k: v for k, v in report.items() if isinstance(v, (int, float, str)) and not isinstance(v, bool)}


def _write(log_dir: Path, status: RunStatus) -> None:
    tmp = log_dir / "status.json.tmp"
    tmp.write_text(status.to_json() + "\n", encoding="utf-8")
    os.replace(tmp, log_dir / "status.json")


# --------------------------------------------------------------------------- failure reasons

_ERROR_LINE = re.compile(
    r"^([A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Refused|Failed)\b|config error|[a-z_]+\.py: |[a-z_]+: )")
_NOISE = re.compile(r"^(WARNING|INFO|DEBUG|WARN)\b")


def reason_from_log(text: str) -> str | None:
    """The last exception or error line of a job's output, on one line (what a scheduler's alert shows)."""
    lines = [ln.strip() for ln in text.splitlines()]
    hits = [ln for ln in lines if _ERROR_LINE.match(ln) and not _NOISE.match(ln)]
    return hits[-1][:500].replace("\t", " ") if hits else None


def reason_from_exception(exc: BaseException) -> str:
    """``Type: message`` on one line; for an error raised in the JVM, the Java exception's line."""
    text = str(exc)
    java = [ln.strip(": ").strip() for ln in text.splitlines() if re.match(r"^:?\s*(java|org|scala)\.\S+:", ln)]
    line = java[0] if java else (text.strip().splitlines() or [""])[0]
    return f"{type(exc).__module__}.{type(exc).__name__}: {line}"[:500]


# --------------------------------------------------------------------------- stage runners


class _StageStream:
    """The running stage's stdout or stderr: its log, stderr's text also kept for the failure reason.

    One object per stream for the whole run, pointed at each stage's log in
    turn: a logging handler made during one stage keeps the ``sys.stderr`` it
    saw (pyspark's TorchDistributor logger does), and must write to the stage
    running now, not to an earlier stage's closed file ("I/O operation on
    closed file" in the next stage). Between stages it writes to the process's own stream.
    """

    def __init__(self, name: str):
        self.name, self.log, self.keep = name, None, None

    def write(self, text: str) -> int:
        if self.keep is not None:
            self.keep.append(text)
        return (self.log or getattr(sys, f"__{self.name}__")).write(text)

    def flush(self) -> None:
        (self.log or getattr(sys, f"__{self.name}__")).flush()


_STAGE_STDOUT, _STAGE_STDERR = _StageStream("stdout"), _StageStream("stderr")


def in_driver_runner(jobs_dir: Path) -> StageRunner:
    """Each stage as its job's ``main(argv)`` in this process (``jobs_dir/<job>.py``); a raised
    error is the stage's failure, not the run's."""
    return functools.partial(_run_in_driver, Path(jobs_dir))


def load_job(jobs_dir: Path | str, name: str):
    """The job ``jobs_dir/<name>.py`` as a fresh module, to call its ``main(argv)`` in this driver.
    Jobs are spark-submit scripts, not a package: loaded by path (the one place that does it; the
    nightly run, the tests and the benchmarks all go through here)."""
    spec = importlib.util.spec_from_file_location(f"recsys_job_{name}", Path(jobs_dir) / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _run_in_driver(jobs_dir: Path, stage: Stage, argv: list[str], log: Path) -> tuple[int, str | None]:
    stderr_text: list[str] = []
    with open(log, "w", encoding="utf-8") as f, redirect_stdout(_STAGE_STDOUT), redirect_stderr(_STAGE_STDERR):
        _STAGE_STDOUT.log = _STAGE_STDERR.log = f
        _STAGE_STDERR.keep = stderr_text
        report = None
        try:
            report = load_job(jobs_dir, stage.job).main(argv)
            code, reason = 0, None
        except KeyboardInterrupt:
            raise
        except SystemExit as exc:
            code = exit_code_of(exc)
            reason = reason_from_log("".join(stderr_text))
        except BaseException as exc:  # noqa: BLE001 - one stage's error is recorded; the run goes on
            traceback.print_exc()
            code, reason = 1, reason_from_exception(exc)
        finally:
            _STAGE_STDOUT.log = _STAGE_STDERR.log = _STAGE_STDERR.keep = None
            _between_stages()
    return code, reason, report


def _between_stages() -> None:
    """What one stage cached or broadcast is not the next one's: a stage that failed half-way
    does not leave its cached tables holding executor memory for the rest of the night."""
    from pyspark.sql import SparkSession

    spark = SparkSession.getActiveSession()
    if spark is not None:
        spark.catalog.clearCache()
    gc.collect()


def isolated_runner(jobs_dir: Path, *, submit: Path, cwd: Path) -> StageRunner:
    """Each stage as its own ``submit`` of ``jobs_dir/<job>.py`` (its own JVM and Spark application)."""
    return functools.partial(_run_isolated, Path(jobs_dir), Path(submit), Path(cwd))


def _run_isolated(jobs_dir: Path, submit: Path, cwd: Path, stage: Stage, argv: list[str], log: Path
                  ) -> tuple[int, str | None]:
    with open(log, "w", encoding="utf-8") as f:
        code = subprocess.call([str(submit), str(jobs_dir / f"{stage.job}.py"), *argv],
                               cwd=cwd, stdout=f, stderr=subprocess.STDOUT)
    return code, (None if code == 0 else reason_from_log(log.read_text(encoding="utf-8", errors="replace")))
