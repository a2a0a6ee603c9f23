"""Scoring a trained neural model on Spark: a :class:`recsys_spark.scoring.blocked.BatchScorer`.

The model's state dict travels as one Spark broadcast (with the keyword
arguments that rebuild the model); each Python worker process builds and
loads the model once, keeps it in a module-level cache keyed by a model id,
and runs ``score_users`` on each batch of users under ``torch.no_grad()``, on
the GPU when the executor has one. Python workers are reused between tasks
(``spark.python.worker.reuse``, on by default), so the build is paid once per
worker, not once per task.

Usage::

    scorer = TorchModelScorer(spark, "neumf", state_dict_bytes(model),
                              dict(n_users=..., n_items=..., params=model.params),
                              history_length=cfg.neural.history_length)
    recs = blocked.top_k(users_with_seen, scorer, k=10)
"""
from __future__ import annotations

import hashlib
import uuid
from collections import OrderedDict
from typing import Any

import numpy as np
import pandas as pd
import torch

from recsys_spark.memory import require_broadcast
from recsys_spark.models import registry
from recsys_spark.models.base import RecModel, state_dict_bytes, state_dict_from_bytes
from recsys_spark.schemas import SEEN

# model id -> loaded model, in this Python process. Small: a worker may score a
# few models in one job (evaluation of several candidates); the oldest goes.
_CACHE: OrderedDict[str, RecModel] = OrderedDict()
_CACHE_SIZE = 2


def model_from_bytes(name: str, state_dict_bytes: bytes, build_kwargs: dict[str, Any]) -> RecModel:
    """Build model ``name`` with ``build_kwargs`` and load the state dict (eval mode, CPU).

    ``build_kwargs`` are the keyword arguments of ``RecModel.build``: ``n_users``,
    ``n_items``, ``params`` and, where the model used them, ``item_features``.
    The bytes are read with ``weights_only=True``: tensors only, no pickled code.
    """
    model = registry.get(name).build(**build_kwargs)
    model.load_state_dict(state_dict_from_bytes(state_dict_bytes))
    return model.eval()


def padded_histories(seen_column, *, n_items: int, length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``history`` [B, L] (the last ``length`` items of each ``seen``, right-padded with
    ``n_items``) and ``history_len`` [B]. ``seen`` is in time order and may be None;
    item indexes outside the model's catalog (added after training) are dropped."""
    rows = []
    for seen in seen_column:
        items = np.asarray(seen if seen is not None else [], dtype=np.int64)
        items = items[(items >= 0) & (items < n_items)]
        rows.append(items[-length:] if length > 0 else items[:0])
    width = max([len(r) for r in rows] + [1])
    history = np.full((len(rows), width), n_items, dtype=np.int64)
    for i, r in enumerate(rows):
        history[i, : len(r)] = r
    return torch.from_numpy(history), torch.tensor([len(r) for r in rows], dtype=torch.long)


class TorchModelScorer:
    """Scores [len(batch), n_items] of a trained neural model for ``scoring.blocked.top_k``.

    Users whose ``user_index`` the model has no embedding for (indexed after
    training) get -inf everywhere, as items without a vector do in
    :class:`recsys_spark.scoring.scorers.DotProductScorer`: no evidence, no
    recommendations; models that read only the history (``input_kind ==
    "histories"``) score them from their history.

    Args:
        spark: the session whose context broadcasts the model.
        model_name: a registered model name.
        state_dict_bytes: ``torch.save`` of the trained state dict (see :func:`state_dict_bytes`).
        build_kwargs: the keyword arguments of the model's ``build``.
        history_length: the most recent items of ``seen`` a history-reading model gets
            (the trainer's ``neural.history_length``).
    """

    def __init__(
        self,
        spark,
        model_name: str,
        state_dict_bytes: bytes,
        build_kwargs: dict[str, Any],
        *,
        history_length: int = 50,
    ):
        cls = registry.get(model_name)  # fail on the driver for an unknown name
        self.model_name = model_name
        self.n_items = int(build_kwargs["n_items"])
        self.n_users = int(build_kwargs["n_users"])
        self.history_length = int(history_length)
        self._reads_history = cls.needs_history or cls.input_kind == "histories"
        self._uses_user_id = cls.input_kind != "histories"
        # Unique per scorer: two scorers never share a cached model built from other arguments.
        self.model_id = f"{model_name}-{hashlib.sha256(state_dict_bytes).hexdigest()[:12]}-{uuid.uuid4().hex[:12]}"
        # One broadcast for weights and build arguments (item features can be large too).
        require_broadcast(spark, f"model '{model_name}'", len(state_dict_bytes))
        self._payload = spark.sparkContext.broadcast((state_dict_bytes, build_kwargs))

    def _model(self) -> tuple[RecModel, torch.device]:
        model = _CACHE.get(self.model_id)
        if model is None:
            blob, kwargs = self._payload.value
            device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
            model = model_from_bytes(self.model_name, blob, kwargs).to(device)
            _CACHE[self.model_id] = model
            while len(_CACHE) > _CACHE_SIZE:
                _CACHE.popitem(last=False)
        _CACHE.move_to_end(self.model_id)
        return model, next(model.parameters()).device

    def score(self, batch: pd.DataFrame) -> torch.Tensor:
        model, device = self._model()
        users = torch.from_numpy(batch["user_index"].to_numpy(dtype=np.int64))
        known = (users >= 0) & (users < self.n_users)
        if self._reads_history:
            history, history_len = padded_histories(batch[SEEN], n_items=self.n_items, length=self.history_length)
        else:
            history, history_len = torch.full((len(users), 1), self.n_items), torch.zeros(len(users), dtype=torch.long)
        with torch.no_grad():
            scores = model.score_users(
                users.where(known, torch.zeros_like(users)).to(device), history.to(device), history_len.to(device)
            ).float().cpu()
        if self._uses_user_id:
            scores[~known] = float("-inf")
        return scores


__all__ = ["TorchModelScorer", "model_from_bytes", "padded_histories", "state_dict_bytes"]
