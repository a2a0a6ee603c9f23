"""Validating, normalising and deduplicating raw events.

Input: the canonical string columns of :func:`recsys_spark.ingest.sources.read_source`.
Output tables: ``events_clean`` and ``quarantine`` (:mod:`recsys_spark.schemas`).

Every input row ends in exactly one place, and :func:`run_clean` checks it:

    input rows = clean rows + duplicates + quarantined rows

* a row failing a check goes to quarantine with the reason code of the first
  failing check, in the order of :data:`REASON_CODES`;
* valid rows are deduplicated (by ``event_id`` when present, else by the full
  key user, item, type, time, value); the extra copies are *duplicates*;
* users with more than ``clean.bot.max_events_per_minute`` distinct events in
  any 60-second window are bots: all their remaining rows go to quarantine
  with ``bot_user``;
* what is left is clean.

Files come before rows: :func:`sources.probe_files` finds the source files
that cannot be read (truncated or corrupt compression, no Parquet footer,
permission, broken links); they are left out of the read and written to
``quarantined_files`` (or, with ``clean.on_unreadable_file: fail``, stop the
run with one line naming the file). The row counts above cover the files read.

The transforms (``validate_events``, ``mark_duplicates``, ``find_bot_users``,
``flag_bot_users``, ``to_events_clean``, ``to_quarantine``) are pure functions
of DataFrames; :func:`run_clean` is the one function here that reads and writes.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import time
import uuid
from collections.abc import Callable
from typing import Any

from pyspark import StorageLevel
from pyspark.sql import Column, DataFrame, SparkSession, Window
from pyspark.sql import functions as F
from pyspark.sql.types import StringType

from recsys_spark import io
from recsys_spark.ingest import sources
from recsys_spark.config import Config
from recsys_spark.schemas import (
    EVENT_DATE,
    FILE_REASON_CODES,
    REASON_BOT,
    REASON_CODES,
    REASON_FUTURE,
    REASON_ID_TOO_LONG,
    REASON_ID_TYPE,
    REASON_INVALID_TS,
    REASON_INVALID_VALUE,
    REASON_MALFORMED,
    REASON_MISSING_ITEM,
    REASON_MISSING_USER,
    REASON_TOO_LONG,
    REASON_TOO_OLD,
    REASON_UNKNOWN_TYPE,
    EVENT_ID,
    EVENT_TIME,
    EVENT_TYPE,
    EVENTS_CLEAN,
    ITEM_ID,
    QUARANTINE,
    QUARANTINED_FILES,
    SESSION_ID,
    Table,
    SOURCE_FILE,
    USER_ID,
    VALUE,
)

# Every id column: checked for type and length.
ID_COLUMNS = (USER_ID, ITEM_ID, EVENT_ID, SESSION_ID)

RATING = "rating"
BOT_IDS_IN_REPORT = 50  # the report lists at most this many bot user ids
FILES_IN_REPORT = 100  # ... and this many quarantined files (the table has them all)
# Above this many repeated events the dedupe joins shuffle instead of broadcasting.
MAX_BROADCAST_GROUPS = 200_000
REASON = "reason"
DETAIL = "detail"
IS_DUPLICATE = "is_duplicate"
IS_BOT = "is_bot"
# Parsed values live beside the raw strings (which stay untouched, so that
# the quarantine can show the record as it came).
P_EVENT_ID, P_TYPE, P_TIME, P_VALUE = "_event_id", "_event_type", "_event_time", "_value"
_ID_TYPE_PROBLEM, _ID_LENGTH_PROBLEM = "_id_type_problem", "_id_length_problem"

# ISO 8601 as sources write it: a date, optionally a time (T or space) with
# optional seconds and fraction, and an optional Z / +hh:mm offset. Spark's
# cast alone is too lenient (it reads "2026-01-05T1" as 01:00).
ISO_8601 = r"^\d{4}-\d{2}-\d{2}([T ]\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?)?$"
# Bounded digit counts keep epoch values inside Spark's timestamp range.
EPOCH_S = r"^-?\d{1,12}(\.\d{1,6})?$"
EPOCH_MS = r"^-?\d{1,15}(\.\d{1,3})?$"
NUMBER = r"^[+-]?(\d+(\.\d*)?|\.\d+)([eE][+-]?\d{1,3})?$"  # no NaN, Infinity or Java's "4d"


class ReconciliationError(RuntimeError):
    """input rows != clean + duplicates + quarantined: a row was lost or counted twice."""


class UnreadableFileError(sources.SourceError):
    """A source file cannot be read and ``clean.on_unreadable_file`` is ``fail``."""


# --------------------------------------------------------------------------- parsing


def parse_event_time(col: Column, *, timestamp_format: str) -> Column:
    """A raw time string as a UTC timestamp, or null when it does not parse.

    Args:
        col: string column.
        timestamp_format: ``iso8601`` (no offset means UTC), ``epoch_s`` or
            ``epoch_ms`` (fractions allowed).
    """
    text = F.trim(col)
    if timestamp_format == "iso8601":
        # The session time zone is UTC (session.build_spark): no offset means UTC.
        return F.when(text.rlike(ISO_8601), text.cast("timestamp"))
    if timestamp_format == "epoch_s":
        return F.when(text.rlike(EPOCH_S), F.timestamp_micros((text.cast("decimal(19,6)") * 1_000_000).cast("long")))
    if timestamp_format == "epoch_ms":
        return F.when(text.rlike(EPOCH_MS), F.timestamp_micros((text.cast("decimal(19,3)") * 1_000).cast("long")))
    raise ValueError(f"timestamp_format must be iso8601, epoch_s or epoch_ms, got '{timestamp_format}'")


def _blank(col: Column) -> Column:
    return col.isNull() | (F.trim(col) == "")


def _json_container(col: Column) -> Column:
    return (col.startswith("{") & col.endswith("}")) | (col.startswith("[") & col.endswith("]"))


def _utc(ts: dt.datetime | str) -> dt.datetime:
    value = dt.datetime.fromisoformat(ts.replace("Z", "+00:00")) if isinstance(ts, str) else ts
    return value.replace(tzinfo=dt.timezone.utc) if value.tzinfo is None else value.astimezone(dt.timezone.utc)


# --------------------------------------------------------------------------- transforms


def validate_events(
    df: DataFrame,
    *,
    event_types: list[str],
    timestamp_format: str,
    min_time: dt.datetime | str,
    max_time: dt.datetime | str,
    rating_min: float,
    rating_max: float,
    fixed_event_type: str | None = None,
    max_record_bytes: int | None = None,
    max_id_length: int | None = None,
) -> DataFrame:
    """Check every row; add the parsed values, a reason code and a detail.

    Args:
        df: canonical string columns plus ``corrupt_record``, ``parse_error``
            and ``record_bytes`` (``sources.read_source``).
        event_types: accepted types (compared trimmed and lower-cased).
        timestamp_format: see :func:`parse_event_time`.
        min_time: earlier events are ``timestamp_too_old`` (naive means UTC).
        max_time: later events are ``timestamp_in_future``.
        rating_min, rating_max: a rating's value must lie in this range.
        fixed_event_type: the type of every row, for sources without a type column.
        max_record_bytes: a longer record is ``record_too_long`` (None: no limit).
        max_id_length: a longer id (characters) is ``id_too_long`` (None: no limit).

    Returns:
        ``df`` plus ``_event_id``, ``_event_type``, ``_event_time``, ``_value``
        (parsed) and ``reason``/``detail`` (null for valid rows). Values are
        numbers when present; a rating without a value is invalid.
    """
    lo, hi = _utc(min_time), _utc(max_time)
    etype = F.lit(fixed_event_type) if fixed_event_type else F.lower(F.trim(F.col(EVENT_TYPE)))
    ts = parse_event_time(F.col(sources.TIMESTAMP), timestamp_format=timestamp_format)
    raw_value = F.trim(F.col(VALUE))
    number = F.when(raw_value.rlike(NUMBER), raw_value.cast("double"))
    value_given = ~_blank(F.col(VALUE))
    # The id checks, one text per kind (null: fine), computed once here: in
    # the check list below, which builds both the reason and the detail
    # expression, each is then a single condition instead of four.
    id_type = F.coalesce(*[F.when(_json_container(F.col(c)), F.lit(f"{c} is a JSON object or array")) for c in ID_COLUMNS])
    # Which id is over the limit (octet_length is read from the string's
    # header; only an id with more bytes than the limit has its characters
    # counted).
    id_length = (
        F.coalesce(*[
            F.when((F.octet_length(F.col(c)) > max_id_length) & (F.length(F.col(c)) > max_id_length),
                   F.lit(f"{c} over the limit of {max_id_length} characters"))
            for c in ID_COLUMNS
        ])
        if max_id_length
        else F.lit(None).cast(StringType())
    )
    df = df.select(
        "*",
        F.nullif(F.trim(F.col(EVENT_ID)), F.lit("")).alias(P_EVENT_ID),
        etype.alias(P_TYPE),
        ts.alias(P_TIME),
        number.alias(P_VALUE),
        id_type.alias(_ID_TYPE_PROBLEM),
        id_length.alias(_ID_LENGTH_PROBLEM),
    )
    t, v = F.col(P_TIME), F.col(P_VALUE)
    is_rating = F.col(P_TYPE) == RATING
    size = F.col(sources.RECORD_BYTES)
    checks: list[tuple[Column, str, Column]] = [
        (
            size > max_record_bytes if max_record_bytes else F.lit(False),
            REASON_TOO_LONG,
            F.concat(F.lit("record of "), size.cast("string"), F.lit(f" bytes, over the limit of {max_record_bytes}")),
        ),
        (
            F.col(sources.CORRUPT_RECORD).isNotNull(),
            REASON_MALFORMED,
            F.coalesce(F.col(sources.PARSE_ERROR), F.lit("record could not be parsed")),
        ),
        (F.col(USER_ID).isNull(), REASON_MISSING_USER, F.lit("no user id")),
        (_blank(F.col(USER_ID)), REASON_MISSING_USER, F.lit("empty user id")),
        (F.col(ITEM_ID).isNull(), REASON_MISSING_ITEM, F.lit("no item id")),
        (_blank(F.col(ITEM_ID)), REASON_MISSING_ITEM, F.lit("empty item id")),
        # Ids are read as text; a JSON object or array in an id's place comes
        # back as its JSON text, which is no id (a string id that looks like
        # one is refused too: it cannot be told apart).
        (F.col(_ID_TYPE_PROBLEM).isNotNull(), REASON_ID_TYPE, F.col(_ID_TYPE_PROBLEM)),
        (F.col(_ID_LENGTH_PROBLEM).isNotNull(), REASON_ID_TOO_LONG, F.col(_ID_LENGTH_PROBLEM)),
        (
            F.col(P_TYPE).isNull() | ~F.col(P_TYPE).isin(*event_types),
            REASON_UNKNOWN_TYPE,
            F.concat(F.lit("event type '"), F.coalesce(F.col(EVENT_TYPE), F.lit("<none>")), F.lit("' not in "),
                     F.lit(", ".join(event_types))),
        ),
        (
            t.isNull(),
            REASON_INVALID_TS,
            F.concat(F.lit("cannot parse '"), F.coalesce(F.col(sources.TIMESTAMP), F.lit("<none>")),
                     F.lit(f"' as {timestamp_format}")),
        ),
        (t < F.lit(lo), REASON_TOO_OLD, F.concat(F.lit("before "), F.lit(lo.isoformat()), F.lit(": "), t.cast("string"))),
        (t > F.lit(hi), REASON_FUTURE, F.concat(F.lit("after "), F.lit(hi.isoformat()), F.lit(": "), t.cast("string"))),
        (
            value_given & v.isNull(),
            REASON_INVALID_VALUE,
            F.concat(F.lit("value '"), F.col(VALUE), F.lit("' is not a number")),
        ),
        (is_rating & ~value_given, REASON_INVALID_VALUE, F.lit("rating without a value")),
        (
            is_rating & ((v < rating_min) | (v > rating_max)),
            REASON_INVALID_VALUE,
            F.concat(F.lit("rating "), v.cast("string"), F.lit(f" outside [{rating_min}, {rating_max}]")),
        ),
    ]
    reason, detail = F.lit(None).cast(StringType()), F.lit(None).cast(StringType())
    for cond, code, text in reversed(checks):  # folded from the last so the first check wins
        reason = F.when(cond, F.lit(code)).otherwise(reason)
        detail = F.when(cond, text).otherwise(detail)
    return df.withColumn(REASON, reason).withColumn(DETAIL, detail).drop(_ID_TYPE_PROBLEM, _ID_LENGTH_PROBLEM)


DEDUPE_KEY_COLS = (USER_ID, ITEM_ID, P_TYPE, P_TIME, P_VALUE)
DEDUPE_ORDER_COLS = (P_TIME, SOURCE_FILE, USER_ID, ITEM_ID, P_TYPE, P_VALUE, SESSION_ID)
_K_ID, _K_FULL = "_key_id", "_key_full"


def _with_event_key(df: DataFrame, id_col: str, key_cols: tuple[str, ...]) -> DataFrame:
    # An event is (id, null) when it has an id, else (null, full key).
    return df.select(
        "*",
        F.col(id_col).alias(_K_ID),
        F.when(F.col(id_col).isNull(), F.struct(*key_cols)).alias(_K_FULL),
    )


def duplicate_groups(
    df: DataFrame, *, id_col: str = P_EVENT_ID, key_cols: tuple[str, ...] = DEDUPE_KEY_COLS
) -> DataFrame:
    """The events that occur in more than one row of ``df``.

    An event is identified by ``id_col`` when it is not null, else by all of
    ``key_cols``. Returns the key columns ``_key_id``, ``_key_full`` and
    ``rows`` (its number of rows): a narrow aggregation, usually tiny.
    """
    keyed = _with_event_key(df, id_col, key_cols)
    return keyed.groupBy(_K_ID, _K_FULL).agg(F.count(F.lit(1)).alias("rows")).where(F.col("rows") > 1)


def mark_duplicates(
    df: DataFrame,
    groups: DataFrame,
    *,
    id_col: str = P_EVENT_ID,
    key_cols: tuple[str, ...] = DEDUPE_KEY_COLS,
    order_cols: tuple[str, ...] = DEDUPE_ORDER_COLS,
    broadcast_groups: bool = True,
) -> DataFrame:
    """Add ``is_duplicate``: true on every row but one per event.

    Within an event the first row by ``order_cols`` is kept (a window), so the
    choice is deterministic: rows equal in all of them are identical.

    Args:
        df: the rows to deduplicate.
        groups: ``duplicate_groups(df)`` with the same ``id_col``/``key_cols``.
            Only rows of these events go through the window (a sort); the
            others, nearly all, are unique and pass through a hash join.
        broadcast_groups: broadcast ``groups`` to the join (when small).
    """
    keyed = _with_event_key(df, id_col, key_cols)
    g = groups.select(F.col(_K_ID).alias("_g_id"), F.col(_K_FULL).alias("_g_full"))
    g = F.broadcast(g) if broadcast_groups else g
    # Null-safe: exactly one of the two key parts is null.
    cond = F.col(_K_ID).eqNullSafe(F.col("_g_id")) & F.col(_K_FULL).eqNullSafe(F.col("_g_full"))
    unique = keyed.join(g, cond, "left_anti").withColumn(IS_DUPLICATE, F.lit(False))
    repeated = keyed.join(g, cond, "left_semi")
    window = Window.partitionBy(_K_ID, _K_FULL).orderBy(*[F.col(c).asc_nulls_last() for c in order_cols])
    ranked = repeated.withColumn(IS_DUPLICATE, F.row_number().over(window) > 1)
    return unique.unionByName(ranked).drop(_K_ID, _K_FULL)


def find_bot_users(
    df: DataFrame,
    *,
    max_events_per_minute: int,
    user_col: str = USER_ID,
    time_col: str = P_TIME,
) -> DataFrame:
    """Users with more than ``max_events_per_minute`` rows inside any 60-second window.

    Args:
        df: one row per event (deduplicated), with ``user_col`` and ``time_col``.

    Returns:
        One column ``user_col``, one row per bot user.
    """
    n = max_events_per_minute
    # Any 60 s window lies within two consecutive calendar minutes, so a bot
    # has more than n/2 events in some calendar minute: a cheap aggregation
    # finds the candidates, and only their events go through the exact
    # sliding-window count (a sort), not every user's.
    candidates = (
        df.groupBy(user_col, F.date_trunc("minute", F.col(time_col)).alias("_minute"))
        .count()
        .where(F.col("count") * 2 > n)
        .select(user_col)  # repeats are harmless: a semi join only asks "is there one"
    )
    ms = df.select(user_col, F.unix_millis(F.col(time_col)).alias("_ms")).join(candidates, user_col, "left_semi")
    window = Window.partitionBy(user_col).orderBy("_ms").rangeBetween(0, 59_999)
    return (
        ms.withColumn("_n", F.count(F.lit(1)).over(window))
        .where(F.col("_n") > n)
        .select(user_col)
        .distinct()
    )


def flag_bot_users(df: DataFrame, bots: DataFrame, *, user_col: str = USER_ID) -> DataFrame:
    """Add ``is_bot``: whether the row's user is in ``bots`` (one column ``user_col``)."""
    # Bots are a handful of users: broadcast them rather than shuffle every event.
    flagged = F.broadcast(bots.select(user_col).withColumn(IS_BOT, F.lit(True)))
    return df.join(flagged, user_col, "left").withColumn(IS_BOT, F.coalesce(F.col(IS_BOT), F.lit(False)))


