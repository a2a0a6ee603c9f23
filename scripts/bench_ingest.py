#!/usr/bin/env python
"""Ingest benchmark: clean + build tables on synthetic event logs, Spark vs DuckDB.

For each size (default 1M and 10M events) it generates the synthetic log once,
then, side by side on the same files:

* Spark: ``jobs/clean_events.py`` and ``jobs/build_tables.py`` submitted with
  ``scripts/submit.sh`` to a local standalone cluster started for the run (so
  the driver and the executor are separate processes whose memory can be told
  apart); peak RSS sampled every 0.2 s over each process tree;
* DuckDB (2 threads): the same validation, dedupe, bot rule and aggregation in
  SQL over the same JSON lines, writing Parquet, in a subprocess of its own.

Prints a table and writes ``benchmarks/results/ingest.json``. Targets: 10M
events with the Spark driver under 2 GiB, Spark's wall time within 3x of DuckDB's.

    .venv/bin/python scripts/bench_ingest.py [--sizes 1000000,10000000]
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]

DUCKDB_SQL = r"""
SET threads = 2;
CREATE TABLE raw AS
SELECT line, filename AS source_file
FROM read_csv('{src}/date=*/part-*', columns = {{'line': 'VARCHAR'}}, header = false, delim = '\x1f',
              quote = '', escape = '', auto_detect = false, filename = true, hive_partitioning = false);
CREATE TABLE parsed AS
SELECT *,
  CASE WHEN json_valid(line) THEN line ->> 'eid' END AS eid,
  CASE WHEN json_valid(line) THEN line ->> 'uid' END AS uid,
  CASE WHEN json_valid(line) THEN line ->> 'iid' END AS iid,
  CASE WHEN json_valid(line) THEN lower(trim(line ->> 'type')) END AS etype,
  CASE WHEN json_valid(line) THEN TRY_CAST(replace(line ->> 'ts', 'Z', '') AS TIMESTAMP) END AS ts,
  CASE WHEN json_valid(line) THEN line ->> 'val' END AS val_raw,
  CASE WHEN json_valid(line) THEN TRY_CAST(line ->> 'val' AS DOUBLE) END AS val,
  CASE WHEN json_valid(line) THEN line ->> 'sid' END AS sid
FROM raw;
CREATE TABLE checked AS
SELECT *, CASE
  WHEN NOT json_valid(line) THEN 'malformed_record'
  WHEN uid IS NULL OR trim(uid) = '' THEN 'missing_user_id'
  WHEN iid IS NULL OR trim(iid) = '' THEN 'missing_item_id'
  WHEN etype IS NULL OR etype NOT IN ('view', 'click', 'add_to_cart', 'purchase', 'rating') THEN 'unknown_event_type'
  WHEN ts IS NULL THEN 'invalid_timestamp'
  WHEN ts < TIMESTAMP '1995-01-01' THEN 'timestamp_too_old'
  WHEN ts > now()::TIMESTAMP + INTERVAL 24 HOUR THEN 'timestamp_in_future'
  WHEN val_raw IS NOT NULL AND trim(val_raw) <> '' AND val IS NULL THEN 'invalid_value'
  WHEN etype = 'rating' AND (val_raw IS NULL OR trim(val_raw) = '') THEN 'invalid_value'
  WHEN etype = 'rating' AND (val < 0 OR val > 5) THEN 'invalid_value'
END AS reason
FROM parsed;
CREATE TABLE deduped AS
SELECT * EXCLUDE (rn) FROM (
  SELECT *, row_number() OVER (PARTITION BY coalesce(eid, uid || iid || etype || ts::VARCHAR || coalesce(val::VARCHAR, ''))
                               ORDER BY ts, source_file) AS rn
  FROM checked WHERE reason IS NULL) WHERE rn = 1;
CREATE TABLE bots AS
SELECT DISTINCT uid FROM (
  SELECT uid, count(*) OVER (PARTITION BY uid ORDER BY ts RANGE BETWEEN CURRENT ROW AND INTERVAL 59999 MILLISECOND FOLLOWING) AS n
  FROM deduped) WHERE n > 120;
CREATE TABLE events_clean AS SELECT * FROM deduped WHERE uid NOT IN (SELECT uid FROM bots);
COPY (SELECT line, source_file, reason FROM checked WHERE reason IS NOT NULL
      UNION ALL SELECT line, source_file, 'bot_user' FROM deduped WHERE uid IN (SELECT uid FROM bots))
  TO '{out}/quarantine.parquet' (FORMAT parquet);
