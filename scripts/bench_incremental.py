#!/usr/bin/env python
"""The nightly day against a full recompute: clean + tables with history already in the warehouse.

Writes one synthetic log (jobs/generate_events.py, ``--events`` over
``--days`` days), then, each through ``scripts/pipeline.sh`` with
``RECSYS_STAGES="clean_events build_tables"`` and the default config except
the sizes:

1. ``history``: a source holding every day but the last (links to the log's
   date folders), cleaned whole into a new warehouse: the night before;
2. ``incremental``: the last day's folder arrives; the same warehouse cleans
   only it (``clean.incremental``, the default) and updates the tables;
3. ``full``: the same final source cleaned whole into a new warehouse (what
   every night costs without the incremental clean).

2 and 3 run back to back on the same machine: their ratio is the result.
``--again`` skips 1 and reuses the last run's warehouse: 2 is then the last
day cleaned again (``--backfill`` of that day: the same files read, the same
event date rewritten) and 3 a new full clean.
A sampler (scripts/bench_scale.py's) records the driver's and executors' peak
memory per stage.

    .venv/bin/python scripts/bench_incremental.py --events 10000000 --users 300000 --items 20000

Prints a table and writes benchmarks/results/incremental.json.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_scale import Sampler  # noqa: E402 - a sibling script, not a package

REPO = Path(__file__).resolve().parents[1]


def pipeline(name: str, argv: list[str], logs: Path, env_extra: dict[str, str]) -> dict:
    env = {**os.environ, "RECSYS_LOG_DIR": str(logs), "RECSYS_MODELS": "", **env_extra}
    started = time.time()
    proc = subprocess.Popen([str(REPO / "scripts" / "pipeline.sh"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    output = []
    for line in proc.stdout:
        output.append(line)
        print(f"  [{name}] {line.rstrip()}", flush=True)
    code = proc.wait()
    sampler.stop()
    status = json.loads((logs / "status.json").read_text())
    stages = [{"stage": st["stage"], "status": st["status"], "seconds": st["seconds"],
               **sampler.peaks(st["started_at"], st["ended_at"])} for st in status["stages"]]
    return {"run": name, "exit_code": code, "seconds": round(time.time() - started, 1), "stages": stages}


def clean_report(wh: Path) -> dict:
    reports = sorted((wh / "reports" / "clean_events").glob("*.json"), key=lambda p: p.stat().st_mtime)
    report = json.loads(reports[-1].read_text())
    keep = ("mode", "full_because", "input_rows", "clean_rows", "duplicates", "quarantined_rows",
            "partitions_cleaned", "partitions_unchanged", "event_dates_rewritten", "elapsed_s")
    return {k: report.get(k) for k in keep}


def first_nights(args, log: Path, argv) -> tuple[list[dict], list[str]]:
    """The log (written unless --keep-log finds it), the history night and the incremental night."""
    work = Path(args.work)
    if not (args.keep_log and (log / "_manifest.json").exists()):
        shutil.rmtree(log, ignore_errors=True)
        gen = pipeline("generate", argv(log, work / "gen-wh", "2026-12-01"), work / "logs-generate",
                       {"RECSYS_GENERATE": "1", "RECSYS_STAGES": "generate_events"})
        assert gen["exit_code"] == 0, gen
    days = sorted(p.name for p in log.iterdir() if p.name.startswith("date="))
    source = work / "source"
    for d in (source, work / "wh-nightly", work / "wh-full"):
        shutil.rmtree(d, ignore_errors=True)
    source.mkdir(parents=True)
    for d in days[:-1]:
        (source / d).symlink_to(log / d, target_is_directory=True)
    stages = {"RECSYS_STAGES": "clean_events build_tables"}
    runs = [pipeline("history", argv(source, work / "wh-nightly", days[-2][5:]), work / "logs-history", stages)]
    runs[-1]["clean"] = clean_report(work / "wh-nightly")
    (source / days[-1]).symlink_to(log / days[-1], target_is_directory=True)
    runs.append(pipeline("incremental", argv(source, work / "wh-nightly", days[-1][5:]), work / "logs-incremental",
                         stages))
    runs[-1]["clean"] = clean_report(work / "wh-nightly")
    return runs, days


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=10_000_000)
    parser.add_argument("--users", type=int, default=300_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--days", type=int, default=60)
    parser.add_argument("--work", default=str(REPO / "run" / "bench-incremental"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--keep-log", action="store_true", help="reuse the log of an earlier run of these sizes")
    parser.add_argument("--again", action="store_true",
                        help="reuse the last run's log and nightly warehouse: back-fill the last day, clean all again")
    args = parser.parse_args()

    work = Path(args.work)
    log = work / f"log-{args.events}-{args.users}-{args.items}-{args.days}"
    sizes = [f"synthetic.num_events={args.events}", f"synthetic.num_users={args.users}",
             f"synthetic.num_items={args.items}", f"synthetic.days={args.days}"]

    def argv(source: Path, wh: Path, run_date: str) -> list[str]:
        out = ["--dataset", "synthetic", "--warehouse", str(wh), "--set", f"dataset.source.path={source}",
               "--set", f"run_date={run_date}"]
        for s in sizes:
            out += ["--set", s]
        return out

    if args.again:
        days = sorted(p.name for p in log.iterdir() if p.name.startswith("date="))
        source, stages = work / "source", {"RECSYS_STAGES": "clean_events build_tables"}
        shutil.rmtree(work / "wh-full", ignore_errors=True)
        last = days[-1][5:]
        runs = [pipeline("incremental", argv(source, work / "wh-nightly", last) + ["--force", "--backfill", last, last],
                         work / "logs-incremental", stages)]
        runs[-1]["clean"] = clean_report(work / "wh-nightly")
    else:
        runs, days = first_nights(args, log, argv)
        source, stages = work / "source", {"RECSYS_STAGES": "clean_events build_tables"}
    runs.append(pipeline("full", argv(source, work / "wh-full", days[-1][5:]), work / "logs-full", stages))
    runs[-1]["clean"] = clean_report(work / "wh-full")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result = {"args": vars(args), "days": len(days), "runs": runs}
    (out / ("incremental-again.json" if args.again else "incremental.json")).write_text(json.dumps(result, indent=2))
    print(f"\n{args.events:,} events over {len(days)} days; the last day added to {len(days) - 1} days of history\n")
    print("| run | stage | seconds | driver MiB | executor MiB | rows read |")
    print("|---|---|---|---|---|---|")
    for r in runs:
        for s in r["stages"]:
            rows = r["clean"]["input_rows"] if s["stage"] == "clean_events" else ""
            print(f"| {r['run']} | {s['stage']} | {s['seconds']} | {s['driver']} | {s['executor']} | {rows} |")
    inc, full = (sum(s["seconds"] for s in r["stages"]) for r in runs[-2:])
    print(f"\nincremental day {inc:.0f} s vs full recompute {full:.0f} s: {full / inc:.1f}x faster")
    return 0 if all(r["exit_code"] == 0 for r in runs) else 1


if __name__ == "__main__":
    sys.exit(main())
