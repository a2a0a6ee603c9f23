#!/usr/bin/env bash
# Submit a job with spark-submit.
#   scripts/submit.sh jobs/clean_events.py [job args...]
# Master: $SPARK_MASTER if set; else the local standalone cluster when
# scripts/cluster.sh has it running (with its RPC secret from a 0600
# properties file, never on the command line); else local[2].
# For another master that needs a secret or other settings, put them in a
# 0600 properties file and set RECSYS_SPARK_PROPERTIES=/path/to/it.
# Config (run_dir, driver/executor memory) honours RECSYS_SET="key=value ..."
# like scripts/cluster.sh; the job itself takes its own --set flags.
# The library travels as a zip (--py-files), so the same command works
# against a remote standalone master whose workers lack this checkout.
# The job runs with the repository root as working directory.
set -euo pipefail
[[ $# -ge 1 ]] || { echo "usage: scripts/submit.sh JOB.py [args...]" >&2; exit 2; }
job=$1; shift
[[ -f $job ]] || { echo "submit.sh: no such job file: $job" >&2; exit 2; }
job=$(cd "$(dirname "$job")" && pwd)/$(basename "$job")
cd "$(dirname "$0")/.."

py=.venv/bin/python
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PWD/$py}"          # executors run this Python
export PYSPARK_DRIVER_PYTHON="${PYSPARK_DRIVER_PYTHON:-$PWD/$py}"
export SPARK_LOCAL_IP="${SPARK_LOCAL_IP:-127.0.0.1}"
# The driver may import recsys_spark from the zip below; conf/ stays here.
export RECSYS_CONF_DIR="${RECSYS_CONF_DIR:-$PWD/conf}"

read -r -a overrides <<< "${RECSYS_SET:-}"
cfg_out=$($py - "${overrides[@]}" <<'PY'
import sys
from pathlib import Path
from recsys_spark.config import ConfigError, load_config
try:
    c = load_config(overrides=sys.argv[1:])
except ConfigError as exc:
    sys.exit(f"submit.sh: config error: {exc}")
import os
from recsys_spark.jvm_archive import with_archive
print(Path(c.cluster.run_dir).resolve(), c.spark.driver_memory, c.cluster.executor_memory,
      with_archive(os.environ.get("SPARK_SUBMIT_OPTS")), sep="\n")
PY
) || exit 2
{ read -r run_dir; read -r driver_memory; read -r executor_memory; read -r submit_opts || true; } <<< "$cfg_out"  # an empty last line is cut by $(...)
# The driver JVM maps the environment's class archive when setup built one (recsys_spark/jvm_archive.py).
[[ -n $submit_opts ]] && export SPARK_SUBMIT_OPTS="$submit_opts"

props="${RECSYS_SPARK_PROPERTIES:-}"
master="${SPARK_MASTER:-}"
local_url=""
if [[ -f "$run_dir/master.url" ]] && ./scripts/cluster.sh status >/dev/null 2>&1; then
  local_url=$(<"$run_dir/master.url")
fi
if [[ -z "$master" && -n "$local_url" ]]; then
  master=$local_url
fi
if [[ -n "$local_url" && "$master" == "$local_url" && -z "$props" ]]; then
  props="$run_dir/spark-auth.conf"
fi
# The driver names this run dir's worker.log when its executors are lost (recsys_spark.watchdog).
[[ -n "$local_url" && "$master" == "$local_url" ]] && export RECSYS_CLUSTER_RUN_DIR="$run_dir"
master="${master:-local[2]}"
conf_args=()
[[ -n "$props" ]] && conf_args+=(--properties-file "$props")

# The package as a zip, with directory entries: a subpackage without
# __init__.py (a namespace package) is found by zipimport only through them.
tmp=$(mktemp -d "${TMPDIR:-/tmp}/recsys-submit.XXXXXX")
trap 'rm -rf "$tmp"' EXIT
zip_path="$tmp/recsys_spark.zip"
$py - "$zip_path" <<'PY'
import pathlib, sys, zipfile
with zipfile.ZipFile(sys.argv[1], "w", zipfile.ZIP_DEFLATED) as zf:
    root = pathlib.Path("recsys_spark")
    for p in sorted([root, *root.rglob("*")]):
        if "__pycache__" in p.parts:
            continue
        if p.is_dir() or p.suffix == ".py":
            zf.write(p)
PY

echo "submit.sh: $(basename "$job") on $master" >&2
# Not exec: the zip is removed afterwards. spark-submit runs in its own process
# group, and SIGTERM/SIGINT/SIGHUP here end the whole group: the JVM and the
# Python driver it started (which would otherwise outlive it).
setsid .venv/bin/spark-submit \
  --master "$master" \
  --driver-memory "$driver_memory" \
  --executor-memory "$executor_memory" \
  --conf spark.sql.session.timeZone=UTC \
  --conf spark.ui.showConsoleProgress=false \
  --py-files "$zip_path" \
  "${conf_args[@]}" \
  "$job" "$@" &
child=$!
trap 'kill -TERM -- "-$child" 2>/dev/null || kill -TERM "$child" 2>/dev/null || true' TERM INT HUP
rc=0
while kill -0 "$child" 2>/dev/null; do
  wait "$child" && rc=0 || rc=$?
done
exit "$rc"
