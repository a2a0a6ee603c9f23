#!/usr/bin/env python
"""Stress the 2-process trainer: how often does a training process die, and does a run ever hang?

Runs the Petastorm-fed DDP trainer (``recsys_spark.train.distributed.run``:
TorchDistributor, 2 processes, gloo) ``--runs`` times for every registered
neural model (or ``--models``) on tiny planted data with early stopping, on
one local[2] SparkSession, and counts per model:

* ok: rank 0's result came back;
* died: the run failed because a training process died by a signal (SIGABRT
  from "terminate called without an active exception" was the symptom);
* failed: any other failure (its message is recorded);
* hung: still running after ``--timeout`` s (the Spark job is then cancelled).

``--launch pyspark`` runs TorchDistributor's stock launch instead of the
project's (``TorchDistributor.run``: pyspark's torchrun wrapper, which exits 0
whatever torchrun did, and TorchDistributor's own train file): a rank other
than 0 that dies there is counted only as a hang (rank 0 waits 300 s on the
exit barrier) or, when rank 0 dies, as a failure. ``--load`` starts a busy-loop
process beside the runs (the machine has 2 cores), as in the loaded demo run.

    .venv/bin/python scripts/bench_trainer_stress.py --runs 5 --load

``--shared`` trains every model in each launch, one after the other, as a night
run in one driver does (``recsys_spark/train/shared_launch.py``).

Prints a Markdown table and writes benchmarks/results/trainer_stress_<launch>[_shared][_load].json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP, HISTORY = 4, 40, 10, 8


def planted_rows(spark, seed: int):
    """Users of group g consume items of group g: 6 training rows and 2 held-out rows each."""
    import datetime as dt

    import numpy as np

    rng = np.random.default_rng(seed)
    train, held = [], []
    t0 = dt.datetime(2026, 1, 1)
    for u in range(GROUPS * USERS_PER_GROUP):
        g = u // USERS_PER_GROUP
        items = rng.permutation(np.arange(g * ITEMS_PER_GROUP, (g + 1) * ITEMS_PER_GROUP))
        train += [(u, int(i), 1.0, t0 + dt.timedelta(hours=t)) for t, i in enumerate(items[:6])]
        held += [(u, int(i)) for i in items[6:8]]
    rows = spark.createDataFrame(train, "user_index int, item_index int, weight float, last_time timestamp")
    return rows, spark.createDataFrame(held, "user_index int, item_index int")


class Timeout(Exception):
    pass


def one_run(spark, job, launch: str, timeout: int) -> dict:
    """One training run: its outcome, seconds, and what a failure said."""
    from pyspark.ml.torch.distributor import TorchDistributor

    from recsys_spark.train import distributed

    def expired(signum, frame):
        raise Timeout()

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(timeout)
    started = time.perf_counter()
    try:
        if launch == "project":
            distributed.run(spark, job, num_processes=2)
        else:
            if TorchDistributor(num_processes=2, local_mode=False, use_gpu=False).run(distributed._worker, job) is None:
                raise RuntimeError("no result from rank 0")
        outcome, detail = "ok", ""
    except Timeout:
        spark.sparkContext.cancelAllJobs()  # ends the barrier tasks, and with them torchrun
        outcome, detail = "hung", f"still running after {timeout} s"
    except distributed.TrainingProcessFailed as exc:
        outcome = "died" if exc.signal else "failed"
        detail = f"rank {exc.rank} {exc.signal or exc.exitcode}: {exc.last_line}"
    except Exception as exc:  # noqa: BLE001 - the stock launch fails with whatever Spark raised
        text = str(exc)
        outcome = "died" if "SIGABRT" in text or "terminate called" in text else "failed"
        detail = text.strip().splitlines()[0][:300] if text.strip() else type(exc).__name__
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return {"outcome": outcome, "seconds": time.perf_counter() - started, "detail": detail}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runs", type=int, default=20, help="runs per model")
    parser.add_argument("--models", default="", help="comma-separated; default: every registered neural model")
    parser.add_argument("--epochs", type=int, default=6, help="at most; early stopping (patience 2) usually ends sooner")
    parser.add_argument("--timeout", type=int, default=240, help="seconds before a run counts as hung")
    parser.add_argument("--launch", choices=["project", "pyspark"], default="project")
    parser.add_argument("--load", action="store_true", help="run a competing busy-loop process throughout")
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--shared", action="store_true",
                        help="every run trains all the models in one launch (a night's shared launch, "
                             "recsys_spark/train/shared_launch.py) instead of one launch per model")
    args = parser.parse_args()

    from recsys_spark.config import load_config
    from recsys_spark.models import registry
    from recsys_spark.session import build_spark
    from recsys_spark.train import data, distributed, neural
    from recsys_spark.train.loop import TrainSettings

    models = [m for m in (args.models.split(",") if args.models else registry.names()) if m]
    cfg = load_config(overrides=["spark.shuffle_partitions=2", "spark.extra={spark.ui.enabled: 'false'}"])
    spark = build_spark(cfg, "bench_trainer_stress")
    rows, held = planted_rows(spark, args.seed)
    n_users, n_items = GROUPS * USERS_PER_GROUP, GROUPS * ITEMS_PER_GROUP
    counts = data.item_counts(rows, n_items)
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if args.load else None
    results = []
    try:
        with tempfile.TemporaryDirectory(prefix="bench-stress-") as tmp:
            jobs, made = [], []
            for model in models:
                cls = registry.get(model)
                examples = data.training_examples(rows, input_kind=cls.input_kind, needs_history=cls.needs_history,
                                                  n_items=n_items, history_length=HISTORY)
                validation = data.validation_examples(rows, held, n_items=n_items, history_length=HISTORY)
                reads_history = cls.needs_history or cls.input_kind == data.HISTORIES
                pdata = data.materialise(spark, examples, cache_dir=f"{tmp}/cache", shard_count=2, seed=args.seed,
                                         history_length=HISTORY if reads_history else 0, validation=validation)
                features = None
                if neural.takes_item_features(cls):
                    import numpy as np

                    features = {"genres": np.eye(GROUPS, dtype=np.float32)[np.arange(n_items) // ITEMS_PER_GROUP]}
                settings = TrainSettings(epochs=args.epochs, patience=2, learning_rate=0.01, seed=args.seed,
                                         metric="ndcg_at_5")
                job = distributed.WorkerJob(
                    model_name=model, build_kwargs={"n_users": n_users, "n_items": n_items, "params": {}},
                    data=pdata, settings=settings, item_counts=counts, batch_size=64 if cls.input_kind == "pairs" else 16,
                    item_features=features, threads_per_process=1, use_gpu=False,
                    graph=neural.training_graph(rows, name=model, n_edges=rows.count()) if neural.needs_graph(cls)
                    else None)
                jobs.append((model, job))
                made.append(pdata)
            # One launch per model, or (--shared) every model in each launch, as a night in one driver.
            launches = [(f"all {len(jobs)}, one launch", [j for _, j in jobs])] if args.shared else jobs
            try:
                for name, job in launches:
                    for i in range(args.runs):
                        r = one_run(spark, job, args.launch, args.timeout)
                        print(f"{name} run {i + 1}/{args.runs}: {r['outcome']} in {r['seconds']:.1f} s "
                              f"{r['detail']}", flush=True)
                        results.append({"model": name, "run": i + 1, **r})
            finally:
                for pdata in made:
                    pdata.delete()
    finally:
        if busy is not None:
            busy.terminate()
            busy.wait()
        spark.stop()

    table = []
    for model in dict.fromkeys(r["model"] for r in results):
        mine = [r for r in results if r["model"] == model]
        count = {k: sum(r["outcome"] == k for r in mine) for k in ("ok", "died", "failed", "hung")}
        ok_s = [r["seconds"] for r in mine if r["outcome"] == "ok"]
        table.append({"model": model, "runs": len(mine), **count,
                      "median_ok_s": statistics.median(ok_s) if ok_s else None,
                      "max_s": max((r["seconds"] for r in mine), default=None)})
    load = "with a competing busy loop" if args.load else "no added load"
    print(f"\n2-process trainer, launch={args.launch}, {load}, per-run timeout {args.timeout} s\n")
    print("| model | runs | ok | died | failed | hung | median s (ok) | max s |")
    print("|---|---|---|---|---|---|---|---|")
    for t in table:
        med = f"{t['median_ok_s']:.1f}" if t["median_ok_s"] is not None else "-"
        print(f"| {t['model']} | {t['runs']} | {t['ok']} | {t['died']} | {t['failed']} | {t['hung']} | {med} | "
              f"{t['max_s']:.1f} |")
    out = REPO / "benchmarks" / "results" / (f"trainer_stress_{args.launch}{'_shared' if args.shared else ''}"
                                             f"{'_load' if args.load else ''}.json")
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"args": vars(args), "machine": platform.platform(), "cpus": os.cpu_count(),
                               "table": table, "runs": results}, indent=2))
    print(f"\nwrote {out}")


if __name__ == "__main__":
    main()
