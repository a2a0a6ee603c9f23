"""The plain-PyTorch training loop: no Spark here, and no Petastorm.

``train`` runs one process's share of a (possibly distributed) training run.
It gets its batches from ``loader_factory(epoch)`` (a context manager that
yields dicts of tensors in the formats of :mod:`recsys_spark.models.base`), so
the same loop is fed by Petastorm shards under TorchDistributor, by in-memory
tensors in tests and benchmarks, or by anything that replaces Petastorm later.

* Distributed: when ``torch.distributed`` is initialised the model is wrapped
  in ``DistributedDataParallel``. A model's ``loss`` is not its ``forward``, so
  DDP wraps a small module whose ``forward`` calls ``loss``: DDP's gradient
  hooks fire only for work done inside the wrapped module's ``forward``.
* Equal steps: shards differ in size, and a rank that stops stepping while
  another still calls backward leaves the other waiting in all-reduce forever.
  Before every step the ranks agree (all-reduce MIN of "I have a batch"), so
  every rank stops at the end of the smallest shard; ``max_steps_per_epoch``
  bounds it further.
* Negatives are drawn inside each process (uniform, or proportional to the
  items' training counts) from a generator reseeded every epoch from
  (seed, epoch, rank); ``ctx.item_log_q`` is log P(item in a batch), from the
  same counts, for log-q correction.
* Mixed precision: autocast on CUDA only (bf16 where supported, else fp16 with
  a gradient scaler); CPU runs stay in float32.
* Validation: after every epoch each rank ranks the whole catalog for its
  share of the validation users (:mod:`recsys_spark.train.local_metrics`, the
  evaluation library's definitions) and the sums are all-reduced; rank 0 keeps
  the best weights and broadcasts the early stopping decision so every rank
  leaves the loop at the same epoch.
* Checkpoints: rank 0 writes one after every epoch
  (:mod:`recsys_spark.train.checkpoint`); a rerun with the same ``run_key``
  resumes after the last completed epoch. Every epoch reseeds all randomness
  from (seed, epoch, rank) and the data order depends only on (seed, epoch),
  so a resumed run continues exactly as the uninterrupted one would have.
"""
from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from recsys_spark.models.base import RecModel, TrainContext, state_dict_bytes, state_dict_from_bytes
from recsys_spark.train import checkpoint as ckpt
from recsys_spark.train.local_metrics import ValidationSet, model_metric_total, parse_metric

LoaderFactory = Callable[[int], contextlib.AbstractContextManager]


@dataclass
class TrainSettings:
    """The loop's knobs (from ``NeuralConf`` via ``from_config``)."""

    epochs: int
    patience: int = 3
    learning_rate: float = 0.001
    weight_decay: float = 0.0
    negative_sampling: str = "uniform"  # uniform | popularity
    negatives_per_positive: int = 4
    seed: int = 42
    mixed_precision: bool = True
    max_steps_per_epoch: int | None = None
    metric: str = "ndcg_at_10"
    early_stopping: bool = True
    eval_batch_users: int = 512
    # The epochs that schedules (``ctx.total_steps``: Mult-VAE's KL annealing) are spread
    # over; None: ``epochs``. A refit runs the selection's best epoch count but keeps the
    # selection's schedule, or it would anneal faster than the run it repeats.
    schedule_epochs: int | None = None

    def __post_init__(self):
        if self.negative_sampling not in ("uniform", "popularity"):
            raise ValueError(f"neural.negative_sampling must be uniform or popularity, got '{self.negative_sampling}'")
        if self.epochs < 1:
            raise ValueError(f"neural.epochs must be at least 1, got {self.epochs}")
        parse_metric(self.metric)

    @classmethod
    def from_config(cls, cfg, *, epochs: int | None = None, early_stopping: bool = True,
                    schedule_epochs: int | None = None) -> "TrainSettings":
        n = cfg.neural
        return cls(
            epochs=epochs if epochs is not None else n.epochs,
            patience=n.patience,
            learning_rate=n.learning_rate,
            weight_decay=n.weight_decay,
            negative_sampling=n.negative_sampling,
            negatives_per_positive=n.negatives_per_positive,
            seed=n.seed,
            mixed_precision=n.mixed_precision,
            max_steps_per_epoch=n.max_steps_per_epoch,
            metric=cfg.evaluation.primary_metric,
            early_stopping=early_stopping,
            eval_batch_users=cfg.evaluation.scoring_batch_users,
            schedule_epochs=schedule_epochs,
        )


def derived_seed(*parts: int) -> int:
    """A well-mixed 63-bit seed from integers (seed, epoch, rank, stream)."""
    return int(np.random.SeedSequence([int(p) for p in parts]).generate_state(2, np.uint64)[0] >> np.uint64(1))


