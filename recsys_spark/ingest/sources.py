"""Reading a raw event source (``dataset.source``) into canonical string columns.

Whatever the format, :func:`read_source` returns one row per source record with

* the canonical fields (:data:`FIELDS`) as strings, named canonically; a field
  the config does not map (or a Parquet file lacks) is a null column. Nothing
  is parsed or trimmed here: the cleaner decides what is valid;
* ``source_file``: the file the row came from;
* ``corrupt_record``: the raw line, exactly as read, when the record was not
  parsed (malformed JSON, invalid UTF-8, a CSV line with the wrong number of
  fields, a line over ``max_record_bytes``: its first ``max_record_bytes``
  bytes), else null;
* ``parse_error``: why it was not parsed (null when it was);
* ``record_bytes``: the record's size: the raw line's bytes for JSON lines and
  malformed CSV lines, else the bytes of the mapped fields;
* ``raw_record``: a valid-UTF-8 rendering of the raw line for a malformed
  record, else a JSON rendering of the mapped source columns under their
  source names (:func:`raw_record_column`).

Every source column is read as a string (JSON lines are parsed with an
explicit all-string schema, which keeps numbers as their text), so a value of
the wrong type reaches the cleaner as text instead of silently becoming null.
A new CSV layout is read by config alone: ``csv_header``, ``csv_delimiter`` and
the column map (without a header, columns are named by position: ``_c0``, ...).

Files are listed and probed first (:func:`probe_files`): a file that cannot be
opened or decoded is reported as a file and never given to Spark, so one bad
file cannot fail the whole read.
"""
from __future__ import annotations

import re
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from recsys_spark import io
from recsys_spark.config import SourceConf
from recsys_spark.schemas import (
    EVENT_ID,
    EVENT_TYPE,
    FILE_CORRUPT,
    FILE_UNREADABLE,
    ITEM_ID,
    SESSION_ID,
    SOURCE_FILE,
    USER_ID,
    VALUE,
)

TIMESTAMP = "timestamp"  # the raw time text; the cleaner turns it into event_time
FIELDS = (EVENT_ID, USER_ID, ITEM_ID, EVENT_TYPE, TIMESTAMP, VALUE, SESSION_ID)
CORRUPT_RECORD = "corrupt_record"
PARSE_ERROR = "parse_error"
RECORD_BYTES = "record_bytes"
RAW_RECORD = "raw_record"
# JSON has no header: a mapped column is looked for in the first lines of the first file.
JSON_SAMPLE_LINES = 1000
_CORRUPT = "_corrupt_record"  # Spark-side name, chosen not to clash with a source column
_LINE, _VALID_UTF8, _JSON, _PARSED = "_line", "_valid_utf8", "_json", "_parsed"

# Probing is I/O bound (a decompressing read, a footer fetch): overlap it.
PROBE_THREADS = 8
# Glob characters Spark would expand in a path it is given; escaped so that a
# file named "a[1].json" is read as itself.
_GLOB_CHARS = re.compile(r"([\\{}\[\]*?])")


class SourceError(ValueError):
    """The source does not match its config (a mapped column is absent, no files)."""


@dataclass(frozen=True)
class UnreadableFile:
    """A source file left out of the read, and why (one row of ``quarantined_files``)."""

    path: str  # a URI, as input_file_name() gives it
    size_bytes: int | None  # None when it could not even be listed
    reason: str  # FILE_CORRUPT | FILE_UNREADABLE
    detail: str  # the error's first line


@dataclass(frozen=True)
class SourceFiles:
    """The outcome of :func:`probe_files`."""

    readable: list[str]  # qualified paths, sorted: what Spark reads
    unreadable: list[UnreadableFile]
    # Parquet only: each readable file's columns and types, from its footer.
    parquet_columns: dict[str, dict[str, str]] = field(default_factory=dict)


def mapped_columns(source: SourceConf) -> dict[str, str]:
    """Canonical field -> source column name, for the fields the config maps."""
    cols = source.columns
    mapping = {
        EVENT_ID: cols.event_id,
        USER_ID: cols.user_id,
        ITEM_ID: cols.item_id,
        EVENT_TYPE: cols.event_type,
        TIMESTAMP: cols.timestamp,
        VALUE: cols.value,
        SESSION_ID: cols.session_id,
    }
    return {field: name for field, name in mapping.items() if name}


def utf8_text(col: Column) -> Column:
    """``col``'s bytes decoded as UTF-8, each invalid sequence replaced by U+FFFD: always valid UTF-8.

    Spark's text reader does not validate bytes, and a Parquet string column
    holding invalid UTF-8 cannot be read by pyarrow, pandas or DuckDB.
    """
    return F.decode(col.cast("binary"), "UTF-8")


