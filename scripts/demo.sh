#!/usr/bin/env bash
# The whole pipeline end to end on the embedded synthetic data, on the local
# standalone cluster: generate -> clean -> tables -> split -> baselines + ALS
# -> neural models -> evaluate -> publish recommendations.
# Sizes: conf/demo.yaml. Extra arguments go to every job (e.g. --set key=value).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh

started_cluster=0
if ! ./scripts/cluster.sh status >/dev/null 2>&1; then
  ./scripts/cluster.sh start
  started_cluster=1
fi
cleanup() { [[ $started_cluster == 1 ]] && ./scripts/cluster.sh stop >/dev/null 2>&1 || true; }
trap cleanup EXIT

args=(--dataset synthetic --conf conf/demo.yaml "$@")
# --force: the demo shows every stage each time; a nightly run of the same date
# would skip what already succeeded (docs/operations.md, "Reruns").
RECSYS_GENERATE=1 RECSYS_LOG_DIR=run/demo-logs ./scripts/pipeline.sh --force "${args[@]}"

.venv/bin/python scripts/demo_summary.py "${args[@]}"
