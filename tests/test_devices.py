"""Where the trainer runs: ``neural.use_gpu`` (distributed.resolve_use_gpu on the driver,
the device and backend each training process picks in distributed._worker) and the
loop's CUDA and mixed-precision path (loop.train: autocast in bf16, or fp16 with a
GradScaler, on CUDA only; float32 on the CPU).

The CPU tests run everywhere. The ``gpu`` tests need a CUDA device and skip, saying so,
where torch sees none. The training processes run in this process (one rank), as in
tests/test_neural_fit.py.
"""
from __future__ import annotations

import contextlib
import dataclasses
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from tests.conftest import free_port
from tests.test_trainer import MarchingScores, marching_run
from recsys_spark.train import checkpoint, distributed, loop
from recsys_spark.train.local_metrics import UserItems, ValidationSet

requires_cuda = pytest.mark.skipif(not torch.cuda.is_available(),
                                   reason="needs a CUDA device: torch.cuda.is_available() is False here")
SETTINGS = loop.TrainSettings(epochs=10, patience=2, learning_rate=1.0, seed=0, metric="ndcg_at_1")


# --------------------------------------------------------------------------- neural.use_gpu on the driver


def _context(master: str, task_gpus: str | None = None, driver_gpu: bool = False):
    """What resolve_use_gpu reads of a session: its conf and the driver's resources."""
    conf = {"spark.master": master}
    if task_gpus is not None:
        conf["spark.task.resource.gpu.amount"] = task_gpus
    return SimpleNamespace(sparkContext=SimpleNamespace(
        getConf=lambda: SimpleNamespace(get=lambda key, default=None: conf.get(key, default)),
        resources={"gpu": object()} if driver_gpu else {}))


@pytest.mark.parametrize("context, expected", [
    (_context("spark://host:7077"), False),
    (_context("spark://host:7077", task_gpus="0"), False),
    (_context("spark://host:7077", task_gpus="1"), True),
    (_context("local[2]", task_gpus="1"), False),  # a local master needs driver GPU resources too
    (_context("local[2]", task_gpus="1", driver_gpu=True), True),
])
def test_use_gpu_auto_means_gpus_when_spark_schedules_them(context, expected):
    assert distributed.resolve_use_gpu(context, "auto") is expected
    assert distributed.resolve_use_gpu(context, " AUTO ") is expected
    assert distributed.resolve_use_gpu(context, "false") is False


@pytest.mark.spark
def test_use_gpu_auto_on_the_test_session_is_the_cpu(spark):
    # The shared local[2] session declares no GPUs, whatever this machine has.
    assert distributed.resolve_use_gpu(spark, "auto") is False


@pytest.mark.parametrize("context, missing", [
    (_context("spark://host:7077"), "spark.task.resource.gpu.amount is not set"),
    (_context("local[2]", task_gpus="1"), "driver declares no gpu resource"),
])
def test_use_gpu_true_without_gpus_scheduled_is_refused_naming_the_setting(context, missing):
    with pytest.raises(ValueError) as err:
        distributed.resolve_use_gpu(context, "true")
    message = str(err.value)
    assert message.startswith("neural.use_gpu=true, but Spark schedules no GPUs") and missing in message, message
    assert "neural.use_gpu to auto" in message


def test_use_gpu_true_with_gpus_scheduled_and_a_bad_value():
    assert distributed.resolve_use_gpu(_context("spark://host:7077", task_gpus="1"), "true") is True
    with pytest.raises(ValueError, match="neural.use_gpu must be auto, true or false, got 'yes'"):
        distributed.resolve_use_gpu(_context("local[2]"), "yes")


# --------------------------------------------------------------------------- a training process's device


class _MarchingData:
    """The slice of PetastormData that _worker uses, over the marching example's tensors."""

    users = 3

    def shard_loader(self, *, rank, world_size, batch_size, seed, epoch):
        tensors = {"user_index": torch.arange(self.users), "item_index": torch.zeros(self.users, dtype=torch.long),
                   "weight": torch.ones(self.users)}
        return loop.tensor_loader_factory(tensors, batch_size=batch_size, seed=seed, rank=rank,
                                          world_size=world_size)(epoch)

    def validation_set(self):
        n = self.users
        return ValidationSet(np.arange(n), np.full((n, 1), 3), np.zeros(n, dtype=np.int64),
                             UserItems.from_lists([[]] * n), UserItems.from_lists([[0]] * n))

    def steps_per_epoch(self, batch_size, world_size):
        return 1


@contextlib.contextmanager
def _one_rank(monkeypatch):
    """torchrun's environment for one rank in this process; what _worker chose is recorded."""
    chosen = {}
    real_train, real_init = loop.train, torch.distributed.init_process_group

    def train(model, loader_factory, settings, **kw):
        chosen["device"] = torch.device(kw["device"])
        return real_train(model, loader_factory, settings, **kw)

    def init_process_group(backend=None, **kw):
        chosen["backend"] = backend
        return real_init(backend=backend, **kw)

    for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                       "MASTER_PORT": str(free_port())}.items():
        monkeypatch.setenv(key, value)
    monkeypatch.setattr(loop, "train", train)
    monkeypatch.setattr(torch.distributed, "init_process_group", init_process_group)
    threads = torch.get_num_threads()
    try:
        yield chosen
    finally:
        torch.set_num_threads(threads)  # _worker sets the process's torch threads


