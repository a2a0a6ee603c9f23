#!/usr/bin/env bash
# The local standalone Spark cluster: one master and one worker on this machine.
#   scripts/cluster.sh start     start both (harmless when already running)
#   scripts/cluster.sh stop      stop the processes this script started
#   scripts/cluster.sh status    what runs, the master URL; exit 1 when not running
#
# The worker runs under a supervisor (this script, `_supervise-worker`): when
# the worker JVM dies without `stop` asking (killed, crashed), the supervisor
# starts it again, so the master gives running applications new executors and
# Spark reruns the lost tasks. At most CLUSTER_WORKER_MAX_RESTARTS (5) restarts
# in CLUSTER_WORKER_RESTART_WINDOW (600) seconds, then it gives up; every
# restart and the giving up are logged in <run_dir>/worker.log.
#
# Loopback only (RPC and web UIs) and RPC authentication on: every `start` of
# the master writes a fresh random secret to <run_dir>/spark-auth.conf (mode
# 0600). The daemons and scripts/submit.sh read it with --properties-file, so
# the secret never appears on a command line; a client without it is refused.
# Ports, cores, memory and run_dir come from the `cluster:` section of the
# config; RECSYS_SET="key=value key=value" overrides it, as `--set` does for
# jobs, e.g. RECSYS_SET="cluster.master_port=17077 cluster.run_dir=/tmp/c".
# Logs and pid files live in run_dir; docs/operations.md has the details.
set -euo pipefail
cd "$(dirname "$0")/.."

die() { echo "cluster.sh: $*" >&2; exit 1; }

py=.venv/bin/python
[[ -x $py ]] || die "no .venv here; run scripts/setup.sh first"
START_TIMEOUT=${CLUSTER_START_TIMEOUT:-90}   # seconds to wait for master + worker
STOP_TIMEOUT=${CLUSTER_STOP_TIMEOUT:-30}     # seconds for a daemon to exit after SIGTERM
MAX_RESTARTS=${CLUSTER_WORKER_MAX_RESTARTS:-5}        # worker restarts allowed...
RESTART_WINDOW=${CLUSTER_WORKER_RESTART_WINDOW:-600}  # ...in this many seconds
RESTART_DELAY=${CLUSTER_WORKER_RESTART_DELAY:-2}      # seconds between a worker's death and its restart
[[ $MAX_RESTARTS =~ ^[0-9]+$ && $RESTART_WINDOW =~ ^[0-9]+$ && $RESTART_DELAY =~ ^[0-9]+$ ]] \
  || die "CLUSTER_WORKER_MAX_RESTARTS, CLUSTER_WORKER_RESTART_WINDOW and CLUSTER_WORKER_RESTART_DELAY must be whole numbers"

# --------------------------------------------------------------------------- config
read -r -a overrides <<< "${RECSYS_SET:-}"
cfg_out=$($py - "${overrides[@]}" <<'PY'
import os, sys
from pathlib import Path
from recsys_spark.config import ConfigError, load_config
try:
    c = load_config(overrides=sys.argv[1:]).cluster
except ConfigError as exc:
    sys.exit(f"cluster.sh: config error: {exc}")
import pyspark
from recsys_spark.jvm_archive import java_options, with_archive
print(c.host, c.master_port, c.master_webui_port, c.worker_webui_port, c.worker_cores,
      c.worker_memory, Path(c.run_dir).resolve(), os.path.dirname(pyspark.__file__),
      with_archive(os.environ.get("SPARK_DAEMON_JAVA_OPTS")), java_options(), sep="\n")
PY
) || exit 2
{ read -r host; read -r master_port; read -r master_webui; read -r worker_webui
  read -r worker_cores; read -r worker_memory; read -r run_dir; read -r spark_home
  read -r daemon_opts || true; read -r executor_opts || true; } <<< "$cfg_out"  # empty last lines are cut by $(...)
# The daemons and the executors map the environment's class archive when setup built
# one (recsys_spark/jvm_archive.py): they run on this machine, where it is.
[[ -n $daemon_opts ]] && export SPARK_DAEMON_JAVA_OPTS="$daemon_opts"