COPY (SELECT eid, uid, iid, etype, ts, val, sid, source_file, ts::DATE AS event_date FROM events_clean)
  TO '{out}/events_clean' (FORMAT parquet, PARTITION_BY (event_date), OVERWRITE_OR_IGNORE);
CREATE TABLE user_index AS
SELECT uid, (row_number() OVER (ORDER BY first_seen, uid) - 1)::INT AS user_index
FROM (SELECT uid, min(ts) AS first_seen FROM events_clean GROUP BY uid);
CREATE TABLE item_index AS
SELECT iid, (row_number() OVER (ORDER BY first_seen, iid) - 1)::INT AS item_index
FROM (SELECT iid, min(ts) AS first_seen FROM events_clean GROUP BY iid);
COPY (SELECT u.user_index, i.item_index,
             (sum(CASE etype WHEN 'view' THEN 1 WHEN 'click' THEN 2 WHEN 'add_to_cart' THEN 4
                             WHEN 'purchase' THEN 8 ELSE 0 END)
              + coalesce(arg_max(CASE WHEN etype = 'rating' THEN val END, CASE WHEN etype = 'rating' THEN ts END), 0))::FLOAT AS weight,
             count(*) AS event_count, min(ts) AS first_time, max(ts) AS last_time
      FROM events_clean e JOIN user_index u USING (uid) JOIN item_index i USING (iid)
      GROUP BY u.user_index, i.item_index) TO '{out}/interactions.parquet' (FORMAT parquet);
COPY (SELECT u.user_index, e.uid, min(ts), max(ts), count(*), count(DISTINCT iid),
             count(*) FILTER (WHERE etype = 'view'), count(*) FILTER (WHERE etype = 'click'),
             count(*) FILTER (WHERE etype = 'add_to_cart'), count(*) FILTER (WHERE etype = 'purchase'),
             count(*) FILTER (WHERE etype = 'rating')
      FROM events_clean e JOIN user_index u USING (uid) GROUP BY u.user_index, e.uid) TO '{out}/users.parquet' (FORMAT parquet);
COPY (SELECT i.item_index, e.iid, count(DISTINCT uid) AS popularity, count(*), min(ts), max(ts)
      FROM events_clean e JOIN item_index i USING (iid) GROUP BY i.item_index, e.iid) TO '{out}/items.parquet' (FORMAT parquet);
"""

DUCKDB_RUNNER = r"""
import json, resource, sys, time, duckdb
sql, out = sys.argv[1], sys.argv[2]
con = duckdb.connect()
started = time.perf_counter()
for statement in [s for s in sql.split(";\n") if s.strip()]:
    con.execute(statement)
