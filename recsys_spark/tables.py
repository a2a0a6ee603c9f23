"""User, item and interaction tables built from ``events_clean``.

The transforms are pure functions of DataFrames; :func:`run_build_tables` is
the one function here that reads and writes (``jobs/build_tables.py`` calls it). Dense indexes are stable across runs (known ids keep their
index, new ids are appended) because model factors and embeddings are stored
by index: renumbering would silently pair users with someone else's vector.
"""
from __future__ import annotations

import re
from collections.abc import Mapping

import numpy as np
from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark.config import Config, ItemMetadataConf
from recsys_spark.schemas import (
    EVENTS_CLEAN,
    EVENT_TIME,
    EVENT_TYPE,
    EVENT_TYPES,
    INTERACTIONS,
    ITEMS,
    ITEM_ID,
    ITEM_INDEX,
    ITEM_INDEX_TABLE,
    LAST_TIME,
    SEEN,
    USERS,
    USER_ID,
    USER_INDEX,
    USER_INDEX_TABLE,
    VALUE,
    WEIGHT,
)


def update_index(
    ids: DataFrame,
    previous: DataFrame | None,
    *,
    id_col: str,
    index_col: str,
    run_date: str,
) -> DataFrame:
    """Extend an id -> dense index map with the ids in ``ids``.

    Args:
        ids: one row per id seen now, columns ``id_col`` and ``first_seen``.
        previous: the index table of the last run (``id_col``, ``index_col``,
            ``first_indexed``), or None on the first run.
        run_date: stamped as ``first_indexed`` on new ids.

    Returns:
        Every previous row unchanged plus one row per new id, numbered from
        ``max(previous index) + 1`` in order of first appearance (ties by id),
        so the numbering is deterministic.
    """
    if previous is None:
        offset = 0
        new_ids = ids.select(id_col, "first_seen")
    else:
        offset = (previous.agg(F.max(index_col)).first()[0] or -1) + 1
        new_ids = ids.select(id_col, "first_seen").join(previous.select(id_col), id_col, "left_anti")
    # A global ordering window pulls the new ids into one partition: fine,
    # these are distinct ids (thousands to a few million), not events.
    order = Window.orderBy("first_seen", id_col)
    appended = new_ids.select(
        id_col,
        (F.row_number().over(order) - 1 + F.lit(offset)).cast("int").alias(index_col),
        F.lit(run_date).cast("date").alias("first_indexed"),
    )
    if previous is None:
        return appended
    return previous.select(id_col, index_col, "first_indexed").unionByName(appended)


def _event_weight(event_weights: Mapping[str, float], rating_value_as_weight: bool):
    """Column: each event's contribution to its interaction's weight."""
    expr = F.lit(0.0)
    for event_type, w in event_weights.items():
        if event_type == "rating" and rating_value_as_weight:
            continue  # ratings contribute their latest value instead, below
        expr = F.when(F.col(EVENT_TYPE) == event_type, F.lit(float(w))).otherwise(expr)
    return expr


PAIR_EVENTS, PAIR_WEIGHT, PAIR_RATING, FIRST_TIME = "event_count", "_weight", "_latest_rating", "first_time"


def pair_aggregates(events: DataFrame, *, event_weights: Mapping[str, float],
                    rating_value_as_weight: bool = True) -> DataFrame:
    """One row per (``user_id``, ``item_id``) of ``events``: what every table is built from.

    The one aggregation over events (a shuffle of every event); the users,
    items and interactions tables then aggregate these rows, one per pair,
    instead of each shuffling every event again. Columns: the ids,
    ``_weight`` (sum of ``event_weights``, ratings excluded when their value
    counts), ``_latest_rating`` (the latest rating's value, or null),
    ``event_count``, ``first_time``, ``last_time`` and ``n_<type>`` per event type.
    """
    is_rating = F.col(EVENT_TYPE) == "rating"
    latest_rating = F.max_by(F.when(is_rating, F.col(VALUE)), F.when(is_rating, F.col(EVENT_TIME)))
    if not rating_value_as_weight:
        latest_rating = F.lit(None).cast("double")
    return events.groupBy(USER_ID, ITEM_ID).agg(
        F.sum(_event_weight(event_weights, rating_value_as_weight)).alias(PAIR_WEIGHT),
        latest_rating.alias(PAIR_RATING),
        F.count(F.lit(1)).alias(PAIR_EVENTS),
        F.min(EVENT_TIME).alias(FIRST_TIME),
        F.max(EVENT_TIME).alias(LAST_TIME),
        *[F.sum(F.when(F.col(EVENT_TYPE) == t, 1).otherwise(0)).cast("long").alias(f"n_{t}") for t in EVENT_TYPES],
    )


