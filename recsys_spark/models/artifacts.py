"""Model folders: ``<warehouse>/models/<name>/`` with ``metadata.json`` and, for
dot-product models, ``user_factors`` / ``item_factors`` tables; for item-item
models (EASE), ``item_item.npy``; for last-item models (Markov), ``transitions.npz``;
for torch models, ``model.pt``.

``metadata.json`` records what a reader needs to trust the vectors: the model
name and kind, its hyperparameters, the resolved config, the schema version,
the sizes of the id indexes the vectors are numbered by, and its metrics.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from recsys_spark import io
from recsys_spark.schemas import FACTORS, ITEM_FACTORS, SCHEMA_VERSION, USER_FACTORS

KIND_DOT_PRODUCT = "dot_product"  # user_factors . item_factors
KIND_ITEM_ITEM = "item_item"  # user history x item_item.npy (EASE's item-item matrix)
KIND_TORCH = "torch"  # a neural model that needs a forward pass (state_dict + config)
KIND_LAST_ITEM = "last_item"  # the user's last item's row of transitions.npz, plus a back-off (Markov)


def metadata_path(warehouse: str, model: str) -> str:
    return io.model_file(warehouse, model, "metadata.json")


def save_factors(
    warehouse: str,
    model: str,
    *,
    user_factors: DataFrame | None,
    item_factors: DataFrame,
) -> None:
    """Write a model's vectors (``user_index``/``item_index``, ``factors``)."""
    if user_factors is not None:
        io.write_table(user_factors, warehouse, USER_FACTORS, path=io.table_path(warehouse, USER_FACTORS, model=model))
    io.write_table(item_factors, warehouse, ITEM_FACTORS, path=io.table_path(warehouse, ITEM_FACTORS, model=model))


def save_metadata(
    spark: SparkSession,
    warehouse: str,
    model: str,
    *,
    kind: str,
    params: dict[str, Any],
    config: dict[str, Any],
    n_users: int,
    n_items: int,
    metrics: dict[str, Any] | None = None,
    extra: dict[str, Any] | None = None,
) -> dict:
    meta = {
        "model": model,
        "kind": kind,
        "params": params,
        "schema_version": SCHEMA_VERSION,
        "user_index_size": n_users,
        "item_index_size": n_items,
        "metrics": metrics or {},
        "trained_at": dt.datetime.now(dt.timezone.utc).isoformat(),
        "config": config,
        **(extra or {}),
    }
    io.write_json(spark, metadata_path(warehouse, model), meta)
    return meta


ITEM_ITEM_FILE = "item_item.npy"  # an item_item-kind model's matrix ([model items, model items] float32)


def item_item_path(warehouse: str, model: str) -> str:
    return io.model_file(warehouse, model, ITEM_ITEM_FILE)


def save_item_item(spark: SparkSession, warehouse: str, model: str, local_npy: str) -> str:
    """Copy an item-item matrix (a local ``.npy``) into the model folder, streamed.

    A file, not a factors table: a 20,000-item matrix as table rows would pass
    400 million floats through Python objects and the JVM.
    """
    io.copy_from_local(spark, local_npy, item_item_path(warehouse, model))
    return item_item_path(warehouse, model)


def load_item_item(spark: SparkSession, warehouse: str, model: str, local_dir: str) -> str:
    """Copy a model's item-item matrix to ``local_dir``; the local path (memory-map it, don't read it)."""
    src = item_item_path(warehouse, model)
    if not io.path_exists(spark, src):
        raise FileNotFoundError(f"model '{model}' has no {ITEM_ITEM_FILE} at {src} (train it first)")
    local = f"{local_dir}/{ITEM_ITEM_FILE}"
    io.copy_to_local(spark, src, local)
    return local


TRANSITIONS_FILE = "transitions.npz"  # a last_item-kind model's arrays (scoring.scorers.LastItemScorer)


def transitions_path(warehouse: str, model: str) -> str:
    return io.model_file(warehouse, model, TRANSITIONS_FILE)


