"""The first-order Markov baseline: transition counts by hand, the popularity back-off,
the last-item scorer's formula, and its model folder's round trip."""
from __future__ import annotations

import datetime as dt

import numpy as np
import pandas as pd
import pytest

from recsys_spark.config import load_config
from recsys_spark.models import artifacts, fitted, markov, registry
from recsys_spark.schemas import SEEN

T0 = dt.datetime(2026, 1, 1)
N_ITEMS = 6

# (user, item, minute). User 1 has items 1 and 3 at the same minute: the tie goes to
# the lower index first (1 then 3), as in tables.user_histories and the leave_last_n split.
# User 3's only item, 4, starts and ends no transition; item 5 is in no row.
LOG = [
    (0, 0, 0), (0, 1, 1), (0, 2, 2),
    (1, 3, 5), (1, 1, 5), (1, 0, 1),
    (2, 2, 9), (2, 1, 3),
    (3, 4, 0),
]
# Counted by hand from LOG: user 0: 0->1, 1->2; user 1: 0->1, 1->3; user 2: 1->2.
COUNTS = {(0, 1): 2, (1, 2): 2, (1, 3): 1}
SOURCE_COUNTS = {0: 2, 1: 3}
USERS_PER_ITEM = np.array([2, 3, 2, 1, 1, 0], dtype=float)  # distinct users of items 0..5


def log(spark):
    rows = [(u, i, 1.0, T0 + dt.timedelta(minutes=m)) for u, i, m in LOG]
    return spark.createDataFrame(rows, "user_index int, item_index int, weight float, last_time timestamp")


def cfg(**markov):
    return load_config(overrides=[f"markov.{k}={v}" for k, v in markov.items()])


@pytest.mark.spark
def test_transition_counts_equal_the_hand_counted_ones(spark):
    got = {(r.item_index, r.next_item_index): r["count"] for r in markov.transition_counts(log(spark)).collect()}
    assert got == COUNTS
    # The top-1 cut keeps each source's most frequent next item (1 -> 2 over 1 -> 3), and
    # the source's count over all its transitions.
    kept = markov.top_transitions(markov.transition_counts(log(spark)), max_next_items=1).collect()
    assert {(r.item_index, r.next_item_index, r["count"], r.source_count) for r in kept} == {
        (0, 1, 2, 2), (1, 2, 2, 3)}


@pytest.mark.spark
def test_scores_are_smoothed_transition_probabilities(spark):
    a = 0.5
    model = markov.fit_markov_model(spark, "markov", log(spark), n_items=N_ITEMS, cfg=cfg(backoff=a))
    assert model.kind == artifacts.KIND_LAST_ITEM and model.min_history == 1
    pop = USERS_PER_ITEM / USERS_PER_ITEM.sum()
    # The state is the LAST item of the time-ordered history, whatever came before it.
    scores = model.scorer.score(pd.DataFrame({SEEN: [[4, 2, 0, 1], [1, 0]]})).numpy()
    want = np.array([[(COUNTS.get((src, j), 0) + a * pop[j]) / (SOURCE_COUNTS[src] + a) for j in range(N_ITEMS)]
                     for src in (1, 0)])
    np.testing.assert_allclose(scores, want, rtol=1e-6)
    assert scores[0].argmax() == 2 and scores[1].argmax() == 1


@pytest.mark.spark
def test_a_last_item_without_transitions_backs_off_to_popularity(spark):
    model = markov.fit_markov_model(spark, "markov", log(spark), n_items=N_ITEMS, cfg=cfg())
    pop = USERS_PER_ITEM / USERS_PER_ITEM.sum()
    # 3 and 4 start no transition; 9 was indexed after training; the last user has no history.
    scores = model.scorer.score(pd.DataFrame({SEEN: [[0, 3], [4], [9], []]})).numpy()
    for row in scores:
        np.testing.assert_allclose(row, pop, rtol=1e-6)
    order = np.argsort(-scores[0], kind="stable")
    assert order.tolist() == [1, 0, 2, 3, 4, 5]  # by popularity (ties: lower index)


@pytest.mark.spark
def test_the_model_folder_round_trips(spark, tmp_path):
    wh = str(tmp_path / "wh")
    model = markov.fit_markov_model(spark, "markov", log(spark), n_items=N_ITEMS, cfg=cfg(max_next_items=1))
    model.save(spark, wh, config={}, n_users=4, n_items=N_ITEMS)
    loaded = fitted.load(spark, wh, "markov")
    assert loaded.kind == artifacts.KIND_LAST_ITEM and loaded.params == {"max_next_items": 1, "backoff": 1.0}
    for key in ("indptr", "indices", "values", "source_weight", "backoff"):
        np.testing.assert_array_equal(loaded.scorer.arrays[key], model.scorer.arrays[key])
    batch = pd.DataFrame({SEEN: [[0], [0, 1], [3]]})
    np.testing.assert_array_equal(loaded.scorer.score(batch).numpy(), model.scorer.score(batch).numpy())
    # With one next item kept per source, 1 -> 3 is gone: only the back-off scores item 3 after item 1.
    assert loaded.scorer.arrays["indices"].tolist() == [1, 2]


def test_markov_is_a_registered_family_fitted_by_train_baselines():
    family = next(f for f in registry.families() if f.name == "markov")
    assert (family.stage, family.job, family.models) == ("train_markov", "train_baselines", ("markov",))
    assert registry.baseline_fit("markov") is markov.fit_markov_model
