"""Hostile input (issue 16): a corpus of bad files and lines, generated here, through the clean job.

Each input states its outcome: the reasons of its records (``CLEAN`` for a
clean row, ``DUP`` for a dropped duplicate copy) or a file-level reason. The
JSON corpus is one directory holding every case as its own file, cleaned by
one run of ``jobs/clean_events.py``; per-file outcomes are read back from
``events_clean``, ``quarantine`` and ``quarantined_files`` by ``source_file``.
CSV and Parquet sources, and ``clean.on_unreadable_file: fail``, get one small
run each.
"""
from __future__ import annotations

import bz2
import collections
import datetime as dt
import gzip
import json
import os
import urllib.parse
from pathlib import Path

import pytest
from pyspark.sql import functions as F

from tests.conftest import load_job as job
from recsys_spark.ingest import cleaning as C
from recsys_spark import io, schemas
from recsys_spark.schemas import EVENTS_CLEAN, QUARANTINE, QUARANTINED_FILES

pytestmark = pytest.mark.spark

REFERENCE = "2026-03-02T00:00:00Z"
CLEAN, DUP = "clean", "duplicate"
CORRUPT, UNREADABLE = schemas.FILE_CORRUPT, schemas.FILE_UNREADABLE
MAX_RECORD_BYTES = 65_536  # conf/base.yaml's defaults, which these runs use
MAX_ID_LENGTH = 256

_ids = iter(range(1, 1_000_000))


def event(**fields) -> dict:
    """A valid synthetic-layout event with a fresh event id; ``fields`` override (None drops a key)."""
    ev = {"eid": f"e{next(_ids)}", "uid": "u1", "iid": "i1", "type": "view", "ts": "2026-01-05T10:00:00Z"}
    ev.update(fields)
    return {k: v for k, v in ev.items() if v is not None}


def line(**fields) -> bytes:
    return json.dumps(event(**fields)).encode()


def lines(*items: bytes) -> bytes:
    return b"".join(i + b"\n" for i in items)


