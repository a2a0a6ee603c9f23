"""The lost-executors watchdog (recsys_spark/watchdog.py) without a cluster: its decision fed
executor counts and a clock, the thread on a fake SparkContext, the job's error it becomes
(cli.job_main) and the night it ends (pipeline.run). The real thing, a worker killed under a
running night, is tests/test_worker_fault.py."""
from __future__ import annotations

import io
import json
import time

import pytest

from recsys_spark import pipeline, watchdog
from recsys_spark.cli import job_main
from recsys_spark.config import load_config


def test_gives_up_only_after_the_timeout_without_executors_while_a_job_runs():
    t, since = 0.0, None
    # An executor, or no job: nothing to wait for, whatever the time.
    for executors, running in [(2, True), (0, False), (1, True)]:
        since, give_up = watchdog.check(since, now=t, executors=executors, jobs_running=running, timeout_s=60)
        assert (since, give_up) == (None, False)
        t += 100
    # The worker dies under a job: the clock starts at the first look without executors.
    since, give_up = watchdog.check(None, now=1000, executors=0, jobs_running=True, timeout_s=60)
    assert (since, give_up) == (1000, False)
    since, give_up = watchdog.check(since, now=1059, executors=0, jobs_running=True, timeout_s=60)
    assert (since, give_up) == (1000, False)
    since, give_up = watchdog.check(since, now=1060, executors=0, jobs_running=True, timeout_s=60)
    assert (since, give_up) == (None, True)  # and the next job gets its own 60 s


def test_an_executor_coming_back_resets_the_clock():
    since, _ = watchdog.check(None, now=0, executors=0, jobs_running=True, timeout_s=60)
    since, _ = watchdog.check(since, now=50, executors=0, jobs_running=True, timeout_s=60)
    since, give_up = watchdog.check(since, now=55, executors=1, jobs_running=True, timeout_s=60)  # the restarted worker
    assert (since, give_up) == (None, False)
    since, give_up = watchdog.check(since, now=70, executors=0, jobs_running=True, timeout_s=60)  # lost again
    assert (since, give_up) == (70, False)
    # A job that ended (cancelled by its own code, say) stops the clock as well.
    assert watchdog.check(since, now=200, executors=0, jobs_running=False, timeout_s=60) == (None, False)


def test_poll_interval_is_a_tenth_of_the_timeout_within_bounds():
    assert watchdog.poll_interval(180) == 5.0
    assert watchdog.poll_interval(20) == 2.0
    assert watchdog.poll_interval(1) == 0.5


class _Seq:
    def __init__(self, n):
        self.n = n

    def size(self):
        return self.n


class FakeContext:
    """The part of a SparkContext the watchdog uses: executors, active jobs, cancelling."""

    master = "spark://127.0.0.1:7077"

    def __init__(self, executors=0, jobs=(7,)):
        self.executors, self.jobs, self.cancelled, self.cancelled_all = executors, list(jobs), [], False
        self._jsc = self

    # sc._jsc.sc() -> the Scala SparkContext
    def sc(self):
        return self

    def getExecutorIds(self):
        return _Seq(self.executors)

    def statusTracker(self):
        return self

    def getActiveJobsIds(self):
        return list(self.jobs)

    def cancelJob(self, job_id, reason):
        self.cancelled.append((job_id, reason))

    def cancelAllJobs(self):
        self.cancelled_all = True


def test_the_thread_cancels_the_waiting_job_with_the_reason_and_records_it(capsys):
    sc = FakeContext(executors=0, jobs=[3, 4])
    before = watchdog.mark()
    dog = watchdog.watch(sc, 1, hint="check `scripts/cluster.sh status` and /run/worker.log")
    try:
        deadline = time.monotonic() + 20
        while not sc.cancelled_all and time.monotonic() < deadline:
            time.sleep(0.1)
    finally:
        watchdog.watch(sc, 0, hint="")  # 0: stop watching
    assert not dog.is_alive() or dog._stop_event.is_set()
    assert sc.cancelled_all
    line = watchdog.given_up_since(before)
    assert line.startswith("no executor for 1 s") and "cluster.sh status" in line and "/run/worker.log" in line
    assert sc.cancelled == [(3, line), (4, line)]
    assert line in capsys.readouterr().err


