"""The sequence models (gru4rec, sasrec, caser) beyond the contract every model meets
(tests/test_models.py): their windows of a history, SASRec's causal attention,
Caser's shapes, and learning planted sequential structure: item i is always
followed by item i + 1 (mod n), which no model of a user's taste can find (every
item is equally popular and every user's items are a random stretch of the cycle).
"""
from __future__ import annotations

import datetime as dt

import numpy as np
import pytest
import torch

from recsys_spark.models import registry
from recsys_spark.models.base import TrainContext
from recsys_spark.models.sequence import real_lengths, recent, training_window, window

# Tiny tensors: one torch thread for the module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

SEQUENCE_MODELS = ["gru4rec", "sasrec", "caser"]
N_ITEMS, N_USERS, PAD = 20, 60, 20
# Small and quick; the windows shorter than the longest histories (12 items) on purpose.
SMALL = {
    "gru4rec": {"embedding_dim": 16, "hidden_dim": 32, "max_length": 6, "dropout": 0.1},
    "sasrec": {"embedding_dim": 16, "max_length": 6, "num_blocks": 1, "dropout": 0.1},
    "caser": {"embedding_dim": 16, "L": 3, "n_h": 4, "n_v": 2, "dropout": 0.1},
}




def padded(rows: list[list[int]], width: int | None = None, pad: int = PAD) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(1, width or max(len(r) for r in rows))
    out = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, : len(r)] = torch.tensor(r, dtype=torch.long)
    return out, torch.tensor([len(r) for r in rows])


def cycle_data(seed: int = 0):
    """Per user a stretch of 4 to 12 consecutive items of the cycle 0 -> 1 -> ... -> 19 -> 0
    from a random start, and the item that comes next (held out)."""
    rng = np.random.default_rng(seed)
    train, held = [], []
    for _ in range(N_USERS):
        start, n = int(rng.integers(N_ITEMS)), int(rng.integers(4, 13))
        items = [(start + k) % N_ITEMS for k in range(n + 1)]
        train.append(items[:-1])
        held.append(items[-1])
    return train, np.array(held)


def context() -> TrainContext:
    return TrainContext(n_items=N_ITEMS, sample_negatives=lambda n: torch.randint(0, N_ITEMS, (n,)))


def build(name: str, seed: int = 0, **params):
    torch.manual_seed(seed)
    return registry.get(name).build(n_users=N_USERS, n_items=N_ITEMS, params={**SMALL[name], **params})


def top1_accuracy(model, train, held) -> float:
    history, history_len = padded(train)
    with torch.no_grad():
        scores = model.eval().score_users(torch.arange(len(train)), history, history_len)
    for u, items in enumerate(train):
        scores[u, items] = -float("inf")  # the seen items, as evaluation excludes them
    return (scores.argmax(dim=1).numpy() == held).mean()


# --------------------------------------------------------------------------- windows


def test_windows_take_the_most_recent_items_aligned_either_way():
    history, _ = padded([[1, 2, 3, 4, 5], [7], []], width=6, pad=9)
    assert real_lengths(history, 9).tolist() == [5, 1, 0]
    assert recent(history, 3, 9, right_aligned=True).tolist() == [[3, 4, 5], [9, 9, 7], [9, 9, 9]]
    assert recent(history, 3, 9, right_aligned=False).tolist() == [[3, 4, 5], [7, 9, 9], [9, 9, 9]]
    # Longer than the history: all of it; the history tensor's width changes nothing.
    assert recent(history, 7, 9, right_aligned=True).tolist()[0] == [9, 9, 1, 2, 3, 4, 5]
    wide, _ = padded([[1, 2, 3, 4, 5], [7], []], width=11, pad=9)
    assert torch.equal(recent(wide, 4, 9, right_aligned=False), recent(history, 4, 9, right_aligned=False))
    # A window ending before the history does.
    assert window(history, torch.tensor([3, 1, 0]), 2, 9, right_aligned=True).tolist() == [[2, 3], [9, 7], [9, 9]]