# events_clean's columns and the validated rows' names for them: one map, read both ways
# (to_events_clean writes clean rows, as_validated reads them back to dedupe against).
CLEAN_FROM_PARSED = ((EVENT_ID, P_EVENT_ID), (USER_ID, USER_ID), (ITEM_ID, ITEM_ID), (EVENT_TYPE, P_TYPE),
                     (EVENT_TIME, P_TIME), (VALUE, P_VALUE))


def to_events_clean(df: DataFrame) -> DataFrame:
    """Valid rows (parsed columns) in the ``events_clean`` layout."""
    return df.select(
        *[F.col(parsed).alias(clean) for clean, parsed in CLEAN_FROM_PARSED],
        F.nullif(F.trim(F.col(SESSION_ID)), F.lit("")).alias(SESSION_ID),
        F.col(SOURCE_FILE),
        F.to_date(F.col(P_TIME)).alias(EVENT_DATE),
    )


def to_quarantine(df: DataFrame, *, raw_record: Column, run_id: str, max_record_bytes: int | None = None) -> DataFrame:
    """Rows with a ``reason`` in the ``quarantine`` layout.

    Args:
        raw_record: how to render the raw record (``sources.raw_record_column``).
        max_record_bytes: ``raw_record`` and ``raw_bytes`` keep at most this
            many characters / bytes (only a ``record_too_long`` row is longer).
    """
    raw_bytes = F.col(sources.CORRUPT_RECORD).cast("binary")  # the bytes as read, not re-encoded
    if max_record_bytes:
        raw_record = F.substring(raw_record, 1, max_record_bytes)
        raw_bytes = F.substring(raw_bytes, 1, max_record_bytes)
    return df.select(
        raw_record.alias("raw_record"),
        raw_bytes.alias("raw_bytes"),
        F.col(SOURCE_FILE),
        F.col(REASON).alias("reason"),
        # Details quote raw values: kept valid UTF-8 like raw_record.
        sources.utf8_text(F.col(DETAIL)).alias("detail"),
        F.lit(run_id).alias("run_id"),
    )


