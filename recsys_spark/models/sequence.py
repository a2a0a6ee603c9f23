"""What the sequence models (``gru4rec``, ``sasrec``, ``caser``) share: windows of a history.

They read ``histories`` batches (``models/base.py``): each user's training items
in time order, the most recent ``neural.history_length`` of them, padded at the
END with ``n_items`` (``history[b, :n]`` are real, oldest first). The models
look at windows of the most recent items instead, aligned the way each wants:

* right-aligned (padding first, the newest item in the last column): SASRec's
  learned positions and Caser's convolutions then see the newest item at the
  same place whatever the history's length, as in the papers' code;
* left-aligned (the oldest item first, padding after): a GRU runs over the
  real items from its initial state and its output after the last one is read.

Padding is found by value (``n_items``), so ``history_len`` is only a hint and
the width of the history tensor never changes a window.
"""
from __future__ import annotations

from typing import Any, ClassVar

import torch
import torch.nn.functional as F

from recsys_spark.models.base import RecModel, TrainContext


def real_lengths(history: torch.Tensor, pad: int) -> torch.Tensor:
    """[B] number of real (non-padding) items per row; padding only ever follows them."""
    return (history != pad).sum(dim=1)


def window(history: torch.Tensor, end: torch.Tensor, length: int, pad: int, *, right_aligned: bool) -> torch.Tensor:
    """[B, length]: the items ``history[b, end[b] - length : end[b]]`` (fewer when ``end[b] < length``).

    Right-aligned: padding first, item ``end[b] - 1`` in the last column.
    Left-aligned: the window's oldest item first, padding after.
    """
    cols = torch.arange(length, device=history.device)[None, :]
    count = end.clamp(max=length)[:, None]  # real items in the window
    if right_aligned:
        src, valid = end[:, None] - length + cols, cols >= length - count
    else:
        src, valid = end[:, None] - count + cols, cols < count
    if history.shape[1] == 0:
        return torch.full((history.shape[0], length), pad, dtype=history.dtype, device=history.device)
    taken = history.gather(1, src.clamp(min=0, max=history.shape[1] - 1))
    return torch.where(valid, taken, torch.full_like(taken, pad))


def recent(history: torch.Tensor, length: int, pad: int, *, right_aligned: bool) -> torch.Tensor:
    """[B, length]: each row's ``length`` most recent items (what scoring reads)."""
    return window(history, real_lengths(history, pad), length, pad, right_aligned=right_aligned)


def training_window(history: torch.Tensor, length: int, pad: int, *, right_aligned: bool,
                    random_end: bool) -> torch.Tensor:
    """[B, length]: a window of consecutive items per row to train the next-item objective on.

    A history longer than ``length`` holds more windows than its most recent
    one: with ``random_end`` the window's end is drawn uniformly among those
    that fill it (torch's global RNG, which the trainer seeds per epoch and
    rank), so every part of a long history is trained on over the epochs;
    otherwise it is the most recent window.
    """
    n = real_lengths(history, pad)
    end = n
    if random_end:
        first = n.clamp(max=length)  # the smallest end that fills the window (or the whole history)
        choices = n - first + 1
        end = first + (torch.rand(n.shape, device=history.device) * choices).long().clamp(max=choices - 1)
    return window(history, end, length, pad, right_aligned=right_aligned)


def next_item_loss(hidden: torch.Tensor, inputs: torch.Tensor, targets: torch.Tensor, item_weight: torch.Tensor,
                   pad: int, item_bias: torch.Tensor | None = None) -> torch.Tensor:
    """Full-softmax cross-entropy of the next item at every position that has a real input and target.

    Args:
        hidden: [B, T, d] the sequence representation after each input position.
        inputs, targets: [B, T] item indexes (``targets`` = ``inputs`` shifted by one).
        item_weight: [n_items, d] output item vectors; ``item_bias``: [n_items] or None.

    Logits are computed only at the positions trained on: N x n_items floats
    (N = real positions in the batch), the memory that bounds the batch size.
    """
    keep = (inputs != pad) & (targets != pad)
    h = hidden[keep]
    if h.shape[0] == 0:  # nothing to predict (histories of one item): a zero loss that keeps the graph
        zero = hidden.sum() * 0.0 + item_weight.sum() * 0.0  # every parameter in the graph (DDP)
        return zero + (item_bias.sum() * 0.0 if item_bias is not None else 0.0)
    logits = h @ item_weight.T
    if item_bias is not None:
        logits = logits + item_bias
    return F.cross_entropy(logits.float(), targets[keep])


__all__ = ["next_item_loss", "real_lengths", "recent", "training_window", "window"]


class SequenceModel(RecModel):
    """What the three models share as models: a user vector read from the history, dotted with
    the item vectors (serving uses the vectors), and, for the models that encode a whole
    window at once (GRU4Rec, SASRec: ``encode(items) -> [B, T, d]``), the next-item loss at
    every real position of one window of the history (``window_right_aligned`` says how the
    model wants it; ``max_length``, ``params["random_windows"]``)."""

    input_kind: ClassVar[str] = "histories"
    needs_history: ClassVar[bool] = True
    dot_product: ClassVar[bool] = True
    window_right_aligned: ClassVar[bool] = True

    def score_users(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        return self.user_vectors(user_index, history, history_len) @ self.item_vectors().T

    def forward(self, batch: dict[str, torch.Tensor]) -> torch.Tensor:
        """Scores [B, n_items] of the batch's users (dropout follows train/eval mode)."""
        return self.score_users(batch["user_index"], batch["history"], batch["history_len"])

    @classmethod
    def score_rows_per_step(cls, *, batch_size: int, history_length: int, params: dict[str, Any] | None = None) -> int:
        """The next-item logits of every position of a window: ``batch x max_length`` rows, three copies."""
        max_length = int({**cls.default_params, **(params or {})}.get("max_length", history_length))
        return 3 * batch_size * min(max_length, history_length)

    def loss(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> torch.Tensor:
        seq = training_window(batch["history"], self.max_length + 1, self.n_items,
                              right_aligned=self.window_right_aligned,
                              random_end=self.training and bool(self.params["random_windows"]))
        inputs, targets = seq[:, :-1], seq[:, 1:]
        return next_item_loss(self.encode(inputs), inputs, targets, self.item_vectors(), self.n_items)