def test_random_training_windows_cover_a_long_history_and_only_fill_whole_windows():
    torch.manual_seed(0)
    history, _ = padded([list(range(10)), [3, 4]], pad=99)
    starts = set()
    for _ in range(200):
        w = training_window(history, 4, 99, right_aligned=True, random_end=True)
        assert w[0].tolist() == list(range(w[0, 0].item(), w[0, 0].item() + 4))  # 4 consecutive real items
        assert w[1].tolist() == [99, 99, 3, 4]  # shorter than the window: the whole history
        starts.add(w[0, 0].item())
    assert starts == set(range(7))  # every window of the 10 items, 0..3 to 6..9
    newest = training_window(history, 4, 99, right_aligned=False, random_end=False)
    assert newest.tolist() == [[6, 7, 8, 9], [3, 4, 99, 99]]


# --------------------------------------------------------------------------- each model


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_forward_and_loss_on_histories_shorter_and_longer_than_the_window(name):
    model = build(name)
    train, _ = cycle_data()
    history, history_len = padded([train[0][:1], train[1][:2], list(range(12)), []])
    batch = {"user_index": torch.arange(4), "history": history, "history_len": history_len}
    loss = model.loss(batch, context())
    assert loss.dim() == 0 and torch.isfinite(loss) and loss.item() > 0
    loss.backward()
    assert all(torch.isfinite(p.grad).all() for p in model.parameters() if p.grad is not None)
    model.eval()
    with torch.no_grad():
        scores = model.score_users(batch["user_index"], history, history_len)
        users, items = model.user_vectors(batch["user_index"], history, history_len), model.item_vectors()
    assert scores.shape == (4, N_ITEMS) and torch.isfinite(scores).all()
    torch.testing.assert_close(users @ items.T, scores)
    # Histories of one item or none hold nothing to predict: a zero loss, still differentiable.
    short, short_len = padded([[3], []])
    nothing = model.train().loss({"user_index": torch.arange(2), "history": short, "history_len": short_len}, context())
    assert nothing.item() == 0.0
    nothing.backward()


def test_sasrec_attention_is_causal():
    model = build("sasrec", max_length=8).eval()
    items = torch.tensor([[PAD, PAD, 3, 4, 5, 6, 7, 8]])
    changed = items.clone()
    changed[0, 5] = 15  # a later item
    with torch.no_grad():
        a, b = model.encode(items), model.encode(changed)
    torch.testing.assert_close(a[:, :5], b[:, :5], rtol=0, atol=0)  # earlier positions: unchanged
    assert not torch.allclose(a[:, 5:], b[:, 5:])  # that position and later ones see it
    # Padding is never attended to: the real positions' states are those of the window without it.
    with torch.no_grad():
        c = model.encode(items[:, 2:])
    torch.testing.assert_close(a[:, 2:], c, rtol=1e-5, atol=1e-6)
    # Real items in those columns, by contrast, are attended to.
    other_pad = items.clone()
    other_pad[0, :2] = torch.tensor([1, 2])
    with torch.no_grad():
        d = model.encode(other_pad)
    assert not torch.allclose(a[:, 2:], d[:, 2:])  # real items there, by contrast, are attended to