def raw_record_column(source: SourceConf) -> Column:
    """``raw_record`` from canonical columns: the raw line if malformed, else the mapped columns as JSON.

    A pure function of ``corrupt_record`` and the (untouched) canonical string
    columns, so it can be rendered again at any later stage. Always valid
    UTF-8 (:func:`utf8_text`); the exact bytes are kept in the quarantine's
    ``raw_bytes``.
    """
    rendered = F.to_json(F.struct(*[F.col(f).alias(name) for f, name in mapped_columns(source).items()]))
    return F.coalesce(utf8_text(F.col(CORRUPT_RECORD)), rendered)


# --------------------------------------------------------------------------- files


def probe_files(spark: SparkSession, source: SourceConf, *, listing: io.SourceListing | None = None) -> SourceFiles:
    """List the source's files and try each one cheaply; split them into readable and unreadable.

    ``listing``: the files to probe, when not all of the source's
    (:func:`io.list_source_files`); an incremental clean passes the changed partitions'.

    * JSON/CSV: a compressed file (by name: ``.gz``, ``.bz2``, ...) is read
      to its end through its codec, streaming in the JVM (bounded memory), so a
      truncated or corrupt stream is found here rather than mid-job; an
      uncompressed file is opened and its first byte read. A zero-byte file is
      readable (it holds no records).
    * Parquet: the footer is read (schema and row groups; data pages are not).

    Raises:
        SourceError: ``source.path`` is empty or holds no files at all.
        FileNotFoundError: ``source.path`` does not exist.
    """
    path, fmt = source.path, source.format
    if not path:
        raise SourceError("dataset.source.path is empty: set it to the raw events")
    if listing is None:
        listing = list_files(spark, source)
    if not listing.files and not listing.unlisted:
        raise SourceError(f"dataset.source.path '{path}' holds no {fmt} files")

    def probe(entry: tuple[str, int]) -> tuple[str, dict[str, str] | None, UnreadableFile | None]:
        file, size = entry
        try:
            if fmt == "parquet":
                return file, io.parquet_columns(spark, file), None
            if size > 0:
                io.read_to_end(spark, file)
            return file, None, None
        except io.FileReadError as exc:
            reason = FILE_UNREADABLE if exc.stage == "open" else FILE_CORRUPT
            return file, None, UnreadableFile(io.file_uri(spark, file), size, reason, exc.message)

    with ThreadPoolExecutor(PROBE_THREADS) as pool:
        probed = list(pool.map(probe, listing.files))
    # Named as input_file_name() names the files read, so that source_file
    # means the same in quarantined_files as in events_clean and quarantine.
    unreadable = [UnreadableFile(io.file_uri(spark, p), None, FILE_UNREADABLE, err) for p, err in listing.unlisted]
    unreadable += [bad for _, _, bad in probed if bad is not None]
    return SourceFiles(
        readable=[f for f, _, bad in probed if bad is None],
        unreadable=sorted(unreadable, key=lambda u: u.path),
        parquet_columns={f: cols for f, cols, bad in probed if bad is None and cols is not None},
    )


def list_files(spark: SparkSession, source: SourceConf) -> io.SourceListing:
    """Every data file under ``source.path`` (:func:`io.list_source_files`), with the path named in errors."""
    try:
        return io.list_source_files(spark, source.path)
    except FileNotFoundError:
        raise FileNotFoundError(f"dataset.source.path '{source.path}' does not exist") from None


def _spark_paths(files: list[str]) -> list[str]:
    return [_GLOB_CHARS.sub(r"\\\1", f) for f in files]


# --------------------------------------------------------------------------- reading


