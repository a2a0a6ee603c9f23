"""The local standalone cluster end to end: scripts/cluster.sh and scripts/submit.sh.

Subprocesses only (never the shared ``spark`` fixture): a master and a worker
on free ports in a tmp run dir (RECSYS_SET), a real job through submit.sh with
a Python UDF on the executor, a client without the secret refused, then stop.
The refused client is ended at its first refusal (Spark would retry for 60 s).
"""
from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
VENV = REPO / ".venv"
CLUSTER_SH = REPO / "scripts" / "cluster.sh"
SUBMIT_SH = REPO / "scripts" / "submit.sh"

N = 10_000
EXPECTED_SUM = N * (N + 1) * (2 * N + 1) // 6  # sum of squares 1..N

JOB = '''
import json, sys
from pyspark.sql import functions as F, types as T
from recsys_spark.config import load_config
from recsys_spark.session import build_spark


def where(_):
    """Where a task's Python runs: interpreter, recsys_spark's origin, parent processes."""
    import os, sys
    import recsys_spark.config as c
    chain, pid = [], os.getppid()
    for _ in range(8):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                chain.append(fh.read().decode(errors="replace"))
            with open(f"/proc/{pid}/stat") as fh:
                pid = int(fh.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            break
    return json.dumps({"prefix": sys.prefix, "module": c.__file__,
                       "in_executor": any("CoarseGrainedExecutorBackend" in a for a in chain)})


cfg = load_config(overrides=["spark.extra={spark.ui.enabled: 'false'}"])
spark = build_spark(cfg, app_name="cluster-test")
square = F.udf(lambda x: x * x, T.LongType())
total = spark.range(1, %d + 1, numPartitions=4).select(square("id").alias("sq")).agg(F.sum("sq")).first()[0]
task = json.loads(spark.sparkContext.parallelize([0], 1).map(where).first())
result = {"total": total, "master": spark.sparkContext.master, "task": task}
with open(sys.argv[1], "w") as fh:
    json.dump(result, fh)
print("RESULT " + json.dumps(result))
spark.stop()
''' % N

NOAUTH_JOB = '''
from pyspark.sql import SparkSession
spark = SparkSession.builder.appName("cluster-test-noauth").getOrCreate()
print("RESULT", spark.range(10).count())
'''


def _free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        return ""


class _PsWatch(threading.Thread):
    """Polls `ps -ww -eo args` for a string until stopped; records any hit."""

    def __init__(self, needle: str):
        super().__init__(daemon=True)
        self.needle, self.hits, self.polls = needle, [], 0
        self._stop_event = threading.Event()

    def run(self):
        while not self._stop_event.is_set():
            out = subprocess.run(["ps", "-ww", "-eo", "args"], capture_output=True, text=True).stdout
            self.polls += 1
            self.hits += [line[:200] for line in out.splitlines() if self.needle in line]
            self._stop_event.wait(0.25)

    def stop(self):
        self._stop_event.set()
        self.join(10)


class _Refusal(threading.Thread):
    """Reads a client's stderr until it shows the master refusing it (no or a wrong secret)."""

    # The master answers a connection without the SASL handshake with this (the cause under
    # "Failed to connect to master"), every time the client tries to register.
    SIGNS = re.compile(r"Expected SaslMessage")

    def __init__(self, proc: subprocess.Popen):
        super().__init__(daemon=True)
        self.proc, self.lines, self.seen = proc, [], threading.Event()
        self.start()

    def run(self):
        for line in self.proc.stderr:
            self.lines.append(line)
            if self.SIGNS.search(line):
                self.seen.set()

    def wait(self, timeout: float) -> bool:
        return self.seen.wait(timeout)

    def text(self) -> str:
        return "".join(self.lines)