class NegativeSampler:
    """``sampler(n)``: ``n`` item indexes, uniform or proportional to ``item_counts``."""

    def __init__(self, item_counts: np.ndarray, mode: str, device: torch.device):
        self.n_items = len(item_counts)
        self.device = device
        self.generator = torch.Generator(device=device)
        self.cdf = None
        if mode == "popularity":
            counts = torch.as_tensor(np.asarray(item_counts, dtype=np.float64))
            if float(counts.sum()) <= 0:
                raise ValueError("popularity negatives: every item count is zero")
            self.cdf = torch.cumsum(counts / counts.sum(), 0).to(device=device, dtype=torch.float64)

    def reseed(self, seed: int) -> None:
        self.generator.manual_seed(seed)

    def __call__(self, n: int) -> torch.Tensor:
        if self.cdf is None:
            return torch.randint(0, self.n_items, (n,), generator=self.generator, device=self.device)
        u = torch.rand(n, generator=self.generator, device=self.device, dtype=torch.float64) * self.cdf[-1]
        return torch.searchsorted(self.cdf, u, right=True).clamp_(max=self.n_items - 1)


def item_log_q(item_counts: np.ndarray) -> torch.Tensor:
    """log P(an item is the positive of a random training pair); items never seen get log(1/total)."""
    counts = np.maximum(np.asarray(item_counts, dtype=np.float64), 1.0)
    return torch.as_tensor(np.log(counts / max(float(np.sum(item_counts)), 1.0)), dtype=torch.float32)


class _LossModule(torch.nn.Module):
    """What DDP wraps: ``forward(batch)`` is the model's ``loss`` (the context set per step)."""

    def __init__(self, model: RecModel):
        super().__init__()
        self.model = model
        self.ctx: TrainContext | None = None

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        return self.model.loss(batch, self.ctx)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, torch.Tensor]:
    """Tensors on ``device``; integer columns as int64 (Parquet stores int32)."""
    out = {}
    for key, value in batch.items():
        t = torch.as_tensor(value)
        if not t.is_floating_point() and t.dtype != torch.bool:
            t = t.long()
        out[key] = t.to(device, non_blocking=True)
    return out


def _dist() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _comm_device(device: torch.device) -> torch.device:
    return device if dist.get_backend() == "nccl" else torch.device("cpu")


def agreed_batches(loader, *, world_size: int, max_steps: int | None, device: torch.device) -> Iterator:
    """The loader's batches while every rank still has one (and at most ``max_steps``)."""
    it = iter(loader)
    step = 0
    while max_steps is None or step < max_steps:
        batch = next(it, None)
        if world_size > 1:
            flag = torch.tensor([0 if batch is None else 1], device=_comm_device(device))
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if int(flag.item()) == 0:
                return
        elif batch is None:
            return
        yield batch
        step += 1


def tensor_loader_factory(
    tensors: dict[str, torch.Tensor], *, batch_size: int, seed: int, rank: int = 0, world_size: int = 1
) -> LoaderFactory:
    """A loader factory over in-memory tensors (tests, benchmarks): a seeded
    permutation per epoch, this rank's every ``world_size``-th row, in batches."""
    n = len(next(iter(tensors.values())))

    @contextlib.contextmanager
    def factory(epoch: int):
        g = torch.Generator().manual_seed(derived_seed(seed, epoch, 2))
        order = torch.randperm(n, generator=g)[rank::world_size]
        yield ({k: v[idx] for k, v in tensors.items()} for idx in order.split(batch_size))

    return factory


def _peak_rss_mb() -> float:
    """This process's peak resident memory so far (MiB)."""
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 1024 / (1024 if sys.platform == "darwin" else 1)  # bytes on macOS, KiB on Linux


def _cpu_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}


def _broadcast_object(obj: Any, world_size: int, device: torch.device) -> Any:
    if world_size == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0, device=_comm_device(device))
    return box[0]


