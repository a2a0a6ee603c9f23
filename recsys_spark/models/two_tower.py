"""Two-tower retrieval model trained with a full-catalog softmax, or in-batch sampled
softmax with log-q correction where the catalog is too large for it.

Yi, Yang, Hong, Cheng, Heldt, Kumthekar, Zhao, Wei, Chi, "Sampling-Bias-Corrected
Neural Modeling for Large Corpus Item Recommendations", RecSys 2019
(https://doi.org/10.1145/3298689.3346996) (the in-batch objective).

* User tower: the mean of the embeddings of the user's history items (the
  item id table is shared with the item tower), with ``user_input: prefix``
  concatenated with the user's id embedding, through an MLP.
* Item tower: the item's id embedding concatenated with the item's metadata
  when ``item_features`` are given to ``build`` (e.g. multi-hot genres
  [n_items, G] and a normalised year [n_items, 1]), through an MLP.

Both towers end in ``output_dim`` vectors, L2-normalised by default, and a
score is their dot product, so serving needs only ``user_vectors`` and
``item_vectors``.

Training, for a batch of B (user, positive item) pairs; ``negatives`` chooses the
softmax's other items:

* ``"full"`` (the default): logits are the B x n_items similarities of each user
  vector to every item's vector (the item tower runs on the whole catalog once
  per batch), divided by ``temperature``; the cross-entropy targets the row's
  item. The row's other positives (every item of its history, which holds the
  user's training items, except the target itself) are not negatives and are
  masked out of the softmax; the batch carries the newest
  ``neural.history_length`` of them, so older ones of a longer history stay in
  the denominator. No log-q correction: the correction makes a
  *sampled* softmax an unbiased estimate of the full one by undoing how often
  the sampler shows each item (popular items fill batches and would otherwise
  be pushed down too often); here every item is in every denominator exactly
  once, so there is no sampling bias to undo, and ``logq_correction`` is unused.
  Memory: B x n_items float32 per block (1024 x 50k: 200 MB), a few blocks per
  step, declared in :meth:`TwoTower.score_rows_per_step` so the trainer's memory
  budget (:func:`recsys_spark.memory.training_need`) refuses a catalog where it
  does not fit and names this setting.
* ``"in_batch"``: for catalogs where B x n_items logits do not fit (or cost too
  much per step), the other B - 1 items of the batch are the negatives. Logits are
  the B x B user x item similarities divided by ``temperature``, minus the log of
  each column item's in-batch sampling probability (the paper's eq. 3 correction;
  ``ctx.item_log_q`` per item index, uniform when absent, which is a no-op). The
  softmax cross-entropy targets the diagonal. A column holding the row's own
  positive item again (a duplicate in the batch), or another positive of the
  same user, is not a negative and is masked.

Why full is the default: on MovieLens-100K (random 75/25 split, the night's
default 8-trial search, 2026-12-02, with ``user_input: prefix``) it led in-batch
on validation NDCG@10 (0.1472 against 0.1441) and on test (0.3918 against
0.3787), and it is what ``others`` below needs (every other positive masked), at about the
same time and memory per epoch on that 1,682-item catalog (docs/benchmarks.md, "The
neural models' settings search on ml-100k"). Choose ``in_batch`` when the
catalog is large: the step's cost grows with B x n_items, and the memory
check refuses a full softmax that does not fit and says so.

What the user tower sees in a training row (``user_input``; the batch history
holds the user's newest ``neural.history_length`` training items, the target
included); serving always reads the whole history:

* ``"others"`` (the default): the row's history minus its target, and no user-id
  embedding (the model has no user table: a user is the mean of their history's
  item embeddings). The model learns to predict a held-out item from the rest of
  the user's set, the objective of Mult-VAE and EASE, which is what a random
  per-user split holds out. There is no shortcut to learn: with a user-id
  embedding, the id can memorise the whole history, and the difference between
  that and the history minus the target points at the target ("the item missing
  from the history", which breaks once serving gives the complete history);
  without the id, the tower sees the other items only, and the full softmax
  does not count those as negatives (masked). ``history_dropout`` (training
  only) also drops each input item with that probability, a denoising input as
  in Mult-VAE.
* ``"prefix"``: the user-id embedding and the history before the target (time
  order): the model learns to predict what comes next from what came before.
  Without the cut (the whole history, target included) it learns to point at
  the history, which serving excludes.

Why others is the default: on MovieLens-100K (random 75/25 split,
``scripts/sweep_neural.py``, full softmax, temperature 0.2, 2026-12-02) it led
prefix on validation NDCG@10 (0.1493 against 0.1386) and on test (0.4102
against 0.3999), and the night's 8-trial search with it reached test NDCG@10
0.4322, 0.947x ALS, against 0.3918 (0.86x) with prefix (docs/benchmarks.md).
That split is random, so the held-out items are a random part of the user's
set, not their next ones. On the synthetic demo's temporal split (the
config's default protocol; the held-out items are the newest) it leads as
well: test NDCG@10 0.1908, 1.05x ALS, where the full softmax with prefix
stopped learning after one epoch (0.0765, popularity's level) and in-batch
with prefix scored 0.1209. ``user_input: prefix`` stays to compare.

Item metadata is data, not weights: it is a non-persistent buffer, so a model
is rebuilt with the same ``item_features`` before ``load_state_dict``.
"""
from __future__ import annotations

