"""recsys_spark/train/shared_launch.py without Spark or torch: which models a night's shared
launch of the training processes plans, which it leaves to their own launch, and what a
failed shared launch leaves (nothing: every model then trains alone). The real launch, with
the models it trains equal to their own launch's: tests/test_neural_fit.py."""
from __future__ import annotations

import io

import pytest

from recsys_spark import pipeline
from recsys_spark.train import shared_launch


class Prepared:
    def __init__(self, name):
        self.name, self.deleted = name, False

    def delete(self):
        self.deleted = True

    def seconds_in_epochs(self, result):
        return 1.0


def run_shared(models, *, refuse=(), settings=None, fail_launch=False, fatal=lambda exc: False, made=None):
    made, launched = {} if made is None else made, []

    def prepare(name):
        if name in refuse:
            raise MemoryError(f"{name} does not fit\nmore detail")
        made[name] = Prepared(name)
        return ("key", name), made[name], (settings or {}).get(name, (2, False, 1))

    def launch(prepared):
        launched.append([p.name for p in prepared])
        if fail_launch:
            raise RuntimeError("rank 1 of 2 killed by SIGKILL")
        return [f"result of {p.name}" for p in prepared]

    shared = shared_launch.SharedLaunch(list(models))
    lines = []
    shared_launch.run(shared, prepare, launch, lambda p, r, s: (r, s), stage_model=models[0],
                      log=lines.append, fatal=fatal)
    return shared, made, launched, lines


def test_every_planned_model_trains_in_one_launch_and_its_result_is_taken_once():
    shared, made, launched, _ = run_shared(["a", "b", "c"])
    assert launched == [["a", "b", "c"]] and shared.attempted and shared.failure is None
    assert shared.take(("key", "b"))[0] == "result of b"
    assert shared.take(("key", "b")) is None  # taken once
    assert all(p.deleted for p in made.values())  # the examples go once the launch is over
    assert not shared.wants("c")  # one attempt per night


def test_a_model_that_cannot_be_prepared_or_launched_alike_is_left_to_its_own_launch():
    shared, made, launched, lines = run_shared(
        ["a", "b", "c", "d"], refuse={"b"}, settings={"d": (1, False, 2)})
    assert launched == [["a", "c"]]
    assert shared.left_out["b"] == "MemoryError: b does not fit"  # its own stage raises it in full
    assert "differ" in shared.left_out["d"] and made["d"].deleted
    assert shared.take(("key", "b")) is None and shared.take(("key", "d")) is None
    assert shared.take(("key", "c")) is not None
    assert any("'b' trains in its own launch" in line for line in lines)


def test_a_failed_shared_launch_keeps_nothing_so_every_model_trains_alone():
    shared, made, launched, lines = run_shared(["a", "b"], fail_launch=True)
    assert launched == [["a", "b"]] and shared.failure == "RuntimeError: rank 1 of 2 killed by SIGKILL"
    assert shared.trained == {} and all(p.deleted for p in made.values())
    assert any("each model trains in its own launch" in line for line in lines)


def test_a_cluster_without_executors_fails_the_stage_instead_of_a_launch_per_model():
    made = {}
    with pytest.raises(RuntimeError, match="SIGKILL"):
        run_shared(["a", "b"], fail_launch=True, fatal=lambda exc: True, made=made)
    assert len(made) == 2 and all(p.deleted for p in made.values())


def test_one_model_alone_is_no_shared_launch():
    assert not shared_launch.SharedLaunch(["a"]).wants("a")
    shared, _, launched, _ = run_shared(["a", "b"], refuse={"b"})
    assert launched == [] and shared.trained == {}


class Watcher:
    """A stage runner that records what the night planned to share when each stage ran."""

    def __init__(self):
        self.seen = {}

    def __call__(self, stage, argv, log):
        shared = shared_launch.current()
        self.seen[stage.name] = None if shared is None else list(shared.models)
        log.write_text("")
        return 0, None


@pytest.mark.parametrize("share", [True, False])
def test_the_night_plans_its_neural_stages_and_only_in_one_driver(tmp_path, share):
    watcher = Watcher()
    plan = pipeline.plan(["multvae", "neumf", "sasrec"])
    pipeline.run(plan, ["--dataset", "synthetic"], watcher, log_dir=tmp_path, mode="test", out=io.StringIO(),
                 share_launch=share)
    expected = ["multvae", "neumf", "sasrec"] if share else None
    assert all(watcher.seen[f"train_neural {m}"] == expected for m in ("multvae", "neumf", "sasrec"))
    assert watcher.seen["train_als"] is None  # planned at the first neural stage, not before
    assert shared_launch.current() is None  # and over with the run


class SkipsTheFirst:
    """A resume that skips the first neural model's stage (done earlier, inputs unchanged)."""

    from_stage = None

    def inputs(self, stage):
        return {}

    def skip_reason(self, stage, argv, inputs, *, before_from):
        return "done" if stage.name == "train_neural multvae" else None

    def succeeded_before(self, stage):
        return True

    def record(self, *args, **kwargs):
        pass

    def finish_run(self, **kwargs):
        pass


def test_a_resumed_night_shares_the_launch_among_the_stages_it_runs(tmp_path):
    watcher = Watcher()
    plan = [s for s in pipeline.plan(["multvae", "neumf", "sasrec"]) if s.job == "train_neural"]
    pipeline.run(plan, ["--dataset", "synthetic"], watcher, log_dir=tmp_path, mode="test", out=io.StringIO(),
                 share_launch=True, resume=SkipsTheFirst())
    assert watcher.seen == {"train_neural neumf": ["neumf", "sasrec"], "train_neural sasrec": ["neumf", "sasrec"]}
