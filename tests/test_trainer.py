"""The neural trainer: local metrics vs the evaluation library, the Petastorm data
path's batch shapes, checkpoint resume, a 2-process gloo run through
TorchDistributor that learns planted structure, jobs/train_neural.py end to end,
and the tuning sweep protocol."""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import math
import os
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys_spark.models.base import RecModel
from recsys_spark.train import checkpoint, local_metrics, loop
from recsys_spark.train.local_metrics import UserItems, ValidationSet

T0 = dt.datetime(2026, 1, 1)


class TinyMF(RecModel):
    """Matrix factorisation with BPR on sampled negatives: the smallest model the trainer can run."""

    name = "tiny_mf"
    input_kind = "pairs"
    needs_history = False
    dot_product = True
    default_params = {"dim": 8}

    def __init__(self, *, n_users, n_items, params):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        self.user = torch.nn.Embedding(n_users, self.params["dim"])
        self.item = torch.nn.Embedding(n_items, self.params["dim"])
        torch.nn.init.normal_(self.user.weight, std=0.1)
        torch.nn.init.normal_(self.item.weight, std=0.1)

    def loss(self, batch, ctx):
        users, items = batch["user_index"], batch["item_index"]
        k = ctx.negatives_per_positive
        neg = ctx.sample_negatives(users.shape[0] * k).view(-1, k)
        u = self.user(users)
        pos = (u * self.item(items)).sum(-1)
        negs = (u[:, None, :] * self.item(neg)).sum(-1)
        return -F.logsigmoid(pos[:, None] - negs).mean()

    def score_users(self, user_index, history, history_len):
        return self.user(user_index) @ self.item.weight.T


# --------------------------------------------------------------------------- planted data

N_GROUPS, USERS_PER_GROUP, ITEMS_PER_GROUP = 4, 20, 10
N_USERS, N_ITEMS = N_GROUPS * USERS_PER_GROUP, N_GROUPS * ITEMS_PER_GROUP