def to_quarantined_files(spark: SparkSession, unreadable: list[sources.UnreadableFile], *, run_id: str) -> DataFrame:
    """The files ``sources.probe_files`` found unreadable, in the ``quarantined_files`` layout."""
    rows = [(u.path, u.size_bytes, u.reason, u.detail, run_id) for u in unreadable]
    return spark.createDataFrame(rows, QUARANTINED_FILES.schema)


# --------------------------------------------------------------------------- the run


def new_run_id(now: dt.datetime | None = None) -> str:
    now = now or dt.datetime.now(dt.timezone.utc)
    return f"{now:%Y%m%dT%H%M%SZ}-{uuid.uuid4().hex[:6]}"


@dataclasses.dataclass
class Batch:
    """What one clean run reads, and how it writes.

    The default is the full clean: every source file, every table replaced
    whole. :mod:`recsys_spark.ingest.incremental` passes the changed
    partitions' files, the ``events_clean`` rows to check them against and a
    writer that replaces only what they touch.
    """

    listing: io.SourceListing | None = None  # None: all of the source's files
    existing: DataFrame | None = None  # see classify()
    known_bots: tuple[str, ...] = ()  # see classify()
    # (spark, cfg, outputs, counts, classified) -> entries for the report; None: write_replacing
    write: Callable[..., dict[str, Any]] | None = None


