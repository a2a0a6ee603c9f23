"""GRU4Rec: a GRU over the most recent items, trained on the next item at every position.

Hidasi, Karatzoglou, Baltrunas, Tikk, "Session-based Recommendations with
Recurrent Neural Networks", ICLR 2016 (https://arxiv.org/abs/1511.06939);
the full-softmax cross-entropy and tied ("constrained") embeddings as in the
authors' later implementation (Hidasi, Czapp, "The Effect of Third Party
Implementations on Reproducibility", RecSys 2023, https://arxiv.org/abs/2307.15641),
where cross-entropy is one of the losses that work best.

* Input: the user's ``max_length`` most recent items, oldest first (padding
  after them), as item embeddings with dropout.
* ``num_layers`` GRU layers of ``hidden_dim`` units; the output after each
  item, with dropout, projected linearly to ``embedding_dim``.
* An item's score is the dot product of that projection with the item's
  output embedding: the input embedding itself when ``tied_embeddings``, a
  separate table otherwise.

Training: a window of ``max_length + 1`` consecutive items of each history in
the batch (the most recent one, or a random one of a longer history,
:func:`recsys_spark.models.sequence.training_window`): inputs
``window[:, :-1]``, targets ``window[:, 1:]``, padding masked, and the loss is
the cross-entropy of each real target over the whole catalog. The paper's
session-parallel mini-batches are not needed here: a batch is whole user
histories. Memory: the logits are (real positions in the batch) x n_items
floats, e.g. 64 users x 50 positions x 20,000 items = 64M floats, 256 MB, about
three times that with its gradient and softmax: lower ``neural.batch_size``
(users per step) for larger catalogs.

Scoring: the projected GRU output after the user's newest item (the zero
state's projection for an empty history), dotted with the output item
embeddings (``dot_product``: serving uses the vectors). The model reads only
the history; ``user_index`` is unused.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
from torch import nn

from recsys_spark.models.sequence import SequenceModel, real_lengths, recent


class GRU4Rec(SequenceModel):
    name: ClassVar[str] = "gru4rec"
    window_right_aligned: ClassVar[bool] = False  # the GRU runs from its first real item
    default_params: ClassVar[dict[str, Any]] = {
        "embedding_dim": 64,  # item embedding size, and the size of the user and item vectors
        "hidden_dim": 128,  # GRU units per layer (the paper: 100 to 1000)
        "num_layers": 1,  # stacked GRU layers (the paper found one best)
        "max_length": 50,  # most recent items the GRU runs over (the length back-propagated through)
        "dropout": 0.2,  # on the input embeddings, between GRU layers and on the GRU output
        "tied_embeddings": True,  # score against the input item embeddings (else a separate output table)
        "random_windows": True,  # train on a random window of a history longer than max_length + 1, else the newest
    }

    def __init__(self, *, n_users: int, n_items: int, params: dict[str, Any]):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        p = self.params
        dim, hidden, layers = int(p["embedding_dim"]), int(p["hidden_dim"]), int(p["num_layers"])
        self.max_length, dropout = int(p["max_length"]), float(p["dropout"])
        if self.max_length < 1:
            raise ValueError(f"model 'gru4rec': max_length must be at least 1, got {self.max_length}")
        if layers < 1:
            raise ValueError(f"model 'gru4rec': num_layers must be at least 1, got {layers}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model 'gru4rec': dropout must be in [0, 1), got {dropout}")
        # Row n_items is the padding: zero and never updated.
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        self.output_embedding = None if p["tied_embeddings"] else nn.Embedding(n_items, dim)
        self.gru = nn.GRU(dim, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.projection = nn.Linear(hidden, dim)
        self.dropout = nn.Dropout(dropout)
        for table in (self.item_embedding, self.output_embedding):
            if table is not None:
                nn.init.normal_(table.weight, std=1.0 / math.sqrt(dim))
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """[B, T, embedding_dim]: the projected GRU output after each item of left-aligned ``items`` [B, T].

        The GRU is causal, so the padding after a row's items changes none of their outputs.
        """
        out, _ = self.gru(self.dropout(self.item_embedding(items)))
        return self.projection(self.dropout(out))

    # ------------------------------------------------------------------ interface

    def user_vectors(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """[B, embedding_dim]: the projected GRU output after the newest of the last ``max_length`` items."""
        items = recent(history, self.max_length, self.n_items, right_aligned=False)
        n = real_lengths(items, self.n_items)
        out = self.encode(items)
        last = out.gather(1, (n - 1).clamp(min=0)[:, None, None].expand(-1, 1, out.shape[2]))[:, 0]
        # No history: the projection of the GRU's zero initial state.
        empty = self.projection(torch.zeros(1, self.gru.hidden_size, device=out.device, dtype=out.dtype))
        return torch.where((n > 0)[:, None], last, empty)

    def item_vectors(self) -> torch.Tensor:
        """[n_items, embedding_dim]: the output item embeddings."""
        table = self.output_embedding if self.output_embedding is not None else self.item_embedding
        return table.weight[: self.n_items]





__all__ = ["GRU4Rec"]