def read_source(
    spark: SparkSession,
    source: SourceConf,
    *,
    files: SourceFiles | None = None,
    max_record_bytes: int | None = None,
) -> DataFrame:
    """Read ``source`` into canonical string columns (see the module docstring).

    Args:
        files: :func:`probe_files`' result, whose readable files are read.
            None: probe here, and fail on any unreadable file.
        max_record_bytes: a JSON line longer than this is not parsed (it
            comes back with ``corrupt_record`` set and ``record_bytes`` telling
            its size); None: no limit.

    Raises:
        FileNotFoundError: ``source.path`` does not exist.
        SourceError: no (readable) input files, an unreadable file when
            ``files`` is None, or a mapped column is absent (the message names
            the file and the column).
    """
    if files is None:
        files = probe_files(spark, source)
        if files.unreadable:
            raise SourceError(describe_unreadable(files.unreadable[0]))
    if not files.readable:
        first = files.unreadable[0]
        raise SourceError(
            f"dataset.source.path '{source.path}' holds no readable {source.format} files "
            f"({len(files.unreadable)} unreadable; first: {describe_unreadable(first)})"
        )
    mapping = mapped_columns(source)
    readers = {"json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
    df = readers[source.format](spark, source, mapping, files, max_record_bytes)
    return df.select(*FIELDS, SOURCE_FILE, CORRUPT_RECORD, PARSE_ERROR, RECORD_BYTES, raw_record_column(source).alias(RAW_RECORD))


def describe_unreadable(bad: UnreadableFile) -> str:
    """One line naming the file, the reason and the error."""
    return f"{bad.reason}: {bad.path}: {bad.detail}"


def _missing(path: str, file: str, mapping: dict[str, str], have, fields) -> None:
    for field_name in fields:
        name = mapping.get(field_name)
        if name and name not in have:
            raise SourceError(
                f"{path}: mapped column '{name}' (dataset.source.columns.{field_name}) not found in {file}; "
                f"columns there: {sorted(have)}"
            )


def _string_schema(names: list[str]) -> StructType:
    return StructType([StructField(n, StringType(), True) for n in names] + [StructField(_CORRUPT, StringType(), True)])


def _read_json(spark: SparkSession, source: SourceConf, mapping: dict[str, str], files: SourceFiles,
               max_record_bytes: int | None) -> DataFrame:
    names = list(dict.fromkeys(mapping.values()))
    first = files.readable[0]
    # No header to check against: the required fields must occur in the first
    # lines of the first file (optional ones, such as a rating's value, may be rare).
    keys = (
        spark.read.text(_spark_paths([first]))
        .limit(JSON_SAMPLE_LINES)
        .select(F.explode(F.json_object_keys("value")).alias("k"))
        .agg(F.collect_set("k").alias("keys"))
        .first()["keys"]  # the distinct keys of a small sample: a handful of strings
    )
    if keys:  # an empty or wholly malformed first file proves nothing
        _missing(source.path, first, mapping, keys, [USER_ID, ITEM_ID, TIMESTAMP, EVENT_TYPE])

    # Lines are read as text and parsed with from_json (the JSON reader's own
    # parser), so that a line can be looked at before it is parsed: one over
    # the size limit or not valid UTF-8 is never handed to the parser, and a
    # line is exactly one record (the JSON reader would make several rows of
    # an array line). input_file_name() is evaluated right above the scan.
    line = F.col(_LINE)
    # Blank lines (Jackson's whitespace, or only a byte order mark) are not
    # records, as for Spark's JSON reader. Dropped on the raw line, right at
    # the scan: a filter on a parsed column would be pushed below the parse
    # and make Spark parse every line again.
    blank = ~line.startswith("{") & F.expr(f"trim(BOTH ' \\t\\r\\n\ufeff' FROM {_LINE}) = ''")
    df = (
        spark.read.text(_spark_paths(files.readable))
        .select(F.col("value").alias(_LINE), F.input_file_name().alias(SOURCE_FILE))
        .where(~blank)
    )
    df = df.select("*", F.octet_length(line).alias(RECORD_BYTES))
    fits = F.col(RECORD_BYTES) <= max_record_bytes if max_record_bytes else F.lit(True)
    # Valid UTF-8 when decoding replaces nothing (Spark 3.5 has no cheaper
    # test: length() counts an invalid byte as a character). Null when too
    # long: not looked at.
    df = df.select("*", F.when(fits, utf8_text(line) == line).alias(_VALID_UTF8))
    valid_utf8 = F.col(_VALID_UTF8)
    # A byte order mark is not JSON: the JSON reader skips it, from_json does not.
    without_bom = F.when(line.startswith("\ufeff"), F.expr(f"substring({_LINE}, 2)")).otherwise(line)
    df = df.select("*", F.when(valid_utf8, without_bom).alias(_JSON))
    js = F.col(_JSON)
    opts = {"mode": "PERMISSIVE", "columnNameOfCorruptRecord": _CORRUPT}
    # A key given twice keeps its last value (Jackson's behaviour, as in
    # Spark's JSON reader). Finding such lines costs a search per mapped key
    # per line, which measured more than the parse itself (docs/cleaning.md).
    df = df.select("*", F.from_json(js, _string_schema(names), opts).alias(_PARSED))
    error = (
        F.when(~fits, F.lit("not parsed: over the size limit"))
        .when(~valid_utf8, F.lit("not valid UTF-8"))
        .when(F.col(f"{_PARSED}.{_CORRUPT}").isNotNull() & F.ltrim(js).startswith("{"), F.lit("not valid JSON"))
        .when(F.col(f"{_PARSED}.{_CORRUPT}").isNotNull(), F.lit("not a JSON object"))
        .when(F.col(_PARSED).isNull(), F.lit("not a JSON object"))  # "null"
    )
    df = df.select("*", error.alias(PARSE_ERROR))
    ok = F.col(PARSE_ERROR).isNull()
    # No field needs gating on ok: a line not handed to the parser has a null
    # struct, and a malformed one only nulls (PERMISSIVE mode).
    out = [
        (F.col(_PARSED)[mapping[f]] if f in mapping else F.lit(None).cast(StringType())).alias(f)
        for f in FIELDS
    ]
    # A line over the limit is kept only up to it (cut as bytes: the cast
    # back to string does not decode), so that a huge line is not carried
    # through the cache into the quarantine.
    head = F.substring(line.cast("binary"), 1, max_record_bytes or 1).cast(StringType())
    corrupt = F.when(~fits, head).when(~ok, line)
    return df.select(*out, SOURCE_FILE, corrupt.alias(CORRUPT_RECORD), PARSE_ERROR, RECORD_BYTES)


def _fields_bytes(names: list[str]) -> Column:
    return sum((F.coalesce(F.octet_length(F.col(n)), F.lit(0)) for n in names), F.lit(0))


def _read_csv(spark: SparkSession, source: SourceConf, mapping: dict[str, str], files: SourceFiles,
              max_record_bytes: int | None) -> DataFrame:
    opts = {"header": str(source.csv_header).lower(), "sep": source.csv_delimiter}
    # Column names from the header (or _c0.. by position) of the first file's
    # first line; no type inference: every column stays a string.
    first = files.readable[0]
    columns = spark.read.options(**opts).csv(_spark_paths([first])).columns
    _missing(source.path, first, mapping, columns, list(mapping))
    reader = (
        spark.read.schema(_string_schema(columns))
        .options(**opts)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _CORRUPT)
    )
    if source.csv_header:
        # Check every file's header against the first one's instead of trusting positions.
        reader = reader.option("enforceSchema", "false")
    df = reader.csv(_spark_paths(files.readable)).select("*", F.input_file_name().alias(SOURCE_FILE))
    # The CSV reader decodes bytes itself, replacing invalid UTF-8 with U+FFFD:
    # the raw bytes are gone, so a replacement character in a mapped field
    # marks the record as not valid UTF-8 (a genuine U+FFFD counts too).
    replaced = F.instr(F.concat_ws("", *[F.col(n) for n in mapping.values()]), "\ufffd") > 0
    corrupt = F.when(F.col(_CORRUPT).isNotNull() | replaced, F.coalesce(F.col(_CORRUPT), F.to_json(F.struct(*mapping.values()))))
    error = F.when(F.col(_CORRUPT).isNotNull(), F.lit("wrong number of fields")).when(replaced, F.lit("not valid UTF-8"))
    # Fields stay as the CSV reader gave them, also on a malformed line: the
    # cleaner's first check quarantines it whatever they hold.
    out = [(F.col(mapping[f]) if f in mapping else F.lit(None).cast(StringType())).alias(f) for f in FIELDS]
    return df.select(
        *out,
        SOURCE_FILE,
        corrupt.alias(CORRUPT_RECORD),
        error.alias(PARSE_ERROR),
        F.coalesce(F.octet_length(F.col(_CORRUPT)), _fields_bytes(list(mapping.values()))).alias(RECORD_BYTES),
    )