import math
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from torch import nn

from recsys_spark.models.base import RecModel, TrainContext


def _mlp(widths: list[int], dropout: float) -> nn.Sequential:
    """Linear layers between ``widths``; ReLU (+ dropout) between them, none after the last."""
    layers: list[nn.Module] = []
    for i, (w_in, w_out) in enumerate(zip(widths[:-1], widths[1:])):
        layers.append(nn.Linear(w_in, w_out))
        if i < len(widths) - 2:
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
    return nn.Sequential(*layers)


def feature_matrix(item_features: dict[str, torch.Tensor] | None, n_items: int) -> torch.Tensor:
    """The item features as one float [n_items, F] matrix, columns in sorted-name order.

    Raises:
        ValueError: a feature does not have one row per item, or holds NaN/inf.
    """
    if not item_features:
        return torch.zeros(n_items, 0)
    columns = []
    for name in sorted(item_features):
        t = torch.as_tensor(item_features[name]).float()
        if t.dim() == 1:
            t = t[:, None]
        if t.dim() != 2 or t.shape[0] != n_items:
            raise ValueError(
                f"model 'two_tower': item feature '{name}' must be [n_items={n_items}, F], got {list(t.shape)}"
            )
        if not torch.isfinite(t).all():
            raise ValueError(f"model 'two_tower': item feature '{name}' holds NaN or inf")
        columns.append(t)
    return torch.cat(columns, dim=1)


def history_without(history: torch.Tensor, items: torch.Tensor, pad: int) -> torch.Tensor:
    """Each row's history with its target item removed (padded in place); the whole
    row when the target is not in it. The rest of the user's set, in any order."""
    return history.masked_fill(history == items[:, None], pad)


def history_before(history: torch.Tensor, items: torch.Tensor, pad: int) -> torch.Tensor:
    """Each row's history up to (not including) its target item; the whole row when
    the target is not in it (e.g. cut off by the history length). Histories are in
    time order, so this is what the user had consumed before the target."""
    hit = history == items[:, None]
    found = hit.any(dim=1, keepdim=True)
    position = torch.where(found, hit.long().argmax(dim=1, keepdim=True), torch.full_like(items[:, None], history.shape[1]))
    after = torch.arange(history.shape[1], device=history.device)[None, :] >= position
    return history.masked_fill(after, pad)


NEGATIVES = ("full", "in_batch")
USER_INPUTS = ("prefix", "others")