def save_transitions(spark: SparkSession, warehouse: str, model: str, arrays: dict[str, np.ndarray]) -> str:
    """Write a last-item model's arrays (sparse next-item rows, back-off) as ``transitions.npz``.

    A file, as ``item_item.npy``: the arrays are what the scorer broadcasts, read back whole.
    """
    import os
    import tempfile

    with tempfile.TemporaryDirectory(prefix="recsys-transitions-") as tmp:
        local = os.path.join(tmp, TRANSITIONS_FILE)
        np.savez(local, **arrays)
        io.copy_from_local(spark, local, transitions_path(warehouse, model))
    return transitions_path(warehouse, model)


def load_transitions(spark: SparkSession, warehouse: str, model: str) -> dict[str, np.ndarray]:
    """The arrays :func:`save_transitions` wrote."""
    import os
    import tempfile

    src = transitions_path(warehouse, model)
    if not io.path_exists(spark, src):
        raise FileNotFoundError(f"model '{model}' has no {TRANSITIONS_FILE} at {src} (train it first)")
    with tempfile.TemporaryDirectory(prefix="recsys-transitions-") as tmp:
        local = os.path.join(tmp, TRANSITIONS_FILE)
        io.copy_to_local(spark, src, local)
        with np.load(local, allow_pickle=False) as npz:
            return {key: npz[key] for key in npz.files}


MODEL_FILE = "model.pt"  # a torch-kind model's state dict (torch.save), beside metadata.json


def state_dict_path(warehouse: str, model: str) -> str:
    return io.model_file(warehouse, model, MODEL_FILE)


def save_state_dict(spark: SparkSession, warehouse: str, model: str, data: bytes) -> str:
    """Write a torch-kind model's state dict bytes to ``model.pt`` (any Hadoop filesystem)."""
    path = state_dict_path(warehouse, model)
    io.write_bytes(spark, path, data)
    return path


def load_state_dict_bytes(spark: SparkSession, warehouse: str, model: str) -> bytes:
    """The bytes ``save_state_dict`` wrote (for ``torch.load(..., weights_only=True)``)."""
    path = state_dict_path(warehouse, model)
    if not io.path_exists(spark, path):
        raise FileNotFoundError(f"model '{model}' has no {MODEL_FILE} at {path} (train it first)")
    return io.read_bytes(spark, path)


def load_metadata(spark: SparkSession, warehouse: str, model: str) -> dict:
    path = metadata_path(warehouse, model)
    if not io.path_exists(spark, path):
        raise FileNotFoundError(f"model '{model}' not found: no {path} (train it first)")
    meta = io.read_json(spark, path)
    if meta.get("schema_version") != SCHEMA_VERSION:
        raise ValueError(
            f"model '{model}' was written with schema version {meta.get('schema_version')}, "
            f"this code reads {SCHEMA_VERSION}: retrain it"
        )
    return meta


def read_user_factors(spark: SparkSession, warehouse: str, model: str) -> DataFrame:
    return io.read_table(spark, warehouse, USER_FACTORS, path=io.table_path(warehouse, USER_FACTORS, model=model))


def read_item_factors(spark: SparkSession, warehouse: str, model: str) -> DataFrame:
    return io.read_table(spark, warehouse, ITEM_FACTORS, path=io.table_path(warehouse, ITEM_FACTORS, model=model))


def factors_frame(spark: SparkSession, matrix: np.ndarray, index_col: str) -> DataFrame:
    """A factors table from a dense driver-side matrix (small models: popularity, EASE)."""
    rows = [(i, matrix[i].astype(float).tolist()) for i in range(matrix.shape[0])]
    return spark.createDataFrame(rows, f"{index_col} int, {FACTORS} array<float>")


__all__ = [
    "KIND_DOT_PRODUCT",
    "KIND_ITEM_ITEM",
    "ITEM_ITEM_FILE",
    "KIND_LAST_ITEM",
    "KIND_TORCH",
    "MODEL_FILE",
    "factors_frame",
    "item_item_path",
    "load_item_item",
    "load_transitions",
    "load_metadata",
    "load_state_dict_bytes",
    "read_item_factors",
    "read_user_factors",
    "save_factors",
    "save_item_item",
    "save_metadata",
    "save_state_dict",
    "save_transitions",
    "state_dict_path",
    "TRANSITIONS_FILE",
    "transitions_path",
]
