"""NeuMF: Neural Matrix Factorisation.

He, Liao, Zhang, Nie, Hu, Chua, "Neural Collaborative Filtering", WWW 2017
(https://arxiv.org/abs/1708.05031). Two branches with their own embeddings:

* GMF: the element-wise product of a user and an item embedding (a learnt
  generalisation of the matrix-factorisation dot product);
* MLP: the concatenated user and item embeddings through a ReLU tower
  (``mlp_layers``; the first width is the concatenated input, so each side's
  embedding is half of it, as in the paper's tower pattern).

The last GMF vector and the last MLP layer are concatenated and fused by one
linear layer into a logit (the paper's eq. 12). Trained pointwise (``loss:
bce``, the paper's log loss with ``negatives_per_positive`` sampled negatives
per positive) or pairwise (``loss: bpr``, Rendle et al. 2009, each positive
against the same number of sampled negatives). The paper's optional GMF/MLP
pre-training is left out.

Not a dot-product model: scoring runs the network on every (user, item) pair,
in item chunks so that memory stays bounded by ``score_pairs_per_chunk``.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys_spark.models.base import RecModel, TrainContext

LOSSES = ("bce", "bpr")


class NeuMF(RecModel):
    name: ClassVar[str] = "neumf"
    input_kind: ClassVar[str] = "pairs"
    needs_history: ClassVar[bool] = False
    dot_product: ClassVar[bool] = False
    default_params: ClassVar[dict[str, Any]] = {
        "embedding_dim": 16,  # GMF embedding size (the paper's "predictive factors")
        "mlp_layers": [64, 32, 16],  # MLP tower widths; the first is user+item embeddings concatenated
        "dropout": 0.0,  # dropout after each MLP hidden layer
        "loss": "bce",  # bce: pointwise log loss with sampled negatives | bpr: pairwise BPR
        "score_pairs_per_chunk": 262_144,  # (user, item) pairs per forward pass when scoring; memory only
    }

    def __init__(self, *, n_users: int, n_items: int, params: dict[str, Any]):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        p = self.params
        if p["loss"] not in LOSSES:
            raise ValueError(f"model 'neumf': loss must be one of {', '.join(LOSSES)}, got {p['loss']!r}")
        layers = [int(w) for w in p["mlp_layers"]]
        if len(layers) < 1 or layers[0] < 2 or layers[0] % 2:
            raise ValueError(f"model 'neumf': mlp_layers must start with an even width >= 2, got {layers}")
        dim = int(p["embedding_dim"])

        self.gmf_user = nn.Embedding(n_users, dim)
        self.gmf_item = nn.Embedding(n_items, dim)
        self.mlp_user = nn.Embedding(n_users, layers[0] // 2)
        self.mlp_item = nn.Embedding(n_items, layers[0] // 2)
        tower: list[nn.Module] = []
        for w_in, w_out in zip(layers[:-1], layers[1:]):
            tower += [nn.Linear(w_in, w_out), nn.ReLU()]
            if p["dropout"] > 0:
                tower.append(nn.Dropout(p["dropout"]))
        self.mlp = nn.Sequential(*tower)
        self.predict = nn.Linear(dim + layers[-1], 1)
        self._init_weights()

    def _init_weights(self) -> None:
        # The paper: embeddings from N(0, 0.01), Xavier for the tower, and the
        # fusion layer in the LeCun style (Kaiming uniform with a=1).
        for emb in (self.gmf_user, self.gmf_item, self.mlp_user, self.mlp_item):
            nn.init.normal_(emb.weight, std=0.01)
        for m in self.mlp:
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        nn.init.kaiming_uniform_(self.predict.weight, a=1, nonlinearity="sigmoid")
        nn.init.zeros_(self.predict.bias)

    # ------------------------------------------------------------------ scoring

    def _logits(self, user_index: torch.Tensor, item_index: torch.Tensor) -> torch.Tensor:
        """Logits for (user, item) pairs of broadcastable index shapes ([B, 1] x [B, C] -> [B, C]).

        Each user is looked up once however many items it is paired with: an
        embedding lookup's backward is a pass over its whole table's gradient,
        so one lookup per table per step instead of one per pairing.
        """
        gmf = self.gmf_user(user_index) * self.gmf_item(item_index)  # broadcasts over the index shapes
        mlp_u, mlp_i = torch.broadcast_tensors(self.mlp_user(user_index), self.mlp_item(item_index))
        mlp = self.mlp(torch.cat([mlp_u, mlp_i], dim=-1))
        return self.predict(torch.cat([gmf, mlp], dim=-1)).squeeze(-1)

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B] of the batch's (``user_index``, ``item_index``) pairs."""
        return self._logits(batch["user_index"], batch["item_index"])

    def score_users(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_items]; the history is not used."""
        n_users = user_index.shape[0]
        chunk = max(1, int(self.params["score_pairs_per_chunk"]) // max(1, n_users))
        out = torch.empty(n_users, self.n_items, device=user_index.device)
        for start in range(0, self.n_items, chunk):
            items = torch.arange(start, min(start + chunk, self.n_items), device=user_index.device)
            out[:, start : start + items.shape[0]] = self._logits(user_index[:, None], items[None, :])
        return out

    # ------------------------------------------------------------------ training

    def loss(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> torch.Tensor:
        users, items = batch["user_index"], batch["item_index"]
        k = max(1, int(ctx.negatives_per_positive))
        negatives = ctx.sample_negatives(users.shape[0] * k).view(-1, k).to(users.device)
        # Positive and negatives in one pass: [B, 1 + k] logits, column 0 the positive.
        logits = self._logits(users[:, None], torch.cat([items[:, None], negatives], dim=1))
        pos, neg = logits[:, 0], logits[:, 1:]
        if self.params["loss"] == "bpr":
            return -F.logsigmoid(pos[:, None] - neg).mean()
        # Pointwise log loss, averaged over all B * (1 + k) labelled pairs.
        total = F.binary_cross_entropy_with_logits(pos, torch.ones_like(pos), reduction="sum")
        total = total + F.binary_cross_entropy_with_logits(neg, torch.zeros_like(neg), reduction="sum")
        return total / (pos.numel() + neg.numel())


__all__ = ["NeuMF"]
