"""Serving: the top-N items per user, validated and published for downstream readers.

Three layers, each usable alone:

* **Transforms** (no I/O): every known user's time-ordered history and source
  (``model``, or ``popularity_fallback`` for users with fewer than
  ``recommend.min_history`` items or no vector in the model); a candidate pool
  per user from the blocked scorer (:func:`recsys_spark.scoring.top_k`, never a
  users x items cross join) with seen and excluded items masked; optional MMR
  re-ranking (Carbonell & Goldstein, SIGIR 1998) over item embeddings (cosine)
  or genres (Jaccard); an explanation per row; raw ids.
* **Checks**: :func:`validate` (every rule a published run must meet) and
  :func:`quality_gate` (the model's validation metric against the last
  published run's, catalog coverage).
* **Publish protocol** (:func:`publish`): write to a staging directory, read it
  back and validate it, gate it, add ``_manifest.json`` and ``_SUCCESS``, rename
  it into ``recommendations/run_date=D`` (``io.publish_directory``: a reader sees
  the old run or the new one, never a mix), then replace ``_latest.json``
  atomically and delete runs beyond ``recommend.keep_runs``.

:func:`run` wires them together for ``jobs/recommend.py``.
"""
from __future__ import annotations

import datetime as dt
import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark.config import Config, RecommendConf
from recsys_spark.models import artifacts, baselines
from recsys_spark.schemas import (
    INTERACTIONS,
    ITEM_ID,
    ITEM_INDEX,
    ITEM_INDEX_TABLE,
    ITEMS,
    RECOMMENDATIONS,
    SCHEMA_VERSION,
    USER_ID,
    USER_INDEX,
    USER_INDEX_TABLE,
)
from recsys_spark.scoring import DotProductScorer, ItemItemScorer, top_k

SOURCE_MODEL = "model"
SOURCE_FALLBACK = "popularity_fallback"
SOURCES = (SOURCE_MODEL, SOURCE_FALLBACK)
MANIFEST = "_manifest.json"
SUCCESS = "_SUCCESS"
LATEST = "_latest.json"
STAGING = "_staging"
RUN_PREFIX = "run_date="


class RecommendError(RuntimeError):
    """The run cannot be published; the message says why."""


class ValidationFailed(RecommendError):
    """The staged output breaks a rule of the recommendations contract."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("staged recommendations failed validation:\n  - " + "\n  - ".join(problems))


class QualityGateRefused(RecommendError):
    """The run is worse than the last published one (or too narrow); ``--force`` overrides."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("quality gate: " + "; ".join(failures) + " (re-run with --force to publish anyway)")


# --------------------------------------------------------------------------- the serving model


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
        (name, _validation_metric(meta, primary_metric)) for name, meta in sorted(metadata.items())
    ]
    scored = [(name, value) for name, value in scored if value is not None]
    if not scored:
        raise RecommendError(
            f"no model has a validation '{primary_metric}' to pick the best by "
            f"(models: {', '.join(sorted(metadata)) or '(none)'}); train one or set recommend.model"
        )
    return max(scored, key=lambda pair: pair[1])[0]


def _validation_metric(meta: dict, primary_metric: str) -> float | None:
    value = (meta.get("metrics") or {}).get("validation", {}).get(primary_metric)
    return None if value is None else float(value)


class CatalogScorer:
    """Wraps a scorer so that every score row spans the whole catalog and excluded items are -inf.

    A model trained before the catalog grew scores fewer columns than there are
    items now: the new ones get -inf (no evidence). Excluded items (out of
    stock, blocked) get -inf, so ``top_k`` never returns them and the pool is
    filled from the rest.
    """

    def __init__(self, spark: SparkSession, inner, n_items: int, excluded: np.ndarray | None = None):
        self.inner = inner
        self.n_items = int(n_items)
        idx = np.flatnonzero(excluded) if excluded is not None else np.zeros(0, dtype=np.int64)
        self._excluded = spark.sparkContext.broadcast(idx.astype(np.int64)) if len(idx) else None

    def score(self, batch: pd.DataFrame):
        import torch

        scores = self.inner.score(batch)
        if scores.shape[1] < self.n_items:
            pad = torch.full((scores.shape[0], self.n_items - scores.shape[1]), float("-inf"), dtype=scores.dtype)
            scores = torch.cat([scores, pad], dim=1)
        if self._excluded is not None:
            scores[:, torch.from_numpy(self._excluded.value)] = float("-inf")
        return scores