case "$host" in
  127.*|localhost|::1) ;;
  *) die "cluster.host is '$host': this script runs a loopback-only cluster (127.0.0.1). \
For a multi-node cluster see docs/operations.md." ;;
esac

master_url="spark://$host:$master_port"
auth_conf="$run_dir/spark-auth.conf"
master_class=org.apache.spark.deploy.master.Master
worker_class=org.apache.spark.deploy.worker.Worker
export SPARK_HOME="$spark_home"
export SPARK_LOCAL_IP="$host"          # web UIs bind to SPARK_LOCAL_IP (else 0.0.0.0)
export PYSPARK_PYTHON="${PYSPARK_PYTHON:-$PWD/$py}"

# --------------------------------------------------------------------------- processes
# Roles: master, worker (java daemons) and supervisor (the bash loop that keeps the worker up).
pid_file() { [[ $1 == supervisor ]] && echo "$run_dir/worker-supervisor.pid" || echo "$run_dir/$1.pid"; }
class_of() { [[ $1 == master ]] && echo "$master_class" || echo "$worker_class"; }
self=$PWD/scripts/cluster.sh

# The pid from role's pid file when that pid is still the process this script
# started: for a daemon the java process of that class with this run dir's auth
# file, for the supervisor this script's `_supervise-worker <run_dir>` (a reused
# pid never matches).
live_pid() {
  local f pid args
  f=$(pid_file "$1")
  [[ -f $f ]] || return 1
  pid=$(<"$f")
  [[ $pid =~ ^[0-9]+$ ]] || return 1
  args=$(ps -ww -o args= -p "$pid" 2>/dev/null) || return 1
  if [[ $1 == supervisor ]]; then
    [[ $args == *"$self _supervise-worker $run_dir" ]] || return 1
  else
    [[ ( $args == *java* || $args == *spark-class* ) && $args == *" $(class_of "$1") "* && $args == *"--properties-file $auth_conf"* ]] || return 1
  fi
  echo "$pid"
}

log_hint() { echo "see $run_dir/$1.log; last lines:"; tail -n 15 "$run_dir/$1.log" 2>/dev/null | sed 's/^/    /'; }

stop_role() {
  local role=$1 pid f i
  f=$(pid_file "$role")
  if pid=$(live_pid "$role"); then
    echo "stopping $role (pid $pid)"
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < STOP_TIMEOUT * 5; i++)); do
      live_pid "$role" >/dev/null || break
      sleep 0.2
    done
    if live_pid "$role" >/dev/null; then
      echo "$role (pid $pid) still running after ${STOP_TIMEOUT}s; sending SIGKILL"
      kill -KILL "$pid" 2>/dev/null || true
      for ((i = 0; i < 50; i++)); do live_pid "$role" >/dev/null || break; sleep 0.2; done
    fi
    live_pid "$role" >/dev/null && die "could not stop $role (pid $pid)"
  elif [[ -f $f ]]; then
    echo "$role: removing stale pid file (pid $(<"$f") is not this cluster's $role)"
  fi
  rm -f "$f"
}

