"""One shape for every trained model: what each fit returns, evaluation scores and serving loads.

As pyspark.ml has Estimator -> Model, every family's fit here (popularity,
EASE, ALS, the neural models) returns a :class:`FittedModel`: a scorer over
the model's item columns, what it needs of a user to score them, its
artifacts and its metadata. It is saved as ``<warehouse>/models/<name>/``
(:mod:`recsys_spark.models.artifacts`) and loaded back by its kind:

* ``dot_product``: user and item factor tables (popularity as a rank-1 model,
  ALS, two-tower); users without a vector cannot be scored by it;
* ``item_item``: ``item_item.npy`` (EASE's B); a user is scored from their history;
* ``last_item``: ``transitions.npz`` (Markov's next-item rows and back-off); a user
  is scored from the last item of their time-ordered history;
* ``torch``: ``model.pt`` and the build arguments; a forward pass per batch
  of users (:class:`recsys_spark.scoring.torch_model.TorchModelScorer`).

A kind says how a model is stored and scored, not which family it is: a new
model family (neural or not) is a model file and a registry line
(:mod:`recsys_spark.models.registry`), and serving, evaluation and the
training jobs handle it through this type.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark.models import artifacts
from recsys_spark.models.artifacts import KIND_DOT_PRODUCT, KIND_ITEM_ITEM, KIND_LAST_ITEM, KIND_TORCH
from recsys_spark.schemas import FACTORS, ITEM_INDEX, USER_INDEX
from recsys_spark.scoring.scorers import DotProductScorer, ItemItemScorer, LastItemScorer, factor_matrix


@dataclass
class FittedModel:
    """A trained model ready to score, whatever its family.

    Attributes:
        name: the model's name (its folder under ``models/``).
        kind: ``dot_product``, ``item_item``, ``last_item`` or ``torch`` (see the module docstring).
        scorer: a :class:`recsys_spark.scoring.blocked.BatchScorer` over the model's item columns.
        item_known: [model items] bool, the items the model has a vector for.
        params: the hyperparameters it was fitted with.
        user_factors: ``user_index``, ``factors`` (dot-product models); None for a
            rank-1 model whose every user vector is [1] (popularity).
        item_factors: ``item_index``, ``factors`` (dot-product models: what is saved); None for
            a rank-1 model, whose table is built from its scorer's matrix when it is saved.
        item_vectors: [model items, d] embeddings for explanations and MMR, or None.
        max_users: users at or above this index have no embedding (torch models
            that read user ids); None: any user with history is scorable.
        min_history: the least history the model needs to score a user at all.
        state_dict, build_kwargs: a torch model's weights and ``RecModel.build`` arguments.
        metadata: loaded: the whole ``metadata.json``; fitted: fields to add to it when saved.
    """

    name: str
    kind: str
    scorer: Any
    item_known: np.ndarray
    params: dict[str, Any] = field(default_factory=dict)
    user_factors: DataFrame | None = None
    item_factors: DataFrame | None = None
    item_vectors: np.ndarray | None = None
    max_users: int | None = None
    min_history: int = 0
    state_dict: bytes | None = None
    build_kwargs: dict[str, Any] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        """Item columns the model scores (items indexed after training are not among them)."""
        return len(self.item_known)

    def scorable(self, n_items: int) -> np.ndarray:
        """[n_items] bool over today's catalog: the items this model can score."""
        out = np.zeros(n_items, dtype=bool)
        known = self.item_known[:n_items]
        out[: len(known)] = known
        return out

    def prepare_users(self, users: DataFrame) -> DataFrame:
        """``users`` (``user_index``, ``seen``) with what the scorer reads of them.

        Dot-product models read each user's vector: users without one are
        dropped (cold for this model). The others read ``seen``, in time order.
        """
        if self.kind != KIND_DOT_PRODUCT:
            return users
        if self.user_factors is None:  # rank-1 (popularity): every user's vector is [1]
            return users.withColumn(FACTORS, F.array(F.lit(1.0).cast("float")))
        return users.join(self.user_factors.select(USER_INDEX, FACTORS), USER_INDEX)

    def save(self, spark: SparkSession, warehouse: str, *, config: dict, n_users: int, n_items: int,
             metrics: dict | None = None, extra: dict | None = None) -> dict:
        """Write ``<warehouse>/models/<name>/``: the kind's artifacts, then ``metadata.json``."""
        if self.kind == KIND_DOT_PRODUCT:
            users = self.user_factors
            if users is None:  # saved as a table, so that readers see one layout for every dot-product model
                users = spark.range(n_users).select(F.col("id").cast("int").alias(USER_INDEX)).withColumn(
                    FACTORS, F.array(F.lit(1.0).cast("float")))
            items = self.item_factors
            if items is None:
                items = artifacts.factors_frame(spark, self.scorer.item_matrix, ITEM_INDEX)
            artifacts.save_factors(warehouse, self.name, user_factors=users, item_factors=items)
        elif self.kind == KIND_ITEM_ITEM:
            artifacts.save_item_item(spark, warehouse, self.name, self.scorer.matrix.local_path)
        elif self.kind == KIND_LAST_ITEM:
            artifacts.save_transitions(spark, warehouse, self.name, self.scorer.arrays)
        else:
            artifacts.save_state_dict(spark, warehouse, self.name, self.state_dict)
        return artifacts.save_metadata(spark, warehouse, self.name, kind=self.kind, params=self.params,
                                       config=config, n_users=n_users, n_items=n_items, metrics=metrics,
                                       extra={**self.metadata, **(extra or {})})

    def release(self) -> None:
        """Free what the driver holds for scoring (EASE's shipped matrix file) once no task needs it."""
        if self.kind == KIND_ITEM_ITEM:
            self.scorer.matrix.release()


