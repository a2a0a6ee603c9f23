"""The trainer's data path: Spark builds training examples, Petastorm feeds them to PyTorch.

This is the only module that imports Petastorm (unmaintained, and the reason
for the legacy pyarrow pin), always inside functions, and its interface is
small so that it can be replaced:

* :func:`user_histories`, :func:`training_examples`, :func:`validation_examples`
  — pure Spark transforms from training rows (``split.training_rows``:
  ``user_index``, ``item_index``, ``weight``, ``last_time``) to example tables;
* :func:`materialise` (driver) — writes them with Petastorm's
  ``make_spark_converter`` and returns a picklable :class:`PetastormData`;
* :meth:`PetastormData.shard_loader` (in each training process) — this rank's
  shard as batches of tensors; :meth:`PetastormData.validation_set` (rank 0) —
  the validation users as arrays; :meth:`PetastormData.delete` (driver).

Nothing is collected to the driver: the examples go from Spark tasks to
Parquet to the training processes. Batch formats (see ``models/base.py``):

* ``pairs``: ``user_index`` [B], ``item_index`` [B], ``weight`` [B] float, plus
  ``history`` [B, L] and ``history_len`` [B] for models with ``needs_history``;
* ``histories``: one row per user: ``user_index`` [B], ``history`` [B, L], ``history_len`` [B].

A history is the user's training items in time order (``last_time``, then
item index), the most recent ``history_length`` of them, padded at the end
with ``n_items``; ``history_len`` counts the real items. Integer columns
arrive as int32 (the loop widens them).
"""
from __future__ import annotations

import contextlib
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, tables
from recsys_spark.schemas import ITEM_INDEX, LAST_TIME, SEEN, USER_INDEX, WEIGHT

PAIRS = "pairs"
HISTORIES = "histories"
INPUT_KINDS = (PAIRS, HISTORIES)

# Rows per shuffling-buffer batch: rows are mixed across this many batches.
SHUFFLE_BATCHES = 8
# Parquet files per training process at least (see materialise).
FILES_PER_SHARD = 4
# Above this many bytes per file, more files (Petastorm reads a row group at a time).
TARGET_FILE_BYTES = 64 * 1024 * 1024


def _quiet_petastorm() -> None:
    """Petastorm on pyarrow 14 warns about every deprecated legacy API it calls."""
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"petastorm\..*")
    warnings.filterwarnings("ignore", message="The given NumPy array is not writable")


# --------------------------------------------------------------------------- Spark transforms


def user_histories(rows: DataFrame, *, n_items: int, history_length: int) -> DataFrame:
    """``user_index``, ``history`` (array<int> of exactly ``history_length``), ``history_len``.

    Args:
        rows: training rows (``user_index``, ``item_index``, ``last_time``).
    """
    io.require_columns(rows, [USER_INDEX, ITEM_INDEX, LAST_TIME], "training rows")
    if history_length < 1:
        raise ValueError(f"neural.history_length must be at least 1, got {history_length}")
    L = int(history_length)
    recent = F.expr(f"slice({SEEN}, greatest(size({SEEN}) - {L} + 1, 1), {L})")
    return (
        tables.user_histories(rows)
        .select(USER_INDEX, recent.alias("_r"))
        .select(
            USER_INDEX,
            F.concat("_r", F.array_repeat(F.lit(int(n_items)), F.lit(L) - F.size("_r"))).alias("history"),
            F.size("_r").cast("int").alias("history_len"),
        )
    )


def training_examples(
    rows: DataFrame, *, input_kind: str, needs_history: bool, n_items: int, history_length: int
) -> DataFrame:
    """The examples one epoch iterates over, in the batch format of ``input_kind``."""
    if input_kind not in INPUT_KINDS:
        raise ValueError(f"input_kind must be one of {INPUT_KINDS}, got '{input_kind}'")
    io.require_columns(rows, [USER_INDEX, ITEM_INDEX, WEIGHT, LAST_TIME], "training rows")
    if input_kind == HISTORIES:
        return user_histories(rows, n_items=n_items, history_length=history_length)
    pairs = rows.select(
        F.col(USER_INDEX).cast("int").alias(USER_INDEX),
        F.col(ITEM_INDEX).cast("int").alias(ITEM_INDEX),
        F.col(WEIGHT).cast("float").alias(WEIGHT),
    )
    if needs_history:
        pairs = pairs.join(user_histories(rows, n_items=n_items, history_length=history_length), USER_INDEX)
    return pairs