seconds = time.perf_counter() - started
counts = {
  "input_rows": con.execute("SELECT count(*) FROM raw").fetchone()[0],
  "clean_rows": con.execute("SELECT count(*) FROM events_clean").fetchone()[0],
  "interactions": con.execute(f"SELECT count(*) FROM '{out}/interactions.parquet'").fetchone()[0],
}
print(json.dumps({"seconds": seconds, "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024, **counts}))
"""


class TreeSampler:
    """Peak RSS of the driver side and the executor side, sampled every 0.2 s."""

    def __init__(self):
        self.peak = {"driver": 0, "executor": 0}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    @staticmethod
    def _classify(proc: psutil.Process) -> str | None:
        try:
            cmd = " ".join(proc.cmdline())
            # JVMs only: launcher shells carry the class name in their arguments too.
            if proc.name() != "java":
                return None
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            return None
        if "CoarseGrainedExecutorBackend" in cmd:
            return "executor"
        # The SparkSubmit JVM; the Python driver is its child, counted with it.
        if "org.apache.spark.deploy.SparkSubmit" in cmd:
            return "driver"
        return None

    def _run(self):
        while not self._stop.is_set():
            totals = {"driver": 0, "executor": 0}
            for proc in psutil.process_iter():
                side = self._classify(proc)
                if side is None:
                    continue
                try:
                    procs = [proc] + proc.children(recursive=True)
                    totals[side] += sum(p.memory_info().rss for p in procs)
                except psutil.NoSuchProcess:
                    continue
            for side, value in totals.items():
                self.peak[side] = max(self.peak[side], value)
            time.sleep(0.2)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def submit(job: str, args: list[str], env: dict) -> float:
    started = time.perf_counter()
    proc = subprocess.run(["./scripts/submit.sh", job, *args], cwd=REPO, env=env, capture_output=True, text=True)
    if proc.returncode != 0:
        sys.exit(f"{job} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return time.perf_counter() - started


def gib(n: int) -> str:
    return f"{n / 2**30:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", default="1000000,10000000")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "ingest.json"))
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="recsys-bench-ingest-"))
    run_dir = work / "cluster"
    env = dict(os.environ)
    # The driver only plans and counts here (the executor does the work): 1g of
    # heap keeps it under the 2 GiB target with room for the Python driver.
    env["RECSYS_SET"] = (f"cluster.run_dir={run_dir} cluster.master_port=17177 "
                         "cluster.master_webui_port=18180 cluster.worker_webui_port=18181 "
                         "spark.driver_memory=1g cluster.executor_memory=4g")
    subprocess.run(["./scripts/cluster.sh", "start"], cwd=REPO, env=env, check=True)
    results = []
    try:
        for size in [int(s) for s in args.sizes.split(",")]:
            data, wh = work / f"events-{size}", work / f"wh-{size}"
            # The generator scales users and items with the log so activity stays realistic.
            common = ["--dataset", "synthetic", "--warehouse", str(wh),
                      "--set", f"synthetic.num_events={size}", "--set", f"dataset.source.path={data}",
                      "--set", f"synthetic.num_users={max(20_000, size // 50)}",
                      "--set", f"synthetic.num_items={max(5_000, size // 200)}",
                      "--set", f"synthetic.partitions={max(8, size // 250_000)}"]
            generate_s = submit("jobs/generate_events.py", common, env)
            with TreeSampler() as spark_mem:
                clean_s = submit("jobs/clean_events.py", common, env)
                tables_s = submit("jobs/build_tables.py", common, env)
            report = json.loads(sorted((wh / "reports" / "clean_events").glob("*.json"))[-1].read_text())

            duck_out = work / f"duck-{size}"
            duck_out.mkdir(exist_ok=True)
            sql = DUCKDB_SQL.format(src=data, out=duck_out)
            proc = subprocess.run([sys.executable, "-c", DUCKDB_RUNNER, sql, str(duck_out)],
                                  capture_output=True, text=True)
            if proc.returncode != 0:
                sys.exit(f"duckdb failed:\n{proc.stderr[-3000:]}")
            duck = json.loads(proc.stdout.strip().splitlines()[-1])
            spark_s = clean_s + tables_s
            results.append({
                "events": size, "input_rows": report["input_rows"], "generate_s": generate_s,
                "spark_clean_s": clean_s, "spark_tables_s": tables_s, "spark_s": spark_s,
                "spark_events_per_s": report["input_rows"] / spark_s,
                "spark_driver_peak_rss_bytes": spark_mem.peak["driver"],
                "spark_executor_peak_rss_bytes": spark_mem.peak["executor"],
                "spark_clean_rows": report["clean_rows"],
                "duckdb_s": duck["seconds"], "duckdb_events_per_s": duck["input_rows"] / duck["seconds"],
                "duckdb_peak_rss_bytes": duck["peak_rss_bytes"], "duckdb_clean_rows": duck["clean_rows"],
                "spark_over_duckdb": spark_s / duck["seconds"],
            })
            print(json.dumps(results[-1], indent=2), flush=True)
    finally:
        subprocess.run(["./scripts/cluster.sh", "stop"], cwd=REPO, env=env)

    print("\n| events | Spark clean+tables s | Spark events/s | driver peak GiB | executor peak GiB "
          "| DuckDB s | DuckDB events/s | DuckDB peak GiB | Spark / DuckDB | clean rows Spark / DuckDB |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['events']:,} | {r['spark_s']:.0f} ({r['spark_clean_s']:.0f}+{r['spark_tables_s']:.0f}) "
              f"| {r['spark_events_per_s']:,.0f} | {gib(r['spark_driver_peak_rss_bytes'])} "
              f"| {gib(r['spark_executor_peak_rss_bytes'])} | {r['duckdb_s']:.0f} | {r['duckdb_events_per_s']:,.0f} "
              f"| {gib(r['duckdb_peak_rss_bytes'])} | {r['spark_over_duckdb']:.2f}x "
              f"| {r['spark_clean_rows']:,} / {r['duckdb_clean_rows']:,} |")
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=2))
    print(f"results: {args.out}")


if __name__ == "__main__":
    main()
