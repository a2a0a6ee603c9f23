"""The only module that knows warehouse paths.

Tables are written by casting to their schema from :mod:`recsys_spark.schemas`
into a staging directory that is then renamed into place, so a reader never
sees half a table; reads check the schema and fail naming the table and column.
Paths go through Hadoop's FileSystem API so that the same code works on a
local disk, HDFS or an object store.
"""
from __future__ import annotations

import json
import os
import uuid
from dataclasses import dataclass, field
from typing import Any

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark.schemas import Table, get_table


class SchemaMismatch(ValueError):
    """A table on disk or a DataFrame does not have the declared schema."""


def table_path(warehouse: str, table: Table | str, **parts: str) -> str:
    """Where ``table`` lives; ``parts`` fill templated paths (``model=...``)."""
    t = get_table(table) if isinstance(table, str) else table
    return f"{warehouse.rstrip('/')}/{t.path.format(**parts)}"


def models_root(warehouse: str) -> str:
    """``<warehouse>/models``: one folder per trained model."""
    return f"{warehouse.rstrip('/')}/models"


def model_dir(warehouse: str, model: str) -> str:
    return f"{models_root(warehouse)}/{model}"


def model_file(warehouse: str, model: str, name: str) -> str:
    """A file in a model's folder (``metadata.json``, ``model.pt``, ``item_item.npy``)."""
    return f"{model_dir(warehouse, model)}/{name}"


def report_path(warehouse: str, job: str, name: str) -> str:
    """A job's run report: ``<warehouse>/reports/<job>/<name>.json``."""
    return f"{warehouse.rstrip('/')}/reports/{job}/{name}.json"


def clean_state_path(warehouse: str) -> str:
    """``<warehouse>/_state/clean_events.json``: which source partitions ``events_clean`` holds (incremental clean)."""
    return f"{warehouse.rstrip('/')}/_state/clean_events.json"


def eval_recs_root(warehouse: str) -> str:
    """``<warehouse>/eval_recs``: one folder per model with held-out top-K."""
    return table_path(warehouse, "eval_recs", model="x", fold="x").rsplit("/", 2)[0]


def split_protocol_path(warehouse: str) -> str:
    """``<warehouse>/split/_split.json``: the protocol and fold sizes the split job wrote."""
    return f"{table_path(warehouse, 'split')}/_split.json"


def metrics_dir(warehouse: str, run_date: str) -> str:
    """``<warehouse>/metrics/run_date=D``: the evaluate job's per-model metrics and comparison."""
    return f"{warehouse.rstrip('/')}/metrics/run_date={run_date}"


def metrics_path(warehouse: str, run_date: str, name: str) -> str:
    """A file of the evaluate job's output for ``run_date`` (``<model>.json``, ``comparison.md`` ...)."""
    return f"{metrics_dir(warehouse, run_date)}/{name}"


def run_manifest_path(warehouse: str, run_date: str) -> str:
    """``runs/run_date=D/manifest.json``: every stage of that date's nightly run (recsys_spark.nightly)."""
    return f"{warehouse.rstrip('/')}/runs/run_date={run_date}/manifest.json"


def is_local_path(path: str) -> bool:
    """Whether ``path`` is on the local file system: a plain path or a ``file:`` URL (not hdfs://, s3a://...)."""
    return "://" not in path or path.startswith("file:")


def strip_file_scheme(path: str) -> str:
    """A ``file://`` URL as a plain path; any other path unchanged."""
    return path[len("file://"):] if path.startswith("file://") else path


def metastore_dir(warehouse: str, *, fallback: str) -> str:
    """Where the embedded Derby metastore lives: ``<warehouse>/_metastore`` on a local
    warehouse (Derby needs a local directory), else ``fallback``."""
    if not is_local_path(warehouse):
        return os.path.abspath(fallback)
    return os.path.abspath(f"{strip_file_scheme(warehouse).rstrip('/')}/_metastore")


def run_lock_path(warehouse: str) -> str:
    """``_run.lock``: held by the one nightly run working on this warehouse."""
    return f"{warehouse.rstrip('/')}/_run.lock"


def run_dated_root(warehouse: str, table: Table | str) -> str:
    """The parent of a run-dated table's ``run_date=D`` folders (``recommendations``, ``model_comparison``)."""
    return table_path(warehouse, table, run_date="x").rsplit("/", 1)[0]


def recommendations_root(warehouse: str) -> str:
    """The parent of every published run (``run_date=D`` folders and ``_latest.json``)."""
    return run_dated_root(warehouse, "recommendations")


