"""recsys_spark/train/neural.py around the trainer: resuming through ``neural.fit`` (run key
and data fingerprint), and a non-dot-product model (NeuMF) trained by jobs/train_neural.py
and served through select.load_serving_model with the scores of its own forward pass.

The training processes run in this process (``in_process_training``): the same
``distributed._worker`` (process group, loop, Petastorm shard, checkpoints), one gloo
rank, without TorchDistributor's launch of torchrun, which costs seconds a fit and is
tested on its own in tests/test_trainer.py.
"""
from __future__ import annotations

import datetime as dt
import io
import json
import shutil

import numpy as np
import pandas as pd
import pytest
import torch
from pyspark.sql import functions as F

from tests.conftest import free_port, load_job
from tests.test_trainer import N_ITEMS, N_USERS, T0, TinyMF, _write_planted_warehouse, planted
from recsys_spark import schemas
from recsys_spark.scoring import blocked, scorers
from recsys_spark.config import load_config
from recsys_spark.train import checkpoint, distributed, loop, neural

pytestmark = pytest.mark.spark


@pytest.fixture
def in_process_training(monkeypatch):
    """``distributed.run`` as one gloo rank in this process (see the module docstring)."""
    threads = torch.get_num_threads()

    def run(spark, job, *, num_processes):
        assert num_processes == 1, "in-process training is one rank"
        for key, value in {"RANK": "0", "WORLD_SIZE": "1", "LOCAL_RANK": "0", "MASTER_ADDR": "127.0.0.1",
                           "MASTER_PORT": str(free_port())}.items():
            monkeypatch.setenv(key, value)
        return distributed._worker(job)

    monkeypatch.setattr(distributed, "run", run)
    yield
    torch.set_num_threads(threads)  # _worker sets the process's torch threads


@pytest.fixture(scope="module")
def planted_template(spark, tmp_path_factory):
    """The planted warehouse, written once; each job test trains in its own copy."""
    wh = str(tmp_path_factory.mktemp("planted") / "wh")
    _write_planted_warehouse(spark, wh)
    return wh


def _planted_copy(template, tmp_path) -> str:
    wh = str(tmp_path / "wh")
    shutil.copytree(template, wh)
    return wh


def _split_rows(spark, train, held):
    rows = [(u, i, 1.0, T0 + dt.timedelta(hours=t), "warm", "train") for u, i, t in train]
    rows += [(u, i, 1.0, T0 + dt.timedelta(days=2), "warm", "validation" if n % 2 == 0 else "test")
             for n, (u, i) in enumerate(held)]
    return spark.createDataFrame(rows, schemas.SPLIT.schema)


def _config(tmp_path, *extra):
    return load_config(overrides=[
        "neural.num_processes=1", "neural.epochs=4", "neural.patience=10", "neural.batch_size=32",
        "neural.learning_rate=0.05", "evaluation.ks=[5]", "evaluation.primary_metric=ndcg_at_5",
        f"neural.cache_dir={tmp_path / 'cache'}", f"neural.checkpoint_dir={tmp_path / 'ck'}", *extra])


class CrashingMF(TinyMF):
    """TinyMF that fails at the start of its third epoch (after two checkpointed epochs)."""

    def loss(self, batch, ctx):
        if ctx.epoch == 2:
            raise RuntimeError("simulated crash in epoch 3")
        return super().loss(batch, ctx)


def test_fit_resumes_a_crashed_run_of_the_same_data_and_not_one_of_other_data(spark, tmp_path, in_process_training,
                                                                              capsys):
    cfg = _config(tmp_path)
    train, held = planted()
    split_rows = _split_rows(spark, train, held)
    sizes = dict(n_users=N_USERS, n_items=N_ITEMS, final=False)
    ck = neural.checkpoint_dir(cfg, "tiny_mf", "selection")

    with pytest.raises(RuntimeError, match="simulated crash in epoch 3"):
        neural.fit(spark, cfg, split_rows, "tiny_mf", model_class=CrashingMF, **sizes)
    saved = torch.load(checkpoint.checkpoint_path(ck), weights_only=True)
    assert saved["epoch"] == 2 and not saved["finished"]

    # Same model name, settings and rows: the run key matches, the run goes on after epoch 2.
    resumed = neural.fit(spark, cfg, split_rows, "tiny_mf", model_class=TinyMF, **sizes)
    assert resumed.resumed_from == 2 and resumed.epochs_run == 4
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3, 4]
    assert [h["loss"] for h in resumed.history[:2]] == [h["loss"] for h in saved["history"]]
    capsys.readouterr()

    # One training row fewer: another data fingerprint, another run key; the checkpoint is not resumed.
    dropped = train[0]
    fewer = split_rows.where(~((F.col("user_index") == dropped[0]) & (F.col("item_index") == dropped[1])))
    assert neural.data_fingerprint(fewer) != neural.data_fingerprint(split_rows)
    fresh = neural.fit(spark, cfg, fewer, "tiny_mf", model_class=TinyMF, **sizes)
    assert fresh.resumed_from == 0 and fresh.epochs_run == 4
    assert "belongs to another run" in capsys.readouterr().out
    assert not any((tmp_path / "cache").iterdir())  # materialised examples deleted after every fit