def half_a_gzip(data: bytes) -> bytes:
    whole = gzip.compress(data)
    return whole[: len(whole) // 2]


def incompressible_events(n: int) -> bytes:
    # Distinct ids so that gzip cannot fold the lines into a few bytes: half of
    # the stream then cuts through real records.
    return lines(*[line(uid=f"u{os.urandom(8).hex()}") for _ in range(n)])


DUP_LINE = line(eid="dup-1")
INVALID_UTF8_LINE = b'{"eid":"bad-utf8","uid":"u\xff\xfe1","iid":"i1","type":"view","ts":"2026-01-05T10:00:00Z"}'
TZ_LINES = {  # timestamps in several formats and time zones: (text, UTC time or None)
    "tz-offset": ("2026-01-05T10:00:00+05:30", dt.datetime(2026, 1, 5, 4, 30)),
    "tz-compact": ("2026-01-05T10:00:00-0800", dt.datetime(2026, 1, 5, 18, 0)),
    "tz-space": ("2026-01-05 10:00", dt.datetime(2026, 1, 5, 10, 0)),
    "tz-nanos": ("2026-01-05T10:00:00.123456Z", dt.datetime(2026, 1, 5, 10, 0, 0, 123456)),
    "tz-date": ("2026-01-05", dt.datetime(2026, 1, 5)),
    "tz-rfc2822": ("Mon, 05 Jan 2026 10:00:00 GMT", None),
    "tz-epoch": ("1767607200", None),
    "tz-named-zone": ("2026-01-05T10:00:00 Europe/Paris", None),
    "tz-impossible": ("2026-02-30T10:00:00Z", None),
    "tz-month-13": ("2026-13-01T10:00:00Z", None),
}

# name -> (bytes, or a callable making the entry under the directory; expected outcome).
# The first file (sorted) must hold the mapped keys: the source check reads it.
JSON_CASES: dict[str, tuple] = {
    "00-good.json": (lines(line(), line(), line()), [CLEAN] * 3),
    "01-truncated.txt.gz": (half_a_gzip(incompressible_events(400)), CORRUPT),
    "02-not-gzip.gz": (b"this was never gzip\n", CORRUPT),
    "03-zero-bytes.gz": (b"", []),
    "04-zero-bytes.json": (b"", []),
    "05-good.txt.gz": (gzip.compress(lines(line(), line())), [CLEAN] * 2),
    "06-latin1.txt.gz": (  # gzip of a non-UTF-8 (Latin-1) file
        gzip.compress(lines(line(uid="plain"), b'{"eid":"latin","uid":"caf\xe9","iid":"i1","type":"view","ts":"2026-01-05"}')),
        [CLEAN, C.REASON_MALFORMED],
    ),
    "07-invalid-utf8.json": (lines(INVALID_UTF8_LINE), [C.REASON_MALFORMED]),
    "08-bom-crlf.json": (b"\xef\xbb\xbf" + line() + b"\r\n" + line() + b"\r\n", [CLEAN] * 2),
    "09-nul-after-line.json": (line() + b"\x00\x00\x00\n", [CLEAN]),
    "10-not-objects.json": (
        lines(b"[1, 2]", b'[{"uid":"a","iid":"b"}]', b'"just a string"', b"42", b"null", b"true"),
        [C.REASON_MALFORMED] * 6,  # one record per line, an array of objects included
    ),
    "11-non-finite.json": (
        lines(
            b'{"eid":"nan","uid":"u1","iid":"i1","type":"rating","ts":"2026-01-05","val":NaN}',
            b'{"eid":"inf","uid":"u1","iid":"i1","type":"rating","ts":"2026-01-05","val":Infinity}',
            b'{"eid":"big","uid":"u1","iid":"i1","type":"rating","ts":"2026-01-05","val":1e309}',
        ),
        [C.REASON_INVALID_VALUE] * 3,
    ),
    "12-ids.json": (
        lines(
            line(uid=""),
            line(uid="   "),
            b'{"eid":"obj","uid":{"nested":1},"iid":"i1","type":"view","ts":"2026-01-05"}',
            b'{"eid":"arr","uid":"u1","iid":["i1"],"type":"view","ts":"2026-01-05"}',
            b'{"eid":"num","uid":12345,"iid":"i1","type":"view","ts":"2026-01-05"}',  # an integer id is fine
            line(iid="i" * (MAX_ID_LENGTH + 1)),
            line(iid="i" * MAX_ID_LENGTH),  # exactly the limit: fine
            line(eid="e" * 1000),
        ),
        [C.REASON_MISSING_USER, C.REASON_MISSING_USER, C.REASON_ID_TYPE, C.REASON_ID_TYPE, CLEAN,
         C.REASON_ID_TOO_LONG, CLEAN, C.REASON_ID_TOO_LONG],
    ),
    "13-one-megabyte-id.json": (lines(line(iid="i" * 1_000_000), line()), [C.REASON_TOO_LONG, CLEAN]),
    "14-duplicate-keys.json": (  # the last value wins (documented; see test_duplicate_key_keeps_the_last_value)
        lines(
            b'{"eid":"dk","uid":"u1","iid":"i1","type":"view","ts":"2026-01-05","uid":"u2"}',
            b'{"eid":"dk2","uid":"u1","iid":"i1","type":"view","ts":"2026-01-05","uid":""}',
        ),
        [CLEAN, C.REASON_MISSING_USER],
    ),
    "15-timestamps.json": (
        lines(*[line(eid=name, ts=text) for name, (text, _) in TZ_LINES.items()]),
        [CLEAN if want else C.REASON_INVALID_TS for _, want in TZ_LINES.values()],
    ),
    "16-extra-and-missing-fields.json": (
        lines(line(extra="x", more=[1, 2]), line(ts=None), line(type=None), line(iid=None), b"{}"),
        [CLEAN, C.REASON_INVALID_TS, C.REASON_UNKNOWN_TYPE, C.REASON_MISSING_ITEM, C.REASON_MISSING_USER],
    ),
    "17-duplicates.json": (lines(DUP_LINE, DUP_LINE), [CLEAN, DUP]),
    "18-cut-line.json": (lines(line()[:30]), [C.REASON_MALFORMED]),
    "19-looks-like-a-file.json": (  # a directory named like a file: read as a directory
        lambda d: (d.mkdir(), (d / "part-0.json").write_bytes(lines(line()))),
        [CLEAN],
    ),
    "20-self-loop.json": (lambda p: p.symlink_to(p.name), UNREADABLE),
    "21-dangling.json": (lambda p: p.symlink_to("no-such-file.json"), UNREADABLE),
    "22-cycle": (lambda p: p.symlink_to("."), UNREADABLE),  # a directory link back to the root
    "23-a[1]{x}.json": (lines(line()), [CLEAN]),  # glob characters in the name
    "24-blank-lines.json": (b"\n   \n\t\n" + line() + b"\n\n\r\n", [CLEAN]),
    "25-values.json": (
        lines(line(type="rating", val="five"), line(type="rating", val=True), line(type="rating"),
              line(type="rating", val=4.5), line(type=" Click ")),
        [C.REASON_INVALID_VALUE] * 3 + [CLEAN, CLEAN],
    ),
    "26-unknown-type.json": (lines(line(type="hover"), line(type=7)), [C.REASON_UNKNOWN_TYPE] * 2),
    "27-out-of-range-times.json": (
        lines(line(ts="2100-01-01T00:00:00Z"), line(ts="1970-01-01T00:00:00Z")),
        [C.REASON_FUTURE, C.REASON_TOO_OLD],
    ),
    "28-deep-nesting.json": (  # deeper than Jackson's nesting limit
        lines(b'{"eid":"deep","uid":"u1","iid":"i1","type":"view","ts":"2026-01-05","x":' + b"[" * 5000 + b"]" * 5000 + b"}"),
        [C.REASON_MALFORMED],
    ),
    "29-truncated.json.bz2": (bz2.compress(incompressible_events(400))[:3000], CORRUPT),
    "30-control-chars.json": (lines(line(uid="u\u0001\u0007")), [CLEAN]),  # escaped in JSON: a legal string
    ".hidden.json": (b"garbage that must not be read\n", None),  # Spark's rule: hidden files are skipped
    "_SUCCESS": (b"", None),
}


def make_corpus(root: Path, cases: dict[str, tuple]) -> None:
    root.mkdir(parents=True)
    for name, (content, _) in cases.items():
        if callable(content):
            content(root / name)
        else:
            (root / name).write_bytes(content)


def local_name(root: Path, source_file: str) -> str:
    """A source_file URI as the case name (the top-level entry under ``root``)."""
    path = urllib.parse.unquote(urllib.parse.urlparse(source_file).path)
    return Path(path).relative_to(root.resolve()).parts[0]


def outcomes(spark, root: Path, wh: Path) -> tuple[dict, dict, dict]:
    """Per case: Counter of row outcomes (clean, reason codes; duplicates left out), file reason, and the raw rows."""
    rows: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    clean = io.read_table(spark, str(wh), EVENTS_CLEAN)
    for r in clean.groupBy("source_file").count().collect():
        rows[local_name(root, r["source_file"])][CLEAN] += r["count"]
    quarantine = io.read_table(spark, str(wh), QUARANTINE)
    for r in quarantine.groupBy("source_file", "reason").count().collect():
        rows[local_name(root, r["source_file"])][r["reason"]] += r["count"]
    files = {local_name(root, r["source_file"]): r for r in io.read_table(spark, str(wh), QUARANTINED_FILES).collect()}
    return rows, files, clean


def expected_rows(cases) -> dict[str, collections.Counter]:
    return {
        name: collections.Counter(o for o in want if o != DUP)
        for name, (_, want) in cases.items()
        if isinstance(want, list) and [o for o in want if o != DUP]
    }


def run(root: Path, wh: Path, *settings: str, dataset: str = "synthetic"):
    argv = ["--dataset", dataset, "--warehouse", str(wh), "--set", f"dataset.source.path={root}"]
    for s in settings:
        argv += ["--set", s]
    return job("clean_events").main(argv + ["--reference-time", REFERENCE, "--run-id", "hostile"])


# --------------------------------------------------------------------------- JSON lines: the whole corpus, one run


@pytest.fixture(scope="module")
def json_run(spark, tmp_path_factory):
    base = tmp_path_factory.mktemp("hostile")
    root, wh = base / "src", base / "wh"
    make_corpus(root, JSON_CASES)
    report = run(root, wh)
    rows, files, clean = outcomes(spark, root, wh)
    return dict(root=root, wh=wh, report=report, rows=rows, files=files, clean=clean)


def test_corpus_is_large_enough():
    inputs = [n for n, (_, want) in JSON_CASES.items() if want is not None]
    assert len(inputs) + sum(len(w) for _, w in JSON_CASES.values() if isinstance(w, list)) >= 30
    assert len(inputs) >= 30


@pytest.mark.parametrize("name", [n for n, (_, want) in JSON_CASES.items() if want is not None])
def test_each_input_has_its_stated_outcome(json_run, name):
    want = JSON_CASES[name][1]
    got_rows, got_file = json_run["rows"].get(name, collections.Counter()), json_run["files"].get(name)
    if isinstance(want, str):  # a file-level reason: the whole file quarantined as a file, no rows
        assert got_file is not None and got_file["reason"] == want, got_file
        assert got_file["detail"] and "\n" not in got_file["detail"] and got_file["run_id"] == "hostile"
        assert not got_rows
    else:
        assert got_file is None
        assert got_rows == collections.Counter(o for o in want if o != DUP)


def test_nothing_from_hidden_files(json_run):
    assert not (set(json_run["rows"]) | set(json_run["files"])) & {".hidden.json", "_SUCCESS"}


def test_counts_reconcile_exactly_files_apart(json_run):
    r = json_run["report"]
    records = [o for _, want in JSON_CASES.values() if isinstance(want, list) for o in want]
    want = collections.Counter(records)
    assert r["input_rows"] == len(records)
    assert r["clean_rows"] == want[CLEAN] and r["duplicates"] == want[DUP]
    assert r["quarantined_rows"] == len(records) - want[CLEAN] - want[DUP]
    assert r["input_rows"] == r["clean_rows"] + r["duplicates"] + r["quarantined_rows"]
    assert {k: v for k, v in r["quarantined_by_reason"].items() if v} == {
        k: v for k, v in want.items() if k not in (CLEAN, DUP)
    }
    bad_files = collections.Counter(w for _, w in JSON_CASES.values() if isinstance(w, str))
    assert r["quarantined_files"] == sum(bad_files.values()) == len(json_run["files"])
    assert r["quarantined_files_by_reason"] == {CORRUPT: bad_files[CORRUPT], UNREADABLE: bad_files[UNREADABLE]}
    listed = {local_name(json_run["root"], f["path"]) for f in r["quarantined_file_list"]}
    assert listed == {n for n, (_, w) in JSON_CASES.items() if isinstance(w, str)}
    # Files read: every regular file with a stated outcome (zero-byte ones included), the directory's one part.
    assert r["input_files"] == sum(1 for _, w in JSON_CASES.values() if isinstance(w, list))


def test_quarantined_file_details(json_run):
    files = json_run["files"]
    truncated = files["01-truncated.txt.gz"]
    assert "EOFException" in truncated["detail"] and truncated["size_bytes"] == len(JSON_CASES["01-truncated.txt.gz"][0])
    assert "not a gzip file" in files["02-not-gzip.gz"]["detail"]
    assert files["20-self-loop.json"]["size_bytes"] is None  # a link loop cannot even be listed
    assert "cycle" in files["22-cycle"]["detail"]


def test_duplicate_key_keeps_the_last_value(json_run):
    (row,) = json_run["clean"].where(F.col("event_id") == "dk").collect()
    assert row["user_id"] == "u2"


def test_clean_rows_keep_their_values(json_run):
    clean = json_run["clean"]
    times = {r["event_id"]: r["event_time"] for r in clean.where(F.col("event_id").startswith("tz-")).collect()}
    assert times == {name: want for name, (_, want) in TZ_LINES.items() if want}
    (num,) = clean.where(F.col("event_id") == "num").collect()
    assert num["user_id"] == "12345"
    (ctrl,) = clean.where(F.col("user_id").startswith("u\u0001")).collect()
    assert ctrl["user_id"] == "u\u0001\u0007"


def test_quarantine_details_say_why(json_run, spark):
    q = io.read_table(spark, str(json_run["wh"]), QUARANTINE)
    details = {r["reason"] + ":" + r["detail"] for r in q.select("reason", "detail").distinct().collect()}
    assert f"{C.REASON_MALFORMED}:not valid UTF-8" in details
    assert f"{C.REASON_ID_TYPE}:user_id is a JSON object or array" in details
    assert any(d.startswith(f"{C.REASON_TOO_LONG}:record of ") for d in details)
    (long_row,) = q.where(F.col("reason") == C.REASON_TOO_LONG).collect()
    # Not kept whole: cut to the record limit, bytes and text alike.
    assert len(long_row["raw_bytes"]) == MAX_RECORD_BYTES and len(long_row["raw_record"]) == MAX_RECORD_BYTES


def test_quarantine_is_readable_by_pyarrow_pandas_and_duckdb(json_run):
    """Invalid UTF-8 in a raw line: the table stays valid for every Parquet reader, the bytes kept exactly."""
    import duckdb
    import pandas as pd
    import pyarrow.parquet as pq

    path = json_run["wh"] / "quarantine"
    table = pq.read_table(path)  # hive partitions: reason=...
    rows = table.to_pylist()
    assert len(rows) == json_run["report"]["quarantined_rows"]
    (bad,) = [r for r in rows if r["raw_bytes"] == INVALID_UTF8_LINE]
    assert bad["raw_record"] == INVALID_UTF8_LINE.decode("utf-8", errors="replace")
    latin = [r for r in rows if r["raw_bytes"] and b"caf\xe9" in r["raw_bytes"]]
    assert len(latin) == 1 and "caf\ufffd" in latin[0]["raw_record"]
    frame = pd.read_parquet(path)
    assert len(frame) == len(rows) and frame["raw_record"].map(type).eq(str).all()
    con = duckdb.connect()
    (n, with_bytes) = con.execute(
        f"SELECT count(*), count(raw_bytes) FROM read_parquet('{path}/*/*.parquet', hive_partitioning = true)"
    ).fetchone()
    assert n == len(rows) and with_bytes == sum(1 for r in rows if r["raw_bytes"] is not None)
    got = con.execute(
        f"SELECT raw_bytes FROM read_parquet('{path}/*/*.parquet', hive_partitioning = true) WHERE raw_record LIKE '%bad-utf8%'"
    ).fetchone()[0]
    assert bytes(got) == INVALID_UTF8_LINE
    assert pq.read_table(json_run["wh"] / "events_clean").num_rows == json_run["report"]["clean_rows"]
    assert pq.read_table(json_run["wh"] / "quarantined_files").num_rows == json_run["report"]["quarantined_files"]


# --------------------------------------------------------------------------- fail mode


def test_fail_mode_stops_with_one_line_naming_the_file(spark, tmp_path, capsys):
    root, wh = tmp_path / "src", tmp_path / "wh"
    make_corpus(root, {k: JSON_CASES[k] for k in ("00-good.json", "01-truncated.txt.gz")})
    with pytest.raises(SystemExit) as exit_info:
        run(root, wh, "clean.on_unreadable_file=fail")
    assert exit_info.value.code == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "01-truncated.txt.gz" in err[0] and CORRUPT in err[0] and "EOFException" in err[0]
    assert not wh.exists()  # nothing written


def test_every_file_unreadable_is_an_error_naming_one(spark, tmp_path, capsys):
    root = tmp_path / "src"
    make_corpus(root, {k: JSON_CASES[k] for k in ("01-truncated.txt.gz", "02-not-gzip.gz")})
    with pytest.raises(SystemExit):
        run(root, tmp_path / "wh")
    err = capsys.readouterr().err
    assert "holds no readable json files (2 unreadable" in err and "01-truncated.txt.gz" in err


# --------------------------------------------------------------------------- CSV


CSV_HEADER = b"eid,uid,iid,type,ts,val,sid\n"
CSV_CASES: dict[str, tuple] = {
    "a-good.csv": (CSV_HEADER + b"c1,u1,i1,view,2026-01-05T10:00:00Z,,s1\n", [CLEAN]),
    "b-wrong-field-count.csv": (
        CSV_HEADER + b"c2,u1,i1,view\nc3,u1,i1,view,2026-01-05T10:00:00Z,,s1,extra,more\nc4,u1,i1,view,2026-01-05,,s1\n",
        [C.REASON_MALFORMED, C.REASON_MALFORMED, CLEAN],
    ),
    "c-delimiter-in-quotes.csv": (CSV_HEADER + b'c5,"u,1",i1,view,2026-01-05T10:00:00Z,,s1\n', [CLEAN]),
    "d-open-quote.csv": (  # a quote left open across lines: that line is malformed, the next one reads
        CSV_HEADER + b'c6,"u1,i1,view,2026-01-05T10:00:00Z,,s1\nc7,u1,i1,view,2026-01-05T10:00:00Z,,s1\n',
        [C.REASON_MALFORMED, CLEAN],
    ),
    "e-latin1.csv.gz": (gzip.compress(CSV_HEADER + b"c8,caf\xe9,i1,view,2026-01-05,,s1\n"), [C.REASON_MALFORMED]),
    "f-truncated.csv.gz": (half_a_gzip(CSV_HEADER + b"".join(
        f"c{os.urandom(6).hex()},u{os.urandom(6).hex()},i1,view,2026-01-05,,s1\n".encode() for _ in range(400))), CORRUPT),
    "g-header-only.csv": (CSV_HEADER, []),
}


def test_csv_source(spark, tmp_path):
    root, wh = tmp_path / "src", tmp_path / "wh"
    make_corpus(root, CSV_CASES)
    report = run(root, wh, "dataset.source.format=csv")
    rows, files, clean = outcomes(spark, root, wh)
    assert {n: f["reason"] for n, f in files.items()} == {"f-truncated.csv.gz": CORRUPT}
    assert dict(rows) == expected_rows(CSV_CASES)
    assert clean.where(F.col("event_id") == "c5").first()["user_id"] == "u,1"
    assert report["input_rows"] == report["clean_rows"] + report["quarantined_rows"] == 8


# --------------------------------------------------------------------------- Parquet


def test_parquet_source_with_drifting_types_and_broken_files(spark, tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    root, wh = tmp_path / "src", tmp_path / "wh"
    root.mkdir()
    at = [dt.datetime(2026, 1, 5, 13, 45, 12)] * 2
    pq.write_table(pa.table({"who": [196, 197], "what": [242, 243], "stars": [3, 4], "at": at}), root / "a.parquet")
    # The same columns as strings: a type the first file's schema cannot read.
    pq.write_table(pa.table({"who": ["198", "199"], "what": ["244", "245"], "stars": ["5", "6"], "at": ["2026-01-05 13:45:12"] * 2}),
                   root / "b.parquet")
    pq.write_table(pa.table({"who": [200], "what": [246], "at": at[:1]}), root / "c-no-stars.parquet")
    whole = (root / "a.parquet").read_bytes()
    (root / "d-truncated.parquet").write_bytes(whole[: len(whole) // 2])
    (root / "e-garbage.parquet").write_bytes(b"PAR1 this is not parquet PAR1")
    (root / "f-zero-bytes.parquet").write_bytes(b"")
    report = run(
        root, wh,
        "dataset.source.format=parquet",
        "dataset.source.fixed_event_type=rating",
        "dataset.source.columns={user_id: who, item_id: what, timestamp: at, value: stars, event_type: null, event_id: null, session_id: null}",
    )
    rows, files, clean = outcomes(spark, root, wh)
    assert {n: f["reason"] for n, f in files.items()} == {
        "d-truncated.parquet": CORRUPT, "e-garbage.parquet": CORRUPT, "f-zero-bytes.parquet": CORRUPT,
    }
    assert dict(rows) == {
        "a.parquet": {CLEAN: 2},
        "b.parquet": {CLEAN: 1, C.REASON_INVALID_VALUE: 1},  # 6 stars: out of range
        "c-no-stars.parquet": {C.REASON_INVALID_VALUE: 1},  # a rating without a value
    }
    assert sorted(r["user_id"] for r in clean.collect()) == ["196", "197", "198"]
    assert report["input_rows"] == 5 and report["quarantined_files"] == 3


def test_hadoop_listing_agrees_with_the_local_walk(spark, tmp_path):
    """The listing used for hdfs:// and s3a:// paths, run on a local tree without links: the same files."""
    make_corpus(tmp_path / "src", {k: v for k, v in JSON_CASES.items() if not callable(v[0])} | {
        "19-looks-like-a-file.json": JSON_CASES["19-looks-like-a-file.json"]
    })
    fs, root = io._fs(spark, str(tmp_path / "src"))
    local = io.list_source_files(spark, str(tmp_path / "src"))
    hadoop = io._list_hadoop(fs, fs.makeQualified(root))
    # Hadoop writes a local path as file:/x, Spark's input_file_name() as file:///x: the same file.
    assert [(p.replace("file:/", "file:///", 1), n) for p, n in hadoop.files] == local.files
    assert not hadoop.unlisted and not local.unlisted
    assert len(local.files) == sum(1 for n in JSON_CASES if not io.is_hidden(n) and not callable(JSON_CASES[n][0])) + 1


def test_source_file_is_written_alike_in_every_table(json_run, spark):
    """events_clean / quarantine (Spark's input_file_name) and quarantined_files (the listing) name files the same way."""
    listing = io.list_source_files(spark, str(json_run["root"]))
    listed = {io.file_uri(spark, p) for p, _ in [*listing.files, *listing.unlisted]}
    q = io.read_table(spark, str(json_run["wh"]), QUARANTINE)
    written = {r["source_file"] for r in json_run["clean"].select("source_file").union(q.select("source_file")).distinct().collect()}
    assert written <= listed and any("%5B1%5D%7Bx%7D" in f for f in written)
    assert set(f["path"] for f in json_run["report"]["quarantined_file_list"]) <= listed
