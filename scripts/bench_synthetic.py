#!/usr/bin/env python
"""Generator benchmark: the NumPy work of the synthetic log, with and without the planted chain.

Generates every block of a log (``generate_block``, the body of each Spark
task) in this one process, no Spark, so the time is the generator's own work
on one core. Side by side in one run, alternating, best of ``--repeats``:

* ``this tree`` at ``synthetic.sequential_share`` 0 (the chain step skipped:
  the same lines as a generator without it) and at each ``--shares`` value;
* with ``--baseline REF``, the generator module as it was at git ``REF``
  (loaded from ``git show REF:recsys_spark/ingest/synthetic.py``) on the same
  config: the "before" of a change to the generator.

Prints a table and writes ``benchmarks/results/synthetic.json``.

    .venv/bin/python scripts/bench_synthetic.py [--events 1000000] [--shares 0.5] [--baseline REF]
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from recsys_spark.config import load_config  # noqa: E402
from recsys_spark.ingest import synthetic  # noqa: E402


def load_module_at(ref: str):
    """The generator module as it was at git ``ref`` (imports the current package otherwise)."""
    source = subprocess.run(["git", "-C", str(REPO), "show", f"{ref}:recsys_spark/ingest/synthetic.py"],
                            check=True, capture_output=True, text=True).stdout
    path = Path(tempfile.mkdtemp()) / "synthetic_at_ref.py"
    path.write_text(source)
    spec = importlib.util.spec_from_file_location("synthetic_at_ref", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def time_log(module, conf) -> tuple[float, int]:
    """Seconds to generate every block of ``conf`` (plan included), and the lines made."""
    start = time.perf_counter()
    module._planted_model.cache_clear()
    model = module.planted_model(conf)
    lines = sum(len(module.generate_block(conf, b)) for b in range(model.num_user_blocks + conf.bot_users))
    return time.perf_counter() - start, lines


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=1_000_000)
    parser.add_argument("--shares", default="0.5", help="sequential_share values besides 0 (comma-separated)")
    parser.add_argument("--baseline", help="a git ref whose generator to time beside this tree's")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "results" / "synthetic.json"))
    args = parser.parse_args()

    shares = [0.0] + [float(s) for s in args.shares.split(",") if s]
    variants = []  # (label, module, share)
    if args.baseline:
        variants.append((f"at {args.baseline}", load_module_at(args.baseline), 0.0))
    variants += [("this tree", synthetic, share) for share in shares]
    best: dict[int, float] = {}
    lines: dict[int, int] = {}
    for _ in range(args.repeats):
        for k, (_, module, share) in enumerate(variants):
            conf = load_config(dataset="synthetic", overrides=[
                f"synthetic.num_events={args.events}", f"synthetic.sequential_share={share}"]).synthetic
            seconds, lines[k] = time_log(module, conf)
            best[k] = min(best.get(k, seconds), seconds)

    rows = [{"code": label, "sequential_share": share if label == "this tree" else None, "events": args.events,
             "lines": lines[k], "seconds": round(best[k], 2), "events_per_second": round(args.events / best[k])}
            for k, (label, _, share) in enumerate(variants)]
    print(f"{'code':<16} {'sequential_share':>16} {'events':>10} {'lines':>10} {'seconds':>8} {'events/s':>10}")
    for r in rows:
        share = "-" if r["sequential_share"] is None else r["sequential_share"]
        print(f"{r['code']:<16} {share:>16} {r['events']:>10} {r['lines']:>10} {r['seconds']:>8} "
              f"{r['events_per_second']:>10}")
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"repeats": args.repeats, "results": rows}, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
