"""Reading a raw event source (``dataset.source``) into canonical string columns.

Whatever the format, :func:`read_source` returns one row per source record with

* the canonical fields (:data:`FIELDS`) as strings, named canonically; a field
  the config does not map is a null column. Nothing is parsed or trimmed here:
  the cleaner decides what is valid;
* ``source_file``: the file the row came from;
* ``corrupt_record``: the raw line when the record could not be parsed
  (malformed JSON, a CSV line with the wrong number of fields), else null;
* ``raw_record``: the raw line for a malformed record, else a JSON rendering of
  the mapped source columns under their source names (:func:`raw_record_column`).

Every source column is read as a string (JSON with an explicit all-string
schema keeps numbers as their text), so a value of the wrong type reaches
the cleaner as text instead of silently becoming null. A new CSV layout is
read by config alone: ``csv_header``, ``csv_delimiter`` and the column map
(without a header, columns are named by position: ``_c0``, ``_c1``, ...).
"""
from __future__ import annotations

from pyspark.sql import Column, DataFrame, SparkSession
from pyspark.errors import AnalysisException
from pyspark.sql import functions as F
from pyspark.sql.types import StringType, StructField, StructType

from recsys_spark import io
from recsys_spark.config import SourceConf
from recsys_spark.schemas import EVENT_ID, EVENT_TYPE, ITEM_ID, SESSION_ID, SOURCE_FILE, USER_ID, VALUE

TIMESTAMP = "timestamp"  # the raw time text; the cleaner turns it into event_time
FIELDS = (EVENT_ID, USER_ID, ITEM_ID, EVENT_TYPE, TIMESTAMP, VALUE, SESSION_ID)
CORRUPT_RECORD = "corrupt_record"
RAW_RECORD = "raw_record"
# JSON has no header: a mapped column is looked for in the first lines of the first file.
JSON_SAMPLE_LINES = 1000
_CORRUPT = "_corrupt_record"  # Spark-side name, chosen not to clash with a source column


class SourceError(ValueError):
    """The source does not match its config (a mapped column is absent, no files)."""


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


def raw_record_column(source: SourceConf) -> Column:
    """``raw_record`` from canonical columns: the raw line if malformed, else the mapped columns as JSON.

    A pure function of ``corrupt_record`` and the (untouched) canonical string
    columns, so it can be rendered again at any later stage.
    """
    rendered = F.to_json(F.struct(*[F.col(f).alias(name) for f, name in mapped_columns(source).items()]))
    return F.coalesce(F.col(CORRUPT_RECORD), rendered)


def read_source(spark: SparkSession, source: SourceConf) -> DataFrame:
    """Read ``source`` into canonical string columns (see the module docstring).

    Raises:
        FileNotFoundError: ``source.path`` does not exist.
        SourceError: no input files, or a mapped column is absent (the message
            names the file and the column).
    """
    path = source.path
    if not path:
        raise SourceError("dataset.source.path is empty: set it to the raw events")
    if not io.path_exists(spark, path):
        raise FileNotFoundError(f"dataset.source.path '{path}' does not exist")
    mapping = mapped_columns(source)
    readers = {"json": _read_json, "csv": _read_csv, "parquet": _read_parquet}
    df = readers[source.format](spark, source, mapping)
    out = [
        (F.col(mapping[f]).cast(StringType()) if f in mapping else F.lit(None).cast(StringType())).alias(f)
        for f in FIELDS
    ]
    # input_file_name() is evaluated right above the scan, before any shuffle.
    df = df.select(*out, F.input_file_name().alias(SOURCE_FILE), F.col(_CORRUPT).alias(CORRUPT_RECORD))
    return df.withColumn(RAW_RECORD, raw_record_column(source))


def _first_file(df: DataFrame, path: str, fmt: str) -> str:
    # The reader has listed the files already (hidden _/. files excluded): no second listing.
    files = sorted(df.inputFiles())
    if not files:
        raise SourceError(f"dataset.source.path '{path}' holds no {fmt} files")
    return files[0]


def _missing(path: str, file: str, mapping: dict[str, str], have: list[str], fields) -> None:
    for field in fields:
        name = mapping.get(field)
        if name and name not in have:
            raise SourceError(
                f"{path}: mapped column '{name}' (dataset.source.columns.{field}) not found in {file}; "
                f"columns there: {sorted(have)}"
            )


def _string_schema(names: list[str]) -> StructType:
    return StructType([StructField(n, StringType(), True) for n in names] + [StructField(_CORRUPT, StringType(), True)])


def _read_json(spark: SparkSession, source: SourceConf, mapping: dict[str, str]) -> DataFrame:
    df = (
        spark.read.schema(_string_schema(list(dict.fromkeys(mapping.values()))))
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _CORRUPT)
        .json(source.path)
    )
    first = _first_file(df, source.path, "json")
    # No header to check against: the required fields must occur in the first
    # lines of the first file (optional ones, such as a rating's value, may be rare).
    keys = (
        spark.read.text(first)
        .limit(JSON_SAMPLE_LINES)
        .select(F.explode(F.json_object_keys("value")).alias("k"))
        .agg(F.collect_set("k").alias("keys"))
        .first()["keys"]  # the distinct keys of a small sample: a handful of strings
    )
    if keys:  # an empty or wholly malformed first file proves nothing
        _missing(source.path, first, mapping, keys, [USER_ID, ITEM_ID, TIMESTAMP, EVENT_TYPE])
    return df


def _read_csv(spark: SparkSession, source: SourceConf, mapping: dict[str, str]) -> DataFrame:
    opts = {"header": str(source.csv_header).lower(), "sep": source.csv_delimiter}
    # Column names from the header (or _c0.. by position) of the first line;
    # no type inference: every column stays a string.
    probe = spark.read.options(**opts).csv(source.path)
    first = _first_file(probe, source.path, "csv")
    _missing(source.path, first, mapping, probe.columns, list(mapping))
    reader = (
        spark.read.schema(_string_schema(probe.columns))
        .options(**opts)
        .option("mode", "PERMISSIVE")
        .option("columnNameOfCorruptRecord", _CORRUPT)
    )
    if source.csv_header:
        # Check every file's header against the first one's instead of trusting positions.
        reader = reader.option("enforceSchema", "false")
    return reader.csv(source.path)


def _read_parquet(spark: SparkSession, source: SourceConf, mapping: dict[str, str]) -> DataFrame:
    try:
        df = spark.read.parquet(source.path)
    except AnalysisException as exc:  # e.g. an empty directory: no schema to infer
        raise SourceError(f"dataset.source.path '{source.path}': cannot read as parquet ({exc})") from None
    first = _first_file(df, source.path, "parquet")
    _missing(source.path, first, mapping, df.columns, list(mapping))
    # Parquet rows are typed: none is malformed.
    return df.withColumn(_CORRUPT, F.lit(None).cast(StringType()))
