#!/usr/bin/env python
"""LightGCN's graph memory at 1M and 10M edges: the budget against what is really held.

For each size, a child process (so that its peak resident memory is its own)
builds the normalised adjacency (CSR) from random distinct (user, item) pairs,
then runs one training step (propagation forward and backward, BPR loss on a
batch of 1024, an Adam step) with 64-dim embeddings and 3 layers. Reported:
the adjacency's tensors' bytes, the budget that
``check_training_memory`` adds for the graph
(:func:`recsys_spark.memory.graph_training_bytes`), the child's peak RSS over
its RSS before the graph (the graph, the step's layers and gradients, the
build's temporaries, and the parameters with Adam's moments), and the seconds
to build the graph and to take one step (on this machine, under its load at
the time).

    .venv/bin/python scripts/bench_lightgcn_memory.py            # 1M and 10M edges
    .venv/bin/python scripts/bench_lightgcn_memory.py --edges 1000000

Prints a Markdown table and writes benchmarks/results/lightgcn_memory.json.
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

# Catalog shapes of the sizes (MovieLens-1M-like and -10M-like: users, items).
SHAPES = {1_000_000: (6_000, 4_000), 10_000_000: (70_000, 10_000)}
DIM, LAYERS, BATCH = 64, 3, 1024


def _rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * resource.getpagesize() / 2**20


def _measure(n_edges: int, out) -> None:
    import numpy as np
    import torch

    from recsys_spark.memory import graph_training_bytes
    from recsys_spark.models.base import TrainContext
    from recsys_spark.models.lightgcn import LightGCN

    torch.set_num_threads(1)
    n_users, n_items = SHAPES.get(n_edges, (max(1, n_edges // 150), max(1, n_edges // 1000)))
    rng = np.random.default_rng(0)
    key = np.unique(rng.integers(0, n_users * n_items, size=int(n_edges * 1.05), dtype=np.int64))[:n_edges]
    rng.shuffle(key)
    users, items = (key // n_items).astype(np.int32), (key % n_items).astype(np.int32)
    del key
    # Warm up the libraries (the first sparse product, autograd, Adam) so that the peak over
    # the start is what the graph and the step hold, not what torch loads once.
    warm = LightGCN.build(n_users=3, n_items=3, params={"embedding_dim": 2}, graph=(np.array([0, 1]), np.array([1, 2])))
    warm_opt = torch.optim.Adam(warm.parameters())
    warm.loss({"user_index": torch.tensor([0]), "item_index": torch.tensor([1])},
              TrainContext(n_items=3, sample_negatives=lambda n: torch.zeros(n, dtype=torch.long))).backward()
    warm_opt.step()
    del warm, warm_opt
    before = _rss_mb()
    started = time.perf_counter()
    torch.manual_seed(0)
    model = LightGCN.build(n_users=n_users, n_items=n_items, params={"embedding_dim": DIM, "layers": LAYERS},
                           graph=(users, items))
    build_s = time.perf_counter() - started
    adj = model.adjacency
    adjacency_bytes = sum(t.numel() * t.element_size() for t in (adj.crow_indices(), adj.col_indices(), adj.values()))
    opt = torch.optim.Adam(model.parameters(), lr=0.001)
    pick = torch.from_numpy(rng.integers(0, len(users), size=BATCH))
    batch = {"user_index": torch.from_numpy(users[pick.numpy()]).long(),
             "item_index": torch.from_numpy(items[pick.numpy()]).long()}
    ctx = TrainContext(n_items=n_items, sample_negatives=lambda n: torch.randint(0, n_items, (n,)),
                       negatives_per_positive=1)
    started = time.perf_counter()
    loss = model.loss(batch, ctx)
    opt.zero_grad()
    loss.backward()
    opt.step()
    step_s = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB -> MiB (Linux)
    out.put({
        "edges": n_edges, "users": n_users, "items": n_items, "dim": DIM, "layers": LAYERS,
        "adjacency_mib": adjacency_bytes / 2**20,
        "budget_mib": graph_training_bytes(n_edges=n_edges, n_nodes=n_users + n_items, dim=DIM,
                                           layers=LAYERS) / 2**20,
        "parameters_mib": sum(p.numel() * 4 for p in model.parameters()) / 2**20,
        "peak_over_start_mib": peak - before, "build_seconds": build_s, "step_seconds": step_s,
    })


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--edges", type=int, action="append", help="edge counts (default: 1M and 10M)")
    args = parser.parse_args(argv)
    rows = []
    ctx = mp.get_context("spawn")
    for n in args.edges or sorted(SHAPES):
        q = ctx.Queue()
        p = ctx.Process(target=_measure, args=(n, q))
        p.start()
        rows.append(q.get())
        p.join()
    print("| edges | users | items | adjacency (MiB) | budget for the graph (MiB) | parameters (MiB) | "
          "peak RSS over start (MiB) | build (s) | one step (s) |")
    print("|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['edges']:,} | {r['users']:,} | {r['items']:,} | {r['adjacency_mib']:.0f} | {r['budget_mib']:.0f} "
              f"| {r['parameters_mib']:.0f} | {r['peak_over_start_mib']:.0f} | {r['build_seconds']:.1f} "
              f"| {r['step_seconds']:.2f} |")
    out = REPO / "benchmarks" / "results" / "lightgcn_memory.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(rows, indent=2))
    print(f"wrote {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