# --------------------------------------------------------------------------- constructors, one per kind


def dot_product(spark: SparkSession, name: str, *, item_factors: DataFrame, n_items: int,
                user_factors: DataFrame | None = None, params: dict | None = None,
                metadata: dict | None = None) -> FittedModel:
    """A model whose score is user vector . item vector (the item side is collected: it is broadcast)."""
    rows = [(r[ITEM_INDEX], r[FACTORS]) for r in item_factors.select(ITEM_INDEX, FACTORS).collect()]
    rank = len(rows[0][1]) if rows else 1
    matrix, known = factor_matrix(rows, n_items, rank)
    return FittedModel(
        name, KIND_DOT_PRODUCT, DotProductScorer(spark, matrix, known), known, dict(params or {}),
        user_factors=user_factors, item_factors=item_factors,
        # A rank-1 "embedding" (popularity) says nothing about similarity.
        item_vectors=matrix if rank >= 2 else None, metadata=dict(metadata or {}),
    )


def rank_one(spark: SparkSession, name: str, item_scores: np.ndarray, *, params: dict | None = None) -> FittedModel:
    """Scores that are the same for every user (popularity) as a rank-1 dot-product model.

    Its factor table is built only if it is saved: the serving fallback and the
    cold-start report fit one per run and only score with it.
    """
    matrix = np.asarray(item_scores, dtype=np.float32)[:, None]
    known = np.ones(len(matrix), dtype=bool)
    return FittedModel(name, KIND_DOT_PRODUCT, DotProductScorer(spark, matrix, known), known, dict(params or {}))


def item_item(spark: SparkSession, name: str, *, matrix: np.ndarray | None = None, local_path: str | None = None,
              params: dict | None = None) -> FittedModel:
    """A model whose score is the user's binary history x an item-item matrix (EASE).

    The matrix is shipped to executors as a file (:class:`ShippedMatrix`), not
    kept on the driver. It scores users from their history, so it needs one.
    """
    scorer = ItemItemScorer(spark, matrix, local_path=local_path)
    return FittedModel(name, KIND_ITEM_ITEM, scorer, np.ones(scorer.n_items, dtype=bool), dict(params or {}),
                       min_history=1)


