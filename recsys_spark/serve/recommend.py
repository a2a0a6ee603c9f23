"""The serving run: the top-N items per user, validated and published for downstream readers.

:func:`run` wires the serving package together for ``jobs/recommend.py``:
select and load the serving model (:mod:`~recsys_spark.serve.select`), assign
each user a source and a candidate pool (:mod:`~recsys_spark.serve.candidates`),
re-rank and explain (:mod:`~recsys_spark.serve.rerank`), map to raw ids, and
publish through the checks (:mod:`~recsys_spark.serve.checks`,
:mod:`~recsys_spark.serve.publish`).
"""
from __future__ import annotations

import numpy as np
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import catalog, io, tables
from recsys_spark.config import Config
from recsys_spark.evaluate import folds
from recsys_spark.models import artifacts
from recsys_spark.schemas import (
    INTERACTIONS,
    ITEMS,
    ITEM_ID,
    ITEM_INDEX,
    ITEM_INDEX_TABLE,
    RANK,
    SCORE,
    SOURCE,
    SPLIT,
    USER_ID,
    USER_INDEX,
    USER_INDEX_TABLE,
)
from recsys_spark.serve.candidates import assign_sources, candidates, read_exclusion_list
from recsys_spark.serve.checks import Checks, expected_counts
from recsys_spark.serve.errors import RecommendError
from recsys_spark.serve.publish import publish, published_runs
from recsys_spark.serve.rerank import PostProcessor, finalize, normalise_rows
from recsys_spark.serve.select import list_models, load_model, select_model, validation_metric


def to_raw_ids(recs: DataFrame, user_index: DataFrame, item_index: DataFrame, *, model: str) -> DataFrame:
    """The published shape: raw ``user_id`` / ``item_id`` / ``explanation`` through the index tables."""
    items = item_index.select(ITEM_INDEX, ITEM_ID)
    why = items.select(F.col(ITEM_INDEX).alias("explanation_index"), F.col(ITEM_ID).alias("explanation"))
    return (
        recs.join(user_index.select(USER_INDEX, USER_ID), USER_INDEX)
        .join(F.broadcast(items), ITEM_INDEX)
        .join(F.broadcast(why), "explanation_index", "left")
        .select(USER_ID, ITEM_ID, RANK, SCORE, F.lit(model).alias("model"), SOURCE, "explanation")
    )


def _table_version(spark, warehouse, table, df: DataFrame | None = None) -> dict:
    path = io.table_path(warehouse, table)
    info = {"path": path, "modified": io.modification_time(spark, path)}
    if df is not None:
        info["rows"] = df.count()
    return info


