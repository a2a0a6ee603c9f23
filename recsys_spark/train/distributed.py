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
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import SparkSession

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
    extra: dict[str, Any] = field(default_factory=dict)


def build_model(job: WorkerJob):
    """The job's model, freshly initialised (seeded: every process builds the same weights)."""
    import torch

    from recsys_spark.models import registry

    cls = job.model_class or registry.get(job.model_name)
    kwargs = dict(job.build_kwargs)
    if job.item_features is not None:
        kwargs["item_features"] = {k: torch.as_tensor(v) for k, v in job.item_features.items()}
    torch.manual_seed(job.settings.seed)
    return cls.build(**kwargs)


def _worker(job: WorkerJob):
    """One training process (runs under torchrun: RANK, WORLD_SIZE, MASTER_ADDR are set)."""
    import os

    import torch
    import torch.distributed as dist

    from recsys_spark.train import loop

    torch.set_num_threads(max(1, job.threads_per_process))
    use_cuda = job.use_gpu and torch.cuda.is_available()
    if use_cuda:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    try:
        rank, world = dist.get_rank(), dist.get_world_size()
        model = build_model(job)
        validation = job.data.validation_set() if rank == 0 and job.validate else None

        def loader_factory(epoch: int):
            return job.data.shard_loader(
                rank=rank, world_size=world, batch_size=job.batch_size, seed=job.settings.seed, epoch=epoch
            )

        return loop.train(
            model,
            loader_factory,
            job.settings,
            item_counts=job.item_counts,
            validation=validation,
            device=device,
            checkpoint_dir=job.checkpoint_dir,
            run_key=job.run_key,
            steps_per_epoch_hint=job.data.steps_per_epoch(job.batch_size, world),
            log=lambda line: print(f"[{job.model_name}] {line}", flush=True),
        )
    finally:
        dist.destroy_process_group()


def resolve_use_gpu(spark: SparkSession, setting: str) -> bool:
    """``neural.use_gpu``: "true"/"false" as given; "auto": GPUs when Spark schedules them.

    TorchDistributor can give a task a GPU only when the cluster declares GPU
    resources (``spark.task.resource.gpu.amount``; for a local master, also
    driver GPU resources). A GPU that Spark does not know about is not used:
    the processes could not agree on which of them owns it.
    """
    value = str(setting).strip().lower()
    if value in ("true", "false"):
        return value == "true"
    if value != "auto":
        raise ValueError(f"neural.use_gpu must be auto, true or false, got '{setting}'")
    conf = spark.sparkContext.getConf()
    task_gpus = float(conf.get("spark.task.resource.gpu.amount", "0") or 0)
    if task_gpus <= 0:
        return False
    master = conf.get("spark.master", "")
    if master.startswith("local"):
        return "gpu" in spark.sparkContext.resources
    return True


def run(spark: SparkSession, job: WorkerJob, *, num_processes: int) -> dict[str, Any]:
    """Run ``job`` in ``num_processes`` processes as Spark barrier tasks; rank 0's result.

    Raises:
        ValueError: more processes than task slots (a barrier stage would wait forever).
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
    distributor = TorchDistributor(num_processes=num_processes, local_mode=False, use_gpu=job.use_gpu)
    result = distributor.run(_worker, job)
    if result is None:
        raise RuntimeError("TorchDistributor returned no result from rank 0")
    return result


def threads_per_process(spark: SparkSession, num_processes: int) -> int:
    """Torch threads per process: the cluster's cores shared out (one Spark task per process)."""
    return max(1, spark.sparkContext.defaultParallelism // max(1, num_processes))


__all__ = ["WorkerJob", "build_model", "resolve_use_gpu", "run", "threads_per_process"]