def interactions_from_pairs(pairs: DataFrame, user_index: DataFrame, item_index: DataFrame) -> DataFrame:
    """The ``interactions`` rows of :func:`pair_aggregates`' pairs (weight = event weights + latest rating)."""
    return (
        pairs.join(user_index.select(USER_ID, USER_INDEX), USER_ID)
        .join(item_index.select(ITEM_ID, ITEM_INDEX), ITEM_ID)
        .select(
            USER_INDEX,
            ITEM_INDEX,
            (F.col(PAIR_WEIGHT) + F.coalesce(F.col(PAIR_RATING), F.lit(0.0))).cast("float").alias(WEIGHT),
            PAIR_EVENTS,
            FIRST_TIME,
            LAST_TIME,
        )
    )


def aggregate_interactions(
    events: DataFrame,
    user_index: DataFrame,
    item_index: DataFrame,
    *,
    event_weights: Mapping[str, float],
    rating_value_as_weight: bool = True,
) -> DataFrame:
    """One row per (user, item) with its confidence weight.

    The weight is the sum of ``event_weights`` over the pair's events; with
    ``rating_value_as_weight`` a rating contributes its value, and only the
    user's latest rating of the item counts (a re-rating replaces the old one).

    Args:
        events: ``events_clean`` rows (any time slice of them).
        user_index / item_index: the index tables.

    Returns:
        Columns of the ``interactions`` table.
    """
    pairs = pair_aggregates(events, event_weights=event_weights, rating_value_as_weight=rating_value_as_weight)
    return interactions_from_pairs(pairs, user_index, item_index)


def filter_min_activity(interactions: DataFrame, *, min_user: int, min_item: int) -> DataFrame:
    """Drop users with fewer than ``min_user`` and items with fewer than ``min_item`` interactions.

    One pass each (items first, then users), not iterated to a fixed point:
    predictable and documented, and the defaults (1, 1) keep everything.
    """
    if min_item > 1:
        keep_items = interactions.groupBy(ITEM_INDEX).count().where(F.col("count") >= min_item)
        interactions = interactions.join(keep_items.select(ITEM_INDEX), ITEM_INDEX, "left_semi")
    if min_user > 1:
        keep_users = interactions.groupBy(USER_INDEX).count().where(F.col("count") >= min_user)
        interactions = interactions.join(keep_users.select(USER_INDEX), USER_INDEX, "left_semi")
    return interactions


def build_users(pairs: DataFrame, user_index: DataFrame) -> DataFrame:
    """The ``users`` table from :func:`pair_aggregates`: first/last seen, distinct items, counts by event type."""
    return (
        pairs.groupBy(USER_ID)
        .agg(
            F.min(FIRST_TIME).alias("first_seen"),
            F.max(LAST_TIME).alias("last_seen"),
            F.sum(PAIR_EVENTS).alias("n_events"),
            F.count(F.lit(1)).alias("n_items"),  # one pair per distinct item
            *[F.sum(f"n_{t}").alias(f"n_{t}") for t in EVENT_TYPES],
        )
        .join(user_index.select(USER_ID, USER_INDEX), USER_ID)
    )