@dataclass
class ServingModel:
    """A trained model ready to score, whatever its kind.

    Attributes:
        scorer: a :class:`recsys_spark.scoring.BatchScorer` over the model's columns.
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
    from recsys_spark.models.torch_scorer import TorchModelScorer, model_from_bytes

    path = f"{io.model_dir(warehouse, name)}/model.pt"
    if not io.path_exists(spark, path):
        raise RecommendError(f"model '{name}' (kind torch) has no {path}")
    # binaryFiles reads through the Hadoop FileSystem, so any warehouse URI works.
    blob = bytes(spark.sparkContext.binaryFiles(path).first()[1])
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


# --------------------------------------------------------------------------- transforms


def user_histories_ordered(interactions: DataFrame) -> DataFrame:
    """``user_index``, ``seen``: each user's items in time order (last interaction, then index).

    Time order matters to models that read the most recent history; the
    tie-break by index makes the array (and so the output) reproducible.
    """
    ordered = F.array_sort(F.collect_list(F.struct(F.col("last_time"), F.col(ITEM_INDEX))))
    return interactions.groupBy(USER_INDEX).agg(ordered.alias("_h")).select(
        USER_INDEX, F.col(f"_h.{ITEM_INDEX}").alias("seen")
    )


def assign_sources(
    user_index: DataFrame,
    histories: DataFrame,
    *,
    min_history: int,
    model_users: DataFrame | None = None,
    max_users: int | None = None,
) -> DataFrame:
    """Every known user with ``seen`` (empty when none), ``n_history`` and ``source``.

    A user is served by the model when they have at least ``min_history`` items
    and the model can score them: a row in ``model_users`` (dot-product
    models' user factors) and an index below ``max_users`` (torch models), when
    given. Everyone else gets the popularity fallback.
    """
    users = user_index.select(USER_INDEX).join(histories, USER_INDEX, "left").withColumn(
        "seen", F.coalesce(F.col("seen"), F.array().cast("array<int>"))
    ).withColumn("n_history", F.size("seen"))
    ok = F.col("n_history") >= F.lit(min_history)
    if max_users is not None:
        ok = ok & (F.col(USER_INDEX) < F.lit(max_users))
    if model_users is not None:
        users = users.join(model_users.select(USER_INDEX).withColumn("_has_model", F.lit(True)), USER_INDEX, "left")
        ok = ok & F.col("_has_model").isNotNull()
    return users.withColumn("source", F.when(ok, SOURCE_MODEL).otherwise(SOURCE_FALLBACK)).select(
        USER_INDEX, "seen", "n_history", "source"
    )


def with_unit_factors(users: DataFrame) -> DataFrame:
    """Popularity as a rank-1 dot-product model: every user's vector is [1]."""
    return users.withColumn("factors", F.array(F.lit(1.0).cast("float")))


def candidates(
    users: DataFrame,
    model_scorer,
    fallback_scorer,
    *,
    pool: int,
    exclude_seen: bool,
    batch_users: int = 512,
    user_factors: DataFrame | None = None,
) -> DataFrame:
    """Each user's top ``pool`` items from their source, blocked scoring for both.

    Args:
        users: :func:`assign_sources` output.
        model_scorer / fallback_scorer: :class:`CatalogScorer` s of the serving
            model and of recent popularity (rank-1 dot product).
        user_factors: joined to model users when the model is a dot product.

    Returns:
        ``user_index``, ``item_index``, ``score``, ``rank``, ``source``.
    """
    model_users = users.where(F.col("source") == SOURCE_MODEL)
    if user_factors is not None:
        model_users = model_users.join(user_factors.select(USER_INDEX, "factors"), USER_INDEX)
    fallback_users = with_unit_factors(users.where(F.col("source") == SOURCE_FALLBACK))
    common = dict(k=pool, exclude_seen=exclude_seen, batch_users=batch_users)
    return top_k(model_users, model_scorer, **common).withColumn("source", F.lit(SOURCE_MODEL)).unionByName(
        top_k(fallback_users, fallback_scorer, **common).withColumn("source", F.lit(SOURCE_FALLBACK))
    )


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero): dot products become cosines."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


def genre_matrix(genres_by_item: dict[int, list[str] | None], n_items: int) -> np.ndarray:
    """Multi-hot [n_items, n_genres] (float32) from item index -> genres."""
    vocab = sorted({g for gs in genres_by_item.values() if gs for g in gs})
    col = {g: j for j, g in enumerate(vocab)}
    m = np.zeros((n_items, max(len(vocab), 1)), dtype=np.float32)
    for i, gs in genres_by_item.items():
        if 0 <= i < n_items and gs:
            m[i, [col[g] for g in gs]] = 1.0
    return m


def cosine_similarity(unit_vectors: np.ndarray) -> np.ndarray:
    """[..., P, P] cosines of [..., P, d] unit-length vectors."""
    return np.matmul(unit_vectors, np.swapaxes(unit_vectors, -1, -2))


