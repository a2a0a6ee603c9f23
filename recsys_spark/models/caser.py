"""Caser: horizontal and vertical convolutions over the embeddings of the last L items, plus the user.

Tang, Wang, "Personalized Top-N Sequential Recommendation via Convolutional
Sequence Embedding", WSDM 2018 (https://arxiv.org/abs/1809.07426).

* The ``L`` items before a position, as an L x d matrix of item embeddings
  (right-aligned: zero rows first when fewer than L items precede it).
* Horizontal convolutions: for each height h = 1..L, ``n_h`` filters of h x d,
  ReLU, max-pooled over time: union-level and point-level sequential patterns
  of h consecutive items, wherever they occur in the window.
* Vertical convolutions: ``n_v`` filters of L x 1, each a learned weighted sum
  of the L embeddings (a weighted average of the recent items).
* Both, with dropout, through a ReLU layer to ``z`` (size d); the score of item
  i is ``W2[i] . [z; P_u] + b2[i]`` with ``P_u`` the user's embedding (the
  user's general taste next to the sequence's).

Training: every position of each history in the batch that has at least one
item before it is an example (the window of up to L items before it, the
user), its item the target, with the full-softmax cross-entropy over the
catalog; the paper's "T targets with negative sampling" becomes T = 1 and the
whole catalog as negatives, as for SASRec and GRU4Rec here. A batch of B users
with histories of up to H items is up to B x (H - 1) examples: the logits are
that many x n_items floats (64 x 49 x 20,000 = 63M, 250 MB, about three times
that with its gradient): lower ``neural.batch_size`` or
``neural.history_length`` for larger catalogs.

Scoring: the window of the user's L newest items. The score is a dot product,
so ``dot_product`` holds: user vector ``[z; P_u; 1]``, item vector
``[W2[i]; b2[i]]``. A user index the model has no embedding for (outside
``[0, n_users)``) gets a zero ``P_u``: scored from the sequence alone.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys_spark.models.base import TrainContext
from recsys_spark.models.sequence import SequenceModel, recent


class Caser(SequenceModel):
    name: ClassVar[str] = "caser"
    default_params: ClassVar[dict[str, Any]] = {
        "embedding_dim": 64,  # item and user embedding size d (the paper: 50)
        "L": 5,  # items before a position the convolutions read (the paper: 5 on MovieLens)
        "n_h": 16,  # horizontal filters per height 1..L (the paper: 16)
        "n_v": 4,  # vertical filters (the paper: 4)
        "dropout": 0.5,  # on the convolutions' output, before the fully connected layer (the paper: 0.5)
    }

    def __init__(self, *, n_users: int, n_items: int, params: dict[str, Any]):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        p = self.params
        dim, self.L, n_h, n_v = int(p["embedding_dim"]), int(p["L"]), int(p["n_h"]), int(p["n_v"])
        dropout = float(p["dropout"])
        if self.L < 1:
            raise ValueError(f"model 'caser': L must be at least 1, got {self.L}")
        if n_h < 0 or n_v < 0 or n_h + n_v == 0:
            raise ValueError(f"model 'caser': n_h and n_v must be non-negative and not both 0, got {n_h}, {n_v}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"model 'caser': dropout must be in [0, 1), got {dropout}")
        self.user_embedding = nn.Embedding(n_users, dim)
        # Row n_items is the padding: zero and never updated.
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        self.horizontal = nn.ModuleList(nn.Conv2d(1, n_h, (h, dim)) for h in range(1, self.L + 1)) if n_h else \
            nn.ModuleList()
        self.vertical = nn.Conv2d(1, n_v, (self.L, 1)) if n_v else None
        self.fc = nn.Linear(n_h * self.L + n_v * dim, dim)
        self.dropout = nn.Dropout(dropout)
        self.output_weight = nn.Parameter(torch.empty(n_items, 2 * dim))
        self.output_bias = nn.Parameter(torch.zeros(n_items))
        nn.init.normal_(self.user_embedding.weight, std=1.0 / dim)
        nn.init.normal_(self.item_embedding.weight, std=1.0 / dim)
        nn.init.normal_(self.output_weight, std=1.0 / math.sqrt(2 * dim))
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    # ------------------------------------------------------------------ pieces

    def sequence_vector(self, windows: torch.Tensor) -> torch.Tensor:
        """[N, d]: ``z`` of right-aligned windows [N, L] of item indexes."""
        e = self.item_embedding(windows)[:, None]  # [N, 1, L, d]
        parts = []
        if self.vertical is not None:
            parts.append(self.vertical(e).flatten(1))  # [N, n_v * d]
        for conv in self.horizontal:
            parts.append(F.relu(conv(e).squeeze(3)).max(dim=2).values)  # [N, n_h]
        return F.relu(self.fc(self.dropout(torch.cat(parts, dim=1))))

    def user_part(self, user_index: torch.Tensor) -> torch.Tensor:
        """[N, d]: ``P_u``, zero for a user index outside ``[0, n_users)``."""
        known = (user_index >= 0) & (user_index < self.n_users)
        return self.user_embedding(user_index.clamp(0, self.n_users - 1)) * known[:, None]

    def windows_of(self, history: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Every training example of histories [B, H]: (rows [N] into the batch, windows [N, L], targets [N]).

        Example k of a row is the window of the L items before position k and the item at k,
        for every position k >= 1 holding a real item.
        """
        b, h = history.shape
        padded = torch.cat([torch.full((b, self.L), self.n_items, dtype=history.dtype, device=history.device),
                            history], dim=1)
        windows = padded.unfold(1, self.L, 1)[:, :h]  # [B, H, L]: window k = items k-L .. k-1
        keep = history != self.n_items
        keep[:, 0] = False
        rows = torch.arange(b, device=history.device)[:, None].expand(b, h)
        return rows[keep], windows[keep], history[keep]

    # ------------------------------------------------------------------ interface

    def user_vectors(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """[B, 2d + 1]: ``[z; P_u; 1]`` from the user's L newest items."""
        z = self.sequence_vector(recent(history, self.L, self.n_items, right_aligned=True))
        return torch.cat([z, self.user_part(user_index), torch.ones_like(z[:, :1])], dim=1)

    def item_vectors(self) -> torch.Tensor:
        """[n_items, 2d + 1]: ``[W2[i]; b2[i]]``."""
        return torch.cat([self.output_weight, self.output_bias[:, None]], dim=1)



    @classmethod
    def score_rows_per_step(cls, *, batch_size: int, history_length: int, params: dict[str, Any] | None = None) -> int:
        """Every position of the whole history is an example: ``batch x history_length`` rows, three copies."""
        return 3 * batch_size * history_length

    def loss(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> torch.Tensor:
        rows, windows, targets = self.windows_of(batch["history"])
        if rows.shape[0] == 0:  # histories of one item: nothing to predict; every parameter stays in the graph
            return sum(p.sum() * 0.0 for p in self.parameters())
        x = torch.cat([self.sequence_vector(windows), self.user_part(batch["user_index"][rows])], dim=1)
        logits = x @ self.output_weight.T + self.output_bias
        return F.cross_entropy(logits.float(), targets)


__all__ = ["Caser"]
