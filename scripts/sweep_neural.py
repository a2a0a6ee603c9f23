#!/usr/bin/env python
"""Hyperparameter sweep for a neural model, in one process, on a small warehouse's split.

What the docs' tuning numbers come from. For every setting: train on the train
fold with early stopping on validation (the trainer's metric code), refit on
train + validation for the best epoch count, score the test fold; the same
protocol as ``jobs/train_neural.py`` on the same examples (Spark builds them with
the job's transforms, ``recsys_spark.train.data``), but collected to the driver
instead of materialised with Petastorm, and trained in this process without DDP
(``recsys_spark.train.loop`` fed by in-memory tensors, this machine's torch
threads), so a setting costs seconds to a minute on ml-100k. For small data only.
One process takes the batch that the job spreads over ``neural.num_processes``:
to compare with the job, give the sweep ``batch_size`` = processes x the job's.

Each setting is JSON: ``model`` (registered name), ``params`` (model
hyperparameters over the config's ``neural.models.<model>``) and ``neural``
(trainer settings over the config's ``neural`` for that model: epochs,
patience, batch_size, learning_rate, weight_decay, negatives_per_positive,
negative_sampling, history_length, seed). ``{"model": "neumf"}`` alone is the
config's current setting.

    scripts/pipeline.sh --dataset movielens-100k --warehouse warehouse/ml-100k \\
        --set split.protocol=random      # (RECSYS_STAGES="clean_events build_tables split" is enough)
    .venv/bin/python scripts/sweep_neural.py --dataset movielens-100k --warehouse warehouse/ml-100k \\
        '{"model": "neumf"}' '{"model": "neumf", "neural": {"negatives_per_positive": 8}}'

Prints a Markdown table and writes benchmarks/results/sweep_<warehouse name>.json.
"""
from __future__ import annotations

import argparse
import functools
import json
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

TRAINER_KEYS = ("epochs", "patience", "batch_size", "learning_rate", "weight_decay", "negatives_per_positive",
                "negative_sampling", "history_length", "seed")


@functools.lru_cache(maxsize=8)
def fold_examples(split_rows, cls, *, final: bool, n_items: int, history_length: int):
    """The job's training examples for a fold set as tensors, and the item counts.

    ``data.training_examples`` of ``split.training_rows``, as ``train_neural``
    builds them, collected instead of materialised with Petastorm; sorted by key,
    so the loader's seeded permutation sees the same order every run. Cached:
    a sweep's settings share them (nothing downstream modifies them).
    """
    import numpy as np
    import torch

    from recsys_spark import split
    from recsys_spark.schemas import ITEM_INDEX, USER_INDEX, WEIGHT
    from recsys_spark.train import data

    rows = split.training_rows(split_rows, final=final)
    examples = data.training_examples(rows, input_kind=cls.input_kind, needs_history=cls.needs_history,
                                      n_items=n_items, history_length=history_length).toPandas()
    key = [USER_INDEX] if cls.input_kind == data.HISTORIES else [USER_INDEX, ITEM_INDEX]
    examples = examples.sort_values(key, kind="stable").reset_index(drop=True)
    tensors = {}
    for column in examples.columns:
        values = examples[column].to_numpy()
        if column == "history":
            tensors[column] = torch.as_tensor(np.stack(values).astype(np.int64))
        else:
            tensors[column] = torch.as_tensor(values.astype(np.float32 if column == WEIGHT else np.int64))
    return tensors, data.item_counts(rows, n_items)


@functools.lru_cache(maxsize=8)
def held_out_set(split_rows, fold: str, *, final: bool, n_items: int, history_length: int):
    """A fold's warm users as the trainer's ValidationSet (``data.validation_examples``, as the job builds it)."""
    from recsys_spark import split
    from recsys_spark.train import data
    from recsys_spark.train.local_metrics import ValidationSet

    rows = split.training_rows(split_rows, final=final)
    held = split.fold(split_rows, fold, segment="warm")
    users, labels = data.validation_examples(rows, held, n_items=n_items, history_length=history_length)
    users, labels = users.toPandas(), labels.toPandas()
    return ValidationSet.from_tables({c: users[c].to_numpy() for c in users.columns},
                                     {c: labels[c].to_numpy() for c in labels.columns})