def jaccard_similarity(multi_hot: np.ndarray) -> np.ndarray:
    """[..., P, P] Jaccard similarities of [..., P, g] genre sets (0 where both are empty)."""
    inter = np.matmul(multi_hot, np.swapaxes(multi_hot, -1, -2))
    sizes = multi_hot.sum(-1)
    union = sizes[..., :, None] + sizes[..., None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def mmr_rerank(relevance: np.ndarray, similarity: np.ndarray, *, lam: float, n: int) -> np.ndarray:
    """Maximal Marginal Relevance order of each row's candidates (batched, greedy).

    Each step picks ``argmax lam * rel(i) - (1 - lam) * max_{j chosen} sim(i, j)``,
    with each row's relevance min-max scaled to [0, 1] so that ``lam`` means
    the same for every model's score scale. Ties go to the better-ranked
    candidate, so ``lam = 1`` keeps the original order.

    Args:
        relevance: [B, P] candidate scores in rank order; NaN / -inf pad rows
            with fewer than P candidates.
        similarity: [B, P, P] similarities between each row's candidates.

    Returns:
        [B, min(n, P)] candidate positions in MMR order, -1 past a row's candidates.
    """
    rel = np.asarray(relevance, dtype=np.float64)
    batch, width = rel.shape
    k = min(n, width)
    valid = np.isfinite(rel)
    lo = np.where(valid, rel, np.inf).min(axis=1, keepdims=True)
    hi = np.where(valid, rel, -np.inf).max(axis=1, keepdims=True)
    span = hi - lo
    scaled = np.where(span > 0, (rel - lo) / np.where(span > 0, span, 1.0), 1.0)
    rows = np.arange(batch)
    available = valid.copy()
    max_sim = np.zeros((batch, width))
    order = np.full((batch, k), -1, dtype=np.int64)
    for step in range(k):
        objective = lam * scaled - (1.0 - lam) * max_sim if step else scaled.copy()
        objective[~available] = -np.inf
        pick = objective.argmax(axis=1)
        ok = available[rows, pick]
        order[ok, step] = pick[ok]
        available[rows[ok], pick[ok]] = False
        picked_sim = similarity[rows, :, pick]
        max_sim = picked_sim if step == 0 else np.maximum(max_sim, picked_sim)
    return order


def explain(
    recommended: np.ndarray, history: np.ndarray, unit_vectors: np.ndarray | None = None,
    *, item_item: np.ndarray | None = None,
) -> np.ndarray:
    """For each recommended item, the history item that best accounts for it, -1 when none.

    With ``unit_vectors`` (embedding models): the most similar history item (cosine);
    an item without a vector (a zero row: the model never saw it) neither explains
    nor is explained. With ``item_item`` (EASE's B, [items, model items]): the
    history item contributing most to the score (a user's score for r is the sum
    of B[h, r] over history items h), and only a positive contribution explains.
    The recommended item itself is never its own explanation (it can be in the
    history when seen items are not excluded); ties go to the earlier history item.
    """
    out = np.full(len(recommended), -1, dtype=np.int64)
    history = np.asarray(history, dtype=np.int64)
    recommended = np.asarray(recommended, dtype=np.int64)
    if len(recommended) == 0 or len(history) == 0:
        return out
    if item_item is not None:
        sims = np.full((len(recommended), len(history)), -np.inf)
        known_rec, known_hist = recommended < item_item.shape[1], history < item_item.shape[0]
        contrib = item_item[np.ix_(history[known_hist], recommended[known_rec])].T
        sims[np.ix_(known_rec, known_hist)] = np.where(contrib > 0, contrib, -np.inf)
    else:
        rec_vectors, hist_vectors = unit_vectors[recommended], unit_vectors[history]
        sims = rec_vectors @ hist_vectors.T
        sims[:, ~hist_vectors.any(axis=1)] = -np.inf
        sims[~rec_vectors.any(axis=1), :] = -np.inf
    sims[recommended[:, None] == history[None, :]] = -np.inf
    best = sims.argmax(axis=1)
    found = np.isfinite(sims[np.arange(len(recommended)), best])
    out[found] = history[best[found]]
    return out


FINAL_SCHEMA = "user_index int, item_index int, score float, rank int, source string, explanation_index int"


class PostProcessor:
    """MMR re-ranking and explanations on each user's candidate pool (picklable, broadcasts only).

    Args:
        n: items kept per user.
        unit_vectors: [n_items, d] unit item embeddings (explanations; MMR with
            ``similarity="embedding"``), or None.
        mmr_lambda: None: keep the score order.
        similarity: "embedding" (cosine of ``unit_vectors``) or "genres" (Jaccard of ``genres``).
        genres: [n_items, g] multi-hot, for ``similarity="genres"``.
        item_item: a broadcast item-item matrix (EASE's B) to explain by score
            contribution instead of embeddings.
    """

    def __init__(
        self,
        spark: SparkSession,
        *,
        n: int,
        unit_vectors: np.ndarray | None = None,
        mmr_lambda: float | None = None,
        similarity: str = "embedding",
        genres: np.ndarray | None = None,
        item_item=None,
        chunk_users: int = 256,
    ):
        if mmr_lambda is not None and similarity == "embedding" and unit_vectors is None:
            raise ValueError("MMR by embedding needs item embeddings")
        if mmr_lambda is not None and similarity == "genres" and genres is None:
            raise ValueError("MMR by genres needs the genre matrix")
        self.n, self.mmr_lambda, self.similarity, self.chunk_users = n, mmr_lambda, similarity, chunk_users
        sc = spark.sparkContext
        self._vectors = sc.broadcast(unit_vectors.astype(np.float32)) if unit_vectors is not None else None
        self._genres = sc.broadcast(genres.astype(np.float32)) if genres is not None else None
        self._item_item = item_item

    def process(self, pdf: pd.DataFrame) -> pd.DataFrame:
        """Rows ``user_index``, ``source``, ``items``, ``scores`` (rank order), ``seen`` -> final rows."""
        vectors = self._vectors.value if self._vectors is not None else None
        item_item = self._item_item.value if self._item_item is not None else None
        out = []
        for start in range(0, len(pdf), self.chunk_users):
            chunk = pdf.iloc[start : start + self.chunk_users]
            items = [np.asarray(x, dtype=np.int64) for x in chunk["items"]]
            scores = [np.asarray(x, dtype=np.float32) for x in chunk["scores"]]
            if self.mmr_lambda is not None:
                items, scores = self._mmr(items, scores, vectors)
            else:
                items, scores = [i[: self.n] for i in items], [s[: self.n] for s in scores]
            for user, source, it, sc, seen in zip(chunk["user_index"], chunk["source"], items, scores, chunk["seen"]):
                if (vectors is not None or item_item is not None) and seen is not None and len(seen):
                    why = explain(it, np.asarray(seen, dtype=np.int64), vectors, item_item=item_item)
                else:
                    why = np.full(len(it), -1, dtype=np.int64)
                out.append(pd.DataFrame({
                    "user_index": np.full(len(it), user, dtype=np.int32),
                    "item_index": it.astype(np.int32),
                    "score": sc.astype(np.float32),
                    "rank": np.arange(1, len(it) + 1, dtype=np.int32),
                    "source": source,
                    "explanation_index": pd.array([int(v) if v >= 0 else None for v in why], dtype="Int32"),
                }))
        if not out:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
                ("user_index", "int32"), ("item_index", "int32"), ("score", "float32"), ("rank", "int32"),
                ("source", "object"), ("explanation_index", "Int32")]})
        return pd.concat(out, ignore_index=True)

    def _mmr(self, items, scores, vectors):
        width = max((len(i) for i in items), default=0)
        if width == 0:
            return items, scores
        padded_items = np.zeros((len(items), width), dtype=np.int64)
        relevance = np.full((len(items), width), np.nan)
        for row, (it, sc) in enumerate(zip(items, scores)):
            padded_items[row, : len(it)] = it
            relevance[row, : len(it)] = sc
        features = vectors if self.similarity == "embedding" else self._genres.value
        gathered = features[padded_items]
        sim = cosine_similarity(gathered) if self.similarity == "embedding" else jaccard_similarity(gathered)
        order = mmr_rerank(relevance, sim, lam=self.mmr_lambda, n=self.n)
        new_items, new_scores = [], []
        for row, positions in enumerate(order):
            positions = positions[positions >= 0]
            new_items.append(items[row][positions])
            new_scores.append(scores[row][positions])
        return new_items, new_scores


