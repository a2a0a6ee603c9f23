"""LightGCN (recsys_spark/models/lightgcn.py): the normalised graph by hand, the loss by
hand, serving from the state dict without the graph, the memory it asks for, and
learning the trainer's planted structure in one process and through two gloo
processes. (The contract every registered model keeps, LightGCN included, is
tests/test_models.py's.)"""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from recsys_spark import memory
from recsys_spark.models.base import TrainContext
from recsys_spark.models.lightgcn import LightGCN, normalized_adjacency, propagate
from recsys_spark.train import local_metrics, loop
from tests.test_trainer import N_ITEMS, N_USERS, counts_of, pair_tensors, planted, validation_of

# Tiny tensors: one torch thread for the module (tests/conftest.py).
pytestmark = pytest.mark.usefixtures("one_torch_thread")

# 3 users x 3 items; (0, 0) twice: one edge. Degrees: users 2, 1, 2; items 1, 3, 1.
USERS = np.array([0, 0, 0, 1, 2, 2])
ITEMS = np.array([0, 0, 1, 1, 1, 2])




def test_symmetric_normalisation_of_a_hand_graph():
    a = normalized_adjacency(USERS, ITEMS, n_users=3, n_items=3).to_dense()
    u, i = 0, 3  # node ids: users 0..2, items 3..5
    want = torch.zeros(6, 6)
    for user, item, value in [
        (0, 0, 1 / math.sqrt(2 * 1)),  # d_u0 = 2 (items 0, 1), d_i0 = 1
        (0, 1, 1 / math.sqrt(2 * 3)),  # d_i1 = 3 (users 0, 1, 2)
        (1, 1, 1 / math.sqrt(1 * 3)),  # d_u1 = 1
        (2, 1, 1 / math.sqrt(2 * 3)),  # d_u2 = 2 (items 1, 2)
        (2, 2, 1 / math.sqrt(2 * 1)),  # d_i2 = 1
    ]:
        want[u + user, i + item] = want[i + item, u + user] = value
    torch.testing.assert_close(a, want)


def test_a_user_or_item_without_edges_has_no_entries_and_bad_graphs_are_refused():
    a = normalized_adjacency(np.array([0]), np.array([1]), n_users=2, n_items=3).to_dense()
    assert a[0, 3] == a[3, 0] == 1.0 and a.abs().sum() == 2.0  # user 1, items 0 and 2: no edges, no NaN
    with pytest.raises(ValueError, match="outside"):
        normalized_adjacency(np.array([0]), np.array([3]), n_users=2, n_items=3)
    with pytest.raises(ValueError, match="differ in length"):
        normalized_adjacency(np.array([0, 1]), np.array([0]), n_users=2, n_items=3)


def test_propagation_is_the_mean_of_the_layers_and_its_gradient_is_exact():
    a = normalized_adjacency(USERS, ITEMS, n_users=3, n_items=3)
    ego = torch.randn(6, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    dense = a.to_dense().double()
    want = (ego + dense @ ego + dense @ dense @ ego + dense @ dense @ dense @ ego) / 4
    torch.testing.assert_close(propagate(a.double(), ego, 3), want)
    x = ego.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda e: propagate(a.double(), e, 2), (x,))


def _context(negatives: torch.Tensor) -> TrainContext:
    return TrainContext(n_items=3, sample_negatives=lambda n: negatives[:n], negatives_per_positive=1)


