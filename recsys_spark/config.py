"""Typed configuration: defaults < conf files < ``--set key=value`` overrides.

Every section is a pydantic dataclass (a standard dataclass whose fields
pydantic checks as it is built), so when the config loads, before any Spark
work, a key that does not exist, a value of the wrong type, a choice outside
its enumeration (``split.protocol``, ``neural.use_gpu``, ...) or a number
outside the range where it can work fails with one message naming the key,
what it allows and the file or ``--set`` it came from. Each layer is checked
on its own (so the message names the right file); the checks that tie keys
together (a weight for every event type, the primary metric's k among
``evaluation.ks``) run once, on the merged result. Values from ``--set`` are
parsed as YAML scalars (never ``eval``). The resolved config (``to_dict``) is
recorded where a reader needs to trust an output: in every model's
``metadata.json`` and in the published run's ``_manifest.json``; the clean
report records the dataset and clean sections it ran with.

The defaults below are the values ``conf/base.yaml`` (and the synthetic
dataset's file, for ``synthetic``) write out with their comments;
``tests/test_config.py`` keeps the two equal.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import json
import os
import typing
from dataclasses import field
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import (
    AfterValidator,
    BeforeValidator,
    ConfigDict,
    Field,
    Strict,
    TypeAdapter,
    ValidationError,
    ValidationInfo,
    model_validator,
)
from pydantic.dataclasses import dataclass

from recsys_spark.errors import UserError
from recsys_spark.schemas import EVENT_TYPES

# RECSYS_CONF_DIR: where conf/ is when the package is imported from elsewhere,
# e.g. the zip that scripts/submit.sh ships with --py-files (set by submit.sh).
CONF_DIR = Path(os.environ.get("RECSYS_CONF_DIR") or Path(__file__).resolve().parents[1] / "conf")
# The metrics evaluation.primary_metric may name: the ones the neural trainer
# also computes per epoch (train/local_metrics.METRICS; a test keeps them equal).
PRIMARY_METRICS = ("ndcg", "recall", "precision", "hit_rate")
# Keys that existed once: naming one says what replaced it.
REMOVED_KEYS = {
    "synthetic.output": "the generator writes to dataset.source.path, the path the clean job reads; set that",
    "ease.l2": "EASE picks its lambda on validation from ease.l2_grid; give one value (ease.l2_grid=[250.0]) to fix it",
}


def _parse_size(text) -> int:
    from recsys_spark.memory import parse_size  # memory imports psutil: only when a size is read

    return parse_size(text)


class ConfigError(UserError, ValueError):
    """A config file or override is malformed; the message names the key."""


# --------------------------------------------------------------------------- value types
# Field types say what a value may be; pydantic checks them as a section is built.
# Numbers and booleans are strict: "3", 3.5 or true for a count is an error, not a guess.


def _number_as_text(value: Any) -> Any:
    """YAML reads ``spark.cores.max: 2`` as a number; a text setting keeps its text."""
    return str(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else value


def _bool_as_text(value: Any) -> Any:
    """``use_gpu: true`` (a YAML boolean) means the choice "true"."""
    return ("true" if value else "false") if isinstance(value, bool) else value


def _memory_size(value: str) -> str:
    try:
        _parse_size(value)
    except ValueError:
        raise ValueError("must be a memory size such as 512m or 2g") from None
    return value


def _iso_date(value: str) -> str:
    try:
        dt.date.fromisoformat(value)
    except ValueError:
        raise ValueError("must be a date, YYYY-MM-DD") from None
    return value


def _iso_time(value: str) -> str:
    try:
        dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError("must be an ISO 8601 time, e.g. 1995-01-01T00:00:00") from None
    return value


def _primary_metric(value: str) -> str:
    base, sep, k = value.rpartition("_at_")
    if not sep or base not in PRIMARY_METRICS or not k.isdigit() or int(k) < 1:
        raise ValueError(f"must be <metric>_at_<k> with metric one of {', '.join(PRIMARY_METRICS)}")
    return value


Int = Annotated[int, Strict()]
Float = Annotated[float, Strict()]  # an integer is taken as a float
Bool = Annotated[bool, Strict()]
Text = Annotated[str, BeforeValidator(_number_as_text)]
Count = Annotated[int, Strict(), Field(ge=1)]
NonNegativeInt = Annotated[int, Strict(), Field(ge=0)]
NonNegative = Annotated[float, Strict(), Field(ge=0.0)]
Positive = Annotated[float, Strict(), Field(gt=0.0)]
Share = Annotated[float, Strict(), Field(ge=0.0, le=1.0)]
Fraction = Annotated[float, Strict(), Field(gt=0.0, lt=1.0)]  # a part of a whole that leaves some over
Port = Annotated[int, Strict(), Field(ge=1, le=65535)]
MemorySize = Annotated[str, BeforeValidator(_number_as_text), AfterValidator(_memory_size)]  # 512m, 2g
Date = Annotated[str, AfterValidator(_iso_date)]
Time = Annotated[str, AfterValidator(_iso_time)]

SourceFormat = Literal["json", "csv", "parquet"]
TimestampFormat = Literal["iso8601", "epoch_s", "epoch_ms"]
ItemsFormat = Literal["csv", "parquet"]
OnUnreadableFile = Literal["quarantine", "fail"]
SplitProtocol = Literal["temporal", "leave_last_n", "random"]
UseGpu = Annotated[Literal["auto", "true", "false"], BeforeValidator(_bool_as_text)]
NegativeSampling = Literal["uniform", "popularity"]
MmrSimilarity = Literal["auto", "embedding", "genres"]
Metastore = Literal["embedded", "hive", "session"]
SqlName = Annotated[str, Field(pattern=r"^[A-Za-z_][A-Za-z0-9_]*$")]
PrimaryMetric = Annotated[str, AfterValidator(_primary_metric)]

# Unknown keys are an error; everything else is checked by the field types.
_SECTION = ConfigDict(extra="forbid")


@dataclass(config=_SECTION)
class SparkConf:
    app_name: Text = "recsys-spark"
    # Used only when spark-submit did not give a master (tests, plain python).
    master: Text = "local[2]"
    # 2 cores here: a few partitions per core keeps tasks short without
    # drowning small data in scheduling overhead.
    shuffle_partitions: Count = 4
    driver_memory: MemorySize = "2g"
    # A cap on what one catalog-wide step (EASE's item x item matrix) plans to
    # hold in the Python driver; None: the memory the machine and the process's
    # cgroup/rlimit have available when the step starts (recsys_spark.memory).
    driver_python_memory: MemorySize | None = None
    # On a spark:// master: a job that has had no executor for this many seconds
    # (the cluster lost its workers and none came back) is cancelled, and its stage
    # fails with one line naming the cause (recsys_spark.watchdog). 0: wait forever.
    lost_executors_timeout_s: NonNegativeInt = 180
    extra: dict[str, Text] = field(default_factory=dict)

    @property
    def driver_python_memory_bytes(self) -> int | None:
        return None if self.driver_python_memory is None else _parse_size(self.driver_python_memory)


@dataclass(config=_SECTION)
class ClusterConf:
    """The local standalone cluster started by scripts/cluster.sh."""

    host: Text = "127.0.0.1"  # loopback only (scripts/cluster.sh refuses others)
    master_port: Port = 7077
    master_webui_port: Port = 8080
    worker_webui_port: Port = 8081
    worker_cores: Count = 2
    worker_memory: MemorySize = "6g"
    executor_memory: MemorySize = "2g"
    run_dir: Text = "run/cluster"  # pid files, logs, the auth secret (0600)


@dataclass(config=_SECTION)
class ColumnMap:
    """Source column name for each canonical event field (None: absent)."""

    user_id: Text = "user_id"
    item_id: Text = "item_id"
    event_type: Text | None = "event_type"
    timestamp: Text = "timestamp"
    event_id: Text | None = None
    value: Text | None = None
    session_id: Text | None = None


@dataclass(config=_SECTION)
class SourceConf:
    path: Text = ""
    format: SourceFormat = "json"
    csv_header: Bool = True
    csv_delimiter: Text = ","
    columns: ColumnMap = field(default_factory=ColumnMap)
    timestamp_format: TimestampFormat = "iso8601"
    # For sources without an event type column (MovieLens rows are ratings).
    fixed_event_type: Text | None = None
    # The Hive-style folder key naming each file's day (<path>/date=2026-01-05/...):
    # what lets a nightly clean read only new or changed days. null, or a
    # source not laid out so: every run cleans the whole source.
    date_partition: Text | None = "date"


@dataclass(config=_SECTION)
class ItemMetadataConf:
    path: Text | None = None
    format: ItemsFormat = "csv"
    csv_header: Bool = True
    csv_delimiter: Text = ","
    item_id: Text = "item_id"
    title: Text | None = "title"
    year: Text | None = "year"
    genres: Text | None = "genres"
    genres_delimiter: Text = "|"
    # With year: null, take the year from a title ending in "(YYYY)" (MovieLens' catalogs).
    year_from_title: Bool = False


@dataclass(config=_SECTION)
class DatasetConf:
    name: Text = "synthetic"
    source: SourceConf = field(default_factory=SourceConf)
    items: ItemMetadataConf = field(default_factory=ItemMetadataConf)


@dataclass(config=_SECTION)
class SyntheticConf:
    """The generator (jobs/generate_events.py); it writes the log to ``dataset.source.path``."""

    seed: Int = 42
    num_users: Count = 20_000
    num_items: Count = 5_000
    num_events: Count = 1_000_000
    days: Count = 60
    start_date: Date = "2026-01-01"
    # Number of latent taste clusters: what a recommender can learn.
    num_clusters: Count = 20
    # Probability that an event follows the user's taste rather than global popularity.
    taste_strength: Share = 0.8
    # Probability that an event after a session's first is a planted successor
    # of the previous event's item (a sparse first-order chain over items,
    # mostly inside taste clusters) instead of a taste/popularity draw; 0: no
    # sequential structure beyond taste.
    sequential_share: Share = 0.5
    popularity_exponent: Positive = 1.1
    activity_exponent: Positive = 1.3
    dirty_share: Annotated[float, Strict(), Field(ge=0.0, lt=1.0)] = 0.02
    bot_users: NonNegativeInt = 3
    bot_events_each: NonNegativeInt = 600
    partitions: Count = 8
    gzip: Bool = False


@dataclass(config=_SECTION)
class BotRule:
    # A user with more events than this inside any single minute is a bot.
    max_events_per_minute: Count = 120


@dataclass(config=_SECTION)
class CleanConf:
    event_types: Annotated[list[Text], Field(min_length=1)] = field(
        default_factory=lambda: list(EVENT_TYPES))
    min_timestamp: Time = "1995-01-01T00:00:00"
    # Events more than this far past the run's reference time are quarantined.
    max_future_hours: NonNegativeInt = 24
    rating_min: Float = 0.0
    rating_max: Float = 5.0
    # A record (JSON line) longer than this is quarantined as record_too_long, unparsed.
    max_record_bytes: Count = 65_536
    # An id (event, user, item, session) longer than this is quarantined as id_too_long.
    max_id_length: Count = 256
    # A source file that cannot be read: quarantine (skip it, list it) or fail the run.
    on_unreadable_file: OnUnreadableFile = "quarantine"
    bot: BotRule = field(default_factory=BotRule)
    # Clean only the source's date partitions that are new or changed since
    # the last run (recsys_spark/ingest/incremental.py); false: clean all every run.
    incremental: Bool = True
    # An incremental run checks its events for duplicates (by event id, else
    # the full key) and bots against events_clean from this many days before
    # its earliest partition on.
    dedupe_lookback_days: NonNegativeInt = 7


@dataclass(config=_SECTION)
class TablesConf:
    event_weights: dict[str, Float] = field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rating": 1.0}
    )
    # Rating events contribute their value (the latest one) instead of a fixed weight.
    rating_value_as_weight: Bool = True
    min_user_interactions: Count = 1
    min_item_interactions: Count = 1


@dataclass(config=_SECTION)
class SplitConf:
    # temporal: global time cutoffs on events (no leakage across them);
    # leave_last_n: each user's last n interactions; random: seeded per-user
    # stratified split (the protocol of Microsoft Recommenders' ml-100k table).
    protocol: SplitProtocol = "temporal"
    test_fraction: Fraction = 0.1  # temporal: last share of the time span is test
    validation_fraction: Fraction = 0.1  # temporal: the slice before it is validation
    leave_n: Count = 1
    train_ratio: Fraction = 0.75  # random: share of each user's interactions in train
    validation_ratio: Fraction = 0.1  # random: share of each user's train part held out for validation
    seed: Int = 42


@dataclass(config=_SECTION)
class EvaluationConf:
    ks: Annotated[list[Count], Field(min_length=1)] = field(default_factory=lambda: [10, 20, 50])
    # The metric that picks hyperparameters, stops training and gates publishing:
    # <metric>_at_<k>, k one of ks.
    primary_metric: PrimaryMetric = "ndcg_at_10"
    # Rank the whole catalog minus the items the user had in training.
    exclude_seen: Bool = True
    # Rows of users scored per torch matmul in the blocked scorer.
    scoring_batch_users: Count = 512


@dataclass(config=_SECTION)
class PopularityConf:
    recent_days: Count = 14  # the "recent" popularity baseline looks back this far from the train cutoff
    # The cold-user fallback is chosen on validation's cold users among all-time popularity and
    # recent popularity over each of these windows (days before the train cutoff); [] leaves all time alone.
    fallback_windows_days: list[Count] = field(default_factory=lambda: [7, 14, 30, 90])


@dataclass(config=_SECTION)
class EaseConf:
    # Lambdas searched on validation (one Gram matrix for all); the best is refitted on train+validation.
    l2_grid: Annotated[list[Positive], Field(min_length=1)] = field(
        default_factory=lambda: [50.0, 100.0, 250.0, 500.0, 1000.0, 2000.0])
    # B (the Gram matrix, inverted in place) is dense on the driver: items^2 x 4 bytes.
    max_items: Count = 20_000


@dataclass(config=_SECTION)
class AlsConf:
    # The grid searched on the validation split; the best is refitted on train+validation.
    ranks: Annotated[list[Count], Field(min_length=1)] = field(default_factory=lambda: [32, 64])
    reg_params: Annotated[list[NonNegative], Field(min_length=1)] = field(default_factory=lambda: [0.01, 0.1])
    alphas: Annotated[list[NonNegative], Field(min_length=1)] = field(default_factory=lambda: [1.0, 10.0])
    max_iters: Annotated[list[Count], Field(min_length=1)] = field(default_factory=lambda: [15])
    # Candidate fits run as concurrent Spark jobs.
    parallelism: Count = 2
    implicit_prefs: Bool = True
    seed: Int = 42
    # ALS's user and item blocks (each block a task per iteration); null: the
    # cluster's task slots (Spark's own default, 10, is a dozen tiny tasks a
    # step on a 2-core machine, and too few on a big cluster).
    num_blocks: Count | None = None


@dataclass(config=_SECTION)
class MarkovConf:
    # Next items kept per source item (the most frequent): bounds the model at items x this.
    max_next_items: Count = 200
    # Popularity's pseudo-count in each source's transition counts: score =
    # (count(i->j) + backoff x popularity share(j)) / (count(i) + backoff). Small: popularity
    # breaks ties and ranks what follows a last item with no transitions.
    backoff: Positive = 1.0


@dataclass(config=_SECTION)
class SearchDim:
    """One searched setting: ``choices`` (any values, lists included), or a range ``low``..``high``
    (``log``: sampled on a log scale; ``integer``: whole numbers)."""

    choices: Annotated[list[Any], Field(min_length=1)] | None = None
    low: Float | None = None
    high: Float | None = None
    log: Bool = False
    integer: Bool = False

    @model_validator(mode="after")
    def _one_kind(self) -> "SearchDim":
        if self.choices is not None:
            if self.low is not None or self.high is not None:
                raise ValueError("give either choices or low/high, not both")
            return self
        if self.low is None or self.high is None:
            raise ValueError("give choices, or both low and high")
        if self.low > self.high:
            raise ValueError(f"low {self.low} is above high {self.high}")
        if self.log and self.low <= 0:
            raise ValueError("a log range needs low > 0")
        return self


def _default_search_space() -> dict[str, dict[str, SearchDim]]:
    # What matters per model (learning rate, size, regularisation, negatives where they
    # apply); a key is a model hyperparameter (its class's default_params) or one of the
    # trainer's learning_rate, weight_decay, negatives_per_positive, negative_sampling.
    lr = SearchDim(low=0.0003, high=0.01, log=True)
    wd = SearchDim(choices=[0.0, 0.000001, 0.00001])
    return {
        "neumf": {"learning_rate": lr, "embedding_dim": SearchDim(choices=[16, 32, 64]),
                  "mlp_layers": SearchDim(choices=[[64, 32, 16], [128, 64, 32]]),
                  "negatives_per_positive": SearchDim(choices=[4, 8]), "weight_decay": wd},
        "two_tower": {"learning_rate": lr, "embedding_dim": SearchDim(choices=[32, 64, 128]),
                      "dropout": SearchDim(low=0.0, high=0.5), "temperature": SearchDim(choices=[0.05, 0.1, 0.2]),
                      "weight_decay": wd},
        "multvae": {"learning_rate": lr, "hidden_dims": SearchDim(choices=[[600], []]),
                    "latent_dim": SearchDim(choices=[100, 200]),
                    "dropout": SearchDim(low=0.2, high=0.7), "anneal_cap": SearchDim(low=0.05, high=0.5),
                    "total_anneal_steps": SearchDim(choices=[None, 300, 1000]), "weight_decay": wd},
        "dlae": {"learning_rate": lr, "dropout": SearchDim(low=0.0, high=0.5),
                 "l2": SearchDim(low=10.0, high=1000.0, log=True)},
        "lightgcn": {"learning_rate": SearchDim(low=0.001, high=0.01, log=True),
                     "embedding_dim": SearchDim(choices=[32, 64]), "layers": SearchDim(choices=[2, 3]),
                     "l2": SearchDim(low=0.00001, high=0.001, log=True)},
        **{m: {"learning_rate": SearchDim(low=0.0005, high=0.005, log=True), "embedding_dim": SearchDim(choices=[32, 64]),
               "dropout": SearchDim(low=0.1, high=0.5)} for m in ("gru4rec", "sasrec")},
        "caser": {"learning_rate": SearchDim(low=0.0005, high=0.005, log=True),
                  "embedding_dim": SearchDim(choices=[32, 64]), "dropout": SearchDim(low=0.2, high=0.6)},
    }


@dataclass(config=_SECTION)
class NeuralSearchConf:
    """The settings search of every neural model on validation (Optuna; docs/architecture.md)."""

    trials: Count = 8  # trials per model, the configured settings first; 1: no search
    minutes: Positive = 20.0  # no new trial starts after this long (per model; the running one ends)
    startup_trials: NonNegativeInt = 2  # trials never pruned (the median needs a reference)
    warmup_epochs: NonNegativeInt = 4  # epochs a trial runs before it may be pruned (a slow start is not a bad trial)
    # Per model: setting -> SearchDim. A model absent here is trained with its configured settings.
    space: dict[str, dict[str, SearchDim]] = field(default_factory=_default_search_space)


@dataclass(config=_SECTION)
class NeuralConf:
    """The Petastorm-fed DDP trainer (jobs/train_neural.py)."""

    num_processes: Count = 2  # TorchDistributor processes (one per GPU when GPUs are used)
    threads_per_process: NonNegativeInt = 0  # torch threads per process; 0: the cluster's cores shared out
    use_gpu: UseGpu = "auto"  # auto: GPUs when the cluster has them; true / false force it
    epochs: Count = 20
    patience: Count = 3  # early stopping: epochs without a better validation metric
    batch_size: Count = 1024
    learning_rate: Positive = 0.001
    weight_decay: NonNegative = 0.0
    negative_sampling: NegativeSampling = "uniform"
    negatives_per_positive: Count = 4
    history_length: Count = 50  # cap on each user's history (most recent items)
    cache_dir: Text = "run/petastorm"  # Petastorm's materialisation dir, deleted after the run
    checkpoint_dir: Text = "run/checkpoints"  # per-epoch checkpoints (rank 0); a rerun resumes, success clears
    seed: Int = 42
    refit: Bool = True  # refit on train + validation for the early-stopped number of epochs
    mixed_precision: Bool = True  # autocast on GPU only
    max_steps_per_epoch: Count | None = None  # bounds Petastorm's endless loader; None: one pass
    # Per-model hyperparameters over each model's defaults (its class's default_params),
    # e.g. {neumf: {embedding_dim: 32}}; checked when the model is built.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-model trainer settings over the ones above, e.g. {multvae: {batch_size: 64}}:
    # a model with one example per user sees far fewer examples per epoch than a
    # pairwise one, so one batch size does not suit both (Config.for_neural_model).
    per_model: dict[str, dict[str, Any]] = field(
        default_factory=lambda: {"multvae": {"batch_size": 32, "history_length": 1000, "epochs": 100, "patience": 10},
                                 "lightgcn": {"learning_rate": 0.005, "epochs": 60, "patience": 5},
                                 "neumf": {"learning_rate": 0.003, "epochs": 40, "patience": 8},
                                 "dlae": {"batch_size": 32, "history_length": 1000, "epochs": 100, "patience": 10},
                                 # Sequence models: one example per user too; a history longer than the model's
                                 # window holds more training windows than the newest one. Their validation
                                 # curve is noisy and still rises after 20 epochs: a long patience.
                                 **{m: {"batch_size": 32, "history_length": 200, "learning_rate": 0.002,
                                        "epochs": 60, "patience": 8} for m in ("gru4rec", "sasrec")},
                                 "caser": {"batch_size": 32, "history_length": 200, "learning_rate": 0.002,
                                           "epochs": 40, "patience": 4}}
    )
    search: NeuralSearchConf = field(default_factory=NeuralSearchConf)


@dataclass(config=_SECTION)
class RecommendConf:
    """The published top-N (jobs/recommend.py)."""

    n: Count = 50
    model: Text | None = None  # null / "best": the best on validation evaluation.primary_metric
    exclude_seen: Bool = True  # never recommend items already in the user's interactions
    min_history: NonNegativeInt = 1  # users with fewer interactions get the recent-popularity fallback
    mmr_lambda: Share | None = None  # MMR diversity re-ranking: 1 = relevance only; null = off
    mmr_similarity: MmrSimilarity = "auto"  # embedding (cosine) | genres (Jaccard) | auto (embedding, else genres)
    mmr_pool_factor: Count = 3  # MMR re-ranks the top pool_factor x n candidates
    exclude_items_path: Text | None = None  # CSV (header) or Parquet with item_id: never recommended
    keep_runs: Count = 7  # run_date directories kept; older ones are deleted
    max_metric_drop: Share = 0.1  # refuse when the validation metric is this share below the last run's
    min_coverage: Share = 0.01  # refuse when under this share of the catalog is recommended to anyone


@dataclass(config=_SECTION)
class CatalogConf:
    """Spark SQL tables over the published output (docs/operations.md, "Reading the output")."""

    database: SqlName = "recsys"
    # embedded: a Derby metastore under <warehouse>/_metastore (one JVM at a time) |
    # hive: the Hive metastore at hive_metastore_uris | session: this Spark session's catalog only
    metastore: Metastore = "embedded"
    hive_metastore_uris: Text | None = None  # thrift://host:9083, for metastore: hive


@dataclass(config=_SECTION)
class Config:
    warehouse: Text = "warehouse"
    run_date: Date | None = None  # YYYY-MM-DD; None means today (UTC)
    spark: SparkConf = field(default_factory=SparkConf)
    cluster: ClusterConf = field(default_factory=ClusterConf)
    dataset: DatasetConf = field(default_factory=DatasetConf)
    synthetic: SyntheticConf = field(default_factory=SyntheticConf)
    clean: CleanConf = field(default_factory=CleanConf)
    tables: TablesConf = field(default_factory=TablesConf)
    split: SplitConf = field(default_factory=SplitConf)
    evaluation: EvaluationConf = field(default_factory=EvaluationConf)
    popularity: PopularityConf = field(default_factory=PopularityConf)
    ease: EaseConf = field(default_factory=EaseConf)
    als: AlsConf = field(default_factory=AlsConf)
    markov: MarkovConf = field(default_factory=MarkovConf)
    neural: NeuralConf = field(default_factory=NeuralConf)
    recommend: RecommendConf = field(default_factory=RecommendConf)
    catalog: CatalogConf = field(default_factory=CatalogConf)

    @model_validator(mode="after")
    def _keys_together(self, info: ValidationInfo) -> "Config":
        """What no single key can check. Skipped for one layer (a later one may complete it), run on the result."""
        if (info.context or {}).get("layer"):
            return self
        src, clean = self.dataset.source, self.clean
        if src.columns.event_type is None and src.fixed_event_type is None:
            raise ValueError("dataset.source: set columns.event_type or fixed_event_type")
        if src.fixed_event_type is not None and src.fixed_event_type not in clean.event_types:
            raise ValueError(f"dataset.source.fixed_event_type '{src.fixed_event_type}' is not in clean.event_types")
        missing = [t for t in clean.event_types if t not in self.tables.event_weights]
        if missing:
            raise ValueError(f"tables.event_weights: no weight for event type '{missing[0]}' (clean.event_types)")
        if clean.rating_min > clean.rating_max:
            raise ValueError(f"clean.rating_min {clean.rating_min} is above clean.rating_max {clean.rating_max}")
        if self.split.test_fraction + self.split.validation_fraction >= 1.0:
            raise ValueError("split.test_fraction + split.validation_fraction must be below 1")
        if self.catalog.metastore == "hive" and not self.catalog.hive_metastore_uris:
            raise ValueError("catalog.metastore=hive needs catalog.hive_metastore_uris (thrift://host:9083)")
        k = int(self.evaluation.primary_metric.rpartition("_at_")[2])
        if k not in self.evaluation.ks:
            raise ValueError(f"evaluation.primary_metric '{self.evaluation.primary_metric}': k={k} is not one of "
                             f"evaluation.ks {self.evaluation.ks}")
        return self

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def fingerprint(self) -> str:
        """A short hash of every setting: what tells a stage that something was made under this same config."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True, default=str).encode()).hexdigest()[:16]

    def for_neural_model(self, name: str) -> "Config":
        """This config with ``neural.per_model[name]`` applied over ``neural.*`` (keys and types checked)."""
        overrides = self.neural.per_model.get(name) or {}
        if not overrides:
            return self
        nested = sorted(set(overrides) & {"models", "per_model", "search"})
        if nested:
            raise ConfigError(f"neural.per_model.{name}: '{nested[0]}' cannot be set per model")
        merged = {**dataclasses.asdict(self.neural), **overrides}
        neural = _build(NeuralConf, merged, f"neural.per_model.{name}", prefix=("neural",))
        return dataclasses.replace(self, neural=neural)


