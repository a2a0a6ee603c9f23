#!/usr/bin/env python
"""The nightly pipeline end to end at growing volumes: wall time and peak memory per stage.

For each size, writes a synthetic log (jobs/generate_events.py) and runs
``scripts/pipeline.sh`` on it with the default config except the sizes, while a
sampler polls every process of the run every 0.5 s and sorts it into:

* ``driver``: the spark-submit JVM plus the job's Python driver;
* ``executor``: executor JVMs (standalone cluster) and Spark's Python workers;
* ``trainer``: the torchrun processes TorchDistributor starts (peak of one).

Stage boundaries come from the run's ``status.json``. Sizes are
``EVENTS:USERS:ITEMS`` (the issue's 1M/10M/30M: 1000000:50000:10000 etc.).

    .venv/bin/python scripts/bench_scale.py --sizes 1000000:50000:10000
    .venv/bin/python scripts/bench_scale.py --sizes 1000000:50000:10000 10000000:300000:20000 \\
        --models ""            # RECSYS_MODELS: which neural models (default: none; "all": every one)

Prints a table, writes benchmarks/results/scale.json, and with matplotlib
installed a plot (docs/scale.png by default) of time and memory against size.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import psutil

REPO = Path(__file__).resolve().parents[1]


def classify(proc: psutil.Process) -> str | None:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
        return None
    if "torch.distributed.run" in cmd or "torchrun" in cmd or "recsys_spark.train" in cmd:
        return "trainer"
    if "CoarseGrainedExecutorBackend" in cmd or "pyspark.daemon" in cmd or "pyspark.worker" in cmd:
        return "executor"
    if "org.apache.spark.deploy.SparkSubmit" in cmd or "/jobs/" in cmd:
        return "driver"
    return None


class Sampler:
    """(time, {category: summed RSS}, trainer max RSS) every ``interval`` seconds for the process tree."""

    def __init__(self, root_pid: int, interval: float = 0.5):
        self.root, self.interval, self.samples = psutil.Process(root_pid), interval, []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            sums, trainer_max = {"driver": 0, "executor": 0, "trainer": 0}, 0
            try:
                procs = self.root.children(recursive=True)
            except psutil.NoSuchProcess:
                break
            # Executors of the local standalone cluster are not our children: find them by name.
            procs += [p for p in psutil.process_iter() if p.pid not in {q.pid for q in procs}
                      and classify(p) == "executor"]
            for p in procs:
                kind = classify(p)
                if kind is None:
                    continue
                try:
                    rss = p.memory_info().rss
                except psutil.Error:
                    continue
                sums[kind] += rss
                if kind == "trainer":
                    trainer_max = max(trainer_max, rss)
            self.samples.append((time.time(), sums, trainer_max))
            time.sleep(self.interval)

    def start(self):
        self._thread.start()

    def stop(self):
        self._stop.set()
        self._thread.join()

    def peaks(self, start: float, end: float) -> dict:
        inside = [s for s in self.samples if start <= s[0] <= end + self.interval]
        out = {k: max((s[1][k] for s in inside), default=0) for k in ("driver", "executor")}
        out["trainer_process"] = max((s[2] for s in inside), default=0)
        return {k: round(v / 2**20) for k, v in out.items()}


def run_size(events: int, users: int, items: int, args) -> dict:
    root = Path(args.work) / f"events{events}"
    raw, wh, logs = root / "raw", root / "wh", root / "logs"
    sets = [f"synthetic.num_events={events}", f"synthetic.num_users={users}", f"synthetic.num_items={items}",
            f"dataset.source.path={raw}", f"synthetic.partitions={args.partitions}",
            *args.set]
    argv = ["--dataset", "synthetic", "--warehouse", str(wh)]
    for s in sets:
        argv += ["--set", s]
    env = {**os.environ, "RECSYS_GENERATE": "1", "RECSYS_LOG_DIR": str(logs)}
    if args.models != "all":
        env["RECSYS_MODELS"] = args.models
    started = time.time()
    proc = subprocess.Popen([str(REPO / "scripts" / "pipeline.sh"), *argv], cwd=REPO, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    sampler = Sampler(proc.pid)
    sampler.start()
    for line in proc.stdout:
        print(f"  [{events}] {line.rstrip()}", flush=True)
    code = proc.wait()
    sampler.stop()
    status = json.loads((logs / "status.json").read_text()) if (logs / "status.json").exists() else {"stages": []}
    stages = []
    for st in status["stages"]:
        stages.append({"stage": st["stage"], "status": st["status"], "seconds": st["seconds"],
                       "reason": st.get("reason"),
                       **sampler.peaks(st["started_at"], st["ended_at"])})
    return {"events": events, "users": users, "items": items, "exit_code": code,
            "seconds": round(time.time() - started), "stages": stages}


def plot(results: list[dict], path: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install matplotlib)")
        return
    stages = sorted({s["stage"] for r in results for s in r["stages"]},
                    key=lambda n: [s["stage"] for s in results[-1]["stages"]].index(n)
                    if n in [s["stage"] for s in results[-1]["stages"]] else 99)
    fig, (ax_t, ax_m) = plt.subplots(1, 2, figsize=(13, 5))
    xs = [r["events"] for r in results]
    for name in stages:
        t = [next((s["seconds"] for s in r["stages"] if s["stage"] == name), None) for r in results]
        m = [next((max(s["driver"], s["executor"], s["trainer_process"]) for s in r["stages"]
                   if s["stage"] == name), None) for r in results]
        ax_t.plot(xs, t, marker="o", label=name)
        ax_m.plot(xs, m, marker="o", label=name)
    for ax, label in ((ax_t, "wall seconds"), (ax_m, "peak MiB (largest of driver, executor, one trainer)")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("events")
        ax.set_ylabel(label)
        ax.grid(True, which="both", alpha=0.3)
    ax_t.legend(fontsize=7)
    fig.suptitle("recsys-spark pipeline per stage against volume (2 cores, 24 GiB)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", nargs="+", default=["1000000:50000:10000"])
    parser.add_argument("--models", default="", help='RECSYS_MODELS for the run ("all": every registered one)')
    parser.add_argument("--partitions", type=int, default=8)
    parser.add_argument("--set", action="append", default=[], help="extra key=value for every job")
    parser.add_argument("--work", default=str(REPO / "run" / "bench-scale"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    parser.add_argument("--plot", default=str(REPO / "docs" / "scale.png"))
    args = parser.parse_args()
    results = []
    for size in args.sizes:
        events, users, items = (int(x) for x in size.split(":"))
        results.append(run_size(events, users, items, args))
        out = Path(args.out)
        out.mkdir(parents=True, exist_ok=True)
        (out / "scale.json").write_text(json.dumps({"results": results, "args": vars(args)}, indent=2))
    print("\n| events | stage | status | seconds | s per 1M events | driver MiB | executor MiB | trainer MiB |")
    print("|---|---|---|---|---|---|---|---|")
    for r in results:
        for s in r["stages"]:
            per = s["seconds"] / (r["events"] / 1e6)
            print(f"| {r['events']:,} | {s['stage']} | {s['status']} | {s['seconds']} | {per:.1f} | "
                  f"{s['driver']} | {s['executor']} | {s['trainer_process']} |")
        print(f"| {r['events']:,} | **total** (exit {r['exit_code']}) | | {r['seconds']} | "
              f"{r['seconds'] / (r['events'] / 1e6):.1f} | | | |")
    if args.plot:
        plot(results, Path(args.plot))


if __name__ == "__main__":
    sys.exit(main())
