"""DLAE: a denoising linear autoencoder over users' item histories.

Steck, "Autoencoders that don't overfit towards the Identity", NeurIPS 2020.
One items x items weight matrix ``B`` with a zero diagonal (an item may not
predict itself: the identity is the trivial autoencoder), applied to the
user's binary history with input dropout; the loss is the squared
reconstruction error of the whole history plus an L2 penalty on ``B``::

    loss = mean_u || x_u - dropout(x_u) B ||^2  +  (l2 / n_users) * ||B||_F^2

Trained by the same DDP trainer as every neural model (``histories``
batches, one example per user). Without dropout its optimum is EASE's closed
form for lambda = l2 (Steck 2019); dropout adds the data-dependent
regularisation that the paper shows lifts it further. It is the neural
autoencoder with the fewest assumptions about the data, and the strongest of
them on small catalogs. Its weight is catalog-wide: items^2 floats, five
times over while training (weights, gradients, Adam's two moments, DDP's
buckets), which the trainer's memory check counts before anything runs.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys_spark.models.base import RecModel, TrainContext, multi_hot


class DLAE(RecModel):
    name: ClassVar[str] = "dlae"
    input_kind: ClassVar[str] = "histories"
    needs_history: ClassVar[bool] = True
    dot_product: ClassVar[bool] = False
    default_params: ClassVar[dict[str, Any]] = {
        "dropout": 0.25,  # input dropout on the history (the denoising); the paper: 0.25-0.33
        "l2": 100.0,  # L2 weight on B, as EASE's lambda (the loss is per user, hence / n_users)
    }

    def __init__(self, *, n_users: int, n_items: int, params: dict[str, Any]):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        p = self.params
        if not 0.0 <= float(p["dropout"]) < 1.0:
            raise ValueError(f"model 'dlae': dropout must be in [0, 1), got {p['dropout']}")
        if float(p["l2"]) < 0:
            raise ValueError(f"model 'dlae': l2 must be >= 0, got {p['l2']}")
        # Zero start: the objective is convex in B, so the start only sets the path, not the end.
        self.weight = nn.Parameter(torch.zeros(n_items, n_items))
        self.register_buffer("off_diagonal", 1.0 - torch.eye(n_items), persistent=False)

    def multi_hot(self, history: torch.Tensor) -> torch.Tensor:
        return multi_hot(history, self.n_items)

    def b(self) -> torch.Tensor:
        """``B`` with its diagonal held at zero."""
        return self.weight * self.off_diagonal

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B, n_items] of the batch's histories (no dropout outside training)."""
        return self.score_users(batch.get("user_index"), batch["history"], batch.get("history_len"))

    def score_users(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        return self.multi_hot(history) @ self.b()

    def loss(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> torch.Tensor:
        x = self.multi_hot(batch["history"])
        p = float(self.params["dropout"])
        # Inverted dropout (kept entries scaled by 1/(1-p)), as nn.Dropout: the expected input is x.
        noisy = F.dropout(x, p=p, training=self.training)
        reconstruction = (x - noisy @ self.b()).pow(2).sum(dim=1).mean()
        return reconstruction + float(self.params["l2"]) / max(1, self.n_users) * self.weight.pow(2).sum()


__all__ = ["DLAE"]