def run_clean(
    spark: SparkSession,
    cfg: Config,
    *,
    reference_time: dt.datetime | str | None = None,
    run_id: str | None = None,
    batch: Batch | None = None,
) -> dict[str, Any]:
    """Clean ``cfg.dataset.source`` into ``events_clean`` and ``quarantine``; write the run report.

    Args:
        reference_time: "now" for the future-timestamp check (default: the
            current time); pass a fixed one for reproducible runs.
        run_id: names the report and tags quarantine rows (default: time + random).
        batch: what to read and how to write (default: a full clean, :class:`Batch`).

    Returns:
        The report written to ``<warehouse>/reports/clean_events/<run_id>.json``.

    Raises:
        FileNotFoundError / sources.SourceError: the source is missing or does
            not match its config.
        ReconciliationError: input rows != clean + duplicates + quarantined
            (checked before anything is written, and again on the
            written tables before they replace the last run's).
    """
    started = time.monotonic()
    batch = batch or Batch()
    ref = reference_time_or_now(reference_time)
    run_id = run_id or new_run_id()
    files = probe(spark, cfg, listing=batch.listing)
    classified = classify(spark, cfg, files, ref, existing=batch.existing, known_bots=batch.known_bots)
    try:
        counts = count_rows(classified)
        outputs = output_frames(spark, cfg, classified, files, run_id=run_id)
        written = (batch.write or write_replacing)(spark, cfg, outputs, counts, classified)
    finally:
        classified.release()
    report = clean_report(cfg, counts, files, run_id=run_id, ref=ref)
    report.update(written)
    report["elapsed_s"] = round(time.monotonic() - started, 1)
    io.write_json(spark, io.report_path(cfg.warehouse, "clean_events", run_id), report)
    return report


