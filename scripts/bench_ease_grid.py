#!/usr/bin/env python
"""EASE's lambda search: the cost of a grid of lambdas, three ways, on the driver's NumPy alone.

* ``gram_per_lambda``: what a search by repeated fits would do, the Gram matrix
  X^T X rebuilt from the pairs for every lambda, then the in-place Cholesky inverse;
* ``gram_once``: the job's way (``baselines.ease_grid``): the Gram matrix built
  once and kept, each lambda inverting a copy of it (two items x items matrices);
* ``eigh_once``: one eigendecomposition G = V diag(w) V^T, then per lambda
  P = V diag(1 / (w + lambda)) V^T by one matrix product (three such matrices).

Each method's B is checked against ``gram_once``'s (max abs difference), and
its peak of NumPy allocations (tracemalloc) is reported. Catalogs: MovieLens
100K's ratings (``--ml100k``, all 100,000 pairs) and power-law synthetic ones
of ``--items`` items with ~40 pairs per user and ``--users-per-item`` users an
item (2.5: the demo's 5,000 users over 2,000 items).

    .venv/bin/python scripts/bench_ease_grid.py --ml100k ../shared/data/ml-100k/ratings.csv --items 2000 4000

Prints a Markdown table and writes benchmarks/results/ease_grid.json.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
import tracemalloc
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_spark.config import EaseConf  # noqa: E402
from recsys_spark.models import baselines  # noqa: E402


def synthetic_pairs(n_items: int, users_per_item: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    n_users = int(n_items * users_per_item)
    item_p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    item_p /= item_p.sum()
    activity = np.minimum(n_items // 2, np.maximum(1, (rng.pareto(1.5, n_users) + 1) * 13).astype(int))
    users = np.repeat(np.arange(n_users), activity).astype(np.int32)
    items = rng.choice(n_items, size=len(users), p=item_p).astype(np.int32)
    return users, items


def ml100k_pairs(path: str) -> tuple[np.ndarray, np.ndarray, int]:
    import pandas as pd

    df = pd.read_csv(path)
    users = df["user_id"].astype("category").cat.codes.to_numpy(np.int32)
    items = df["item_id"].astype("category").cat.codes.to_numpy(np.int32)
    return users, items, int(items.max()) + 1


def b_from_p(p: np.ndarray) -> np.ndarray:
    diag = p.diagonal().copy()
    p /= -diag
    p[np.diag_indices(len(diag))] = 0.0
    return p


def gram_per_lambda(users, items, n_items, grid):
    for l2 in grid:
        yield l2, baselines.ease_from_gram(baselines.gram_matrix(users, items, n_items), l2)


def gram_once(users, items, n_items, grid):
    gram = baselines.gram_matrix(users, items, n_items)
    work = np.empty_like(gram)
    for l2 in grid:
        np.copyto(work, gram)
        yield l2, baselines.ease_from_gram(work, l2)


def eigh_once(users, items, n_items, grid):
    import scipy.linalg

    w, v = scipy.linalg.eigh(baselines.gram_matrix(users, items, n_items), overwrite_a=True, check_finite=False,
                             driver="evd")
    for l2 in grid:
        s = v * (1.0 / np.sqrt(np.maximum(w, 0.0) + l2)).astype(np.float32)
        yield l2, b_from_p(s @ s.T)


METHODS = {"gram_per_lambda": gram_per_lambda, "gram_once": gram_once, "eigh_once": eigh_once}


def bench(name: str, users, items, n_items: int, grid, reference: dict | None) -> tuple[dict, dict]:
    tracemalloc.start()
    started = time.perf_counter()
    diffs, keep = [], {}
    for l2, b in METHODS[name](users, items, n_items, grid):
        if reference is None:
            keep[l2] = b.copy()
        else:
            diffs.append(float(np.abs(b - reference[l2]).max()))
    seconds = time.perf_counter() - started
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    copies = 4 * n_items * n_items * (len(grid) if reference is None else 0)  # the kept references are not the method's
    return ({"method": name, "seconds": round(seconds, 2), "peak_mib": round((peak - copies) / 2**20, 1),
             "max_abs_diff_vs_gram_once": max(diffs) if diffs else 0.0}, keep)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ml100k", default=None, help="MovieLens 100K's ratings.csv")
    parser.add_argument("--items", type=int, nargs="*", default=[2000])
    parser.add_argument("--users-per-item", type=float, default=2.5)
    parser.add_argument("--grid", type=float, nargs="+", default=EaseConf().l2_grid)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    catalogs = []
    if args.ml100k:
        catalogs.append(("ml-100k", *ml100k_pairs(args.ml100k)))
    catalogs += [(f"synthetic {n}", *synthetic_pairs(n, args.users_per_item, args.seed), n) for n in args.items]
    results = []
    for label, users, items, n_items in catalogs:
        reference = None
        order = ["gram_once"] + [m for m in args.methods if m != "gram_once"]
        for method in order:
            result, keep = bench(method, users, items, n_items, args.grid, reference)
            reference = reference or keep
            result.update(catalog=label, items=n_items, pairs=len(users), lambdas=len(args.grid))
            results.append(result)
            print(json.dumps(result), flush=True)
    print(f"\nlambdas: {args.grid}\n")
    print("| catalog | items | pairs | method | seconds | NumPy peak MiB | max abs diff of B vs gram_once |")
    print("|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['catalog']} | {r['items']} | {r['pairs']} | {r['method']} | {r['seconds']} | {r['peak_mib']} | "
              f"{r['max_abs_diff_vs_gram_once']:.1e} |")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    (out / "ease_grid.json").write_text(json.dumps({"results": results, "args": vars(args)}, indent=2))


if __name__ == "__main__":
    main()