def finalize(cands: DataFrame, users: DataFrame, post: PostProcessor | None, *, n: int) -> DataFrame:
    """Top ``n`` per user with explanations (``FINAL_SCHEMA``), by ``post`` when given.

    Without a post-processor the candidates are already in rank order: keep
    ``rank <= n`` and no explanation. With one, each user's candidates are
    gathered into one row (with their history) so that MMR and explanations
    see the whole pool.
    """
    if post is None:
        return cands.where(F.col("rank") <= n).withColumn("explanation_index", F.lit(None).cast("int"))
    pooled = F.sort_array(F.collect_list(F.struct("rank", ITEM_INDEX, "score")))
    grouped = (
        cands.groupBy(USER_INDEX, "source").agg(pooled.alias("_c"))
        .select(USER_INDEX, "source", F.col(f"_c.{ITEM_INDEX}").alias("items"), F.col("_c.score").alias("scores"))
        .join(users.select(USER_INDEX, "seen"), USER_INDEX, "left")
    )

    def run(batches):
        for pdf in batches:
            yield post.process(pdf)

    return grouped.mapInPandas(run, FINAL_SCHEMA)


def to_raw_ids(recs: DataFrame, user_index: DataFrame, item_index: DataFrame, *, model: str) -> DataFrame:
    """The published shape: raw ``user_id`` / ``item_id`` / ``explanation`` through the index tables."""
    items = item_index.select(ITEM_INDEX, ITEM_ID)
    why = items.select(F.col(ITEM_INDEX).alias("explanation_index"), F.col(ITEM_ID).alias("explanation"))
    return (
        recs.join(user_index.select(USER_INDEX, USER_ID), USER_INDEX)
        .join(F.broadcast(items), ITEM_INDEX)
        .join(F.broadcast(why), "explanation_index", "left")
        .select(USER_ID, ITEM_ID, "rank", "score", F.lit(model).alias("model"), "source", "explanation")
    )


def expected_counts(
    users: DataFrame,
    *,
    n: int,
    exclude_seen: bool,
    model_available: np.ndarray,
    fallback_available: np.ndarray,
) -> DataFrame:
    """``user_index``, ``source``, ``expected_n``: how many rows each user must get.

    ``min(n, available)``, where available is the source's recommendable items
    (catalog minus excluded items; for the model, also minus items it has no
    vector for) minus the user's seen items when they are excluded. Computed
    from the inputs, independently of the scoring path it checks.
    """
    masks = {SOURCE_MODEL: np.asarray(model_available, bool), SOURCE_FALLBACK: np.asarray(fallback_available, bool)}

    def run(batches):
        for pdf in batches:
            counts = []
            for seen, source in zip(pdf["seen"], pdf["source"]):
                mask = masks[source]
                total = int(mask.sum())
                if exclude_seen and seen is not None and len(seen):
                    s = np.unique(np.asarray(seen, dtype=np.int64))
                    s = s[(s >= 0) & (s < len(mask))]
                    total -= int(mask[s].sum())
                counts.append(min(n, total))
            yield pd.DataFrame({"user_index": pdf["user_index"].astype(np.int32), "source": pdf["source"],
                                "expected_n": np.asarray(counts, dtype=np.int32)})

    return users.select(USER_INDEX, "seen", "source").mapInPandas(
        run, "user_index int, source string, expected_n int"
    )


# --------------------------------------------------------------------------- checks


def _examples(df: DataFrame, cols: list[str], limit: int = 3) -> str:
    rows = df.select(*cols).limit(limit).collect()
    return ", ".join(str(tuple(r)) if len(cols) > 1 else str(r[0]) for r in rows)


