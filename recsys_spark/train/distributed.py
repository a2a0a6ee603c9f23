"""TorchDistributor glue: run the training loop in ``num_processes`` processes on Spark.

``TorchDistributor(local_mode=False)`` starts the processes as one barrier
stage of Spark tasks on the executors (each task launches ``torchrun`` for one
process), so training runs where the cluster's cores or GPUs are, not on the
driver. It needs as many free task slots as processes; a local master
(``local[2]``) works the same way, its tasks running in the driver's JVM
(checked here: ``num_processes`` may not exceed the default parallelism).

The training function is pickled (cloudpickle) and unpickled in the
``torchrun`` subprocess: :func:`_worker` is a module-level function found by
reference, and everything it needs is imported inside it. The executors need
``recsys_spark`` importable by their Python (it is installed in ``.venv``; the
``--py-files`` zip of ``scripts/submit.sh`` reaches Spark's Python workers but
not the subprocesses torchrun starts). The same code runs with one process.
Backend: NCCL when the processes have GPUs, gloo otherwise. Returns rank 0's
result only (the others return None).

A process that dies fails the run within seconds, whatever its rank and
whenever it dies, and processes do not die at exit: :func:`run` starts them
through :mod:`recsys_spark.train.launch` (which says why pyspark's own launch
did neither). A rank's non-zero status fails its Spark task; Spark aborts the
barrier stage (a barrier result stage is never retried) and kills the other
tasks, whose torchrun pyspark's wrapper then ends; :func:`run` raises
:class:`TrainingProcessFailed` naming the rank, the signal or exit status, and
the process's last output line.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

from recsys_spark.train.launch import PEER_LOST
from recsys_spark.train.loop import TrainSettings


@dataclass
class WorkerJob:
    """Everything one training process needs; pickled to every process."""

    model_name: str
    build_kwargs: dict[str, Any]  # n_users, n_items, params (RecModel.build's keyword arguments)
    data: Any  # recsys_spark.train.data.PetastormData
    settings: TrainSettings
    item_counts: np.ndarray
    batch_size: int
    item_features: dict[str, np.ndarray] | None = None
    model_class: type | None = None  # None: registry.get(model_name); tests pass a class
    validate: bool = True
    checkpoint_dir: str | None = None
    run_key: str = ""
    threads_per_process: int = 1
    use_gpu: bool = False
    refit: "RefitPlan | None" = None
    search: Any = None  # recsys_spark.train.search.SearchPlan: selection is a settings search
    extra: dict[str, Any] = field(default_factory=dict)
    # The training pairs (user_index, item_index) as int32 arrays, for a model with needs_graph
    # (built with graph=...); None for the others.
    graph: Any = None


@dataclass
class RefitPlan:
    """The refit that follows selection in the same processes (one launch, not two).

    ``settings.epochs`` is replaced by the number of epochs selection found best,
    which rank 0 sends to every process once selection ends.
    """

    data: Any  # recsys_spark.train.data.PetastormData of train + validation
    settings: TrainSettings
    item_counts: np.ndarray  # of train + validation: negative sampling and log-q correction
    checkpoint_dir: str | None = None
    run_key: str = ""
    graph: Any = None  # the training pairs of train + validation (WorkerJob.graph)


def build_model(job: WorkerJob, params: dict[str, Any] | None = None, *, graph: Any = None):
    """The job's model, freshly initialised (seeded: every process builds the same weights);
    ``params`` (a search trial's hyperparameters) over the job's; ``graph``: the phase's
    training pairs, for a model with ``needs_graph``."""
    import torch

    from recsys_spark.models import registry

    cls = job.model_class or registry.get(job.model_name)
    kwargs = dict(job.build_kwargs)
    if params:
        kwargs["params"] = {**kwargs.get("params", {}), **params}
    if job.item_features is not None:
        kwargs["item_features"] = {k: torch.as_tensor(v) for k, v in job.item_features.items()}
    if graph is not None:
        kwargs["graph"] = graph
    torch.manual_seed(job.settings.seed)
    return cls.build(**kwargs)


def _worker(job: "WorkerJob | list[WorkerJob]"):
    """One training process (runs under torchrun: RANK, WORLD_SIZE, MASTER_ADDR are set).

    ``job`` may be a list: the models of one shared launch (:func:`run_many`), trained one
    after the other in the same process group; rank 0 returns their results in order.
    """
    import gc
    import os

    import torch
    import torch.distributed as dist

    jobs = job if isinstance(job, list) else [job]
    first = jobs[0]
    torch.set_num_threads(max(1, first.threads_per_process))
    use_cuda = first.use_gpu
    if use_cuda and not torch.cuda.is_available():
        # Spark gave this task a GPU (neural.use_gpu resolved true): training on the CPU
        # instead would be a silent fallback that the run's report still calls a GPU run.
        raise RuntimeError(f"neural.use_gpu: Spark gave this training process a GPU, but torch "
                           f"{torch.__version__} here sees no CUDA device; install a CUDA build of torch on "
                           "the executors or set neural.use_gpu=false")
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        results = []
        for one in jobs:
            results.append(_train(one, device))
            gc.collect()  # the previous model's tensors, before the next one's are built
        return (results if isinstance(job, list) else results[0]) if dist.get_rank() == 0 else None
    finally:
        dist.destroy_process_group()


def _train(job: WorkerJob, device):
    """One model's selection (or search) and refit in this process; rank 0's result (others: None)."""
    import dataclasses
    import json

    import torch.distributed as dist

    from recsys_spark.train import loop

    rank, world = dist.get_rank(), dist.get_world_size()

    def fit(data, settings, item_counts, *, validate: bool, checkpoint_dir, run_key, phase: str,
            params=None, should_prune=None, graph=None):
        def loader_factory(epoch: int):
            return data.shard_loader(
                rank=rank, world_size=world, batch_size=job.batch_size, seed=settings.seed, epoch=epoch
            )

        return loop.train(
            build_model(job, params, graph=graph),  # freshly initialised, the same on every rank and for both phases
            loader_factory,
            settings,
            item_counts=item_counts,
            validation=data.validation_set() if validate else None,
            device=device,
            checkpoint_dir=checkpoint_dir,
            run_key=run_key,
            steps_per_epoch_hint=data.steps_per_epoch(job.batch_size, world),
            log=lambda line: print(f"[{job.model_name}{phase}] {line}", flush=True),
            should_prune=should_prune,
        )

    def broadcast(obj):
        box = [obj]
        dist.broadcast_object_list(box, src=0)
        return box[0]

    chosen_params, chosen_trainer = {}, {}
    if job.search is not None and job.search.active:
        from recsys_spark.train import search

        def trial(values, should_prune):
            params, trainer = job.search.split(values)
            # Trials keep no checkpoint: a search interrupted is run again (its
            # study lives in rank 0's memory); the refit after it checkpoints.
            return fit(job.data, dataclasses.replace(job.settings, **trainer), job.item_counts, validate=True,
                       checkpoint_dir=None, run_key="", phase=" search", params=params,
                       should_prune=should_prune, graph=job.graph)

        selected = search.run(job.search, trial, rank=rank, broadcast=broadcast,
                              log=lambda line: print(f"[{job.model_name} search] {line}", flush=True))
        chosen_params, chosen_trainer = job.search.split(
            broadcast(selected["search"]["chosen"] if rank == 0 else None))
    else:
        selected = fit(job.data, job.settings, job.item_counts, validate=job.validate,
                       checkpoint_dir=job.checkpoint_dir, run_key=job.run_key, phase="", graph=job.graph)
    if job.refit is None:
        return selected if rank == 0 else None
    best = broadcast(selected["best_epoch"] if rank == 0 else None)
    settings = dataclasses.replace(job.refit.settings, **chosen_trainer, epochs=int(best) + 1,
                                   schedule_epochs=job.settings.epochs, early_stopping=False)
    refit_key = job.refit.run_key + (json.dumps([chosen_params, chosen_trainer], sort_keys=True, default=str)
                                     if job.search is not None else "")
    refit = fit(job.refit.data, settings, job.refit.item_counts, validate=False,
                checkpoint_dir=job.refit.checkpoint_dir, run_key=refit_key, phase=" refit",
                params=chosen_params, graph=job.refit.graph)
    return {"selection": selected, "refit": refit} if rank == 0 else None


def resolve_use_gpu(spark: SparkSession, setting: str) -> bool:
    """``neural.use_gpu``: "false": never; "auto": GPUs when Spark schedules them; "true": GPUs, required.

    TorchDistributor can give a task a GPU only when the cluster declares GPU
    resources (``spark.task.resource.gpu.amount``; for a local master, also
    driver GPU resources). A GPU that Spark does not know about is not used:
    the processes could not agree on which of them owns it.

    Raises:
        ValueError: a value other than auto, true or false; or "true" when Spark
            schedules no GPUs (refused here, before any data is materialised,
            rather than by TorchDistributor once it is).
    """
    value = str(setting).strip().lower()
    if value not in ("auto", "true", "false"):
        raise ValueError(f"neural.use_gpu must be auto, true or false, got '{setting}'")
    if value == "false":
        return False
    conf = spark.sparkContext.getConf()
    task_gpus = float(conf.get("spark.task.resource.gpu.amount", "0") or 0)
    local = conf.get("spark.master", "").startswith("local")
    scheduled = task_gpus > 0 and (not local or "gpu" in spark.sparkContext.resources)
    if value == "true" and not scheduled:
        missing = ("spark.task.resource.gpu.amount is not set" if task_gpus <= 0
                   else "this local master's driver declares no gpu resource (spark.driver.resource.gpu.*)")
        raise ValueError(f"neural.use_gpu=true, but Spark schedules no GPUs for its tasks ({missing}): declare the "
                         "GPUs to Spark, or set neural.use_gpu to auto (GPUs when Spark has them) or false")
    return scheduled


class TrainingProcessFailed(RuntimeError):
    """A training process died or failed; ``rank``, ``exitcode``, ``signal`` and ``last_line`` say which and how."""

    def __init__(self, message: str, *, rank: int | None, exitcode: int | None, signal: str | None,
                 last_line: str | None):
        super().__init__(message)
        self.rank, self.exitcode, self.signal, self.last_line = rank, exitcode, signal, last_line


# torchelastic's failure report (ChildFailedError), as torchrun prints it.
_REPORT_RANK = re.compile(r"rank\s*:\s*(\d+)")
_REPORT_EXIT = re.compile(r"exitcode\s*:\s*(-?\d+)")
_REPORT_SIGNAL = re.compile(r"Signal \d+ \((SIG\w+)\)")
# Lines of torchrun's own logging and failure report, not the training process's.
_LAUNCHER_LINE = re.compile(
    r"^([EWI]\d{4} \d|Traceback \(most recent call last\)|torch\.distributed\.elastic|={5,}|-{5,}|\s+File \"|"
    r"\s*(time|host|rank|exitcode|error_file|traceback)\s*:|Failures:|Root Cause|\[\d+\]:$|<NO_OTHER_FAILURES>|"
    r"\S+ FAILED$|\s*\^+$|\s+\S)"
)


def _output_tail(text: str) -> str:
    """The processes' output in TorchDistributor's error ("Command [...] failed with return
    code N. The task output is included below: <output>"), without the tracebacks Spark wraps it in."""
    marker = text.find("included below:")
    return text[marker + len("included below:"):].lstrip(" ") if marker >= 0 else text


def describe_failure(text: str) -> dict[str, Any]:
    """Rank, exit code, signal and last output line of the first failed process in a torchrun report.

    ``text`` is what TorchDistributor raised with: torchrun's output tail,
    ending in torchelastic's report (its "Root Cause" entry first when there
    are several). Fields it cannot find are None.
    """
    text = _output_tail(text)
    root = text.find("Root Cause")
    report = text[root:] if root >= 0 else text
    rank, exitcode, signal = (_REPORT_RANK.search(report), _REPORT_EXIT.search(report),
                              _REPORT_SIGNAL.search(report))
    last_line = None
    for line in text.splitlines():
        if "Traceback (most recent call last)" in line and "[rank" not in line:
            break  # torchrun's own traceback starts: the processes' output is above it
        if line.strip() and not _LAUNCHER_LINE.match(line) and "FutureWarning" not in line:
            last_line = line.strip()
    return {
        "rank": int(rank.group(1)) if rank else None,
        "exitcode": int(exitcode.group(1)) if exitcode else None,
        "signal": signal.group(1) if signal else None,
        "last_line": last_line,
    }


def _launch_torchrun(input_params: dict[str, Any], train_path: str, *args: Any, **kwargs: Any) -> None:
    """TorchDistributor's launch of one task's ``torchrun``, keeping its exit status and ending processes cleanly.

    Runs in the Spark task (pickled with the task function). The command is
    TorchDistributor's own with two substitutions (see :mod:`recsys_spark.train.launch`):
    pyspark's wrapper runs under ``launch guard``, which exits with torchrun's
    status, and each training process runs ``launch process`` on the files
    TorchDistributor wrote next to ``train_path`` (the same work as that file,
    ending with ``os._exit``). ``_execute_command`` raises on a non-zero
    status, with the tail of the output, and Spark fails the barrier stage.
    """
    import os

    from pyspark.ml.torch.distributor import TorchDistributor

    if kwargs or args:
        raise ValueError("the training function's arguments travel pickled, not on the command line")
    cmd = TorchDistributor._create_torchrun_command(input_params, train_path)
    wrapper = "pyspark.ml.torch.torch_run_process_wrapper"
    if cmd[1:3] != ["-m", wrapper] or cmd[-1] != train_path:
        raise RuntimeError(f"unexpected TorchDistributor command (has pyspark changed?): {cmd}")
    save_dir = os.path.dirname(train_path)
    cmd = [cmd[0], "-m", "recsys_spark.train.launch", "guard", *cmd[3:-1],
           "-m", "recsys_spark.train.launch", "process", save_dir]
    TorchDistributor._execute_command(cmd, log_streaming_client=input_params.get("log_streaming_client"))


def run(spark: SparkSession, job: "WorkerJob | list[WorkerJob]", *, num_processes: int) -> Any:
    """Run ``job`` in ``num_processes`` processes as Spark barrier tasks; rank 0's result.

    A list of jobs is one launch for several models (``recsys_spark.train.shared_launch``):
    the processes train them one after the other and rank 0's results come back as a list,
    in order. They must agree on what the launch itself depends on (processes, GPUs, threads).

    Raises:
        ValueError: more processes than task slots (a barrier stage would wait forever).
        TrainingProcessFailed: a training process failed or died (any rank, at any
            point, its own exit included): raised as soon as Spark aborts the stage.
    """
    from pyspark.ml.torch.distributor import TorchDistributor

    if num_processes < 1:
        raise ValueError(f"neural.num_processes must be at least 1, got {num_processes}")
    slots = spark.sparkContext.defaultParallelism
    if num_processes > slots:
        raise ValueError(
            f"neural.num_processes={num_processes} exceeds the cluster's {slots} task slots: "
            "the training processes run as one barrier stage and need a slot each"
        )
    jobs = job if isinstance(job, list) else [job]
    launch_of = {(j.use_gpu, j.threads_per_process) for j in jobs}
    if len(launch_of) != 1:
        raise ValueError(f"one launch needs one GPU use and thread count for all its models, got {sorted(launch_of)}")
    label = ", ".join(j.model_name for j in jobs)
    distributor = TorchDistributor(num_processes=num_processes, local_mode=False, use_gpu=jobs[0].use_gpu)
    try:
        # _run with a launch function: the extension point pyspark's own
        # DeepspeedTorchDistributor uses to change the torchrun command.
        result = distributor._run(_worker, _launch_torchrun, job)
    except Exception as exc:  # Py4JJavaError / PythonException carrying the task's error text
        text = str(exc)
        if "recsys_spark.train.launch" not in text and "TorchDistributor failed" not in text:
            raise
        found = describe_failure(text)
        how = (f"killed by {found['signal']}" if found["signal"]
               else f"exited with status {found['exitcode']}" if found["exitcode"] is not None else "failed")
        rank = "?" if found["rank"] is None else found["rank"]
        if PEER_LOST.search(_output_tail(text)):
            how += " after losing a peer (another process may have died first: see its report in the logs)"
        raise TrainingProcessFailed(
            f"[{label}] training process rank {rank} of {num_processes} {how}; "
            f"its last output line: {found['last_line']!r}. The Spark stage was aborted; "
            "the full output is in the driver log (local master) or the executor's stdout.",
            **found,
        ) from exc
    if result is None:
        raise RuntimeError("TorchDistributor returned no result from rank 0")
    return result


def threads_per_process(spark: SparkSession, num_processes: int) -> int:
    """Torch threads per process: the cluster's cores shared out (one Spark task per process)."""
    return max(1, spark.sparkContext.defaultParallelism // max(1, num_processes))


__all__ = ["RefitPlan", "TrainingProcessFailed", "WorkerJob", "build_model", "describe_failure", "resolve_use_gpu", "run",
           "threads_per_process"]
