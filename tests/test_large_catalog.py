"""A catalog past EASE's default cap (~28,000 items), through the jobs that hold
catalog-wide state, with the memory settings lowered: each either fits or refuses
up front naming the setting, and what fits still serves every user. A regression
in a catalog-wide step shows here, not at night."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from recsys_spark import io
from recsys_spark.memory import MemoryBudgetError
from recsys_spark.schemas import ITEM_INDEX_TABLE, USER_INDEX_TABLE
from tests.conftest import load_job as job
from tests.conftest import run_data_stages, synthetic_job_argv

pytestmark = [pytest.mark.spark, pytest.mark.slow]

N_ITEMS = 40_000
LARGE = [
    # A flat popularity curve, so that ~28k of the 40k items draw an event from 60k.
    "synthetic.num_users=3000",
    f"synthetic.num_items={N_ITEMS}",
    "synthetic.num_events=60000",
    "synthetic.popularity_exponent=0.3",
    "synthetic.num_clusters=5",
    "synthetic.partitions=2",
    "synthetic.bot_users=0",
    "split.protocol=random",
    "evaluation.ks=[10]",
    "recommend.n=10",
    "recommend.min_coverage=0.0",
    "run_date=2026-03-02",
]


@pytest.fixture(scope="module")
def large(spark, tmp_path_factory):
    argv, _, wh = synthetic_job_argv(tmp_path_factory.mktemp("large"), LARGE)
    run_data_stages(argv, reference_time="2026-03-02T00:00:00Z")
    return dict(argv=argv, wh=wh)


def test_the_generator_makes_a_catalog_past_the_ease_cap(spark, large):
    items = io.read_table(spark, str(large["wh"]), ITEM_INDEX_TABLE).count()
    assert 20_000 < items <= N_ITEMS  # every planted item that drew an event


def test_ease_refuses_past_its_cap_and_past_a_lowered_driver_budget(large):
    with pytest.raises(MemoryBudgetError, match="above ease.max_items=20000"):
        job("train_ease").main(large["argv"])
    # Cap raised, driver budget lowered: ~3 GiB of B against 60% of 1 GiB.
    with pytest.raises(MemoryBudgetError, match=r"EASE on \d+ items .* over its budget of 614.4 MiB"):
        job("train_ease").main(large["argv"] + ["--set", "ease.max_items=50000",
                                                "--set", "spark.driver_python_memory=1g"])


def test_popularity_scores_and_serves_the_whole_catalog(spark, large):
    wh = str(large["wh"])
    job("train_baselines").main(large["argv"] + ["--models", "popularity"])
    job("recommend").main(large["argv"] + ["--models", "popularity"])
    latest = json.loads((Path(wh) / "recommendations" / "_latest.json").read_text())
    manifest = json.loads((Path(wh) / "recommendations" / f"run_date={latest['run_date']}" / "_manifest.json")
                          .read_text())
    assert manifest["model"] == "popularity"
    users = io.read_table(spark, wh, USER_INDEX_TABLE).count()
    assert manifest["counts"]["users"] == users
    assert manifest["counts"]["catalog_items"] > 20_000