def test_the_thread_leaves_a_cluster_with_executors_alone():
    sc = FakeContext(executors=1, jobs=[1])
    before = watchdog.mark()
    watchdog.watch(sc, 1, hint="")
    try:
        time.sleep(2.5)
    finally:
        watchdog.watch(sc, 0, hint="")
    assert not sc.cancelled_all and watchdog.given_up_since(before) is None


def test_one_watchdog_per_context_and_it_ends_with_the_context():
    sc = FakeContext(executors=1, jobs=[])
    dog = watchdog.watch(sc, 30, hint="a")
    assert watchdog.watch(sc, 40, hint="b") is dog and (dog.timeout_s, dog.hint) == (40, "b")
    sc._jsc = None  # SparkContext.stop()
    dog.timeout_s = 1  # look again soon
    dog.join(10)
    assert not dog.is_alive()
    watchdog.watch(sc, 0, hint="")


def test_a_jobs_error_after_the_give_up_becomes_one_clear_line():
    @job_main
    def main(argv):
        watchdog._record("no executor for 180 s while a Spark job waited: check things")
        raise RuntimeError("py4j.protocol.Py4JJavaError: An error occurred while calling o42.parquet.\n"
                           ": org.apache.spark.SparkException: Job 3 cancelled ...")

    with pytest.raises(watchdog.ExecutorsLostError) as err:
        main([])
    reason = pipeline.reason_from_exception(err.value)
    assert reason == ("recsys_spark.watchdog.ExecutorsLostError: no executor for 180 s while a Spark job "
                      "waited: check things")
    # A later job's own errors are its own.
    @job_main
    def other(argv):
        raise RuntimeError("a bug")

    with pytest.raises(RuntimeError, match="a bug"):
        other([])


def test_the_watchdog_is_only_for_spark_masters_and_can_be_turned_off():
    from recsys_spark import session

    cfg = load_config()
    assert cfg.spark.lost_executors_timeout_s == 180
    local = FakeContext()
    local.master = "local[2]"
    session._watch_executors(local, cfg)
    assert watchdog._current is None or watchdog._current.sc is not local
    off = load_config(overrides=["spark.lost_executors_timeout_s=0"])
    sc = FakeContext(executors=1, jobs=[])
    session._watch_executors(sc, off)
    assert watchdog._current is None


def test_the_hint_names_the_local_clusters_worker_log(tmp_path, monkeypatch):
    from recsys_spark import session

    (tmp_path / "master.url").write_text("spark://127.0.0.1:7077\n")
    monkeypatch.setenv("RECSYS_CLUSTER_RUN_DIR", str(tmp_path))
    cfg = load_config()
    assert session._cluster_hint("spark://127.0.0.1:7077", cfg) == (
        f"check `scripts/cluster.sh status` and {tmp_path / 'worker.log'}")
    assert "spark://elsewhere:7077" in session._cluster_hint("spark://elsewhere:7077", cfg)


class Recorder:
    def __init__(self, lost_in):
        self.lost_in, self.calls = lost_in, []

    def __call__(self, stage, argv, log):
        self.calls.append(stage.name)
        log.write_text(stage.name)
        if stage.name == self.lost_in:
            return 1, "recsys_spark.watchdog.ExecutorsLostError: no executor for 180 s while a Spark job waited"
        return 0, None


def test_a_lost_cluster_ends_the_night_at_that_stage_with_nothing_published(tmp_path):
    # train_als is optional: a model failing for its own reasons lets the night go on, but
    # with no executor left every later stage would wait and fail the same way.
    rec = Recorder(lost_in="train_als")
    status = pipeline.run(pipeline.plan([]), ["--dataset", "synthetic"], rec, log_dir=tmp_path, mode="test",
                          out=io.StringIO())
    assert rec.calls[-1] == "train_als" and "recommend" not in rec.calls
    assert status.exit_code == pipeline.EXIT_NOTHING_PUBLISHED
    written = json.loads((tmp_path / "status.json").read_text())
    assert "lost every executor" in written["outcome"]
    assert written["stages"][-1]["reason"].startswith("exit 1: recsys_spark.watchdog.ExecutorsLostError: no executor")