def reference_time_or_now(reference_time: dt.datetime | str | None) -> dt.datetime:
    return _utc(reference_time) if reference_time is not None else dt.datetime.now(dt.timezone.utc)


def probe(spark: SparkSession, cfg: Config, *, listing: io.SourceListing | None = None) -> sources.SourceFiles:
    """The source's files, split into readable and unreadable; stops here on an
    unreadable one when ``clean.on_unreadable_file`` is ``fail``.

    Files first: an unreadable one is left out (and listed) or stops the run
    here, before Spark is given a path list that would fail mid-job.
    """
    files = sources.probe_files(spark, cfg.dataset.source, listing=listing)
    if files.unreadable and cfg.clean.on_unreadable_file == "fail":
        bad = files.unreadable[0]
        more = f" (and {len(files.unreadable) - 1} more)" if len(files.unreadable) > 1 else ""
        raise UnreadableFileError(
            f"{sources.describe_unreadable(bad)}{more}; clean.on_unreadable_file=quarantine skips such files"
        )
    return files


INCOMING = "_incoming"  # 1: a row of this run's input, 0: an events_clean row it is checked against


def as_validated(events_clean: DataFrame) -> DataFrame:
    """``events_clean`` rows under the parsed-column names of :func:`validate_events`' output,
    so that this run's rows can be deduplicated against them."""
    return events_clean.select(
        *[F.col(clean).alias(parsed) for clean, parsed in CLEAN_FROM_PARSED],
        F.col(SESSION_ID),
        F.col(SOURCE_FILE),
    )


