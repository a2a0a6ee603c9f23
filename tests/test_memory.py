"""Memory budgets: sizes, the refusal message, and the checks catalog-wide steps run first."""
from __future__ import annotations

import pytest

from recsys_spark import memory
from recsys_spark.memory import MemoryBudgetError


@pytest.mark.parametrize("text, want", [
    ("2g", 2 * 2**30), ("512m", 512 * 2**20), ("1536k", 1536 * 2**10), ("1048576", 2**20),
    ("1.5g", int(1.5 * 2**30)), ("4GiB", 4 * 2**30), (" 3 GB ", 3 * 2**30),
])
def test_parse_size(text, want):
    assert memory.parse_size(text) == want


def test_parse_size_rejects_nonsense():
    with pytest.raises(ValueError, match="not a memory size: 'lots'"):
        memory.parse_size("lots")


def test_require_names_need_budget_and_setting():
    memory.require("small", 59, 100, share=0.6, remedy="-")
    with pytest.raises(MemoryBudgetError) as refused:
        memory.require("EASE on 30000 items", 3 * 2**30, 4 * 2**30, share=0.5, remedy="Lower ease.max_items.")
    assert str(refused.value) == (
        "EASE on 30000 items needs about 3.0 GiB, over its budget of 2.0 GiB (50% of 4.0 GiB available). "
        "Lower ease.max_items.")


def test_python_cap_lowers_the_budget():
    memory.require_python("a step", 10 * 2**20, remedy="-")  # the machine has far more than 10 MiB free
    with pytest.raises(MemoryBudgetError, match="budget of 6.0 MiB"):
        memory.require_python("a step", 10 * 2**20, remedy="-", cap=10 * 2**20)


def test_available_memory_is_positive_and_below_the_machines():
    import psutil

    assert 0 < memory.python_available_bytes() <= psutil.virtual_memory().total


def test_training_check_counts_catalog_wide_layers_without_allocating_them():
    from recsys_spark.models import registry
    from recsys_spark.train import neural

    multvae = registry.get("multvae")
    # 10M items: Mult-VAE's encoder and decoder alone are 2 x 10M x 600 floats (45 GiB), never built.
    kwargs = {"n_users": 10, "n_items": 10_000_000, "params": {}}
    assert memory.parameter_bytes(multvae, kwargs) > 2 * 10_000_000 * 600 * 4
    with pytest.raises(MemoryBudgetError, match=r"training 'multvae' \(2 processes, 10000000 items\).*neural.models.multvae"):
        neural.check_training_memory(multvae, kwargs, name="multvae", n_items=10_000_000, batch_size=32,
                                     num_processes=2, available=64 * 2**30)
    # The same model on a 2,000-item catalog fits in 1 GiB, and one process needs half of two.
    small = {"n_users": 10, "n_items": 2000, "params": {}}
    one = neural.check_training_memory(multvae, small, name="multvae", n_items=2000, batch_size=32,
                                       num_processes=1, available=2**30)
    assert one < 2**30 * memory.PYTHON_SHARE / 2
    with pytest.raises(MemoryBudgetError, match="spark.executor.pyspark.memory"):
        neural.check_training_memory(multvae, small, name="multvae", n_items=2000, batch_size=32,
                                     num_processes=1, executor_python_memory="1m", available=2**30)


@pytest.mark.spark
def test_broadcast_over_the_driver_heap_is_refused(spark):
    import numpy as np

    from recsys_spark.scoring.scorers import DotProductScorer

    heap = memory.jvm_driver_heap_bytes(spark)
    assert heap > 256 * 2**20  # the session's 2g driver
    rows = int(heap * memory.JVM_SHARE / 2 / 4 / 8) + 1  # just over the budget at rank 8
    too_big = np.lib.stride_tricks.as_strided(np.zeros(1, np.float32), shape=(rows, 8), strides=(0, 0))
    with pytest.raises(MemoryBudgetError, match="broadcasting the item matrix.*spark.driver_memory"):
        DotProductScorer(spark, too_big, np.ones(rows, dtype=bool))


@pytest.mark.parametrize("name", ["sasrec", "gru4rec", "caser"])
def test_a_sequence_models_budget_counts_the_logits_of_every_position(name):
    """A sequence model scores the catalog at every position of a window (Caser: of the whole
    history), not once per user: its budget holds those rows, so 50k items at batch 32 and a
    200-item history are refused where one row per user would have passed."""
    import torch

    from recsys_spark.models import registry
    from recsys_spark.train import neural

    cls = registry.get(name)
    history_length, batch_size, n_items = 200, 32, 50_000
    rows = cls.score_rows_per_step(batch_size=batch_size, history_length=history_length, params={})
    # The positions the loss really scores: a batch of full histories through the model's own loss,
    # counting the rows of every [rows, n_items] matrix multiply it makes.
    model = cls.build(n_users=batch_size, n_items=300, params={})
    history = torch.randint(0, 300, (batch_size, history_length))
    seen = []
    real_matmul = torch.Tensor.__matmul__

    def counting(a, b):
        out = real_matmul(a, b)
        if out.dim() == 2 and out.shape[1] == 300:
            seen.append(out.shape[0])
        return out

    torch.Tensor.__matmul__ = counting
    try:
        from recsys_spark.models.base import TrainContext

        model.train()
        model.loss({"user_index": torch.arange(batch_size), "history": history,
                    "history_len": torch.full((batch_size,), history_length)},
                   TrainContext(n_items=300, sample_negatives=None))
    finally:
        torch.Tensor.__matmul__ = real_matmul
    assert seen and rows >= 3 * max(seen) > 3 * batch_size, (rows, seen)
    kwargs = {"n_users": 1000, "n_items": n_items, "params": {}}
    need = memory.training_need(memory.parameter_bytes(cls, kwargs), n_items=n_items, score_rows=rows)
    per_user = memory.training_need(memory.parameter_bytes(cls, kwargs), n_items=n_items, score_rows=3 * batch_size)
    # Memory that two processes counted one row per user would fit in, and the real need does not.
    available = int(2 * need / memory.PYTHON_SHARE * 0.9)
    assert 2 * per_user < available * memory.PYTHON_SHARE
    with pytest.raises(MemoryBudgetError, match=f"training '{name}'.*neural.history_length"):
        neural.check_training_memory(cls, kwargs, name=name, n_items=n_items, batch_size=batch_size,
                                     num_processes=2, available=available, history_length=history_length)
