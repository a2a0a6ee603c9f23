"""The scorers of the models whose scores are a product: user vectors x item
vectors (dot product), user history x item-item matrix (EASE), the user's
last item's row of a sparse next-item matrix plus a back-off (Markov), and the
wrapper that makes any scorer span today's catalog with excluded items at -inf.
Each is a :class:`recsys_spark.scoring.blocked.BatchScorer`.
"""
from __future__ import annotations

import os

import numpy as np
import pandas as pd
from pyspark.sql import SparkSession

from recsys_spark.memory import require_broadcast
from recsys_spark.schemas import FACTORS, SEEN


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

    @property
    def item_matrix(self) -> np.ndarray:
        """[n_items, rank] float32, the broadcast's driver-side value."""
        return self._items.value

    def __getstate__(self):
        # The executor-side caches are rebuilt where the scorer runs, never pickled.
        return {**self.__dict__, "_items_t": None, "_out": None}

    def score(self, batch: pd.DataFrame):
        import torch

        if self._items_t is None:
            # [rank, n_items] contiguous: MKL's GEMM is about 1.5x faster on it than
            # on the transposed view of the broadcast matrix.
            self._items_t = torch.from_numpy(self._items.value).T.contiguous()
        users = torch.from_numpy(np.stack(batch[FACTORS].to_numpy()).astype(np.float32))
        # One score buffer reused across batches: a fresh [batch, n_items] block is
        # large enough for malloc to mmap it, and its page faults cost more than the
        # matmul (measured 50 vs 13 us per user at 512 x 20k). top_k copies what it
        # keeps out of the block before the next batch overwrites it.
        if self._out is None or self._out.shape[0] < len(users):
            self._out = torch.empty(len(users), self.n_items)
        scores = torch.mm(users, self._items_t, out=self._out[: len(users)])
        if self._unknown is not None:
            from recsys_spark.scoring.topk import exclude_items  # torch: imported where scores exist

            exclude_items(scores, self._unknown.value)
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
        histories = [np.asarray(s if s is not None else [], dtype=np.int64) for s in batch[SEEN]]
        histories = [np.unique(h[h < known]) for h in histories]
        lengths = np.fromiter((len(h) for h in histories), dtype=np.int64, count=len(histories))
        crow = torch.from_numpy(np.concatenate([[0], np.cumsum(lengths)]))
        cols = torch.from_numpy(np.concatenate(histories) if len(histories) else np.zeros(0, np.int64))
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the product is what we use of it
            warnings.simplefilter("ignore", UserWarning)
            history = torch.sparse_csr_tensor(crow, cols, torch.ones(len(cols)), size=(len(histories), known))
            return torch.sparse.mm(history, self._b)


class LastItemScorer:
    """score(j) = next[i, j] + source_weight[i] x backoff[j], i the user's last item.

    The user's state is the last item of ``seen`` (a time-ordered history,
    :func:`recsys_spark.tables.user_histories`): at evaluation the last training
    item before the cutoff, at serving the last of the whole history. ``next`` is
    a sparse [model items, model items] matrix in CSR arrays (``indptr``,
    ``indices``, ``values``); a user without a last item the model knows (none,
    or one indexed after training) gets ``backoff`` alone, so every model item
    is ranked for everyone.
    """

    ARRAYS = ("indptr", "indices", "values", "source_weight", "backoff")

    def __init__(self, spark, *, indptr: np.ndarray, indices: np.ndarray, values: np.ndarray,
                 source_weight: np.ndarray, backoff: np.ndarray):
        arrays = {
            "indptr": np.ascontiguousarray(indptr, dtype=np.int64),
            "indices": np.ascontiguousarray(indices, dtype=np.int64),
            "values": np.ascontiguousarray(values, dtype=np.float32),
            "source_weight": np.ascontiguousarray(source_weight, dtype=np.float32),
            "backoff": np.ascontiguousarray(backoff, dtype=np.float32),
        }
        self.n_items = len(arrays["backoff"])
        if not (len(arrays["indptr"]) == self.n_items + 1 == len(arrays["source_weight"]) + 1
                and len(arrays["indices"]) == len(arrays["values"]) == arrays["indptr"][-1]):
            raise ValueError(f"LastItemScorer: inconsistent arrays ({ {k: v.shape for k, v in arrays.items()} })")
        require_broadcast(spark, "the next-item transitions", sum(a.nbytes for a in arrays.values()))
        self._arrays = spark.sparkContext.broadcast(arrays)

    @property
    def arrays(self) -> dict[str, np.ndarray]:
        """The broadcast's driver-side arrays (what the model saves)."""
        return self._arrays.value

    def score(self, batch: pd.DataFrame):
        import torch

        a = self._arrays.value
        last = np.fromiter((s[-1] if s is not None and len(s) else -1 for s in batch[SEEN]),
                           dtype=np.int64, count=len(batch))
        known = (last >= 0) & (last < self.n_items)
        weight = np.ones(len(batch), dtype=np.float32)
        weight[known] = a["source_weight"][last[known]]
        scores = torch.outer(torch.from_numpy(weight), torch.from_numpy(a["backoff"]))
        rows = np.flatnonzero(known)
        starts, ends = a["indptr"][last[rows]], a["indptr"][last[rows] + 1]
        lengths = ends - starts
        if lengths.sum():
            # Every kept transition of every row's source, in one indexed add.
            offsets = np.arange(lengths.sum()) - np.repeat(np.cumsum(lengths) - lengths, lengths)
            pos = np.repeat(starts, lengths) + offsets
            r, c = torch.from_numpy(np.repeat(rows, lengths)), torch.from_numpy(a["indices"][pos])
            scores[r, c] += torch.from_numpy(a["values"][pos])
        return scores


def factor_matrix(factors_rows: list, n: int, rank: int) -> tuple[np.ndarray, np.ndarray]:
    """Dense [n, rank] matrix from (index, factors) rows plus a 'has a vector' mask."""
    matrix = np.zeros((n, rank), dtype=np.float32)
    known = np.zeros(n, dtype=bool)
    for idx, vec in factors_rows:
        matrix[idx] = vec
        known[idx] = True
    return matrix, known


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
            from recsys_spark.scoring.topk import exclude_items

            exclude_items(scores, self._excluded.value)
        return scores