# --------------------------------------------------------------------------- loading

_ADAPTERS: dict[type, TypeAdapter] = {}


def _build(cls: type, data: dict[str, Any], origin: str, *, prefix: tuple = (), layer: bool = False) -> Any:
    """``cls`` (a section, or the whole Config) from ``data``; ConfigError naming ``origin`` and the key."""
    adapter = _ADAPTERS.setdefault(cls, TypeAdapter(cls))
    try:
        return adapter.validate_python(data, context={"layer": layer})
    except ValidationError as exc:
        errors = exc.errors()
        more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
        raise ConfigError(_describe(errors[0], origin, cls, prefix) + more) from None


def _describe(error: dict, origin: str, cls: type, prefix: tuple) -> str:
    """One pydantic error as a line that names the key, what it allows and what it got."""
    loc = (*prefix, *error["loc"])
    key = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in loc).lstrip(".")
    kind, message = error["type"], error["msg"].removeprefix("Value error, ")
    if kind == "unexpected_keyword_argument":
        if key in REMOVED_KEYS:
            return f"{origin}: key '{key}' was removed: {REMOVED_KEYS[key]}"
        known = ", ".join(f.name for f in dataclasses.fields(_section_at(cls, error["loc"][:-1])))
        return f"{origin}: unknown key '{key}' (known keys here: {known})"
    if not error["loc"] and not prefix:  # a check of keys together: its message names them
        return f"{origin}: {message}"
    value = error.get("input")
    message = message.replace("Input should be", "should be")
    message = message[:1].lower() + message[1:]
    if message.startswith("should be a dictionary or an instance of"):
        message = "should be a mapping of its keys"
    return f"{origin}: key '{key}' {message}, got {value!r} ({type(value).__name__})"