def test_loss_is_bpr_on_the_propagated_embeddings_plus_l2_on_the_ego_embeddings():
    torch.manual_seed(0)
    model = LightGCN.build(n_users=3, n_items=3, params={"embedding_dim": 4, "layers": 2, "l2": 0.1},
                           graph=(USERS, ITEMS))
    users, pos, neg = torch.tensor([0, 2]), torch.tensor([1, 2]), torch.tensor([2, 0])
    loss = model.loss({"user_index": users, "item_index": pos}, _context(neg))

    a = normalized_adjacency(USERS, ITEMS, n_users=3, n_items=3).to_dense()
    ego = torch.cat([model.user_embedding.weight, model.item_embedding.weight]).detach()
    final = (ego + a @ ego + a @ a @ ego) / 3
    fu, fi = final[:3], final[3:]
    bpr = -F.logsigmoid((fu[users] * fi[pos]).sum(1) - (fu[users] * fi[neg]).sum(1)).mean()
    eu, ei = model.user_embedding.weight.detach(), model.item_embedding.weight.detach()
    l2 = 0.1 / 2 * (eu[users].pow(2).sum() + ei[pos].pow(2).sum() + ei[neg].pow(2).sum()) / 2
    assert loss.item() == pytest.approx((bpr + l2).item(), rel=1e-5)

    loss.backward()
    assert model.user_embedding.weight.grad.abs().sum() > 0
    # User 1 is in no row of the batch, but its embedding reaches the batch through item 1: it gets a gradient.
    assert model.user_embedding.weight.grad[1].abs().sum() > 0

    softmax = LightGCN.build(n_users=3, n_items=3, params={"embedding_dim": 4, "layers": 2, "l2": 0.0,
                                                          "loss": "softmax"}, graph=(USERS, ITEMS))
    softmax.load_state_dict(model.state_dict())
    logits = torch.stack([(fu[users] * fi[pos]).sum(1), (fu[users] * fi[neg]).sum(1)], dim=1)
    got = softmax.loss({"user_index": users, "item_index": pos}, _context(neg))
    assert got.item() == pytest.approx(F.cross_entropy(logits, torch.zeros(2, dtype=torch.long)).item(), rel=1e-5)


def test_a_model_loaded_without_the_graph_scores_as_the_trained_one():
    torch.manual_seed(0)
    model = LightGCN.build(n_users=3, n_items=3, params={"embedding_dim": 4}, graph=(USERS, ITEMS))
    opt = torch.optim.Adam(model.parameters(), lr=0.05)
    for step in range(3):
        loss = model.loss({"user_index": torch.tensor([0, 1, 2]), "item_index": torch.tensor([1, 1, 2])},
                          _context(torch.tensor([2, 0, 0])))
        opt.zero_grad()
        loss.backward()
        opt.step()
    # Taken right after a step, in training mode, with no scoring in between (the refit's path):
    # the state dict carries the final embeddings of the weights it carries.
    state = {k: v.clone() for k, v in model.state_dict().items()}
    assert "adjacency" not in " ".join(state)
    users, items = model.propagated()
    torch.testing.assert_close(state["user_final"], users.detach())
    torch.testing.assert_close(state["item_final"], items.detach())

    served = LightGCN.build(n_users=3, n_items=3, params={"embedding_dim": 4})  # no graph
    served.load_state_dict(state)
    served.eval()
    history = torch.full((3, 1), 3)
    want = model.eval().score_users(torch.arange(3), history, torch.zeros(3))
    torch.testing.assert_close(served.score_users(torch.arange(3), history, torch.zeros(3)), want, rtol=0, atol=0)
    torch.testing.assert_close(served.user_vectors(torch.arange(3), history, torch.zeros(3)) @ served.item_vectors().T,
                               want)
    with pytest.raises(RuntimeError, match="without its graph"):
        served.loss({"user_index": torch.tensor([0]), "item_index": torch.tensor([1])}, _context(torch.tensor([2])))


def test_graph_memory_is_budgeted_and_an_oversized_graph_is_refused():
    from recsys_spark.train.neural import check_training_memory

    # 1M edges, 64-dim, 3 layers, 100k nodes: 80 bytes an edge (the CSR's 2 x (8 + 4), the build's
    # temporaries, the job's int32 pairs), (3 + 1) layers of 64 float32 a node, twice (forward, gradients).
    need = LightGCN.graph_bytes(n_users=60_000, n_items=40_000, n_edges=1_000_000)
    assert need == 1_000_000 * 80 + 2 * 4 * 100_000 * 64 * (3 + 1)
    assert LightGCN.graph_bytes(n_users=60_000, n_items=40_000, n_edges=1_000_000, params={"layers": 1}) < need
    kwargs = {"n_users": 60_000, "n_items": 40_000, "params": {}}
    per_process = check_training_memory(LightGCN, kwargs, name="lightgcn", n_items=40_000, batch_size=1024,
                                        num_processes=2, available=2**40, graph_edges=1_000_000)
    without = check_training_memory(LightGCN, kwargs, name="lightgcn", n_items=40_000, batch_size=1024,
                                    num_processes=2, available=2**40)
    assert per_process - without == need
    with pytest.raises(memory.MemoryBudgetError, match=r"neural\.models\.lightgcn\.embedding_dim or \.layers"):
        check_training_memory(LightGCN, kwargs, name="lightgcn", n_items=40_000, batch_size=1024, num_processes=2,
                              available=2 * per_process, graph_edges=1_000_000)


