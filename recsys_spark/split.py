"""Train / validation / test splits. Pure transforms; ``jobs/split.py`` does the I/O.

Three protocols:

* ``temporal`` — global time cutoffs on ``events_clean``: events before the
  validation cutoff build train, the slice up to the test cutoff validation,
  the rest test. Each fold is aggregated from its own events, so nothing
  after a cutoff reaches training (a pair's later clicks do not raise its
  training weight). The production-faithful protocol.
* ``leave_last_n`` — per user, the last ``n`` interactions are test and the
  ``n`` before them validation; users with at most ``2n`` interactions stay in
  train and are not evaluated. Per-user time order only: one user's test can
  precede another's train (the usual caveat of this protocol). Time is a
  pair's ``last_time``; ties are broken by ``item_index`` (the higher index is
  the later), the order of :func:`recsys_spark.tables.user_histories`, so the
  held-out items are the last of each user's history and a model that reads
  the last item sees the one just before them. With ``n = 1`` this is the
  sequential protocol (leave-last-one-out).
* ``random`` — seeded per-user stratified split (default 75/25) on
  ``interactions``, as Microsoft Recommenders' ml-100k table, so numbers
  can be compared with theirs.

Held-out folds never contain a pair already in an earlier fold (it would be
excluded from ranking anyway). Rows whose user or item has no training
interactions are kept and marked ``cold_user`` / ``cold_item`` in ``segment``
so they are counted and evaluated separately, not silently dropped.
"""
from __future__ import annotations

from collections.abc import Callable, Mapping

from pyspark.sql import DataFrame, Window
from pyspark.sql import functions as F

from recsys_spark.config import SplitConf, TablesConf
from recsys_spark.schemas import (
    EVENT_TIME, EVENTS_CLEAN, FOLD, INTERACTIONS, ITEM_INDEX, ITEM_INDEX_TABLE, LAST_TIME, SEGMENT, USER_INDEX,
    USER_INDEX_TABLE, WEIGHT, Table,
)
from recsys_spark.tables import aggregate_interactions

_KEY = [USER_INDEX, ITEM_INDEX]


def time_cutoffs(events: DataFrame, *, test_fraction: float, validation_fraction: float):
    """(validation_cutoff, test_cutoff): the last shares of the events' time span."""
    lo, hi = events.agg(F.min(EVENT_TIME), F.max(EVENT_TIME)).first()
    if lo is None:
        raise ValueError("split: events_clean is empty")
    span = hi - lo
    test_cut = hi - span * test_fraction
    val_cut = test_cut - span * validation_fraction
    return val_cut, test_cut


def _segment(held_out: DataFrame, known: DataFrame) -> DataFrame:
    """Mark held-out rows warm / cold_user / cold_item against the pairs in ``known``."""
    known_users = known.select(USER_INDEX).distinct().withColumn("_u", F.lit(True))
    known_items = known.select(ITEM_INDEX).distinct().withColumn("_i", F.lit(True))
    return (
        held_out.join(known_users, USER_INDEX, "left")
        .join(known_items, ITEM_INDEX, "left")
        .withColumn(
            SEGMENT,
            F.when(F.col("_u").isNull(), "cold_user").when(F.col("_i").isNull(), "cold_item").otherwise("warm"),
        )
        .drop("_u", "_i")
    )


def _fold(df: DataFrame, name: str) -> DataFrame:
    return df.select(*_KEY, WEIGHT, F.col(LAST_TIME), SEGMENT, F.lit(name).alias(FOLD))


def temporal_split(
    events: DataFrame,
    user_index: DataFrame,
    item_index: DataFrame,
    *,
    test_fraction: float,
    validation_fraction: float,
    event_weights: Mapping[str, float],
    rating_value_as_weight: bool = True,
) -> tuple[DataFrame, dict]:
    """Split ``events_clean`` at two global time cutoffs.

    Returns:
        (split rows with ``fold`` and ``segment``, info with the cutoffs).
    """
    val_cut, test_cut = time_cutoffs(events, test_fraction=test_fraction, validation_fraction=validation_fraction)

    def agg(ev):
        return aggregate_interactions(
            ev, user_index, item_index, event_weights=event_weights, rating_value_as_weight=rating_value_as_weight
        )

    train = agg(events.where(F.col(EVENT_TIME) < F.lit(val_cut)))
    validation = agg(events.where((F.col(EVENT_TIME) >= F.lit(val_cut)) & (F.col(EVENT_TIME) < F.lit(test_cut))))
    test = agg(events.where(F.col(EVENT_TIME) >= F.lit(test_cut)))

    validation = validation.join(train.select(*_KEY), _KEY, "left_anti")
    before_test = train.select(*_KEY).unionByName(validation.select(*_KEY))
    test = test.join(before_test, _KEY, "left_anti")
    out = (
        _fold(train.withColumn(SEGMENT, F.lit("warm")), "train")
        .unionByName(_fold(_segment(validation, train), "validation"))
        .unionByName(_fold(_segment(test, before_test), "test"))
    )
    return out, {"validation_cutoff": val_cut.isoformat(), "test_cutoff": test_cut.isoformat()}