def planted(seed=0):
    """Users of group g consume items of group g only: 6 in train, 2 held out.
    Group 0's items are the most popular overall, so popularity is no oracle."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for u in range(N_USERS):
        g = u // USERS_PER_GROUP if u % 4 else 0  # a quarter of every group also likes group 0
        items = rng.permutation(np.arange(g * ITEMS_PER_GROUP, (g + 1) * ITEMS_PER_GROUP))
        if g != u // USERS_PER_GROUP:
            items = rng.permutation(np.arange(0, ITEMS_PER_GROUP))
        train += [(u, int(i), t) for t, i in enumerate(items[:6])]
        held += [(u, int(i)) for i in items[6:8]]
    return train, held


def validation_of(train, held, history_length=8):
    users = np.arange(N_USERS)
    seen = UserItems.from_pairs(np.array([u for u, _, _ in train]), np.array([i for _, i, _ in train]), N_USERS)
    rel = UserItems.from_pairs(np.array([u for u, _ in held]), np.array([i for _, i in held]), N_USERS)
    hist = np.full((N_USERS, history_length), N_ITEMS)
    return ValidationSet(users, hist, np.zeros(N_USERS, dtype=np.int64), seen, rel)


def pair_tensors(train):
    return {
        "user_index": torch.tensor([u for u, _, _ in train]),
        "item_index": torch.tensor([i for _, i, _ in train]),
        "weight": torch.ones(len(train)),
    }


def counts_of(train):
    return np.bincount([i for _, i, _ in train], minlength=N_ITEMS).astype(float)


def rows_df(spark, train):
    rows = [(u, i, 1.0, T0 + dt.timedelta(hours=t)) for u, i, t in train]
    return spark.createDataFrame(rows, "user_index int, item_index int, weight float, last_time timestamp")


# --------------------------------------------------------------------------- local metrics


def test_metric_formulas_on_a_hand_example():
    # One user, relevant {3, 7}; top-3 after excluding seen item 0: [3, 5, 7].
    scores = torch.tensor([[9.0, 1.0, 2.0, 8.0, 0.0, 7.0, 0.5, 6.0]])
    top = local_metrics.top_k_excluding(scores, np.array([0]), np.array([0]), 3)
    assert top.tolist() == [[3, 5, 7]]
    rel = UserItems.from_lists([[3, 7]])
    ndcg = (1 + 1 / math.log2(4)) / (1 + 1 / math.log2(3))
    assert local_metrics.metric_per_user(top, rel, "ndcg", 3)[0] == pytest.approx(ndcg)
    assert local_metrics.metric_per_user(top, rel, "precision", 3)[0] == pytest.approx(2 / 3)
    assert local_metrics.metric_per_user(top, rel, "recall", 3)[0] == pytest.approx(1.0)
    # Fewer scorable items than k: the missing positions are misses.
    short = local_metrics.top_k_excluding(torch.tensor([[1.0, float("-inf")]]), np.array([]), np.array([]), 3)
    assert short.tolist() == [[0, -1, -1]]
    with pytest.raises(ValueError, match="map_at_10"):
        local_metrics.parse_metric("map_at_10")


@pytest.mark.spark
def test_local_metrics_equal_the_evaluation_library(spark):
    """Same scores -> the trainer's numbers equal recsys_spark.evaluate.ranking_metrics."""
    from recsys_spark.evaluate import ranking

    rng = np.random.default_rng(7)
    n_users, n_items, k_list = 30, 25, [5]
    scores = torch.as_tensor(rng.normal(size=(n_users, n_items)), dtype=torch.float32)
    seen = UserItems.from_lists([rng.choice(n_items, rng.integers(0, 6), replace=False) for _ in range(n_users)])
    relevant_lists = []
    for u in range(n_users):
        pool = np.setdiff1d(np.arange(n_items), seen.indices[seen.indptr[u] : seen.indptr[u + 1]])
        relevant_lists.append(rng.choice(pool, rng.integers(1, 8), replace=False))
    relevant = UserItems.from_lists(relevant_lists)
    # One user has scores only for 2 unseen items: fewer recommendations than k.
    scores[5, 2:] = float("-inf")

    rec_rows = []
    for u in range(n_users):
        rows, items = seen.block(u, u + 1)
        top = local_metrics.top_k_excluding(scores[u : u + 1], rows, items, max(k_list))[0]
        rec_rows += [(u, int(i), r + 1) for r, i in enumerate(top) if i >= 0]
    recs = spark.createDataFrame(rec_rows, "user_index int, item_index int, rank int")
    rel_df = spark.createDataFrame([(u, [int(i) for i in r]) for u, r in enumerate(relevant_lists)],
                                   "user_index int, relevant array<int>")
    want = ranking.ranking_metrics(recs, rel_df, ks=k_list, n_items=n_items)
    for k in k_list:
        for name in local_metrics.METRICS:
            got = local_metrics.evaluate(lambda rows: scores[rows], n_users, seen, relevant,
                                         metric=f"{name}_at_{k}", batch_users=7)
            assert got == pytest.approx(want[f"{name}_at_{k}"], abs=1e-9), f"{name}_at_{k}"
            # Each training process scores a contiguous part of the users; the parts add up to the whole.
            parts = [local_metrics.metric_total(lambda rows: scores[rows], seen, relevant, metric=f"{name}_at_{k}",
                                                start=n_users * p // 3, stop=n_users * (p + 1) // 3, batch_users=4)
                     for p in range(3)]
            assert sum(parts) / n_users == pytest.approx(got, abs=1e-12)


# --------------------------------------------------------------------------- data path


@pytest.mark.spark
def test_examples_and_petastorm_batches_have_the_documented_shapes(spark, tmp_path):
    from recsys_spark.train import data

    train = [(0, 5, 3), (0, 2, 1), (0, 7, 2), (1, 4, 0)]  # (user, item, hour)
    rows = rows_df(spark, train)
    hist = {r["user_index"]: (r["history"], r["history_len"])
            for r in data.user_histories(rows, n_items=9, history_length=2).collect()}
    # Time order, the most recent 2, padded with n_items.
    assert hist == {0: ([7, 5], 2), 1: ([4, 9], 1)}

    examples = data.training_examples(rows, input_kind="pairs", needs_history=True, n_items=9, history_length=2)
    assert examples.columns == ["user_index", "item_index", "weight", "history", "history_len"]
    users, labels = data.validation_examples(rows, rows_df(spark, [(0, 1, 9), (1, 3, 9)]).select(
        "user_index", "item_index"), n_items=9, history_length=2)
    pd_ = data.materialise(spark, examples, cache_dir=str(tmp_path / "cache"), shard_count=2, history_length=2,
                           validation=(users, labels))
    try:
        assert pd_.files % 2 == 0 and pd_.rows == 4
        seen_rows = 0
        for rank in (0, 1):
            with pd_.shard_loader(rank=rank, world_size=2, batch_size=3, seed=1, epoch=0) as loader:
                for batch in loader:
                    b = batch["user_index"].shape[0]
                    assert batch["history"].shape == (b, 2) and batch["history_len"].shape == (b,)
                    assert batch["weight"].dtype == torch.float32 and not batch["item_index"].is_floating_point()
                    seen_rows += b
        assert seen_rows == 4  # the two shards partition the rows
        val = pd_.validation_set()
        assert val.users.tolist() == [0, 1]
        assert val.history.tolist() == [[7, 5], [4, 9]]
        assert val.seen.indices.tolist() == [2, 5, 7, 4] and val.relevant.indices.tolist() == [1, 3]
        # Reproducible: the same rows materialised again, delivered by Spark in another
        # order and partitioning (as after a shuffle), are read in the same order, shard by shard.
        from pyspark.sql import functions as SF

        reordered = examples.orderBy(SF.desc("item_index")).repartition(3)
        again = data.materialise(spark, reordered, cache_dir=str(tmp_path / "cache"), shard_count=2,
                                 history_length=2)
        try:
            assert [_read(again, r) for r in (0, 1)] == [_read(pd_, r) for r in (0, 1)]
        finally:
            again.delete()
    finally:
        pd_.delete()
    assert not any((tmp_path / "cache").iterdir())


def _read(pdata, rank):
    torch.manual_seed(5)  # the shuffling buffer draws from torch's RNG, which the loop seeds per epoch
    with pdata.shard_loader(rank=rank, world_size=2, batch_size=2, seed=1, epoch=3) as loader:
        return [(b["user_index"].tolist(), b["item_index"].tolist()) for b in loader]


# --------------------------------------------------------------------------- loop and checkpoints


def _settings(**kw):
    base = dict(epochs=4, patience=10, learning_rate=0.05, negatives_per_positive=4, seed=3, metric="ndcg_at_5")
    return loop.TrainSettings(**{**base, **kw})


def test_resume_after_a_crash_continues_where_it_stopped(tmp_path):
    train, held = planted()
    tensors, counts, val = pair_tensors(train), counts_of(train), validation_of(train, held)
    factory = loop.tensor_loader_factory(tensors, batch_size=32, seed=3)

    def fresh():
        torch.manual_seed(0)
        return TinyMF.build(n_users=N_USERS, n_items=N_ITEMS)

    straight = loop.train(fresh(), factory, _settings(), item_counts=counts, validation=val, log=lambda s: None)

    def crashing(epoch):
        if epoch == 2:
            raise RuntimeError("simulated crash")
        return factory(epoch)

    ckdir = tmp_path / "ck"
    with pytest.raises(RuntimeError, match="simulated crash"):
        loop.train(fresh(), crashing, _settings(), item_counts=counts, validation=val,
                   checkpoint_dir=str(ckdir), run_key="k", log=lambda s: None)
    saved = torch.load(checkpoint.checkpoint_path(ckdir), weights_only=True)
    assert saved["epoch"] == 2 and len(saved["history"]) == 2

    lines = []
    resumed = loop.train(fresh(), factory, _settings(), item_counts=counts, validation=val,
                         checkpoint_dir=str(ckdir), run_key="k", log=lines.append)
    assert resumed["resumed_from"] == 2
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3, 4]
    assert sum(line.startswith("epoch ") for line in lines) == 2  # only epochs 3 and 4 ran
    a, b = loop.state_dict_from_bytes(straight["state_dict"]), loop.state_dict_from_bytes(resumed["state_dict"])
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert [h["ndcg_at_5"] for h in resumed["history"]] == [h["ndcg_at_5"] for h in straight["history"]]

    # Another run's checkpoint is not resumed.
    other = loop.train(fresh(), factory, _settings(epochs=1), item_counts=counts, validation=val,
                       checkpoint_dir=str(ckdir), run_key="other", log=lambda s: None)
    assert other["resumed_from"] == 0