def train(
    model: RecModel,
    loader_factory: LoaderFactory,
    settings: TrainSettings,
    *,
    item_counts: np.ndarray,
    validation: ValidationSet | None = None,
    device: torch.device | str | None = None,
    checkpoint_dir: str | None = None,
    run_key: str = "",
    steps_per_epoch_hint: int | None = None,
    log: Callable[[str], None] = print,
    should_prune: Callable[[int, float], bool] | None = None,
) -> dict[str, Any] | None:
    """Train ``model`` in this process; in a distributed run, every rank calls this.

    Args:
        loader_factory: ``loader_factory(epoch)`` -> context manager yielding this
            rank's batches of that epoch (dicts of tensors).
        item_counts: [n_items] training pairs per item (negatives, log-q).
        validation: the validation users, on every rank (each scores its share);
            None for a refit: then no early stopping and the last epoch's weights are kept.
        checkpoint_dir: where rank 0 writes a checkpoint after every epoch and
            where a rerun with the same ``run_key`` resumes from.
        steps_per_epoch_hint: expected steps per epoch, for ``ctx.total_steps``
            (annealing schedules); a guess is fine.
        should_prune: rank 0 only, with validation: ``should_prune(epoch, metric)`` after
            every epoch (a settings search's pruner); True stops this run on every rank,
            like early stopping, and the result says ``pruned``.

    Returns:
        On rank 0: ``state_dict`` (bytes of the best epoch's weights, or the
        last epoch's without validation), ``history`` (one dict per epoch),
        ``best_epoch`` (0-based), ``best_metric``, ``epochs_run``,
        ``stopped_early``, ``resumed_from`` (completed epochs found in a
        checkpoint), ``pruned``. None on the other ranks.
    """
    rank, world = _dist()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model.to(device)
    # fused: one vectorised pass over each parameter instead of ~6 elementwise ops;
    # Adam over the embedding tables was the largest part of a NeuMF step on the CPU.
    optimizer = torch.optim.Adam(model.parameters(), lr=settings.learning_rate, weight_decay=settings.weight_decay,
                                 fused=device.type in ("cpu", "cuda"))
    amp_dtype = None
    if settings.mixed_precision and device.type == "cuda":
        amp_dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None

    # Resume: rank 0 reads the checkpoint and hands it to every rank (no shared filesystem needed).
    state = ckpt.load(checkpoint_dir, run_key) if rank == 0 else None
    state = _broadcast_object(state, world, device)
    start_epoch, history = 0, []
    best_metric, best_epoch, bad_epochs, finished = -math.inf, -1, 0, False
    best_state, resume_step = None, None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scaler is not None and state.get("scaler"):
            scaler.load_state_dict(state["scaler"])
        start_epoch, history = int(state["epoch"]), list(state["history"])
        best_metric, best_epoch = float(state["best_metric"]), int(state["best_epoch"])
        bad_epochs, finished = int(state["bad_epochs"]), bool(state["finished"])
        resume_step = int(state["step"])
        best_state = state["best_model"] if rank == 0 else None
        if rank == 0:
            torch.set_rng_state(state["rng"]["cpu"])
            log(f"resuming after epoch {start_epoch} from {ckpt.checkpoint_path(checkpoint_dir)}")
    resumed_from = start_epoch
    pruned = False
    del state

    wrapper = _LossModule(model)
    if world > 1:
        # forward_sync_buffers=False: the models' buffers are constant data (item
        # features), identical on every rank; re-sending them every step is waste.
        # gradient_as_bucket_view: gradients live in the all-reduce buckets, saving
        # a copy of every gradient (the embedding tables') per step.
        step_module = torch.nn.parallel.DistributedDataParallel(
            wrapper, device_ids=[device.index] if device.type == "cuda" else None,
            forward_sync_buffers=False, gradient_as_bucket_view=True,
        )
    else:
        step_module = wrapper
    sampler = NegativeSampler(item_counts, settings.negative_sampling, device)
    log_q = item_log_q(item_counts).to(device)
    spe = steps_per_epoch_hint or 1
    if settings.max_steps_per_epoch:
        spe = min(spe, settings.max_steps_per_epoch)
    total_steps = max(1, (settings.schedule_epochs or settings.epochs) * spe)
    global_step = resume_step if resume_step is not None else start_epoch * spe
    stopped_early = finished and start_epoch < settings.epochs

    epoch = start_epoch
    while epoch < settings.epochs and not finished:
        torch.manual_seed(derived_seed(settings.seed, epoch, rank, 0))
        sampler.reseed(derived_seed(settings.seed, epoch, rank, 1))
        model.train()
        loss_sum = torch.zeros((), dtype=torch.float64, device=device)
        rows, steps = 0, 0
        started, cpu_started = time.perf_counter(), time.process_time()
        with loader_factory(epoch) as loader:
            for raw in agreed_batches(loader, world_size=world, max_steps=settings.max_steps_per_epoch, device=device):
                batch = to_device(raw, device)
                n = int(batch["user_index"].shape[0])
                wrapper.ctx = TrainContext(
                    n_items=model.n_items, sample_negatives=sampler,
                    negatives_per_positive=settings.negatives_per_positive, item_log_q=log_q,
                    epoch=epoch, step=global_step, total_steps=total_steps,
                )
                with torch.autocast(device_type=device.type, dtype=amp_dtype, enabled=amp_dtype is not None):
                    loss = step_module(batch)
                optimizer.zero_grad(set_to_none=True)
                if scaler is not None:
                    scaler.scale(loss).backward()
                    scaler.step(optimizer)
                    scaler.update()
                else:
                    loss.backward()
                    optimizer.step()
                loss_sum += loss.detach().double() * n
                rows += n
                steps += 1
                global_step += 1
        seconds = time.perf_counter() - started
        cpu_seconds = time.process_time() - cpu_started  # all threads of this process (the reader's too)
        if steps == 0:
            raise RuntimeError(f"epoch {epoch + 1}: no training batches (is this rank's shard empty?)")
        # [loss sum, rows, CPU seconds] summed over ranks; [seconds, peak memory] the worst rank's.
        comm = _comm_device(device) if world > 1 else torch.device("cpu")
        summed = torch.tensor([float(loss_sum), rows, cpu_seconds], dtype=torch.float64, device=comm)
        worst = torch.tensor([seconds, _peak_rss_mb()], dtype=torch.float64, device=comm)
        if world > 1:
            dist.all_reduce(summed, op=dist.ReduceOp.SUM)
            dist.all_reduce(worst, op=dist.ReduceOp.MAX)
        totals = [float(summed[0]), float(summed[1]), float(worst[0])]
        cpu_total = float(summed[2])
        peak_mb = float(worst[1])
        loss_mean = totals[0] / max(totals[1], 1.0)
        samples_per_s = totals[1] / max(totals[2], 1e-9)

        # Validation and the early-stopping decision on rank 0, then shared.
        metric, improved = math.nan, True
        validation_started = time.perf_counter()
        if validation is not None:
            # Every process scores its share of the validation users; the sums add up.
            part = torch.tensor([model_metric_total(model, validation, metric=settings.metric, device=device,
                                                    part=rank, parts=world,
                                                    batch_users=settings.eval_batch_users)],
                                dtype=torch.float64, device=comm)
            if world > 1:
                dist.all_reduce(part, op=dist.ReduceOp.SUM)
            metric = float(part[0]) / len(validation.users)
        if rank == 0 and validation is not None:
            improved = metric > best_metric
        if rank == 0:
            if improved:
                best_metric = metric if validation is not None else best_metric
                best_epoch, bad_epochs = epoch, 0
                best_state = _cpu_state(model)
            else:
                bad_epochs += 1
        stop = (rank == 0 and validation is not None and settings.early_stopping
                and bad_epochs >= settings.patience)
        prune = rank == 0 and validation is not None and should_prune is not None and should_prune(epoch, metric)
        stop, prune = _broadcast_object((bool(stop or prune), bool(prune)), world, device)
        pruned = pruned or prune
        finished = stop or epoch + 1 >= settings.epochs
        stopped_early = stop and epoch + 1 < settings.epochs

        if rank == 0:
            record = {"epoch": epoch + 1, "loss": loss_mean, "samples_per_s": samples_per_s,
                      "samples_per_s_per_process": samples_per_s / world, "seconds": float(totals[2]),
                      "steps": steps, "peak_rss_mb": peak_mb,
                      # Throughput per CPU-second: what a process achieves per core it actually got.
                      "samples_per_cpu_s": totals[1] / max(cpu_total, 1e-9),
                      "validation_seconds": time.perf_counter() - validation_started,
                      settings.metric: metric}
            history.append(record)
            shown = f"{settings.metric} {metric:.4f} (best {best_metric:.4f} @ epoch {best_epoch + 1})" \
                if validation is not None else "no validation"
            log(f"epoch {epoch + 1}/{settings.epochs} loss {loss_mean:.4f} "
                f"samples/s {samples_per_s:,.0f} ({samples_per_s / world:,.0f} per process, {world} process(es)) "
                f"{shown} [{float(totals[2]):.1f}s, peak {peak_mb:.0f} MiB/process]")
            if checkpoint_dir is not None:
                ckpt.save(checkpoint_dir, {
                    "run_key": run_key, "epoch": epoch + 1, "step": global_step, "model": _cpu_state(model),
                    "optimizer": optimizer.state_dict(), "scaler": scaler.state_dict() if scaler else {},
                    "best_metric": best_metric, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
                    "finished": finished, "best_model": best_state, "history": history,
                    "rng": {"cpu": torch.get_rng_state()},
                })
        epoch += 1

    if rank != 0:
        return None
    if best_state is None:  # resumed from a finished checkpoint without the weights: keep what we have
        best_state = _cpu_state(model)
    return {
        "state_dict": state_dict_bytes(best_state),
        "history": history,
        "best_epoch": best_epoch,
        "best_metric": None if validation is None else best_metric,
        "epochs_run": len(history),
        "stopped_early": stopped_early,
        "resumed_from": resumed_from,
        "pruned": pruned,
    }


__all__ = [
    "NegativeSampler",
    "TrainSettings",
    "agreed_batches",
    "derived_seed",
    "item_log_q",
    "state_dict_bytes",
    "state_dict_from_bytes",
    "tensor_loader_factory",
    "to_device",
    "train",
]