def _read_parquet(spark: SparkSession, source: SourceConf, mapping: dict[str, str], files: SourceFiles,
                  max_record_bytes: int | None) -> DataFrame:
    first = files.readable[0]
    _missing(source.path, first, mapping, files.parquet_columns[first], list(mapping))
    # Files whose mapped columns differ in type (int in one, string in the
    # next) cannot share one scan: Spark fails on the first that does not
    # match. Each group of files with the same mapped columns is read on its
    # own and cast to strings, then the groups are unioned: nothing is lost.
    groups: dict[tuple, list[str]] = {}
    for file in files.readable:
        cols = files.parquet_columns[file]
        key = tuple(cols.get(name) for name in mapping.values())
        groups.setdefault(key, []).append(file)
    parts = []
    for key, group in groups.items():
        present = {name for name, kind in zip(mapping.values(), key) if kind is not None}
        df = spark.read.parquet(*_spark_paths(group))
        out = [
            (F.col(mapping[f]).cast(StringType()) if mapping.get(f) in present else F.lit(None).cast(StringType())).alias(f)
            for f in FIELDS
        ]
        # Parquet rows are typed: none is malformed.
        parts.append(
            df.select(*out, F.input_file_name().alias(SOURCE_FILE)).select(
                "*",
                F.lit(None).cast(StringType()).alias(CORRUPT_RECORD),
                F.lit(None).cast(StringType()).alias(PARSE_ERROR),
                _fields_bytes(list(FIELDS)).alias(RECORD_BYTES),
            )
        )
    out_df = parts[0]
    for part in parts[1:]:
        out_df = out_df.unionByName(part)
    return out_df