class MarchingScores(RecModel):
    """Three item scores that march at known speeds: one Adam step an epoch moves each moving
    item's ``position`` by the learning rate (a constant gradient: Adam's step is
    ``lr * g / |g|``), so every epoch's ranking, and the validation metric, is known in advance.

    score = start + speed * position; with learning rate 1, after epoch t (position t on the moving items):
    t=1 [1, 1.5, -5] top item 1; t=2 [2, 1.5, 0] top item 0; t=3 [3, 1.5, 5] and on: top item 2.
    """

    name = "marching"
    default_params = {}
    autocast_seen: list = []  # (device type, autocast enabled, loss dtype) of every loss call

    def __init__(self, *, n_users, n_items, params):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        self.position = torch.nn.Parameter(torch.zeros(3))
        self.register_buffer("start", torch.tensor([0.0, 1.5, -10.0]))
        self.register_buffer("speed", torch.tensor([1.0, 0.0, 5.0]))

    def loss(self, batch, ctx):
        device = self.position.device.type
        # A matmul: what autocast runs in reduced precision (an elementwise product it would not).
        out = (self.position[None, :] @ (self.speed > 0).float()[:, None]).squeeze()
        MarchingScores.autocast_seen.append((device, torch.is_autocast_enabled(device), out.dtype))
        return -out.float() + 0.0 * batch["weight"].sum()

    def score_users(self, user_index, history, history_len):
        return (self.start + self.speed * self.position).expand(user_index.shape[0], -1)