@contextlib.contextmanager
def local_cluster(run_dir: Path):
    """A cluster's settings on free ports in ``run_dir`` (nothing started): ``env`` for
    cluster.sh and submit.sh, ``sh(cmd)``, the master's URLs, and ``cleanup`` (client
    processes to end). Leaving the block always stops it; if the script could not, its
    daemons are ended by pid."""
    master_port, master_webui, worker_webui = _free_ports(3)
    env = {k: v for k, v in os.environ.items()
           if k not in ("SPARK_MASTER", "RECSYS_SPARK_PROPERTIES", "_SPARK_AUTH_SECRET",
                        "PYSPARK_PYTHON", "PYSPARK_DRIVER_PYTHON", "SPARK_CONF_DIR", "SPARK_HOME")}
    env["RECSYS_SET"] = " ".join([
        f"cluster.master_port={master_port}",
        f"cluster.master_webui_port={master_webui}",
        f"cluster.worker_webui_port={worker_webui}",
        f"cluster.run_dir={run_dir}",
        "cluster.worker_cores=2",
        "cluster.worker_memory=2g",
        "cluster.executor_memory=1g",
        "spark.driver_memory=1g",
    ])

    def sh(cmd: str, timeout: float = 150, **extra_env: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(CLUSTER_SH), cmd], env={**env, **extra_env}, cwd=REPO, capture_output=True,
                              text=True, timeout=timeout)

    c = type("Cluster", (), {})()
    c.env, c.sh, c.run_dir = env, sh, run_dir
    c.url = f"spark://127.0.0.1:{master_port}"
    c.json_url = f"http://127.0.0.1:{master_webui}/json/"
    c.cleanup = []  # client processes to end if the test fails half way
    try:
        yield c
    finally:
        for proc in c.cleanup:
            if proc.poll() is None:
                proc.kill()
                proc.communicate()
        sh("stop")
        for role in ("worker-supervisor", "worker", "master"):  # the supervisor first: it restarts the worker
            pid_file = run_dir / f"{role}.pid"
            if pid_file.exists():
                pid = int(pid_file.read_text().strip() or 0)
                if pid and str(run_dir) in _cmdline(pid):
                    os.kill(pid, 9)


@pytest.fixture
def cluster(tmp_path):
    with local_cluster(tmp_path / "cluster") as c:
        yield c


def _pids(run_dir: Path) -> dict[str, int]:
    return {role: int((run_dir / f"{role}.pid").read_text()) for role in ("master", "worker", "worker-supervisor")}


def _props(path: Path) -> dict[str, str]:
    return dict(line.strip().split(None, 1) for line in path.read_text().splitlines()
                if line.strip() and not line.startswith("#"))


