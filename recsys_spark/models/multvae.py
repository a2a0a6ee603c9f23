"""Mult-VAE: a variational autoencoder over each user's whole history.

Liang, Krishnan, Hoffman, Jebara, "Variational Autoencoders for Collaborative
Filtering", WWW 2018 (https://arxiv.org/abs/1802.05814).

A user's binary history over the catalog is L2-normalised, passed through
dropout (training only), and encoded by a tanh MLP into the mean and
log-variance of a Gaussian latent; a sample is decoded by the mirrored MLP into
logits over every item. The loss is the negative multinomial log-likelihood
of the history under softmax(logits) plus beta times the KL divergence to
N(0, I), with beta annealed linearly from 0 to ``anneal_cap`` over
``total_anneal_steps`` training steps (``ctx.step``; null: over the whole planned
selection run, ``ctx.total_steps``, which a refit keeps). The authors' code raises beta at 1/total_anneal_steps
per step until it hits the cap; here the cap is reached at the end of the
schedule, so the schedule is independent of the cap.

Scoring decodes the latent mean (no sampling, no dropout): the history is the
model's whole input, so users need no id embedding and ``user_index`` is unused.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys_spark.models.base import RecModel, TrainContext, multi_hot


class MultVAE(RecModel):
    name: ClassVar[str] = "multvae"
    input_kind: ClassVar[str] = "histories"
    needs_history: ClassVar[bool] = True
    dot_product: ClassVar[bool] = False
    default_params: ClassVar[dict[str, Any]] = {
        "hidden_dims": [600],  # encoder hidden widths (the decoder mirrors them); the paper: [600]
        "latent_dim": 200,  # size of the Gaussian latent; the paper: 200
        "dropout": 0.5,  # dropout on the normalised input history, training only
        "anneal_cap": 0.2,  # final KL weight beta; the paper's best: 0.2
        "total_anneal_steps": None,  # steps for beta to rise from 0 to anneal_cap; null: the planned selection run (the refit keeps its schedule)
    }

    def __init__(self, *, n_users: int, n_items: int, params: dict[str, Any]):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        p = self.params
        hidden = [int(w) for w in p["hidden_dims"]]
        latent = int(p["latent_dim"])
        if not 0.0 <= float(p["dropout"]) < 1.0:
            raise ValueError(f"model 'multvae': dropout must be in [0, 1), got {p['dropout']}")
        enc = [n_items, *hidden]
        # The last encoder layer emits mean and log-variance together.
        self.encoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(enc[:-1], enc[1:]))
        self.to_latent = nn.Linear(enc[-1], 2 * latent)
        dec = [latent, *reversed(hidden), n_items]
        self.decoder = nn.ModuleList(nn.Linear(a, b) for a, b in zip(dec[:-1], dec[1:]))
        self.input_dropout = nn.Dropout(float(p["dropout"]))
        for layer in [*self.encoder, self.to_latent, *self.decoder]:
            # The authors' initialisation: Xavier weights, N(0, 0.001) biases.
            nn.init.xavier_uniform_(layer.weight)
            nn.init.normal_(layer.bias, std=0.001)

    # ------------------------------------------------------------------ pieces

    def multi_hot(self, history: torch.Tensor) -> torch.Tensor:
        return multi_hot(history, self.n_items)

    def encode(self, x: torch.Tensor, *, dropout: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance of q(z | x) for binary histories ``x``.

        Input dropout applies when ``dropout`` is set and the module is training.
        """
        h = F.normalize(x, dim=1)
        if dropout:
            h = self.input_dropout(h)
        for layer in self.encoder:
            h = torch.tanh(layer(h))
        mu, logvar = self.to_latent(h).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        for i, layer in enumerate(self.decoder):
            z = layer(z)
            if i < len(self.decoder) - 1:
                z = torch.tanh(z)
        return z

    def beta(self, step: int, total_steps: int) -> float:
        """KL weight at ``step``: linear from 0 to ``anneal_cap`` over the annealing steps, then flat."""
        span = self.params["total_anneal_steps"] or total_steps
        return float(self.params["anneal_cap"]) * min(1.0, step / max(1, int(span)))

    # ------------------------------------------------------------------ interface

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Logits [B, n_items] decoded from the latent mean (dropout follows train/eval mode)."""
        mu, _ = self.encode(self.multi_hot(batch["history"]))
        return self.decode(mu)

    def score_users(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """Logits [B, n_items] from the latent mean, never with dropout or sampling."""
        mu, _ = self.encode(self.multi_hot(history), dropout=False)
        return self.decode(mu)

    def loss(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> torch.Tensor:
        x = self.multi_hot(batch["history"])
        mu, logvar = self.encode(x)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar) if self.training else mu
        log_softmax = F.log_softmax(self.decode(z), dim=1)
        neg_ll = -(log_softmax * x).sum(dim=1).mean()
        kl = (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp()).sum(dim=1)).mean()
        return neg_ll + self.beta(ctx.step, ctx.total_steps) * kl


__all__ = ["MultVAE"]
