#!/usr/bin/env python
"""Training throughput of every registered neural model, in 1 and 2 training processes.

One small synthetic warehouse is built once through the jobs themselves
(generate_events -> clean_events -> build_tables -> split, sizes as arguments;
default: 5,000 users, 2,000 items,
300,000 events). Then each model of the registry, at each
process count, is trained as the night's refit trains it:
``recsys_spark.train.neural.fit(..., final=True, epochs=E)`` — train +
validation rows, materialised to Petastorm, a fixed number of epochs under
TorchDistributor, no validation, no early stopping, no search. The model's own
trainer settings (``neural.per_model.<name>``: batch size, history length, ...)
apply, as in the night; ``--conf``/``--set`` change them.

A sample is what the model's loader yields one row per: a training pair
(user, item) for ``input_kind: pairs`` models, a user with their history for
``input_kind: histories`` models. Rates of the two kinds do not compare.

Every training process gets one torch thread (``--threads-per-process``; the
night's ``neural.threads_per_process`` is 0: the cluster's cores shared out),
so 2 processes fill this machine's 2 cores and 1 vs 2 compares like with like:
the ratio "2 vs 1" is the 2-process total over the 1-process total (2.0 would
be perfect scaling; gloo all-reduce and the shared reader cost the rest).
Rates are those of ``bench_trainer.rates``: the best epoch after the first, and
the median samples per CPU-second of a process.

    .venv/bin/python scripts/bench_throughput.py                 # every model, demo sizes, 4 epochs
    .venv/bin/python scripts/bench_throughput.py --models neumf,sasrec --users 300 --items 200 \\
        --events 5000 --epochs 2

Prints a Markdown table and writes benchmarks/results/throughput_<events>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from bench_trainer import rates  # noqa: E402

SAMPLE = {"pairs": "pair", "histories": "user"}  # what one loader row is, by input_kind


def build_warehouse(argv: list[str]) -> None:
    """generate -> clean -> tables -> split through the jobs' main(argv), in this driver's Spark session."""
    from recsys_spark.pipeline import load_job

    for stage in ("generate_events", "clean_events", "build_tables", "split"):
        load_job(REPO / "jobs", stage).main(argv)


def measure(spark, cfg, split_rows, name: str, *, n_users: int, n_items: int, epochs: int) -> dict:
    """One refit-style fit of ``name`` under ``cfg``: its rates (see ``bench_trainer.rates``) and timings."""
    from recsys_spark.models import registry
    from recsys_spark.train import neural

    neural.clear_checkpoints(cfg, name)  # a finished run clears them; a crashed earlier one must not resume
    started = time.perf_counter()
    trained = neural.fit(spark, cfg, split_rows, name, n_users=n_users, n_items=n_items, final=True, epochs=epochs)
    wall = time.perf_counter() - started
    history = trained.history
    r = rates(history)
    n = cfg.neural.num_processes
    return {"model": name, "sample": SAMPLE.get(registry.get(name).input_kind, registry.get(name).input_kind),
            "processes": n, "samples_per_s_per_process": r["best"], "samples_per_s_total": r["best"] * n,
            "mean_per_process": r["mean"], "samples_per_cpu_s": r["per_cpu_s"], "peak_rss_mb": r["peak"],
            "epoch_seconds": min(h["seconds"] for h in history[1:] or history),
            "examples": trained.extra["examples"], "batch_size": cfg.neural.batch_size,
            "history_length": cfg.neural.history_length, "fit_wall_s": wall, "phases": trained.extra["phases"],
            "history": history}


def table(results: list[dict]) -> str:
    header = ["model", "sample", "processes", "samples/s per process (best epoch)", "samples/s total",
              "total vs 1 process", "samples per CPU-s per process", "peak RSS MiB/process", "epoch s (best)"]
    one = {r["model"]: r["samples_per_s_total"] for r in results if r["processes"] == 1}
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in results:
        ratio = f"{r['samples_per_s_total'] / one[r['model']]:.2f}" if r["model"] in one else "-"
        lines.append(f"| {r['model']} | {r['sample']} | {r['processes']} | {r['samples_per_s_per_process']:,.0f} | "
                     f"{r['samples_per_s_total']:,.0f} | {ratio} | {r['samples_per_cpu_s']:,.0f} | "
                     f"{r['peak_rss_mb']:,.0f} | {r['epoch_seconds']:.1f} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="all", help="comma-separated registered neural models, or all")
    parser.add_argument("--users", type=int, default=5000)
    parser.add_argument("--items", type=int, default=2000)
    parser.add_argument("--events", type=int, default=300_000)
    parser.add_argument("--epochs", type=int, default=4, help="per fit; the first is not counted (reader start-up)")
    parser.add_argument("--processes", default="1,2", help="comma-separated process counts")
    parser.add_argument("--threads-per-process", type=int, default=1,
                        help="torch threads per training process (0: as the night, the cores shared out)")
    parser.add_argument("--conf", action="append", default=[], help="extra config YAML (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value config override")
    parser.add_argument("--work", default=None, help="warehouse and scratch folder (default: a temporary one)")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    if args.epochs < 2:
        parser.error("--epochs must be at least 2: the first epoch is not counted")
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    load_at_start = os.getloadavg()

    from recsys_spark import io
    from recsys_spark.config import load_config
    from recsys_spark.models import registry
    from recsys_spark.schemas import SPLIT
    from recsys_spark.session import build_spark

    models = registry.names() if args.models == "all" else [m.strip() for m in args.models.split(",") if m.strip()]
    for m in models:  # an unknown name fails before any Spark work
        try:
            registry.get(m)
        except registry.UnknownModel as exc:
            parser.error(str(exc))
    procs = [int(p) for p in args.processes.split(",")]
    work = Path(args.work or tempfile.mkdtemp(prefix="bench-throughput-"))
    wh = work / "wh"
    sets = [f"synthetic.num_users={args.users}", f"synthetic.num_items={args.items}",
            f"synthetic.num_events={args.events}", f"dataset.source.path={work / 'raw'}",
            f"neural.cache_dir={work / 'petastorm'}", f"neural.checkpoint_dir={work / 'checkpoints'}",
            "spark.extra={spark.ui.enabled: 'false'}",
            # The benchmark's thread count over the night's (see the docstring); 0 keeps the night's.
            f"neural.threads_per_process={args.threads_per_process}", *args.overrides]
    argv = ["--dataset", "synthetic", "--warehouse", str(wh)] + [a for f in args.conf for a in ("--conf", f)]
    argv += [a for s in sets for a in ("--set", s)]
    cfg = load_config(files=args.conf, dataset="synthetic", overrides=[*sets, f"warehouse={wh}"])
    spark = build_spark(cfg, "bench_throughput")

    started = time.perf_counter()
    build_warehouse(argv)
    warehouse_s = time.perf_counter() - started
    split_rows = io.read_table(spark, str(wh), SPLIT).cache()
    n_users, n_items = io.catalog_sizes(spark, str(wh))

    results = []
    for name in models:
        for n in procs:
            model_cfg = load_config(files=args.conf, dataset="synthetic",
                                    overrides=[*sets, f"warehouse={wh}", f"neural.num_processes={n}"])
            r = measure(spark, model_cfg.for_neural_model(name), split_rows, name,
                        n_users=n_users, n_items=n_items, epochs=args.epochs)
            print(f"{name} x{n}: {r['samples_per_s_per_process']:,.0f} samples/s per process (a sample: "
                  f"{r['sample']}), fit {r['fit_wall_s']:.0f} s", flush=True)
            results.append(r)
    split_rows.unpersist()

    text = table(results)
    print(text)
    import torch

    meta = {"models": models, "processes": procs, "users": args.users, "items": args.items, "events": args.events,
            "n_users": n_users, "n_items": n_items, "epochs": args.epochs,
            "threads_per_process": args.threads_per_process or "cores shared out", "conf": args.conf,
            "overrides": args.overrides, "warehouse_seconds": warehouse_s, "cpus": os.cpu_count(),
            "load_average_at_start": load_at_start, "load_average_at_end": os.getloadavg(),
            "python": platform.python_version(), "torch": torch.__version__, "samples": SAMPLE,
            "results": results, "table": text}
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"throughput_{args.events}.json"
    path.write_text(json.dumps(meta, indent=2, default=str) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    from recsys_spark.session import run_job

    run_job(main)  # the barrier stage leaves a JVM thread: stop Spark and end the JVM (session.run_job)
