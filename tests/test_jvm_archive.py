"""The JVM class archive (recsys_spark/jvm_archive.py): the driver that scripts/submit.sh
starts maps it when the environment has one, and runs as before when it has none."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from recsys_spark import jvm_archive
from tests.conftest import REPO

# A job that needs no Spark session: the driver JVM is spark-submit itself, this
# Python its child. It prints whether its JVM maps the archive and the options it got.
PROBE_JOB = """
import json, os
jvm = os.getppid()
maps = open(f"/proc/{jvm}/maps").read()
args = open(f"/proc/{jvm}/cmdline", "rb").read().split(b"\\0")
print(json.dumps({"mapped": "spark-cds.jsa" in maps,
                  "options": [a.decode() for a in args if a.startswith(b"-XX:SharedArchiveFile")]}))
"""


def test_options_name_an_existing_archive_and_leave_the_callers_own(tmp_path, monkeypatch):
    archive = tmp_path / "spark-cds.jsa"
    monkeypatch.setenv(jvm_archive.ARCHIVE_ENV, str(archive))
    assert jvm_archive.java_options() == "" and jvm_archive.with_archive(None) == ""
    assert jvm_archive.with_archive(" -Xss4m ") == "-Xss4m"
    archive.write_bytes(b"\0")
    assert jvm_archive.java_options().startswith(f"-XX:SharedArchiveFile={archive} ")
    assert jvm_archive.with_archive("-Xss4m") == f"-Xss4m -XX:SharedArchiveFile={archive} -Xlog:cds=off -Xlog:cds+dynamic=off"
    # An archive the caller chose (or one being written) is theirs: nothing is added.
    assert jvm_archive.with_archive("-XX:SharedArchiveFile=/x.jsa") == "-XX:SharedArchiveFile=/x.jsa"
    assert jvm_archive.with_archive("-XX:ArchiveClassesAtExit=/y.jsa") == "-XX:ArchiveClassesAtExit=/y.jsa"


def _submit_probe(tmp_path, archive: str) -> dict:
    job = tmp_path / "probe.py"
    job.write_text(PROBE_JOB)
    env = {**os.environ, "SPARK_MASTER": "local[1]", jvm_archive.ARCHIVE_ENV: archive,
           "RECSYS_SET": f"cluster.run_dir={tmp_path / 'no-cluster'}"}
    for key in ("SPARK_SUBMIT_OPTS", "PYSPARK_GATEWAY_PORT", "PYSPARK_GATEWAY_SECRET"):
        env.pop(key, None)
    proc = subprocess.run([str(REPO / "scripts" / "submit.sh"), str(job)], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_submit_maps_the_archive_when_there_is_one_and_runs_without_it(tmp_path):
    built = jvm_archive.DEFAULT_ARCHIVE
    if not built.is_file():
        pytest.skip(f"no archive at {built} (scripts/setup.sh builds it; it could not here)")
    with_it = _submit_probe(tmp_path, str(built))
    assert with_it["mapped"] and with_it["options"] == [f"-XX:SharedArchiveFile={built}"]
    without = _submit_probe(tmp_path, str(tmp_path / "none.jsa"))
    assert not without["mapped"] and without["options"] == []