def test_cluster_start_submit_auth_stop(cluster, tmp_path):
    run_dir = cluster.run_dir
    auth = run_dir / "spark-auth.conf"

    # Start; as soon as the master answers, start a client without the secret
    # beside it: Spark's client retries registration 3 x 20 s before failing,
    # which sets this test's length, so it runs while everything else does.
    starting = subprocess.Popen([str(CLUSTER_SH), "start"], env=cluster.env, cwd=REPO,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    cluster.cleanup.append(starting)
    deadline = time.monotonic() + 90
    while starting.poll() is None and time.monotonic() < deadline:
        try:
            urllib.request.urlopen(cluster.json_url, timeout=1).close()
            break
        except OSError:
            time.sleep(0.3)
    assert auth.exists(), "the master did not come up; see " + str(run_dir / "master.log")

    # The secret: fresh and random, in a 0600 file in a 0700 dir, on no command line.
    assert auth.stat().st_mode & 0o777 == 0o600
    assert run_dir.stat().st_mode & 0o777 == 0o700
    props = _props(auth)
    assert props["spark.authenticate"] == "true"
    secret = props["spark.authenticate.secret"]
    assert re.fullmatch(r"[0-9a-f]{64}", secret)
    watch = _PsWatch(secret)
    watch.start()
    try:
        (tmp_path / "noauth.py").write_text(NOAUTH_JOB)
        noauth_env = {k: v for k, v in cluster.env.items() if k != "RECSYS_SET"}
        noauth_env.update(SPARK_LOCAL_IP="127.0.0.1", PYSPARK_PYTHON=str(VENV / "bin" / "python"))
        noauth = subprocess.Popen(
            [str(VENV / "bin" / "spark-submit"), "--master", cluster.url, "--driver-memory", "512m",
             "--conf", "spark.ui.enabled=false", str(tmp_path / "noauth.py")],
            env=noauth_env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        cluster.cleanup.append(noauth)
        refused = _Refusal(noauth)

        start_out, _ = starting.communicate(timeout=150)
        assert starting.returncode == 0, start_out
        assert "cluster up" in start_out
        pids = _pids(run_dir)
        assert "deploy.master.Master" in _cmdline(pids["master"])
        assert "deploy.worker.Worker" in _cmdline(pids["worker"])
        assert f"cluster.sh _supervise-worker {run_dir}" in _cmdline(pids["worker-supervisor"])
        assert (run_dir / "master.url").read_text().strip() == cluster.url

        # `start` twice is harmless: same daemons, same secret.
        again = cluster.sh("start")
        assert again.returncode == 0, again.stdout + again.stderr
        assert "already running" in again.stdout
        assert _pids(run_dir) == pids
        assert _props(auth)["spark.authenticate.secret"] == secret

        status = cluster.sh("status")
        assert status.returncode == 0, status.stdout + status.stderr
        assert cluster.url in status.stdout

        # A real job through submit.sh (from another directory), run by the worker's executor.
        job = tmp_path / "job.py"
        job.write_text(JOB)
        out_file = tmp_path / "result.json"
        submitted = subprocess.run([str(SUBMIT_SH), str(job), str(out_file)], env=cluster.env,
                                   cwd=tmp_path, capture_output=True, text=True, timeout=180)
        assert submitted.returncode == 0, submitted.stdout[-2000:] + submitted.stderr[-4000:]
        result = json.loads(out_file.read_text())
        assert f"RESULT {json.dumps(result)}" in submitted.stdout
        assert result["total"] == EXPECTED_SUM
        assert result["master"] == cluster.url
        task = result["task"]
        assert task["in_executor"], task
        # Executors run the project venv's Python and import the shipped zip.
        assert Path(task["prefix"]).resolve() == VENV.resolve()
        assert "recsys_spark.zip" in task["module"]

        # The client without the secret: refused by the master. Spark's client would
        # retry its registration 3 x 20 s before failing; the first refusal is the
        # answer, so it is ended there rather than waited out.
        assert refused.wait(120), "the client without the secret was not refused in 120 s:\n" + refused.text()[-3000:]
        noauth.terminate()
        out, _ = noauth.communicate(timeout=30)
        assert not re.search(r"^RESULT \d", out, re.M), out[-2000:]  # it never ran a job
    finally:
        watch.stop()
    assert watch.polls > 10 and watch.hits == [], watch.hits

    with urllib.request.urlopen(cluster.json_url, timeout=5) as resp:
        state = json.load(resp)
    apps = [a["name"] for a in state.get("activeapps", []) + state.get("completedapps", [])]
    assert "cluster-test" in apps and "cluster-test-noauth" not in apps, apps

    # Nothing but the auth file holds the secret (daemon logs, executor output).
    for path in run_dir.rglob("*"):
        if path.is_file() and path != auth:
            assert secret not in path.read_text(errors="replace"), path

    stopped = cluster.sh("stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and any(_cmdline(p) for p in pids.values()):
        time.sleep(0.2)
    for role, pid in pids.items():
        assert not _cmdline(pid), f"{role} pid {pid} still running: {_cmdline(pid)[:200]}"
        assert not (run_dir / f"{role}.pid").exists()
    leftovers = [d for d in Path("/proc").iterdir() if d.name.isdigit()
                 and str(run_dir) in (os.path.realpath(d / "cwd") if os.access(d / "cwd", os.R_OK) else "")]
    assert leftovers == [], [_cmdline(int(d.name))[:200] for d in leftovers]
    assert not auth.exists() and not (run_dir / "master.url").exists()
    assert cluster.sh("status").returncode != 0