@dataclasses.dataclass
class Classified:
    """Every input row of a run, checked (``validated``), and its valid rows flagged (``flagged``)."""

    validated: DataFrame  # all input rows, with reason/detail (persisted)
    flagged: DataFrame  # valid input rows with is_duplicate and is_bot
    bot_user_ids: list[str]  # users found to be bots now, or known as bots before
    _held: tuple[DataFrame, ...] = ()

    def release(self) -> None:
        for df in self._held:
            df.unpersist()


def classify(
    spark: SparkSession,
    cfg: Config,
    files: sources.SourceFiles,
    ref: dt.datetime,
    *,
    existing: DataFrame | None = None,
    known_bots: list[str] | tuple[str, ...] = (),
) -> Classified:
    """Read ``files``, check every row, mark duplicates and bots.

    Args:
        existing: ``events_clean`` rows this run's rows are checked against
            (an incremental run's look-back): a row repeating one of them is a
            duplicate, and they count towards the bot rule. They are never
            marked themselves: what is already clean stays clean.
        known_bots: users found to be bots by earlier runs; their rows are bot rows.
    """
    clean, src = cfg.clean, cfg.dataset.source
    raw = sources.read_source(spark, src, files=files, max_record_bytes=clean.max_record_bytes).drop(
        sources.RAW_RECORD  # rendered again for quarantine rows only
    )
    validated = validate_events(
        raw,
        event_types=clean.event_types,
        timestamp_format=src.timestamp_format,
        min_time=clean.min_timestamp,
        max_time=ref + dt.timedelta(hours=clean.max_future_hours),
        rating_min=clean.rating_min,
        rating_max=clean.rating_max,
        fixed_event_type=src.fixed_event_type if src.columns.event_type is None else None,
        max_record_bytes=clean.max_record_bytes,
        max_id_length=clean.max_id_length,
    )
    # Parsing the source is the costliest step and its rows feed the counts,
    # the quarantine and the dedupe: parse once. DISK_ONLY: the columnar
    # cache streams to local disk batch by batch, where MEMORY_AND_DISK
    # unrolls partitions on the heap first (10M events overran a 1g driver).
    validated = validated.persist(StorageLevel.DISK_ONLY)
    valid = validated.where(F.col(REASON).isNull())
    order = DEDUPE_ORDER_COLS
    if existing is not None:
        # Existing rows sort first within an event: a repeat of one of them is the duplicate.
        valid = valid.withColumn(INCOMING, F.lit(1)).unionByName(
            as_validated(existing).withColumn(INCOMING, F.lit(0)), allowMissingColumns=True)
        order = (INCOMING, *DEDUPE_ORDER_COLS)
    # The two small results everything downstream joins with: kept so that
    # each consumer (counts, quarantine, clean) re-derives the flagged rows
    # with broadcast joins over the cache instead of a sort per consumer.
    groups = duplicate_groups(valid).persist(StorageLevel.MEMORY_AND_DISK)
    small = groups.count() <= MAX_BROADCAST_GROUPS
    marked = mark_duplicates(valid, groups, broadcast_groups=small, order_cols=order)
    bots = find_bot_users(marked.where(~F.col(IS_DUPLICATE)), max_events_per_minute=clean.bot.max_events_per_minute)
    if known_bots:
        bots = bots.unionByName(spark.createDataFrame([(u,) for u in known_bots], f"{USER_ID} string")).distinct()
    bots = bots.persist(StorageLevel.MEMORY_AND_DISK)
    if existing is not None:
        marked = marked.where(F.col(INCOMING) == 1).drop(INCOMING)
    # Bots are few by construction (see find_bot_users): their ids fit in a list.
    bot_user_ids = sorted(r[USER_ID] for r in bots.collect())
    return Classified(validated, flag_bot_users(marked, bots), bot_user_ids, (bots, groups, validated))


