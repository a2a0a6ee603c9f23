"""A rerun of the same date resumes (recsys_spark/nightly.py, recsys_spark.nightly.Resume),
and one run at a time works on a warehouse (the lock).

The stages are replaced by a recorder that writes a file under each path the
stage's job writes, so that fingerprints, skipping and invalidation are the
real ones; the real stages resume in tests/test_nightly_run.py."""
from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time

import pytest

from recsys_spark import nightly, pipeline
from recsys_spark.config import load_config

DAY = "2026-03-02"


class Writer:
    """A stage runner that writes its stage's outputs (and fails the stages it is told to)."""

    def __init__(self, cfg, fail: set[str] | None = None):
        self.cfg, self.fail, self.calls = cfg, set(fail or ()), []

    def __call__(self, stage, argv, log):
        self.calls.append((stage.name, argv))
        log.write_text(stage.name)
        if stage.name in self.fail:
            return 1, f"boom in {stage.name}"
        _, outputs = nightly.stage_paths(stage.job, stage.args, self.cfg, DAY, stage.models)
        for path in outputs:
            os.makedirs(path, exist_ok=True)
            with open(os.path.join(path, f"part-{time.time_ns()}"), "w") as f:
                f.write(stage.name)
        return 0, None, {"rows": 7, "nested": {"left": "out"}}


@pytest.fixture
def night(tmp_path):
    source = tmp_path / "raw"
    source.mkdir()
    (source / "events.json").write_text("{}\n")
    wh = tmp_path / "wh"
    args = ["--dataset", "synthetic", "--warehouse", str(wh), "--set", f"dataset.source.path={source}",
            "--set", f"run_date={DAY}"]
    cfg = load_config(dataset="synthetic", overrides=[f"warehouse={wh}", f"dataset.source.path={source}",
                                                      f"run_date={DAY}"])
    return {"tmp": tmp_path, "wh": wh, "source": source, "args": args, "cfg": cfg}


def run_night(night, writer, *, from_stage=None, force=False):
    stages = pipeline.plan(["neumf"])
    args, resume, lock = nightly.prepare(night["args"], from_stage=from_stage, force=force)
    assert resume is not None and args == night["args"]  # the run date was given: nothing pinned
    with lock:
        return pipeline.run(stages, args, writer, log_dir=night["tmp"] / "logs", mode="test",
                            out=io.StringIO(), resume=resume)


def ran(status):
    return [s.stage for s in status.stages if s.status != "skipped"]


def test_a_rerun_skips_what_succeeded_and_runs_what_failed(night):
    first = run_night(night, Writer(night["cfg"], fail={"train_als"}))
    assert first.exit_code == pipeline.EXIT_PARTIAL
    manifest = json.loads(open(nightly.io.run_manifest_path(str(night["wh"]), DAY)).read())
    entry = manifest["stages"]["split"]
    assert entry["status"] == "ok" and entry["report"] == {"rows": 7}  # the job's counts, not its detail
    assert set(entry["inputs"]) == {nightly.io.table_path(str(night["wh"]), "interactions")}
    assert manifest["stages"]["train_als"]["status"] == "failed" and manifest["runs"][0]["exit_code"] == 3

    writer = Writer(night["cfg"])
    second = run_night(night, writer)
    # Only ALS ran again; evaluate and recommend read the models folder ALS wrote, so they ran too.
    assert ran(second) == ["train_als", "evaluate", "recommend"], second.stages
    assert second.exit_code == pipeline.EXIT_OK
    # The skipped stages' models are still this run's models.
    assert dict(writer.calls)["recommend"][:2] == ["--models", "popularity,popularity_recent,ease,als,markov,neumf"]

    third = run_night(night, Writer(night["cfg"]))
    assert ran(third) == [] and third.exit_code == pipeline.EXIT_OK
    assert len(json.loads(open(nightly.io.run_manifest_path(str(night["wh"]), DAY)).read())["runs"]) == 3


def test_a_changed_input_reruns_its_stage_and_everything_after_it(night):
    run_night(night, Writer(night["cfg"]))
    (night["source"] / "late.json").write_text("{}\n")  # a late file in the raw log
    again = run_night(night, Writer(night["cfg"]))
    assert ran(again)[0] == "clean_events" and ran(again)[-1] == "recommend"
    assert len(ran(again)) == len(again.stages)