def _section_at(cls: type, loc: tuple) -> type:
    """The dataclass at ``loc`` (field names) below ``cls``."""
    for name in loc:
        cls = typing.get_type_hints(cls)[name]
    return cls


# Mappings a later layer replaces whole instead of merging into: a weight table is one
# setting, and a search dimension given as {choices: [...]} must not keep a file's low/high.
_WHOLE = (("tables", "event_weights"), ("neural", "search", "space", "*", "*"))


def _replaced_whole(path: tuple[str, ...]) -> bool:
    return any(len(w) == len(path) and all(a in ("*", b) for a, b in zip(w, path)) for w in _WHOLE)


def _merge(base: dict[str, Any], over: dict[str, Any], path: tuple[str, ...] = ()) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and not _replaced_whole((*path, str(k))):
            out[k] = _merge(out[k], v, (*path, str(k)))
        else:
            out[k] = v
    return out


class _TextDateLoader(yaml.SafeLoader):
    """SafeLoader that keeps dates as text: config dates are strings."""


_TextDateLoader.add_constructor("tag:yaml.org,2002:timestamp", _TextDateLoader.construct_yaml_str)


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        with open(path) as fh:
            data = yaml.load(fh, Loader=_TextDateLoader) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file not found: {path}") from None
    except (yaml.YAMLError, ValueError) as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: top level must be a mapping")
    return data