def marching_run(settings, *, device=None, checkpoint_dir=None):
    """Three validation users whose one relevant item is item 0; one batch an epoch."""
    users = 3
    val = ValidationSet(np.arange(users), np.full((users, 1), 3), np.zeros(users, dtype=np.int64),
                        UserItems.from_lists([[]] * users), UserItems.from_lists([[0]] * users))
    tensors = {"user_index": torch.arange(users), "item_index": torch.zeros(users, dtype=torch.long),
               "weight": torch.ones(users)}
    factory = loop.tensor_loader_factory(tensors, batch_size=users, seed=0)
    model = MarchingScores.build(n_users=users, n_items=3)
    out = loop.train(model, factory, settings, item_counts=np.ones(3), validation=val, device=device,
                     checkpoint_dir=checkpoint_dir, log=lambda s: None)
    return model, out


def test_early_stopping_keeps_the_best_epoch():
    """The metric is 0, 1, 0, 0, ... by construction: patience 2 must stop after epoch 4 of 10,
    and the weights returned are epoch 2's (the best), not epoch 4's (the last)."""
    settings = loop.TrainSettings(epochs=10, patience=2, learning_rate=1.0, seed=0, metric="ndcg_at_1",
                                  mixed_precision=False)
    model, out = marching_run(settings)
    assert [h["ndcg_at_1"] for h in out["history"]] == [0.0, 1.0, 0.0, 0.0]
    assert out["stopped_early"] is True and out["epochs_run"] == 4
    assert out["best_epoch"] == 1 and out["best_metric"] == 1.0
    returned = loop.state_dict_from_bytes(out["state_dict"])["position"]
    torch.testing.assert_close(returned, torch.tensor([2.0, 0.0, 2.0]))  # after epoch 2
    torch.testing.assert_close(model.position.detach(), torch.tensor([4.0, 0.0, 4.0]))  # the last epoch's
    # Without early stopping the same run goes on to the last epoch and keeps the best weights all the same.
    _, full = marching_run(dataclasses.replace(settings, epochs=6, early_stopping=False))
    assert full["stopped_early"] is False and full["epochs_run"] == 6 and full["best_epoch"] == 1
    torch.testing.assert_close(loop.state_dict_from_bytes(full["state_dict"])["position"],
                               torch.tensor([2.0, 0.0, 2.0]))


def test_popularity_negatives_follow_the_counts():
    sampler = loop.NegativeSampler(np.array([0.0, 1.0, 3.0]), "popularity", torch.device("cpu"))
    sampler.reseed(1)
    draws = sampler(40_000).numpy()
    assert set(np.unique(draws)) == {1, 2}
    assert (draws == 2).mean() == pytest.approx(0.75, abs=0.02)


# --------------------------------------------------------------------------- distributed


def _train_two_gloo_processes(spark, tmp_path, train, held, run, model_class=TinyMF):
    from pyspark import cloudpickle

    from recsys_spark.train import data, distributed

    # TinyMF lives in this test module, which the torchrun processes cannot import: ship it by value.
    cloudpickle.register_pickle_by_value(sys.modules[__name__])
    rows = rows_df(spark, train)
    examples = data.training_examples(rows, input_kind="pairs", needs_history=False, n_items=N_ITEMS,
                                      history_length=4)
    held_df = spark.createDataFrame(held, "user_index int, item_index int")
    val_frames = data.validation_examples(rows, held_df, n_items=N_ITEMS, history_length=4)
    pdata = data.materialise(spark, examples, cache_dir=str(tmp_path / f"cache{run}"), shard_count=2, seed=1,
                             validation=val_frames)
    job = distributed.WorkerJob(
        model_name="tiny_mf", model_class=model_class, build_kwargs={"n_users": N_USERS, "n_items": N_ITEMS, "params": {}},
        data=pdata, settings=_settings(epochs=8, patience=2), item_counts=data.item_counts(rows, N_ITEMS),
        batch_size=32, checkpoint_dir=str(tmp_path / f"ck{run}"), run_key="t",
        threads_per_process=1, use_gpu=False,
    )
    try:
        return distributed.run(spark, job, num_processes=2)
    finally:
        pdata.delete()
        cloudpickle.unregister_pickle_by_value(sys.modules[__name__])