@pytest.mark.parametrize("model", ["ease", "als"])  # ALS's stage names no model in its arguments
def test_a_deleted_output_reruns_its_stage(night, model):
    run_night(night, Writer(night["cfg"]))
    import shutil

    shutil.rmtree(nightly.io.model_dir(str(night["wh"]), model))
    again = run_night(night, Writer(night["cfg"]))
    assert ran(again) == [f"train_{model}", "evaluate", "recommend"]


def test_from_and_force(night):
    run_night(night, Writer(night["cfg"]))
    assert ran(run_night(night, Writer(night["cfg"]), from_stage="evaluate")) == ["evaluate", "recommend"]
    assert len(ran(run_night(night, Writer(night["cfg"]), force=True))) == len(pipeline.plan(["neumf"]))


def test_a_changed_setting_reruns_every_stage(night):
    run_night(night, Writer(night["cfg"]))
    night["args"] += ["--set", "als.max_iters=[3]"]
    assert len(ran(run_night(night, Writer(night["cfg"])))) == len(pipeline.plan(["neumf"]))


def test_the_run_date_is_pinned_for_every_stage_when_not_given(night):
    args = [a for a in night["args"] if a != f"run_date={DAY}"]
    args = [a for i, a in enumerate(args) if not (a == "--set" and i == len(args) - 1)]
    pinned, resume, _ = nightly.prepare(args, from_stage=None, force=False)
    assert pinned[-2] == "--set" and pinned[-1].startswith("run_date=") and resume.manifest.run_date in pinned[-1]


def test_a_config_that_does_not_load_runs_without_resuming(night):
    args, resume, lock = nightly.prepare([*night["args"], "--set", "split.protocol=sideways"],
                                         from_stage=None, force=False)
    assert resume is None and lock is None  # the first stage fails naming the key (test_nightly_run)


def test_a_live_lock_refuses_a_second_run_and_a_dead_ones_is_replaced(night):
    lock = nightly.Lock.for_warehouse(str(night["wh"]), DAY).acquire()
    try:
        with pytest.raises(nightly.LockHeld, match=rf"pid {os.getpid()}"):
            nightly.Lock.for_warehouse(str(night["wh"]), DAY).acquire()
    finally:
        lock.release()
    # A lock left by a process that is gone: reported (Lock.replaced) and taken over, not waited on.
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    path = nightly.io.run_lock_path(str(night["wh"]))
    with open(path, "w") as f:
        json.dump({"host": __import__("socket").gethostname(), "pid": int(dead.stdout), "run_date": DAY}, f)
    started = time.monotonic()
    taken = nightly.Lock.for_warehouse(str(night["wh"]), DAY).acquire()
    assert taken.replaced["pid"] == int(dead.stdout) and time.monotonic() - started < 5
    assert json.load(open(path))["pid"] == os.getpid()
    taken.release()
    assert not os.path.exists(path)


def test_the_pipeline_job_exits_4_while_another_run_holds_the_lock(night, monkeypatch):
    from tests.conftest import load_job

    lock = nightly.Lock.for_warehouse(str(night["wh"]), DAY).acquire()
    monkeypatch.setenv("RECSYS_LOG_DIR", str(night["tmp"] / "logs"))
    monkeypatch.setenv("RECSYS_MODELS", "")
    try:
        code = load_job("pipeline").main(night["args"])
    finally:
        lock.release()
    status = json.loads((night["tmp"] / "logs" / "status.json").read_text())
    assert code == pipeline.EXIT_LOCKED == status["exit_code"] and status["stages"] == []
    assert "lock" in status["outcome"] and str(os.getpid()) in status["outcome"]


def test_local_paths_are_told_from_remote_ones_by_one_rule():
    """The lock (O_EXCL on a local path) and Derby's metastore (a local directory) ask io alike."""
    for path in ("wh", "/abs/wh", "file:///abs/wh", "file:/abs/wh"):
        assert nightly.io.is_local_path(path), path
    for path in ("hdfs://nn:8020/wh", "s3a://bucket/wh"):
        assert not nightly.io.is_local_path(path), path
    assert nightly.io.metastore_dir("file:///abs/wh/", fallback="ms") == "/abs/wh/_metastore"
    assert nightly.io.metastore_dir("s3a://bucket/wh", fallback="run/ms") == os.path.abspath("run/ms")
