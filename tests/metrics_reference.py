"""An independent NumPy implementation of the ranking metrics, for parity tests.

Written from the textbook definitions, sharing no code with recsys_spark.evaluate.
"""
from __future__ import annotations

import numpy as np


def reference_metrics(recs: dict[int, list[int]], relevant: dict[int, set[int]], ks, n_items: int) -> dict:
    out = {}
    users = sorted(relevant)
    for k in ks:
        prec, rec, ndcg, ap, hit = [], [], [], [], []
        covered = set()
        for u in users:
            top = recs.get(u, [])[:k]
            covered.update(top)
            rel = relevant[u]
            gains = np.array([1.0 if i in rel else 0.0 for i in top])
            hits = gains.sum()
            prec.append(hits / k)
            rec.append(hits / len(rel))
            discounts = 1.0 / np.log2(np.arange(2, len(top) + 2))
            idcg = (1.0 / np.log2(np.arange(2, min(len(rel), k) + 2))).sum()
            ndcg.append(float((gains * discounts).sum() / idcg))
            cum = np.cumsum(gains)
            ap.append(float(sum(cum[i] / (i + 1) for i in range(len(top)) if gains[i])) / min(len(rel), k))
            hit.append(1.0 if hits > 0 else 0.0)
        out[f"precision_at_{k}"] = float(np.mean(prec))
        out[f"recall_at_{k}"] = float(np.mean(rec))
        out[f"ndcg_at_{k}"] = float(np.mean(ndcg))
        out[f"map_at_{k}"] = float(np.mean(ap))
        out[f"hit_rate_at_{k}"] = float(np.mean(hit))
        out[f"coverage_at_{k}"] = len(covered) / n_items
    max_k = max(ks)
    rr = []
    for u in users:
        top = recs.get(u, [])[:max_k]
        first = next((i + 1 for i, item in enumerate(top) if item in relevant[u]), None)
        rr.append(1.0 / first if first else 0.0)
    out["mrr"] = float(np.mean(rr))
    return out
