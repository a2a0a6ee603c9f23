"""Memory budgets: a step that holds something whole checks its need before it starts.

Catalog-wide structures (EASE's item x item matrix, a broadcast item matrix,
Mult-VAE's catalog-wide layers) grow with the square or the size of the
catalog, not with the data per task, so Spark's spilling cannot save them. Each
such step computes what it will hold, compares it with what the process really
has, and refuses at once with a :class:`MemoryBudgetError` naming the number and
the setting to change, rather than dying later with a JVM OutOfMemoryError, a
Python MemoryError or the kernel's OOM killer.

What a process "really has" is the smallest of: the memory the machine has
available now, the process's cgroup limit (containers, YARN/Kubernetes
executors), and its address-space rlimit. The JVM driver's share is its max heap
(``spark.driver.memory``).
"""
from __future__ import annotations

import os
import re
import resource
from pathlib import Path

import psutil

# The share of available memory one step may plan to use: the rest is the
# interpreter, Spark's Python workers, the page cache and whatever runs beside us.
PYTHON_SHARE = 0.6
# A JVM needs room beside what it is asked to hold (execution memory, the
# serialised copy a broadcast makes, GC headroom).
JVM_SHARE = 0.4

_UNITS = {"": 1, "b": 1, "k": 2**10, "m": 2**20, "g": 2**30, "t": 2**40}


class MemoryBudgetError(ValueError):
    """A step would need more memory than the process has; the message names the setting."""


def parse_size(text: str | int) -> int:
    """Bytes from a JVM-style size (``512m``, ``2g``, ``1536k``, ``1048576``)."""
    if isinstance(text, int):
        return text
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)i?b?\s*", str(text).lower())
    if not match:
        raise ValueError(f"not a memory size: '{text}' (expected e.g. 512m or 2g)")
    return int(float(match.group(1)) * _UNITS[match.group(2)])


def format_size(n: float) -> str:
    for unit, scale in (("GiB", 2**30), ("MiB", 2**20), ("KiB", 2**10)):
        if abs(n) >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def _cgroup_headroom() -> int | None:
    """Bytes left under this process's cgroup memory limit (v2, then v1), or None when unlimited."""
    candidates = [
        (Path("/sys/fs/cgroup/memory.max"), Path("/sys/fs/cgroup/memory.current")),
        (Path("/sys/fs/cgroup/memory/memory.limit_in_bytes"), Path("/sys/fs/cgroup/memory/memory.usage_in_bytes")),
    ]
    for limit_file, usage_file in candidates:
        try:
            raw = limit_file.read_text().strip()
            if raw == "max":
                return None
            limit = int(raw)
            if limit >= 2**60:  # v1's "no limit"
                return None
            return max(0, limit - int(usage_file.read_text().strip()))
        except (OSError, ValueError):
            continue
    return None


def python_available_bytes() -> int:
    """What this Python process can still allocate: available RAM, cgroup headroom, rlimit."""
    limits = [psutil.virtual_memory().available]
    cgroup = _cgroup_headroom()
    if cgroup is not None:
        limits.append(cgroup)
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft != resource.RLIM_INFINITY:
        limits.append(max(0, soft - psutil.Process(os.getpid()).memory_info().vms))
    return min(limits)


def jvm_driver_heap_bytes(spark) -> int:
    """The driver JVM's max heap (what ``spark.driver.memory`` gave it)."""
    return int(spark.sparkContext._jvm.java.lang.Runtime.getRuntime().maxMemory())


def require(what: str, need: int, have: int, *, share: float, remedy: str) -> None:
    """Refuse ``what`` unless ``need`` bytes fit in ``share`` of ``have``.

    Raises:
        MemoryBudgetError: naming the need, the budget and ``remedy`` (the setting to change).
    """
    budget = int(have * share)
    if need > budget:
        raise MemoryBudgetError(
            f"{what} needs about {format_size(need)}, over its budget of {format_size(budget)} "
            f"({share:.0%} of {format_size(have)} available). {remedy}"
        )


def require_python(what: str, need: int, *, remedy: str, cap: int | None = None) -> None:
    """:func:`require` against this Python process's available memory (at most ``cap`` bytes, when given)."""
    have = python_available_bytes()
    require(what, need, have if cap is None else min(have, cap), share=PYTHON_SHARE, remedy=remedy)


