"""Full-ranking metrics in NumPy/torch, for the trainer's per-epoch validation.

The same definitions as :func:`recsys_spark.evaluate.ranking_metrics` (Spark's
``RankingEvaluator`` with binary relevance, plus our hit rate), computed inside
a training process without Spark, so early stopping uses the numbers the
evaluation job would report. ``tests/test_trainer.py`` checks the parity.

For each evaluated user: rank the whole catalog by score, drop the user's
training items (and non-finite scores, as :func:`recsys_spark.scoring.blocked.top_k`
does), keep the top ``k``; with ``rel`` the held-out items and ``hit_i`` whether
the item at position ``i`` (0-based) is one of them:

* ``ndcg_at_k``      = sum_i hit_i / log2(i + 2)  /  sum_{i < min(k, |rel|)} 1 / log2(i + 2)
* ``recall_at_k``    = hits / |rel|
* ``precision_at_k`` = hits / k (k, not the number of recommendations: Spark's choice)
* ``hit_rate_at_k``  = 1 if any hit

averaged over users with equal weight; a user with no recommendations scores 0.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import numpy as np
import torch

from recsys_spark.scoring.topk import exclude, top_k_rows

METRICS = ("ndcg", "recall", "precision", "hit_rate")


def parse_metric(name: str) -> tuple[str, int]:
    """``"ndcg_at_10"`` -> ``("ndcg", 10)``.

    Raises:
        ValueError: not ``<metric>_at_<k>`` with a metric this module computes.
    """
    base, sep, k = name.rpartition("_at_")
    if not sep or base not in METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(
            f"metric '{name}': the trainer validates on <metric>_at_<k> with metric one of {', '.join(METRICS)}"
        )
    return base, int(k)


@dataclass
class UserItems:
    """Item sets of a list of users in CSR form: user row ``r`` has ``indices[indptr[r]:indptr[r+1]]``."""

    indptr: np.ndarray  # [U + 1] int64
    indices: np.ndarray  # [nnz] int64

    @classmethod
    def from_pairs(cls, rows: np.ndarray, items: np.ndarray, n_rows: int) -> "UserItems":
        """From aligned (row, item) arrays; rows are positions 0..n_rows-1, in any order."""
        rows = np.asarray(rows, dtype=np.int64)
        items = np.asarray(items, dtype=np.int64)
        order = np.lexsort((items, rows))
        counts = np.bincount(rows, minlength=n_rows)
        indptr = np.zeros(n_rows + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        return cls(indptr, items[order])

    @classmethod
    def from_lists(cls, lists) -> "UserItems":
        lists = [np.asarray(x if x is not None else [], dtype=np.int64) for x in lists]
        indptr = np.zeros(len(lists) + 1, dtype=np.int64)
        np.cumsum([len(x) for x in lists], out=indptr[1:])
        indices = np.concatenate(lists) if lists else np.zeros(0, dtype=np.int64)
        return cls(indptr, indices)

    def __len__(self) -> int:
        return len(self.indptr) - 1

    def block(self, start: int, stop: int) -> tuple[np.ndarray, np.ndarray]:
        """(row within the block, item) pairs of rows ``start:stop``."""
        lo, hi = self.indptr[start], self.indptr[stop]
        counts = np.diff(self.indptr[start : stop + 1])
        return np.repeat(np.arange(stop - start), counts), self.indices[lo:hi]


@dataclass
class ValidationSet:
    """What a training process needs to rank the validation users.

    ``history`` / ``history_len`` are the users' training histories in the
    batch format (time order, padded with ``n_items``), ``seen`` the training
    items to exclude, ``relevant`` the held-out items; all aligned with ``users``.
    """

    users: np.ndarray  # [U] int64
    history: np.ndarray  # [U, L] int64
    history_len: np.ndarray  # [U] int64
    seen: UserItems
    relevant: UserItems

    @classmethod
    def from_tables(cls, users: Mapping[str, np.ndarray], labels: Mapping[str, np.ndarray]) -> "ValidationSet":
        """From the columns of :func:`recsys_spark.train.data.validation_examples`' two tables.

        Rows may come in any order (they are sorted by user); however they were
        read (Petastorm in a training process, ``toPandas`` in the sweep script),
        the same tables give the same set.

        Args:
            users: ``user_index`` [U], ``history`` ([U, L], or U arrays of length L), ``history_len`` [U].
            labels: ``user_index``, ``item_index``, ``relevant`` (1: held out; 0: a training item to exclude).
        """
        order = np.argsort(np.asarray(users["user_index"]), kind="stable")
        user_ids = np.asarray(users["user_index"])[order].astype(np.int64)
        position = np.full(max(int(user_ids.max(initial=-1)) + 1, 1), -1, dtype=np.int64)
        position[user_ids] = np.arange(len(user_ids))
        rows = position[np.asarray(labels["user_index"]).astype(np.int64)]
        items = np.asarray(labels["item_index"]).astype(np.int64)
        rel = np.asarray(labels["relevant"]) == 1
        history = np.asarray(users["history"])
        if history.dtype == object:  # pandas: one array per row
            history = np.stack(list(history)) if len(history) else np.zeros((0, 0), dtype=np.int64)
        return cls(
            users=user_ids,
            history=history[order].astype(np.int64).reshape(len(user_ids), -1),
            history_len=np.asarray(users["history_len"])[order].astype(np.int64),
            seen=UserItems.from_pairs(rows[~rel], items[~rel], len(user_ids)),
            relevant=UserItems.from_pairs(rows[rel], items[rel], len(user_ids)),
        )


def top_k_excluding(scores: torch.Tensor, seen_rows: np.ndarray, seen_items: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` item indexes per row of ``scores`` [B, n_items], excluding ``seen``.

    Returns:
        int64 [B, k], best first; ``-1`` where a user has fewer than ``k``
        scorable items (seen or non-finite scores are not recommendations).
    """
    scores = scores.float().clone()
    exclude(scores, seen_rows, seen_items)
    kk = min(k, scores.shape[1])
    values, items = top_k_rows(scores, kk)  # the serving path's top-k: ties broken alike
    out = np.full((scores.shape[0], k), -1, dtype=np.int64)
    top = items.cpu().numpy()
    top[~np.isfinite(values.cpu().numpy())] = -1
    out[:, :kk] = top
    return out