def recommendations_run_path(warehouse: str, run_date: str) -> str:
    """One published run: ``recommendations/run_date=D``."""
    return table_path(warehouse, "recommendations", run_date=run_date)


def catalog_sizes(spark: SparkSession, warehouse: str) -> tuple[int, int]:
    """(n_users, n_items): the sizes of the id indexes, i.e. the row counts of every factor matrix."""
    def size(table):
        index_col = table.schema.fields[1].name
        return (read_table(spark, warehouse, table).agg(F.max(index_col)).first()[0] or -1) + 1

    return size(get_table("user_index")), size(get_table("item_index"))


# --------------------------------------------------------------------------- filesystem


def _fs(spark: SparkSession, path: str):
    jvm = spark.sparkContext._jvm
    jpath = jvm.org.apache.hadoop.fs.Path(path)
    return jpath.getFileSystem(spark.sparkContext._jsc.hadoopConfiguration()), jpath


def path_exists(spark: SparkSession, path: str) -> bool:
    fs, p = _fs(spark, path)
    return fs.exists(p)


def delete_path(spark: SparkSession, path: str) -> None:
    fs, p = _fs(spark, path)
    if fs.exists(p):
        fs.delete(p, True)


def rename_path(spark: SparkSession, src: str, dst: str) -> None:
    fs, s = _fs(spark, src)
    _, d = _fs(spark, dst)
    parent = d.getParent()
    if parent is not None and not fs.exists(parent):
        fs.mkdirs(parent)
    if not fs.rename(s, d):
        raise OSError(f"could not rename {src} -> {dst}")


def copy_from_local(spark: SparkSession, local_path: str, dst: str) -> None:
    """Copy a local file into the warehouse (any Hadoop filesystem), streamed: never held in memory.

    For large binary artifacts (EASE's item x item matrix): passing bytes through
    py4j would copy them into the driver JVM's heap.
    """
    fs, d = _fs(spark, dst)
    jvm = spark.sparkContext._jvm
    fs.copyFromLocalFile(False, True, jvm.org.apache.hadoop.fs.Path(f"file://{os.path.abspath(local_path)}"), d)


def copy_to_local(spark: SparkSession, src: str, local_path: str) -> None:
    """Copy a warehouse file to a local path, streamed (the counterpart of :func:`copy_from_local`)."""
    fs, s = _fs(spark, src)
    jvm = spark.sparkContext._jvm
    # useRawLocalFileSystem=True: no .crc file beside the copy.
    fs.copyToLocalFile(False, s, jvm.org.apache.hadoop.fs.Path(f"file://{os.path.abspath(local_path)}"), True)


def list_dir(spark: SparkSession, path: str) -> list[str]:
    fs, p = _fs(spark, path)
    if not fs.exists(p):
        return []
    return sorted(st.getPath().getName() for st in fs.listStatus(p))


def write_bytes(spark: SparkSession, path: str, data: bytes) -> None:
    """Write (replace) a file through Hadoop's FileSystem: any warehouse URI."""
    fs, p = _fs(spark, path)
    out = fs.create(p, True)
    try:
        out.write(bytearray(data))
    finally:
        out.close()


def read_bytes(spark: SparkSession, path: str) -> bytes:
    """A whole file's bytes (``binaryFiles`` reads through the Hadoop FileSystem)."""
    return bytes(spark.sparkContext.binaryFiles(path).first()[1])


def write_text(spark: SparkSession, path: str, text: str) -> None:
    write_bytes(spark, path, text.encode("utf-8"))


def read_text(spark: SparkSession, path: str) -> str:
    fs, p = _fs(spark, path)
    stream = fs.open(p)
    try:
        reader = spark.sparkContext._jvm.java.io.BufferedReader(
            spark.sparkContext._jvm.java.io.InputStreamReader(stream, "UTF-8")
        )
        lines = []
        line = reader.readLine()
        while line is not None:
            lines.append(line)
            line = reader.readLine()
        return "\n".join(lines)
    finally:
        stream.close()


