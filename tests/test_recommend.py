"""Serving: validation rules, the quality gate, MMR and explanations, and the
recommend job end to end on a tiny warehouse built by the real jobs (publish,
idempotent re-run, a failure before publish, exclusion list, cold start, --force), and a model
family added by one registration line, from the night's plan to the published run."""
from __future__ import annotations

import datetime as dt
import json
import math
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.conftest import load_job
from recsys_spark import io, pipeline
from recsys_spark.models import fitted, registry
from recsys_spark.scoring import scorers
from recsys_spark.serve import checks, errors, publish, recommend, rerank, select
from recsys_spark.schemas import EVENTS_CLEAN, INTERACTIONS, ITEM_INDEX_TABLE, RECOMMENDATIONS, USER_INDEX_TABLE

T0 = dt.datetime(2026, 1, 1)
DAY1, DAY2 = "2026-02-01", "2026-02-02"
N = 5
MIN_HISTORY = 4


# --------------------------------------------------------------------------- pure parts


def test_mmr_keeps_order_at_lambda_one_and_diversifies_below():
    # Candidates 0 and 1 are near-duplicates; 2 is different but scored lower.
    rel = np.array([[0.9, 0.85, 0.5, 0.1]])
    vectors = rerank.normalise_rows(np.array([[1, 0], [0.99, 0.05], [0, 1], [0.7, 0.7]]))
    sim = rerank.cosine_similarity(vectors)[None]
    assert rerank.mmr_rerank(rel, sim, lam=1.0, n=3).tolist() == [[0, 1, 2]]
    # lam 0.5, step 2: candidate 1 scores 0.5*0.94 - 0.5*0.9987 < 0, candidate 2 scores 0.5*0.5 - 0 > 0.
    assert rerank.mmr_rerank(rel, sim, lam=0.5, n=3).tolist()[0][:2] == [0, 2]


def test_mmr_pads_short_rows_and_jaccard_similarity():
    genres = np.array([[1, 1, 0], [1, 0, 0], [0, 0, 0]], dtype=np.float32)
    jac = rerank.jaccard_similarity(genres)
    np.testing.assert_allclose(jac, [[1, 0.5, 0], [0.5, 1, 0], [0, 0, 0]])
    rel = np.array([[3.0, 2.0, np.nan], [1.0, 1.0, 1.0]])
    order = rerank.mmr_rerank(rel, np.stack([jac, jac]), lam=0.7, n=3)
    assert order[0].tolist() == [0, 1, -1]  # two candidates only
    assert sorted(order[1].tolist()) == [0, 1, 2]


def test_explain_picks_most_similar_history_item_never_itself():
    unit = rerank.normalise_rows(np.array([[1, 0], [0, 1], [0.9, 0.1], [0.1, 0.9], [0, 0]], dtype=np.float32))
    # history [0, 1]: item 2 is closest to 0, item 3 to 1; item 0 (in history) is explained by 1, not itself.
    assert rerank.explain(np.array([2, 3, 0]), np.array([0, 1]), unit).tolist() == [0, 1, 1]
    # item 4 has no vector: it explains nothing and is explained by nothing
    assert rerank.explain(np.array([2, 4]), np.array([4, 1]), unit).tolist() == [1, -1]
    assert rerank.explain(np.array([2]), np.array([], dtype=np.int64), unit).tolist() == [-1]
    assert rerank.explain(np.array([0]), np.array([0]), unit).tolist() == [-1]


