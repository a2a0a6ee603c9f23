#!/usr/bin/env bash
# Submit a job with spark-submit.
#   scripts/submit.sh jobs/clean_events.py [job args...]
# Master: $SPARK_MASTER if set; else the local standalone cluster when
# scripts/cluster.sh has it running (with its RPC secret from a 0600
# properties file, never on the command line); else local[2].
# The library travels as a zip (--py-files), so the same command works
# against a remote standalone master whose workers lack this checkout.
set -euo pipefail
cd "$(dirname "$0")/.."
[[ $# -ge 1 ]] || { echo "usage: scripts/submit.sh JOB.py [args...]" >&2; exit 2; }
job=$1; shift

py=.venv/bin/python
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PWD/$py}"
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PWD/$py}"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"

run_dir=$($py -c 'from recsys_spark.config import load_config; print(load_config().cluster.run_dir)')
driver_memory=$($py -c 'from recsys_spark.config import load_config; print(load_config().spark.driver_memory)')
executor_memory=$($py -c 'from recsys_spark.config import load_config; print(load_config().cluster.executor_memory)')

conf_args=()
master="${SPARK_MASTER:-}"
if [[ -z "$master" && -f "$run_dir/master.url" ]] && ./scripts/cluster.sh status >/dev/null 2>&1; then
  master=$(cat "$run_dir/master.url")
  conf_args+=(--properties-file "$run_dir/spark-auth.conf")
fi
master="${master:-local[2]}"

mkdir -p run
zip_path="run/recsys_spark.zip"
$py - "$zip_path" <<'PY'
import sys, zipfile, pathlib
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as zf:
    for p in pathlib.Path("recsys_spark").rglob("*.py"):
        zf.write(p)
PY

exec .venv/bin/spark-submit \
  --master "$master" \
  --driver-memory "$driver_memory" \
  --executor-memory "$executor_memory" \
  --conf spark.sql.session.timeZone=UTC \
  --conf spark.ui.showConsoleProgress=false \
  --py-files "$zip_path" \
  "${conf_args[@]}" \
  "$job" "$@"
