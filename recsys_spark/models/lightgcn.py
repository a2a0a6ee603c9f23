"""LightGCN: embeddings propagated over the user-item graph, scored by a dot product.

He, Deng, Wang, Li, Zhang, Wang, "LightGCN: Simplifying and Powering Graph
Convolution Network for Recommendation", SIGIR 2020
(https://doi.org/10.1145/3397271.3401063).

* Graph: the bipartite user-item graph of the training rows, one node per user
  (``0..n_users-1``) and per item (``n_users + item_index``), an undirected
  edge per distinct (user, item) pair, symmetric-normalised:
  ``A_hat = D^-1/2 A D^-1/2``, so the edge (u, i) weighs ``1 / sqrt(d_u d_i)``
  (:func:`normalized_adjacency`). A sparse (CSR) tensor, never dense.
* Propagation: ``E^(k+1) = A_hat E^(k)`` for ``layers`` layers from the ego
  embeddings ``E^(0)`` (the only weights), no transformation, no
  non-linearity; the final embedding is the mean of ``E^(0) .. E^(K)``
  (the paper's ``alpha_k = 1 / (K + 1)``).
* Score: the dot product of the final user and item embeddings.
* Loss: BPR on (user, positive, sampled negatives) (``loss: bpr``, the paper's), or
  a sampled softmax over the positive and the same negatives (``loss: softmax``);
  plus ``l2 / 2 * (||e_u^(0)||^2 + ||e_i^(0)||^2 + ||e_j^(0)||^2) / B`` on the ego
  embeddings of the batch (the paper's regulariser; the negatives' term
  averaged over the negatives per positive).

The graph is data, not weights, and it is given to :meth:`LightGCN.build` as
``graph=(user_index, item_index)`` (the training pairs; the trainer collects
them for every model with ``needs_graph``). Serving needs no graph: the final
propagated embeddings are kept in two buffers, ``user_final`` and
``item_final``, refreshed from the current weights whenever they are read
(``score_users``, ``user_vectors``, ``item_vectors``, ``forward``) or the state
dict is taken after a training step. A model built without a graph and loaded
from that state dict scores exactly as the trained one; it cannot train.

Every training step propagates the whole graph (the paper's and every
reference implementation's way): a step costs ``2 * layers`` sparse products
with ``2 * edges`` non-zeros each, whatever the batch size, so larger batches
are cheaper per example. Memory: :func:`recsys_spark.memory.graph_training_bytes`.
"""
from __future__ import annotations

import warnings
from typing import Any, ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from recsys_spark.models.base import RecModel, TrainContext

Graph = tuple[Any, Any]  # (user_index, item_index): 1-d integer arrays or tensors, one entry per training pair


def normalized_adjacency(user_index, item_index, *, n_users: int, n_items: int) -> torch.Tensor:
    """``D^-1/2 A D^-1/2`` of the bipartite graph of the pairs: a sparse CSR
    [n_users + n_items, n_users + n_items] float32 tensor (items after the users).

    A pair given twice is one edge. A node without edges has no entries (no division by 0).
    Built straight into CSR (user rows from the pairs sorted by user, item rows
    from them sorted by item), never dense and without a COO coalesce: CSR
    holds 12 bytes a stored entry (int64 column, float32 value) plus a row
    pointer a node, and its product with a dense matrix is ~3x faster than
    COO's on the CPU (docs/benchmarks.md, "LightGCN (issue 15)").

    Raises:
        ValueError: the arrays differ in length, or an index is outside the catalog.
    """
    users = torch.as_tensor(np.asarray(user_index)).reshape(-1).long()
    items = torch.as_tensor(np.asarray(item_index)).reshape(-1).long()
    if users.shape != items.shape:
        raise ValueError(f"model 'lightgcn': the graph's user and item arrays differ in length "
                         f"({users.numel()} and {items.numel()})")
    if users.numel() and not (0 <= int(users.min()) and int(users.max()) < n_users
                              and 0 <= int(items.min()) and int(items.max()) < n_items):
        raise ValueError(f"model 'lightgcn': a graph edge names a user outside 0..{n_users - 1} or an item "
                         f"outside 0..{n_items - 1} (was the graph built from another split's index?)")
    key = torch.unique(users * n_items + items)  # distinct pairs, sorted by user then item
    del users, items
    users, items = key // n_items, key % n_items
    del key
    deg_u = torch.bincount(users, minlength=n_users)
    deg_i = torch.bincount(items, minlength=n_items)
    weight = (deg_u[users].double() * deg_i[items].double()).rsqrt().float()
    by_item = torch.argsort(items, stable=True)  # item-major order, users ascending within an item
    crow = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(torch.cat([deg_u, deg_i]), 0)])
    cols = torch.cat([items + n_users, users[by_item]])
    values = torch.cat([weight, weight[by_item]])
    n = n_users + n_items
    with warnings.catch_warnings():  # "Sparse CSR tensor support is in beta": what is used here is stable
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, cols, values, (n, n), check_invariants=False)  # built sorted above