@pytest.mark.spark
@pytest.mark.slow
def test_two_gloo_processes_learn_the_planted_structure(spark, tmp_path):
    train, held = planted()
    result = _train_two_gloo_processes(spark, tmp_path, train, held, run=1)

    val = validation_of(train, held)
    model = TinyMF.build(n_users=N_USERS, n_items=N_ITEMS)
    model.load_state_dict(loop.state_dict_from_bytes(result["state_dict"]))
    learnt = local_metrics.evaluate_model(model, val, metric="ndcg_at_5", device="cpu")
    pop = torch.as_tensor(counts_of(train), dtype=torch.float32)
    popularity = local_metrics.evaluate(lambda r: pop.expand(len(val.users[r]), -1), N_USERS, val.seen,
                                        val.relevant, metric="ndcg_at_5")
    assert learnt == pytest.approx(result["best_metric"])  # rank 0 validated the model it returned
    assert learnt > popularity + 0.2, (learnt, popularity)
    # Both processes stepped: each epoch's samples cover (about) every training pair once.
    assert all(h["steps"] >= 3 for h in result["history"])
    assert sum(h["samples_per_s"] * h["seconds"] for h in result["history"][:1]) == pytest.approx(
        len(train), rel=0.35)

    # Reproducible end to end (the same rows, arriving in another order, train the same weights
    # through Spark, Petastorm, two processes and DDP): test_train_neural_job_end_to_end_submitted_on_a_local_master
    # refits the job's model alone from its rows in another order and partitioning, and compares the bits.


class AbortingMF(TinyMF):
    """TinyMF whose rank-1 process aborts at its third step (SIGABRT, as std::terminate does)."""

    def loss(self, batch, ctx):
        import os

        import torch.distributed as dist

        if dist.get_rank() == 1 and ctx.step == 2:
            print("AbortingMF: rank 1 aborts now", flush=True)
            os.abort()
        return super().loss(batch, ctx)


@contextlib.contextmanager
def hang_bound(seconds):
    """Fail (rather than hang the suite) if the block runs longer than ``seconds``: a bound, not a speed test."""

    def expired(signum, frame):
        raise TimeoutError(f"still running after {seconds} s: hung")

    previous = signal.signal(signal.SIGALRM, expired)
    signal.alarm(seconds)
    try:
        yield
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.spark
@pytest.mark.slow
def test_a_rank_that_dies_fails_the_run_naming_rank_signal_and_last_line(spark, tmp_path):
    from recsys_spark.train import distributed

    train, held = planted()
    # Before the fix the run "succeeded" after rank 0 waited 300 s for the dead rank.
    with hang_bound(240), pytest.raises(distributed.TrainingProcessFailed) as failed:
        _train_two_gloo_processes(spark, tmp_path, train, held, run=3, model_class=AbortingMF)
    err = failed.value
    assert (err.rank, err.signal) == (1, "SIGABRT"), str(err)
    assert err.last_line == "AbortingMF: rank 1 aborts now", str(err)
    assert "rank 1 of 2 killed by SIGABRT" in str(err) and "AbortingMF: rank 1 aborts now" in str(err)
    # The session is usable afterwards (the barrier stage was aborted, not left running).
    assert spark.range(4).count() == 4


def test_describe_failure_reads_torchruns_report():
    from recsys_spark.train import distributed

    text = """Traceback (most recent call last):
  File "/x/pyspark/worker.py", line 1247, in main
RuntimeError: Command ['python', '-m', 'recsys_spark.train.launch', 'guard'] failed with return code 1. \
The task output is included below: [tiny_mf] epoch 1/8 loss 0.69
terminate called without an active exception
E1201 05:18:33.726000 10764 .../elastic/multiprocessing/api.py:1002] failed (exitcode: -6) local_rank: 0 (pid: 10803)
Traceback (most recent call last):
  File "/x/torch/distributed/run.py", line 1032, in <module>
torch.distributed.elastic.multiprocessing.errors.ChildFailedError:
============================================================
launch FAILED
------------------------------------------------------------
Failures:
  <NO_OTHER_FAILURES>
------------------------------------------------------------
Root Cause (first observed failure):
[0]:
  time      : 2026-12-01_05:18:33
  host      : localhost
  rank      : 1 (local_rank: 0)
  exitcode  : -6 (pid: 10803)
  error_file: <N/A>
  traceback : Signal 6 (SIGABRT) received by PID 10803
============================================================"""
    assert distributed.describe_failure(text) == {
        "rank": 1, "exitcode": -6, "signal": "SIGABRT", "last_line": "terminate called without an active exception"}
    raised = text.replace("terminate called without an active exception", "[rank0]: ValueError: bad batch")
    raised = raised.replace("rank      : 1", "rank      : 0").replace("exitcode  : -6", "exitcode  : 1")
    raised = raised.replace("Signal 6 (SIGABRT) received by PID 10803", "To enable traceback see: https://x")
    assert distributed.describe_failure(raised) == {
        "rank": 0, "exitcode": 1, "signal": None, "last_line": "[rank0]: ValueError: bad batch"}