@dataclasses.dataclass(frozen=True)
class RowCounts:
    """Where a run's input rows went; ``input == clean + duplicates + quarantined``."""

    input: int
    clean: int
    duplicates: int
    quarantined: int
    by_reason: dict[str, int]
    by_type: dict[str, int]
    bot_users: list[str]  # among this run's rows


def count_rows(classified: Classified) -> RowCounts:
    """Count where every input row went, and check that they add up.

    Raises:
        ReconciliationError: a row was lost or counted twice.
    """
    validated, flagged = classified.validated, classified.flagged
    # Counts come from small aggregates over the cached frames (a few rows each).
    by_reason = {r[REASON]: r["count"] for r in validated.groupBy(REASON).count().collect()}
    input_rows = sum(by_reason.values())
    valid_rows = by_reason.pop(None, 0)
    groups = (
        flagged.groupBy(IS_DUPLICATE, IS_BOT, P_TYPE)
        .agg(F.count(F.lit(1)).alias("count"), F.collect_set(F.when(F.col(IS_BOT), F.col(USER_ID))).alias("bots"))
        .collect()
    )
    duplicates = sum(r["count"] for r in groups if r[IS_DUPLICATE])
    bot_rows = sum(r["count"] for r in groups if r[IS_BOT] and not r[IS_DUPLICATE])
    bot_users = sorted({u for r in groups for u in r["bots"]})
    by_type = {r[P_TYPE]: r["count"] for r in groups if not r[IS_DUPLICATE] and not r[IS_BOT]}
    clean_rows = sum(by_type.values())
    if bot_rows:
        by_reason[REASON_BOT] = bot_rows
    quarantined = sum(by_reason.values())
    if valid_rows != duplicates + bot_rows + clean_rows or input_rows != clean_rows + duplicates + quarantined:
        raise ReconciliationError(
            f"input {input_rows} != clean {clean_rows} + duplicates {duplicates} + quarantined {quarantined}"
        )
    return RowCounts(input_rows, clean_rows, duplicates, quarantined, by_reason, by_type, bot_users)


def output_frames(
    spark: SparkSession, cfg: Config, classified: Classified, files: sources.SourceFiles, *, run_id: str
) -> dict[Table, DataFrame]:
    """This run's rows of ``events_clean``, ``quarantine`` and ``quarantined_files``."""
    validated, flagged = classified.validated, classified.flagged
    raw_record = sources.raw_record_column(cfg.dataset.source)
    bad = validated.where(F.col(REASON).isNotNull())
    bot_rows_df = flagged.where(F.col(IS_BOT) & ~F.col(IS_DUPLICATE)).withColumn(REASON, F.lit(REASON_BOT)).withColumn(
        DETAIL, F.lit(f"more than {cfg.clean.bot.max_events_per_minute} events in a minute")
    )
    limit = cfg.clean.max_record_bytes
    quarantine = to_quarantine(bad, raw_record=raw_record, run_id=run_id, max_record_bytes=limit).unionByName(
        to_quarantine(bot_rows_df, raw_record=raw_record, run_id=run_id, max_record_bytes=limit)
    )
    clean_df = to_events_clean(flagged.where(~F.col(IS_DUPLICATE) & ~F.col(IS_BOT)))
    # quarantined_files is written every run, empty when every file was read, so that
    # it always describes the same run as events_clean and quarantine.
    return {EVENTS_CLEAN: clean_df, QUARANTINE: quarantine,
            QUARANTINED_FILES: to_quarantined_files(spark, files.unreadable, run_id=run_id)}


