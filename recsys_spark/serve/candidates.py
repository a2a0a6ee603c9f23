"""Who is served by what, and each user's candidate pool.

Every known user gets a time-ordered history and a source: the serving model,
or the popularity fallback for users it cannot score (too little history, no
vector). Candidates come from the blocked scorer
(:func:`recsys_spark.scoring.blocked.top_k`, never a users x items cross join)
with seen and excluded items masked.
"""
from __future__ import annotations

from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io
from recsys_spark.schemas import ITEM_ID, ITEM_INDEX, USER_INDEX
from recsys_spark.scoring.blocked import top_k

SOURCE_MODEL = "model"

SOURCE_FALLBACK = "popularity_fallback"

SOURCES = (SOURCE_MODEL, SOURCE_FALLBACK)


def user_histories_ordered(interactions: DataFrame) -> DataFrame:
    """``user_index``, ``seen``: each user's items in time order (last interaction, then index).

    Time order matters to models that read the most recent history; the
    tie-break by index makes the array (and so the output) reproducible.
    """
    ordered = F.array_sort(F.collect_list(F.struct(F.col("last_time"), F.col(ITEM_INDEX))))
    return interactions.groupBy(USER_INDEX).agg(ordered.alias("_h")).select(
        USER_INDEX, F.col(f"_h.{ITEM_INDEX}").alias("seen")
    )


def assign_sources(
    user_index: DataFrame,
    histories: DataFrame,
    *,
    min_history: int,
    model_users: DataFrame | None = None,
    max_users: int | None = None,
) -> DataFrame:
    """Every known user with ``seen`` (empty when none), ``n_history`` and ``source``.

    A user is served by the model when they have at least ``min_history`` items
    and the model can score them: a row in ``model_users`` (dot-product
    models' user factors) and an index below ``max_users`` (torch models), when
    given. Everyone else gets the popularity fallback.
    """
    users = user_index.select(USER_INDEX).join(histories, USER_INDEX, "left").withColumn(
        "seen", F.coalesce(F.col("seen"), F.array().cast("array<int>"))
    ).withColumn("n_history", F.size("seen"))
    ok = F.col("n_history") >= F.lit(min_history)
    if max_users is not None:
        ok = ok & (F.col(USER_INDEX) < F.lit(max_users))
    if model_users is not None:
        users = users.join(model_users.select(USER_INDEX).withColumn("_has_model", F.lit(True)), USER_INDEX, "left")
        ok = ok & F.col("_has_model").isNotNull()
    return users.withColumn("source", F.when(ok, SOURCE_MODEL).otherwise(SOURCE_FALLBACK)).select(
        USER_INDEX, "seen", "n_history", "source"
    )


def with_unit_factors(users: DataFrame) -> DataFrame:
    """Popularity as a rank-1 dot-product model: every user's vector is [1]."""
    return users.withColumn("factors", F.array(F.lit(1.0).cast("float")))


def candidates(
    users: DataFrame,
    model_scorer,
    fallback_scorer,
    *,
    pool: int,
    exclude_seen: bool,
    batch_users: int = 512,
    user_factors: DataFrame | None = None,
) -> DataFrame:
    """Each user's top ``pool`` items from their source, blocked scoring for both.

    Args:
        users: :func:`assign_sources` output.
        model_scorer / fallback_scorer: :class:`CatalogScorer` s of the serving
            model and of recent popularity (rank-1 dot product).
        user_factors: joined to model users when the model is a dot product.

    Returns:
        ``user_index``, ``item_index``, ``score``, ``rank``, ``source``.
    """
    model_users = users.where(F.col("source") == SOURCE_MODEL)
    if user_factors is not None:
        model_users = model_users.join(user_factors.select(USER_INDEX, "factors"), USER_INDEX)
    fallback_users = with_unit_factors(users.where(F.col("source") == SOURCE_FALLBACK))
    common = dict(k=pool, exclude_seen=exclude_seen, batch_users=batch_users)
    return top_k(model_users, model_scorer, **common).withColumn("source", F.lit(SOURCE_MODEL)).unionByName(
        top_k(fallback_users, fallback_scorer, **common).withColumn("source", F.lit(SOURCE_FALLBACK))
    )


def read_exclusion_list(spark: SparkSession, path: str) -> DataFrame:
    """``item_id`` s from a CSV with a header or a Parquet file/directory."""
    if not io.path_exists(spark, path):
        raise FileNotFoundError(f"recommend.exclude_items_path: {path} not found")
    lower = path.lower().rstrip("/")
    df = (spark.read.option("header", True).csv(path) if lower.endswith((".csv", ".csv.gz"))
          else spark.read.parquet(path))
    if ITEM_ID not in df.columns:
        raise ValueError(f"recommend.exclude_items_path: {path} has no '{ITEM_ID}' column (has {df.columns})")
    return df.select(F.trim(F.col(ITEM_ID).cast("string")).alias(ITEM_ID)).where(F.col(ITEM_ID) != "").distinct()
