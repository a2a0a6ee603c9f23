#!/usr/bin/env python
"""Blocked top-N scoring (recsys_spark.scoring.top_k, the path jobs/recommend.py serves
with) against Spark MLlib's ALSModel.recommendForAllUsers on the same factors.

Random factors (seeded, Gaussian / sqrt(rank)) are loaded into a real ALSModel, so
both sides score exactly the same vectors. recommendForAllUsers does not exclude
seen items, so ours runs with exclusion off. Both outputs are fully computed
(Spark's "noop" sink: no disk in the timing); ours emits flat rows, MLlib nested
arrays, so the MLlib + explode row (what a flat table needs) is timed too. The
two run alternately, each twice after a small warm-up, in one session with
bounded memory (local mode: the driver is the executor), and the ratio is taken
per pair, because this machine's load from other work changes minute to minute.

Correctness: the lists are joined on (user, rank); the score sequences must agree
(same multiset sorted) and items may differ only where scores tie within float
rounding.

    .venv/bin/python scripts/bench_recommend.py                      # 100k users x 20k items, rank 32
    .venv/bin/python scripts/bench_recommend.py --users 20000 --items 5000

Prints a Markdown table and writes benchmarks/results/recommend_<users>x<items>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def build_session(args):
    from pyspark.sql import SparkSession

    return (
        SparkSession.builder.master(f"local[{args.cores}]")
        .appName("bench_recommend")
        # local mode: the driver JVM is the executor, so this bounds both
        .config("spark.driver.memory", args.memory)
        .config("spark.sql.shuffle.partitions", str(args.partitions))
        .config("spark.sql.execution.arrow.pyspark.enabled", "true")
        .config("spark.ui.enabled", "false")
        .config("spark.ui.showConsoleProgress", "false")
        .config("spark.sql.session.timeZone", "UTC")
        .getOrCreate()
    )


def factor_frames(spark, users, items, rank, partitions, seed):
    import numpy as np
    import pandas as pd

    rng = np.random.default_rng(seed)
    u = (rng.standard_normal((users, rank)) / np.sqrt(rank)).astype(np.float32)
    v = (rng.standard_normal((items, rank)) / np.sqrt(rank)).astype(np.float32)
    udf = spark.createDataFrame(pd.DataFrame({"id": np.arange(users, dtype=np.int32), "features": list(u)}),
                                "id int, features array<float>").repartition(partitions).cache()
    vdf = spark.createDataFrame(pd.DataFrame({"id": np.arange(items, dtype=np.int32), "features": list(v)}),
                                "id int, features array<float>").repartition(partitions).cache()
    udf.count(), vdf.count()
    return udf, vdf, v


def als_model(spark, udf, vdf, rank):
    """An ALSModel over given factors (its Scala constructor is package-private, public in bytecode)."""
    from pyspark.ml.recommendation import ALSModel

    jvm = spark.sparkContext._jvm
    java_model = jvm.org.apache.spark.ml.recommendation.ALSModel("bench-als", rank, udf._jdf, vdf._jdf)
    # Built outside ALS.fit, the model has no column defaults: set them as fit would.
    java_model.setUserCol("user").setItemCol("item").setPredictionCol("prediction").setColdStartStrategy("drop")
    model = ALSModel(java_model)
    model._transfer_params_from_java()
    return model


def tree_cpu_seconds(pid: int) -> float:
    """CPU seconds used by process ``pid`` and its descendants (the JVM, the Python
    daemon and its workers), including exited children that were waited for."""
    import psutil

    root = psutil.Process(pid)
    total = 0.0
    for proc in [root] + root.children(recursive=True):
        try:
            t = proc.cpu_times()
            total += t.user + t.system + t.children_user + t.children_system
        except psutil.NoSuchProcess:
            pass
    return total


def timed(fn, jvm_pid: int) -> tuple[float, float]:
    """(wall seconds, CPU seconds of the Spark processes): CPU seconds are what the
    work costs whatever else the machine runs; wall seconds stretch with its load."""
    cpu0, started = tree_cpu_seconds(jvm_pid), time.perf_counter()
    fn()
    return time.perf_counter() - started, tree_cpu_seconds(jvm_pid) - cpu0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--rank", type=int, default=32)
    parser.add_argument("--n", type=int, default=50)
    parser.add_argument("--cores", type=int, default=2)
    parser.add_argument("--memory", default="4g", help="driver (= executor in local mode) memory")
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--batch-users", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)

    import numpy as np
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    from recsys_spark.scoring.scorers import DotProductScorer
    from recsys_spark.scoring.blocked import top_k

    spark = build_session(args)
    spark.sparkContext.setLogLevel("WARN")
    udf, vdf, item_matrix = factor_frames(spark, args.users, args.items, args.rank, args.partitions, args.seed)
    model = als_model(spark, udf, vdf, args.rank)
    scorer = DotProductScorer(spark, item_matrix, np.ones(args.items, dtype=bool))

    def ours(users_df):
        users = users_df.select(F.col("id").alias("user_index"), F.col("features").alias("factors"),
                                F.lit(None).cast("array<int>").alias("seen"))
        return top_k(users, scorer, k=args.n, exclude_seen=False, batch_users=args.batch_users)

    def mllib(m):
        return m.recommendForAllUsers(args.n)

    def flatten(nested):
        return nested.select("user", F.posexplode("recommendations").alias("pos", "rec")).select(
            F.col("user").alias("user_index"), F.col("rec.item").alias("item_index"),
            F.col("rec.rating").alias("score"), (F.col("pos") + 1).alias("rank"))

    def run_noop(df):
        df.write.format("noop").mode("overwrite").save()

    # Warm-up on a slice: JIT, Python workers, broadcast shipping.
    small = udf.limit(2000).cache()
    small.count()
    run_noop(ours(small))
    run_noop(als_model(spark, small, vdf, args.rank).recommendForAllUsers(args.n))

    jvm_pid = int(spark.sparkContext._jvm.java.lang.ProcessHandle.current().pid())
    runs = []
    for i in range(args.repeats):
        (t_mllib, c_mllib) = timed(lambda: run_noop(mllib(model)), jvm_pid)
        (t_ours, c_ours) = timed(lambda: run_noop(ours(udf)), jvm_pid)
        (t_flat, c_flat) = timed(lambda: run_noop(flatten(mllib(model))), jvm_pid)
        runs.append({"mllib_nested_s": t_mllib, "ours_s": t_ours, "mllib_flat_s": t_flat,
                     "mllib_nested_cpu_s": c_mllib, "ours_cpu_s": c_ours, "mllib_flat_cpu_s": c_flat,
                     "speedup_vs_nested": t_mllib / t_ours, "speedup_vs_flat": t_flat / t_ours,
                     "cpu_ratio_vs_nested": c_mllib / c_ours, "cpu_ratio_vs_flat": c_flat / c_ours,
                     "loadavg_1m": os.getloadavg()[0]})
        print(f"repeat {i + 1}: wall mllib {t_mllib:.1f}s, mllib+explode {t_flat:.1f}s, ours {t_ours:.1f}s "
              f"-> {t_mllib / t_ours:.1f}x / {t_flat / t_ours:.1f}x; CPU {c_mllib:.0f}s / {c_flat:.0f}s / "
              f"{c_ours:.0f}s -> {c_mllib / c_ours:.1f}x / {c_flat / c_ours:.1f}x (load {os.getloadavg()[0]:.1f})",
              flush=True)

    # Same top-N up to ties: compare rank by rank.
    a = flatten(mllib(model)).select("user_index", "rank", F.col("item_index").alias("item_a"),
                                      F.col("score").alias("score_a"))
    b = ours(udf).select("user_index", "rank", F.col("item_index").alias("item_b"), F.col("score").alias("score_b"))
    w = Window.partitionBy("user_index").orderBy("rank")
    tol = 1e-4
    cmp = (a.join(b, ["user_index", "rank"], "full_outer")
           .withColumn("gap_prev", F.lag("score_b").over(w) - F.col("score_b"))
           .withColumn("gap_next", F.col("score_b") - F.lead("score_b").over(w)))
    diff_item = F.col("item_a") != F.col("item_b")
    near_tie = (F.col("gap_prev") <= tol) | (F.col("gap_next") <= tol) | (F.col("rank") == args.n)
    stats = cmp.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(F.when(F.col("item_a").isNull() | F.col("item_b").isNull(), 1).otherwise(0)).alias("unmatched"),
        F.sum(F.when(diff_item, 1).otherwise(0)).alias("item_differs"),
        F.sum(F.when(diff_item & ~near_tie, 1).otherwise(0)).alias("item_differs_not_tie"),
        F.max(F.abs(F.col("score_a") - F.col("score_b"))).alias("max_score_diff"),
        F.countDistinct("user_index").alias("users"),
    ).first().asDict()
    users_differ = cmp.where(diff_item).select("user_index").distinct().count()
    identical = (stats["unmatched"] == 0 and stats["item_differs_not_tie"] == 0
                 and stats["max_score_diff"] is not None and stats["max_score_diff"] <= tol)

    conf = spark.sparkContext.getConf()
    result = {
        "users": args.users, "items": args.items, "rank": args.rank, "n": args.n,
        "cores": args.cores, "driver_executor_memory": conf.get("spark.driver.memory"),
        "shuffle_partitions": args.partitions, "batch_users": args.batch_users,
        "exclude_seen": False, "runs": runs,
        "speedup_vs_nested_median": statistics.median(r["speedup_vs_nested"] for r in runs),
        "speedup_vs_flat_median": statistics.median(r["speedup_vs_flat"] for r in runs),
        "cpu_ratio_vs_nested_median": statistics.median(r["cpu_ratio_vs_nested"] for r in runs),
        "cpu_ratio_vs_flat_median": statistics.median(r["cpu_ratio_vs_flat"] for r in runs),
        "comparison": {**stats, "users_with_any_item_difference": users_differ,
                       "identical_up_to_ties": identical, "tolerance": tol},
        "host": {"python": platform.python_version(), "machine": platform.machine(),
                 "cpus": os.cpu_count(), "loadavg_at_end": os.getloadavg()},
    }
    spark.stop()

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    path = out / f"recommend_{args.users}x{args.items}.json"
    path.write_text(json.dumps(result, indent=2, default=str) + "\n")
    med = lambda key: statistics.median(r[key] for r in runs)  # noqa: E731
    print(f"\n### Top-{args.n} for {args.users:,} users x {args.items:,} items, rank {args.rank} "
          f"({args.cores} cores, {result['driver_executor_memory']} driver/executor)\n")
    print(f"Medians of {len(runs)} alternating runs; CPU s = the Spark JVM and its Python workers.\n")
    print("| method | wall s | CPU s | ours is faster (wall) | ours is cheaper (CPU) |")
    print("|---|---|---|---|---|")
    print(f"| ALSModel.recommendForAllUsers (nested arrays) | {med('mllib_nested_s'):.1f} | "
          f"{med('mllib_nested_cpu_s'):.0f} | {result['speedup_vs_nested_median']:.1f}x | "
          f"{result['cpu_ratio_vs_nested_median']:.1f}x |")
    print(f"| recommendForAllUsers + explode to flat rows | {med('mllib_flat_s'):.1f} | "
          f"{med('mllib_flat_cpu_s'):.0f} | {result['speedup_vs_flat_median']:.1f}x | "
          f"{result['cpu_ratio_vs_flat_median']:.1f}x |")
    print(f"| scoring.top_k (blocked torch matmul + chunked top-k, flat rows) | {med('ours_s'):.1f} | "
          f"{med('ours_cpu_s'):.0f} | 1.0x | 1.0x |")
    c = result["comparison"]
    print(f"\nsame top-{args.n}: {c['identical_up_to_ties']} ({c['rows']:,} rows, {c['users']:,} users; "
          f"item differs in {c['item_differs']} rows / {c['users_with_any_item_difference']} users, "
          f"{c['item_differs_not_tie']} not at a score tie; max score difference {c['max_score_diff']:.2e})")
    print(f"-> {path}")


if __name__ == "__main__":
    main()