def write_staged(spark: SparkSession, cfg: Config, outputs: dict[Table, DataFrame],
                 expected: dict[Table, int]) -> dict[Table, str]:
    """Write each table beside its place and count it there.

    Returns the staging paths; the caller moves them into place. When a count
    differs from ``expected`` (or a write fails) the staging directories are
    deleted and the tables in place are left as they were.

    Raises:
        ReconciliationError: written rows differ from the counted ones.
    """
    staged = {t: io.staging_path(io.table_path(cfg.warehouse, t)) for t in outputs}
    try:
        for t, frame in outputs.items():
            io.write_table(frame, cfg.warehouse, t, path=staged[t])
        # Parquet counts are metadata reads.
        written = {t: io.read_table(spark, cfg.warehouse, t, path=staged[t]).count() for t in outputs}
        if written != expected:
            raise ReconciliationError("written rows differ from counted: " + ", ".join(
                f"{t.name} {written[t]} vs {expected[t]}" for t in outputs))
    except BaseException:
        for path in staged.values():
            io.delete_path(spark, path)
        raise
    return staged


def write_replacing(spark: SparkSession, cfg: Config, outputs: dict[Table, DataFrame], counts: RowCounts,
                    classified: Classified | None = None) -> dict[str, Any]:
    """The full clean's write: every table replaced whole by this run's rows."""
    # Only when all three tables hold exactly what was counted are they moved
    # into place, so a failed check leaves the last good run's tables as they were.
    expected = {EVENTS_CLEAN: counts.clean, QUARANTINE: counts.quarantined,
                QUARANTINED_FILES: outputs[QUARANTINED_FILES].count()}
    staged = write_staged(spark, cfg, outputs, expected)
    for t, path in staged.items():
        io.publish_directory(spark, path, io.table_path(cfg.warehouse, t))
    return {}


def clean_report(cfg: Config, counts: RowCounts, files: sources.SourceFiles, *, run_id: str,
                 ref: dt.datetime) -> dict[str, Any]:
    """The run report: where this run's input rows and files went, and where the tables are."""
    c_path, q_path, qf_path = (io.table_path(cfg.warehouse, t) for t in (EVENTS_CLEAN, QUARANTINE, QUARANTINED_FILES))
    files_by_reason = {r: sum(1 for u in files.unreadable if u.reason == r) for r in FILE_REASON_CODES}
    return {
        "run_id": run_id,
        "dataset": cfg.dataset.name,
        "source_path": cfg.dataset.source.path,
        "reference_time": ref.isoformat(),
        "input_rows": counts.input,
        "clean_rows": counts.clean,
        "duplicates": counts.duplicates,
        "quarantined_rows": counts.quarantined,
        "quarantined_by_reason": {r: counts.by_reason.get(r, 0) for r in REASON_CODES},
        # Files, counted apart from rows: the row counts cover the files read.
        "input_files": len(files.readable),
        "quarantined_files": len(files.unreadable),
        "quarantined_files_by_reason": files_by_reason,
        "quarantined_file_list": [
            {"path": u.path, "size_bytes": u.size_bytes, "reason": u.reason, "detail": u.detail}
            for u in files.unreadable[:FILES_IN_REPORT]
        ],
        "events_by_type": {t: counts.by_type.get(t, 0)
                           for t in sorted(set(cfg.clean.event_types) | set(counts.by_type))},
        "bot_users": len(counts.bot_users),
        "bot_user_ids": counts.bot_users[:BOT_IDS_IN_REPORT],
        "reconciles": True,
        "outputs": {"events_clean": c_path, "quarantine": q_path, "quarantined_files": qf_path},
        "config": {"dataset": dataclasses.asdict(cfg.dataset), "clean": dataclasses.asdict(cfg.clean)},
    }
