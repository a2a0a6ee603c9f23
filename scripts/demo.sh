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
logs=run/demo-logs
mkdir -p "$logs"
stage() {  # stage NAME JOB [job args]: run one job, keep its log, stop on failure
  local name=$1 job=$2; shift 2
  local t0=$SECONDS
  printf '%-34s' "$name"
  if ./scripts/submit.sh "$job" "${args[@]}" "$@" >"$logs/$name.log" 2>&1; then
    echo "ok ($((SECONDS - t0)) s)"
  else
    echo "FAILED, see $logs/$name.log"; tail -20 "$logs/$name.log"; exit 1
  fi
}

stage generate_events   jobs/generate_events.py
stage clean_events      jobs/clean_events.py
stage build_tables      jobs/build_tables.py
stage split             jobs/split.py
stage train_baselines   jobs/train_baselines.py
stage train_als         jobs/train_als.py
for model in $(.venv/bin/python -c 'from recsys_spark.models import registry; print(" ".join(registry.names()))'); do
  stage "train_neural $model" jobs/train_neural.py --model "$model"
done
stage evaluate          jobs/evaluate.py
stage recommend         jobs/recommend.py

.venv/bin/python scripts/demo_summary.py "${args[@]}"
