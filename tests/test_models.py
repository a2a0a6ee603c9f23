"""The neural models' contract, on tiny synthetic data with a planted answer.

Two clusters of users; each user consumes only their own cluster's items. One
in-cluster item per user is held out of training: after a few hundred
full-batch steps every model must rank it above every out-of-cluster item for
most users. The loop below is a deliberately plain one (not the real trainer
in recsys_spark/train/): the contract is the model's, whoever trains it.
Every registered model runs every contract test; model-specific tests follow.
"""
from __future__ import annotations

import functools
import io
import math

import numpy as np
import pytest
import torch

from recsys_spark.models import registry
from recsys_spark.models.base import TrainContext
from recsys_spark.scoring.torch_model import TorchModelScorer, model_from_bytes, padded_histories, state_dict_bytes

# Tiny tensors: one torch thread for the module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")


N_CLUSTERS, USERS_PER_CLUSTER, ITEMS_PER_CLUSTER, TRAIN_PER_USER = 2, 24, 12, 7
N_USERS, N_ITEMS = N_CLUSTERS * USERS_PER_CLUSTER, N_CLUSTERS * ITEMS_PER_CLUSTER
STEPS, LR = 300, 0.01
# Capacity matched to the planted structure (two clusters: rank 2); everything
# else is each model's default. With much more capacity and no early stopping,
# the factor models go on to fit each user's random choice of in-cluster items,
# and the held-out item is then just one more item the user did not consume.
TEST_PARAMS = {
    "neumf": {"embedding_dim": 2, "mlp_layers": [4, 2]},
    "two_tower": {"embedding_dim": 4, "tower_layers": [], "output_dim": 2, "temperature": 0.1},
    "multvae": {"hidden_dims": [32], "latent_dim": 8, "dropout": 0.2, "total_anneal_steps": 100},
    "lightgcn": {"embedding_dim": 4},
    "dlae": {"l2": 1.0},  # the penalty is per user: 100 over 48 users would hold B at zero
    # Sequence models: small, and a window as long as the histories here.
    "gru4rec": {"embedding_dim": 8, "hidden_dim": 16, "max_length": 8},
    "sasrec": {"embedding_dim": 8, "max_length": 8, "num_blocks": 1},
    "caser": {"embedding_dim": 2, "L": 3, "n_h": 4, "n_v": 2, "dropout": 0.2},
}
MODELS = registry.names()
DOT_MODELS = [n for n in MODELS if registry.get(n).dot_product]




def _planted_data():
    """Per user: training items (own cluster, in 'time' order) and one held-out own-cluster item."""
    rng = np.random.RandomState(0)
    train, held_out, cluster = [], [], []
    for u in range(N_USERS):
        c = u // USERS_PER_CLUSTER
        items = rng.permutation(ITEMS_PER_CLUSTER)[: TRAIN_PER_USER + 1] + c * ITEMS_PER_CLUSTER
        train.append([int(i) for i in items[:-1]])
        held_out.append(int(items[-1]))
        cluster.append(c)
    return train, np.array(held_out), np.array(cluster)


TRAIN, HELD_OUT, CLUSTER = _planted_data()
# Item metadata for models that read it (uninformative on purpose: the clusters
# must be learnt from interactions): 3 random genres and a normalised year.
_frng = np.random.RandomState(1)
ITEM_FEATURES = {
    "genres": torch.from_numpy((_frng.rand(N_ITEMS, 3) < 0.4).astype(np.float32)),
    "year": torch.from_numpy(_frng.rand(N_ITEMS, 1).astype(np.float32)),
}


def pad(histories: list[list[int]], length: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, length or max(len(h) for h in histories))
    out = torch.full((len(histories), width), N_ITEMS, dtype=torch.long)
    for row, h in enumerate(histories):
        out[row, : len(h)] = torch.tensor(h, dtype=torch.long)
    return out, torch.tensor([len(h) for h in histories])


def full_batch(name: str) -> dict[str, torch.Tensor]:
    """Every training example as one batch, in the base module's batch format."""
    if registry.get(name).input_kind == "histories":
        history, history_len = pad(TRAIN)
        return {"user_index": torch.arange(N_USERS), "history": history, "history_len": history_len}
    users = [u for u in range(N_USERS) for _ in TRAIN[u]]
    history, history_len = pad([TRAIN[u] for u in users])
    return {
        "user_index": torch.tensor(users),
        "item_index": torch.tensor([i for u in range(N_USERS) for i in TRAIN[u]]),
        "weight": torch.ones(len(users)),
        "history": history,
        "history_len": history_len,
    }