def _job(*, use_gpu: bool, settings=SETTINGS):
    return distributed.WorkerJob(
        model_name="marching", model_class=MarchingScores, build_kwargs={"n_users": 3, "n_items": 3, "params": {}},
        data=_MarchingData(), settings=settings, item_counts=np.ones(3), batch_size=3, use_gpu=use_gpu)


def test_a_process_without_a_gpu_trains_on_the_cpu_with_gloo(monkeypatch):
    with _one_rank(monkeypatch) as chosen:
        result = distributed._worker(_job(use_gpu=False))
    assert chosen == {"device": torch.device("cpu"), "backend": "gloo"}
    assert [h["ndcg_at_1"] for h in result["history"]] == [0.0, 1.0, 0.0, 0.0]
    assert not torch.distributed.is_initialized()  # the process group is destroyed


def test_a_process_given_a_gpu_where_torch_has_no_cuda_fails_naming_the_setting(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with _one_rank(monkeypatch) as chosen, pytest.raises(RuntimeError) as err:
        distributed._worker(_job(use_gpu=True))
    message = str(err.value)
    assert message.startswith("neural.use_gpu: Spark gave this training process a GPU, but torch") and \
           "sees no CUDA device" in message, message
    assert chosen == {}  # refused before the process group and the loop: no silent CPU run


def test_the_loop_on_the_cpu_stays_in_float32_without_a_scaler_even_with_mixed_precision_on(tmp_path,
                                                                                            monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)  # the loop's own default: cpu
    MarchingScores.autocast_seen.clear()
    _, out = marching_run(dataclasses.replace(SETTINGS, mixed_precision=True), checkpoint_dir=str(tmp_path))
    assert set(MarchingScores.autocast_seen) == {("cpu", False, torch.float32)}
    assert torch.load(checkpoint.checkpoint_path(tmp_path), weights_only=True)["scaler"] == {}
    assert out["best_metric"] == 1.0 and out["best_epoch"] == 1


# --------------------------------------------------------------------------- CUDA (skipped without a CUDA device)


@pytest.mark.gpu
@requires_cuda
def test_a_process_given_a_gpu_trains_on_its_local_rank_device_with_nccl(monkeypatch):
    with _one_rank(monkeypatch) as chosen:
        result = distributed._worker(_job(use_gpu=True))
    assert chosen == {"device": torch.device("cuda", 0), "backend": "nccl"}
    assert [h["ndcg_at_1"] for h in result["history"]] == [0.0, 1.0, 0.0, 0.0]
    # The weights come back on the CPU, whatever device trained them.
    state = loop.state_dict_from_bytes(result["state_dict"])
    assert state["position"].device.type == "cpu"
    torch.testing.assert_close(state["position"], torch.tensor([2.0, 0.0, 2.0]))


@pytest.mark.gpu
@requires_cuda
def test_the_loop_picks_cuda_when_no_device_is_given():
    MarchingScores.autocast_seen.clear()
    model, _ = marching_run(dataclasses.replace(SETTINGS, mixed_precision=False))
    assert model.position.device.type == "cuda"
    assert {seen[0] for seen in MarchingScores.autocast_seen} == {"cuda"}


@pytest.mark.gpu
@requires_cuda
def test_mixed_precision_on_cuda_autocasts_to_bf16_without_a_scaler(tmp_path):
    if not torch.cuda.is_bf16_supported():
        pytest.skip("this CUDA device has no bf16: the fp16 test covers it")
    MarchingScores.autocast_seen.clear()
    _, out = marching_run(dataclasses.replace(SETTINGS, mixed_precision=True), device="cuda",
                          checkpoint_dir=str(tmp_path))
    assert set(MarchingScores.autocast_seen) == {("cuda", True, torch.bfloat16)}
    assert torch.load(checkpoint.checkpoint_path(tmp_path), weights_only=True)["scaler"] == {}
    # Whole learning-rate steps are exact in bf16: the same epochs and weights as in float32.
    assert [h["ndcg_at_1"] for h in out["history"]] == [0.0, 1.0, 0.0, 0.0]
    torch.testing.assert_close(loop.state_dict_from_bytes(out["state_dict"])["position"],
                               torch.tensor([2.0, 0.0, 2.0]))


@pytest.mark.gpu
@requires_cuda
def test_mixed_precision_without_bf16_autocasts_to_fp16_with_a_gradient_scaler(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: False)
    MarchingScores.autocast_seen.clear()
    _, out = marching_run(dataclasses.replace(SETTINGS, mixed_precision=True), device="cuda",
                          checkpoint_dir=str(tmp_path))
    assert set(MarchingScores.autocast_seen) == {("cuda", True, torch.float16)}
    scaler = torch.load(checkpoint.checkpoint_path(tmp_path), weights_only=True)["scaler"]
    assert scaler and scaler["scale"] > 0  # the GradScaler's state is checkpointed for a resume
    # A step the scaler skips (an overflow at its first scale) moves nothing; the others move by
    # whole steps: the run still reaches the metric's peak and returns its weights.
    assert out["best_metric"] == 1.0 and out["stopped_early"] is True
    best = loop.state_dict_from_bytes(out["state_dict"])["position"]
    assert best[1] == 0 and best[0] == best[2] and best[0] == pytest.approx(2.0, abs=1e-3)
