#!/usr/bin/env python
"""EASE's fit at growing catalogs: time and peak memory, with the default 2g driver.

Each (method, catalog) runs in its own process with its own local[2] Spark
session, so peaks do not carry over. A power-law catalog (Zipf 0.9) and
power-law user activity, ~40 training pairs per user, as Spark rows:

* ``sparse``: the job's method (``baselines.fit_ease``): pairs collected
  through Arrow, Gram matrix by blocked scipy sparse products into float32,
  LAPACK Cholesky inverse in place;
* ``rowmatrix``: the method it replaced: MLlib's
  ``RowMatrix.computeGramianMatrix`` pickled to Python, float64 ``np.linalg.inv``.

    .venv/bin/python scripts/bench_ease.py                      # 2k, 8k, 20k items
    .venv/bin/python scripts/bench_ease.py --items 2000 8000 --methods sparse rowmatrix

Prints a Markdown table and writes benchmarks/results/ease.json.
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

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def one(method: str, n_items: int, users_per_item: float, seed: int) -> dict:
    import numpy as np
    import psutil

    from recsys_spark.config import load_config
    from recsys_spark.models import baselines
    from recsys_spark.session import build_spark

    spark = build_spark(load_config(overrides=["spark.shuffle_partitions=4",
                                               "spark.extra={spark.ui.enabled: 'false'}"]), "bench_ease")
    jvm = psutil.Process(int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid()))
    me = psutil.Process()
    peaks = {"python": 0, "jvm": 0}
    done = threading.Event()

    def sample():  # RSS every 50 ms: the JVM's peak is not in any rusage of ours
        while not done.is_set():
            peaks["python"] = max(peaks["python"], me.memory_info().rss)
            peaks["jvm"] = max(peaks["jvm"], jvm.memory_info().rss)
            time.sleep(0.05)

    rng = np.random.default_rng(seed)
    n_users = int(n_items * users_per_item)
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p /= item_p.sum()
    activity = np.minimum(n_items // 2, np.maximum(1, (rng.pareto(1.5, n_users) + 1) * 13).astype(int))
    users = np.repeat(np.arange(n_users), activity)
    items = rng.choice(n_items, size=len(users), p=item_p)
    import pandas as pd

    pdf = pd.DataFrame({"user_index": users.astype("int32"), "item_index": items.astype("int32")}).drop_duplicates()
    path = f"/tmp/bench_ease_{os.getpid()}.parquet"
    pdf.to_parquet(path)
    train = spark.read.parquet(path).cache()
    pairs = train.count()
    base_python, base_jvm = me.memory_info().rss, jvm.memory_info().rss
    threading.Thread(target=sample, daemon=True).start()
    started = time.perf_counter()
    error = None
    try:
        if method == "sparse":
            b = baselines.fit_ease(train, n_items, l2=250.0, max_items=10**9)
        else:
            from pyspark.mllib.linalg import Vectors
            from pyspark.mllib.linalg.distributed import RowMatrix
            from pyspark.sql import functions as F

            hist = train.groupBy("user_index").agg(F.array_sort(F.collect_set("item_index")).alias("items"))
            rows = hist.rdd.map(lambda r: Vectors.sparse(n_items, r["items"], [1.0] * len(r["items"])))
            g = np.array(RowMatrix(rows).computeGramianMatrix().toArray(), dtype=np.float64, copy=True)
            g[np.diag_indices_from(g)] += 250.0
            p = np.linalg.inv(g)
            b = (-p / np.diag(p)).astype(np.float32)
        checksum = float(np.abs(b[:50, :50]).sum())
    except Exception as exc:  # an OOM in the JVM surfaces as a Py4J error: that is the measurement
        error, checksum = f"{type(exc).__name__}: {str(exc).splitlines()[0][:160]}", None
    seconds = time.perf_counter() - started
    done.set()
    spark.stop()
    os.remove(path) if os.path.isfile(path) else None
    return {"method": method, "items": n_items, "users": n_users, "pairs": pairs, "seconds": round(seconds, 1),
            "python_peak_mib": round(peaks["python"] / 2**20), "python_base_mib": round(base_python / 2**20),
            "jvm_peak_mib": round(peaks["jvm"] / 2**20), "jvm_base_mib": round(base_jvm / 2**20),
            "error": error, "checksum": checksum}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--items", type=int, nargs="+", default=[2000, 8000, 20000])
    parser.add_argument("--methods", nargs="+", default=["sparse", "rowmatrix"], choices=["sparse", "rowmatrix"])
    parser.add_argument("--users-per-item", type=float, default=15.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--one", nargs=2, metavar=("METHOD", "ITEMS"), help=argparse.SUPPRESS)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.one:
        print("RESULT " + json.dumps(one(args.one[0], int(args.one[1]), args.users_per_item, args.seed)))
        return
    results = []
    for n_items in args.items:
        for method in args.methods:
            proc = subprocess.run([sys.executable, __file__, "--one", method, str(n_items),
                                   "--users-per-item", str(args.users_per_item), "--seed", str(args.seed)],
                                  capture_output=True, text=True, timeout=3600)
            line = next((x for x in proc.stdout.splitlines() if x.startswith("RESULT ")), None)
            for phase in (x for x in proc.stdout.splitlines() if x.startswith("EASE: ")):
                print(f"  {method} {n_items}: {phase}", flush=True)
            oom = next((x.strip() for x in proc.stderr.splitlines() if "OutOfMemoryError" in x), None)
            result = json.loads(line[7:]) if line else {
                "method": method, "items": n_items, "error": f"process exited {proc.returncode}: "
                + (oom or (proc.stderr.strip().splitlines() or [""])[-1])[:160]}
            results.append(result)
            print(json.dumps(result), flush=True)
    print("\n| method | items | pairs | seconds | Python peak MiB | driver JVM peak MiB | outcome |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['method']} | {r['items']} | {r.get('pairs', '')} | {r.get('seconds', '')} | "
              f"{r.get('python_peak_mib', '')} | {r.get('jvm_peak_mib', '')} | {r.get('error') or 'ok'} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ease.json").write_text(json.dumps({"results": results, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
