"""Re-ranking and explanations on each user's candidate pool, in plain NumPy.

MMR (Carbonell & Goldstein, SIGIR 1998) over item embeddings (cosine) or
genres (Jaccard); an explanation per row (the history item that best accounts
for the recommendation).
"""
from __future__ import annotations

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark.schemas import ITEM_INDEX, RANK, SCORE, SEEN, SOURCE, USER_INDEX


def normalise_rows(vectors: np.ndarray) -> np.ndarray:
    """Unit-length rows (zero rows stay zero): dot products become cosines."""
    v = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(v, axis=1, keepdims=True)
    return np.divide(v, norms, out=np.zeros_like(v), where=norms > 0)


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
            for user, source, it, sc, seen in zip(chunk["user_index"], chunk[SOURCE], items, scores, chunk[SEEN]):
                if (vectors is not None or item_item is not None) and seen is not None and len(seen):
                    why = explain(it, np.asarray(seen, dtype=np.int64), vectors, item_item=item_item)
                else:
                    why = np.full(len(it), -1, dtype=np.int64)
                out.append(pd.DataFrame({
                    "user_index": np.full(len(it), user, dtype=np.int32),
                    "item_index": it.astype(np.int32),
                    SCORE: sc.astype(np.float32),
                    RANK: np.arange(1, len(it) + 1, dtype=np.int32),
                    SOURCE: source,
                    "explanation_index": pd.array([int(v) if v >= 0 else None for v in why], dtype="Int32"),
                }))
        if not out:
            return pd.DataFrame({c: pd.Series(dtype=t) for c, t in [
                ("user_index", "int32"), ("item_index", "int32"), (SCORE, "float32"), (RANK, "int32"),
                (SOURCE, "object"), ("explanation_index", "Int32")]})
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
        return cands.where(F.col(RANK) <= n).withColumn("explanation_index", F.lit(None).cast("int"))
    pooled = F.sort_array(F.collect_list(F.struct(RANK, ITEM_INDEX, SCORE)))
    grouped = (
        cands.groupBy(USER_INDEX, SOURCE).agg(pooled.alias("_c"))
        .select(USER_INDEX, SOURCE, F.col(f"_c.{ITEM_INDEX}").alias("items"), F.col("_c.score").alias("scores"))
        .join(users.select(USER_INDEX, SEEN), USER_INDEX, "left")
    )

    def run(batches):
        for pdf in batches:
            yield post.process(pdf)

    return grouped.mapInPandas(run, FINAL_SCHEMA)