# Executors are children of the worker and normally exit with it; any left
# (cwd inside this cluster's work dir) are ended by pid too.
stop_leftover_executors() {
  local p pid cwd
  for p in /proc/[0-9]*; do
    pid=${p#/proc/}
    cwd=$(readlink "$p/cwd" 2>/dev/null) || continue
    [[ $cwd == "$run_dir/work/"* ]] || continue
    [[ $(ps -ww -o args= -p "$pid" 2>/dev/null) == *CoarseGrainedExecutorBackend* ]] || continue
    echo "ending leftover executor (pid $pid, $cwd)"
    kill -TERM "$pid" 2>/dev/null || true
  done
}

# Poll the master's JSON until `what` holds: "master" (it answers) or
# "worker" (a worker with our web UI port is ALIVE, and not one of the ids
# listed in $known_workers: a worker stopped a moment ago may still show).
# `ids` prints the ids of the workers the master knows now.
wait_for() {
  $py - "$1" "http://$host:$master_webui/json/" "$worker_webui" "$START_TIMEOUT" "${known_workers:-}" <<'PY'
import json, sys, time, urllib.request
what, url, worker_webui, timeout, known = sys.argv[1], sys.argv[2], sys.argv[3], float(sys.argv[4]), sys.argv[5]
deadline = time.monotonic() + timeout
while time.monotonic() < deadline:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            state = json.load(resp)
        if what == "ids":
            print(" ".join(w.get("id", "") for w in state.get("workers", [])))
            sys.exit(0)
        if what == "master":
            sys.exit(0)
        for w in state.get("workers", []):
            if (w.get("state") == "ALIVE" and w.get("id") not in known.split()
                    and str(w.get("webuiaddress", "")).endswith(":" + worker_webui)):
                sys.exit(0)
    except (OSError, ValueError):
        pass
    print("waiting", flush=True)  # lets the shell check that the daemons still run
    time.sleep(0.5)
sys.exit(f"timed out after {timeout:.0f}s")
PY
}

wait_up() { # role: wait until up; the daemon exiting meanwhile is a failure
  local role=$1 line msg=""
  while read -r line; do
    case $line in
      rc=0) return 0 ;;
      rc=*) echo "${msg:-wait failed}" >&2; return 1 ;;
      waiting) ;;
      *) msg=$line ;;
    esac
    live_pid "$role" >/dev/null || { echo "$role exited during start" >&2; return 1; }
    live_pid master >/dev/null || { echo "master exited during start" >&2; return 1; }
  done < <(wait_for "$role" 2>&1; echo "rc=$?")
  return 1
}

port_free() {
  $py -c 'import socket,sys; s=socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); s.bind((sys.argv[1], int(sys.argv[2])))' "$host" "$1" 2>/dev/null
}

start_daemon() { # role args...: background, own session, logs and pid in run_dir
  local role=$1; shift
  echo "==== $(date -u +%FT%TZ) starting $role" >> "$run_dir/$role.log"
  setsid nohup "$PWD/.venv/bin/spark-class" "$(class_of "$role")" "$@" \
    >> "$run_dir/$role.log" 2>&1 < /dev/null &
  echo $! > "$(pid_file "$role")"
}

worker_args=(--host "$host" --webui-port "$worker_webui" --cores "$worker_cores" --memory "$worker_memory"
             --work-dir "$run_dir/work" --properties-file "$auth_conf" "$master_url")

# The supervisor: its own session (like the daemons), the worker JVM its child.
start_supervised_worker() {
  rm -f "$(pid_file worker)"
  setsid nohup "$self" _supervise-worker "$run_dir" >> "$run_dir/worker.log" 2>&1 < /dev/null &
  echo $! > "$(pid_file supervisor)"
  local i
  for ((i = 0; i < 100; i++)); do  # the supervisor writes worker.pid as it starts the worker
    [[ -s $(pid_file worker) ]] && return 0
    live_pid supervisor >/dev/null || break
    sleep 0.1
  done
  [[ -s $(pid_file worker) ]]
}

say() { echo "==== $(date -u +%FT%TZ) supervisor (pid $$): $*"; }  # into worker.log