@pytest.mark.parametrize("L,length", [(3, 9), (5, 2), (4, 4)])
def test_caser_shapes_for_histories_longer_and_shorter_than_L(L, length):
    model = build("caser", L=L).eval()
    history, history_len = padded([list(range(length)), list(range(length))[: max(1, length // 2)]], width=10)
    with torch.no_grad():
        scores = model.score_users(torch.tensor([0, 1]), history, history_len)
        users = model.user_vectors(torch.tensor([0, 1]), history, history_len)
    d = SMALL["caser"]["embedding_dim"]
    assert scores.shape == (2, N_ITEMS) and torch.isfinite(scores).all()
    assert users.shape == (2, 2 * d + 1) and model.item_vectors().shape == (N_ITEMS, 2 * d + 1)
    # Training examples: one per position with at least one item before it, each a window of L.
    rows, windows, targets = model.windows_of(history)
    assert windows.shape == (len(rows), L) and len(rows) == (length - 1) + (max(1, length // 2) - 1)
    assert targets.tolist() == list(range(1, length)) + list(range(1, max(1, length // 2)))
    # Only the newest L items count: older ones change nothing.
    older, older_len = padded([[19, 18, *range(length)]], width=12)
    with torch.no_grad():
        same = model.score_users(torch.tensor([0]), older, older_len)
    if length >= L:
        torch.testing.assert_close(same[0], scores[0], rtol=1e-6, atol=1e-6)


def test_caser_scores_an_unknown_user_from_the_sequence_alone():
    model = build("caser").eval()
    history, history_len = padded([[1, 2, 3], [1, 2, 3]])
    with torch.no_grad():
        users = model.user_vectors(torch.tensor([0, N_USERS + 5]), history, history_len)
    d = SMALL["caser"]["embedding_dim"]
    torch.testing.assert_close(users[0, :d], users[1, :d])  # the same sequence part
    assert users[1, d : 2 * d].abs().sum() == 0 and users[0, d : 2 * d].abs().sum() > 0


@pytest.mark.parametrize("name", SEQUENCE_MODELS)
def test_learns_that_item_i_is_followed_by_item_i_plus_1(name):
    train, held = cycle_data()
    model = build(name)
    history, history_len = padded(train)
    batch = {"user_index": torch.arange(N_USERS), "history": history, "history_len": history_len}
    before = top1_accuracy(model, train, held)
    opt = torch.optim.Adam(model.parameters(), lr=0.01)
    model.train()
    for _ in range(60):
        loss = model.loss(batch, context())
        opt.zero_grad()
        loss.backward()
        opt.step()
    after = top1_accuracy(model, train, held)
    # Popularity (all items equal) or a random ranking gets the next item first for 1 user in 20.
    assert before < 0.3 and after >= 0.9, (before, after)


# --------------------------------------------------------------------------- through the real trainer


@pytest.mark.spark
@pytest.mark.slow
def test_two_gloo_processes_train_sasrec_on_the_planted_sequences(spark, tmp_path):
    """The real path: Spark builds the histories (data.training_examples), Petastorm feeds
    them to 2 gloo processes running loop.train under DDP, rank 0 validates the held-out
    next items; the model returned predicts them."""
    from recsys_spark.train import data, distributed, loop
    from recsys_spark.train.local_metrics import evaluate_model

    train, held = cycle_data(seed=1)
    t0 = dt.datetime(2026, 1, 1)
    rows = spark.createDataFrame(
        [(u, i, 1.0, t0 + dt.timedelta(hours=t)) for u, items in enumerate(train) for t, i in enumerate(items)],
        "user_index int, item_index int, weight float, last_time timestamp")
    history_length = 12
    examples = data.training_examples(rows, input_kind="histories", needs_history=True, n_items=N_ITEMS,
                                      history_length=history_length)
    held_df = spark.createDataFrame([(u, int(i)) for u, i in enumerate(held)], "user_index int, item_index int")
    validation = data.validation_examples(rows, held_df, n_items=N_ITEMS, history_length=history_length)
    pdata = data.materialise(spark, examples, cache_dir=str(tmp_path / "cache"), shard_count=2,
                             history_length=history_length, seed=1, validation=validation)
    params = SMALL["sasrec"]
    settings = loop.TrainSettings(epochs=12, patience=12, learning_rate=0.02, seed=3, metric="ndcg_at_5")
    job = distributed.WorkerJob(
        model_name="sasrec", build_kwargs={"n_users": N_USERS, "n_items": N_ITEMS, "params": params},
        data=pdata, settings=settings, item_counts=data.item_counts(rows, N_ITEMS), batch_size=8,
        checkpoint_dir=str(tmp_path / "ck"), run_key="seq", threads_per_process=1, use_gpu=False,
    )
    try:
        result = distributed.run(spark, job, num_processes=2)
        val = pdata.validation_set()
    finally:
        pdata.delete()

    model = registry.get("sasrec").build(n_users=N_USERS, n_items=N_ITEMS, params=params)
    model.load_state_dict(loop.state_dict_from_bytes(result["state_dict"]))
    learnt = evaluate_model(model, val, metric="ndcg_at_5", device="cpu")
    assert learnt == pytest.approx(result["best_metric"])  # rank 0 validated the model it returned
    # All items are equally popular: popularity's NDCG@5 is about 5 / 20 x 0.6; the sequence gives it away.
    assert learnt > 0.8, [(h["epoch"], h["ndcg_at_5"], h["seconds"]) for h in result["history"]]
    assert top1_accuracy(model, train, held) >= 0.8
    # Both processes stepped: each epoch's histories cover (about) every user once.
    assert all(h["steps"] >= 1 for h in result["history"])
    assert result["history"][0]["samples_per_s"] * result["history"][0]["seconds"] == pytest.approx(N_USERS, rel=0.35)