def validate(
    recs: DataFrame,
    expected: DataFrame,
    *,
    model: str,
    seen: DataFrame | None = None,
    excluded: DataFrame | None = None,
    reranked: bool = False,
) -> list[str]:
    """Every rule a published run must meet; an empty list means it may be published.

    Args:
        recs: the staged output (``RECOMMENDATIONS`` columns).
        expected: ``user_id``, ``source``, ``expected_n`` for every known user.
        model: the serving model's name (every row's ``model``).
        seen: ``user_id``, ``item_id`` pairs that must not appear (when seen items are excluded).
        excluded: ``item_id`` s that must never appear.
        reranked: MMR output: ranks are checked, score order is not (MMR trades score for diversity).

    Returns:
        One message per broken rule, with a count and a few examples.
    """
    try:
        io.check_schema(recs, RECOMMENDATIONS, "staged recommendations")
    except io.SchemaMismatch as exc:
        return [f"schema: {exc}"]
    # One aggregation per user holds every rule (row-level rules as per-user sums),
    # so validation costs one shuffle whatever the number of rules.
    any_null = F.lit(False)
    for f in RECOMMENDATIONS.schema.fields:
        if not f.nullable:
            any_null = any_null | F.col(f.name).isNull()
    row_rules = {
        "null in a required column": any_null,
        "score not finite": F.isnan("score") | F.col("score").isin(float("inf"), float("-inf")),
        f"source not one of {list(SOURCES)}": ~F.col("source").isin(*SOURCES),
        f"model is not '{model}'": F.col("model") != F.lit(model),
    }
    rows = recs
    if seen is not None:
        marked = seen.select(USER_ID, ITEM_ID).distinct().withColumn("_seen", F.lit(True))
        rows = rows.join(marked, [USER_ID, ITEM_ID], "left")
        row_rules["seen items recommended"] = F.col("_seen").isNotNull()
    if excluded is not None:
        marked = excluded.select(ITEM_ID).distinct().withColumn("_excluded", F.lit(True))
        rows = rows.join(F.broadcast(marked), ITEM_ID, "left")
        row_rules["excluded items recommended"] = F.col("_excluded").isNotNull()

    aggs = [F.sum(F.when(cond, 1).otherwise(0)).alias(f"_r{i}") for i, cond in enumerate(row_rules.values())]
    aggs += [
        F.count(F.lit(1)).alias("n_rows"),
        F.size(F.collect_set(ITEM_ID)).alias("n_items"),
        F.min("rank").alias("min_rank"),
        F.max("rank").alias("max_rank"),
        F.size(F.collect_set("rank")).alias("n_ranks"),
        F.size(F.collect_set("source")).alias("n_sources"),
        F.first("source").alias("got_source"),
    ]
    if not reranked:
        aggs.append(F.array_sort(F.collect_list(F.struct("rank", "score"))).alias("_by_rank"))
    per_user = rows.groupBy(USER_ID).agg(*aggs)
    if not reranked:
        per_user = per_user.withColumn("rising", F.expr(
            "exists(sequence(1, greatest(size(_by_rank) - 1, 1)), "
            "i -> size(_by_rank) > 1 AND _by_rank[i].score > _by_rank[i - 1].score)")).drop("_by_rank")
    joined = per_user.join(expected.select(USER_ID, "source", "expected_n"), USER_ID, "full_outer")

    has_rows, known = F.col("n_rows").isNotNull(), F.col("expected_n").isNotNull()
    # (name, condition on a per-user row, count expression, example columns)
    rules = [(name, F.col(f"_r{i}") > 0, F.col(f"_r{i}"), [USER_ID, f"_r{i}"])
             for i, name in enumerate(row_rules)]
    user_rules = [
        ("users missing", ~has_rows & (F.col("expected_n") > 0), [USER_ID, "expected_n"]),
        ("users not in user_index", has_rows & ~known, [USER_ID]),
        ("wrong number of rows for a user", has_rows & known & (F.col("n_rows") != F.col("expected_n")),
         [USER_ID, "n_rows", "expected_n"]),
        ("duplicate items for a user", has_rows & (F.col("n_items") < F.col("n_rows")), [USER_ID, "n_rows", "n_items"]),
        ("ranks are not 1..n per user", has_rows & (
            (F.col("min_rank") != 1) | (F.col("max_rank") != F.col("n_rows")) | (F.col("n_ranks") != F.col("n_rows"))),
         [USER_ID, "min_rank", "max_rank", "n_rows"]),
        ("wrong source for a user", has_rows & known & (
            (F.col("n_sources") > 1) | (F.col("got_source") != F.col("source"))), [USER_ID, "got_source", "source"]),
    ]
    if not reranked:
        user_rules.append(("score rises with rank (users)", has_rows & F.col("rising"), [USER_ID]))
    rules += [(name, cond, F.when(cond, 1).otherwise(0), cols) for name, cond, cols in user_rules]

    totals = joined.agg(*[F.sum(count).alias(f"_t{i}") for i, (_, _, count, _) in enumerate(rules)]).first()
    problems = []
    for i, (name, cond, _, cols) in enumerate(rules):
        if totals[f"_t{i}"]:
            # Examples recompute the plan: only for broken rules, on a run that is not published anyway.
            problems.append(f"{name}: {totals[f'_t{i}']} (e.g. {_examples(joined.where(cond), cols)})")
    return problems


def quality_gate(
    *,
    metric_name: str,
    metric_value: float | None,
    previous: dict | None,
    coverage: float,
    max_metric_drop: float,
    min_coverage: float,
) -> dict:
    """Compare this run with the last published one.

    Args:
        metric_value: the serving model's validation ``metric_name``.
        previous: the last published run's manifest (None: first run, no comparison).
        coverage: share of the catalog recommended to at least one user.

    Returns:
        ``{"checks": {...}, "failures": [reason, ...]}``; no failures = may publish.
    """
    failures: list[str] = []
    checks: dict[str, Any] = {"metric": metric_name, "value": metric_value, "coverage": coverage,
                              "min_coverage": min_coverage, "max_metric_drop": max_metric_drop}
    if metric_value is None:
        failures.append(f"the serving model has no validation '{metric_name}' to compare")
    prev = (previous or {}).get("model_metric") or {}
    if metric_value is not None and prev.get("name") == metric_name and prev.get("value"):
        prev_value = float(prev["value"])
        checks.update(previous_value=prev_value, previous_run_date=previous.get("run_date"),
                      previous_model=previous.get("model"))
        if prev_value > 0 and metric_value < prev_value * (1.0 - max_metric_drop):
            drop = 1.0 - metric_value / prev_value
            failures.append(
                f"validation {metric_name} {metric_value:.4f} is {drop:.1%} below the last published run's "
                f"{prev_value:.4f} ({previous.get('run_date')}, model {previous.get('model')}); "
                f"recommend.max_metric_drop={max_metric_drop}"
            )
    if coverage < min_coverage:
        failures.append(f"catalog coverage {coverage:.4f} is under recommend.min_coverage={min_coverage}")
    return {"checks": checks, "failures": failures}