# --------------------------------------------------------------------------- the job


def _write_planted_warehouse(spark, wh):
    """index tables, items (with genres and year) and a split from the planted data:
    train = the 6 training items, validation / test = one held-out item each."""
    from recsys_spark import io
    from recsys_spark.schemas import ITEM_INDEX_TABLE, ITEMS, SPLIT, USER_INDEX_TABLE

    train, held = planted()
    day = dt.date(2026, 1, 1)
    io.write_table(spark.createDataFrame([(f"u{u}", u, day) for u in range(N_USERS)],
                                         "user_id string, user_index int, first_indexed date"), wh, USER_INDEX_TABLE)
    io.write_table(spark.createDataFrame([(f"i{i}", i, day) for i in range(N_ITEMS)],
                                         "item_id string, item_index int, first_indexed date"), wh, ITEM_INDEX_TABLE)
    items = [(i, f"i{i}", 1, 1, T0, T0, f"t{i}", 1990 + i % 7, [f"g{i // ITEMS_PER_GROUP}"]) for i in range(N_ITEMS)]
    io.write_table(spark.createDataFrame(items, "item_index int, item_id string, popularity long, n_events long, "
                   "first_seen timestamp, last_seen timestamp, title string, year int, genres array<string>"),
                   wh, ITEMS)
    rows = [(u, i, 1.0, T0 + dt.timedelta(hours=t), "warm", "train") for u, i, t in train]
    rows += [(u, i, 1.0, T0 + dt.timedelta(days=2), "warm", "validation" if n % 2 == 0 else "test")
             for n, (u, i) in enumerate(held)]
    io.write_table(spark.createDataFrame(rows, "user_index int, item_index int, weight float, last_time timestamp, "
                                         "segment string, fold string"), wh, SPLIT)


@pytest.fixture(scope="module")
def planted_warehouse(spark, tmp_path_factory):
    """One planted warehouse for the job tests (each writes its own model's folder)."""
    wh = str(tmp_path_factory.mktemp("planted") / "wh")
    _write_planted_warehouse(spark, wh)
    return wh


