#!/usr/bin/env bash
# The nightly pipeline on an existing event log: clean -> tables -> split ->
# popularity -> EASE, ALS, Markov, every registered neural model -> evaluate -> publish
# recommendations (jobs/pipeline.py, recsys_spark/pipeline.py). Arguments go to every job, e.g.
#
#   scripts/pipeline.sh --dataset movielens-100k --warehouse warehouse/ml-100k --set split.protocol=random
#
# The whole run is one spark-submit (scripts/submit.sh: the local cluster when
# it runs, else SPARK_MASTER or local[2]): one JVM, one Spark application, one
# set of executors for every stage. RECSYS_ISOLATED=1 runs each stage as its
# own spark-submit instead (slower; a stage that crashes its process cannot
# take the others with it).
#
# Model stages are independent: one that fails is recorded (reason and log in
# the run status) and the night goes on with the models that trained; evaluation
# and publishing see only those. Popularity is required: there is always
# something safe to serve. A failing data stage (clean, tables, split),
# popularity or publishing stops the run.
#
# Exit status (docs/operations.md, "Exit codes"):
#   0  every stage succeeded and recommendations were published
#   1  nothing was published (a required stage failed, or the cluster lost every executor)
#   2  a usage or config error (a job said so with its own exit code 2); nothing published
#   3  recommendations were published, but some model (or the evaluation) failed
#   4  another run holds the warehouse's lock (<warehouse>/_run.lock); nothing run
#
# A rerun of the same date resumes: stages that succeeded with unchanged inputs
# are skipped (<warehouse>/runs/run_date=D/manifest.json). --from STAGE reruns
# from that stage on, --force reruns everything (docs/operations.md, "Reruns").
#
# RECSYS_STAGES="split train_als evaluate" runs only those stages (in pipeline order); a name
# that is no stage of the run is refused (exit 2, nothing run).
# RECSYS_MODELS="neumf two_tower" trains only those neural models (unset: every registered one; empty: none).
# RECSYS_GENERATE=1 first writes the synthetic log (jobs/generate_events.py; the demo).
# Logs: run/pipeline-logs/<stage>.log (each stage's own output), driver.log (Spark's
# and the JVM's), and the run's status, status.json (RECSYS_LOG_DIR to change).
set -uo pipefail
cd "$(dirname "$0")/.."
export RECSYS_LOG_DIR=${RECSYS_LOG_DIR:-run/pipeline-logs}
mkdir -p "$RECSYS_LOG_DIR"
rm -f "$RECSYS_LOG_DIR/status.json"
if [[ ${RECSYS_ISOLATED:-0} == 1 ]]; then
  exec .venv/bin/python jobs/pipeline.py "$@"
fi
./scripts/submit.sh jobs/pipeline.py "$@" 2>"$RECSYS_LOG_DIR/driver.log"
rc=$?
if [[ ! -f "$RECSYS_LOG_DIR/status.json" ]] || ! grep -q '"exit_code": [0-9]' "$RECSYS_LOG_DIR/status.json"; then
  echo "pipeline: the driver ended (exit $rc) before the run finished; see $RECSYS_LOG_DIR/driver.log" >&2
  tail -5 "$RECSYS_LOG_DIR/driver.log" >&2
  [[ $rc == 0 ]] && rc=1
fi
exit "$rc"