def write_json(spark: SparkSession, path: str, obj: Any) -> None:
    write_text(spark, path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def read_json(spark: SparkSession, path: str) -> Any:
    return json.loads(read_text(spark, path))


def read_json_if_exists(spark: SparkSession, path: str) -> Any | None:
    """:func:`read_json`, or None when there is no such file (a first run, a pointer not yet written)."""
    return read_json(spark, path) if path_exists(spark, path) else None


def publish_directory(spark: SparkSession, staging: str, final: str) -> None:
    """Move a finished staging directory into place, replacing what was there.

    The old version is first renamed aside and deleted only after the new one
    is in place, so a failure leaves either the old or the new table, never a mix.
    """
    trash = f"{final.rstrip('/')}._old-{uuid.uuid4().hex[:8]}"
    had_old = path_exists(spark, final)
    if had_old:
        rename_path(spark, final, trash)
    try:
        rename_path(spark, staging, final)
    except Exception:
        if had_old:
            rename_path(spark, trash, final)
        raise
    if had_old:
        delete_path(spark, trash)


def replace_partitions(spark: SparkSession, staging: str, final: str, partitions: list[str]) -> None:
    """Move the partition folders ``partitions`` (``event_date=2026-01-05``) of ``staging`` into ``final``.

    Each named partition of ``final`` is replaced by ``staging``'s (or removed
    when ``staging`` has none): the old folder is first moved into a sibling
    ``final._old-*`` and deleted once every partition is in place. A process
    killed in between leaves a partition aside, which :func:`recover_partitions`
    puts back before the next run reads ``final``. Partitions not named are
    not touched.
    """
    trash = f"{final.rstrip('/')}._old-{uuid.uuid4().hex[:8]}"
    for part in partitions:
        old, new = f"{final.rstrip('/')}/{part}", f"{staging.rstrip('/')}/{part}"
        if path_exists(spark, old):
            rename_path(spark, old, f"{trash}/{part}")
        if path_exists(spark, new):
            rename_path(spark, new, old)
    delete_path(spark, trash)
    delete_path(spark, staging)


def recover_partitions(spark: SparkSession, final: str) -> list[str]:
    """Undo what a killed :func:`replace_partitions` left: put back each partition
    set aside whose replacement never arrived, then delete the leftovers
    (``final._old-*``, ``final._staging-*``). Returns the partitions put back."""
    parent, name = final.rstrip("/").rsplit("/", 1)
    if not path_exists(spark, parent):
        return []
    restored = []
    for sibling in sorted(n for n in list_dir(spark, parent) if n.startswith(f"{name}._old-")):
        aside = f"{parent}/{sibling}"
        for part in list_dir(spark, aside):
            if not path_exists(spark, f"{final.rstrip('/')}/{part}"):
                rename_path(spark, f"{aside}/{part}", f"{final.rstrip('/')}/{part}")
                restored.append(part)
        delete_path(spark, aside)
    for sibling in (n for n in list_dir(spark, parent) if n.startswith(f"{name}._staging-")):
        delete_path(spark, f"{parent}/{sibling}")
    return restored


def replace_file(spark: SparkSession, src: str, dst: str) -> None:
    """Rename file ``src`` onto ``dst`` in one step, replacing ``dst`` if it exists.

    ``FileSystem.rename`` refuses an existing target on HDFS; ``FileContext``'s
    rename with OVERWRITE replaces it atomically there and on a local disk, so a
    reader of ``dst`` sees the old file or the new one, never none.
    """
    jvm = spark.sparkContext._jvm
    fs, d = _fs(spark, dst)
    _, s = _fs(spark, src)
    qualified = fs.makeQualified(d)
    fc = jvm.org.apache.hadoop.fs.FileContext.getFileContext(
        qualified.toUri(), spark.sparkContext._jsc.hadoopConfiguration()
    )
    options = spark.sparkContext._gateway.new_array(jvm.org.apache.hadoop.fs.Options.Rename, 1)
    options[0] = jvm.org.apache.hadoop.fs.Options.Rename.OVERWRITE
    fc.rename(fs.makeQualified(s), qualified, options)


def modification_time(spark: SparkSession, path: str) -> str | None:
    """When ``path`` (file or directory) last changed, ISO 8601 UTC; None when absent."""
    import datetime as _dt

    fs, p = _fs(spark, path)
    if not fs.exists(p):
        return None
    millis = fs.getFileStatus(p).getModificationTime()
    return _dt.datetime.fromtimestamp(millis / 1000, _dt.timezone.utc).isoformat()


# --------------------------------------------------------------------------- source files


class FileReadError(OSError):
    """A source file could not be opened (``stage='open'``) or read to its end (``stage='read'``).

    ``message`` is the underlying error's first line (e.g.
    ``java.io.EOFException: Unexpected end of input stream``), never a trace.
    """

    def __init__(self, path: str, stage: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.stage, self.message = path, stage, message


@dataclass(frozen=True)
class SourceListing:
    """The data files under a source path, and the entries that could not be listed."""

    files: list[tuple[str, int]]  # (qualified path, size in bytes), sorted by path
    unlisted: list[tuple[str, str]]  # (path, the error's first line): broken links, link loops
    # qualified path -> last modification (ms since the epoch): with the size,
    # what tells an incremental clean that a file changed since it was cleaned.
    modified: dict[str, int] = field(default_factory=dict)


def _first_line(exc: BaseException) -> str:
    java = getattr(exc, "java_exception", None)
    text = java.toString() if java is not None else f"{type(exc).__name__}: {exc}"
    return (text.strip().splitlines() or [type(exc).__name__])[0]


def is_hidden(name: str) -> bool:
    """Spark's rule for files its readers skip: ``_name`` (not ``_k=v``), ``.name``, ``*._COPYING_``."""
    return (name.startswith("_") and "=" not in name) or name.startswith(".") or name.endswith("._COPYING_")


def list_source_files(spark: SparkSession, path: str) -> SourceListing:
    """Every data file under ``path`` (itself when a file), recursively, skipping hidden names.

    Local paths are walked with the operating system, which, unlike Hadoop's
    local FileSystem, reports a broken symbolic link or a link loop (Hadoop
    silently leaves them out) and lets a directory cycle be cut. Other
    filesystems (HDFS, object stores) are listed through the Hadoop API;
    they have no symbolic links.

    Raises:
        FileNotFoundError: ``path`` does not exist.
    """
    fs, root = _fs(spark, path)
    if not fs.exists(root):
        raise FileNotFoundError(path)
    qualified = fs.makeQualified(root)
    if qualified.toUri().getScheme() == "file":
        return _list_local(qualified.toUri().getPath())
    return _list_hadoop(fs, qualified)


def _list_hadoop(fs, qualified) -> SourceListing:
    files: list[tuple[str, int]] = []
    unlisted: list[tuple[str, str]] = []
    modified: dict[str, int] = {}
    status = fs.getFileStatus(qualified)
    if status.isFile():
        return SourceListing([(qualified.toString(), status.getLen())], [],
                             {qualified.toString(): status.getModificationTime()})
    pending = [qualified]
    while pending:
        folder = pending.pop()
        try:
            entries = fs.listStatus(folder)
        except Exception as exc:  # py4j error from the JVM
            unlisted.append((folder.toString(), _first_line(exc)))
            continue
        for st in entries:
            p = st.getPath()
            if is_hidden(p.getName()):
                continue
            if st.isDirectory():
                pending.append(p)
            else:
                files.append((p.toString(), st.getLen()))
                modified[p.toString()] = st.getModificationTime()
    return SourceListing(sorted(files), sorted(unlisted), modified)


def file_uri(spark: SparkSession, path: str) -> str:
    """``path`` as Spark's ``input_file_name()`` writes it (a URI: ``a[1].json`` is ``a%5B1%5D.json``)."""
    return spark.sparkContext._jvm.org.apache.hadoop.fs.Path(path).toUri().toString()


def _file_uri(local: str) -> str:
    # The form Spark's input_file_name() gives a local file: file:///abs/path
    return "file://" + local


def _list_local(root: str) -> SourceListing:
    root = os.path.abspath(root)
    if os.path.isfile(root):
        return SourceListing([(_file_uri(root), os.path.getsize(root))], [],
                             {_file_uri(root): os.stat(root).st_mtime_ns // 1_000_000})
    modified: dict[str, int] = {}
    files: list[tuple[str, int]] = []
    unlisted: list[tuple[str, str]] = []
    seen_dirs = {os.path.realpath(root)}
    pending = [root]
    while pending:
        folder = pending.pop()
        try:
            entries = list(os.scandir(folder))
        except OSError as exc:
            unlisted.append((_file_uri(folder), f"{type(exc).__name__}: {exc.strerror or exc}"))
            continue
        for entry in entries:
            if is_hidden(entry.name):
                continue
            try:
                st = os.stat(entry.path)  # follows links: a loop or a dangling link raises here
            except OSError as exc:
                unlisted.append((_file_uri(entry.path), f"{type(exc).__name__}: {exc.strerror or exc}"))
                continue
            if os.path.isdir(entry.path):
                real = os.path.realpath(entry.path)
                if real in seen_dirs:  # a link back to a folder already walked: a cycle
                    unlisted.append((_file_uri(entry.path), f"symbolic link cycle: {real} is listed already"))
                    continue
                seen_dirs.add(real)
                pending.append(entry.path)
            else:
                files.append((_file_uri(entry.path), st.st_size))
                modified[_file_uri(entry.path)] = st.st_mtime_ns // 1_000_000
    return SourceListing(sorted(files), sorted(unlisted), modified)


def read_to_end(spark: SparkSession, path: str, *, decompress: bool = True) -> int:
    """Read ``path`` through the codec its name implies (Hadoop's rule, as Spark's readers use); bytes read.

    Streams in the JVM with a small buffer, so memory stays bounded whatever
    the file's size. ``decompress=False`` reads only the first byte (an
    uncompressed text file has nothing to decode; this still proves it opens).

    Raises:
        FileReadError: ``stage='open'`` when it cannot be opened (missing,
            permission), ``stage='read'`` when its content cannot be decoded.
    """
    jvm = spark.sparkContext._jvm
    fs, p = _fs(spark, path)
    try:
        stream = fs.open(p)
    except Exception as exc:
        raise FileReadError(path, "open", _first_line(exc)) from None
    try:
        codec = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(
            spark.sparkContext._jsc.hadoopConfiguration()
        ).getCodec(p)
        if codec is None or not decompress:
            return 1 if stream.read() >= 0 else 0
        return jvm.org.apache.commons.io.IOUtils.consume(codec.createInputStream(stream))
    except Exception as exc:
        raise FileReadError(path, "read", _first_line(exc)) from None
    finally:
        try:
            stream.close()
        except Exception:  # closing a stream that failed mid-read: nothing more to learn
            pass


def compressed(spark: SparkSession, path: str) -> bool:
    """Whether Hadoop (and so Spark) decompresses ``path`` by its name (.gz, .bz2, .zst, ...)."""
    jvm = spark.sparkContext._jvm
    factory = jvm.org.apache.hadoop.io.compress.CompressionCodecFactory(spark.sparkContext._jsc.hadoopConfiguration())
    return factory.getCodec(jvm.org.apache.hadoop.fs.Path(path)) is not None


def parquet_columns(spark: SparkSession, path: str) -> dict[str, str]:
    """A Parquet file's top-level columns and their types, from its footer alone.

    Raises:
        FileReadError: not a Parquet file, or its footer is damaged or missing.
    """
    jvm = spark.sparkContext._jvm
    fs, p = _fs(spark, path)
    try:
        reader = jvm.org.apache.parquet.hadoop.ParquetFileReader.open(
            jvm.org.apache.parquet.hadoop.util.HadoopInputFile.fromPath(p, spark.sparkContext._jsc.hadoopConfiguration())
        )
    except Exception as exc:
        stage = "open" if "FileNotFoundException" in _first_line(exc) or "AccessDenied" in _first_line(exc) else "read"
        raise FileReadError(path, stage, _first_line(exc)) from None
    try:
        schema = reader.getFooter().getFileMetaData().getSchema()
        return {f.getName(): f.toString().strip() for f in schema.getFields()}
    finally:
        reader.close()


# --------------------------------------------------------------------------- tables


def conform(df: DataFrame, table: Table) -> DataFrame:
    """Select and cast ``df`` to ``table``'s schema; a missing column is an error."""
    missing = [f.name for f in table.schema.fields if f.name not in df.columns]
    if missing:
        raise SchemaMismatch(
            f"table '{table.name}': DataFrame lacks column(s) {missing}; has {df.columns}"
        )
    return df.select([F.col(f.name).cast(f.dataType).alias(f.name) for f in table.schema.fields])


def check_schema(df: DataFrame, table: Table, where: str) -> None:
    have = {f.name: f.dataType for f in df.schema.fields}
    for f in table.schema.fields:
        if f.name not in have:
            raise SchemaMismatch(f"{where}: table '{table.name}' lacks column '{f.name}'")
        # Partition column types are inferred from directory names; conform() casts them.
        if f.name not in table.partition_by and have[f.name] != f.dataType:
            raise SchemaMismatch(
                f"{where}: table '{table.name}' column '{f.name}' is {have[f.name].simpleString()}, "
                f"expected {f.dataType.simpleString()}"
            )


def staging_path(final: str) -> str:
    """A fresh sibling of ``final`` to write into before :func:`publish_directory` moves it there."""
    return f"{final.rstrip('/')}._staging-{uuid.uuid4().hex[:8]}"


def write_table(
    df: DataFrame,
    warehouse: str,
    table: Table | str,
    *,
    path: str | None = None,
) -> str:
    """Write ``df`` as ``table`` (cast to its schema), atomically replacing the old one.

    Returns the final path. ``path`` overrides the table's default location
    (run-dated outputs).
    """
    t = get_table(table) if isinstance(table, str) else table
    spark = df.sparkSession
    final = path or table_path(warehouse, t)
    clean_leftovers(spark, final)
    staging = staging_path(final)
    writer = conform(df, t).write.mode("overwrite")
    if t.partition_by:
        writer = writer.partitionBy(*t.partition_by)
    try:
        writer.parquet(staging)
        publish_directory(spark, staging, final)
    except BaseException:
        delete_path(spark, staging)  # a failed write leaves no staging directory behind
        raise
    return final


def clean_leftovers(spark: SparkSession, final: str) -> list[str]:
    """Delete what an earlier write of ``final`` left when its process died: staging
    directories (``final._staging-*``) and replaced versions (``final._old-*``).

    A process killed between :func:`publish_directory`'s two renames leaves the
    old version aside and nothing at ``final``: it is put back first.
    """
    parent, name = final.rstrip("/").rsplit("/", 1)
    if not path_exists(spark, parent):
        return []
    siblings = [n for n in list_dir(spark, parent) if n.startswith(f"{name}._staging-") or n.startswith(f"{name}._old-")]
    old = sorted(n for n in siblings if n.startswith(f"{name}._old-"))
    if old and not path_exists(spark, final):
        rename_path(spark, f"{parent}/{old[-1]}", final)
        siblings.remove(old[-1])
    for n in siblings:
        delete_path(spark, f"{parent}/{n}")
    return siblings


def read_table(
    spark: SparkSession, warehouse: str, table: Table | str, *, path: str | None = None
) -> DataFrame:
    """Read a table with its declared schema, failing clearly when it is missing or differs."""
    t = get_table(table) if isinstance(table, str) else table
    where = path or table_path(warehouse, t)
    if not path_exists(spark, where):
        raise FileNotFoundError(f"table '{t.name}' not found at {where}: run the stage that writes it first")
    if not [name for name in list_dir(spark, where) if not name.startswith(("_", "."))]:
        # Written from no rows: no data file (a partitioned table not even a
        # directory) to infer a schema from, e.g. a quarantine with nothing in it.
        return spark.createDataFrame([], t.schema)
    df = spark.read.parquet(where)
    check_schema(df, t, where)
    # Parquet forgets non-nullability; restore column order and nullability.
    return conform(df, t)


def read_table_if_exists(spark: SparkSession, warehouse: str, table: Table | str) -> DataFrame | None:
    """:func:`read_table`, or None when the table has not been written (a first run, an optional table)."""
    t = get_table(table) if isinstance(table, str) else table
    return read_table(spark, warehouse, t) if path_exists(spark, table_path(warehouse, t)) else None


def require_columns(df: DataFrame, needed, what: str) -> None:
    """Fail naming ``what``, the missing columns and the ones there are."""
    missing = [c for c in needed if c not in df.columns]
    if missing:
        raise ValueError(f"{what} lacks column(s) {missing}; has {df.columns}")


CSV_SUFFIXES = (".csv", ".csv.gz")


def read_side_file(spark: SparkSession, path: str, *, setting: str, file_format: str | None = None,
                   header: bool = True, delimiter: str = ",") -> DataFrame:
    """A CSV or Parquet file a setting names (item metadata, an exclusion list).

    Args:
        setting: the config key that names ``path``, for the error messages.
        file_format: ``csv`` or ``parquet``; None: by the name (``.csv`` or
            ``.csv.gz`` is CSV; anything else, a file or a directory, Parquet).

    CSV is read with RFC 4180 quoting (a field may hold the delimiter or a
    doubled quote: ``"Bird, The ""Big"" (1990)"``), every column as a string.

    Raises:
        FileNotFoundError: ``path`` does not exist (naming ``setting``).
    """
    if not path_exists(spark, path):
        raise FileNotFoundError(f"{setting}: {path} not found")
    if file_format is None:
        file_format = "csv" if path.lower().rstrip("/").endswith(CSV_SUFFIXES) else "parquet"
    if file_format == "parquet":
        return spark.read.parquet(path)
    return spark.read.csv(path, header=header, sep=delimiter, quote='"', escape='"')