# Start the worker and wait for it; when it dies while nobody asked (`stop`
# ends this loop first, with SIGTERM, and then the worker), start it again
# after RESTART_DELAY s, at most MAX_RESTARTS times in RESTART_WINDOW s.
cmd_supervise_worker() {
  local stopping=0 wpid rc why now restarts=() t recent
  trap 'stopping=1' TERM INT
  say "keeping the worker up (at most $MAX_RESTARTS restarts in ${RESTART_WINDOW}s)"
  while :; do
    echo "==== $(date -u +%FT%TZ) starting worker"
    # Executor logs and app files go to work/; apps gone for 7 days are cleaned up.
    SPARK_WORKER_OPTS="-Dspark.port.maxRetries=0 -Dspark.worker.cleanup.enabled=true ${SPARK_WORKER_OPTS:-}" \
      "$PWD/.venv/bin/spark-class" "$worker_class" "${worker_args[@]}" < /dev/null &
    wpid=$!
    echo "$wpid" > "$(pid_file worker)"
    # `wait` returns early when a trapped signal arrives; wait again while the worker lives.
    # (A signal that came before `wait` began does not interrupt it: hence the check first.)
    rc=0
    while :; do
      [[ $stopping == 1 ]] && { say "stopping; the worker (pid $wpid) is left to \`cluster.sh stop\`"; exit 0; }
      wait "$wpid" && rc=0 || rc=$?
      [[ $stopping == 1 ]] && continue
      kill -0 "$wpid" 2>/dev/null || break
    done
    why="exit status $rc"
    (( rc > 128 )) && why="killed by signal $((rc - 128))$( [[ $rc == 137 ]] && echo " (SIGKILL)")"
    now=$(date +%s)
    recent=()
    for t in "${restarts[@]}"; do (( now - t < RESTART_WINDOW )) && recent+=("$t"); done
    restarts=("${recent[@]}")
    if ! live_pid master >/dev/null; then
      say "the worker (pid $wpid) ended ($why) and the master is not running: not restarting it; \
run scripts/cluster.sh stop, then start"
      exit 1
    fi
    if (( ${#restarts[@]} >= MAX_RESTARTS )); then
      say "the worker (pid $wpid) ended ($why) after ${#restarts[@]} restart(s) in the last \
${RESTART_WINDOW}s: giving up; the worker stays down. Read this log; scripts/cluster.sh start starts it again"
      exit 1
    fi
    restarts+=("$now")
    say "the worker (pid $wpid) ended unexpectedly ($why); restarting it in ${RESTART_DELAY}s \
(restart ${#restarts[@]} of at most $MAX_RESTARTS in ${RESTART_WINDOW}s)"
    sleep "$RESTART_DELAY" & wait $! || true
    [[ $stopping == 1 ]] && { say "stopping"; exit 0; }
  done
}

write_secret() {
  # umask 077 and O_EXCL on a fresh file: never readable by others, not even briefly.
  $py - "$auth_conf" "$executor_opts" <<'PY'
import os, secrets, sys, time
path = sys.argv[1]
tmp = f"{path}.tmp{os.getpid()}"
fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
with os.fdopen(fd, "w") as fh:
    fh.write(f"# Written by scripts/cluster.sh start, {time.strftime('%Y-%m-%dT%H:%M:%SZ', time.gmtime())}.\n"
             "# A fresh secret per cluster start; keep this file 0600 and off the command line.\n"
             "spark.authenticate true\n"
             f"spark.authenticate.secret {secrets.token_hex(32)}\n")
    if sys.argv[2]:  # executors start on this machine: the class archive (recsys_spark/jvm_archive.py)
        fh.write(f"spark.executor.extraJavaOptions {sys.argv[2]}\n")
os.chmod(tmp, 0o600)
os.replace(tmp, path)
PY
}

# --------------------------------------------------------------------------- commands
cmd_status() {
  local mpid wpid spid rc=0
  if mpid=$(live_pid master); then
    echo "master: running (pid $mpid), $master_url, web UI http://$host:$master_webui"
  else
    echo "master: not running"; rc=1
  fi
  if wpid=$(live_pid worker); then
    echo "worker: running (pid $wpid), $worker_cores cores, $worker_memory, web UI http://$host:$worker_webui"
  else
    echo "worker: not running"; rc=1
  fi
  if spid=$(live_pid supervisor); then
    echo "worker supervisor: running (pid $spid); restarts the worker when it dies (log: $run_dir/worker.log)"
  else
    echo "worker supervisor: not running (a worker that dies stays down; see $run_dir/worker.log)"
  fi
  if [[ $rc == 0 ]]; then
    echo "master URL: $(cat "$run_dir/master.url" 2>/dev/null || echo "$master_url")"
    echo "auth: $auth_conf (pass with --properties-file; scripts/submit.sh does)"
  fi
  echo "run dir: $run_dir"
  return $rc
}

cmd_start() {
  umask 077
  mkdir -p "$run_dir" "$run_dir/work"
  chmod 700 "$run_dir"
  local mpid wpid spid started_master=0
  mpid=$(live_pid master) || mpid=""
  wpid=$(live_pid worker) || wpid=""
  spid=$(live_pid supervisor) || spid=""
  if [[ -n $mpid && -n $wpid && -n $spid ]]; then
    echo "cluster already running"
    cmd_status
    return 0
  fi
  # A worker without its supervisor (or the reverse: one between two tries), or
  # without its master (or with a stale secret), is started again, supervised.
  [[ -n $spid ]] && stop_role supervisor
  [[ -n $wpid ]] && { stop_role worker; wpid=""; }
  if [[ -z $mpid ]]; then
    rm -f "$(pid_file master)" "$run_dir/master.url"
    local port
    for port in "$master_port" "$master_webui" "$worker_webui"; do
      port_free "$port" || die "port $host:$port is in use (another cluster or service?); \
pick free ports, e.g. RECSYS_SET=\"cluster.master_port=... cluster.master_webui_port=... cluster.worker_webui_port=...\""
    done
    write_secret
    # spark.port.maxRetries=0: fail on a taken port instead of silently moving to the next one.
    SPARK_MASTER_OPTS="-Dspark.port.maxRetries=0 -Dspark.master.rest.enabled=false ${SPARK_MASTER_OPTS:-}" \
      start_daemon master --host "$host" --port "$master_port" --webui-port "$master_webui" \
      --properties-file "$auth_conf"
    started_master=1
    echo "master starting (pid $(<"$(pid_file master)")), waiting for $master_url"
    if ! wait_up master; then
      echo "cluster.sh: master did not come up; $(log_hint master)" >&2
      stop_role master >/dev/null
      rm -f "$auth_conf"
      exit 1
    fi
  fi
  rm -f "$(pid_file worker)"
  local known_workers
  known_workers=$(START_TIMEOUT=5 wait_for ids 2>/dev/null | tail -n 1) || known_workers=""
  if ! start_supervised_worker; then
    echo "cluster.sh: the worker's supervisor did not start the worker; $(log_hint worker)" >&2
    stop_role supervisor >/dev/null
    stop_role worker >/dev/null
    [[ $started_master == 1 ]] && { stop_role master >/dev/null; rm -f "$auth_conf"; }
    exit 1
  fi
  echo "worker starting (pid $(<"$(pid_file worker)"), supervisor pid $(<"$(pid_file supervisor)")), waiting for it to register"
  if ! wait_up worker; then
    echo "cluster.sh: worker did not register with the master; $(log_hint worker)" >&2
    stop_role supervisor >/dev/null
    stop_role worker >/dev/null
    [[ $started_master == 1 ]] && { stop_role master >/dev/null; rm -f "$auth_conf"; }
    exit 1
  fi
  echo "$master_url" > "$run_dir/master.url"
  echo "cluster up"
  cmd_status
}

cmd_stop() {
  local any=0
  [[ -f $(pid_file worker) || -f $(pid_file master) || -f $(pid_file supervisor) ]] && any=1
  # The supervisor first: it must not restart the worker that is stopped next.
  stop_role supervisor
  stop_role worker
  stop_leftover_executors
  stop_role master
  # The secret dies with the cluster; the next start writes a new one.
  rm -f "$auth_conf" "$run_dir/master.url"
  [[ $any == 1 ]] && echo "cluster stopped" || echo "cluster was not running"
}

case "${1:-}" in
  start) cmd_start ;;
  stop) cmd_stop ;;
  status) cmd_status ;;
  _supervise-worker)  # started by `start`, not by hand; the run dir names it for live_pid
    [[ ${2:-} == "$run_dir" ]] || die "_supervise-worker is started by 'start' (for run dir $run_dir)"
    cmd_supervise_worker ;;
  *) echo "usage: scripts/cluster.sh start|stop|status" >&2; exit 2 ;;
esac