class TwoTower(RecModel):
    name: ClassVar[str] = "two_tower"
    input_kind: ClassVar[str] = "pairs"
    needs_history: ClassVar[bool] = True
    dot_product: ClassVar[bool] = True
    default_params: ClassVar[dict[str, Any]] = {
        "embedding_dim": 64,  # user and item id embedding size (history items share the item table)
        "tower_layers": [128],  # hidden widths of each tower's MLP ([] for a single linear layer)
        "output_dim": 64,  # size of the user and item vectors
        "normalize": True,  # L2-normalise both vectors (cosine similarity)
        "temperature": 0.2,  # softmax temperature on the similarities (lower: sharper); 0.2 led on ml-100k validation (docs/benchmarks.md)
        "negatives": "full",  # full: softmax over the whole catalog (B x n_items logits); in_batch: the batch's items (B x B), for catalogs too large for full
        "logq_correction": True,  # in_batch only: subtract log q(item) from the logits (Yi et al. 2019)
        "dropout": 0.0,  # dropout between tower layers
        "user_input": "others",  # others: the history minus the target, no user-id embedding; prefix: user-id embedding + the history before the target (module docstring)
        "history_dropout": 0.0,  # training only: each item of the user tower's history input dropped with this probability (denoising)
    }

    def __init__(
        self,
        *,
        n_users: int,
        n_items: int,
        params: dict[str, Any],
        item_features: dict[str, torch.Tensor] | None = None,
    ):
        super().__init__(n_users=n_users, n_items=n_items, params=params)
        p = self.params
        if not p["temperature"] > 0:
            raise ValueError(f"model 'two_tower': temperature must be positive, got {p['temperature']}")
        if p["negatives"] not in NEGATIVES:
            raise ValueError(f"model 'two_tower': negatives must be one of {list(NEGATIVES)}, got {p['negatives']!r}")
        if p["user_input"] not in USER_INPUTS:
            raise ValueError(f"model 'two_tower': user_input must be one of {list(USER_INPUTS)}, got {p['user_input']!r}")
        if not 0 <= p["history_dropout"] < 1:
            raise ValueError(f"model 'two_tower': history_dropout must be in [0, 1), got {p['history_dropout']}")
        dim, out = int(p["embedding_dim"]), int(p["output_dim"])
        hidden = [int(w) for w in p["tower_layers"]]
        features = feature_matrix(item_features, n_items)
        # Data, not weights: rebuilt from item_features, so not in the state dict.
        self.register_buffer("item_feature_matrix", features, persistent=False)

        # "others": the user is their history alone (no id table; see the module docstring).
        self.user_embedding = nn.Embedding(n_users, dim) if p["user_input"] == "prefix" else None
        # Row n_items is the history padding: zero and never updated.
        self.item_embedding = nn.Embedding(n_items + 1, dim, padding_idx=n_items)
        user_width = 2 * dim if self.user_embedding is not None else dim
        self.user_tower = _mlp([user_width, *hidden, out], p["dropout"])
        self.item_tower = _mlp([dim + features.shape[1], *hidden, out], p["dropout"])
        if self.user_embedding is not None:
            nn.init.normal_(self.user_embedding.weight, std=0.1)
        nn.init.normal_(self.item_embedding.weight, std=0.1)
        with torch.no_grad():
            self.item_embedding.weight[n_items].zero_()

    @classmethod
    def build(
        cls,
        *,
        n_users: int,
        n_items: int,
        params: dict[str, Any] | None = None,
        item_features: dict[str, torch.Tensor] | None = None,
    ) -> "TwoTower":
        unknown = set(params or {}) - set(cls.default_params)
        if unknown:
            raise ValueError(f"model '{cls.name}': unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.default_params)}")
        return cls(n_users=n_users, n_items=n_items, params=params or {}, item_features=item_features)

    @classmethod
    def score_rows_per_step(cls, *, batch_size: int, history_length: int, params: dict[str, Any] | None = None) -> int:
        """Full softmax: the batch's [B, n_items] logits, the masked copy, the log-softmax and its
        gradient (4 x B rows). In-batch: B x B logits, nothing catalog-wide beyond scoring."""
        negatives = {**cls.default_params, **(params or {})}["negatives"]
        return 4 * batch_size if negatives == "full" else 0

    @classmethod
    def memory_remedy(cls, params: dict[str, Any] | None = None) -> str:
        """What to change when training does not fit (the trainer's memory check appends it)."""
        if {**cls.default_params, **(params or {})}["negatives"] == "full":
            return ("Or set neural.models.two_tower.negatives: in_batch (B x B in-batch logits instead of "
                    "B x n_items full-catalog ones).")
        return ""

    # ------------------------------------------------------------------ towers

    def _finish(self, v: torch.Tensor) -> torch.Tensor:
        return F.normalize(v, dim=-1) if self.params["normalize"] else v

    def user_vectors(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """[B, output_dim]. Padding (``n_items``) is found by value, so ``history_len`` is only a hint."""
        mask = history != self.n_items
        summed = self.item_embedding(history).sum(dim=1)  # the padding row is zero
        mean = summed / mask.sum(dim=1, keepdim=True).clamp(min=1).to(summed.dtype)
        if self.user_embedding is None:
            return self._finish(self.user_tower(mean))
        return self._finish(self.user_tower(torch.cat([self.user_embedding(user_index), mean], dim=1)))

    def _item_vectors_of(self, item_index: torch.Tensor) -> torch.Tensor:
        x = torch.cat([self.item_embedding(item_index), self.item_feature_matrix[item_index]], dim=1)
        return self._finish(self.item_tower(x))

    def item_vectors(self) -> torch.Tensor:
        """[n_items, output_dim]."""
        return self._item_vectors_of(torch.arange(self.n_items, device=self.item_embedding.weight.device))

    def score_users(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """user_vectors @ item_vectors.T, [B, n_items] (no temperature: it does not change a ranking)."""
        return self.user_vectors(user_index, history, history_len) @ self.item_vectors().T

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B] of the batch's (user, item) pairs, on the user's full history."""
        u = self.user_vectors(batch["user_index"], batch["history"], batch["history_len"])
        return (u * self._item_vectors_of(batch["item_index"])).sum(dim=1)

    # ------------------------------------------------------------------ training

    def loss(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> torch.Tensor:
        users, items, history = batch["user_index"], batch["item_index"], batch["history"]
        u = self.user_vectors(users, self.training_input(history, items), batch["history_len"])
        if self.params["negatives"] == "full":
            return self._full_softmax_loss(u, items, history)
        return self._in_batch_loss(u, users, items, ctx)

    def training_input(self, history: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """The history the user tower sees in a training row (``user_input``), items dropped
        with probability ``history_dropout`` while training; the mask still reads the whole row."""
        pad = self.n_items
        seen = history_before(history, items, pad) if self.params["user_input"] == "prefix" else history_without(history, items, pad)
        rate = float(self.params["history_dropout"])
        if rate > 0 and self.training:
            seen = seen.masked_fill(torch.rand(seen.shape, device=seen.device) < rate, pad)
        return seen

    def _full_softmax_loss(self, u: torch.Tensor, items: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Cross-entropy over the whole catalog, the row's other positives (its history bar the target) masked."""
        logits = (u @ self.item_vectors().T) / float(self.params["temperature"])  # [B, n_items]
        others = torch.zeros(logits.shape[0], self.n_items + 1, dtype=torch.bool, device=logits.device)
        others.scatter_(1, history, True)  # the padding lands in column n_items, dropped below
        rows = torch.arange(items.shape[0], device=logits.device)
        others[rows, items] = False
        logits = logits.masked_fill(others[:, : self.n_items], float("-inf"))
        return F.cross_entropy(logits, items)

    def _in_batch_loss(self, u: torch.Tensor, users: torch.Tensor, items: torch.Tensor, ctx: TrainContext) -> torch.Tensor:
        """In-batch sampled softmax with log-q correction (Yi et al. 2019)."""
        v = self._item_vectors_of(items)
        logits = (u @ v.T) / float(self.params["temperature"])  # [B, B]: row = user, column = item
        if self.params["logq_correction"]:
            if ctx.item_log_q is not None:
                log_q = ctx.item_log_q.to(device=logits.device, dtype=logits.dtype)[items]
            else:
                log_q = torch.full_like(items, -math.log(self.n_items), dtype=logits.dtype)
            logits = logits - log_q[None, :]
        # Not negatives: the row's positive seen again, or another positive of the same user.
        same = (items[None, :] == items[:, None]) | (users[None, :] == users[:, None])
        same.fill_diagonal_(False)
        logits = logits.masked_fill(same, float("-inf"))
        target = torch.arange(items.shape[0], device=logits.device)
        return F.cross_entropy(logits, target)


__all__ = ["TwoTower", "feature_matrix", "history_before", "history_without"]