def output_counts(recs: DataFrame, n_items: int) -> dict:
    """Rows, users (by source), distinct items and catalog coverage of an output."""
    by_source = {r["source"]: {"users": r["users"], "rows": r["rows"]} for r in recs.groupBy("source").agg(
        F.countDistinct(USER_ID).alias("users"), F.count(F.lit(1)).alias("rows")).collect()}
    distinct_items = recs.select(ITEM_ID).distinct().count()
    return {
        "rows": sum(v["rows"] for v in by_source.values()),
        "users": recs.select(USER_ID).distinct().count(),
        "by_source": by_source,
        "distinct_items": distinct_items,
        "catalog_items": n_items,
        "coverage": distinct_items / n_items if n_items else 0.0,
    }


# --------------------------------------------------------------------------- publish protocol


def recommendations_root(warehouse: str) -> str:
    return io.table_path(warehouse, RECOMMENDATIONS, run_date="x").rsplit("/", 1)[0]


def run_path(warehouse: str, run_date: str) -> str:
    return io.table_path(warehouse, RECOMMENDATIONS, run_date=run_date)


def published_runs(spark: SparkSession, warehouse: str) -> list[str]:
    """Run dates with a ``_SUCCESS`` marker, oldest first."""
    root = recommendations_root(warehouse)
    dates = []
    for name in io.list_dir(spark, root):
        if name.startswith(RUN_PREFIX) and "." not in name:
            day = name[len(RUN_PREFIX):]
            if io.path_exists(spark, f"{root}/{name}/{SUCCESS}"):
                dates.append(day)
    return sorted(dates)


def read_latest(spark: SparkSession, warehouse: str) -> dict | None:
    path = f"{recommendations_root(warehouse)}/{LATEST}"
    return io.read_json(spark, path) if io.path_exists(spark, path) else None


def latest_manifest(spark: SparkSession, warehouse: str) -> dict | None:
    """The manifest of the run ``_latest.json`` names, or None before the first publish."""
    latest = read_latest(spark, warehouse)
    if not latest:
        return None
    path = f"{run_path(warehouse, latest['run_date'])}/{MANIFEST}"
    return io.read_json(spark, path) if io.path_exists(spark, path) else None


def write_latest(spark: SparkSession, warehouse: str) -> dict | None:
    """Point ``_latest.json`` at the newest published run: written aside, then renamed over the old one."""
    runs = published_runs(spark, warehouse)
    if not runs:
        return None
    root = recommendations_root(warehouse)
    day = runs[-1]
    manifest = io.read_json(spark, f"{run_path(warehouse, day)}/{MANIFEST}")
    pointer = {"run_date": day, "path": run_path(warehouse, day), "model": manifest.get("model"),
               "published_at": manifest.get("created_at")}
    tmp = f"{root}/.{LATEST}.tmp-{uuid.uuid4().hex[:8]}"
    io.write_json(spark, tmp, pointer)
    try:
        io.replace_file(spark, tmp, f"{root}/{LATEST}")
    finally:
        io.delete_path(spark, tmp)
    return pointer


def prune_runs(spark: SparkSession, warehouse: str, *, keep: int, protect: str | None = None) -> list[str]:
    """Delete published runs beyond the ``keep`` newest (never ``protect``, never the latest); returns the dates.

    Directories without ``_SUCCESS`` are not runs this protocol published; they are left alone.
    """
    dates = sorted(published_runs(spark, warehouse), reverse=True)
    latest = (read_latest(spark, warehouse) or {}).get("run_date")
    deleted = []
    for day in dates[keep:]:
        if day in (protect, latest):
            continue
        io.delete_path(spark, run_path(warehouse, day))
        deleted.append(day)
    return deleted


def code_version() -> str:
    """``git describe`` of the checkout the package runs from, else the package version."""
    from recsys_spark import __version__

    repo = Path(__file__).resolve().parents[1]
    if repo.is_dir():
        try:
            out = subprocess.run(["git", "describe", "--always", "--dirty", "--tags"], cwd=repo,
                                 capture_output=True, text=True, timeout=10)
            if out.returncode == 0 and out.stdout.strip():
                return f"git {out.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    return f"recsys_spark {__version__}"


def write_manifest(spark: SparkSession, directory: str, manifest: dict) -> None:
    io.write_json(spark, f"{directory}/{MANIFEST}", manifest)


@dataclass
class Checks:
    """What :func:`validate` needs besides the output itself."""

    expected: DataFrame
    seen: DataFrame | None
    excluded: DataFrame | None
    reranked: bool