def _parse_override(item: str) -> tuple[list[str], Any]:
    if "=" not in item:
        raise ConfigError(f"--set '{item}': expected key=value")
    key, raw = item.split("=", 1)
    try:
        value = yaml.safe_load(raw) if raw != "" else ""
    except (yaml.YAMLError, ValueError):  # e.g. a date-like string that is no date
        value = raw
    if hasattr(value, "isoformat"):  # YAML turns 2026-01-01 into a date; keep text
        value = raw
    return key.strip().split("."), value


def resolve_dataset_path(name_or_path: str) -> Path:
    """``synthetic`` -> conf/datasets/synthetic.yaml; a path is taken as is."""
    p = Path(name_or_path)
    if p.suffix in (".yaml", ".yml"):
        return p
    return CONF_DIR / "datasets" / f"{name_or_path}.yaml"


def load_config(
    files: list[str | Path] | None = None,
    dataset: str | None = None,
    overrides: list[str] | None = None,
) -> Config:
    """Load ``conf/base.yaml``, then the dataset file, then ``files``, then overrides.

    A dataset file holds the ``dataset:`` section and may override any other
    section (sizes, weights) for that dataset. ``files`` (``--conf``) come after
    it because they describe one run (the demo's sizes, a tuning grid): the more
    specific layer wins.
    """
    layers: list[tuple[str, dict[str, Any]]] = []
    base = CONF_DIR / "base.yaml"
    if base.exists():
        layers.append((str(base), _read_yaml(base)))
    if dataset:
        path = resolve_dataset_path(dataset)
        layers.append((str(path), _read_yaml(path)))
    for f in files or []:
        layers.append((str(f), _read_yaml(Path(f))))
    merged: dict[str, Any] = {}
    set_in: dict[tuple[str, ...], int] = {}  # a neural.* or per-model trainer key -> the last layer that set it
    for index, (origin, data) in enumerate(layers):
        # Each layer is checked as it is added, so that an error names the file it is in.
        merged = _merge(merged, data)
        _build(Config, merged, origin, layer=True)
        _note_neural_keys(data, index, set_in)
    for index, item in enumerate(overrides or [], start=len(layers)):
        keys, value = _parse_override(item)
        layer: dict[str, Any] = {}
        cursor = layer
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = value
        merged = _merge(merged, layer)
        _build(Config, merged, f"--set {item}", layer=True)
        _note_neural_keys(layer, index, set_in)
    return _build(Config, _later_neural_wins(merged, set_in), "config")


