"""SASRec: causal self-attention over the most recent items, trained on the next item at every position.

Kang, McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018
(https://arxiv.org/abs/1808.09781); the loss as Klenitskiy, Vasilev, "Turning
Dross Into Gold Loss: is BERT4Rec really better than SASRec?", RecSys 2023
(https://arxiv.org/abs/2309.07602): full softmax cross-entropy over the
catalog instead of the paper's binary cross-entropy against one sampled
negative, which they found far better (and which makes SASRec competitive with
BERT4Rec).

* Input: the user's ``max_length`` most recent items, right-aligned (padding
  first, the newest item in the last column, as the authors' code does), item
  embeddings scaled by sqrt(d) plus learned position embeddings, dropout.
* ``num_blocks`` pre-LayerNorm blocks of multi-head self-attention and a
  two-layer point-wise feed-forward network, both residual. The attention is
  causal (position t sees positions <= t) and never looks at padding.
* Output: the final LayerNorm'd state at each position; an item's score is
  the dot product with that item's (input) embedding, shared as in the paper.

Training: a window of ``max_length + 1`` consecutive items of each history in
the batch (the most recent one, or a random one of a longer history,
:func:`recsys_spark.models.sequence.training_window`); inputs are its first
``max_length`` items, targets the same shifted by one, and the loss is the
cross-entropy of each real target over the whole catalog. Memory: the logits
are (real positions in the batch) x n_items floats, e.g. 64 users x 50
positions x 20,000 items = 64M floats, 256 MB, about three times that with its
gradient and softmax: lower ``neural.batch_size`` (users per step) for larger
catalogs.

Scoring: the state after the user's newest item, dotted with the item
embeddings (``dot_product``: serving uses the vectors, no forward pass). The
model reads only the history; ``user_index`` is unused.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys_spark.models.sequence import SequenceModel, recent


class _Block(nn.Module):
    """Pre-LayerNorm causal self-attention and point-wise feed-forward, each residual."""

    def __init__(self, dim: int, heads: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.dropout = dropout
        self.attention_norm = nn.LayerNorm(dim, eps=1e-8)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.attention_out = nn.Linear(dim, dim)
        self.ffn_norm = nn.LayerNorm(dim, eps=1e-8)
        self.ffn = nn.Sequential(nn.Linear(dim, dim), nn.ReLU(), nn.Dropout(dropout), nn.Linear(dim, dim))
        self.drop = nn.Dropout(dropout)

    def forward(self, x: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(self.attention_norm(x)).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=allowed,
                                           dropout_p=self.dropout if self.training else 0.0)
        x = x + self.drop(self.attention_out(a.transpose(1, 2).reshape(b, t, d)))
        return x + self.drop(self.ffn(self.ffn_norm(x)))


class SASRec(SequenceModel):
    name: ClassVar[str] = "sasrec"
    default_params: ClassVar[dict[str, Any]] = {
        "embedding_dim": 64,  # item and position embedding size (the paper: 50)
        "max_length": 50,  # most recent items attended to (the paper: 50 on sparse data, 200 on MovieLens-1M)
        "num_blocks": 2,  # self-attention blocks (the paper: 2)
        "num_heads": 1,  # attention heads; must divide embedding_dim (the paper: 1)
        "dropout": 0.2,  # on embeddings, attention weights and block outputs (the paper: 0.2 dense, 0.5 sparse)
        "random_windows": True,  # train on a random window of a history longer than max_length + 1, else the newest
    }

    def __init__(self, *, n_users: int, n_items: int, params: dict[str, Any]):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        p = self.params
        dim, self.max_length = int(p["embedding_dim"]), int(p["max_length"])
        heads, blocks, dropout = int(p["num_heads"]), int(p["num_blocks"]), float(p["dropout"])
        if self.max_length < 1:
            raise ValueError(f"model 'sasrec': max_length must be at least 1, got {self.max_length}")
        if heads < 1 or dim % heads:
            raise ValueError(f"model 'sasrec': num_heads ({heads}) must divide embedding_dim ({dim})")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model 'sasrec': dropout must be in [0, 1), got {dropout}")
        # Row n_items is the padding: zero and never updated.
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        self.position_embedding = nn.Embedding(self.max_length, dim)
        self.embedding_dropout = nn.Dropout(dropout)
        self.blocks = nn.ModuleList(_Block(dim, heads, dropout) for _ in range(blocks))
        self.final_norm = nn.LayerNorm(dim, eps=1e-8)
        nn.init.normal_(self.item_embedding.weight, std=1.0 / math.sqrt(dim))
        nn.init.normal_(self.position_embedding.weight, std=1.0 / math.sqrt(dim))
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    # ------------------------------------------------------------------ pieces

    def encode(self, items: torch.Tensor) -> torch.Tensor:
        """[B, T, d]: the state after each position of right-aligned windows ``items`` [B, T], T <= max_length.

        Position t attends to positions <= t holding real items (and to itself, so
        that a padding position has something to attend to; its output is never used).
        """
        t = items.shape[1]
        x = self.item_embedding(items) * math.sqrt(self.item_embedding.embedding_dim)
        x = x + self.position_embedding.weight[self.max_length - t:][None, :, :]
        x = self.embedding_dropout(x)
        causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
        real = (items != self.n_items)[:, None, :]  # [B, 1 query, T keys]
        allowed = (causal[None] & real) | torch.eye(t, dtype=torch.bool, device=items.device)[None]
        allowed = allowed[:, None]  # [B, 1 head, T, T], broadcast over heads
        for block in self.blocks:
            x = block(x, allowed)
        return self.final_norm(x)

    # ------------------------------------------------------------------ interface

    def user_vectors(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """[B, d]: the state after the newest of the last ``max_length`` items."""
        return self.encode(recent(history, self.max_length, self.n_items, right_aligned=True))[:, -1]

    def item_vectors(self) -> torch.Tensor:
        """[n_items, d]: the item embeddings (shared by input and output)."""
        return self.item_embedding.weight[: self.n_items]





__all__ = ["SASRec"]
