"""What every trainer shares to be judged the same way: the users of a held-out
fold with their training items, their top-K from a scorer, and the metrics.

Model selection scores ``validation`` with models fitted on ``train``; the
final model, refitted on train + validation, is scored on ``test``.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, split
from recsys_spark.scoring import blocked
from recsys_spark.evaluate import ranking
from recsys_spark.config import Config
from recsys_spark.schemas import EVAL_RECS, ITEM_INDEX_TABLE, USER_INDEX, USER_INDEX_TABLE

FINAL_FOLD = "test"
SELECTION_FOLD = "validation"


def catalog_sizes(spark: SparkSession, warehouse: str) -> tuple[int, int]:
    """(n_users, n_items): index sizes, i.e. the row counts of every factor matrix."""
    def size(table):
        return (io.read_table(spark, warehouse, table).agg(F.max(table.schema.fields[1].name)).first()[0] or -1) + 1

    return size(USER_INDEX_TABLE), size(ITEM_INDEX_TABLE)


def fold_users(split_rows: DataFrame, fold: str) -> DataFrame:
    """Warm users of ``fold`` with ``seen``: their items in the rows the model trained on."""
    train = split.training_rows(split_rows, final=(fold == FINAL_FOLD))
    held = split.fold(split_rows, fold, segment="warm").select(USER_INDEX).distinct()
    return held.join(blocked.user_histories(train), USER_INDEX, "left")


def fold_relevant(split_rows: DataFrame, fold: str) -> DataFrame:
    return ranking.relevant_items(split.fold(split_rows, fold, segment="warm"))


def score_fold(users: DataFrame, scorer, cfg: Config) -> DataFrame:
    return blocked.top_k(
        users,
        scorer,
        k=max(cfg.evaluation.ks),
        exclude_seen=cfg.evaluation.exclude_seen,
        batch_users=cfg.evaluation.scoring_batch_users,
    )


def fold_metrics(split_rows: DataFrame, recs: DataFrame, fold: str, n_items: int, cfg: Config) -> dict:
    train = split.training_rows(split_rows, final=(fold == FINAL_FOLD))
    return ranking.ranking_metrics(
        recs,
        fold_relevant(split_rows, fold),
        ks=cfg.evaluation.ks,
        n_items=n_items,
        item_popularity=ranking.catalog_popularity(train, n_items),
    )


def write_eval_recs(recs: DataFrame, warehouse: str, model: str, fold: str) -> str:
    return io.write_table(recs, warehouse, EVAL_RECS, path=io.table_path(warehouse, EVAL_RECS, model=model, fold=fold))


def read_eval_recs(spark: SparkSession, warehouse: str, model: str, fold: str) -> DataFrame:
    return io.read_table(spark, warehouse, EVAL_RECS, path=io.table_path(warehouse, EVAL_RECS, model=model, fold=fold))