def publish(
    spark: SparkSession,
    warehouse: str,
    run_date: str,
    recs: DataFrame,
    checks: Checks,
    *,
    model: str,
    metric_name: str,
    metric_value: float | None,
    n_items: int,
    conf: RecommendConf,
    manifest_extra: dict,
    force: bool = False,
) -> dict:
    """Stage, validate, gate and atomically publish ``recs`` as ``recommendations/run_date=<run_date>``.

    Raises:
        ValidationFailed: the staged output breaks a rule (never overridable).
        QualityGateRefused: the gate failed and ``force`` is off.

    Nothing under the run's final path changes unless every step succeeds; the
    staging directory is removed either way.
    """
    root = recommendations_root(warehouse)
    final = run_path(warehouse, run_date)
    staging = f"{root}/{STAGING}/{RUN_PREFIX}{run_date}-{uuid.uuid4().hex[:8]}"
    try:
        io.write_table(recs, warehouse, RECOMMENDATIONS, path=staging)
        # Spark's own marker says "files committed"; ours says "validated and published".
        io.delete_path(spark, f"{staging}/{SUCCESS}")
        staged = io.read_table(spark, warehouse, RECOMMENDATIONS, path=staging)
        problems = validate(staged, checks.expected, model=model, seen=checks.seen, excluded=checks.excluded,
                            reranked=checks.reranked)
        if problems:
            raise ValidationFailed(problems)
        counts = output_counts(staged, n_items)
        previous = latest_manifest(spark, warehouse)
        gate = quality_gate(metric_name=metric_name, metric_value=metric_value, previous=previous,
                            coverage=counts["coverage"], max_metric_drop=conf.max_metric_drop,
                            min_coverage=conf.min_coverage)
        if gate["failures"] and not force:
            raise QualityGateRefused(gate["failures"])
        manifest = {
            "run_date": run_date,
            "created_at": dt.datetime.now(dt.timezone.utc).isoformat(),
            "schema_version": SCHEMA_VERSION,
            "model": model,
            "model_metric": {"name": metric_name, "value": metric_value},
            "counts": counts,
            "reranked": checks.reranked,
            "quality_gate": gate,
            "forced": bool(force),
            "code_version": code_version(),
            **manifest_extra,
        }
        write_manifest(spark, staging, manifest)
        io.write_text(spark, f"{staging}/{SUCCESS}", "")
        io.publish_directory(spark, staging, final)
    finally:
        io.delete_path(spark, staging)
    manifest["latest"] = write_latest(spark, warehouse)
    manifest["deleted_runs"] = prune_runs(spark, warehouse, keep=conf.keep_runs, protect=run_date)
    return manifest


# --------------------------------------------------------------------------- the whole run


def read_exclusion_list(spark: SparkSession, path: str) -> DataFrame:
    """``item_id`` s from a CSV with a header or a Parquet file/directory."""
    if not io.path_exists(spark, path):
        raise FileNotFoundError(f"recommend.exclude_items_path: {path} not found")
    lower = path.lower().rstrip("/")
    df = (spark.read.option("header", True).csv(path) if lower.endswith((".csv", ".csv.gz"))
          else spark.read.parquet(path))
    if ITEM_ID not in df.columns:
        raise ValueError(f"recommend.exclude_items_path: {path} has no '{ITEM_ID}' column (has {df.columns})")
    return df.select(F.trim(F.col(ITEM_ID).cast("string")).alias(ITEM_ID)).where(F.col(ITEM_ID) != "").distinct()


def _table_version(spark, warehouse, table, df: DataFrame | None = None) -> dict:
    path = io.table_path(warehouse, table)
    info = {"path": path, "modified": io.modification_time(spark, path)}
    if df is not None:
        info["rows"] = df.count()
    return info


def list_models(spark: SparkSession, warehouse: str) -> dict[str, dict]:
    """Every model folder's metadata (folders without readable metadata are skipped)."""
    out = {}
    for name in io.list_dir(spark, f"{warehouse.rstrip('/')}/models"):
        if name.startswith((".", "_")):
            continue
        try:
            out[name] = artifacts.load_metadata(spark, warehouse, name)
        except (FileNotFoundError, ValueError) as exc:
            print(f"recommend: skipping model '{name}': {exc}", flush=True)
    return out


