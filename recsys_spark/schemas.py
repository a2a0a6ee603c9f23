"""Every warehouse table's schema, in one place.

Jobs read and write tables only through :mod:`recsys_spark.io`, which checks
and casts to these schemas, so a table's shape changes here or nowhere.
``docs/tables.md`` documents the same tables for downstream readers; a test
keeps the two in step.
"""
from __future__ import annotations

from dataclasses import dataclass

from pyspark.sql.types import (
    ArrayType,
    BinaryType,
    DateType,
    DoubleType,
    FloatType,
    IntegerType,
    LongType,
    StringType,
    StructField,
    StructType,
    TimestampType,
)

# Bumped whenever a table below changes incompatibly; recorded in model
# metadata and run manifests so that readers can refuse stale inputs.
SCHEMA_VERSION = 1

# Canonical event column names (after mapping from the source).
EVENT_ID = "event_id"
USER_ID = "user_id"
ITEM_ID = "item_id"
EVENT_TYPE = "event_type"
EVENT_TIME = "event_time"
EVENT_DATE = "event_date"
VALUE = "value"
SESSION_ID = "session_id"
SOURCE_FILE = "source_file"

# The event types the pipeline knows (clean.event_types defaults to these;
# the users table counts each; the synthetic generator emits them).
EVENT_TYPES = ("view", "click", "add_to_cart", "purchase", "rating")

# Quarantine reason codes (the quarantine table's ``reason``), in check order:
# a row gets the first one that applies (recsys_spark.ingest.cleaning).
REASON_TOO_LONG = "record_too_long"
REASON_MALFORMED = "malformed_record"
REASON_MISSING_USER = "missing_user_id"
REASON_MISSING_ITEM = "missing_item_id"
REASON_ID_TYPE = "invalid_id_type"
REASON_ID_TOO_LONG = "id_too_long"
REASON_UNKNOWN_TYPE = "unknown_event_type"
REASON_INVALID_TS = "invalid_timestamp"
REASON_TOO_OLD = "timestamp_too_old"
REASON_FUTURE = "timestamp_in_future"
REASON_INVALID_VALUE = "invalid_value"
REASON_BOT = "bot_user"
REASON_CODES = (
    REASON_TOO_LONG,
    REASON_MALFORMED,
    REASON_MISSING_USER,
    REASON_MISSING_ITEM,
    REASON_ID_TYPE,
    REASON_ID_TOO_LONG,
    REASON_UNKNOWN_TYPE,
    REASON_INVALID_TS,
    REASON_TOO_OLD,
    REASON_FUTURE,
    REASON_INVALID_VALUE,
    REASON_BOT,
)
# Whole files left out of the read (the quarantined_files table's ``reason``):
# the bytes are there but cannot be decoded (truncated or corrupt compression,
# not Parquet) ...
FILE_CORRUPT = "corrupt_file"
# ... or the file cannot be opened or listed (permission, broken link, link loop).
FILE_UNREADABLE = "unreadable_file"
FILE_REASON_CODES = (FILE_CORRUPT, FILE_UNREADABLE)

USER_INDEX = "user_index"
ITEM_INDEX = "item_index"
WEIGHT = "weight"
LAST_TIME = "last_time"  # an interaction's latest event: what orders a user's history

# Column names shared by modules that pass DataFrames to each other (not all are stored).
SEEN = "seen"  # a user's items (array of item indexes), in time order where it matters
FACTORS = "factors"  # a user's or item's vector (array<float>)
SCORE = "score"
RANK = "rank"  # 1 = best
SOURCE = "source"  # what served a user: the model or the cold-start fallback
FOLD = "fold"  # train | validation | test
SEGMENT = "segment"  # warm | cold_user | cold_item


def _s(*fields: tuple[str, object, bool]) -> StructType:
    return StructType([StructField(name, dtype, nullable) for name, dtype, nullable in fields])


@dataclass(frozen=True)
class Table:
    """A named warehouse table: where it lives, its schema and partitioning."""

    name: str
    path: str  # relative to the warehouse root
    schema: StructType
    partition_by: tuple[str, ...] = ()
    description: str = ""


EVENTS_CLEAN = Table(
    "events_clean",
    "events_clean",
    _s(
        (EVENT_ID, StringType(), True),
        (USER_ID, StringType(), False),
        (ITEM_ID, StringType(), False),
        (EVENT_TYPE, StringType(), False),
        (EVENT_TIME, TimestampType(), False),
        (VALUE, DoubleType(), True),
        (SESSION_ID, StringType(), True),
        (SOURCE_FILE, StringType(), False),
        (EVENT_DATE, DateType(), False),
    ),
    partition_by=(EVENT_DATE,),
    description="Validated, deduplicated events in canonical form, times in UTC.",
)

QUARANTINE = Table(
    "quarantine",
    "quarantine",
    _s(
        # Always valid UTF-8 (invalid bytes shown as U+FFFD), so that every
        # Parquet reader can read the table; the exact bytes are in raw_bytes.
        ("raw_record", StringType(), True),
        ("raw_bytes", BinaryType(), True),  # the raw line as read, when it was not parsed
        (SOURCE_FILE, StringType(), False),
        ("reason", StringType(), False),
        ("detail", StringType(), True),
        ("run_id", StringType(), False),
    ),
    partition_by=("reason",),
    description="Rows that failed validation, with the raw record, source file and reason code.",
)

QUARANTINED_FILES = Table(
    "quarantined_files",
    "quarantined_files",
    _s(
        (SOURCE_FILE, StringType(), False),
        ("size_bytes", LongType(), True),  # null when the entry could not even be listed
        ("reason", StringType(), False),  # corrupt_file | unreadable_file
        ("detail", StringType(), True),  # the error's first line
        ("run_id", StringType(), False),
    ),
    description="Source files left out of a clean run because they could not be read, and why.",
)