def item_log_q() -> torch.Tensor:
    counts = torch.bincount(torch.tensor([i for h in TRAIN for i in h]), minlength=N_ITEMS).float()
    return torch.log(counts.clamp(min=1) / counts.sum())


def context(step: int = 0, total_steps: int = STEPS) -> TrainContext:
    return TrainContext(
        n_items=N_ITEMS,
        sample_negatives=lambda n: torch.randint(0, N_ITEMS, (n,)),
        negatives_per_positive=4,
        item_log_q=item_log_q(),
        step=step,
        total_steps=total_steps,
    )


# The training graph, for models that propagate over it (needs_graph): the training pairs.
GRAPH = (np.array([u for u in range(N_USERS) for _ in TRAIN[u]]), np.array([i for h in TRAIN for i in h]))


def build(name: str, params: dict | None = None, seed: int = 0):
    torch.manual_seed(seed)
    cls = registry.get(name)
    graph = {"graph": GRAPH} if getattr(cls, "needs_graph", False) else {}
    return cls.build(
        n_users=N_USERS, n_items=N_ITEMS, params={**TEST_PARAMS.get(name, {}), **(params or {})},
        item_features=ITEM_FEATURES, **graph,
    )


def train(name: str, params: dict | None = None, *, steps: int = STEPS, seed: int = 0):
    model = build(name, params, seed)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    batch, losses = full_batch(name), []
    model.train()
    for step in range(steps):
        loss = model.loss(batch, context(step, steps))
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return model.eval(), losses


def trained(name: str, loss: str | None = None):
    """The model trained on the planted data, once per test run."""
    return _trained(name, loss)


@functools.lru_cache(maxsize=None)
def _trained(name: str, loss: str | None):
    return train(name, {"loss": loss} if loss else None)


def all_scores(model) -> torch.Tensor:
    history, history_len = pad(TRAIN)
    with torch.no_grad():
        return model.score_users(torch.arange(N_USERS), history, history_len)


# --------------------------------------------------------------------------- registry and config


def test_registry_rejects_unknown_name_listing_known_ones():
    with pytest.raises(KeyError, match="unknown model 'nope'") as err:
        registry.get("nope")
    for name in ("neumf", "two_tower", "multvae"):
        assert name in str(err.value)
    assert set(MODELS) >= {"neumf", "two_tower", "multvae"}


@pytest.mark.parametrize("name", MODELS)
def test_build_rejects_unknown_params(name):
    with pytest.raises(ValueError, match="unknown parameter"):
        registry.get(name).build(n_users=2, n_items=3, params={"no_such_param": 1})


@pytest.mark.parametrize("name", MODELS)
def test_registered_name_is_the_class_name(name):
    # Its default_params (a comment per key) are the model's defaults; config overrides them
    # under neural.models.<name>.
    assert registry.get(name).name == name


# --------------------------------------------------------------------------- the contract


@pytest.mark.parametrize("name", MODELS)
def test_forward_and_loss_on_one_batch(name):
    model = build(name)
    batch = {k: v[:16] for k, v in full_batch(name).items()}
    loss = model.loss(batch, context())
    assert loss.dim() == 0 and torch.isfinite(loss)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)

    model.eval()
    with torch.no_grad():
        out = model(batch)
        scores = model.score_users(batch["user_index"], batch["history"], batch["history_len"])
    assert scores.shape == (16, N_ITEMS) and torch.isfinite(scores).all()
    if registry.get(name).input_kind == "pairs":  # forward scores the batch's pairs
        assert out.shape == (16,)
        torch.testing.assert_close(out, scores[torch.arange(16), batch["item_index"]], rtol=1e-5, atol=1e-5)
    else:  # forward scores the catalog
        torch.testing.assert_close(out, scores)