@pytest.mark.spark
@pytest.mark.slow
def test_train_neural_job_end_to_end_submitted_on_a_local_master(spark, planted_warehouse, tmp_path):
    """jobs/train_neural.py on the planted warehouse through scripts/submit.sh with SPARK_MASTER=local[2]:
    it ends, with status 0 and its report; factor tables, metadata, eval recs; its fused refit is
    the refit launched alone, to the bit.

    One spark-submit for both what the job writes and that it exits: the barrier stage runs in
    the driver's JVM on a local master and leaves a non-daemon thread behind; the job printed
    its report and then never exited. The timeout bounds a hang; it says nothing about speed.
    (The job's main() in a running session, as the nightly run calls it: tests/test_neural_fit.py.)
    """
    from recsys_spark import io
    from recsys_spark.evaluate import folds
    from recsys_spark.models import artifacts
    from recsys_spark.schemas import EVAL_RECS, ITEM_FACTORS, USER_FACTORS
    from tests.conftest import REPO

    wh = planted_warehouse
    sets = ["neural.epochs=3", "neural.batch_size=64", "neural.learning_rate=0.01", "evaluation.ks=[5]",
            "evaluation.primary_metric=ndcg_at_5", f"neural.cache_dir={tmp_path / 'cache'}",
            f"neural.checkpoint_dir={tmp_path / 'ck'}",
            "neural.models={two_tower: {embedding_dim: 8, tower_layers: [], output_dim: 8}}",
            "neural.search.trials=1"]  # the configured fit, so that a refit alone can repeat it to the bit
    env = {**os.environ, "SPARK_MASTER": "local[2]", "PYTHONPATH": str(REPO), "SPARK_LOCAL_IP": "127.0.0.1"}
    env.pop("PYSPARK_GATEWAY_PORT", None)
    env.pop("PYSPARK_GATEWAY_SECRET", None)
    argv = [str(REPO / "scripts" / "submit.sh"), "jobs/train_neural.py", "--model", "two_tower", "--warehouse", wh,
            "--set", "spark.shuffle_partitions=2", *[a for s in sets for a in ("--set", s)]]
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        out, _ = proc.communicate(timeout=600)
    except subprocess.TimeoutExpired:
        proc.terminate()  # submit.sh ends spark-submit's process group on SIGTERM
        out, _ = proc.communicate()
        pytest.fail(f"train_neural did not exit within 600 s; its output ends:\n{out[-3000:]}")
    assert proc.returncode == 0, out[-5000:]
    assert "== train_neural" in out and '"model": "two_tower"' in out, out[-5000:]
    report_text = out.split("== train_neural\n", 1)[1]
    report, _ = json.JSONDecoder().raw_decode(report_text[report_text.index("{"):])
    assert report["model"] == "two_tower" and report["processes"] == 2, report

    meta = artifacts.load_metadata(spark, wh, "two_tower")
    assert meta["model"] == "two_tower" and meta["refit"] is True
    assert meta["kind"] == artifacts.KIND_DOT_PRODUCT and meta["item_features"] == ["genres", "year"]
    assert 1 <= meta["best_epoch"] <= 3 and "ndcg_at_5" in meta["metrics"]["validation"]
    # The trainer's own validation number is the evaluation library's (same model, users, definition).
    assert report["ndcg_at_5_validation"] == pytest.approx(report["ndcg_at_5_validation_in_trainer"], abs=1e-6)
    users = io.read_table(spark, wh, USER_FACTORS, path=io.table_path(wh, USER_FACTORS, model="two_tower"))
    items = io.read_table(spark, wh, ITEM_FACTORS, path=io.table_path(wh, ITEM_FACTORS, model="two_tower"))
    assert users.count() == N_USERS and items.count() == N_ITEMS
    recs = folds.read_eval_recs(spark, wh, "two_tower", "test")
    assert [(f.name, f.dataType) for f in recs.schema] == [(f.name, f.dataType) for f in EVAL_RECS.schema]
    assert recs.groupBy("user_index").count().agg({"count": "min"}).first()[0] == 5
    assert not any((tmp_path / "cache").iterdir()) and not list((tmp_path / "ck").rglob("*.pt"))

    # The job refits in the selection's launch of the processes; a refit launched alone for
    # the same epochs must give the same model, to the bit. Two-tower's loss reads the
    # training counts (log-q), which differ between train and train + validation.
    # The alone refit reads the rows in another order and partitioning (as after a shuffle):
    # seeded and reproducible end to end, through Spark, Petastorm, two processes and DDP.
    from pyspark.sql import functions as SF

    from recsys_spark.config import load_config
    from recsys_spark.schemas import SPLIT
    from recsys_spark.train import neural

    cfg = load_config(overrides=[f"warehouse={wh}", *sets])
    sizes = dict(n_users=N_USERS, n_items=N_ITEMS, features=neural.item_features(spark, wh, N_ITEMS))
    reordered = io.read_table(spark, wh, SPLIT).orderBy(SF.rand(seed=5)).repartition(3)
    alone = neural.fit(spark, cfg, reordered, "two_tower", final=True, epochs=meta["best_epoch"], **sizes)
    neural.clear_checkpoints(cfg, "two_tower")
    assert alone.epochs_run == meta["epochs"] == meta["best_epoch"]
    saved = items.orderBy("item_index").toPandas()
    refit_alone = neural.item_factor_table(spark, alone).orderBy("item_index").toPandas()
    assert np.array_equal(np.stack(saved["factors"]), np.stack(refit_alone["factors"]))


@pytest.mark.spark
@pytest.mark.slow
def test_torch_kind_models_are_scored_with_torch_model_scorer_and_saved(spark, planted_warehouse):
    """The non-dot-product path of the job without a training run: TorchModelScorer
    top-K on test, model.pt round trip, build arguments in metadata."""
    from recsys_spark import io, split
    from recsys_spark.evaluate import folds
    from recsys_spark.config import load_config
    from recsys_spark.models import artifacts, registry
    from recsys_spark.schemas import SPLIT
    from recsys_spark.train import neural

    wh = planted_warehouse
    cfg = load_config(overrides=[f"warehouse={wh}", "evaluation.ks=[5]", "evaluation.primary_metric=ndcg_at_5"])
    torch.manual_seed(0)
    kwargs = {"n_users": N_USERS, "n_items": N_ITEMS, "params": {"embedding_dim": 4, "mlp_layers": [8, 4]}}
    blob = loop.state_dict_bytes(registry.get("neumf").build(**kwargs).state_dict())
    trained = neural.TrainedNetwork(name="neumf", build_kwargs=kwargs, state_dict=blob, history=[], best_epoch=0,
                                    best_metric=None, epochs_run=1, stopped_early=False, resumed_from=0,
                                    seconds=0.0)
    split_rows = io.read_table(spark, wh, SPLIT)
    model = neural.fitted_model(spark, cfg, trained, split.training_rows(split_rows, final=True))
    assert model.kind == artifacts.KIND_TORCH
    recs = folds.score_model(model, split_rows, folds.FINAL_FOLD, cfg).toPandas()
    assert recs.groupby("user_index").size().eq(5).all() and recs["user_index"].nunique() == N_USERS
    # Never a training (or validation) item: the test fold's exclusion set.
    train, held = planted()
    seen = {(u, i) for u, i, _ in train} | {pair for n, pair in enumerate(held) if n % 2 == 0}
    assert not seen & set(zip(recs["user_index"], recs["item_index"]))
    model.save(spark, wh, config=cfg.to_dict(), n_users=N_USERS, n_items=N_ITEMS, metrics={})
    meta = artifacts.load_metadata(spark, wh, "neumf")
    assert meta["kind"] == artifacts.KIND_TORCH and meta["build_kwargs"] == kwargs
    assert artifacts.load_state_dict_bytes(spark, wh, "neumf") == blob


