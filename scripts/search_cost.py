#!/usr/bin/env python
"""What each model's settings search cost and what it bought, read from a warehouse after a night
(issue 14: "the search's time cost per model against the quality it buys").

For every model whose metadata records a search (the neural models' Optuna search, ALS's grid,
EASE's lambda grid): the trials run and pruned, the search's seconds, the validation metric the search
ranks by (evaluation.primary_metric) for the configured settings (trial 0 of a neural search; ALS and EASE have no configured
point, so their first grid point) and for the chosen ones, the gain, and the chosen model's test
NDCG@10 from the night's comparison. Prints a table and writes it as JSON.

    .venv/bin/python scripts/search_cost.py --warehouse warehouse/demo --out benchmarks/results/search_cost.json
"""
from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path


def newest(path: Path, pattern: str) -> Path | None:
    found = sorted(path.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def test_metrics(wh: Path) -> tuple[str | None, dict[str, float]]:
    """(the run date, {model: test NDCG@10}) from the newest comparison.csv."""
    comparison = newest(wh / "metrics", "run_date=*/comparison.csv")
    if comparison is None:
        return None, {}
    with open(comparison, newline="") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        return comparison.parent.name, {}
    metric = "ndcg@10" if "ndcg@10" in rows[0] else next((c for c in rows[0] if c.startswith("ndcg@")), None)
    return comparison.parent.name.split("=", 1)[1], {r["model"]: float(r[metric]) for r in rows if r.get(metric)}


def search_row(model: str, meta: dict) -> dict | None:
    search = meta.get("search")
    if not search or not search.get("trials"):
        return None
    trials = search["trials"]
    seconds = search.get("seconds", meta.get("search_seconds"))
    configured = trials[0].get("best_metric")
    chosen = max((t["best_metric"] for t in trials if not t.get("pruned") and t.get("best_metric") is not None),
                 default=None)
    return {"model": model, "trials": len(trials), "pruned": sum(bool(t.get("pruned")) for t in trials),
            "search_seconds": seconds, "validation_first": configured, "validation_chosen": chosen,
            "gain": None if configured is None or chosen is None else chosen - configured,
            "chosen": search.get("chosen")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--warehouse", required=True)
    parser.add_argument("--out", default=None, help="write the rows as JSON here")
    args = parser.parse_args()
    wh = Path(args.warehouse)
    run_date, tests = test_metrics(wh)
    rows = []
    for meta_file in sorted((wh / "models").glob("*/metadata.json")):
        row = search_row(meta_file.parent.name, json.loads(meta_file.read_text()))
        if row:
            rows.append({**row, "test": tests.get(row["model"])})
    if not rows:
        raise SystemExit(f"no model in {wh / 'models'} records a search")

    def fmt(v, spec=".4f"):
        return "" if v is None else format(v, spec)

    print(f"| model | trials (pruned) | search s | validation, first trial | validation, chosen | gain | "
          f"test ({run_date}) |")
    print("|---|---|---|---|---|---|---|")
    for r in sorted(rows, key=lambda r: -(r["test"] or 0)):
        print(f"| {r['model']} | {r['trials']} ({r['pruned']}) | {fmt(r['search_seconds'], '.0f')} | "
              f"{fmt(r['validation_first'])} | {fmt(r['validation_chosen'])} | {fmt(r['gain'], '+.4f')} | "
              f"{fmt(r['test'])} |")
    if args.out:
        Path(args.out).parent.mkdir(parents=True, exist_ok=True)
        Path(args.out).write_text(json.dumps({"warehouse": str(wh), "run_date": run_date, "models": rows}, indent=2,
                                             default=str))
        print(f"\nwritten: {args.out}")


if __name__ == "__main__":
    main()