def run(
    spark: SparkSession, cfg: Config, *, run_date: str, force: bool = False, model_names: list[str] | None = None
) -> dict:
    """Recommend for every known user and publish ``recommendations/run_date=<run_date>``.

    Args:
        model_names: the models the serving model is chosen from (the ones this
            run trained); None: every model folder in the warehouse.

    Returns the manifest. Raises what :func:`publish` raises.
    """
    conf, wh = cfg.recommend, cfg.warehouse
    primary = cfg.evaluation.primary_metric
    models = list_models(spark, wh)
    if model_names is not None:
        missing = sorted(set(model_names) - set(models))
        if missing:
            raise RecommendError(f"models {missing} were named (--models) but have no readable model folder")
        models = {name: meta for name, meta in models.items() if name in model_names}
    name = select_model(models, primary, conf.model)
    meta = models[name]

    user_index = io.read_table(spark, wh, USER_INDEX_TABLE)
    item_index = io.read_table(spark, wh, ITEM_INDEX_TABLE)
    interactions = io.read_table(spark, wh, INTERACTIONS)
    _, n_items = io.catalog_sizes(spark, wh)
    inputs = {t.name: _table_version(spark, wh, t, df)
              for t, df in ((USER_INDEX_TABLE, user_index), (ITEM_INDEX_TABLE, item_index),
                            (INTERACTIONS, interactions))}

    serving = load_model(spark, wh, name, history_length=cfg.neural.history_length)
    inputs["model"] = {"path": io.model_dir(wh, name), "modified": io.modification_time(spark, io.model_dir(wh, name)),
                       "trained_at": meta.get("trained_at"), "kind": serving.kind}

    excluded_ids = excluded_mask = None
    if conf.exclude_items_path:
        excluded_ids = read_exclusion_list(spark, conf.exclude_items_path).cache()
        idx = [r[0] for r in excluded_ids.join(item_index, ITEM_ID).select(ITEM_INDEX).collect()]
        excluded_mask = np.zeros(n_items, dtype=bool)
        excluded_mask[idx] = True
        n_listed = excluded_ids.count()
        inputs["exclude_items"] = {"path": conf.exclude_items_path,
                                   "modified": io.modification_time(spark, conf.exclude_items_path),
                                   "rows": n_listed, "in_catalog": len(idx), "unknown_ids": n_listed - len(idx)}

    # Every stage below reads the users' histories and sources: computed once.
    users = assign_sources(
        user_index, tables.user_histories(interactions),
        min_history=max(conf.min_history, serving.min_history),
        model_users=serving.user_factors, max_users=serving.max_users,
    ).cache()

    # The cold-user fallback: chosen on validation's cold users (all time or a recent window), fitted on
    # every interaction. The evaluate stage of the same night made the same choice (same split, same
    # config) and recorded it: reused; else (recommend run on its own, anything changed) chosen here.
    recorded = folds.recorded_fallback(spark, cfg, run_date)
    fallback_choice = ({**recorded, "chosen_by": "evaluate"} if recorded is not None else
                       {**folds.choose_fallback(io.read_table(spark, wh, SPLIT), n_items, cfg), "chosen_by": "recommend"})
    inputs[SPLIT.name] = _table_version(spark, wh, SPLIT)
    fallback = folds.fit_fallback(spark, interactions, n_items, fallback_choice)
    print(f"recommend: cold-user fallback {fallback_choice['chosen']} "
          f"({fallback_choice['metric']} on validation's {fallback_choice['judged_on']}: "
          + ", ".join(f"{k} {v:.4f}" for k, v in fallback_choice["candidates"].items() if v is not None)
          + f"; chosen by {fallback_choice['chosen_by']})", flush=True)
    mmr = conf.mmr_lambda is not None
    pool = min(n_items, conf.n * conf.mmr_pool_factor) if mmr else conf.n
    cands = candidates(users, serving, fallback, n_items=n_items, pool=pool, exclude_seen=conf.exclude_seen,
                       excluded=excluded_mask, batch_users=cfg.evaluation.scoring_batch_users)

    unit = None
    if serving.item_vectors is not None:  # zero rows for items the model never saw: they explain nothing
        vectors = np.zeros((n_items, serving.item_vectors.shape[1]), dtype=np.float32)
        known = min(n_items, len(serving.item_vectors))
        vectors[:known] = serving.item_vectors[:known]
        unit = normalise_rows(vectors)
    similarity, genres = None, None
    if mmr:
        similarity = conf.mmr_similarity
        if similarity == "auto":
            similarity = "embedding" if unit is not None else "genres"
        if similarity == "embedding" and unit is None:
            raise RecommendError(f"recommend.mmr_similarity=embedding: model '{name}' has no item embeddings")
        if similarity == "genres":
            rows = io.read_table(spark, wh, ITEMS).select(ITEM_INDEX, "genres").collect()
            genres_by_item = {r[ITEM_INDEX]: r["genres"] for r in rows}
            if not any(genres_by_item.values()):
                raise RecommendError(f"MMR by genres: no item has genres (model '{name}' has no item embeddings)")
            genres = tables.genre_matrix(genres_by_item, n_items)
            inputs[ITEMS.name] = _table_version(spark, wh, ITEMS)
    # EASE explains by each history item's contribution to the score, through the
    # scorer's own broadcast of B.
    item_item = serving.scorer.broadcast if serving.kind == artifacts.KIND_ITEM_ITEM else None
    explains = unit is not None or item_item is not None
    post = None
    if mmr or explains:
        post = PostProcessor(spark, n=conf.n, unit_vectors=unit, mmr_lambda=conf.mmr_lambda,
                             similarity=similarity or "embedding", genres=genres, item_item=item_item)
    recs = to_raw_ids(finalize(cands, users, post, n=conf.n), user_index, item_index, model=name)

    model_ok = serving.scorable(n_items) & ~(excluded_mask if excluded_mask is not None else False)
    fallback_ok = ~excluded_mask if excluded_mask is not None else np.ones(n_items, dtype=bool)
    expected = expected_counts(users, n=conf.n, exclude_seen=conf.exclude_seen,
                               model_available=model_ok, fallback_available=fallback_ok)
    ids = user_index.select(USER_INDEX, USER_ID)
    seen_pairs = None
    if conf.exclude_seen:
        seen_pairs = (interactions.select(USER_INDEX, ITEM_INDEX).join(ids, USER_INDEX)
                      .join(F.broadcast(item_index.select(ITEM_INDEX, ITEM_ID)), ITEM_INDEX).select(USER_ID, ITEM_ID))
    checks = Checks(expected=expected.join(ids, USER_INDEX).select(USER_ID, SOURCE, "expected_n"),
                    seen=seen_pairs, excluded=excluded_ids, reranked=mmr)
    try:
        manifest = publish(
            spark, wh, run_date, recs, checks,
            model=name, metric_name=primary, metric_value=validation_metric(meta, primary), n_items=n_items,
            conf=conf, force=force,
            manifest_extra={
                "model_kind": serving.kind,
                "model_metrics": meta.get("metrics", {}),
                "model_params": meta.get("params", {}),
                "inputs": inputs,
                "config": cfg.to_dict(),
                "explanations": ("item_item_contribution" if item_item is not None
                                 else "embedding_cosine" if unit is not None else None),
                "mmr_similarity": similarity,
                "fallback": fallback_choice,
                "fallback_model": fallback_choice["chosen"],  # a scalar: the night's run manifest keeps it
            },
        )
    finally:
        users.unpersist()
        if excluded_ids is not None:
            excluded_ids.unpersist()
    latest = (manifest.get("latest") or {}).get("run_date")
    manifest["catalog"] = catalog.try_register("recommendations", catalog.register_recommendations, spark, cfg,
                                               published_runs(spark, wh), latest)
    return manifest