def run(
    spark: SparkSession, cfg: Config, *, run_date: str, force: bool = False, model_names: list[str] | None = None
) -> dict:
    """Recommend for every known user and publish ``recommendations/run_date=<run_date>``.

    Args:
        model_names: the models the serving model is chosen from (the ones this
            run trained); None: every model folder in the warehouse.

    Returns the manifest. Raises what :func:`publish` raises.
    """
    conf, wh = cfg.recommend, cfg.warehouse
    primary = cfg.evaluation.primary_metric
    models = list_models(spark, wh)
    if model_names is not None:
        missing = sorted(set(model_names) - set(models))
        if missing:
            raise RecommendError(f"models {missing} were named (--models) but have no readable model folder")
        models = {name: meta for name, meta in models.items() if name in model_names}
    name = select_model(models, primary, conf.model)
    meta = models[name]

    user_index = io.read_table(spark, wh, USER_INDEX_TABLE)
    item_index = io.read_table(spark, wh, ITEM_INDEX_TABLE)
    interactions = io.read_table(spark, wh, INTERACTIONS)
    n_items = (item_index.agg(F.max(ITEM_INDEX)).first()[0] or -1) + 1
    inputs = {t.name: _table_version(spark, wh, t, df)
              for t, df in ((USER_INDEX_TABLE, user_index), (ITEM_INDEX_TABLE, item_index),
                            (INTERACTIONS, interactions))}

    serving = load_serving_model(spark, wh, name, n_items=n_items, history_length=cfg.neural.history_length)
    inputs["model"] = {"path": io.model_dir(wh, name), "modified": io.modification_time(spark, io.model_dir(wh, name)),
                       "trained_at": meta.get("trained_at"), "kind": serving.kind}

    excluded_ids = excluded_mask = None
    if conf.exclude_items_path:
        excluded_ids = read_exclusion_list(spark, conf.exclude_items_path).cache()
        idx = [r[0] for r in excluded_ids.join(item_index, ITEM_ID).select(ITEM_INDEX).collect()]
        excluded_mask = np.zeros(n_items, dtype=bool)
        excluded_mask[idx] = True
        n_listed = excluded_ids.count()
        inputs["exclude_items"] = {"path": conf.exclude_items_path,
                                   "modified": io.modification_time(spark, conf.exclude_items_path),
                                   "rows": n_listed, "in_catalog": len(idx), "unknown_ids": n_listed - len(idx)}

    # Every stage below reads the users' histories and sources: computed once.
    users = assign_sources(
        user_index, user_histories_ordered(interactions),
        min_history=max(conf.min_history, serving.min_history),
        model_users=serving.user_factors, max_users=serving.max_users,
    ).cache()

    pop = baselines.popularity_vector(interactions, n_items, recent_days=cfg.popularity.recent_days)[:, None]
    fallback = CatalogScorer(spark, DotProductScorer(spark, pop, np.ones(n_items, dtype=bool)), n_items, excluded_mask)
    model_scorer = CatalogScorer(spark, serving.scorer, n_items, excluded_mask)
    mmr = conf.mmr_lambda is not None
    pool = min(n_items, conf.n * conf.mmr_pool_factor) if mmr else conf.n
    cands = candidates(users, model_scorer, fallback, pool=pool, exclude_seen=conf.exclude_seen,
                       batch_users=cfg.evaluation.scoring_batch_users, user_factors=serving.user_factors)

    unit = normalise_rows(serving.item_vectors) if serving.item_vectors is not None else None
    similarity, genres = None, None
    if mmr:
        similarity = conf.mmr_similarity
        if similarity == "auto":
            similarity = "embedding" if unit is not None else "genres"
        if similarity == "embedding" and unit is None:
            raise RecommendError(f"recommend.mmr_similarity=embedding: model '{name}' has no item embeddings")
        if similarity == "genres":
            rows = io.read_table(spark, wh, ITEMS).select(ITEM_INDEX, "genres").collect()
            genres_by_item = {r[ITEM_INDEX]: r["genres"] for r in rows}
            if not any(genres_by_item.values()):
                raise RecommendError(f"MMR by genres: no item has genres (model '{name}' has no item embeddings)")
            genres = genre_matrix(genres_by_item, n_items)
            inputs[ITEMS.name] = _table_version(spark, wh, ITEMS)
    # EASE explains by each history item's contribution to the score, through the
    # scorer's own broadcast of B.
    item_item = serving.scorer.broadcast if serving.kind == artifacts.KIND_ITEM_ITEM else None
    explains = unit is not None or item_item is not None
    post = None
    if mmr or explains:
        post = PostProcessor(spark, n=conf.n, unit_vectors=unit, mmr_lambda=conf.mmr_lambda,
                             similarity=similarity or "embedding", genres=genres, item_item=item_item)
    recs = to_raw_ids(finalize(cands, users, post, n=conf.n), user_index, item_index, model=name)

    model_ok = serving.scorable & ~(excluded_mask if excluded_mask is not None else False)
    fallback_ok = ~excluded_mask if excluded_mask is not None else np.ones(n_items, dtype=bool)
    expected = expected_counts(users, n=conf.n, exclude_seen=conf.exclude_seen,
                               model_available=model_ok, fallback_available=fallback_ok)
    ids = user_index.select(USER_INDEX, USER_ID)
    seen_pairs = None
    if conf.exclude_seen:
        seen_pairs = (interactions.select(USER_INDEX, ITEM_INDEX).join(ids, USER_INDEX)
                      .join(F.broadcast(item_index.select(ITEM_INDEX, ITEM_ID)), ITEM_INDEX).select(USER_ID, ITEM_ID))
    checks = Checks(expected=expected.join(ids, USER_INDEX).select(USER_ID, "source", "expected_n"),
                    seen=seen_pairs, excluded=excluded_ids, reranked=mmr)
    try:
        return publish(
            spark, wh, run_date, recs, checks,
            model=name, metric_name=primary, metric_value=_validation_metric(meta, primary), n_items=n_items,
            conf=conf, force=force,
            manifest_extra={
                "model_kind": serving.kind,
                "model_metrics": meta.get("metrics", {}),
                "model_params": meta.get("params", {}),
                "inputs": inputs,
                "config": cfg.to_dict(),
                "explanations": ("item_item_contribution" if item_item is not None
                                 else "embedding_cosine" if unit is not None else None),
                "mmr_similarity": similarity,
            },
        )
    finally:
        users.unpersist()
        if excluded_ids is not None:
            excluded_ids.unpersist()


__all__ = [
    "CatalogScorer",
    "Checks",
    "PostProcessor",
    "QualityGateRefused",
    "RecommendError",
    "ServingModel",
    "ValidationFailed",
    "assign_sources",
    "candidates",
    "cosine_similarity",
    "expected_counts",
    "explain",
    "finalize",
    "genre_matrix",
    "jaccard_similarity",
    "latest_manifest",
    "load_serving_model",
    "mmr_rerank",
    "normalise_rows",
    "output_counts",
    "prune_runs",
    "publish",
    "published_runs",
    "quality_gate",
    "read_exclusion_list",
    "read_latest",
    "run",
    "select_model",
    "to_raw_ids",
    "user_histories_ordered",
    "validate",
    "write_latest",
]
