"""The nightly run's rules (recsys_spark/pipeline.py), with the stages replaced by a recorder:
which stages run, which failures end the run, what evaluate and recommend are
given, the exit code and the status file. The real stages run in
tests/test_nightly_run.py."""
from __future__ import annotations

import io
import json

from recsys_spark import pipeline

NEURAL = ["multvae", "neumf"]


class Recorder:
    """A stage runner that fails the stages it is told to, with a given exit code."""

    def __init__(self, fail: dict[str, int] | None = None):
        self.fail = fail or {}
        self.calls: list[tuple[str, list[str]]] = []

    def __call__(self, stage, argv, log):
        self.calls.append((stage.name, argv))
        log.write_text(f"{stage.name}\n")
        code = self.fail.get(stage.name, 0)
        return code, (f"boom in {stage.name}" if code else None)


def run(tmp_path, recorder, *, stages=None, generate=False):
    plan = pipeline.selected(pipeline.plan(NEURAL, generate=generate), stages)
    return pipeline.run(plan, ["--dataset", "synthetic"], recorder, log_dir=tmp_path, mode="test",
                        out=io.StringIO())


def test_every_stage_runs_in_order_with_the_shared_arguments_last(tmp_path):
    rec = Recorder()
    status = run(tmp_path, rec, generate=True)
    assert [name for name, _ in rec.calls] == [
        "generate_events", "clean_events", "build_tables", "split", "train_popularity", "train_ease",
        "train_als", "train_markov", "train_neural multvae", "train_neural neumf", "evaluate", "recommend"]
    argv = dict(rec.calls)
    assert argv["train_neural neumf"] == ["--model", "neumf", "--dataset", "synthetic"]
    assert argv["train_ease"] == ["--dataset", "synthetic"]  # its own job, as ALS
    trained = "popularity,popularity_recent,ease,als,markov,multvae,neumf"
    assert argv["evaluate"] == ["--models", trained, "--dataset", "synthetic"]
    assert argv["recommend"] == ["--models", trained, "--dataset", "synthetic"]
    assert status.exit_code == pipeline.EXIT_OK
    written = json.loads((tmp_path / "status.json").read_text())
    assert written["exit_code"] == 0 and [s["status"] for s in written["stages"]] == ["ok"] * 12


def test_a_backfill_goes_to_the_clean_stage_alone(tmp_path):
    rec = Recorder()
    plan = pipeline.plan(NEURAL, backfill=("2026-01-05", "2026-01-07"))
    pipeline.run(plan, ["--dataset", "synthetic"], rec, log_dir=tmp_path, mode="test", out=io.StringIO())
    argv = dict(rec.calls)
    assert argv["clean_events"] == ["--backfill", "2026-01-05", "2026-01-07", "--dataset", "synthetic"]
    assert all("--backfill" not in a for name, a in rec.calls if name != "clean_events")


def test_a_failed_model_is_left_out_of_evaluation_and_serving_and_the_run_exits_3(tmp_path):
    rec = Recorder(fail={"train_ease": 1, "train_neural neumf": 1})
    status = run(tmp_path, rec)
    argv = dict(rec.calls)
    assert argv["recommend"][:2] == ["--models", "popularity,popularity_recent,als,markov,multvae"]
    assert status.exit_code == pipeline.EXIT_PARTIAL
    failed = {s.stage: s.reason for s in status.stages if s.status == "failed"}
    assert failed == {"train_ease": "exit 1: boom in train_ease", "train_neural neumf": "exit 1: boom in train_neural neumf"}


def test_a_failed_evaluation_still_publishes_but_says_so(tmp_path):
    status = run(tmp_path, Recorder(fail={"evaluate": 1}))
    assert status.exit_code == pipeline.EXIT_PARTIAL and status.stages[-1].stage == "recommend"


def test_a_failed_required_stage_ends_the_run_with_nothing_published(tmp_path):
    rec = Recorder(fail={"train_popularity": 1})
    status = run(tmp_path, rec)
    assert [name for name, _ in rec.calls][-1] == "train_popularity"
    assert status.exit_code == pipeline.EXIT_NOTHING_PUBLISHED
    assert "nothing published" in json.loads((tmp_path / "status.json").read_text())["outcome"]