def require_driver_jvm(spark, what: str, need: int, *, remedy: str) -> None:
    """:func:`require` against the driver JVM's heap (e.g. a broadcast: the JVM serialises it whole)."""
    require(what, need, jvm_driver_heap_bytes(spark), share=JVM_SHARE, remedy=remedy)


def require_broadcast(spark, what: str, nbytes: int) -> None:
    """Refuse a broadcast the driver JVM cannot hold: it serialises the pickled value whole in its heap."""
    require_driver_jvm(
        spark, f"broadcasting {what} to the scoring tasks", 2 * nbytes,
        remedy="Raise spark.driver_memory, or use a model with a smaller item side (rank, catalog).",
    )


def parameter_bytes(model_class, build_kwargs: dict) -> int:
    """Bytes of a model's parameters, from a build on PyTorch's meta device (nothing allocated).

    A model that inspects its item features' values while building cannot be
    built on the meta device: it is estimated without them (feature layers are
    small beside the catalog-wide tables and layers this check is for).
    """
    import torch

    try:
        with torch.device("meta"):
            model = model_class.build(**build_kwargs)
    except (RuntimeError, NotImplementedError):
        with torch.device("meta"):
            model = model_class.build(**{k: v for k, v in build_kwargs.items() if k != "item_features"})
    return sum(p.numel() * p.element_size() for p in model.parameters())


# Per training process: weights, gradients, Adam's two moments and DDP's gradient buckets.
TRAINING_COPIES = 5
# Rank 0 validates users in blocks of this many against the whole catalog (local_metrics).
VALIDATION_BLOCK_USERS = 512


def training_need(param_bytes: int, *, n_items: int, score_rows: int) -> int:
    """Bytes one training process needs beyond the interpreter: parameter copies plus
    [rows, items] blocks in float32: validation scores (:data:`VALIDATION_BLOCK_USERS` rows) or a
    training step's scores, gradients and copies (``score_rows``: the model's
    ``score_rows_per_step``), whichever is larger."""
    return TRAINING_COPIES * param_bytes + 4 * max(VALIDATION_BLOCK_USERS, score_rows) * n_items


# A graph model's adjacency, per undirected training edge, at its build's peak: the CSR it
# keeps (both directions, an int64 column and a float32 value each: 24 bytes), the
# sort's temporaries, and the job's two int32 arrays of pairs (8 bytes). Measured peak:
# 60-65 + 8 bytes an edge at 1M edges, 48 + 8 at 10M (scripts/bench_lightgcn_memory.py), so 80.
GRAPH_BYTES_PER_EDGE = 80


def graph_training_bytes(*, n_edges: int, n_nodes: int, dim: int, layers: int) -> int:
    """Bytes one training process of a graph model (LightGCN) holds beyond its parameters.

    The normalised adjacency (``n_edges`` x :data:`GRAPH_BYTES_PER_EDGE`) plus
    the layer embeddings, ``n_nodes x dim x (layers + 1)`` float32, twice (the
    forward pass's layers and their gradients in the backward pass). Like the
    parameters, it grows with the catalog and the users, not with the batch:
    Spark's spilling cannot help it.
    """
    adjacency = n_edges * GRAPH_BYTES_PER_EDGE
    layer_embeddings = 4 * n_nodes * dim * (layers + 1)
    return adjacency + 2 * layer_embeddings


def graph_collect_bytes(n_edges: int) -> int:
    """Bytes the driver needs to collect a graph's training pairs as two int32 arrays: the
    Arrow batches, the pandas frame and the arrays (about three copies of 8 bytes a pair)."""
    return 3 * 8 * n_edges


__all__ = [
    "GRAPH_BYTES_PER_EDGE",
    "JVM_SHARE",
    "MemoryBudgetError",
    "PYTHON_SHARE",
    "TRAINING_COPIES",
    "format_size",
    "graph_collect_bytes",
    "graph_training_bytes",
    "jvm_driver_heap_bytes",
    "parameter_bytes",
    "parse_size",
    "python_available_bytes",
    "require",
    "require_broadcast",
    "require_driver_jvm",
    "require_python",
    "training_need",
]
