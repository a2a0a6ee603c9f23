#!/usr/bin/env bash
# Idempotent environment setup: .venv with the package and its pins, and the
# JVM class archive every Spark JVM here maps (recsys_spark/jvm_archive.py).
#   scripts/setup.sh          runtime dependencies (what the jobs need)
#   scripts/setup.sh --dev    plus test and benchmark tools (pytest, duckdb, implicit)
# Re-running is cheap: it reinstalls only when pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."

extras=""
[[ "${1:-}" == "--dev" ]] && extras="[dev]"

# Java: Spark 3.5 runs on Java 17 (also 11/8, but we test on 17).
if ! command -v java >/dev/null 2>&1; then
  echo "setup: Java not found. Install a JDK 17, e.g. 'sudo apt-get install openjdk-17-jdk-headless'," >&2
  echo "       or set JAVA_HOME and put \$JAVA_HOME/bin on PATH." >&2
  exit 1
fi
java_version=$(java -version 2>&1)
java_major=$(sed -n 's/.*version "\([0-9]*\).*/\1/p' <<< "$java_version" | head -1)
if [[ -z "$java_major" || "$java_major" -lt 17 ]]; then
  echo "setup: Java 17 or newer is required, found '$(head -1 <<< "$java_version")'." >&2
  echo "       Install openjdk-17-jdk-headless (apt) or another JDK 17 and put it first on PATH." >&2
  exit 1
fi

PYTHON=${PYTHON:-python3.11}
if ! command -v "$PYTHON" >/dev/null 2>&1; then
  PYTHON=python3
fi
if [[ ! -x .venv/bin/python ]]; then
  "$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), sys.version' 2>/dev/null || {
    echo "setup: Python 3.11 is required (found $("$PYTHON" --version 2>&1)); set PYTHON=/path/to/python3.11" >&2
    exit 1
  }
  echo "setup: creating .venv with $("$PYTHON" --version)"
  "$PYTHON" -m venv .venv
fi

stamp=".venv/.recsys-installed${extras}"
want=$(cat pyproject.toml | sha256sum | cut -d' ' -f1)
installed=0
if [[ -f "$stamp" && "$(cat "$stamp")" == "$want" ]]; then
  installed=1
fi
# The dev install holds everything the plain one does: a .venv set up for the tests serves the demo.
if [[ -z "$extras" && -f ".venv/.recsys-installed[dev]" && "$(cat ".venv/.recsys-installed[dev]")" == "$want" ]]; then
  installed=1
fi
if [[ $installed == 0 ]]; then
  echo "setup: installing recsys-spark${extras} and its pinned dependencies into .venv"
  .venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".${extras}"
  echo "$want" > "$stamp"
fi

# Spark's JVM classes, archived once for this environment and JDK: every JVM of a run
# starts about 2 s sooner (recsys_spark/jvm_archive.py). Built again when either changes;
# tried once per change: without the archive the JVMs start as they always did.
archive_key="$want $(tr '\n' ' ' <<< "$java_version")"
if [[ "$(cat .venv/spark-cds.key 2>/dev/null)" != "$archive_key" ]]; then
  echo "setup: archiving Spark's JVM classes into .venv/spark-cds.jsa (once, about 20 s)"
  rm -f .venv/spark-cds.jsa
  .venv/bin/python -m recsys_spark.jvm_archive build .venv/spark-cds.jsa || echo "setup: JVMs will start without the archive" >&2
  echo "$archive_key" > .venv/spark-cds.key
fi
