"""Blocked top-K scoring: batches of users against a broadcast item matrix.

Never a users x items cross join: each task takes batches of users, builds a
dense [batch, items] score block with one torch matmul, masks the user's
excluded items and keeps the top k (:mod:`recsys_spark.topk`). Memory per task is bounded by
``batch_users x n_items`` floats whatever the number of users.

A *scorer* is a small picklable object with ``score(batch) -> torch.Tensor``
of shape [len(batch), n_items]; it holds Spark broadcasts, not arrays, so the
item matrix is shipped once per executor.
"""
from __future__ import annotations

import os
from typing import Protocol

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame
from pyspark.sql import functions as F

from recsys_spark.memory import require_broadcast
from recsys_spark.schemas import ITEM_INDEX, USER_INDEX

TOPK_SCHEMA = "user_index int, item_index int, score float, rank int"


class BatchScorer(Protocol):
    n_items: int

    def score(self, batch: pd.DataFrame):  # -> torch.Tensor [len(batch), n_items]
        ...


class DotProductScorer:
    """score = user vector . item vector; users carry their vector in ``factors``.

    Items without a vector (never trained) get -inf: a model has no evidence
    for them, so they are never recommended by it.
    """

    def __init__(self, spark, item_matrix: np.ndarray, item_known: np.ndarray):
        self.n_items = item_matrix.shape[0]
        require_broadcast(spark, "the item matrix", 4 * item_matrix.size)
        self._items = spark.sparkContext.broadcast(np.ascontiguousarray(item_matrix, dtype=np.float32))
        # Indexes, not a boolean mask: masking with an all-False [n_items] mask still
        # costs a pass over the [batch, n_items] block (a fifth of a batch's CPU).
        unknown = np.flatnonzero(~item_known.astype(bool)).astype(np.int64)
        self._unknown = spark.sparkContext.broadcast(unknown) if len(unknown) else None
        self._items_t = None  # per executor task, see score()
        self._out = None

    def __getstate__(self):
        # The executor-side caches are rebuilt where the scorer runs, never pickled.
        return {**self.__dict__, "_items_t": None, "_out": None}

    def score(self, batch: pd.DataFrame):
        import torch

        if self._items_t is None:
            # [rank, n_items] contiguous: MKL's GEMM is about 1.5x faster on it than
            # on the transposed view of the broadcast matrix.
            self._items_t = torch.from_numpy(self._items.value).T.contiguous()
        users = torch.from_numpy(np.stack(batch["factors"].to_numpy()).astype(np.float32))
        # One score buffer reused across batches: a fresh [batch, n_items] block is
        # large enough for malloc to mmap it, and its page faults cost more than the
        # matmul (measured 50 vs 13 us per user at 512 x 20k). top_k copies what it
        # keeps out of the block before the next batch overwrites it.
        if self._out is None or self._out.shape[0] < len(users):
            self._out = torch.empty(len(users), self.n_items)
        scores = torch.mm(users, self._items_t, out=self._out[: len(users)])
        if self._unknown is not None:
            scores[:, torch.from_numpy(self._unknown.value)] = float("-inf")
        return scores


class ShippedMatrix:
    """A large read-only matrix shipped to executors as a file, memory-mapped where it is read.

    ``SparkContext.addFile`` streams the file from the driver's disk to each
    executor once; a broadcast would serialise it whole in the driver JVM's heap
    first (a 20,000-item EASE matrix is 1.6 GB, over the default 2g driver's
    share). ``np.load(mmap_mode="r")`` lets every Python worker on a machine
    share one copy through the page cache. ``value`` mirrors a broadcast's.
    """

    def __init__(self, spark, matrix: np.ndarray | None = None, *, local_path: str | None = None):
        import atexit
        import shutil
        import tempfile
        import uuid

        self.file_name = f"matrix-{uuid.uuid4().hex}.npy"  # addFile refuses a name reused with new content
        tmp = tempfile.mkdtemp(prefix="recsys-shipped-")
        atexit.register(shutil.rmtree, tmp, True)
        path = f"{tmp}/{self.file_name}"
        if matrix is not None:
            np.save(path, np.ascontiguousarray(matrix, dtype=np.float32))
        elif os.stat(local_path).st_dev == os.stat(tmp).st_dev:
            os.link(local_path, path)
        else:
            shutil.copyfile(local_path, path)
        self.local_path = path  # on the driver: the file to save with the model
        self.shape = tuple(np.load(path, mmap_mode="r").shape)
        spark.sparkContext.addFile(path)
        self._value = None

    def __getstate__(self):
        return {**self.__dict__, "_value": None}

    def release(self) -> None:
        """Delete the driver's copy once no more tasks will fetch it (a 20,000-item matrix is 1.6 GB of disk).

        Executors keep the copies they fetched until the application ends.
        """
        if os.path.exists(self.local_path):
            os.remove(self.local_path)

    @property
    def value(self) -> np.ndarray:
        if self._value is None:
            from pyspark import SparkFiles

            self._value = np.load(SparkFiles.get(self.file_name), mmap_mode="r")
        return self._value