def test_the_job_rerun_after_a_crash_resumes_from_the_last_checkpoint(spark, tmp_path, in_process_training,
                                                                        monkeypatch, planted_template):
    """Through jobs/train_neural.py, as the nightly run's rerun of a failed stage does: the
    training process dies in epoch 2; the rerun goes on from epoch 1's checkpoint."""
    from recsys_spark.models import registry

    wh = _planted_copy(planted_template, tmp_path)
    # NeuMF's own trainer settings, set per model (neural.* in this layer would do as well).
    sets = ["neural.num_processes=1", "neural.per_model.neumf.epochs=3", "neural.per_model.neumf.patience=10",
            "neural.batch_size=64",
            "evaluation.ks=[5]", "evaluation.primary_metric=ndcg_at_5", f"neural.cache_dir={tmp_path / 'cache'}",
            f"neural.checkpoint_dir={tmp_path / 'ck'}", NEUMF_PARAMS,
            "neural.search.trials=1"]  # a search's trials keep no checkpoint: resuming is the configured fit's
    argv = ["--model", "neumf", "--warehouse", wh, *[a for s in sets for a in ("--set", s)]]
    cls = registry.get("neumf")
    real_loss = cls.loss

    def dies_in_epoch_2(self, batch, ctx):
        if ctx.epoch == 1:
            raise RuntimeError("killed in epoch 2")
        return real_loss(self, batch, ctx)

    monkeypatch.setattr(cls, "loss", dies_in_epoch_2)
    with pytest.raises(RuntimeError, match="killed in epoch 2"):
        load_job("train_neural").main(argv)
    monkeypatch.setattr(cls, "loss", real_loss)
    report = load_job("train_neural").main(argv)
    assert report["resumed_from_epoch"] == 1
    meta = json.loads((tmp_path / "wh" / "models" / "neumf" / "metadata.json").read_text())
    assert [h["epoch"] for h in meta["selection_history"]] == [1, 2, 3]
    assert not list((tmp_path / "ck").rglob("*.pt"))  # a finished run clears its checkpoints


def test_data_fingerprint_sees_weights_pairs_and_times_not_row_order(spark):
    train, held = planted()
    rows = _split_rows(spark, train, held).where(F.col("fold") == "train")
    base = neural.data_fingerprint(rows)
    assert neural.data_fingerprint(rows.orderBy(F.rand(seed=3)).repartition(4)) == base
    u, i = train[0][0], train[0][1]
    this = (F.col("user_index") == u) & (F.col("item_index") == i)
    changed = {
        "weight": rows.withColumn("weight", F.when(this, F.lit(2.0)).otherwise(F.col("weight"))),
        "pair": rows.withColumn("item_index", F.when(this, F.lit((i + 1) % N_ITEMS)).otherwise(F.col("item_index"))),
        "time": rows.withColumn("last_time", F.when(this, F.lit(T0 + dt.timedelta(days=30)))
                                .otherwise(F.col("last_time"))),
    }
    for what, frame in changed.items():
        assert neural.data_fingerprint(frame) != base, what


# --------------------------------------------------------------------------- NeuMF: trained, then served


NEUMF_PARAMS = "neural.models={neumf: {embedding_dim: 4, mlp_layers: [8, 4]}}"


