"""A user's mistake ends a job with exit status 2 and one line on stderr, never a traceback.

A bad config value, an unknown model, a missing input table: docs/operations.md, "Exit codes".
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from recsys_spark.cli import job_main
from recsys_spark.config import ConfigError
from recsys_spark.errors import UserError
from tests.conftest import REPO, load_job


def one_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    return err[0]


@pytest.mark.parametrize(
    "job, argv, fragment",
    [
        ("split", ["--set", "split.protocol=sideways"], "config error: --set split.protocol=sideways: key 'split.protocol'"),
        ("recommend", ["--set", "recommend.mmr_similarity=cosine"], "'auto', 'embedding' or 'genres'"),
        ("train_als", ["--set", "neural.use_gpu=maybe"], "key 'neural.use_gpu'"),
        ("clean_events", ["--set", "clean.nope=1"], "unknown key 'clean.nope'"),
        ("generate_events", ["--set", "synthetic.output=data/x"], "dataset.source.path"),
        ("train_neural", ["--model", "nope"], "unknown model 'nope'; known models: "),
        ("train_baselines", ["--models", "popularity,nope"],
         "unknown baseline 'nope'; known baselines: popularity, popularity_recent"),
        ("train_baselines", ["--models", "als"], "model 'als' is trained by its own job (jobs/train_als.py)"),
        ("train_baselines", ["--models", "ease"], "model 'ease' is trained by its own job (jobs/train_ease.py)"),
        ("train_ease", ["--set", "ease.l2_grid=[]"], "key 'ease.l2_grid'"),
        ("train_neural", ["--model", "multvae", "--set", "neural.per_model={multvae: {batch_sise: 8}}"],
         "unknown key 'neural.batch_sise'"),
    ],
)
def test_a_mistake_exits_2_with_one_line_naming_it(job, argv, fragment, capsys):
    """All of these fail before the job builds its Spark session."""
    with pytest.raises(SystemExit) as exit_info:
        load_job(job).main(argv)
    assert exit_info.value.code == 2
    line = one_line(capsys)
    assert line.startswith(f"{job}: ") and fragment in line


def test_spark_submit_entry_point_exits_2_with_one_line():
    """Through __main__ and session.run_job, as spark-submit runs train_neural: no traceback, no Spark."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.run([sys.executable, "jobs/train_neural.py", "--model", "nope"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert proc.stderr.startswith("train_neural: unknown model 'nope'")


def test_only_user_errors_become_exit_2(capsys):
    def make(exc):
        @job_main
        def main(argv=None):
            raise exc
        return main

    for exc in (UserError("a\nname"), ConfigError("k"), FileNotFoundError("table 'split' not found")):
        with pytest.raises(SystemExit) as exit_info:
            make(exc)([])
        assert exit_info.value.code == 2
        assert one_line(capsys).startswith("test_exit_codes: ")
    with pytest.raises(ValueError):  # a bug or a data problem: its traceback, exit 1
        make(ValueError("boom"))([])
    assert job_main(lambda argv=None: {"done": argv})(["x"]) == {"done": ["x"]}


@pytest.mark.spark
def test_a_missing_input_table_exits_2_naming_it(spark, tmp_path, capsys):
    wh = tmp_path / "wh"
    with pytest.raises(SystemExit) as exit_info:
        load_job("split").main(["--warehouse", str(wh)])
    assert exit_info.value.code == 2
    line = one_line(capsys)
    assert line.startswith("split: table 'events_clean' not found at") and str(wh) in line