class _SymmetricSparseProduct(torch.autograd.Function):
    """``A @ X`` for a constant symmetric sparse ``A``: the gradient is ``A @ G`` (``A^T = A``),
    which spares autograd transposing (and re-sorting) the sparse matrix every step."""

    @staticmethod
    def forward(ctx, adjacency: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        ctx.adjacency = adjacency
        return torch.sparse.mm(adjacency, x)

    @staticmethod
    def backward(ctx, grad: torch.Tensor):
        return None, torch.sparse.mm(ctx.adjacency, grad)


def propagate(adjacency: torch.Tensor, ego: torch.Tensor, layers: int) -> torch.Tensor:
    """The mean of ``ego, A ego, ..., A^layers ego`` ([nodes, dim])."""
    total, e = ego, ego
    for _ in range(layers):
        e = _SymmetricSparseProduct.apply(adjacency, e)
        total = total + e
    return total / (layers + 1)


class LightGCN(RecModel):
    name: ClassVar[str] = "lightgcn"
    input_kind: ClassVar[str] = "pairs"  # the training pairs are the graph's edges: DDP splits them by rank
    needs_history: ClassVar[bool] = False
    dot_product: ClassVar[bool] = True
    needs_graph: ClassVar[bool] = True  # the trainer passes build(..., graph=(user_index, item_index))
    default_params: ClassVar[dict[str, Any]] = {
        "embedding_dim": 64,  # size of the ego (layer-0) user and item embeddings, and of the final ones
        "layers": 3,  # propagation layers K; the final embedding is the mean of layers 0..K
        "l2": 1e-4,  # weight of the L2 penalty on the batch's ego embeddings (the paper's lambda)
        "loss": "bpr",  # bpr (the paper's) | softmax (sampled softmax over the positive and its negatives)
        "init_std": 0.1,  # standard deviation of the normal initialisation of the ego embeddings
    }

    def __init__(self, *, n_users: int, n_items: int, params: dict[str, Any], graph: Graph | None = None):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        p = self.params
        if p["loss"] not in ("bpr", "softmax"):
            raise ValueError(f"model 'lightgcn': loss must be bpr or softmax, got '{p['loss']}' "
                             "(neural.models.lightgcn.loss)")
        if int(p["layers"]) < 0:
            raise ValueError(f"model 'lightgcn': layers must be 0 or more, got {p['layers']} "
                             "(neural.models.lightgcn.layers)")
        dim = int(p["embedding_dim"])
        self.user_embedding = nn.Embedding(n_users, dim)
        self.item_embedding = nn.Embedding(n_items, dim)
        nn.init.normal_(self.user_embedding.weight, std=float(p["init_std"]))
        nn.init.normal_(self.item_embedding.weight, std=float(p["init_std"]))
        # The final propagated embeddings: what serving reads, so they are in the state dict.
        self.register_buffer("user_final", torch.zeros(n_users, dim))
        self.register_buffer("item_final", torch.zeros(n_items, dim))
        # Data, not weights: a plain attribute (not a buffer), moved to the weights' device when used,
        # so neither the state dict nor DDP's buffer broadcast carries it.
        self.adjacency: torch.Tensor | None = None
        if graph is not None:
            self.adjacency = normalized_adjacency(*graph, n_users=n_users, n_items=n_items)
        # True while user_final/item_final may lag the weights (after a training step).
        self._stale = self.adjacency is not None
        self.register_state_dict_pre_hook(_refresh_before_state_dict)
        self.register_load_state_dict_post_hook(_fresh_after_load)

    @classmethod
    def build(cls, *, n_users: int, n_items: int, params: dict[str, Any] | None = None,
              item_features: dict[str, torch.Tensor] | None = None, graph: Graph | None = None) -> "LightGCN":
        """``graph``: the training pairs ``(user_index, item_index)``; None for a model that is only
        loaded and scored (``item_features`` are not used)."""
        unknown = set(params or {}) - set(cls.default_params)
        if unknown:
            raise ValueError(f"model '{cls.name}': unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.default_params)}")
        return cls(n_users=n_users, n_items=n_items, params=params or {}, graph=graph)

    @classmethod
    def graph_bytes(cls, *, n_users: int, n_items: int, n_edges: int, params: dict[str, Any] | None = None) -> int:
        """Bytes one training process holds for the graph beyond the parameters (see
        :func:`recsys_spark.memory.graph_training_bytes`)."""
        from recsys_spark.memory import graph_training_bytes

        p = {**cls.default_params, **(params or {})}
        return graph_training_bytes(n_edges=n_edges, n_nodes=n_users + n_items, dim=int(p["embedding_dim"]),
                                    layers=int(p["layers"]))

    # ------------------------------------------------------------------ propagation

    def _adjacency(self) -> torch.Tensor:
        if self.adjacency is None:
            raise RuntimeError("model 'lightgcn' was built without its graph: it can score from its "
                               "loaded state dict but not train (build it with graph=(user_index, item_index))")
        device = self.user_embedding.weight.device
        if self.adjacency.device != device:
            self.adjacency = self.adjacency.to(device)
        return self.adjacency

    def propagated(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Final user [n_users, dim] and item [n_items, dim] embeddings of the current weights (with gradients)."""
        ego = torch.cat([self.user_embedding.weight, self.item_embedding.weight])
        # In float32 even under the trainer's CUDA autocast: a sparse product has no bf16/fp16 path to rely on.
        with torch.autocast(device_type=ego.device.type, enabled=False):
            final = propagate(self._adjacency(), ego.float(), int(self.params["layers"]))
        return final[: self.n_users], final[self.n_users:]

    def refresh(self) -> None:
        """Store the final embeddings of the current weights in ``user_final``/``item_final``."""
        with torch.no_grad():
            users, items = self.propagated()
            self.user_final.copy_(users)
            self.item_final.copy_(items)
        self._stale = False

    def _final(self) -> tuple[torch.Tensor, torch.Tensor]:
        if self._stale and self.adjacency is not None:
            self.refresh()
        return self.user_final, self.item_final

    # ------------------------------------------------------------------ scoring

    def user_vectors(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """[B, dim]: the users' final embeddings (the history is not read: the graph holds it)."""
        return self._final()[0][user_index]

    def item_vectors(self) -> torch.Tensor:
        """[n_items, dim]."""
        return self._final()[1]

    def score_users(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        users, items = self._final()
        return users[user_index] @ items.T

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B] of the batch's (user, item) pairs."""
        users, items = self._final()
        return (users[batch["user_index"]] * items[batch["item_index"]]).sum(dim=1)

    # ------------------------------------------------------------------ training

    def loss(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> torch.Tensor:
        users, pos = batch["user_index"], batch["item_index"]
        b, k = users.shape[0], max(1, int(ctx.negatives_per_positive))
        neg = ctx.sample_negatives(b * k).view(b, k).to(pos.device)
        all_users, all_items = self.propagated()
        self._stale = True  # the optimiser steps after this: the stored final embeddings lag
        u = all_users[users]
        pos_scores = (u * all_items[pos]).sum(dim=1)  # [B]
        neg_scores = (u[:, None, :] * all_items[neg]).sum(dim=2)  # [B, k]
        if self.params["loss"] == "bpr":
            main = -F.logsigmoid(pos_scores[:, None] - neg_scores).mean()
        else:
            logits = torch.cat([pos_scores[:, None], neg_scores], dim=1)
            main = F.cross_entropy(logits, torch.zeros(b, dtype=torch.long, device=logits.device))
        ego = (self.user_embedding(users).pow(2).sum() + self.item_embedding(pos).pow(2).sum()
               + self.item_embedding(neg).pow(2).sum() / k)
        return main + float(self.params["l2"]) * 0.5 * ego / b


def _refresh_before_state_dict(module: LightGCN, prefix: str, keep_vars: bool) -> None:
    """The state dict always carries the final embeddings of the weights it carries."""
    if module._stale and module.adjacency is not None:
        module.refresh()


def _fresh_after_load(module: LightGCN, incompatible_keys) -> None:
    """Loaded weights come with their own final embeddings (saved together)."""
    module._stale = False


__all__ = ["LightGCN", "normalized_adjacency", "propagate"]
