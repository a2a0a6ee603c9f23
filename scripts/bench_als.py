#!/usr/bin/env python
"""Side by side: our tuned Spark ALS against the `implicit` library's ALS.

Same split, same blocked scorer, same metric code, so the only difference is
the factorisation. Both are tuned on the validation fold over the same grid
(their regularisations differ in scale: Spark's ALS-WR multiplies regParam by
each user's and item's interaction count), refitted on train + validation, and
scored on test; the fit time of the final refit is compared as a ratio in the
same run. EASE and popularity from the same run are reported for context.

    .venv/bin/python scripts/bench_als.py --dataset movielens-100k --protocol random
    .venv/bin/python scripts/bench_als.py --dataset synthetic --protocol temporal

Prints a Markdown table and writes benchmarks/results/als_<dataset>.json.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))


def job(name):
    from recsys_spark.pipeline import load_job

    return load_job(REPO / "jobs", name)


def implicit_fit(train_pdf, n_users, n_items, *, factors, regularization, alpha, iterations, seed):
    import implicit
    import scipy.sparse as sp

    user_items = sp.csr_matrix(
        (train_pdf["weight"].to_numpy("float32"), (train_pdf["user_index"], train_pdf["item_index"])),
        shape=(n_users, n_items),
    )
    model = implicit.als.AlternatingLeastSquares(
        factors=factors, regularization=regularization, alpha=alpha, iterations=iterations,
        random_state=seed, calculate_training_loss=False,
    )
    started = time.perf_counter()
    model.fit(user_items, show_progress=False)
    return model, time.perf_counter() - started


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dataset", default="movielens-100k")
    parser.add_argument("--protocol", default="random", choices=["random", "temporal", "leave_last_n"])
    parser.add_argument("--warehouse", default=None)
    parser.add_argument("--events", type=int, default=300_000, help="synthetic only: number of events")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    # implicit and Spark both get the machine's 2 cores.
    os.environ.setdefault("OPENBLAS_NUM_THREADS", "2")

    import numpy as np

    from recsys_spark import io, split
    from recsys_spark.evaluate import folds
    from recsys_spark.config import load_config
    from recsys_spark.models import artifacts
    from recsys_spark.schemas import ITEM_INDEX, SPLIT, USER_INDEX
    from recsys_spark.scoring.scorers import DotProductScorer
    from recsys_spark.session import build_spark

    wh = args.warehouse or f"/tmp/recsys-bench-als-{args.dataset}"
    overrides = [f"warehouse={wh}", f"split.protocol={args.protocol}"]
    if args.dataset == "synthetic":
        data = f"{wh}/raw"
        overrides += [f"dataset.source.path={data}", f"synthetic.num_events={args.events}"]
    common = ["--dataset", args.dataset] + [arg for o in overrides for arg in ("--set", o)]
    cfg = load_config(dataset=args.dataset, overrides=overrides)
    spark = build_spark(cfg, "bench_als")

    stages = ["clean_events", "build_tables", "split", "train_baselines", "train_ease", "train_als"]
    if args.dataset == "synthetic":
        stages.insert(0, "generate_events")
    timings = {}
    for stage in stages:
        started = time.perf_counter()
        job(stage).main(common)
        timings[stage] = time.perf_counter() - started

    split_rows = io.read_table(spark, wh, SPLIT).cache()
    n_users, n_items = io.catalog_sizes(spark, wh)
    als_meta = artifacts.load_metadata(spark, wh, "als")
    best = als_meta["params"]
    primary = cfg.evaluation.primary_metric

    def implicit_scores(train_pdf, fold, params):
        model, seconds = implicit_fit(train_pdf, n_users, n_items, seed=cfg.als.seed, **params)
        user_f = np.asarray(model.user_factors, dtype=np.float32)
        item_f = np.asarray(model.item_factors, dtype=np.float32)
        users = folds.fold_users(split_rows, fold)
        factors = spark.createDataFrame(
            [(i, user_f[i].tolist()) for i in range(n_users)], f"{USER_INDEX} int, factors array<float>")
        scorer = DotProductScorer(spark, item_f, np.ones(n_items, dtype=bool))
        recs = folds.score_fold(users.join(factors, USER_INDEX), scorer, cfg)
        return folds.fold_metrics(split_rows, recs, fold, n_items, cfg), seconds

    # implicit: the same grid over its own regularisation scale, chosen on validation.
    train_pdf = split.training_rows(split_rows, final=False).select(USER_INDEX, ITEM_INDEX, "weight").toPandas()
    grid = [
        {"factors": r, "regularization": reg, "alpha": a, "iterations": it}
        for r in cfg.als.ranks for reg in (0.01, 0.1, 1.0, 10.0) for a in cfg.als.alphas for it in cfg.als.max_iters
    ]
    search = []
    for params in grid:
        metrics, _ = implicit_scores(train_pdf, folds.SELECTION_FOLD, params)
        search.append((metrics[primary], params))
        print(f"implicit {params} validation {primary}={metrics[primary]:.4f}", flush=True)
    implicit_best = max(search, key=lambda s: s[0])[1]
    final_pdf = split.training_rows(split_rows, final=True).select(USER_INDEX, ITEM_INDEX, "weight").toPandas()
    implicit_test, implicit_seconds = implicit_scores(final_pdf, folds.FINAL_FOLD, implicit_best)

    # Spark ALS refit timed again here, side by side with implicit's refit.
    from recsys_spark.models import als

    final_train = split.training_rows(split_rows, final=True).cache()
    final_train.count()
    started = time.perf_counter()
    als.fit(final_train, als.AlsParams(best["rank"], best["reg_param"], best["alpha"], best["max_iter"]),
            implicit_prefs=True, seed=cfg.als.seed).itemFactors.count()
    spark_seconds = time.perf_counter() - started

    test = {}
    for model in ("popularity", "popularity_recent", "ease", "als"):
        recs = folds.read_eval_recs(spark, wh, model, folds.FINAL_FOLD)
        test[model] = folds.fold_metrics(split_rows, recs, folds.FINAL_FOLD, n_items, cfg)
    test["implicit_als"] = implicit_test

    rows = [(name, m["ndcg_at_10"], m["recall_at_20"], m["map_at_10"], m["coverage_at_10"]) for name, m in test.items()]
    rows.sort(key=lambda r: -r[1])
    print(f"\n### {args.dataset}, {args.protocol} split, test fold ({int(test['als']['users'])} users)\n")
    print("| model | NDCG@10 | Recall@20 | MAP@10 | Coverage@10 |\n|---|---|---|---|---|")
    for r in rows:
        print(f"| {r[0]} | {r[1]:.4f} | {r[2]:.4f} | {r[3]:.4f} | {r[4]:.4f} |")
    ratio = test["als"]["ndcg_at_10"] / test["implicit_als"]["ndcg_at_10"]
    print(f"\nSpark ALS NDCG@10 / implicit ALS NDCG@10 = {ratio:.3f} (target >= 0.90)")
    print(f"final refit: Spark ALS {spark_seconds:.1f}s, implicit {implicit_seconds:.1f}s, "
          f"ratio {spark_seconds / implicit_seconds:.1f}x")

    result = {
        "dataset": args.dataset, "protocol": args.protocol, "test_metrics": test,
        "spark_als_params": best, "implicit_params": implicit_best,
        "ndcg10_ratio_spark_over_implicit": ratio,
        "fit_seconds": {"spark_als": spark_seconds, "implicit_als": implicit_seconds},
        "fit_time_ratio_spark_over_implicit": spark_seconds / implicit_seconds,
        "stage_seconds": timings,
    }
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"als_{args.dataset}_{args.protocol}.json"
    path.write_text(json.dumps(result, indent=2, default=str))
    print(f"results: {path}")


if __name__ == "__main__":
    main()