def test_neumf_trained_by_the_job_is_served_with_its_own_forward_scores(spark, tmp_path, in_process_training,
                                                                        planted_template):
    from recsys_spark.models import artifacts, fitted, registry
    from recsys_spark.serve import select

    wh = _planted_copy(planted_template, tmp_path)
    # A 3-trial settings search through the job's own path (materialised shards, the worker,
    # the loop), then the refit with the chosen settings: what is saved is what was chosen.
    sets = ["neural.num_processes=1", "neural.per_model.neumf.epochs=2", "neural.batch_size=64",
            "neural.learning_rate=0.01",
            "evaluation.ks=[5]", "evaluation.primary_metric=ndcg_at_5", f"neural.cache_dir={tmp_path / 'cache'}",
            f"neural.checkpoint_dir={tmp_path / 'ck'}", NEUMF_PARAMS, "neural.search.trials=3",
            "neural.search.space={neumf: {embedding_dim: {choices: [4, 8]}, negatives_per_positive: {choices: [2, 4]}}}"]
    report = load_job("train_neural").main(["--model", "neumf", "--warehouse", wh,
                                            *[a for s in sets for a in ("--set", s)]])
    assert report["model"] == "neumf"
    meta = artifacts.load_metadata(spark, wh, "neumf")
    assert meta["kind"] == artifacts.KIND_TORCH and meta["epochs"] >= 1
    searched = meta["search"]
    # Trial 0: the configured settings (the set dimensions replace the file's; the rest stay).
    assert len(searched["trials"]) == 3 and searched["trials"][0]["values"] == {
        "embedding_dim": 4, "negatives_per_positive": 4, "learning_rate": 0.01, "mlp_layers": [8, 4],
        "weight_decay": 0.0}
    chosen = searched["trials"][searched["chosen_trial"]]
    assert chosen["best_metric"] == max(t["best_metric"] for t in searched["trials"] if not t["pruned"])
    assert searched["chosen"] == chosen["values"] == report["search"]["chosen"]
    assert meta["build_kwargs"]["params"]["embedding_dim"] == chosen["values"]["embedding_dim"]
    assert meta["params"]["embedding_dim"] == chosen["values"]["embedding_dim"]
    assert report["ndcg_at_5_validation_in_trainer"] == pytest.approx(chosen["best_metric"])

    # The trained weights: not the seeded initial ones the trainer started from.
    kwargs = fitted.torch_build_kwargs(meta)
    model = registry.get("neumf").build(**kwargs)
    initial = {k: v.clone() for k, v in model.state_dict().items()}
    model.load_state_dict(loop.state_dict_from_bytes(artifacts.load_state_dict_bytes(spark, wh, "neumf")))
    model.eval()
    assert any(not torch.equal(initial[k], v) for k, v in model.state_dict().items())

    serving = select.load_model(spark, wh, "neumf")
    assert serving.kind == artifacts.KIND_TORCH and serving.max_users == N_USERS
    assert serving.item_vectors is None  # no item embedding to explain or diversify with
    users = torch.tensor([0, 7, 41, N_USERS - 1])
    with torch.no_grad():  # the model's own forward: one logit per (user, item) pair
        forward = model({"user_index": users.repeat_interleave(N_ITEMS),
                         "item_index": torch.arange(N_ITEMS).repeat(len(users))}).view(len(users), N_ITEMS)
    batch = pd.DataFrame({"user_index": users.numpy().astype(np.int32), "seen": [None] * len(users)})
    torch.testing.assert_close(serving.scorer.score(batch), forward, rtol=1e-5, atol=1e-6)

    # Served through Spark (the blocked scorer the recommend job uses): each user's top 5
    # unseen items are the forward pass's, in its order, with its scores.
    train, _ = planted()
    seen = {int(u): sorted({i for uu, i, _ in train if uu == u}) for u in users}
    frame = spark.createDataFrame([(u, s) for u, s in seen.items()], "user_index int, seen array<int>")
    top = blocked.top_k(frame, scorers.CatalogScorer(spark, serving.scorer, N_ITEMS), k=5).toPandas()
    for r, user in enumerate(users.tolist()):
        want = forward[r].clone()
        want[seen[user]] = float("-inf")
        mine = top[top.user_index == user].sort_values("rank")
        assert mine.item_index.tolist() == want.topk(5).indices.tolist(), user
        np.testing.assert_allclose(mine.score.to_numpy(), want.topk(5).values.numpy(), rtol=1e-5)