# --------------------------------------------------------------------------- the tuning sweep


def test_sweep_script_selects_refits_and_scores_test_like_the_job(spark):
    """scripts/sweep_neural.py's protocol on the planted split, fed by the job's Spark
    transforms: the chosen epoch comes from validation, the test set is the fold's
    users with their training items excluded, and the refit model beats popularity on test."""
    import importlib.util as iu

    from recsys_spark import schemas
    from recsys_spark.config import load_config
    from tests.conftest import REPO

    spec = iu.spec_from_file_location("sweep_neural", REPO / "scripts" / "sweep_neural.py")
    sweep = iu.module_from_spec(spec)
    spec.loader.exec_module(sweep)
    train, held = planted()
    rows = [(u, i, 1.0, T0 + dt.timedelta(hours=t), "warm", "train") for u, i, t in train]
    rows += [(u, i, 1.0, T0 + dt.timedelta(days=2), "warm", "validation" if n % 2 == 0 else "test")
             for n, (u, i) in enumerate(held)]
    split_rows = spark.createDataFrame(rows, schemas.SPLIT.schema)
    cfg = load_config(overrides=["evaluation.ks=[5]", "evaluation.primary_metric=ndcg_at_5"])
    setting = {"model": "neumf", "params": {"embedding_dim": 8, "mlp_layers": [16, 8]},
               "neural": {"epochs": 6, "patience": 6, "batch_size": 32, "learning_rate": 0.01}}
    result = sweep.run_setting(setting, cfg, split_rows, n_users=N_USERS, n_items=N_ITEMS, features=None)

    assert 1 <= result["best_epoch"] <= 6 and result["metric"] == "ndcg_at_5"
    test = sweep.held_out_set(split_rows, "test", final=True, n_items=N_ITEMS, history_length=4)
    test_pairs = {(u, i) for n, (u, i) in enumerate(held) if n % 2 == 1}
    assert sorted(test.users.tolist()) == sorted({u for u, _ in test_pairs})
    for r, user in enumerate(test.users):
        relevant = test.relevant.indices[test.relevant.indptr[r]:test.relevant.indptr[r + 1]]
        seen = test.seen.indices[test.seen.indptr[r]:test.seen.indptr[r + 1]]
        assert {(int(user), int(i)) for i in relevant} == {p for p in test_pairs if p[0] == user}
        # Trained on train + validation: both folds' items are excluded from the ranking.
        assert set(seen.tolist()) == {i for u, i, _ in train if u == user} | {
            i for n, (u, i) in enumerate(held) if n % 2 == 0 and u == user}
    trained_on = [i for _, i, _ in train] + [i for n, (_, i) in enumerate(held) if n % 2 == 0]
    pop = torch.as_tensor(np.bincount(trained_on, minlength=N_ITEMS), dtype=torch.float32)
    popularity = local_metrics.evaluate(lambda r: pop.expand(len(test.users[r]), -1), len(test.users), test.seen,
                                        test.relevant, metric="ndcg_at_5")
    assert result["test"] > popularity + 0.1, (result, popularity)


def test_run_job_exit_status_is_what_python_would_have_given():
    from recsys_spark.session import exit_code_of

    assert exit_code_of(SystemExit()) == 0 and exit_code_of(SystemExit(0)) == 0
    assert exit_code_of(SystemExit(3)) == 3
    assert exit_code_of(SystemExit("usage: ...")) == 1  # sys.exit("message")
    assert exit_code_of(ValueError("boom")) == 1