@pytest.mark.parametrize("name,loss", [(n, None) for n in MODELS] + [("neumf", "bpr")])
def test_learns_the_planted_clusters(name, loss):
    model, losses = trained(name, loss)
    first, last = np.mean(losses[:20]), np.mean(losses[-20:])
    assert last < 0.9 * first, f"loss did not fall: {first:.4f} -> {last:.4f}"

    scores = all_scores(model)
    scores[torch.arange(N_USERS).repeat_interleave(TRAIN_PER_USER), torch.tensor(TRAIN).flatten()] = -math.inf
    own = torch.tensor(CLUSTER)[:, None] == (torch.arange(N_ITEMS) // ITEMS_PER_CLUSTER)[None, :]
    best_other = scores.masked_fill(own, -math.inf).max(dim=1).values
    wins = (scores[torch.arange(N_USERS), torch.from_numpy(HELD_OUT)] > best_other).float().mean().item()
    assert wins >= 0.8, f"held-out in-cluster item beat every out-of-cluster item for only {wins:.0%} of users"


@pytest.mark.parametrize("name", MODELS)
def test_seeded_runs_are_identical(name):
    a, b = build(name, seed=7), build(name, seed=7)
    for (ka, va), (kb, vb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert ka == kb and torch.equal(va, vb)
    assert train(name, steps=5, seed=7)[1] == train(name, steps=5, seed=7)[1]
    assert train(name, steps=5, seed=7)[1] != train(name, steps=5, seed=8)[1]


@pytest.mark.parametrize("name", MODELS)
def test_save_load_round_trip_keeps_scores(name):
    model, _ = trained(name)
    kwargs = dict(n_users=N_USERS, n_items=N_ITEMS, params=model.params, item_features=ITEM_FEATURES)
    loaded = model_from_bytes(name, state_dict_bytes(model), kwargs)
    assert not loaded.training
    torch.testing.assert_close(all_scores(loaded), all_scores(model), rtol=0, atol=0)
    # and through a plain torch.save file
    buf = io.BytesIO()
    torch.save(model.state_dict(), buf)
    fresh = build(name, model.params, seed=123)
    fresh.load_state_dict(torch.load(io.BytesIO(buf.getvalue()), weights_only=True))
    torch.testing.assert_close(all_scores(fresh.eval()), all_scores(model), rtol=0, atol=0)


@pytest.mark.parametrize("name", MODELS)
def test_batch_scores_equal_single_user_scores(name):
    model, _ = trained(name)
    batch = all_scores(model)
    for u in (0, 5, N_USERS - 1):
        history, history_len = pad([TRAIN[u]])  # no padding column at all
        with torch.no_grad():
            single = model.score_users(torch.tensor([u]), history, history_len)
        torch.testing.assert_close(single[0], batch[u], rtol=1e-5, atol=1e-5)
    # Extra padding changes nothing either.
    history, history_len = pad(TRAIN, length=TRAIN_PER_USER + 5)
    with torch.no_grad():
        padded = model.score_users(torch.arange(N_USERS), history, history_len)
    torch.testing.assert_close(padded, batch, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("name", DOT_MODELS)
def test_dot_product_vectors_give_the_scores(name):
    model, _ = trained(name)
    history, history_len = pad(TRAIN)
    with torch.no_grad():
        users = model.user_vectors(torch.arange(N_USERS), history, history_len)
        items = model.item_vectors()
    assert items.shape[0] == N_ITEMS and users.shape == (N_USERS, items.shape[1])
    torch.testing.assert_close(users @ items.T, all_scores(model), rtol=1e-5, atol=1e-5)


# --------------------------------------------------------------------------- Spark scorer


@pytest.mark.spark
@pytest.mark.parametrize("name", MODELS)
def test_torch_scorer_matches_the_model(spark, name):
    from recsys_spark.scoring.blocked import top_k

    model, _ = trained(name)
    length, k = 4, 5
    seen = {u: TRAIN[u] for u in range(0, N_USERS, 3)}
    seen[1] = None  # a user with no training history
    scorer = TorchModelScorer(
        spark, name, state_dict_bytes(model),
        dict(n_users=N_USERS, n_items=N_ITEMS, params=model.params, item_features=ITEM_FEATURES),
        history_length=length,
    )
    users = spark.createDataFrame(sorted(seen.items()), "user_index int, seen array<int>").repartition(2)
    got = top_k(users, scorer, k=k, batch_users=4).toPandas()

    history, history_len = pad([(s or [])[-length:] for _, s in sorted(seen.items())])
    with torch.no_grad():
        want = model.score_users(torch.tensor(sorted(seen)), history, history_len)
    for row, (u, s) in enumerate(sorted(seen.items())):
        if s:
            want[row, s] = -math.inf
        values, items = torch.topk(want[row], k)
        mine = got[got.user_index == u].sort_values("rank")
        assert mine["rank"].tolist() == list(range(1, k + 1))
        assert mine["item_index"].tolist() == items.tolist(), f"user {u}"
        np.testing.assert_allclose(mine["score"].to_numpy(), values.numpy(), rtol=1e-5, atol=1e-5)


def test_torch_scorer_builds_histories_and_blanks_unknown_users(spark):
    history, history_len = padded_histories([[1, 2, 3, 4, 5], None, np.array([7, 99, 8])], n_items=10, length=3)
    assert history.tolist() == [[3, 4, 5], [10, 10, 10], [7, 8, 10]]  # last 3; None; 99 is no item of the model
    assert history_len.tolist() == [3, 0, 2]

    import pandas as pd

    for name in MODELS:
        model, _ = trained(name)
        scorer = TorchModelScorer(
            spark, name, state_dict_bytes(model),
            dict(n_users=N_USERS, n_items=N_ITEMS, params=model.params, item_features=ITEM_FEATURES),
        )
        scores = scorer.score(pd.DataFrame({"user_index": [0, N_USERS + 3], "seen": [TRAIN[0], TRAIN[0]]}))
        assert scores.shape == (2, N_ITEMS) and torch.isfinite(scores[0]).all()
        if registry.get(name).input_kind == "histories":  # no user id needed: scored from the history
            torch.testing.assert_close(scores[1], scores[0])
        else:  # no embedding for a user indexed after training: no recommendations
            assert torch.isneginf(scores[1]).all()


# --------------------------------------------------------------------------- model-specific


def test_two_tower_full_softmax_masks_the_users_other_positives():
    """Full softmax: every catalog item is a column, and the items of the row's history other
    than its target (the user's other positives) are masked out of the denominator."""
    model = build("two_tower", {"negatives": "full", "user_input": "prefix"}).eval()
    # Row 0's target is in its history (the trainer's case); row 1's (23) is not in user 2's.
    users, items = torch.tensor([0, 2]), torch.tensor([TRAIN[0][3], 23])
    history, history_len = pad([TRAIN[0], TRAIN[2]])
    batch = {"user_index": users, "item_index": items, "history": history, "history_len": history_len}
    with torch.no_grad():
        before, before_len = pad([TRAIN[0][:3], TRAIN[2]])  # the user tower sees what came before the target
        logits = model.user_vectors(users, before, before_len) @ model.item_vectors().T
        logits = logits / TEST_PARAMS["two_tower"]["temperature"]
        want, unmasked = [], []
        for row, (target, seen) in enumerate(zip(items.tolist(), (TRAIN[0], TRAIN[2]))):
            kept = [i for i in range(N_ITEMS) if i == target or i not in seen]
            assert len(kept) == N_ITEMS - len(seen) + (target in seen)
            want.append(torch.logsumexp(logits[row, kept], dim=0) - logits[row, target])
            unmasked.append(torch.logsumexp(logits[row], dim=0) - logits[row, target])
        got = model.loss(batch, context()).item()
        assert got == pytest.approx(torch.stack(want).mean().item(), rel=1e-5)
        assert got < torch.stack(unmasked).mean().item() - 1e-3  # the mask removed real mass
        # No sampling, so no log-q correction: q changes nothing.
        ctx = context()
        ctx.item_log_q = torch.log(torch.linspace(0.01, 1.0, N_ITEMS))
        assert model.loss(batch, ctx).item() == pytest.approx(got, rel=1e-6)


def test_two_tower_budgets_the_full_softmax_logits():
    from recsys_spark import memory
    from recsys_spark.train import neural

    cls = registry.get("two_tower")
    full = cls.score_rows_per_step(batch_size=1024, history_length=50, params={"negatives": "full"})
    assert full >= 3 * 1024 and cls.score_rows_per_step(batch_size=1024, history_length=50,
                                                        params={"negatives": "in_batch"}) < full
    # 1M items at batch 1024: GBs of logits a step, refused with the way out named.
    kwargs = {"n_users": 1000, "n_items": 1_000_000, "params": {"negatives": "full"}}
    need = memory.training_need(memory.parameter_bytes(cls, kwargs), n_items=1_000_000, score_rows=full)
    with pytest.raises(memory.MemoryBudgetError, match="negatives: in_batch"):
        neural.check_training_memory(cls, kwargs, name="two_tower", n_items=1_000_000, batch_size=1024,
                                     num_processes=1, available=int(need / memory.PYTHON_SHARE * 0.9),
                                     history_length=50)
    in_batch = {**kwargs, "params": {"negatives": "in_batch"}}
    neural.check_training_memory(cls, in_batch, name="two_tower", n_items=1_000_000, batch_size=1024,
                                 num_processes=1, available=int(need / memory.PYTHON_SHARE * 0.9), history_length=50)
    with pytest.raises(ValueError, match="negatives must be one of"):
        cls.build(n_users=2, n_items=3, params={"negatives": "sampled"})


def test_two_tower_masks_in_batch_duplicates_of_the_positive():
    model = build("two_tower", {"negatives": "in_batch"})
    history, history_len = pad([TRAIN[u] for u in (0, 1, 2)])
    batch = {"user_index": torch.tensor([0, 1, 2]), "item_index": torch.tensor([5, 5, 5]),
             "history": history, "history_len": history_len}
    # Every column is the row's own positive: no negatives, so nothing to lose.
    assert model.loss(batch, context()).item() == pytest.approx(0.0, abs=1e-6)


def test_two_tower_in_batch_loss_is_the_log_q_corrected_softmax():
    model = build("two_tower", {"negatives": "in_batch"}).eval()
    users, items = torch.tensor([0, 30, 31]), torch.tensor([1, 13, 20])
    history, history_len = pad([[2, 3], [14], [21, 22]])  # the targets are not in these histories
    batch = {"user_index": users, "item_index": items, "history": history, "history_len": history_len}
    log_q = torch.log(torch.tensor([0.5, 0.2, 0.3]))
    full_log_q = torch.zeros(N_ITEMS).index_put((items,), log_q)
    ctx = context()
    ctx.item_log_q = full_log_q
    with torch.no_grad():
        u, v = model.user_vectors(users, history, history_len), model._item_vectors_of(items)
        logits = u @ v.T / TEST_PARAMS["two_tower"]["temperature"] - log_q[None, :]  # Yi et al., eq. 3
        want = -torch.log_softmax(logits, dim=1).diagonal().mean()
        assert model.loss(batch, ctx).item() == pytest.approx(want.item(), rel=1e-5)
        # Uniform q (also the fallback without ctx.item_log_q) changes no softmax.
        plain = -torch.log_softmax(u @ v.T / TEST_PARAMS["two_tower"]["temperature"], dim=1).diagonal().mean()
        ctx.item_log_q = None
        assert model.loss(batch, ctx).item() == pytest.approx(plain.item(), rel=1e-5)
        ctx.item_log_q = torch.full((N_ITEMS,), -3.0)
        assert model.loss(batch, ctx).item() == pytest.approx(plain.item(), rel=1e-5)


def test_two_tower_prefix_trains_on_the_history_before_the_target():
    # In-batch: its mask does not read the history, so only the user tower could tell the two apart
    # (the full softmax masks the whole history's items; its test above cuts the history the same way).
    model = build("two_tower", {"negatives": "in_batch", "user_input": "prefix"}).eval()
    users, items = torch.tensor([0, 1, 2]), torch.tensor([TRAIN[0][3], TRAIN[1][0], 23])  # 23: not in user 2's history
    full, full_len = pad([TRAIN[0], TRAIN[1], TRAIN[2]])
    before, before_len = pad([TRAIN[0][:3], [], TRAIN[2]])
    a = model.loss({"user_index": users, "item_index": items, "history": full, "history_len": full_len}, context())
    b = model.loss({"user_index": users, "item_index": items, "history": before, "history_len": before_len}, context())
    assert a.item() == pytest.approx(b.item(), rel=1e-6)


def test_two_tower_others_input_is_the_history_without_the_target_and_no_user_id():
    """user_input "others": the user tower sees the row's whole history bar its target (not the
    prefix before it) and no user-id embedding; serving reads the full history the same way."""
    model = build("two_tower", {"user_input": "others", "negatives": "in_batch"}).eval()
    assert model.user_embedding is None and not any("user_embedding" in k for k in model.state_dict())
    items = torch.tensor([TRAIN[0][3], TRAIN[1][0], 23])  # 23: not in user 2's history
    full, full_len = pad([TRAIN[0], TRAIN[1], TRAIN[2]])
    others, others_len = pad([TRAIN[0][:3] + TRAIN[0][4:], TRAIN[1][1:], TRAIN[2]])
    before, before_len = pad([TRAIN[0][:3], [], TRAIN[2]])

    def loss(users, history, history_len):
        batch = {"user_index": torch.tensor(users), "item_index": items, "history": history, "history_len": history_len}
        return model.loss(batch, context()).item()

    got = loss([0, 1, 2], full, full_len)
    assert got == pytest.approx(loss([0, 1, 2], others, others_len), rel=1e-6)
    assert got != pytest.approx(loss([0, 1, 2], before, before_len), rel=1e-3)  # not the prefix
    # The user's id is not an input: other (distinct) ids, the same loss and vectors.
    assert got == pytest.approx(loss([40, 41, 42], full, full_len), rel=1e-6)
    with torch.no_grad():
        torch.testing.assert_close(model.user_vectors(torch.tensor([0, 1, 2]), full, full_len),
                                   model.user_vectors(torch.tensor([40, 41, 42]), full, full_len))


def test_two_tower_history_dropout_only_while_training():
    params = {"user_input": "others", "negatives": "full", "history_dropout": 0.5}
    model, plain = build("two_tower", params), build("two_tower", {**params, "history_dropout": 0.0})
    history, history_len = pad([TRAIN[u] for u in range(6)])
    batch = {"user_index": torch.arange(6), "item_index": torch.tensor([TRAIN[u][0] for u in range(6)]),
             "history": history, "history_len": history_len}
    with torch.no_grad():
        model.eval(), plain.eval()
        assert model.loss(batch, context()).item() == pytest.approx(plain.loss(batch, context()).item(), rel=1e-6)
        model.train()
        seen = model.training_input(history, batch["item_index"])
        kept = (seen != N_ITEMS).sum().item()
        assert 0 < kept < (history != N_ITEMS).sum().item() - 6  # some dropped beyond the targets
        assert model.loss(batch, context()).item() != pytest.approx(plain.loss(batch, context()).item(), rel=1e-4)
    with pytest.raises(ValueError, match="history_dropout"):
        registry.get("two_tower").build(n_users=2, n_items=3, params={"history_dropout": 1.0})
    with pytest.raises(ValueError, match="user_input must be one of"):
        registry.get("two_tower").build(n_users=2, n_items=3, params={"user_input": "all"})


def test_two_tower_item_features_reach_the_item_vectors():
    model = build("two_tower").eval()
    with torch.no_grad():
        before = model.item_vectors()
        model.item_feature_matrix[3] += 1.0
        after = model.item_vectors()
    assert not torch.allclose(before[3], after[3])
    torch.testing.assert_close(before[4:], after[4:])
    # Without metadata the model still builds; malformed metadata is refused.
    registry.get("two_tower").build(n_users=2, n_items=3)
    with pytest.raises(ValueError, match="genres"):
        registry.get("two_tower").build(n_users=2, n_items=3, item_features={"genres": torch.zeros(4, 2)})


def test_multvae_kl_weight_rises_linearly_to_the_cap():
    model = registry.get("multvae").build(n_users=2, n_items=3, params={"anneal_cap": 0.2, "total_anneal_steps": 100})
    assert [model.beta(s, 10_000) for s in (0, 50, 100, 500)] == pytest.approx([0.0, 0.1, 0.2, 0.2])
    whole_run = registry.get("multvae").build(n_users=2, n_items=3, params={"anneal_cap": 0.2})
    assert [whole_run.beta(s, 1000) for s in (0, 250, 1000)] == pytest.approx([0.0, 0.05, 0.2])


def test_multvae_scores_without_sampling_or_dropout():
    model = build("multvae", {"dropout": 0.9})
    model.train()  # even in training mode, scoring is deterministic
    history, history_len = pad(TRAIN[:4])
    with torch.no_grad():
        a = model.score_users(torch.arange(4), history, history_len)
        b = model.score_users(torch.arange(4), history, history_len)
    torch.testing.assert_close(a, b, rtol=0, atol=0)
