"""Blocked top-K scoring: batches of users against a scorer over the whole catalog.

Never a users x items cross join: each task takes batches of users, builds a
dense [batch, items] score block (one torch matmul for a dot-product model),
masks the user's excluded items and keeps the top k
(:mod:`recsys_spark.scoring.topk`). Memory per task is bounded by
``batch_users x n_items`` floats whatever the number of users.

A *scorer* (:class:`BatchScorer`, implementations in
:mod:`recsys_spark.scoring.scorers` and :mod:`recsys_spark.scoring.torch_model`)
is a small picklable object with ``score(batch) -> torch.Tensor`` of shape
[len(batch), n_items]; it holds Spark broadcasts, not arrays, so what it
needs is shipped once per executor.
"""
from __future__ import annotations

from typing import Protocol

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame

from recsys_spark.schemas import RANK, SCORE, SEEN

TOPK_SCHEMA = "user_index int, item_index int, score float, rank int"


class BatchScorer(Protocol):
    n_items: int

    def score(self, batch: pd.DataFrame):  # -> torch.Tensor [len(batch), n_items]
        ...


def mask_seen(scores, seen_lists) -> None:
    """Set ``scores[row, item] = -inf`` for every item in row ``row``'s ``seen`` list, in place.

    One indexed assignment for the whole block (:func:`recsys_spark.scoring.topk.exclude`):
    a Python loop of per-row assignments costs more than the matmul for short histories.
    """
    from recsys_spark.scoring.topk import exclude  # torch: imported where scores exist

    lengths = np.fromiter((0 if s is None else len(s) for s in seen_lists), dtype=np.int64, count=len(seen_lists))
    if not lengths.sum():
        return
    rows = np.repeat(np.arange(len(lengths)), lengths)
    cols = np.concatenate([np.asarray(s, dtype=np.int64) for s in seen_lists if s is not None and len(s)])
    exclude(scores, rows, cols)


def top_k(
    users: DataFrame,
    scorer: BatchScorer,
    *,
    k: int,
    exclude_seen: bool = True,
    batch_users: int = 512,
) -> DataFrame:
    """Top-``k`` items per user, as rows (``user_index``, ``item_index``, ``score``, ``rank``).

    Args:
        users: one row per user to score: ``user_index``, ``seen`` (array of
            item indexes, may be null) and whatever the scorer reads
            (``factors`` for a dot-product model).
        exclude_seen: mask the ``seen`` items (already-consumed items are not
            recommendations).

    Returns:
        At most ``k`` rows per user, rank 1 = best; fewer when the user has
        fewer than ``k`` scorable unseen items. :func:`top_k_rows` is
        deterministic, so the same inputs give the same rows.
    """
    k = int(k)

    def run(batches):
        import torch

        from recsys_spark.scoring.topk import top_k_rows

        # One Spark task per core already: more torch threads would oversubscribe.
        torch.set_num_threads(1)
        for pdf in batches:
            for start in range(0, len(pdf), batch_users):
                chunk = pdf.iloc[start : start + batch_users]
                scores = scorer.score(chunk)
                if exclude_seen:
                    mask_seen(scores, chunk[SEEN])
                values, items = top_k_rows(scores, min(k, scores.shape[1]))
                kk = values.shape[1]
                values_np, items_np = values.numpy(), items.numpy().astype(np.int32)
                ok = np.isfinite(values_np)
                users_np = np.repeat(chunk["user_index"].to_numpy(dtype=np.int32), kk).reshape(-1, kk)
                ranks = np.tile(np.arange(1, kk + 1, dtype=np.int32), (len(chunk), 1))
                yield pd.DataFrame(
                    {
                        "user_index": users_np[ok],
                        "item_index": items_np[ok],
                        SCORE: values_np[ok].astype(np.float32),
                        RANK: ranks[ok],
                    }
                )

    return users.mapInPandas(run, TOPK_SCHEMA)
