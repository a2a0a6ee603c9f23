"""Partial reruns with RECSYS_STAGES (recsys_spark/pipeline.py ``selected``, jobs/pipeline.py):
what tests/test_run_plan.py does not cover. The stages are a recorder, never the real jobs."""
from __future__ import annotations

import io
import json

import pytest

from tests.conftest import load_job
from tests.test_run_plan import NEURAL, Recorder
from recsys_spark import pipeline


def _names(stages):
    return [s.name for s in stages]


def test_a_selection_keeps_plan_order_whatever_order_or_repeats_it_is_given_in():
    plan = pipeline.plan(NEURAL)
    assert _names(pipeline.selected(plan, "recommend  split\tsplit train_als")) == ["split", "train_als", "recommend"]
    # The first word selects every stage it begins: both neural models.
    assert _names(pipeline.selected(plan, "train_neural")) == ["train_neural multvae", "train_neural neumf"]
    assert pipeline.selected(plan, None) == pipeline.selected(plan, "  ") == plan


@pytest.mark.parametrize("wanted, unknown", [
    ("split trian_als evaluate", "trian_als"),  # a typo
    ("train_neural neumf", "neumf"),  # a stage's full name instead of its first word
    ("generate_events clean_events", "generate_events"),  # not in a run without RECSYS_GENERATE=1
])
def test_a_name_that_is_no_stage_of_the_run_is_refused_naming_it_and_the_stages(wanted, unknown):
    with pytest.raises(ValueError) as err:
        pipeline.selected(pipeline.plan(NEURAL), wanted)
    message = str(err.value)
    assert f"RECSYS_STAGES names no stage of this run: {unknown} " in message, message
    assert "(its stages: clean_events build_tables split train_popularity train_ease train_als train_markov " \
           "train_neural evaluate recommend)" in message, message


def test_a_selected_stage_that_fails_is_recorded_and_the_others_selected_still_run(tmp_path):
    rec = Recorder(fail={"train_als": 1})
    status = pipeline.run(pipeline.selected(pipeline.plan(NEURAL), "train_als train_ease recommend"),
                          ["--dataset", "synthetic"], rec, log_dir=tmp_path, mode="test", out=io.StringIO())
    assert [name for name, _ in rec.calls] == ["train_ease", "train_als", "recommend"]
    # recommend chooses among what this run trained: EASE, not the ALS that failed.
    assert dict(rec.calls)["recommend"][:2] == ["--models", "ease"]
    assert status.exit_code == pipeline.EXIT_PARTIAL
    written = json.loads((tmp_path / "status.json").read_text())
    assert [(s["stage"], s["status"]) for s in written["stages"]] == [
        ("train_ease", "ok"), ("train_als", "failed"), ("recommend", "ok")]


def test_the_pipeline_job_refuses_an_unknown_stage_with_exit_2_before_running_anything(tmp_path, monkeypatch,
                                                                                       capsys):
    rec = Recorder()
    monkeypatch.setattr(pipeline, "in_driver_runner", lambda jobs_dir: rec)
    monkeypatch.setenv("RECSYS_LOG_DIR", str(tmp_path))
    monkeypatch.setenv("RECSYS_MODELS", "")
    monkeypatch.delenv("RECSYS_ISOLATED", raising=False)
    monkeypatch.delenv("RECSYS_GENERATE", raising=False)
    monkeypatch.setenv("RECSYS_STAGES", "split evalute recommend")
    assert load_job("pipeline").main(["--dataset", "synthetic", "--warehouse", str(tmp_path / "wh")]) == pipeline.EXIT_CONFIG
    assert rec.calls == []
    status = json.loads((tmp_path / "status.json").read_text())
    assert status["exit_code"] == 2 and status["stages"] == []
    assert "RECSYS_STAGES names no stage of this run: evalute" in status["outcome"]
    assert "evalute" in capsys.readouterr().err

    # The same run with the name spelt right runs exactly the stages named.
    monkeypatch.setenv("RECSYS_STAGES", "split evaluate recommend")
    assert load_job("pipeline").main(["--dataset", "synthetic", "--warehouse", str(tmp_path / "wh")]) == pipeline.EXIT_OK
    assert [name for name, _ in rec.calls] == ["split", "evaluate", "recommend"]