def validation_examples(
    train_rows: DataFrame, held_out: DataFrame, *, n_items: int, history_length: int
) -> tuple[DataFrame, DataFrame]:
    """The validation users and their item labels, for ranking inside a training process.

    Args:
        train_rows: the rows the model trains on (their items are excluded from the ranking).
        held_out: the fold's warm rows (``user_index``, ``item_index``).

    Returns:
        (users: ``user_index``, ``history``, ``history_len`` — users with held-out
        rows; labels: ``user_index``, ``item_index``, ``relevant`` — 1 for a
        held-out item, 0 for a training item to exclude). Flat pairs rather
        than arrays: Petastorm reads only fixed-length arrays.
    """
    users = held_out.select(F.col(USER_INDEX).cast("int").alias(USER_INDEX)).distinct()
    histories = user_histories(train_rows, n_items=n_items, history_length=history_length)
    user_rows = users.join(histories, USER_INDEX, "left").select(
        USER_INDEX,
        F.coalesce("history", F.array_repeat(F.lit(int(n_items)), int(history_length))).alias("history"),
        F.coalesce("history_len", F.lit(0)).alias("history_len"),
    )
    relevant = held_out.select(USER_INDEX, ITEM_INDEX).distinct().withColumn("relevant", F.lit(1))
    seen = train_rows.join(users, USER_INDEX, "left_semi").select(USER_INDEX, ITEM_INDEX).withColumn(
        "relevant", F.lit(0)
    )
    labels = relevant.unionByName(seen).select(
        F.col(USER_INDEX).cast("int"), F.col(ITEM_INDEX).cast("int"), F.col("relevant").cast("int")
    )
    return user_rows, labels


def item_counts(rows: DataFrame, n_items: int):
    """[n_items] float64: training pairs per item (negatives and log-q). Item statistics, not examples."""
    import numpy as np

    counts = np.zeros(n_items, dtype=np.float64)
    for r in rows.groupBy(ITEM_INDEX).count().collect():
        counts[r[ITEM_INDEX]] = r["count"]
    return counts


# --------------------------------------------------------------------------- Petastorm


@dataclass
class PetastormData:
    """Materialised examples; picklable, so TorchDistributor ships it to the training processes."""

    train: Any  # SparkDatasetConverter
    rows: int
    files: int
    val_users: Any = None
    val_labels: Any = None

    def steps_per_epoch(self, batch_size: int, world_size: int) -> int:
        """An estimate (shards are files, not rows, so they differ a little)."""
        return max(1, math.ceil(self.rows / world_size / batch_size))

    @contextlib.contextmanager
    def shard_loader(self, *, rank: int, world_size: int, batch_size: int, seed: int, epoch: int):
        """This rank's shard for one epoch, as dicts of tensors (a context manager).

        ``num_epochs=1``: Petastorm's loader otherwise never ends. The seed
        depends only on (seed, epoch), never on the rank: Petastorm shards by
        row-group number and shuffles row-group order with it, so every rank
        must pass the same one. Row order inside the shard is mixed by a
        shuffling buffer (torch's RNG, which the loop reseeds per epoch and rank).
        """
        _quiet_petastorm()
        from petastorm.pytorch import BatchedDataLoader

        kwargs = {"cur_shard": rank, "shard_count": world_size} if world_size > 1 else {}
        with self.train.make_torch_dataloader(
            batch_size=batch_size,
            num_epochs=1,
            # One reader thread: row groups arrive in the seeded order, so a
            # run is reproducible; reading still overlaps the training step.
            workers_count=1,
            shuffling_queue_capacity=SHUFFLE_BATCHES * batch_size,
            data_loader_fn=BatchedDataLoader,
            seed=int(seed) * 1_000_003 + int(epoch),
            shuffle_row_groups=True,
            **kwargs,
        ) as loader:
            yield loader

    def validation_set(self, *, batch_size: int = 65536):
        """Rank 0's validation users (:class:`~recsys_spark.train.local_metrics.ValidationSet`)."""
        from recsys_spark.train.local_metrics import ValidationSet

        if self.val_users is None:
            return None
        return ValidationSet.from_tables(_read_all(self.val_users, batch_size), _read_all(self.val_labels, batch_size))

    def delete(self) -> None:
        """Remove the materialised Parquet (driver, after the run)."""
        for conv in (self.train, self.val_users, self.val_labels):
            if conv is not None:
                conv.delete()