def metric_per_user(top: np.ndarray, relevant: UserItems, metric: str, k: int) -> np.ndarray:
    """The metric of each user from their top-K (``-1`` = no item) and held-out items."""
    if metric not in METRICS:
        raise ValueError(f"metric '{metric}' is not one of {', '.join(METRICS)}")
    top = top[:, :k]
    n_users = top.shape[0]
    n_rel = np.diff(relevant.indptr)
    # Membership of (user row, item) in the relevant sets, vectorised by encoding pairs as one int.
    width = int(max(top.max(initial=0), relevant.indices.max(initial=0))) + 2
    rows = np.repeat(np.arange(n_users), n_rel)
    rel_codes = rows * width + relevant.indices
    top_codes = np.arange(n_users)[:, None] * width + top
    hits = np.isin(top_codes, rel_codes) & (top >= 0)
    n_hits = hits.sum(axis=1)
    if metric == "recall":
        return np.where(n_rel > 0, n_hits / np.maximum(n_rel, 1), 0.0)
    if metric == "precision":
        return n_hits / float(k)
    if metric == "hit_rate":
        return (n_hits > 0).astype(np.float64)
    gains = 1.0 / np.log2(np.arange(k) + 2.0)
    dcg = (hits * gains).sum(axis=1)
    ideal = np.cumsum(gains)[np.clip(np.minimum(n_rel, k) - 1, 0, None)]
    return np.where(n_rel > 0, dcg / ideal, 0.0)


def evaluate(
    score_fn: Callable[[slice], torch.Tensor],
    n_users: int,
    seen: UserItems,
    relevant: UserItems,
    *,
    metric: str,
    batch_users: int = 512,
) -> float:
    """Mean ``metric`` (e.g. ``"ndcg_at_10"``) over ``n_users`` users.

    Args:
        score_fn: scores [len(rows), n_items] of the users at positions ``rows`` (a slice).
        seen / relevant: per user position, the items to exclude / the held-out items.
    """
    if n_users == 0:
        raise ValueError("validation: no users with held-out items")
    return metric_total(score_fn, seen, relevant, metric=metric, start=0, stop=n_users,
                        batch_users=batch_users) / n_users


def metric_total(
    score_fn: Callable[[slice], torch.Tensor],
    seen: UserItems,
    relevant: UserItems,
    *,
    metric: str,
    start: int,
    stop: int,
    batch_users: int = 512,
) -> float:
    """The sum of ``metric`` over the users at positions ``start:stop``: one process's share of
    a validation that every process scores a part of (the parts' totals add up to the whole's)."""
    name, k = parse_metric(metric)
    total = 0.0
    for lo in range(start, stop, batch_users):
        hi = min(lo + batch_users, stop)
        seen_rows, seen_items = seen.block(lo, hi)
        top = top_k_excluding(score_fn(slice(lo, hi)), seen_rows, seen_items, k)
        rel = UserItems(relevant.indptr[lo : hi + 1] - relevant.indptr[lo],
                        relevant.indices[relevant.indptr[lo] : relevant.indptr[hi]])
        total += float(metric_per_user(top, rel, name, k).sum())
    return total


def _model_scores(model, validation: ValidationSet, device) -> Callable[[slice], torch.Tensor]:
    def score(rows: slice) -> torch.Tensor:
        return model.score_users(
            torch.as_tensor(validation.users[rows], device=device),
            torch.as_tensor(validation.history[rows], device=device),
            torch.as_tensor(validation.history_len[rows], device=device),
        )

    return score


@torch.no_grad()
def evaluate_model(model, validation: ValidationSet, *, metric: str, device, batch_users: int = 512) -> float:
    """``evaluate`` with a RecModel's ``score_users`` on ``validation``."""
    n = len(validation.users)
    if n == 0:
        raise ValueError("validation: no users with held-out items")
    return model_metric_total(model, validation, metric=metric, device=device, part=0, parts=1,
                              batch_users=batch_users) / n


@torch.no_grad()
def model_metric_total(model, validation: ValidationSet, *, metric: str, device, part: int, parts: int,
                       batch_users: int = 512) -> float:
    """The sum of ``metric`` over part ``part`` of ``parts`` equal contiguous parts of the
    validation users (a training process scores its part; the totals are all-reduced)."""
    n = len(validation.users)
    was_training = model.training
    model.eval()
    try:
        return metric_total(_model_scores(model, validation, device), validation.seen, validation.relevant,
                            metric=metric, start=n * part // parts, stop=n * (part + 1) // parts,
                            batch_users=batch_users)
    finally:
        model.train(was_training)


__all__ = [
    "METRICS",
    "UserItems",
    "ValidationSet",
    "evaluate",
    "evaluate_model",
    "metric_per_user",
    "metric_total",
    "model_metric_total",
    "parse_metric",
    "top_k_excluding",
]
