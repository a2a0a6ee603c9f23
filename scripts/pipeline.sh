#!/usr/bin/env bash
# The nightly pipeline on an existing event log: clean -> tables -> split ->
# baselines + ALS -> every registered neural model -> evaluate -> publish
# recommendations. Each stage is one spark-submit (scripts/submit.sh: the local
# cluster when it runs, else SPARK_MASTER or local[2]); the first failing stage
# stops the run with its log's tail. Arguments go to every job, e.g.
#
#   scripts/pipeline.sh --dataset movielens-100k --warehouse warehouse/ml-100k --set split.protocol=random
#
# RECSYS_STAGES="split train_als evaluate" runs only those stages (in pipeline order).
# RECSYS_GENERATE=1 first writes the synthetic log (jobs/generate_events.py; the demo).
# Logs: run/pipeline-logs/<stage>.log (RECSYS_LOG_DIR to change).
set -euo pipefail
cd "$(dirname "$0")/.."

logs=${RECSYS_LOG_DIR:-run/pipeline-logs}
mkdir -p "$logs"
wanted=" ${RECSYS_STAGES:-} "

stage() {  # stage NAME JOB [job args]: run one job, keep its log, stop on failure
  local name=$1 job=$2; shift 2
  if [[ "$wanted" != "  " && "$wanted" != *" ${name%% *} "* ]]; then return 0; fi
  local t0=$SECONDS
  printf '%-34s' "$name"
  if ./scripts/submit.sh "$job" "$@" >"$logs/${name// /_}.log" 2>&1; then
    echo "ok ($((SECONDS - t0)) s)"
  else
    echo "FAILED, see $logs/${name// /_}.log"; tail -20 "$logs/${name// /_}.log"; exit 1
  fi
}

[[ ${RECSYS_GENERATE:-0} == 1 ]] && stage generate_events jobs/generate_events.py "$@"
stage clean_events    jobs/clean_events.py "$@"
stage build_tables    jobs/build_tables.py "$@"
stage split           jobs/split.py "$@"
stage train_baselines jobs/train_baselines.py "$@"
stage train_als       jobs/train_als.py "$@"
for model in $(.venv/bin/python -c 'from recsys_spark.models import registry; print(" ".join(registry.names()))'); do
  stage "train_neural $model" jobs/train_neural.py --model "$model" "$@"
done
stage evaluate        jobs/evaluate.py "$@"
stage recommend       jobs/recommend.py "$@"
