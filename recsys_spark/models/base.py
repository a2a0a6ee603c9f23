"""The small interface every neural model implements; the trainer knows nothing else.

A model is a ``torch.nn.Module`` subclass in one file under ``recsys_spark/models/``,
registered by name in :mod:`recsys_spark.models.registry`. It says which
training examples it reads (``input_kind``), builds itself from sizes and
hyperparameters, computes its loss on one batch, and scores users against the
whole catalog. Dot-product models also expose their user and item vectors, so
serving needs no forward pass.

Batches are dicts of tensors, as the data path delivers them:

* ``pairs``: ``user_index`` [B] long, ``item_index`` [B] long, ``weight`` [B] float,
  plus ``history`` [B, L] long and ``history_len`` [B] long (the user's training
  items in time order, padded with ``n_items``) when ``needs_history`` is set.
* ``histories``: one row per user: ``user_index`` [B], ``history`` [B, L]
  (padded with ``n_items``), ``history_len`` [B].
"""
from __future__ import annotations

import io
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch


@dataclass
class TrainContext:
    """What the trainer hands a model's ``loss`` besides the batch.

    ``sample_negatives(n)`` draws ``n`` item indexes from the configured
    distribution (uniform or popularity-proportional) on the right device.
    ``item_log_q`` is the log of each item's sampling probability in a batch
    (for the two-tower model's log-q correction). ``epoch`` drives annealing.
    """

    n_items: int
    sample_negatives: Any
    negatives_per_positive: int = 4
    item_log_q: torch.Tensor | None = None
    epoch: int = 0
    step: int = 0
    total_steps: int = 1
    extra: dict = field(default_factory=dict)


class RecModel(torch.nn.Module):
    """Base class of the neural models."""

    name: ClassVar[str] = ""
    input_kind: ClassVar[str] = "pairs"  # "pairs" | "histories"
    needs_history: ClassVar[bool] = False
    dot_product: ClassVar[bool] = False
    # Propagates over the training graph: the trainer builds it with graph=(user_index, item_index),
    # the training pairs as int32 arrays (recsys_spark.train.neural.training_graph), and budgets
    # the class's graph_bytes(n_users=, n_items=, n_edges=, params=). A model loaded for scoring is
    # built without it, so what serving needs must be in the state dict (LightGCN).
    needs_graph: ClassVar[bool] = False
    # Hyperparameters with their defaults, a comment per key (the one place they are written);
    # config overrides them per model: neural.models.<name> (conf/base.yaml, a dataset's file, --set).
    default_params: ClassVar[dict[str, Any]] = {}

    def __init__(self, *, n_users: int, n_items: int, params: dict[str, Any]):
        super().__init__()
        self.n_users = n_users
        self.n_items = n_items
        self.params = {**self.default_params, **params}

    @classmethod
    def build(cls, *, n_users: int, n_items: int, params: dict[str, Any] | None = None,
              item_features: dict[str, torch.Tensor] | None = None) -> "RecModel":
        unknown = set(params or {}) - set(cls.default_params)
        if unknown:
            raise ValueError(f"model '{cls.name}': unknown parameter(s) {sorted(unknown)}; "
                             f"known: {sorted(cls.default_params)}")
        return cls(n_users=n_users, n_items=n_items, params=params or {})

    @classmethod
    def score_rows_per_step(cls, *, batch_size: int, history_length: int, params: dict[str, Any] | None = None) -> int:
        """Rows of [rows, n_items] float32 blocks one training step holds at its peak (the memory
        budget's catalog-wide term, :func:`recsys_spark.memory.training_need`): by default a batch's
        scores, their gradient and a float copy. A model that scores more rows than users per step
        (the sequence models: every position) says so."""
        return 3 * batch_size

    @classmethod
    def memory_remedy(cls, params: dict[str, Any] | None = None) -> str:
        """A model-specific way out, appended to the trainer's memory refusal (e.g. a cheaper
        objective); empty by default."""
        return ""

    def loss(self, batch: dict[str, torch.Tensor], ctx: TrainContext) -> torch.Tensor:
        raise NotImplementedError

    def score_users(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        """Scores [B, n_items] for users (history padded with ``n_items``)."""
        raise NotImplementedError

    # Dot-product models only: vectors whose dot product is ``score_users``.
    def user_vectors(self, user_index: torch.Tensor, history: torch.Tensor, history_len: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def item_vectors(self) -> torch.Tensor:
        raise NotImplementedError


def multi_hot(history: torch.Tensor, n_items: int) -> torch.Tensor:
    """Binary [B, n_items] from a history [B, L] padded with ``n_items`` (the pad column is dropped)."""
    x = torch.zeros(history.shape[0], n_items + 1, device=history.device)
    x.scatter_(1, history, 1.0)
    return x[:, :n_items]


def state_dict_bytes(state: "dict[str, torch.Tensor] | torch.nn.Module") -> bytes:
    """A state dict (or a module's) as ``torch.save`` bytes, tensors on the CPU: what
    ``model.pt``, the trainer's results and the scorers' broadcasts carry."""
    if isinstance(state, torch.nn.Module):
        state = state.state_dict()
    buf = io.BytesIO()
    torch.save({k: v.detach().cpu() for k, v in state.items()}, buf)
    return buf.getvalue()


def state_dict_from_bytes(data: bytes) -> dict[str, torch.Tensor]:
    """The state dict :func:`state_dict_bytes` wrote, read with ``weights_only=True``:
    tensors only, never pickled code."""
    return torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
