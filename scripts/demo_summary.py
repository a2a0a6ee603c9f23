#!/usr/bin/env python
"""Print what the demo produced: paths, reconciliation counts, the model
comparison and a few published recommendations (read as a downstream
consumer would, with pandas/pyarrow, no Spark)."""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from recsys_spark.config import add_config_args, config_from_args  # noqa: E402


def newest(path: Path, pattern: str) -> Path | None:
    found = sorted(path.glob(pattern), key=lambda p: p.stat().st_mtime)
    return found[-1] if found else None


def main() -> None:
    parser = argparse.ArgumentParser()
    add_config_args(parser)
    cfg = config_from_args(parser.parse_args())
    wh = Path(cfg.warehouse).resolve()
    print(f"\n== recsys-spark demo: warehouse {wh}\n")

    clean = newest(wh / "reports" / "clean_events", "*.json")
    if clean:
        r = json.loads(clean.read_text())
        print("Clean (every input row is clean, a duplicate or quarantined):")
        print(f"  input {r['input_rows']:,} = clean {r['clean_rows']:,} + duplicates {r['duplicates']:,}"
              f" + quarantined {r['quarantined_rows']:,}   reconciles: {r['reconciles']}")
        for reason, n in sorted(r.get("quarantined_by_reason", {}).items()):
            print(f"    quarantine {reason:<22} {n:,}")

    comparison = newest(wh / "metrics", "run_date=*/comparison.md")
    if comparison:
        print(f"\nModels on the held-out test fold ({comparison}):\n")
        print(comparison.read_text())

    latest = wh / "recommendations" / "_latest.json"
    if latest.exists():
        import pandas as pd

        pointer = json.loads(latest.read_text())
        run_dir = wh / "recommendations" / f"run_date={pointer['run_date']}"
        recs = pd.read_parquet(run_dir)
        user = recs.loc[recs["source"] == "model", "user_id"].iloc[0] if (recs["source"] == "model").any() else recs["user_id"].iloc[0]
        print(f"Published recommendations: {run_dir}  ({len(recs):,} rows, {recs['user_id'].nunique():,} users)")
        print(f"Downstream readers: read {latest} for the newest run_date, then that directory.\n")
        print(f"Top 5 for user {user}:")
        cols = ["rank", "item_id", "score", "model", "source", "explanation"]
        print(recs.loc[recs["user_id"] == user].sort_values("rank")[cols].head(5).to_string(index=False))


if __name__ == "__main__":
    main()