def test_a_config_error_in_a_required_stage_exits_2(tmp_path):
    status = run(tmp_path, Recorder(fail={"clean_events": 2}))
    assert status.exit_code == pipeline.EXIT_CONFIG and len(status.stages) == 1


def test_a_refused_publication_is_nothing_published(tmp_path):
    # recommend's own 3 (quality gate) must not read as the run's 3 ("published, some failed").
    status = run(tmp_path, Recorder(fail={"recommend": 3}))
    assert status.exit_code == pipeline.EXIT_NOTHING_PUBLISHED


def test_selected_stages_run_alone_and_serve_every_model_on_disk(tmp_path):
    rec = Recorder()
    status = run(tmp_path, rec, stages="train_neural evaluate recommend")
    assert [name for name, _ in rec.calls] == ["train_neural multvae", "train_neural neumf", "evaluate", "recommend"]
    assert dict(rec.calls)["recommend"][:2] == ["--models", "multvae,neumf"]
    rec = Recorder()
    run(tmp_path, rec, stages="evaluate recommend")
    assert dict(rec.calls)["recommend"] == ["--dataset", "synthetic"]  # trained nothing: every model on disk
    assert status.exit_code == pipeline.EXIT_OK


def test_a_selection_without_recommend_does_not_claim_to_publish(tmp_path):
    status = run(tmp_path, Recorder(), stages="clean_events build_tables")
    assert status.exit_code == pipeline.EXIT_OK and "nothing to publish" in status.outcome


def test_failure_reasons_are_one_line_naming_the_error():
    log = ("WARNING something noisy\nTraceback (most recent call last):\n  File \"x\", line 1\n"
           "recsys_spark.memory.MemoryBudgetError: EASE on 600 items needs 4 MiB; raise spark.driver_python_memory\n")
    assert pipeline.reason_from_log(log).startswith("recsys_spark.memory.MemoryBudgetError: EASE on 600 items")
    assert pipeline.reason_from_log("config error: split.protocol: 'sideways' is not one of ...\n").startswith(
        "config error: split.protocol")
    assert pipeline.reason_from_log("all fine\n") is None

    class Py4JLike(Exception):
        pass

    exc = Py4JLike("An error occurred while calling o42.collect.\n: java.lang.OutOfMemoryError: Java heap space\n"
                   "\tat java.base/...")
    assert pipeline.reason_from_exception(exc).endswith("Py4JLike: java.lang.OutOfMemoryError: Java heap space")
    assert pipeline.reason_from_exception(ValueError("bad\nmore")) == "builtins.ValueError: bad"


def test_a_log_handler_made_in_one_stage_writes_to_the_stage_running_now(tmp_path):
    """pyspark's TorchDistributor logger makes its handler on the first neural stage's stderr; in one
    driver the next neural stage's lines must reach that stage's log, not an earlier stage's closed file."""
    jobs = tmp_path / "jobs"
    jobs.mkdir()
    (jobs / "first.py").write_text(
        "import logging, sys\n"
        "def main(argv):\n"
        "    log = logging.getLogger('made_in_first')\n"
        "    log.addHandler(logging.StreamHandler())  # holds the sys.stderr of this stage\n"
        "    log.warning('from the first stage')\n")
    (jobs / "second.py").write_text(
        "import logging\n"
        "def main(argv):\n"
        "    logging.getLogger('made_in_first').warning('from the second stage')\n")
    runner = pipeline.in_driver_runner(jobs)
    first, second = pipeline.Stage("first", "first"), pipeline.Stage("second", "second")
    assert runner(first, [], tmp_path / "first.log")[0] == 0
    assert runner(second, [], tmp_path / "second.log")[0] == 0
    assert (tmp_path / "first.log").read_text() == "from the first stage\n"
    assert (tmp_path / "second.log").read_text() == "from the second stage\n"  # no "--- Logging error ---"