USER_INDEX_TABLE = Table(
    "user_index",
    "tables/user_index",
    _s((USER_ID, StringType(), False), (USER_INDEX, IntegerType(), False), ("first_indexed", DateType(), False)),
    description="Append-only map raw user id -> dense index; known ids keep their index across runs.",
)

ITEM_INDEX_TABLE = Table(
    "item_index",
    "tables/item_index",
    _s((ITEM_ID, StringType(), False), (ITEM_INDEX, IntegerType(), False), ("first_indexed", DateType(), False)),
    description="Append-only map raw item id -> dense index; known ids keep their index across runs.",
)

USERS = Table(
    "users",
    "tables/users",
    _s(
        (USER_INDEX, IntegerType(), False),
        (USER_ID, StringType(), False),
        ("first_seen", TimestampType(), False),
        ("last_seen", TimestampType(), False),
        ("n_events", LongType(), False),
        ("n_items", LongType(), False),
        ("n_view", LongType(), False),
        ("n_click", LongType(), False),
        ("n_add_to_cart", LongType(), False),
        ("n_purchase", LongType(), False),
        ("n_rating", LongType(), False),
    ),
    description="One row per user with activity counts by event type.",
)

ITEMS = Table(
    "items",
    "tables/items",
    _s(
        (ITEM_INDEX, IntegerType(), False),
        (ITEM_ID, StringType(), False),
        ("popularity", LongType(), False),
        ("n_events", LongType(), False),
        ("first_seen", TimestampType(), False),
        ("last_seen", TimestampType(), False),
        ("title", StringType(), True),
        ("year", IntegerType(), True),
        ("genres", ArrayType(StringType(), True), True),
    ),
    description="One row per item: popularity (distinct users), activity and optional metadata.",
)

INTERACTIONS = Table(
    "interactions",
    "tables/interactions",
    _s(
        (USER_INDEX, IntegerType(), False),
        (ITEM_INDEX, IntegerType(), False),
        (WEIGHT, FloatType(), False),
        ("event_count", LongType(), False),
        ("first_time", TimestampType(), False),
        ("last_time", TimestampType(), False),
    ),
    description="One row per (user, item) pair: confidence weight from event types and ratings.",
)

FOLDS = ("train", "validation", "test")
SEGMENTS = ("warm", "cold_user", "cold_item")

SPLIT = Table(
    "split",
    "split",
    _s(
        (USER_INDEX, IntegerType(), False),
        (ITEM_INDEX, IntegerType(), False),
        (WEIGHT, FloatType(), False),
        ("last_time", TimestampType(), False),
        # warm: user and item both have training interactions; cold_user / cold_item:
        # first seen after the cutoff, evaluated separately.
        ("segment", StringType(), False),
        ("fold", StringType(), False),
    ),
    partition_by=("fold",),
    description="Interactions split into train / validation / test folds; held-out rows exclude pairs seen before.",
)

USER_FACTORS = Table(
    "user_factors",
    "models/{model}/user_factors",
    _s((USER_INDEX, IntegerType(), False), ("factors", ArrayType(FloatType(), True), False)),
    description="A dot-product model's user vectors by dense index.",
)

ITEM_FACTORS = Table(
    "item_factors",
    "models/{model}/item_factors",
    _s((ITEM_INDEX, IntegerType(), False), ("factors", ArrayType(FloatType(), True), False)),
    description="A dot-product model's item vectors by dense index (EASE: rows of its item-item matrix).",
)

EVAL_RECS = Table(
    "eval_recs",
    "eval_recs/{model}/{fold}",
    _s(
        (USER_INDEX, IntegerType(), False),
        (ITEM_INDEX, IntegerType(), False),
        ("score", FloatType(), False),
        ("rank", IntegerType(), False),
    ),
    description="Each model's top-K for the warm users of a held-out fold, excluding their training items.",
)

MODEL_COMPARISON = Table(
    "model_comparison",
    "model_comparison/run_date={run_date}",
    _s(
        ("model", StringType(), False),
        ("metric", StringType(), False),  # ndcg_at_10, recall_at_20, mrr, coverage_at_50, ...
        ("test", DoubleType(), True),  # on the test fold (what models are compared on)
        ("validation", DoubleType(), True),  # on the validation fold (what selection saw)
    ),
    description="Every model's metrics of a run, one row per model and metric (jobs/evaluate.py).",
)
RECOMMENDATIONS = Table(
    "recommendations",
    "recommendations/run_date={run_date}",
    _s(
        (USER_ID, StringType(), False),
        (ITEM_ID, StringType(), False),
        ("rank", IntegerType(), False),  # 1 = best
        ("score", FloatType(), False),  # the serving model's (or popularity's) score
        ("model", StringType(), False),  # the serving model's name
        ("source", StringType(), False),  # model | popularity_fallback
        ("explanation", StringType(), True),  # item_id from the user's history most similar to item_id
    ),
    description="The published top-N per known user (raw ids), from the serving model or the popularity fallback.",
)

ALL_TABLES: dict[str, Table] = {
    t.name: t
    for t in (
        EVENTS_CLEAN, QUARANTINE, QUARANTINED_FILES, USER_INDEX_TABLE, ITEM_INDEX_TABLE, USERS, ITEMS, INTERACTIONS,
        SPLIT, USER_FACTORS, ITEM_FACTORS, EVAL_RECS, MODEL_COMPARISON, RECOMMENDATIONS,
    )
}


def get_table(name: str) -> Table:
    try:
        return ALL_TABLES[name]
    except KeyError:
        raise KeyError(f"unknown table '{name}'; known: {', '.join(sorted(ALL_TABLES))}") from None
