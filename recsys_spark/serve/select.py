"""Choosing the serving model and loading it for scoring."""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession

from recsys_spark import io
from recsys_spark.models import artifacts
from recsys_spark.scoring.scorers import DotProductScorer, ItemItemScorer
from recsys_spark.serve.errors import RecommendError


def select_model(metadata: dict[str, dict], primary_metric: str, requested: str | None = None) -> str:
    """The serving model: ``requested``, or (None / "best") the best on validation ``primary_metric``.

    Args:
        metadata: model name -> its ``metadata.json`` (``metrics.validation``).

    Ties go to the first name in sorted order, so the choice is reproducible.
    """
    if requested not in (None, "best"):
        if requested not in metadata:
            raise RecommendError(
                f"recommend.model='{requested}' has no trained model; found: {', '.join(sorted(metadata)) or '(none)'}"
            )
        return requested
    scored = [
        (name, validation_metric(meta, primary_metric)) for name, meta in sorted(metadata.items())
    ]
    scored = [(name, value) for name, value in scored if value is not None]
    if not scored:
        raise RecommendError(
            f"no model has a validation '{primary_metric}' to pick the best by "
            f"(models: {', '.join(sorted(metadata)) or '(none)'}); train one or set recommend.model"
        )
    return max(scored, key=lambda pair: pair[1])[0]


def validation_metric(meta: dict, primary_metric: str) -> float | None:
    value = (meta.get("metrics") or {}).get("validation", {}).get(primary_metric)
    return None if value is None else float(value)


@dataclass
class ServingModel:
    """A trained model ready to score, whatever its kind.

    Attributes:
        scorer: a :class:`recsys_spark.scoring.blocked.BatchScorer` over the model's columns.
        user_factors: ``user_index``, ``factors`` for dot-product models (users
            without a row fall back to popularity); None otherwise.
        max_users: users at or above this index have no embedding (torch models
            that read user ids); None: any user with history is scorable.
        scorable: [n_items] bool, items the model can score (has a vector for).
        item_vectors: [n_items, d] item embeddings (rank >= 2) for explanations
            and MMR, or None.
    """

    name: str
    kind: str
    metadata: dict
    scorer: Any
    scorable: np.ndarray
    user_factors: DataFrame | None = None
    max_users: int | None = None
    item_vectors: np.ndarray | None = None
    min_history: int = 0  # the least history the model needs to score a user at all


def load_serving_model(
    spark: SparkSession, warehouse: str, name: str, *, n_items: int, history_length: int = 50
) -> ServingModel:
    """Load ``<warehouse>/models/<name>`` (kind dot_product, item_item or torch) for scoring ``n_items``."""
    meta = artifacts.load_metadata(spark, warehouse, name)
    kind = meta.get("kind")
    if kind == artifacts.KIND_DOT_PRODUCT:
        matrix, known = artifacts.item_matrix(artifacts.read_item_factors(spark, warehouse, name), n_items)
        return ServingModel(
            name, kind, meta, DotProductScorer(spark, matrix, known), known,
            user_factors=artifacts.read_user_factors(spark, warehouse, name),
            # A rank-1 "embedding" (popularity) says nothing about similarity.
            item_vectors=matrix if matrix.shape[1] >= 2 else None,
        )
    if kind == artifacts.KIND_ITEM_ITEM:
        # EASE: B is [model items, model items]; items indexed after training
        # have no column (CatalogScorer pads them with -inf) and no row (add nothing).
        import tempfile

        local = artifacts.load_item_item(spark, warehouse, name, tempfile.mkdtemp(prefix="recsys-serve-"))
        scorer = ItemItemScorer(spark, local_path=local)  # hard-linked into the shipped file's folder
        os.remove(local)
        return ServingModel(
            name, kind, meta, scorer, np.arange(n_items) < scorer.n_items, min_history=1
        )
    if kind == artifacts.KIND_TORCH:
        return _load_torch_model(spark, warehouse, name, meta, n_items=n_items, history_length=history_length)
    raise RecommendError(f"model '{name}' has kind '{kind}', which serving does not know")


def torch_build_kwargs(meta: dict) -> dict:
    """``RecModel.build`` keyword arguments from a torch model's metadata.

    ``metadata.build_kwargs`` when the trainer recorded them, else the index
    sizes and ``params`` (what ``build`` needs for models without item features).
    """
    if meta.get("build_kwargs"):
        return dict(meta["build_kwargs"])
    return {"n_users": int(meta["user_index_size"]), "n_items": int(meta["item_index_size"]),
            "params": dict(meta.get("params") or {})}


def _load_torch_model(spark, warehouse, name, meta, *, n_items, history_length) -> ServingModel:
    from recsys_spark.models import registry
    from recsys_spark.scoring.torch_model import TorchModelScorer, model_from_bytes

    try:
        blob = artifacts.load_state_dict_bytes(spark, warehouse, name)
    except FileNotFoundError as exc:
        raise RecommendError(str(exc)) from None
    kwargs = torch_build_kwargs(meta)
    history_length = int((meta.get("config") or {}).get("neural", {}).get("history_length", history_length))
    scorer = TorchModelScorer(spark, name, blob, kwargs, history_length=history_length)
    cls = registry.get(name)
    model_items = int(kwargs["n_items"])
    item_vectors = None
    try:  # a model with item vectors (dot-product style) can explain; others cannot
        vectors = model_from_bytes(name, blob, kwargs).item_vectors().detach().cpu().numpy().astype(np.float32)
        item_vectors = np.zeros((n_items, vectors.shape[1]), dtype=np.float32)
        item_vectors[: min(n_items, model_items)] = vectors[: min(n_items, model_items)]
    except (NotImplementedError, AttributeError):
        item_vectors = None
    return ServingModel(
        name, artifacts.KIND_TORCH, meta, scorer, np.arange(n_items) < model_items,
        max_users=None if cls.input_kind == "histories" else int(kwargs["n_users"]),
        item_vectors=item_vectors,
        min_history=1 if cls.input_kind == "histories" else 0,
    )


def list_models(spark: SparkSession, warehouse: str) -> dict[str, dict]:
    """Every model folder's metadata (folders without readable metadata are skipped)."""
    out = {}
    for name in io.list_dir(spark, io.models_root(warehouse)):
        if name.startswith((".", "_")):
            continue
        try:
            out[name] = artifacts.load_metadata(spark, warehouse, name)
        except (FileNotFoundError, ValueError) as exc:
            print(f"recommend: skipping model '{name}': {exc}", flush=True)
    return out
