#!/usr/bin/env bash
# The nightly pipeline on an existing event log: clean -> tables -> split ->
# popularity -> EASE, ALS, every registered neural model -> evaluate -> publish
# recommendations. Each stage is one spark-submit (scripts/submit.sh: the local
# cluster when it runs, else SPARK_MASTER or local[2]). Arguments go to every job, e.g.
#
#   scripts/pipeline.sh --dataset movielens-100k --warehouse warehouse/ml-100k --set split.protocol=random
#
# Model stages are independent: one that fails is recorded (reason and log in
# the run status) and the night goes on with the models that trained; evaluation
# and publishing see only those. Popularity is required: there is always
# something safe to serve. A failing data stage (clean, tables, split),
# popularity or publishing stops the run.
#
# Exit status (docs/operations.md, "Exit codes"):
#   0  every stage succeeded and recommendations were published
#   1  nothing was published (a required stage failed)
#   2  a usage or config error (a job said so with its own exit code 2); nothing published
#   3  recommendations were published, but some model (or the evaluation) failed
#
# RECSYS_STAGES="split train_als evaluate" runs only those stages (in pipeline order).
# RECSYS_MODELS="neumf two_tower" trains only those neural models (unset: every registered one; empty: none).
# RECSYS_GENERATE=1 first writes the synthetic log (jobs/generate_events.py; the demo).
# Logs: run/pipeline-logs/<stage>.log and the run's status, status.json (RECSYS_LOG_DIR to change).
set -uo pipefail
cd "$(dirname "$0")/.."

logs=${RECSYS_LOG_DIR:-run/pipeline-logs}
mkdir -p "$logs"
status_tsv="$logs/status.tsv"
: > "$status_tsv"
wanted=" ${RECSYS_STAGES:-} "
trained=()        # models trained in this run: what evaluate and recommend may use
failed_optional=0

write_status() {  # status.json from status.tsv, with the run's outcome
  .venv/bin/python - "$status_tsv" "$1" "$2" > "$logs/status.json" <<'PY'
import json, sys
path, outcome, code = sys.argv[1], sys.argv[2], int(sys.argv[3])
stages = []
for line in open(path, encoding="utf-8"):
    name, status, started, ended, log, reason = line.rstrip("\n").split("\t")
    stages.append({"stage": name, "status": status, "seconds": int(ended) - int(started),
                   "started_at": int(started), "ended_at": int(ended), "log": log, "reason": reason or None})
print(json.dumps({"outcome": outcome, "exit_code": code, "stages": stages}, indent=2))
PY
}

finish() {  # finish OUTCOME CODE: write the status, say it, exit
  write_status "$1" "$2"
  echo "pipeline: $1 (exit $2); status: $logs/status.json"
  exit "$2"
}

# The reason a job failed: the last exception or error line of its log, on one line.
failure_reason() {
  grep -E '^([A-Za-z_][A-Za-z0-9_.]*(Error|Exception|Refused|Failed)|config error|[a-z_]+\.py: |[a-z_]+: )' "$1" \
    | grep -v -E '^(WARNING|INFO|DEBUG)' | tail -1 | cut -c1-500 | tr '\t' ' '
}

last_rc=0
stage() {  # stage NAME JOB [job args]: run one job, keep its log and status; returns the job's code
  local name=$1 job=$2; shift 2
  last_rc=0
  if [[ "$wanted" != "  " && "$wanted" != *" ${name%% *} "* ]]; then return 0; fi
  local t0 t1 log="$logs/${name// /_}.log"
  t0=$(date +%s)
  printf '%-34s' "$name"
  ./scripts/submit.sh "$job" "$@" >"$log" 2>&1
  last_rc=$?
  t1=$(date +%s)
  if [[ $last_rc == 0 ]]; then
    echo "ok ($((t1 - t0)) s)"
    printf '%s\tok\t%d\t%d\t%s\t\n' "$name" "$t0" "$t1" "$log" >> "$status_tsv"
  else
    local reason
    reason=$(failure_reason "$log")
    echo "FAILED (exit $last_rc, $((t1 - t0)) s): ${reason:-see the log}; log: $log"
    printf '%s\tfailed\t%d\t%d\t%s\t%s\n' "$name" "$t0" "$t1" "$log" "exit $last_rc: $reason" >> "$status_tsv"
  fi
  return $last_rc
}

required() {  # required NAME JOB [args]: a failure ends the run, nothing published
  stage "$@" && return 0
  [[ $last_rc == 2 ]] && finish "config or usage error in stage '$1', nothing published" 2
  finish "stage '$1' failed, nothing published" 1
}

model() {  # model NAME MODEL_NAMES JOB [args]: a failure is recorded, the run goes on
  local name=$1 models=$2; shift 2
  if stage "$name" "$@"; then
    [[ "$wanted" == "  " || "$wanted" == *" ${name%% *} "* ]] && trained+=(${models//,/ })
  else
    failed_optional=1
  fi
}

if [[ ${RECSYS_GENERATE:-0} == 1 ]]; then required generate_events jobs/generate_events.py "$@"; fi
required clean_events    jobs/clean_events.py "$@"
required build_tables    jobs/build_tables.py "$@"
required split           jobs/split.py "$@"
required train_popularity jobs/train_baselines.py --models popularity,popularity_recent "$@"
[[ "$wanted" == "  " || "$wanted" == *" train_popularity "* ]] && trained+=(popularity popularity_recent)
model train_ease ease    jobs/train_baselines.py --models ease "$@"
model train_als  als     jobs/train_als.py "$@"
neural_models=${RECSYS_MODELS-$(.venv/bin/python -c 'from recsys_spark.models import registry; print(" ".join(registry.names()))')}
for m in $neural_models; do
  model "train_neural $m" "$m" jobs/train_neural.py --model "$m" "$@"
done

# A partial rerun (RECSYS_STAGES) that trained nothing evaluates and serves every model on disk.
model_args=()
if [[ ${#trained[@]} -gt 0 ]]; then
  model_list=$(IFS=,; echo "${trained[*]}")
  model_args=(--models "$model_list")
fi
if ! stage evaluate jobs/evaluate.py "${model_args[@]}" "$@"; then
  failed_optional=1
fi
required recommend jobs/recommend.py "${model_args[@]}" "$@"
if [[ $failed_optional == 1 ]]; then
  finish "published; some stages failed (see status)" 3
fi
finish "every stage succeeded, published" 0