def build_items(pairs: DataFrame, item_index: DataFrame, metadata: DataFrame | None = None) -> DataFrame:
    """The ``items`` table from :func:`pair_aggregates`: popularity (distinct users), activity, optional metadata.

    Args:
        metadata: ``item_id``, ``title``, ``year``, ``genres`` (array) or None.
    """
    items = (
        pairs.groupBy(ITEM_ID)
        .agg(
            F.count(F.lit(1)).alias("popularity"),  # one pair per distinct user
            F.sum(PAIR_EVENTS).alias("n_events"),
            F.min(FIRST_TIME).alias("first_seen"),
            F.max(LAST_TIME).alias("last_seen"),
        )
        .join(item_index.select(ITEM_ID, ITEM_INDEX), ITEM_ID)
    )
    if metadata is None:
        return items.select(
            "*",
            F.lit(None).cast("string").alias("title"),
            F.lit(None).cast("int").alias("year"),
            F.lit(None).cast("array<string>").alias("genres"),
        )
    return items.join(metadata.select(ITEM_ID, "title", "year", "genres"), ITEM_ID, "left")


def year_in_title(title: Column) -> Column:
    """The year in "Title (YYYY)" (trailing spaces allowed), else null."""
    found = F.regexp_extract(title, r"\((\d{4})\)\s*$", 1)
    return F.when(found != "", found.cast("int"))


def parse_item_metadata(
    raw: DataFrame,
    *,
    item_id: str,
    title: str | None,
    year: str | None,
    genres: str | None,
    genres_delimiter: str = "|",
    year_from_title: bool = False,
) -> DataFrame:
    """Map a raw item file (string columns) to ``item_id``, ``title``, ``year``, ``genres``.

    A year that is not a number becomes null rather than failing the run:
    metadata is decoration, the interactions are the product. With
    ``year_from_title`` and no year column, the year is the four digits in
    parentheses at the end of the title ("Heat (1995)"), as MovieLens writes it.
    """
    def col_or_null(name: str | None, dtype: str):
        return F.col(name).cast(dtype) if name else F.lit(None).cast(dtype)

    genre_col = (
        F.split(F.col(genres), re.escape(genres_delimiter))  # split() takes a regex
        if genres
        else F.lit(None).cast("array<string>")
    )
    return raw.select(
        F.trim(F.col(item_id)).alias(ITEM_ID),
        col_or_null(title, "string").alias("title"),
        (year_in_title(F.col(title)) if year is None and year_from_title and title
         else col_or_null(year, "int")).alias("year"),
        genre_col.alias("genres"),
    ).dropDuplicates([ITEM_ID])


def user_histories(rows: DataFrame) -> DataFrame:
    """``user_index``, ``seen``: each user's items in time order (last interaction, then item index).

    The one definition of a history, for every consumer: the items scoring
    excludes, the recent items a sequence-aware model reads (cut from the
    end), and serving's input. Time order matters to models that read the most
    recent history; the tie-break by index makes the array, and so every
    output built from it, reproducible.

    Args:
        rows: interactions-shaped rows (``user_index``, ``item_index``, ``last_time``).
    """
    ordered = F.array_sort(F.collect_list(F.struct(F.col(LAST_TIME), F.col(ITEM_INDEX).cast("int").alias(ITEM_INDEX))))
    return rows.groupBy(USER_INDEX).agg(ordered.alias("_h")).select(
        F.col(USER_INDEX).cast("int").alias(USER_INDEX), F.col(f"_h.{ITEM_INDEX}").alias(SEEN)
    )


def genre_matrix(genres_by_item: Mapping[int, list[str] | None], n_items: int) -> np.ndarray:
    """Multi-hot [n_items, G] float32 of the items' genres over the sorted vocabulary.

    The one encoding of genres, for models that read item features and for
    MMR's Jaccard similarity. Empty genre names are ignored; items outside
    ``n_items`` are dropped; G is at least 1 (all zeros when no item has a genre).
    """
    vocab = sorted({g for gs in genres_by_item.values() if gs for g in gs if g})
    col = {g: j for j, g in enumerate(vocab)}
    m = np.zeros((n_items, max(len(vocab), 1)), dtype=np.float32)
    for i, gs in genres_by_item.items():
        if 0 <= i < n_items and gs:
            m[i, [col[g] for g in gs if g]] = 1.0
    return m