def run_setting(setting: dict, cfg, split_rows, *, n_users: int, n_items: int, features) -> dict:
    """Select on validation, refit on train + validation, score test; returns the setting's numbers."""
    from dataclasses import replace

    import torch

    from recsys_spark.evaluate import folds
    from recsys_spark.models import registry
    from recsys_spark.train import local_metrics, loop, neural

    name = setting["model"]
    cls = registry.get(name)
    unknown = set(setting.get("neural", {})) - set(TRAINER_KEYS)
    if unknown:
        raise SystemExit(f"sweep_neural: unknown trainer setting(s) {sorted(unknown)}; known: {TRAINER_KEYS}")
    nc = cfg.for_neural_model(name).neural
    nc = replace(nc, **setting.get("neural", {}))
    params = {**nc.models.get(name, {}), **setting.get("params", {})}
    build = {"n_users": n_users, "n_items": n_items, "params": params}
    if neural.takes_item_features(cls) and features is not None:
        build["item_features"] = features
    metric = cfg.evaluation.primary_metric
    out: dict = {}
    for final in (False, True):
        tensors, counts = fold_examples(split_rows, cls, final=final, n_items=n_items,
                                        history_length=nc.history_length)
        validation = None if final else held_out_set(split_rows, folds.SELECTION_FOLD, final=False,
                                                     n_items=n_items, history_length=nc.history_length)
        settings = loop.TrainSettings(
            epochs=out["best_epoch"] + 1 if final else nc.epochs, patience=nc.patience,
            learning_rate=nc.learning_rate, weight_decay=nc.weight_decay, negative_sampling=nc.negative_sampling,
            negatives_per_positive=nc.negatives_per_positive, seed=nc.seed, mixed_precision=False,
            metric=metric, early_stopping=not final, schedule_epochs=nc.epochs if final else None)
        examples = len(next(iter(tensors.values())))
        torch.manual_seed(nc.seed)
        model = cls.build(**build)
        started = time.perf_counter()
        result = loop.train(model, loop.tensor_loader_factory(tensors, batch_size=nc.batch_size, seed=nc.seed),
                            settings, item_counts=counts, validation=validation, device="cpu", log=lambda s: None,
                            steps_per_epoch_hint=-(-examples // nc.batch_size))
        out["seconds"] = out.get("seconds", 0.0) + time.perf_counter() - started
        if not final:
            out.update(best_epoch=result["best_epoch"], validation=result["best_metric"])
        else:
            model.load_state_dict(loop.state_dict_from_bytes(result["state_dict"]))
            test = held_out_set(split_rows, folds.FINAL_FOLD, final=True, n_items=n_items,
                                history_length=nc.history_length)
            out["test"] = local_metrics.evaluate_model(model, test, metric=metric, device="cpu")
    return {"setting": setting, "metric": metric, "best_epoch": out["best_epoch"] + 1,
            "validation": out["validation"], "test": out["test"], "seconds": out["seconds"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("settings", nargs="+", help="one JSON object per setting")
    parser.add_argument("--dataset", default=None, help="conf/datasets/<name>.yaml (as the jobs take it)")
    parser.add_argument("--warehouse", required=True, help="a warehouse with the split and index tables")
    parser.add_argument("--conf", action="append", default=[], help="extra config files")
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results"))
    args = parser.parse_args()
    settings = [json.loads(s) for s in args.settings]

    from recsys_spark import io
    from recsys_spark.config import load_config
    from recsys_spark.schemas import SPLIT
    from recsys_spark.session import build_spark
    from recsys_spark.train import neural

    cfg = load_config(args.conf, dataset=args.dataset, overrides=["spark.extra={spark.ui.enabled: 'false'}"])
    spark = build_spark(cfg, "sweep_neural")
    split_rows = io.read_table(spark, args.warehouse, SPLIT).cache()
    n_users, n_items = io.catalog_sizes(spark, args.warehouse)
    features = neural.item_features(spark, args.warehouse, n_items)

    results = []
    for setting in settings:
        r = run_setting(setting, cfg, split_rows, n_users=n_users, n_items=n_items, features=features)
        print(json.dumps(r), flush=True)
        results.append(r)
    spark.stop()

    metric = cfg.evaluation.primary_metric
    lines = [f"| model | params | trainer | best epoch | validation {metric} | test {metric} | seconds |",
             "|---|---|---|---|---|---|---|"]
    for r in results:
        s = r["setting"]
        lines.append(f"| {s['model']} | {json.dumps(s.get('params', {}))} | {json.dumps(s.get('neural', {}))} | "
                     f"{r['best_epoch']} | {r['validation']:.4f} | {r['test']:.4f} | {r['seconds']:.0f} |")
    table = "\n".join(lines)
    print(table)
    Path(args.out).mkdir(parents=True, exist_ok=True)
    path = Path(args.out) / f"sweep_{Path(args.warehouse).name}.json"
    path.write_text(json.dumps({"warehouse": args.warehouse, "dataset": args.dataset, "results": results,
                                "table": table}, indent=2) + "\n")
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