def last_item(spark: SparkSession, name: str, *, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
              source_weight: np.ndarray, backoff: np.ndarray, params: dict | None = None,
              metadata: dict | None = None) -> FittedModel:
    """A model that scores a user from their last item: that item's row of a sparse
    next-item matrix (CSR arrays) plus ``source_weight[last] x backoff`` (Markov).

    It needs a last item to be a model at all (``min_history`` 1); a last item it
    does not know gets ``backoff`` alone (:class:`LastItemScorer`).
    """
    scorer = LastItemScorer(spark, indptr=indptr, indices=indices, values=values, source_weight=source_weight,
                            backoff=backoff)
    return FittedModel(name, KIND_LAST_ITEM, scorer, np.ones(scorer.n_items, dtype=bool), dict(params or {}),
                       min_history=1, metadata=dict(metadata or {}))


def torch_model(spark: SparkSession, name: str, model_class, *, state_dict: bytes, build_kwargs: dict,
                history_length: int, params: dict | None = None, metadata: dict | None = None) -> FittedModel:
    """A neural model scored by its own forward pass (models that are not a dot product)."""
    from recsys_spark.scoring.torch_model import TorchModelScorer

    scorer = TorchModelScorer(spark, name, state_dict, build_kwargs, history_length=history_length)
    reads_ids = model_class.input_kind != "histories"
    return FittedModel(
        name, KIND_TORCH, scorer, np.ones(int(build_kwargs["n_items"]), dtype=bool), dict(params or {}),
        max_users=int(build_kwargs["n_users"]) if reads_ids else None,
        min_history=0 if reads_ids else 1,
        state_dict=state_dict, build_kwargs=build_kwargs, metadata=dict(metadata or {}),
    )


# --------------------------------------------------------------------------- loading


def load(spark: SparkSession, warehouse: str, name: str, *, history_length: int = 50) -> FittedModel:
    """``<warehouse>/models/<name>`` as a :class:`FittedModel` (``metadata`` is its ``metadata.json``).

    Raises:
        FileNotFoundError: no such model, or an artifact its kind needs is missing.
        ValueError: written with another schema version, or a kind this code does not know.
    """
    meta = artifacts.load_metadata(spark, warehouse, name)
    kind = meta.get("kind")
    n_items = int(meta["item_index_size"])
    params = dict(meta.get("params") or {})
    if kind == KIND_DOT_PRODUCT:
        model = dot_product(spark, name, item_factors=artifacts.read_item_factors(spark, warehouse, name),
                            n_items=n_items, user_factors=artifacts.read_user_factors(spark, warehouse, name),
                            params=params)
    elif kind == KIND_ITEM_ITEM:
        # EASE: B is [model items, model items]; items indexed after training
        # have no column (CatalogScorer pads them with -inf) and no row (add nothing).
        local = artifacts.load_item_item(spark, warehouse, name, tempfile.mkdtemp(prefix="recsys-serve-"))
        model = item_item(spark, name, local_path=local, params=params)  # hard-linked into the shipped file's folder
        os.remove(local)
    elif kind == KIND_LAST_ITEM:
        arrays = artifacts.load_transitions(spark, warehouse, name)
        missing = [key for key in LastItemScorer.ARRAYS if key not in arrays]
        if missing:
            raise ValueError(f"model '{name}': {artifacts.TRANSITIONS_FILE} lacks {missing}: retrain it")
        model = last_item(spark, name, **{key: arrays[key] for key in LastItemScorer.ARRAYS}, params=params)
    elif kind == KIND_TORCH:
        from recsys_spark.models import registry

        blob = artifacts.load_state_dict_bytes(spark, warehouse, name)
        model = torch_model(spark, name, registry.get(name), state_dict=blob, build_kwargs=torch_build_kwargs(meta),
                            history_length=int(meta.get("history_length") or history_length), params=params)
    else:
        raise ValueError(f"model '{name}' has kind '{kind}', which this code does not know")
    model.metadata = meta
    return model


def torch_build_kwargs(meta: dict) -> dict:
    """``RecModel.build`` keyword arguments from a torch model's metadata.

    ``metadata.build_kwargs`` when the trainer recorded them, else the index
    sizes and ``params`` (what ``build`` needs for models without item features).
    """
    if meta.get("build_kwargs"):
        return dict(meta["build_kwargs"])
    return {"n_users": int(meta["user_index_size"]), "n_items": int(meta["item_index_size"]),
            "params": dict(meta.get("params") or {})}


__all__ = ["FittedModel", "dot_product", "item_item", "last_item", "load", "rank_one", "torch_build_kwargs", "torch_model"]