def test_explain_item_item_by_largest_positive_contribution():
    # B[h, r]: history item h's contribution to item r's score; 4 items, the model knows 3 columns.
    b = np.array([[0.0, 0.2, 0.5], [0.3, 0.0, 0.6], [0.1, -0.4, 0.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    history = np.array([0, 2])
    # item 1: 0 gives 0.2, 2 gives -0.4 -> 0; item 2: 0 gives 0.5 (2 is the item itself) -> 0;
    # item 3 has no column in B: unexplained.
    assert rerank.explain(np.array([1, 2, 3]), history, item_item=b).tolist() == [0, 0, -1]
    # Only negative or zero contributions: no explanation.
    assert rerank.explain(np.array([1]), np.array([2, 3]), item_item=b).tolist() == [-1]
    # Item 2 from history [0, 1]: contributions 0.5 and 0.6 -> 1.
    assert rerank.explain(np.array([2]), np.array([0, 1]), item_item=b).tolist() == [1]


def test_select_model_best_on_validation_or_named():
    metas = {"als": {"metrics": {"validation": {"ndcg_at_10": 0.3}}},
             "ease": {"metrics": {"validation": {"ndcg_at_10": 0.5}}},
             "neumf": {"metrics": {}}}
    assert select.select_model(metas, "ndcg_at_10") == "ease"
    assert select.select_model(metas, "ndcg_at_10", "best") == "ease"
    assert select.select_model(metas, "ndcg_at_10", "als") == "als"
    with pytest.raises(errors.RecommendError, match="recommend.model='nope'"):
        select.select_model(metas, "ndcg_at_10", "nope")


def gate(value, previous_value, coverage=0.5, **kw):
    previous = None if previous_value is None else {
        "run_date": DAY1, "model": "als", "model_metric": {"name": "ndcg_at_10", "value": previous_value}}
    return checks.quality_gate(metric_name="ndcg_at_10", metric_value=value, previous=previous,
                                  coverage=coverage, max_metric_drop=kw.get("drop", 0.1),
                                  min_coverage=kw.get("min_coverage", 0.01))["failures"]


def test_quality_gate_metric_drop_and_coverage():
    assert gate(0.30, None) == []  # first run: nothing to compare with
    assert gate(0.28, 0.30) == []  # 6.7% below: within 10%
    failures = gate(0.26, 0.30)  # 13.3% below
    assert len(failures) == 1 and "13.3% below" in failures[0] and DAY1 in failures[0]
    assert gate(0.26, 0.30, drop=0.2) == []
    assert "coverage 0.0050" in gate(0.30, 0.30, coverage=0.005)[0]
    assert "no validation" in gate(None, 0.30)[0]


@pytest.mark.parametrize("n_items,k", [(20_000, 50), (5_003, 50), (2_000, 7), (300, 50), (1_030, 100)])
def test_top_k_rows_equals_torch_topk(n_items, k):
    import torch

    from recsys_spark.scoring.topk import top_k_rows

    gen = torch.Generator().manual_seed(n_items + k)
    scores = torch.randn(64, n_items, generator=gen)
    # Masked rows and items, a row with fewer finite scores than k, and exact ties.
    scores[:, torch.randperm(n_items, generator=gen)[: n_items // 3]] = float("-inf")
    scores[3, 3:] = float("-inf")
    scores[3, :3] = torch.tensor([0.5, 2.0, -1.0])
    scores[5] = torch.round(scores[5] * 4) / 4
    values, items = top_k_rows(scores, k)
    expected_values, expected_items = torch.topk(scores, k, dim=1, sorted=True)
    assert torch.equal(values, expected_values)
    finite = torch.isfinite(values)
    # Items agree wherever the score is not tied with another in the row, and each
    # returned item really has the returned score.
    assert torch.equal(torch.gather(scores, 1, items.clamp(max=n_items - 1))[finite], values[finite])
    assert (items[finite] < n_items).all()
    tied = (values[:, :, None] == scores[:, None, :]).sum(dim=2) > 1
    assert torch.equal(items[finite & ~tied], expected_items[finite & ~tied])
    assert finite[3].sum() == 3 and items[3, :3].tolist() == [1, 0, 2]
    assert torch.equal(top_k_rows(scores, k)[1], items)  # deterministic


def test_mask_seen_masks_each_rows_own_items_only():
    import torch

    from recsys_spark.scoring.blocked import mask_seen

    scores = torch.zeros(3, 5)
    mask_seen(scores, pd.Series([np.array([1, 4]), None, [0]], dtype=object))
    assert torch.isinf(scores).nonzero().tolist() == [[0, 1], [0, 4], [2, 0]]
    before = scores.clone()
    mask_seen(scores, pd.Series([None, [], None], dtype=object))
    assert torch.equal(scores, before)


@pytest.mark.spark
def test_catalog_scorer_masks_unknown_excluded_and_new_items(spark):
    from recsys_spark.scoring.scorers import DotProductScorer
    from recsys_spark.scoring.blocked import top_k

    # Model of 4 items (item 1 without a vector); the catalog has grown to 5; item 3 is excluded.
    items = np.array([[1.0], [9.0], [3.0], [5.0]], dtype=np.float32)
    inner = DotProductScorer(spark, items, np.array([True, False, True, True]))
    scorer = scorers.CatalogScorer(spark, inner, 5, np.array([False, False, False, True, False]))
    users = spark.createDataFrame([(0, [1.0], [])], "user_index int, factors array<float>, seen array<int>")
    rows = top_k(users, scorer, k=5).orderBy("rank").collect()
    assert [(r.item_index, r.score) for r in rows] == [(2, 3.0), (0, 1.0)]


# --------------------------------------------------------------------------- validation rules


REC_COLS = ["user_id", "item_id", "rank", "score", "model", "source", "explanation"]
GOOD = [
    ("u1", "i1", 1, 0.9, "als", "model", "i9"),
    ("u1", "i2", 2, 0.8, "als", "model", None),
    ("u1", "i3", 3, 0.7, "als", "model", "i9"),
    ("u2", "i4", 1, 5.0, "als", "popularity_fallback", None),
    ("u2", "i5", 2, 3.0, "als", "popularity_fallback", None),
]
# u3 has seen the whole (available) catalog: expected 0 rows, absent is right.
EXPECTED = [("u1", "model", 3), ("u2", "popularity_fallback", 2), ("u3", "popularity_fallback", 0)]


def edit(rows, where, **changes):
    return [tuple({**dict(zip(REC_COLS, r)), **changes}.values()) if where(r) else r for r in rows]


BREAKERS = {
    "users missing": lambda rows: [r for r in rows if r[0] != "u2"],
    "users not in user_index": lambda rows: rows + [("u9", "i1", 1, 1.0, "als", "model", None)],
    "wrong number of rows for a user": lambda rows: [r for r in rows if not (r[0] == "u1" and r[2] == 3)],
    "duplicate items for a user": lambda rows: edit(rows, lambda r: r[:3] == ("u1", "i3", 3), item_id="i2"),
    "ranks are not 1..n per user": lambda rows: edit(rows, lambda r: r[:3] == ("u1", "i3", 3), rank=4),
    "score rises with rank (users)": lambda rows: edit(rows, lambda r: r[:3] == ("u1", "i3", 3), score=0.95),
    "seen items recommended": lambda rows: edit(rows, lambda r: r[:2] == ("u1", "i3"), item_id="i9"),
    "excluded items recommended": lambda rows: edit(rows, lambda r: r[:2] == ("u2", "i5"), item_id="i7"),
    "wrong source for a user": lambda rows: edit(rows, lambda r: r[:2] == ("u1", "i1"), source="popularity_fallback"),
    "model is not 'als'": lambda rows: edit(rows, lambda r: r[:2] == ("u2", "i4"), model="ease"),
    "source not one of": lambda rows: edit(rows, lambda r: r[0] == "u2", source="editorial"),
    "null in a required column": lambda rows: edit(rows, lambda r: r[:2] == ("u1", "i2"), item_id=None),
    "score not finite": lambda rows: edit(rows, lambda r: r[:2] == ("u1", "i3"), score=float("nan")),
}
NULLABLE_SCHEMA = "user_id string, item_id string, rank int, score float, model string, source string, explanation string"


def run_validate(spark, rows, **kw):
    recs = spark.createDataFrame(rows, NULLABLE_SCHEMA)
    expected = spark.createDataFrame(EXPECTED, "user_id string, source string, expected_n int")
    seen = spark.createDataFrame([("u1", "i9"), ("u2", "i8")], "user_id string, item_id string")
    excluded = spark.createDataFrame([("i7",)], "item_id string")
    return checks.validate(recs, expected, model="als", seen=seen, excluded=excluded, **kw)


@pytest.mark.spark
def test_valid_output_passes(spark):
    assert run_validate(spark, GOOD) == []


@pytest.mark.spark
@pytest.mark.parametrize("rule", sorted(BREAKERS))
def test_every_rule_rejects_an_output_that_breaks_it(spark, rule):
    problems = run_validate(spark, BREAKERS[rule](GOOD))
    assert any(p.startswith(rule) for p in problems), problems


@pytest.mark.spark
def test_reranked_output_is_checked_by_rank_not_score(spark):
    rising = BREAKERS["score rises with rank (users)"](GOOD)
    assert run_validate(spark, rising, reranked=True) == []
    assert any(p.startswith("ranks are not") for p in run_validate(
        spark, BREAKERS["ranks are not 1..n per user"](GOOD), reranked=True))


@pytest.mark.spark
def test_missing_column_is_a_schema_problem(spark):
    recs = spark.createDataFrame(GOOD, NULLABLE_SCHEMA).drop("explanation")
    expected = spark.createDataFrame(EXPECTED, "user_id string, source string, expected_n int")
    problems = checks.validate(recs, expected, model="als")
    assert len(problems) == 1 and "explanation" in problems[0]


@pytest.mark.spark
def test_prune_keeps_newest_runs_and_latest(spark, tmp_path):
    wh = str(tmp_path / "wh")
    root = Path(io.recommendations_root(wh))
    for day in ("2026-01-01", "2026-01-02", "2026-01-03", "2026-01-04"):
        (root / f"run_date={day}").mkdir(parents=True)
        (root / f"run_date={day}" / "_SUCCESS").write_text("")
        (root / f"run_date={day}" / "_manifest.json").write_text(json.dumps({"model": "als", "created_at": day}))
    (root / "run_date=2026-01-05").mkdir()  # unfinished: no _SUCCESS, never "latest"
    assert publish.write_latest(spark, wh)["run_date"] == "2026-01-04"
    deleted = publish.prune_runs(spark, wh, keep=2, protect="2026-01-01")
    assert deleted == ["2026-01-02"]
    assert sorted(p.name for p in root.iterdir() if p.name.startswith("run_date=")) == [
        "run_date=2026-01-01", "run_date=2026-01-03", "run_date=2026-01-04", "run_date=2026-01-05"]


# --------------------------------------------------------------------------- the job end to end


def tiny_events(spark, wh):
    """60 users in 4 taste groups over 40 items and 30 days; the last 10 users arrive
    after the validation cutoff (no ALS vectors), and one user has a single event."""
    rng = np.random.default_rng(7)
    rows = []
    for u in range(60):
        group, late = u % 4, u >= 50
        for _ in range(int(rng.integers(3, 12))):
            item = int(rng.choice(range(group, 40, 4))) if rng.random() < 0.8 else int(rng.integers(40))
            t = T0 + dt.timedelta(days=float(rng.uniform(27 if late else 0, 30)))
            rows.append((f"u{u:03d}", f"i{item:03d}", t))
    rows.append(("u_one", "i000", T0 + dt.timedelta(days=1)))
    data = [(f"e{i}", u, it, "click", t, None, None, "f.json", t.date()) for i, (u, it, t) in enumerate(rows)]
    io.write_table(spark.createDataFrame(data, EVENTS_CLEAN.schema), wh, EVENTS_CLEAN)


def job_args(wh, day, *extra):
    sets = [f"run_date={day}", f"recommend.n={N}", f"recommend.min_history={MIN_HISTORY}", *extra]
    return ["--warehouse", wh] + [a for s in sets for a in ("--set", s)]


@pytest.fixture(scope="module")
def base_wh(spark, tmp_path_factory):
    """A warehouse from the real jobs: tables, split, popularity, ALS (one candidate)."""
    wh = str(tmp_path_factory.mktemp("rec") / "wh")
    tiny_events(spark, wh)
    common = ["--warehouse", wh, "--set", f"run_date={DAY1}"]
    # u_one's single interaction is dropped: a known user with no history at all.
    load_job("build_tables").main(common + ["--set", "tables.min_user_interactions=2"])
    load_job("split").main(common)
    load_job("train_baselines").main(common + ["--models", "popularity"])
    load_job("train_als").main(common + [a for s in ("als.ranks=[4]", "als.reg_params=[0.1]", "als.alphas=[10.0]",
                                                    "als.max_iters=[5]", "als.parallelism=1") for a in ("--set", s)])
    # As in a night, evaluate runs before recommend and records the cold-user fallback it chose;
    # every recommend run of these tests serves that choice (folds.recorded_fallback).
    for day in (DAY1, DAY2):
        load_job("evaluate").main(["--warehouse", wh, "--set", f"run_date={day}"])
    return wh


@pytest.fixture(scope="module")
def published_wh(base_wh, tmp_path_factory):
    """``base_wh`` with DAY1 published by the job (defaults: best model, exclude seen)."""
    wh = str(tmp_path_factory.mktemp("published") / "wh")
    shutil.copytree(base_wh, wh)
    load_job("recommend").main(job_args(wh, DAY1))
    return wh


def publish_with(spark, wh, model):
    """Publish DAY1 served by ``model``: its rows (each model-served user gets N), the raw
    interactions and the item index, for checking scores against the model's own."""
    load_job("recommend").main(job_args(wh, DAY1, f"recommend.model={model}"))
    recs = read_run(wh, DAY1)
    served = recs[recs.source == "model"]
    assert set(served.model) == {model} and (served.groupby("user_id").size() == N).all()
    items = io.read_table(spark, wh, ITEM_INDEX_TABLE).toPandas().set_index("item_id").item_index
    return served, interactions_raw(spark, wh), items


def copy_wh(src, tmp_path):
    dst = str(tmp_path / "wh")
    shutil.copytree(src, dst)
    return dst


def run_dir(wh, day):
    return Path(io.recommendations_run_path(wh, day))


def read_run(wh, day) -> pd.DataFrame:
    import pyarrow.parquet as pq

    return pq.read_table(run_dir(wh, day)).to_pandas().sort_values(["user_id", "rank"]).reset_index(drop=True)


def manifest(wh, day) -> dict:
    return json.loads((run_dir(wh, day) / "_manifest.json").read_text())


def latest(wh) -> dict:
    return json.loads((Path(io.recommendations_root(wh)) / "_latest.json").read_text())


@pytest.mark.spark
def test_published_run_is_readable_with_the_documented_schema(published_wh):
    import pyarrow as pa
    import pyarrow.parquet as pq

    table = pq.read_table(run_dir(published_wh, DAY1))
    arrow_type = {"string": pa.string(), "int": pa.int32(), "float": pa.float32()}
    assert [(f.name, f.type) for f in table.schema] == [
        (f.name, arrow_type[f.dataType.simpleString()]) for f in RECOMMENDATIONS.schema.fields]
    df = table.to_pandas()
    for f in RECOMMENDATIONS.schema.fields:
        if not f.nullable:
            assert df[f.name].notna().all(), f.name
    assert (run_dir(published_wh, DAY1) / "_SUCCESS").exists()
    assert latest(published_wh)["run_date"] == DAY1


@pytest.mark.spark
def test_every_user_gets_n_unseen_items_from_the_best_model(spark, published_wh):
    wh = published_wh
    recs = read_run(wh, DAY1)
    users = io.read_table(spark, wh, USER_INDEX_TABLE).toPandas()
    assert set(recs.user_id) == set(users.user_id)
    assert (recs.groupby("user_id").size() == N).all()
    assert not recs.duplicated(["user_id", "item_id"]).any()
    seen = interactions_raw(spark, wh)
    assert recs.merge(seen, on=["user_id", "item_id"]).empty
    # the best on validation ndcg_at_10, read from the models' metadata
    metas = {p.parent.name: json.loads(p.read_text()) for p in Path(wh, "models").glob("*/metadata.json")}
    best = max(metas, key=lambda m: metas[m]["metrics"]["validation"]["ndcg_at_10"])
    assert set(recs.model) == {best} == {"als"}
    m = manifest(wh, DAY1)
    assert m["model"] == "als" and m["forced"] is False
    assert m["model_metric"]["value"] == metas["als"]["metrics"]["validation"]["ndcg_at_10"]
    assert m["counts"]["users"] == len(users) and m["counts"]["rows"] == len(recs)
    assert m["inputs"]["interactions"]["rows"] == len(seen) and m["inputs"]["interactions"]["modified"]
    assert m["code_version"] and m["config"]["recommend"]["n"] == N


def interactions_raw(spark, wh) -> pd.DataFrame:
    inter = io.read_table(spark, wh, INTERACTIONS).toPandas()
    users = io.read_table(spark, wh, USER_INDEX_TABLE).toPandas()
    items = io.read_table(spark, wh, ITEM_INDEX_TABLE).toPandas()
    return (inter.merge(users[["user_index", "user_id"]]).merge(items[["item_index", "item_id"]])
            [["user_id", "item_id", "last_time"]])


@pytest.mark.spark
def test_cold_start_users_get_the_fallback_chosen_on_validation(spark, published_wh):
    wh = published_wh
    recs = read_run(wh, DAY1)
    seen = interactions_raw(spark, wh)
    history = seen.groupby("user_id").item_id.apply(set).to_dict()
    users = io.read_table(spark, wh, USER_INDEX_TABLE).toPandas()
    with_vector = set(users.merge(pd.read_parquet(Path(wh, "models/als/user_factors")), on="user_index").user_id)
    cold = {u for u in users.user_id if len(history.get(u, ())) < MIN_HISTORY or u not in with_vector}
    assert "u_one" in cold and any(len(history.get(u, ())) >= MIN_HISTORY for u in cold)  # both kinds of cold
    assert set(recs[recs.source == "popularity_fallback"].user_id) == cold
    assert set(recs[recs.source == "model"].user_id) == set(users.user_id) - cold

    # The fallback chosen on validation (all time or a window), fitted on every interaction: distinct
    # users per item in the window's last days of interactions.
    choice = manifest(wh, DAY1)["fallback"]
    assert choice["chosen"] in choice["candidates"] and choice["fold"] == "validation"
    assert choice["candidates"][choice["chosen"]] == max(choice["candidates"].values())
    assert manifest(wh, DAY1)["fallback_model"] == choice["chosen"]
    days = choice["recent_days"]
    since = seen.last_time.min() if days is None else seen.last_time.max() - pd.Timedelta(days=days)
    pop = seen[seen.last_time >= since].groupby("item_id").user_id.nunique()
    catalog = io.read_table(spark, wh, ITEM_INDEX_TABLE).toPandas().item_id
    pop = pop.reindex(catalog, fill_value=0)
    for user in cold:
        mine = recs[recs.user_id == user]
        np.testing.assert_allclose(mine.score, pop[mine.item_id].to_numpy())
        best_unseen = sorted(pop.drop(list(history.get(user, ()))).to_numpy(), reverse=True)[:N]
        np.testing.assert_allclose(mine.score, best_unseen)  # the top N (ties may swap items)
    # no history, no explanation; a model user's explanation is an item of their own history
    assert recs[recs.user_id == "u_one"].explanation.isna().all()
    model_rows = recs[recs.source == "model"]
    assert model_rows.explanation.notna().all()
    assert all(e in history[u] for u, e in zip(model_rows.user_id, model_rows.explanation))


@pytest.mark.spark
def test_rerun_is_idempotent_and_a_failure_before_publish_keeps_the_previous_run(spark, published_wh, tmp_path,
                                                                                  monkeypatch):
    wh = copy_wh(published_wh, tmp_path)
    before = read_run(wh, DAY1)
    load_job("recommend").main(job_args(wh, DAY1))
    again = read_run(wh, DAY1)
    pd.testing.assert_frame_equal(before, again)
    created = manifest(wh, DAY1)["created_at"]

    # The staging run is complete and valid; the rename into place fails.
    final = io.recommendations_run_path(wh, DAY1)
    real_rename = io.rename_path

    def failing_rename(spark_, src, dst):
        if dst.rstrip("/") == final and "_staging" in src:
            raise OSError("injected: the filesystem went away")
        return real_rename(spark_, src, dst)

    monkeypatch.setattr(io, "rename_path", failing_rename)
    with pytest.raises(OSError, match="injected"):
        load_job("recommend").main(job_args(wh, DAY1, "recommend.exclude_seen=false"))
    monkeypatch.undo()
    pd.testing.assert_frame_equal(read_run(wh, DAY1), before)  # the old run, whole and readable
    assert manifest(wh, DAY1)["created_at"] == created and (run_dir(wh, DAY1) / "_SUCCESS").exists()
    assert latest(wh)["run_date"] == DAY1
    root = Path(io.recommendations_root(wh))
    assert sorted(p.name for p in root.iterdir() if not p.name.startswith(".")) == [
        "_latest.json", "_staging", f"run_date={DAY1}"]
    assert list((root / "_staging").iterdir()) == []

    # A bug that drops rows: the staged output fails validation and is not published.
    real_finalize = rerank.finalize
    monkeypatch.setattr(recommend, "finalize",
                        lambda *a, **kw: real_finalize(*a, **kw).where("rank != 2"))
    with pytest.raises(SystemExit) as exit_:
        load_job("recommend").main(job_args(wh, DAY2))
    assert exit_.value.code == 4
    assert not run_dir(wh, DAY2).exists() and latest(wh)["run_date"] == DAY1


@pytest.mark.spark
def test_a_crash_after_the_move_before_latest_leaves_a_valid_run_and_the_rerun_repairs(spark, published_wh,
                                                                                       tmp_path, monkeypatch):
    wh = copy_wh(published_wh, tmp_path)
    day1 = read_run(wh, DAY1)

    def crash(*args, **kwargs):
        raise OSError("injected: killed before _latest.json was written")

    monkeypatch.setattr(publish, "write_latest", crash)
    with pytest.raises(OSError, match="injected"):
        load_job("recommend").main(job_args(wh, DAY2))
    monkeypatch.undo()
    # Readers that follow _latest.json still read DAY1, whole; DAY2 is in place and complete.
    assert latest(wh)["run_date"] == DAY1
    pd.testing.assert_frame_equal(read_run(wh, DAY1), day1)
    assert (run_dir(wh, DAY2) / "_SUCCESS").exists() and manifest(wh, DAY2)["run_date"] == DAY2
    day2 = read_run(wh, DAY2)

    load_job("recommend").main(job_args(wh, DAY2))  # the rerun repairs the pointer
    assert latest(wh)["run_date"] == DAY2
    pd.testing.assert_frame_equal(read_run(wh, DAY2), day2)
    root = Path(io.recommendations_root(wh))
    assert list((root / "_staging").iterdir()) == [] and not list(root.glob("*._old-*"))


@pytest.mark.spark
def test_a_crash_while_pruning_never_leaves_a_half_deleted_run_among_the_published(spark, published_wh,
                                                                                   tmp_path, monkeypatch):
    wh = copy_wh(published_wh, tmp_path)
    real_delete = io.delete_path

    def crash_in_pruning(spark_, path):
        if f"/{publish.PRUNING}/" in path:
            raise OSError("injected: killed while deleting an old run")
        return real_delete(spark_, path)

    monkeypatch.setattr(io, "delete_path", crash_in_pruning)
    with pytest.raises(OSError, match="injected"):
        load_job("recommend").main(job_args(wh, DAY2, "recommend.keep_runs=1"))
    monkeypatch.undo()
    root = Path(io.recommendations_root(wh))
    # DAY1 went aside in one rename before any file of it was deleted: the published runs are whole.
    assert latest(wh)["run_date"] == DAY2 and not run_dir(wh, DAY1).exists()
    assert publish.published_runs(spark, wh) == [DAY2]
    assert [p.name.startswith(f"run_date={DAY1}-") for p in (root / publish.PRUNING).iterdir()] == [True]
    # The next publish finishes the prune.
    load_job("recommend").main(job_args(wh, DAY2, "recommend.keep_runs=1"))
    assert list((root / publish.PRUNING).iterdir()) == []


@pytest.mark.spark
def test_a_failed_table_write_leaves_no_staging_and_the_next_write_cleans_a_killed_ones(spark, tmp_path):
    from pyspark.sql import functions as F

    from recsys_spark.schemas import EVAL_RECS

    wh = str(tmp_path / "wh")
    where = io.table_path(wh, EVAL_RECS, model="m", fold="test")
    rows = spark.createDataFrame([(0, 1, 0.5, 1)], "user_index int, item_index int, score float, rank int")
    final = io.write_table(rows, wh, EVAL_RECS, path=where)
    parent = Path(final).parent
    boom = F.udf(lambda x: 1 // 0, "int")  # fails inside the write's tasks
    with pytest.raises(Exception, match="ZeroDivisionError"):
        io.write_table(rows.withColumn("user_index", boom("user_index")), wh, EVAL_RECS, path=where)
    assert sorted(p.name for p in parent.iterdir()) == ["test"]
    assert io.read_table(spark, wh, EVAL_RECS, path=where).count() == 1
    # A process killed between publish_directory's two renames: the old version aside, nothing in place,
    # and a staging directory. The next write of the table puts things right before it writes.
    Path(final).rename(parent / "test._old-dead0001")
    (parent / "test._staging-dead0002").mkdir()
    assert io.clean_leftovers(spark, final) == ["test._staging-dead0002"]
    assert sorted(p.name for p in parent.iterdir()) == ["test"]
    assert io.read_table(spark, wh, EVAL_RECS, path=where).count() == 1


@pytest.mark.spark
def test_recommend_reuses_the_fallback_evaluate_chose_on_the_same_split_and_settings(spark, base_wh, tmp_path):
    """The night's evaluate records its fallback choice with what it was made on; recommend serves that
    choice (not judged again) while the split, the item index and the settings the choice reads are the
    same, in a copy of the warehouse too."""
    wh = copy_wh(base_wh, tmp_path)
    recorded = json.loads(Path(io.metrics_path(wh, DAY1, "_cold_start.json")).read_text())
    # A serving setting (how many candidates MMR reranks) does not change which candidate is best.
    load_job("recommend").main(job_args(wh, DAY1, "recommend.mmr_pool_factor=4"))
    served = manifest(wh, DAY1)["fallback"]
    assert served["chosen_by"] == "evaluate"
    assert {k: v for k, v in served.items() if k != "chosen_by"} == recorded["fallback"]

    # Other candidates (a setting the choice reads): chosen again, by recommend, among those.
    load_job("recommend").main(job_args(wh, DAY1, "popularity.fallback_windows_days=[3]"))
    again = manifest(wh, DAY1)["fallback"]
    assert again["chosen_by"] == "recommend" and set(again["candidates"]) == {"popularity", "popularity_recent_3d"}
    # The split written again (a later modification time): chosen again too.
    load_job("split").main(["--warehouse", wh, "--set", f"run_date={DAY1}"])
    load_job("recommend").main(job_args(wh, DAY1))
    assert manifest(wh, DAY1)["fallback"]["chosen_by"] == "recommend"


def test_exclusion_list_then_mmr_diversity(spark, published_wh, tmp_path):
    wh = copy_wh(published_wh, tmp_path)
    top = read_run(wh, DAY1).item_id.value_counts().index[:2].tolist()
    blocked = tmp_path / "blocked.csv"
    blocked.write_text("item_id\n" + "\n".join(top + ["not-an-item"]) + "\n")
    load_job("recommend").main(job_args(wh, DAY2, f"recommend.exclude_items_path={blocked}"))
    plain = read_run(wh, DAY2)
    assert not plain.item_id.isin(top).any()
    assert (plain.groupby("user_id").size() == N).all()  # the pool is refilled from the rest
    assert manifest(wh, DAY2)["inputs"]["exclude_items"]["unknown_ids"] == 1

    # Same exclusions, MMR on: lists are less alike inside (ALS item vectors, cosine).
    day3 = "2026-02-03"
    load_job("recommend").main(job_args(wh, day3, f"recommend.exclude_items_path={blocked}",
                                        "recommend.mmr_lambda=0.3"))
    diverse = read_run(wh, day3)
    assert not diverse.item_id.isin(top).any() and (diverse.groupby("user_id").size() == N).all()
    m = manifest(wh, day3)
    assert m["reranked"] is True and m["mmr_similarity"] == "embedding"
    factors = pd.read_parquet(Path(wh, "models/als/item_factors"))
    items = io.read_table(spark, wh, ITEM_INDEX_TABLE).toPandas().merge(factors, on="item_index")
    unit = dict(zip(items.item_id, rerank.normalise_rows(np.stack(items.factors.to_numpy()))))

    def intra_list_similarity(df):
        sims = []
        for _, group in df[df.source == "model"].groupby("user_id"):
            v = np.stack([unit[i] for i in group.item_id])
            sims.append((v @ v.T)[np.triu_indices(len(v), 1)].mean())
        return float(np.mean(sims))

    assert intra_list_similarity(diverse) < intra_list_similarity(plain) - 0.1
    # Each model user's MMR list starts with the same best item (the first pick is pure relevance).
    def firsts(df):
        return df[(df["rank"] == 1) & (df.source == "model")].set_index("user_id").item_id.sort_index()

    pd.testing.assert_series_equal(firsts(diverse), firsts(plain))


@pytest.mark.spark
def test_quality_gate_refuses_a_worse_model_and_force_publishes_it(spark, published_wh, tmp_path, capsys):
    wh = copy_wh(published_wh, tmp_path)
    meta_path = Path(wh, "models/als/metadata.json")
    meta = json.loads(meta_path.read_text())
    before = meta["metrics"]["validation"]["ndcg_at_10"]
    meta["metrics"]["validation"]["ndcg_at_10"] = before * 0.5  # a retrain that got worse
    meta_path.write_text(json.dumps(meta))
    (meta_path.parent / ".metadata.json.crc").unlink(missing_ok=True)
    args = job_args(wh, DAY2, "recommend.model=als")
    with pytest.raises(SystemExit) as exit_:
        load_job("recommend").main(args)
    assert exit_.value.code == 3
    assert "50.0% below the last published run's" in capsys.readouterr().err
    assert not run_dir(wh, DAY2).exists() and latest(wh)["run_date"] == DAY1

    load_job("recommend").main(args + ["--force"])
    m = manifest(wh, DAY2)
    assert m["forced"] is True and "50.0% below" in m["quality_gate"]["failures"][0]
    assert math.isclose(m["model_metric"]["value"], before * 0.5)
    assert latest(wh)["run_date"] == DAY2


@pytest.mark.spark
def test_torch_model_is_served_by_a_forward_pass(spark, base_wh, tmp_path):
    import torch

    from recsys_spark.models import artifacts
    from recsys_spark.scoring import torch_model as scorer_module

    wh = copy_wh(base_wh, tmp_path)
    n_users = io.read_table(spark, wh, USER_INDEX_TABLE).count()
    n_items = io.read_table(spark, wh, ITEM_INDEX_TABLE).count()
    torch.manual_seed(0)
    model = registry.get("multvae").build(n_users=n_users, n_items=n_items, params={}).eval()
    Path(io.model_dir(wh, "multvae")).mkdir(parents=True)
    Path(io.model_dir(wh, "multvae"), "model.pt").write_bytes(scorer_module.state_dict_bytes(model))
    artifacts.save_metadata(spark, wh, "multvae", kind=artifacts.KIND_TORCH, params={}, config={},
                            n_users=n_users, n_items=n_items, metrics={"validation": {"ndcg_at_10": 0.2}})
    load_job("recommend").main(job_args(wh, DAY1, "recommend.model=multvae"))
    recs = read_run(wh, DAY1)
    assert set(recs.model) == {"multvae"} and (recs.groupby("user_id").size() == N).all()
    assert recs.explanation.isna().all()  # Mult-VAE has no item embeddings

    # One model user's list is the forward pass's top N over their unseen items.
    seen = interactions_raw(spark, wh)
    items = io.read_table(spark, wh, ITEM_INDEX_TABLE).toPandas().set_index("item_id").item_index
    users = io.read_table(spark, wh, USER_INDEX_TABLE).toPandas().set_index("user_id").user_index
    user = recs[recs.source == "model"].user_id.iloc[0]
    history = torch.tensor([sorted(items[seen[seen.user_id == user].item_id])])
    with torch.no_grad():
        scores = model.score_users(torch.tensor([users[user]]), history, torch.tensor([history.shape[1]]))[0]
    scores[history[0]] = float("-inf")
    want = scores.topk(N).values.numpy()
    np.testing.assert_allclose(recs[recs.user_id == user].score.to_numpy(), want, rtol=1e-5)


@pytest.mark.spark
def test_ease_is_served_from_its_shipped_item_item_file(spark, base_wh, tmp_path):
    """EASE's B travels as item_item.npy (addFile + memory map), not as a broadcast or a table:
    the published scores are each user's history times B, and explanations come from B."""
    from recsys_spark.models import artifacts

    wh = copy_wh(base_wh, tmp_path)
    load_job("train_ease").main(["--warehouse", wh, "--set", f"run_date={DAY1}", "--set", "ease.l2_grid=[250.0]"])
    b = np.load(artifacts.item_item_path(wh, "ease"))
    n_items = io.read_table(spark, wh, ITEM_INDEX_TABLE).count()
    assert b.shape == (n_items, n_items) and b.dtype == np.float32 and not np.diag(b).any()
    assert not Path(io.model_dir(wh, "ease"), "item_factors").exists()

    served, seen, items = publish_with(spark, wh, "ease")
    for user in served.user_id.unique()[:5]:
        history = np.array(sorted(items[seen[seen.user_id == user].item_id]))
        scores = b[history].sum(axis=0)
        scores[history] = -np.inf
        mine = served[served.user_id == user]
        np.testing.assert_allclose(mine.score.to_numpy(), np.sort(scores)[::-1][:N], rtol=1e-5)
        # An explanation is a history item with a positive weight towards the recommendation.
        for rec_item, why in zip(mine.item_id, mine.explanation):
            if why is not None:
                assert why in set(seen[seen.user_id == user].item_id)
                assert b[items[why], items[rec_item]] > 0


@pytest.mark.spark
def test_markov_is_served_from_the_last_item_of_each_whole_history(spark, base_wh, tmp_path):
    """The last_item kind end to end: train_baselines fits and saves transitions.npz, and the
    published scores are the row of each user's last item (the latest interaction, ties to the
    higher item index) plus the back-off, over the unseen items."""
    from recsys_spark.models import artifacts

    wh = copy_wh(base_wh, tmp_path)
    load_job("train_baselines").main(["--warehouse", wh, "--set", f"run_date={DAY1}", "--models", "markov"])
    with np.load(artifacts.transitions_path(wh, "markov")) as npz:
        a = {key: npz[key] for key in npz.files}
    served, seen, items = publish_with(spark, wh, "markov")
    assert manifest(wh, DAY1)["model_kind"] == "last_item"
    for user in served.user_id.unique()[:5]:
        history = seen[seen.user_id == user].assign(item_index=lambda d: items[d.item_id].to_numpy())
        history = history.sort_values(["last_time", "item_index"]).item_index.to_numpy()
        last = history[-1]
        scores = a["source_weight"][last] * a["backoff"].astype(np.float64)
        row = slice(a["indptr"][last], a["indptr"][last + 1])
        scores[a["indices"][row]] += a["values"][row]
        scores[history] = -np.inf
        mine = served[served.user_id == user]
        np.testing.assert_allclose(mine.score.to_numpy(), np.sort(scores)[::-1][:N], rtol=1e-5)
        assert mine.explanation.isna().all()  # no item embeddings, no item-item matrix


# --------------------------------------------------------------------------- a family added by one registration


def fit_item_order(spark, name, rows, *, n_items, cfg):
    """A throwaway family: every user's scores are the item indexes (the highest index first); nothing learnt."""
    return fitted.rank_one(spark, name, np.arange(n_items, dtype=np.float32), params={"order": "item_index"})


@pytest.fixture
def item_order_family():
    family = registry.register_family("item_order", f"{__name__}:fit_item_order")
    yield family
    registry.unregister_family("item_order")


@pytest.mark.spark
def test_a_family_is_one_registration_planned_trained_evaluated_and_served(spark, base_wh, tmp_path,
                                                                           item_order_family):
    """docs/architecture.md, "Adding a model": a fit and a register_family line, and the night plans
    its stage, train_baselines fits and saves it, evaluate and recommend load and serve it."""
    stages = pipeline.plan(["neumf"])
    names = [s.name for s in stages]
    # After the families registered before it, before the neural models; not required.
    assert names.index("train_als") < names.index("train_item_order") < names.index("train_neural neumf")
    stage = stages[names.index("train_item_order")]
    assert (stage.job, stage.args, stage.models, stage.required) == (
        "train_baselines", ("--models", "item_order"), ("item_order",), False)
    assert registry.baseline_names()[-1] == "item_order"

    wh = copy_wh(base_wh, tmp_path)
    report = load_job(stage.job).main(job_args(wh, DAY1) + list(stage.args))
    assert set(report) == {"item_order"}

    model = select.load_model(spark, wh, "item_order")
    n_items = io.read_table(spark, wh, ITEM_INDEX_TABLE).count()
    assert model.kind == "dot_product" and model.params == {"order": "item_index"}
    np.testing.assert_array_equal(model.scorer.item_matrix[:, 0], np.arange(n_items))
    assert "ndcg_at_10" in model.metadata["metrics"]["validation"]

    evaluated = load_job("evaluate").main(job_args(wh, DAY1) + ["--models", "item_order"])
    assert [r["model"] for r in evaluated["results"]] == ["item_order"]
    assert Path(io.metrics_path(wh, DAY1, "item_order.json")).exists()

    served, seen, items = publish_with(spark, wh, "item_order")
    for user in served.user_id.unique()[:5]:
        unseen = sorted(set(range(n_items)) - set(items[seen[seen.user_id == user].item_id]), reverse=True)
        assert items[served[served.user_id == user].item_id].tolist() == unseen[:N]
