"""Exact top-k over rows of scores, with excluded items: torch and NumPy only.

Shared by serving and evaluation (:func:`recsys_spark.scoring.blocked.top_k`, inside
Spark tasks) and by the trainer's per-epoch validation
(:mod:`recsys_spark.train.local_metrics`, inside a training process without
Spark), so both exclude items and break ties the same way.
"""
from __future__ import annotations

import numpy as np
import torch


def exclude(scores: torch.Tensor, rows: np.ndarray, items: np.ndarray) -> None:
    """Set ``scores[rows[j], items[j]] = -inf`` for every j, in place (one indexed assignment)."""
    if len(rows):
        index = (torch.as_tensor(rows, device=scores.device), torch.as_tensor(items, device=scores.device))
        scores[index] = float("-inf")


def exclude_items(scores: torch.Tensor, items: np.ndarray) -> None:
    """Set ``scores[:, items] = -inf`` for every row, in place: items no user may get
    (never trained, excluded from the catalog). Indexes, not a boolean mask:
    an all-False [n_items] mask still costs a pass over the whole block."""
    if len(items):
        scores[:, torch.as_tensor(items, device=scores.device)] = float("-inf")


def top_k_rows(scores, k: int, *, chunk: int = 10, direct_below: int = 1024):
    """``torch.topk(scores, k, dim=1, sorted=True)``, exact, 2-3x cheaper on wide rows.

    Measured 25-35 us against 65-80 us per row of 20,000 scores, one core.

    ``torch.topk`` on the CPU costs about 3.5 ns per score for k = 50 and was
    more than half of the scoring time. Instead, the row is cut into ``m =
    n / chunk`` strided groups (columns j, j + m, j + 2m, ...); the k groups
    with the largest maxima (found the same way, recursively) hold every one of
    the row's top k, because any other group's maximum is beaten by k values in
    distinct groups. The final ``topk`` runs over ``k * chunk`` gathered scores.
    Strided rather than contiguous groups, because the group maxima are then an
    element-wise max of ``chunk`` contiguous slices, which vectorises.

    Results equal ``torch.topk``'s up to the order of exactly tied scores; the
    same input always gives the same output. Rows with fewer than ``k`` finite
    scores return their finite ones first, then -inf (callers drop -inf).

    Args:
        scores: [batch, n] float tensor.
        k: 1 <= k <= n.

    Returns:
        (values [batch, k], indexes [batch, k] int64), best first.
    """
    batch, n = scores.shape
    groups = -(-n // chunk)
    if n <= direct_below or groups < k:
        return torch.topk(scores, k, dim=1, sorted=True)
    if groups * chunk != n:
        scores = torch.nn.functional.pad(scores, (0, groups * chunk - n), value=float("-inf"))
    group_max = scores.view(batch, chunk, groups).amax(dim=1)
    _, best_groups = top_k_rows(group_max, k, chunk=chunk, direct_below=direct_below)
    columns = (best_groups.unsqueeze(2) + groups * torch.arange(chunk, device=scores.device)).reshape(batch, k * chunk)
    values, position = torch.topk(scores.gather(1, columns), k, dim=1, sorted=True)
    return values, columns.gather(1, position)


__all__ = ["exclude", "top_k_rows"]