def _planted_graph(train):
    return np.array([u for u, _, _ in train]), np.array([i for _, i, _ in train])


def test_learns_the_planted_structure_in_one_process():
    train, held = planted()
    torch.manual_seed(3)
    model = LightGCN.build(n_users=N_USERS, n_items=N_ITEMS, params={"embedding_dim": 16},
                           graph=_planted_graph(train))
    settings = loop.TrainSettings(epochs=10, patience=10, learning_rate=0.05, negatives_per_positive=4, seed=3,
                                  metric="ndcg_at_5")
    val = validation_of(train, held)
    result = loop.train(model, loop.tensor_loader_factory(pair_tensors(train), batch_size=64, seed=3), settings,
                        item_counts=counts_of(train), validation=val, device="cpu", log=lambda line: None)
    served = LightGCN.build(n_users=N_USERS, n_items=N_ITEMS, params={"embedding_dim": 16})
    served.load_state_dict(loop.state_dict_from_bytes(result["state_dict"]))
    learnt = local_metrics.evaluate_model(served, val, metric="ndcg_at_5", device="cpu")
    pop = torch.as_tensor(counts_of(train), dtype=torch.float32)
    popularity = local_metrics.evaluate(lambda r: pop.expand(len(val.users[r]), -1), N_USERS, val.seen,
                                        val.relevant, metric="ndcg_at_5")
    assert learnt == pytest.approx(result["best_metric"])  # the served weights are the validated ones
    assert learnt > popularity + 0.2, (learnt, popularity)


@pytest.mark.spark
@pytest.mark.slow
def test_two_gloo_processes_train_lightgcn_on_the_graph_they_are_given(spark, tmp_path):
    """The real path: Petastorm shards of the pairs (the edges) split by rank, the graph pickled
    with the job to both processes, DDP; the result is served without the graph."""
    from recsys_spark.train import data, distributed
    from recsys_spark.train.neural import training_graph
    from tests.test_trainer import _settings, rows_df

    train, held = planted()
    rows = rows_df(spark, train)
    graph = training_graph(rows, name="lightgcn", n_edges=len(train))
    assert graph[0].dtype == np.int32 and sorted(zip(*graph)) == sorted((u, i) for u, i, _ in train)
    examples = data.training_examples(rows, input_kind="pairs", needs_history=False, n_items=N_ITEMS,
                                      history_length=4)
    held_df = spark.createDataFrame(held, "user_index int, item_index int")
    val_frames = data.validation_examples(rows, held_df, n_items=N_ITEMS, history_length=4)
    pdata = data.materialise(spark, examples, cache_dir=str(tmp_path / "cache"), shard_count=2, seed=1,
                             validation=val_frames)
    build_kwargs = {"n_users": N_USERS, "n_items": N_ITEMS, "params": {"embedding_dim": 16}}
    job = distributed.WorkerJob(
        model_name="lightgcn", build_kwargs=build_kwargs, data=pdata, graph=graph,
        settings=_settings(epochs=6, patience=6), item_counts=data.item_counts(rows, N_ITEMS),
        batch_size=32, checkpoint_dir=str(tmp_path / "ck"), run_key="t", threads_per_process=1, use_gpu=False,
    )
    try:
        result = distributed.run(spark, job, num_processes=2)
    finally:
        pdata.delete()
    served = LightGCN.build(**build_kwargs)  # no graph
    served.load_state_dict(loop.state_dict_from_bytes(result["state_dict"]))
    val = validation_of(train, held)
    learnt = local_metrics.evaluate_model(served, val, metric="ndcg_at_5", device="cpu")
    assert learnt == pytest.approx(result["best_metric"])
    pop = torch.as_tensor(counts_of(train), dtype=torch.float32)
    popularity = local_metrics.evaluate(lambda r: pop.expand(len(val.users[r]), -1), N_USERS, val.seen,
                                        val.relevant, metric="ndcg_at_5")
    assert learnt > popularity + 0.2, (learnt, popularity)