def leave_last_n_split(interactions: DataFrame, *, n: int) -> tuple[DataFrame, dict]:
    """Per user: last ``n`` interactions (by last event time) test, the ``n`` before validation.

    Ties in time are broken by ``item_index``, the higher one later (the order
    of :func:`recsys_spark.tables.user_histories`): the split is the same
    whatever the rows' order or partitioning. Users with at most ``2n``
    interactions stay entirely in train: holding out their little history
    would leave nothing to learn from, so they are not evaluated.
    """
    w = Window.partitionBy(USER_INDEX).orderBy(F.col(LAST_TIME).desc(), F.col(ITEM_INDEX).desc())
    ranked = interactions.withColumn("_rn", F.row_number().over(w)).withColumn(
        "_n", F.count(F.lit(1)).over(Window.partitionBy(USER_INDEX))
    )
    fold = (
        F.when(F.col("_n") <= 2 * n, "train")
        .when(F.col("_rn") <= n, "test")
        .when(F.col("_rn") <= 2 * n, "validation")
        .otherwise("train")
    )
    out = ranked.select(*_KEY, WEIGHT, LAST_TIME, F.lit("warm").alias(SEGMENT), fold.alias(FOLD))
    return _mark_cold_items(out), {"leave_n": n}


def random_split(
    interactions: DataFrame, *, train_ratio: float, validation_ratio: float, seed: int
) -> tuple[DataFrame, dict]:
    """Seeded per-user stratified split: each user keeps ``train_ratio`` of their rows in train.

    The order inside a user is a hash of (seed, user, item), so the split is
    reproducible and independent of partitioning. ``validation_ratio`` of each
    user's train part is then held out for validation (hyperparameter search).
    """
    h = F.xxhash64(F.lit(seed), F.col(USER_INDEX), F.col(ITEM_INDEX))
    w = Window.partitionBy(USER_INDEX).orderBy(h, ITEM_INDEX)
    ranked = interactions.withColumn("_rn", F.row_number().over(w)).withColumn(
        "_n", F.count(F.lit(1)).over(Window.partitionBy(USER_INDEX))
    )
    n_train = F.round(F.col("_n") * train_ratio)
    n_fit = F.round(n_train * (1.0 - validation_ratio))
    fold = F.when(F.col("_rn") <= n_fit, "train").when(F.col("_rn") <= n_train, "validation").otherwise("test")
    out = ranked.select(*_KEY, WEIGHT, LAST_TIME, F.lit("warm").alias(SEGMENT), fold.alias(FOLD))
    return _mark_cold_items(out), {"train_ratio": train_ratio, "validation_ratio": validation_ratio, "seed": seed}


def _mark_cold_items(split: DataFrame) -> DataFrame:
    """Per-user protocols keep every user in train; items may still be unseen there."""
    train = split.where(F.col(FOLD) == "train")
    held = split.where(F.col(FOLD) != "train").drop(SEGMENT)
    held_val = _segment(held.where(F.col(FOLD) == "validation"), train)
    before_test = train.unionByName(split.where(F.col(FOLD) == "validation"))
    held_test = _segment(held.where(F.col(FOLD) == "test"), before_test)
    return train.unionByName(held_val.select(*train.columns)).unionByName(held_test.select(*train.columns))


def split_by_protocol(conf: SplitConf, read: Callable[[Table], DataFrame], *, tables: TablesConf
                      ) -> tuple[DataFrame, dict]:
    """The split ``conf.protocol`` names, with ``conf``'s settings.

    Args:
        read: a table by its schema (the job's ``io.read_table``); only the tables the
            protocol needs are read: ``events_clean`` and the indexes for ``temporal``
            (aggregated with ``tables``' weights), ``interactions`` for the others.

    Returns:
        (split rows with ``fold`` and ``segment``, the protocol's info).
    """
    if conf.protocol == "temporal":
        return temporal_split(
            read(EVENTS_CLEAN),
            read(USER_INDEX_TABLE),
            read(ITEM_INDEX_TABLE),
            test_fraction=conf.test_fraction,
            validation_fraction=conf.validation_fraction,
            event_weights=tables.event_weights,
            rating_value_as_weight=tables.rating_value_as_weight,
        )
    if conf.protocol == "leave_last_n":
        return leave_last_n_split(read(INTERACTIONS), n=conf.leave_n)
    return random_split(read(INTERACTIONS), train_ratio=conf.train_ratio, validation_ratio=conf.validation_ratio,
                        seed=conf.seed)


def fold(split: DataFrame, name: str, *, segment: str | None = None) -> DataFrame:
    """Rows of one fold (optionally one segment)."""
    out = split.where(F.col(FOLD) == name)
    return out.where(F.col(SEGMENT) == segment) if segment else out


def training_rows(split: DataFrame, *, final: bool) -> DataFrame:
    """What a model trains on: train (model selection) or train + validation (final refit).

    A pair in both folds cannot happen (held-out rows exclude earlier pairs),
    so the union has one row per pair.
    """
    folds = ["train", "validation"] if final else ["train"]
    return split.where(F.col(FOLD).isin(folds)).select(*_KEY, WEIGHT, LAST_TIME)


def split_summary(split: DataFrame) -> dict:
    """Row and user counts per fold and segment (for the run report)."""
    rows = (
        split.groupBy(FOLD, SEGMENT)
        .agg(F.count(F.lit(1)).alias("rows"), F.countDistinct(USER_INDEX).alias("users"))
        .collect()
    )
    out: dict = {}
    for r in rows:
        out.setdefault(r[FOLD], {})[r[SEGMENT]] = {"rows": r["rows"], "users": r["users"]}
    return out