def test_a_night_in_one_driver_trains_its_neural_models_in_one_launch_each_as_alone(spark, tmp_path, monkeypatch,
                                                                                    in_process_training,
                                                                                    planted_template):
    """recsys_spark/train/shared_launch.py: the night's two neural stages, run in one driver,
    launch the training processes once (the first stage trains both, one after the other);
    each stage still scores, judges and saves its own model, and the model trained second
    is the model its own launch trains, to the bit (every fit reseeds from its own settings)."""
    from recsys_spark import pipeline
    from recsys_spark.models import artifacts
    from tests.conftest import REPO

    launches = []
    run_in_process = distributed.run

    def counted(spark, job, *, num_processes):
        launches.append([j.model_name for j in (job if isinstance(job, list) else [job])])
        return run_in_process(spark, job, num_processes=num_processes)

    monkeypatch.setattr(distributed, "run", counted)
    sets = ["neural.num_processes=1", "neural.epochs=2", "neural.batch_size=64", "neural.learning_rate=0.01",
            "evaluation.ks=[5]", "evaluation.primary_metric=ndcg_at_5", "neural.search.trials=1",
            f"neural.cache_dir={tmp_path / 'cache'}", f"neural.checkpoint_dir={tmp_path / 'ck'}",
            "neural.models={neumf: {embedding_dim: 4, mlp_layers: [8, 4]}, "
            "two_tower: {embedding_dim: 8, tower_layers: [], output_dim: 8}}"]
    args = [a for s in sets for a in ("--set", s)]
    night = _planted_copy(planted_template, tmp_path / "night")
    stages = [s for s in pipeline.plan(["two_tower", "neumf"]) if s.job == "train_neural"]
    status = pipeline.run(stages, ["--warehouse", night, *args], pipeline.in_driver_runner(REPO / "jobs"),
                          log_dir=tmp_path / "logs", mode="test", out=io.StringIO(), share_launch=True)
    assert [s.status for s in status.stages] == ["ok", "ok"], status.to_json()
    assert launches == [["two_tower", "neumf"]]
    assert "shared launch: 2 models trained" in (tmp_path / "logs" / "train_neural_two_tower.log").read_text()
    assert "trained in the shared launch of stage 'train_neural two_tower'" in (
        tmp_path / "logs" / "train_neural_neumf.log").read_text()
    for model in ("two_tower", "neumf"):
        assert "ndcg_at_5" in artifacts.load_metadata(spark, night, model)["metrics"]["validation"]

    alone = _planted_copy(planted_template, tmp_path / "alone")
    report = load_job("train_neural").main(["--model", "neumf", "--warehouse", alone, *args])
    assert report["launch"] == "own" and launches[-1] == ["neumf"]
    assert artifacts.load_state_dict_bytes(spark, night, "neumf") == artifacts.load_state_dict_bytes(
        spark, alone, "neumf")
    shared_meta, alone_meta = (artifacts.load_metadata(spark, wh, "neumf") for wh in (night, alone))
    assert [h["loss"] for h in shared_meta["history"]] == [h["loss"] for h in alone_meta["history"]]
    assert shared_meta["metrics"] == alone_meta["metrics"]


def test_a_graph_over_the_shared_launch_limit_is_refused_before_anything_is_materialised(spark, tmp_path,
                                                                                       monkeypatch):
    """neural._prepare with ``max_graph_bytes`` (what the shared launch passes): LightGCN's training
    pairs over the limit raise MemoryError, and the Petastorm cache stays empty; under it, the
    same model is prepared."""
    train, held = planted()
    split_rows = _split_rows(spark, train, held)
    cfg = _config(tmp_path, "neural.search.trials=1")
    args = dict(n_users=N_USERS, n_items=N_ITEMS, features=None, model_class=None, final=False, epochs=None,
                then_refit=True)
    from recsys_spark.train import data

    materialised = []
    real = data.materialise
    monkeypatch.setattr(data, "materialise", lambda *a, **k: materialised.append(1) or real(*a, **k))
    with pytest.raises(MemoryError, match="training graphs"):
        neural._prepare(spark, cfg, split_rows, "lightgcn", max_graph_bytes=1, **args)
    assert materialised == []
    prepared = neural._prepare(spark, cfg, split_rows, "lightgcn", max_graph_bytes=2**30, **args)
    try:
        assert prepared.job.graph is not None and prepared.job.refit.graph is not None and len(materialised) == 2
    finally:
        prepared.delete()