def _read_all(converter, batch_size: int) -> dict:
    """Every row of a (small) converted table as NumPy columns."""
    import numpy as np
    from petastorm.pytorch import BatchedDataLoader

    parts: dict[str, list] = {}
    with converter.make_torch_dataloader(batch_size=batch_size, num_epochs=1, workers_count=1,
                                         data_loader_fn=BatchedDataLoader) as loader:
        for batch in loader:
            for k, v in batch.items():
                parts.setdefault(k, []).append(v.numpy())
    return {k: np.concatenate(v) for k, v in parts.items()}


def _files_for(rows: int, row_bytes: int, shard_count: int) -> int:
    """How many Parquet files to write: a multiple of ``shard_count``, at least FILES_PER_SHARD each."""
    by_size = math.ceil(rows * row_bytes / TARGET_FILE_BYTES)
    n = max(FILES_PER_SHARD * shard_count, by_size)
    return math.ceil(n / shard_count) * shard_count


def materialise(
    spark: SparkSession,
    examples: DataFrame,
    *,
    cache_dir: str,
    shard_count: int,
    history_length: int = 0,
    seed: int = 42,
    validation: tuple[DataFrame, DataFrame] | None = None,
) -> PetastormData:
    """Write the examples (and validation tables) where the training processes read them.

    Petastorm shards by Parquet row group (row group ``i`` goes to shard
    ``i % shard_count``) and refuses fewer row groups than shards, so the
    examples are repartitioned into a multiple of ``shard_count`` files of
    about equal size (each at most one or two row groups): every process
    gets the same number of files, hence about the same number of rows, and
    the per-step agreement of the loop wastes little. The repartition is by a
    seeded hash of each row's content and rows are sorted by it inside each
    file, so a file holds a random sample in random order (users' rows are not
    clustered), and the same rows make the same files whatever order Spark
    delivers them in (``rand(seed)`` would not: it numbers rows by their
    position in a partition, which a shuffle upstream does not fix).

    Args:
        cache_dir: local path or URL (Petastorm's parent cache dir); one
            subdirectory per table, removed by :meth:`PetastormData.delete`.
            The training processes read it where they run: a local path only
            serves executors on this machine; a multi-machine cluster needs a
            shared filesystem URL (``hdfs://``, ``file:///`` on NFS).
    """
    _quiet_petastorm()
    from petastorm.spark import SparkDatasetConverter, make_spark_converter

    url = cache_dir if "://" in cache_dir else Path(cache_dir).resolve().as_uri()
    if url.startswith("file:"):
        os.makedirs(Path(url.removeprefix("file://")), exist_ok=True)
    spark.conf.set(SparkDatasetConverter.PARENT_CACHE_DIR_URL_CONF, url)

    rows = examples.count()
    if rows == 0:
        raise ValueError("no training examples: the training rows are empty")
    row_bytes = 16 + 4 * int(history_length)
    files = _files_for(rows, row_bytes, shard_count)
    # Identical rows share a key, so ties in the sort are rows that are equal anyway.
    key = F.xxhash64(F.lit(int(seed)), *[F.col(c) for c in examples.columns])
    shuffled = (
        examples.withColumn("_r", key)
        .repartition(files, "_r")
        .sortWithinPartitions("_r")
        .drop("_r")
    )
    def convert(df):
        conv = make_spark_converter(df)
        # Petastorm numbers row groups in the order of this list, which is
        # Spark's inputFiles() order (a set's): sorted, the shards and the
        # seeded row-group order are the same for the same data every run.
        conv.file_urls = sorted(conv.file_urls)
        return conv

    train = convert(shuffled)
    val_users = val_labels = None
    if validation is not None:
        # Read whole by rank 0: a couple of files each is plenty.
        val_users = convert(validation[0].repartition(2))
        val_labels = convert(validation[1].repartition(2))
    return PetastormData(train=train, rows=rows, files=files, val_users=val_users, val_labels=val_labels)


__all__ = [
    "HISTORIES",
    "INPUT_KINDS",
    "PAIRS",
    "PetastormData",
    "item_counts",
    "materialise",
    "training_examples",
    "user_histories",
    "validation_examples",
]