# --------------------------------------------------------------------------- the run


def read_item_metadata(spark: SparkSession, items_conf: ItemMetadataConf) -> DataFrame | None:
    """The dataset's optional item file (``dataset.items``) parsed to the ``items`` layout, or None."""
    if not items_conf.path:
        return None
    raw = io.read_side_file(spark, items_conf.path, setting="dataset.items.path", file_format=items_conf.format,
                            header=items_conf.csv_header, delimiter=items_conf.csv_delimiter)
    for key in ("item_id", "title", "year", "genres"):
        column = getattr(items_conf, key)
        if column and column not in raw.columns:
            raise ValueError(f"{items_conf.path}: dataset.items.{key} names column '{column}', not in {raw.columns}")
    return parse_item_metadata(
        raw,
        item_id=items_conf.item_id,
        title=items_conf.title,
        year=items_conf.year,
        genres=items_conf.genres,
        genres_delimiter=items_conf.genres_delimiter,
        year_from_title=items_conf.year_from_title,
    )


def run_build_tables(spark: SparkSession, cfg: Config, *, run_date: str) -> dict:
    """Update the indexes and rebuild ``users``, ``items`` and ``interactions`` from ``events_clean``.

    Returns the run report (row counts of what was written).
    """
    wh, conf = cfg.warehouse, cfg.tables
    # Every table below is an aggregate of the per-pair rows: events are
    # shuffled once, and the pairs (fewer rows, no strings but the ids) are kept.
    pairs = pair_aggregates(io.read_table(spark, wh, EVENTS_CLEAN), event_weights=conf.event_weights,
                            rating_value_as_weight=conf.rating_value_as_weight)
    pairs = pairs.persist(StorageLevel.MEMORY_AND_DISK)
    for table, id_col, index_col in ((USER_INDEX_TABLE, USER_ID, USER_INDEX), (ITEM_INDEX_TABLE, ITEM_ID, ITEM_INDEX)):
        first = pairs.groupBy(id_col).agg(F.min(FIRST_TIME).alias("first_seen"))
        index = update_index(first, io.read_table_if_exists(spark, wh, table),
                             id_col=id_col, index_col=index_col, run_date=run_date)
        io.write_table(index, wh, table)
    # Read back what was published so every table below uses the same numbering.
    # (Not cached: the index tables are small, and a cached read of a path that
    # is rewritten on the next run would serve stale rows in a long-lived session.)
    user_index = io.read_table(spark, wh, USER_INDEX_TABLE)
    item_index = io.read_table(spark, wh, ITEM_INDEX_TABLE)
    interactions = filter_min_activity(
        interactions_from_pairs(pairs, user_index, item_index),
        min_user=conf.min_user_interactions,
        min_item=conf.min_item_interactions,
    )
    io.write_table(interactions, wh, INTERACTIONS)
    io.write_table(build_users(pairs, user_index), wh, USERS)
    io.write_table(build_items(pairs, item_index, read_item_metadata(spark, cfg.dataset.items)), wh, ITEMS)
    pairs.unpersist()

    written, items = io.read_table(spark, wh, INTERACTIONS), io.read_table(spark, wh, ITEMS)
    return {
        "users": io.read_table(spark, wh, USERS).count(),
        "items": items.count(),
        "interactions": written.count(),
        "interaction_users": written.select(USER_INDEX).distinct().count(),
        "interaction_items": written.select(ITEM_INDEX).distinct().count(),
        "user_index_size": user_index.count(),
        "item_index_size": item_index.count(),
        "items_with_metadata": items.where(F.col("title").isNotNull()).count(),
        "warehouse": wh,
    }