def _note_neural_keys(layer: dict[str, Any], index: int, set_in: dict[tuple[str, ...], int]) -> None:
    """Record which ``neural.*`` keys and which ``neural.per_model.<model>.*`` keys ``layer`` sets."""
    neural = layer.get("neural")
    if not isinstance(neural, dict):
        return
    for key, value in neural.items():
        if key == "per_model" and isinstance(value, dict):
            for model, settings in value.items():
                for name in settings if isinstance(settings, dict) else ():
                    set_in[("per_model", str(model), str(name))] = index
        else:
            set_in[(str(key),)] = index


def _later_neural_wins(merged: dict[str, Any], set_in: dict[tuple[str, ...], int]) -> dict[str, Any]:
    """A model's ``neural.per_model`` setting gives way to the same ``neural.*`` setting made in a
    later layer: base.yaml's per-model epochs are defaults, and a run's ``--set neural.epochs=3``
    (or the demo's file) means every model. Within one layer the per-model setting wins."""
    per_model = (merged.get("neural") or {}).get("per_model")
    if not isinstance(per_model, dict):
        return merged
    kept = {}
    for model, settings in per_model.items():
        if isinstance(settings, dict):
            settings = {name: value for name, value in settings.items()
                        if set_in.get((str(name),), -1) <= set_in.get(("per_model", str(model), str(name)), -1)}
        kept[model] = settings
    return {**merged, "neural": {**merged["neural"], "per_model": kept}}


def run_date(cfg: Config) -> str:
    return cfg.run_date or dt.datetime.now(dt.timezone.utc).date().isoformat()


def add_config_args(parser) -> None:
    """The config flags every job shares."""
    parser.add_argument("--dataset", default="synthetic", help="dataset name under conf/datasets or a YAML path")
    parser.add_argument("--conf", action="append", default=[], help="extra YAML file (repeatable)")
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="key=value override")
    parser.add_argument("--warehouse", default=None, help="warehouse root (overrides config)")


def config_from_args(args) -> Config:
    overrides = list(args.overrides)
    if getattr(args, "warehouse", None):
        overrides.append(f"warehouse={args.warehouse}")
    return load_config(files=args.conf, dataset=args.dataset, overrides=overrides)
