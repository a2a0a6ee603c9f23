#!/usr/bin/env python
"""Throughput of the neural trainer's data path: Petastorm + DDP vs in-memory tensors.

The same model and the same training loop (recsys_spark.train.loop) are fed
three ways, on the same synthetic pairs:

* in-memory: the pairs as torch tensors in one process (no Spark, no Parquet):
  the ceiling the data path is measured against;
* Petastorm, 1 process: Spark -> Parquet -> Petastorm shard -> the loop, under
  TorchDistributor (local_mode=False: a Spark barrier task running torchrun);
* Petastorm + DDP, 2 processes (gloo on CPU): each process reads its shard.

Every process gets one torch thread (2 processes fill this machine's 2 cores),
so samples/s per process compare like with like; the target is >= 0.8 of the
in-memory rate per process. Epochs after the first count (the first pays for
reader start-up): wall-clock samples/s of the best one, and samples per
CPU-second of a process (see ``rates``). Peak memory is the largest resident
set of any training process (getrusage ru_maxrss).

    .venv/bin/python scripts/bench_trainer.py --model neumf --pairs 300000 --epochs 3

Prints a Markdown table and writes benchmarks/results/trainer_<model>_b<batch size>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def synthetic_pairs(n_pairs: int, n_users: int, n_items: int, seed: int):
    """Distinct (user, item) pairs with Zipf-like item popularity, and a time per pair."""
    import numpy as np

    rng = np.random.default_rng(seed)
    pop = 1.0 / np.arange(1, n_items + 1) ** 0.8
    users = rng.integers(0, n_users, int(n_pairs * 1.2))
    items = rng.choice(n_items, int(n_pairs * 1.2), p=pop / pop.sum())
    codes = np.unique(users.astype(np.int64) * n_items + items)[:n_pairs]
    rng.shuffle(codes)
    return (codes // n_items).astype(np.int32), (codes % n_items).astype(np.int32)


def rates(history):
    """Epochs after the first: best wall-clock samples/s per process, the mean, the median
    samples per CPU-second of a process, and the peak memory (MiB).

    On a shared machine other work only ever slows an epoch down, so the best
    epoch is the least disturbed wall-clock figure; samples per CPU-second
    (process CPU time, every thread of it: the loop's, Petastorm's reader's,
    gloo's) hardly depends on what else runs, and is the fairer comparison.
    """
    steady = history[1:] or history
    wall = [h["samples_per_s_per_process"] for h in steady]
    cpu = sorted(h["samples_per_cpu_s"] for h in steady)
    return {"best": max(wall), "mean": sum(wall) / len(wall), "per_cpu_s": cpu[len(cpu) // 2],
            "peak": max(h["peak_rss_mb"] for h in history)}


def _allreduce_worker(rank: int, world: int, n_floats: int, port: int, repeats: int, out) -> None:
    import torch
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world)
    grad = torch.randn(n_floats)
    for _ in range(3):
        dist.all_reduce(grad)
    started = time.perf_counter()
    for _ in range(repeats):
        dist.all_reduce(grad)
    if rank == 0:
        out.put((time.perf_counter() - started) / repeats)
    dist.destroy_process_group()


def allreduce_seconds(n_floats: int, world: int = 2, repeats: int = 30) -> float:
    """Seconds per gloo all-reduce of ``n_floats`` float32 between ``world`` local processes:
    what DDP adds to every step for a model with that many (dense-gradient) parameters."""
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_allreduce_worker, args=(r, world, n_floats, port, repeats, out)) for r in range(world)]
    for p in procs:
        p.start()
    seconds = out.get(timeout=300)
    for p in procs:
        p.join()
    return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="neumf", help="a registered neural model reading pairs")
    parser.add_argument("--pairs", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=20_000)
    parser.add_argument("--items", type=int, default=5_000)
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts to run")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    load_at_start = os.getloadavg()

    import numpy as np
    import torch

    from recsys_spark.models import registry
    from recsys_spark.train import loop

    cls = registry.get(args.model)
    if cls.input_kind != "pairs":
        raise SystemExit(f"bench_trainer: model '{args.model}' reads {cls.input_kind}; pick one that reads pairs")
    users, items = synthetic_pairs(args.pairs, args.users, args.items, args.seed)
    counts = np.bincount(items, minlength=args.items).astype(np.float64)
    settings = loop.TrainSettings(epochs=args.epochs, seed=args.seed, early_stopping=False, mixed_precision=False)
    build = {"n_users": args.users, "n_items": args.items, "params": {}}
    results = []

    # 1. In memory, one process, before Spark starts (so its peak memory is its own).
    torch.set_num_threads(1)
    torch.manual_seed(args.seed)
    tensors = {"user_index": torch.from_numpy(users.astype(np.int64)),
               "item_index": torch.from_numpy(items.astype(np.int64)),
               "weight": torch.ones(len(users))}
    if cls.needs_history:
        raise SystemExit("bench_trainer: pick a model without needs_history (the in-memory feed has no histories)")
    out = loop.train(cls.build(**build), loop.tensor_loader_factory(tensors, batch_size=args.batch_size,
                                                                    seed=args.seed),
                     settings, item_counts=counts, device="cpu", log=lambda s: print("in-memory", s, flush=True))
    r = rates(out["history"])
    baseline = r
    results.append({"feed": "in-memory tensors", "processes": 1, "samples_per_s_per_process": r["best"],
                    "samples_per_s_total": r["best"], "mean_per_process": r["mean"],
                    "samples_per_cpu_s": r["per_cpu_s"],
                    "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                    "ratio_to_in_memory": 1.0, "cpu_ratio_to_in_memory": 1.0})

    # What DDP adds per step whatever feeds it: the all-reduce of every gradient.
    n_params = sum(p.numel() for p in cls.build(**build).parameters() if p.requires_grad)
    step_compute_s = args.batch_size / baseline["best"]
    step_allreduce_s = allreduce_seconds(n_params)
    ddp_bound = step_compute_s / (step_compute_s + step_allreduce_s)
    ceiling = (f"DDP ceiling: {n_params:,} dense-gradient parameters; a step's compute {step_compute_s * 1e3:.1f} ms "
               f"(in-memory, batch {args.batch_size}) vs their 2-process gloo all-reduce "
               f"{step_allreduce_s * 1e3:.1f} ms -> per process at most {ddp_bound:.2f} of in-memory, "
               "whatever feeds the loop")
    print(ceiling, flush=True)

    # 2. Petastorm (+ DDP) under TorchDistributor.
    import pyarrow as pa
    import pyarrow.parquet as pq

    from recsys_spark.config import load_config
    from recsys_spark.session import build_spark
    from recsys_spark.train import data, distributed

    cfg = load_config(overrides=["spark.extra={spark.ui.enabled: 'false'}"])
    spark = build_spark(cfg, "bench_trainer")
    with tempfile.TemporaryDirectory(prefix="bench-trainer-") as tmp:
        src = Path(tmp) / "pairs.parquet"
        pq.write_table(pa.table({"user_index": users, "item_index": items,
                                 "weight": np.ones(len(users), dtype=np.float32),
                                 "last_time": pa.array(np.zeros(len(users), dtype="datetime64[us]"))}), src)
        rows = spark.read.parquet(str(src))
        examples = data.training_examples(rows, input_kind="pairs", needs_history=False, n_items=args.items,
                                          history_length=1)
        for n_proc in [int(p) for p in args.processes.split(",")]:
            started = time.perf_counter()
            pdata = data.materialise(spark, examples, cache_dir=f"{tmp}/cache", shard_count=n_proc, seed=args.seed)
            materialise_s = time.perf_counter() - started
            job = distributed.WorkerJob(model_name=args.model, build_kwargs=build, data=pdata, settings=settings,
                                        item_counts=counts, batch_size=args.batch_size, validate=False,
                                        threads_per_process=1, use_gpu=False)
            try:
                started = time.perf_counter()
                res = distributed.run(spark, job, num_processes=n_proc)
                wall = time.perf_counter() - started
            finally:
                pdata.delete()
            r = rates(res["history"])
            results.append({"feed": "Petastorm + DDP" if n_proc > 1 else "Petastorm", "processes": n_proc,
                            "samples_per_s_per_process": r["best"], "samples_per_s_total": r["best"] * n_proc,
                            "mean_per_process": r["mean"], "samples_per_cpu_s": r["per_cpu_s"],
                            "peak_rss_mb": r["peak"], "ratio_to_in_memory": r["best"] / baseline["best"],
                            "cpu_ratio_to_in_memory": r["per_cpu_s"] / baseline["per_cpu_s"],
                            "materialise_s": materialise_s,
                            "distributor_wall_s": wall, "parquet_files": pdata.files})
    spark.stop()

    header = ["feed", "processes", "samples/s per process (best epoch)", "samples/s total", "vs in-memory",
              "samples per CPU-s per process", "vs in-memory (CPU)", "peak RSS MiB/process"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        lines.append(f"| {r['feed']} | {r['processes']} | {r['samples_per_s_per_process']:,.0f} | "
                     f"{r['samples_per_s_total']:,.0f} | {r['ratio_to_in_memory']:.2f} | "
                     f"{r['samples_per_cpu_s']:,.0f} | {r['cpu_ratio_to_in_memory']:.2f} | "
                     f"{r['peak_rss_mb']:,.0f} |")
    table = "\n".join(lines)
    print(table)
    print(f"\n{ceiling}")
    meta = {"model": args.model, "pairs": args.pairs, "users": args.users, "items": args.items,
            "epochs": args.epochs, "batch_size": args.batch_size, "negatives_per_positive":
            settings.negatives_per_positive, "threads_per_process": 1, "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(),
            "torch": torch.__version__, "results": results, "table": table,
            "ddp_ceiling": {"parameters": n_params, "step_compute_ms": step_compute_s * 1e3,
                            "step_allreduce_ms": step_allreduce_s * 1e3, "per_process_bound": ddp_bound}}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"trainer_{args.model}_b{args.batch_size}.json"
    path.write_text(json.dumps(meta, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