class ItemItemScorer:
    """score = (user's binary history) x item-item matrix (EASE's B, [model items, model items]).

    One sparse (CSR history) x dense product per batch: the work is the batch's
    history lengths x items, not batch x items^2 (16x less at 20,000 items).
    History items the matrix does not know (indexed after training) add nothing.
    """

    def __init__(self, spark, item_item: np.ndarray | None = None, *, local_path: str | None = None):
        self.matrix = ShippedMatrix(spark, item_item, local_path=local_path)
        self.n_items = self.matrix.shape[1]
        self._b = None

    def __getstate__(self):
        return {**self.__dict__, "_b": None}

    @property
    def broadcast(self):
        """The shipped matrix (``.value`` as a broadcast's), for explanations without shipping it twice."""
        return self.matrix

    def score(self, batch: pd.DataFrame):
        import warnings

        import torch

        if self._b is None:
            with warnings.catch_warnings():  # read-only memory map: torch warns, we never write to it
                warnings.simplefilter("ignore", UserWarning)
                self._b = torch.from_numpy(self.matrix.value)
        known = self._b.shape[0]
        histories = [np.asarray(s if s is not None else [], dtype=np.int64) for s in batch["seen"]]
        histories = [np.unique(h[h < known]) for h in histories]
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        crow = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
        cols = torch.from_numpy(np.concatenate(histories) if len(histories) else np.zeros(0, np.int64))
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is what we use of it
            warnings.simplefilter("ignore", UserWarning)
            history = torch.sparse_csr_tensor(crow, cols, torch.ones(len(cols)), size=(len(histories), known))
            return torch.sparse.mm(history, self._b)


def factor_matrix(factors_rows: list, n: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense [n, rank] matrix from (index, factors) rows plus a 'has a vector' mask."""
    matrix = np.zeros((n, rank), dtype=np.float32)
    known = np.zeros(n, dtype=bool)
    for idx, vec in factors_rows:
        matrix[idx] = vec
        known[idx] = True
    return matrix, known


def user_histories(train: DataFrame) -> DataFrame:
    """``user_index``, ``seen`` (array of item indexes the user has in ``train``)."""
    return train.groupBy(USER_INDEX).agg(F.collect_list(ITEM_INDEX).alias("seen"))


def mask_seen(scores, seen_lists) -> None:
    """Set ``scores[row, item] = -inf`` for every item in row ``row``'s ``seen`` list, in place.

    One indexed assignment for the whole block (:func:`recsys_spark.topk.exclude`):
    a Python loop of per-row assignments costs more than the matmul for short histories.
    """
    from recsys_spark.topk import exclude  # torch: imported where scores exist

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

        from recsys_spark.topk import top_k_rows

        # One Spark task per core already: more torch threads would oversubscribe.
        torch.set_num_threads(1)
        for pdf in batches:
            for start in range(0, len(pdf), batch_users):
                chunk = pdf.iloc[start : start + batch_users]
                scores = scorer.score(chunk)
                if exclude_seen:
                    mask_seen(scores, chunk["seen"])
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
                        "score": values_np[ok].astype(np.float32),
                        "rank": ranks[ok],
                    }
                )

    return users.mapInPandas(run, TOPK_SCHEMA)


def popularity_scores(train: DataFrame, *, n_items: int, since=None) -> np.ndarray:
    """Per-item popularity (distinct users) in ``train``, optionally only rows with ``last_time >= since``."""
    rows = train if since is None else train.where(F.col("last_time") >= F.lit(since))
    counts = rows.groupBy(ITEM_INDEX).agg(F.countDistinct(USER_INDEX).alias("n")).collect()
    pop = np.zeros(n_items, dtype=np.float32)
    for r in counts:
        pop[r[ITEM_INDEX]] = r["n"]
    return pop


__all__ = [
    "DotProductScorer",
    "ItemItemScorer",
    "ShippedMatrix",
    "TOPK_SCHEMA",
    "factor_matrix",
    "mask_seen",
    "popularity_scores",
    "top_k",
    "user_histories",
]
