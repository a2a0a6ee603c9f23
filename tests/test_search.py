"""The neural models' settings search (recsys_spark/train/search.py): Optuna's trials through
the trainer's own loop on planted data, the best trial chosen, a clearly worse curve pruned,
and the plan read from config (keys checked, configured values always a candidate)."""
from __future__ import annotations

import pytest

from recsys_spark.config import load_config
from recsys_spark.errors import UserError
from recsys_spark.train import loop, search
from tests.test_trainer import N_USERS, N_ITEMS, TinyMF, counts_of, pair_tensors, planted, validation_of


def _plan(**kw) -> search.SearchPlan:
    base = dict(model="tiny_mf", trials=3, minutes=60.0, startup_trials=1, warmup_epochs=1, seed=7,
                space={"learning_rate": {"choices": [0.05, 1e-6], "low": None, "high": None, "log": False,
                                         "integer": False}},
                configured={"learning_rate": 0.05}, model_keys=[])
    return search.SearchPlan(**{**base, **kw})


def _fit_on_planted(settings: loop.TrainSettings):
    train, held = planted()
    tensors, val, counts = pair_tensors(train), validation_of(train, held), counts_of(train)
    calls = []

    def fit(values, should_prune):
        params, trainer = plan.split(values)
        calls.append(values)
        import dataclasses

        return loop.train(TinyMF.build(n_users=N_USERS, n_items=N_ITEMS, params=params),
                          loop.tensor_loader_factory(tensors, batch_size=32, seed=1),
                          dataclasses.replace(settings, **trainer), item_counts=counts, validation=val,
                          device="cpu", log=lambda line: None, should_prune=should_prune)

    plan = _plan()
    return plan, fit, calls


def test_a_three_trial_search_keeps_the_best_trial_and_prunes_a_clearly_worse_curve():
    """Trial 0 is the configured learning rate (it learns the planted groups); a rate of 1e-6
    leaves the model at its random start, far below trial 0's curve from the first epoch:
    the median pruner stops it after the warm-up epoch, long before its 6 epochs."""
    settings = loop.TrainSettings(epochs=6, patience=10, learning_rate=0.05, negatives_per_positive=4, seed=3,
                                  metric="ndcg_at_5")
    plan, fit, calls = _fit_on_planted(settings)
    best = search.run(plan, fit, rank=0, broadcast=lambda obj: obj, log=lambda line: None)

    trials = best["search"]["trials"]
    assert len(trials) == len(calls) == 3
    assert trials[0]["values"] == {"learning_rate": 0.05} and not trials[0]["pruned"]
    complete = [t for t in trials if not t["pruned"]]
    chosen = max(complete, key=lambda t: t["best_metric"])
    assert best["search"]["chosen"] == chosen["values"] and best["search"]["chosen_trial"] == chosen["trial"]
    assert best["best_metric"] == chosen["best_metric"]  # the returned weights are the chosen trial's
    slow = [t for t in trials if t["values"]["learning_rate"] == 1e-6]
    assert slow, "seeded sampler: at least one of trials 1-2 draws the slow rate"
    for t in slow:
        assert t["pruned"] and t["epochs_run"] < settings.epochs, t
        assert t["best_metric"] < trials[0]["best_metric"] - 0.2, t
    assert best["search"]["pruned"] == len(slow)


def test_the_minutes_budget_stops_new_trials_and_trial_zero_always_runs():
    settings = loop.TrainSettings(epochs=2, patience=10, learning_rate=0.05, seed=3, metric="ndcg_at_5")
    _, fit, calls = _fit_on_planted(settings)
    best = search.run(_plan(trials=5, minutes=1e-9), fit, rank=0, broadcast=lambda obj: obj, log=lambda line: None)
    assert len(calls) == 1 and best["search"]["chosen_trial"] == 0


def test_plan_from_config_routes_keys_and_keeps_the_configured_values_as_candidates():
    from recsys_spark.models import registry

    cfg = load_config(overrides=["neural.learning_rate=0.05", "neural.models={neumf: {embedding_dim: 24}}"])
    cls = registry.get("neumf")
    plan = search.plan_for(cfg.for_neural_model("neumf"), "neumf", cls, cfg.neural.models["neumf"])
    assert set(plan.model_keys) == {"embedding_dim", "mlp_layers"}
    assert plan.configured["learning_rate"] == 0.05 and plan.configured["embedding_dim"] == 24
    assert plan.space["learning_rate"]["high"] == 0.05  # widened to hold the configured rate
    assert 24 in plan.space["embedding_dim"]["choices"]
    params, trainer = plan.split({"embedding_dim": 64, "learning_rate": 0.001, "negatives_per_positive": 8})
    assert params == {"embedding_dim": 64} and trainer == {"learning_rate": 0.001, "negatives_per_positive": 8}
    # The memory check sizes the largest model a trial may build.
    assert search.largest(plan, {"embedding_dim": 24})["embedding_dim"] == 64
    assert search.largest(plan, {})["mlp_layers"] == [128, 64, 32]

    assert search.plan_for(load_config(overrides=["neural.search.trials=1"]), "neumf", cls, {}) is None
    bad = load_config(overrides=["neural.search.space={neumf: {hidden: {choices: [1, 2]}}}"])
    with pytest.raises(UserError, match=r"neural\.search\.space\.neumf\.hidden: 'hidden' is neither"):
        search.plan_for(bad, "neumf", cls, {})


@pytest.mark.parametrize("dim, fragment", [
    ("{low: 1.0}", "both low and high"),
    ("{low: 2.0, high: 1.0}", "above high"),
    ("{choices: [1], low: 0.0, high: 1.0}", "not both"),
    ("{low: 0.0, high: 1.0, log: true}", "log range needs low > 0"),
])
def test_a_malformed_search_dimension_is_refused_at_load(dim, fragment):
    from recsys_spark.config import ConfigError

    with pytest.raises(ConfigError, match=fragment):
        load_config(overrides=[f"neural.search.space={{neumf: {{learning_rate: {dim}}}}}"])


def test_a_dimension_set_later_replaces_the_files_whole():
    """A dimension is one setting: {choices: [...]} over the file's {low, high, log} is not a mix of both."""
    cfg = load_config(overrides=["neural.search.space.neumf.learning_rate={choices: [0.001, 0.003]}"])
    dim = cfg.neural.search.space["neumf"]["learning_rate"]
    assert dim.choices == [0.001, 0.003] and dim.low is None and dim.high is None
    assert "embedding_dim" in cfg.neural.search.space["neumf"]  # the model's other dimensions stay
