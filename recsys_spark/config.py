"""Typed configuration: defaults < conf files < ``--set key=value`` overrides.

Every section is a dataclass, so a key that does not exist or a value of the
wrong type fails at start with a message naming the key and the file it came
from. Values from ``--set`` are parsed as YAML scalars (never ``eval``).
The resolved config is written beside each job's output (``to_dict``).
"""
from __future__ import annotations

import dataclasses
import os
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from recsys_spark.schemas import EVENT_TYPES

# RECSYS_CONF_DIR: where conf/ is when the package is imported from elsewhere,
# e.g. the zip that scripts/submit.sh ships with --py-files (set by submit.sh).
CONF_DIR = Path(os.environ.get("RECSYS_CONF_DIR") or Path(__file__).resolve().parents[1] / "conf")


def _parse_size(text) -> int:
    from recsys_spark.memory import parse_size  # memory imports psutil: only when a size is read

    return parse_size(text)


class ConfigError(ValueError):
    """A config file or override is malformed; the message names the key."""


@dataclass
class SparkConf:
    app_name: str = "recsys-spark"
    # Used only when spark-submit did not give a master (tests, plain python).
    master: str = "local[2]"
    # 2 cores here: a few partitions per core keeps tasks short without
    # drowning small data in scheduling overhead.
    shuffle_partitions: int = 4
    driver_memory: str = "2g"
    # A cap on what one catalog-wide step (EASE's item x item matrix) plans to
    # hold in the Python driver; None: the memory the machine and the process's
    # cgroup/rlimit have available when the step starts (recsys_spark.memory).
    driver_python_memory: str | None = None
    extra: dict[str, str] = field(default_factory=dict)

    @property
    def driver_python_memory_bytes(self) -> int | None:
        return None if self.driver_python_memory is None else _parse_size(self.driver_python_memory)


@dataclass
class ClusterConf:
    """The local standalone cluster started by scripts/cluster.sh."""

    host: str = "127.0.0.1"  # loopback only: nothing outside this machine reaches it
    master_port: int = 7077
    master_webui_port: int = 8080
    worker_webui_port: int = 8081
    worker_cores: int = 2
    worker_memory: str = "6g"
    executor_memory: str = "2g"
    run_dir: str = "run/cluster"  # pid files, logs, the auth secret (0600)


@dataclass
class ColumnMap:
    """Source column name for each canonical event field (None: absent)."""

    user_id: str = "user_id"
    item_id: str = "item_id"
    event_type: str | None = "event_type"
    timestamp: str = "timestamp"
    event_id: str | None = None
    value: str | None = None
    session_id: str | None = None


@dataclass
class SourceConf:
    path: str = ""
    format: str = "json"  # json | csv | parquet
    csv_header: bool = True
    csv_delimiter: str = ","
    columns: ColumnMap = field(default_factory=ColumnMap)
    timestamp_format: str = "iso8601"  # iso8601 | epoch_s | epoch_ms
    # For sources without an event type column (MovieLens rows are ratings).
    fixed_event_type: str | None = None


@dataclass
class ItemMetadataConf:
    path: str | None = None
    format: str = "csv"
    csv_header: bool = True
    csv_delimiter: str = ","
    item_id: str = "item_id"
    title: str | None = "title"
    year: str | None = "year"
    genres: str | None = "genres"
    genres_delimiter: str = "|"
    # With year: null, take the year from a title ending in "(YYYY)" (MovieLens' catalogs).
    year_from_title: bool = False


@dataclass
class DatasetConf:
    name: str = "synthetic"
    source: SourceConf = field(default_factory=SourceConf)
    items: ItemMetadataConf = field(default_factory=ItemMetadataConf)


@dataclass
class SyntheticConf:
    seed: int = 42
    num_users: int = 20_000
    num_items: int = 5_000
    num_events: int = 1_000_000
    days: int = 60
    start_date: str = "2026-01-01"
    # Number of latent taste clusters: what a recommender can learn.
    num_clusters: int = 20
    # Probability that an event follows the user's taste rather than global popularity.
    taste_strength: float = 0.8
    popularity_exponent: float = 1.1
    activity_exponent: float = 1.3
    dirty_share: float = 0.02
    bot_users: int = 3
    bot_events_each: int = 600
    partitions: int = 8
    gzip: bool = False
    output: str = "data/synthetic/events"


@dataclass
class BotRule:
    # A user with more events than this inside any single minute is a bot.
    max_events_per_minute: int = 120


@dataclass
class CleanConf:
    event_types: list[str] = field(default_factory=lambda: list(EVENT_TYPES))
    min_timestamp: str = "1995-01-01T00:00:00"
    # Events more than this far past the run's reference time are quarantined.
    max_future_hours: int = 24
    rating_min: float = 0.0
    rating_max: float = 5.0
    # A record (JSON line) longer than this is quarantined as record_too_long, unparsed.
    max_record_bytes: int = 65_536
    # An id (event, user, item, session) longer than this is quarantined as id_too_long.
    max_id_length: int = 256
    # A source file that cannot be read: quarantine (skip it, list it) or fail the run.
    on_unreadable_file: str = "quarantine"
    bot: BotRule = field(default_factory=BotRule)


@dataclass
class TablesConf:
    event_weights: dict[str, float] = field(
        default_factory=lambda: {"view": 1.0, "click": 2.0, "add_to_cart": 4.0, "purchase": 8.0, "rating": 1.0}
    )
    # Rating events contribute their value (the latest one) instead of a fixed weight.
    rating_value_as_weight: bool = True
    min_user_interactions: int = 1
    min_item_interactions: int = 1


@dataclass
class SplitConf:
    # temporal: global time cutoffs on events (no leakage across them);
    # leave_last_n: each user's last n interactions; random: seeded per-user
    # stratified split (the protocol of Microsoft Recommenders' ml-100k table).
    protocol: str = "temporal"
    test_fraction: float = 0.1  # temporal: last share of the time span is test
    validation_fraction: float = 0.1  # temporal: the slice before it is validation
    leave_n: int = 1
    train_ratio: float = 0.75  # random: share of each user's interactions in train
    validation_ratio: float = 0.1  # random: share of each user's train part held out for validation
    seed: int = 42


@dataclass
class EvaluationConf:
    ks: list[int] = field(default_factory=lambda: [10, 20, 50])
    # The metric that picks hyperparameters, stops training and gates publishing.
    primary_metric: str = "ndcg_at_10"
    # Rank the whole catalog minus the items the user had in training.
    exclude_seen: bool = True
    # Rows of users scored per torch matmul in the blocked scorer.
    scoring_batch_users: int = 512


@dataclass
class PopularityConf:
    recent_days: int = 14  # the "recent" popularity baseline looks back this far from the train cutoff


@dataclass
class EaseConf:
    l2: float = 250.0
    # B (the Gram matrix, inverted in place) is dense on the driver: items^2 x 4 bytes.
    max_items: int = 20_000


@dataclass
class AlsConf:
    # The grid searched on the validation split; the best is refitted on train+validation.
    ranks: list[int] = field(default_factory=lambda: [32, 64])
    reg_params: list[float] = field(default_factory=lambda: [0.01, 0.1])
    alphas: list[float] = field(default_factory=lambda: [1.0, 10.0])
    max_iters: list[int] = field(default_factory=lambda: [15])
    # Candidate fits run as concurrent Spark jobs.
    parallelism: int = 2
    implicit_prefs: bool = True
    seed: int = 42
    # ALS's user and item blocks (each block a task per iteration); null: the
    # cluster's task slots (Spark's own default, 10, is a dozen tiny tasks a
    # step on a 2-core machine, and too few on a big cluster).
    num_blocks: int | None = None


@dataclass
class NeuralConf:
    """The Petastorm-fed DDP trainer (jobs/train_neural.py)."""

    num_processes: int = 2  # TorchDistributor processes (one per GPU when GPUs are used)
    use_gpu: str = "auto"  # auto: GPUs when the cluster has them; "true" / "false" force it
    epochs: int = 20
    patience: int = 3  # early stopping: epochs without a better validation metric
    batch_size: int = 1024
    learning_rate: float = 0.001
    weight_decay: float = 0.0
    negative_sampling: str = "uniform"  # uniform | popularity
    negatives_per_positive: int = 4
    history_length: int = 50  # cap on each user's history (most recent items)
    cache_dir: str = "run/petastorm"  # Petastorm's materialisation dir, deleted after the run
    checkpoint_dir: str = "run/checkpoints"  # per-epoch checkpoints (rank 0); a rerun resumes, success clears
    seed: int = 42
    refit: bool = True  # refit on train + validation for the early-stopped number of epochs
    mixed_precision: bool = True  # autocast on GPU only
    max_steps_per_epoch: int | None = None  # bounds Petastorm's endless loader; None: one pass
    # Per-model hyperparameters over each model's defaults, e.g. {neumf: {embedding_dim: 32}}.
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Per-model trainer settings over the ones above, e.g. {multvae: {batch_size: 64}}:
    # a model with one example per user sees far fewer examples per epoch than a
    # pairwise one, so one batch size does not suit both (Config.for_neural_model).
    per_model: dict[str, dict[str, Any]] = field(default_factory=dict)


@dataclass
class RecommendConf:
    """The published top-N (jobs/recommend.py)."""

    n: int = 50
    model: str | None = None  # null / "best": the best on validation evaluation.primary_metric
    exclude_seen: bool = True  # never recommend items already in the user's interactions
    min_history: int = 1  # users with fewer interactions get the recent-popularity fallback
    mmr_lambda: float | None = None  # MMR diversity re-ranking: 1 = relevance only; null = off
    mmr_similarity: str = "auto"  # embedding (cosine) | genres (Jaccard) | auto (embedding, else genres)
    mmr_pool_factor: int = 3  # MMR re-ranks the top pool_factor x n candidates
    exclude_items_path: str | None = None  # CSV (header) or Parquet with item_id: never recommended
    keep_runs: int = 7  # run_date directories kept; older ones are deleted
    max_metric_drop: float = 0.1  # refuse when the validation metric is this share below the last run's
    min_coverage: float = 0.01  # refuse when under this share of the catalog is recommended to anyone


@dataclass
class Config:
    warehouse: str = "warehouse"
    run_date: str | None = None  # YYYY-MM-DD; None means today (UTC)
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
    neural: NeuralConf = field(default_factory=NeuralConf)
    recommend: RecommendConf = field(default_factory=RecommendConf)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def for_neural_model(self, name: str) -> "Config":
        """This config with ``neural.per_model[name]`` applied over ``neural.*`` (keys and types checked)."""
        overrides = self.neural.per_model.get(name) or {}
        if not overrides:
            return self
        nested = sorted(set(overrides) & {"models", "per_model"})
        if nested:
            raise ConfigError(f"neural.per_model.{name}: '{nested[0]}' cannot be set per model")
        merged = {**dataclasses.asdict(self.neural), **overrides}
        neural = _build(NeuralConf, merged, "neural", f"neural.per_model.{name}")
        return dataclasses.replace(self, neural=neural)


# --------------------------------------------------------------------------- loading


def _type_name(tp: Any) -> str:
    return getattr(tp, "__name__", str(tp))


def _coerce(value: Any, tp: Any, key: str, origin: str) -> Any:
    """Check ``value`` against the annotation ``tp``; build nested dataclasses."""
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: key '{key}' must be a mapping, got {type(value).__name__}")
        return _build(tp, value, key, origin)
    args = typing.get_args(tp)
    org = typing.get_origin(tp)
    if org in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        non_none = [a for a in args if a is not type(None)]
        return _coerce(value, non_none[0], key, origin)
    if org is list:
        if not isinstance(value, list):
            raise ConfigError(f"{origin}: key '{key}' must be a list, got {value!r}")
        return [_coerce(v, args[0], f"{key}[{i}]", origin) for i, v in enumerate(value)]
    if org is dict:
        if not isinstance(value, dict):
            raise ConfigError(f"{origin}: key '{key}' must be a mapping, got {value!r}")
        return {str(k): _coerce(v, args[1], f"{key}.{k}", origin) for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if tp is str and isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    if tp in (int, float, bool, str):
        if type(value) is not tp:
            raise ConfigError(
                f"{origin}: key '{key}' must be {_type_name(tp)}, got {value!r} ({type(value).__name__})"
            )
        return value
    return value


def _build(cls: type, data: dict[str, Any], prefix: str, origin: str) -> Any:
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - names)
    if unknown:
        where = f"{prefix}." if prefix else ""
        raise ConfigError(
            f"{origin}: unknown key '{where}{unknown[0]}' (known keys here: {', '.join(sorted(names))})"
        )
    kwargs = {}
    for name, value in data.items():
        key = f"{prefix}.{name}" if prefix else name
        kwargs[name] = _coerce(value, hints[name], key, origin)
    return cls(**kwargs)


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict) and k not in ("event_weights",):
            out[k] = _merge(out[k], v)
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
    for origin, data in layers:
        # Validate each layer on its own so that errors name the right file.
        _build(Config, _merge(merged, data), "", origin)
        merged = _merge(merged, data)
    for item in overrides or []:
        keys, value = _parse_override(item)
        layer: dict[str, Any] = {}
        cursor = layer
        for k in keys[:-1]:
            cursor = cursor.setdefault(k, {})
        cursor[keys[-1]] = value
        _build(Config, _merge(merged, layer), "", f"--set {item}")
        merged = _merge(merged, layer)
    cfg = _build(Config, merged, "", "config")
    _check_values(cfg)
    return cfg


def _check_values(cfg: Config) -> None:
    src = cfg.dataset.source
    if src.format not in ("json", "csv", "parquet"):
        raise ConfigError(f"dataset.source.format must be json, csv or parquet, got '{src.format}'")
    if src.timestamp_format not in ("iso8601", "epoch_s", "epoch_ms"):
        raise ConfigError(
            f"dataset.source.timestamp_format must be iso8601, epoch_s or epoch_ms, got '{src.timestamp_format}'"
        )
    if src.columns.event_type is None and src.fixed_event_type is None:
        raise ConfigError("dataset.source: set columns.event_type or fixed_event_type")
    if src.fixed_event_type is not None and src.fixed_event_type not in cfg.clean.event_types:
        raise ConfigError(
            f"dataset.source.fixed_event_type '{src.fixed_event_type}' is not in clean.event_types"
        )
    if cfg.clean.on_unreadable_file not in ("quarantine", "fail"):
        raise ConfigError(
            f"clean.on_unreadable_file must be quarantine or fail, got '{cfg.clean.on_unreadable_file}'"
        )
    for key in ("max_record_bytes", "max_id_length"):
        if getattr(cfg.clean, key) < 1:
            raise ConfigError(f"clean.{key} must be a positive integer")
    missing = [t for t in cfg.clean.event_types if t not in cfg.tables.event_weights]
    if missing:
        raise ConfigError(f"tables.event_weights: no weight for event type '{missing[0]}'")
    if cfg.split.protocol not in ("temporal", "leave_last_n", "random"):
        raise ConfigError(f"split.protocol must be temporal, leave_last_n or random, got '{cfg.split.protocol}'")
    if cfg.split.test_fraction + cfg.split.validation_fraction >= 1.0:
        raise ConfigError("split.test_fraction + split.validation_fraction must be below 1")
    if not cfg.evaluation.ks or min(cfg.evaluation.ks) < 1:
        raise ConfigError("evaluation.ks must be a non-empty list of positive integers")
    if not 0.0 <= cfg.synthetic.dirty_share < 1.0:
        raise ConfigError("synthetic.dirty_share must be in [0, 1)")
    for key, size in (("spark.driver_memory", cfg.spark.driver_memory),
                      ("spark.driver_python_memory", cfg.spark.driver_python_memory),
                      ("cluster.executor_memory", cfg.cluster.executor_memory)):
        try:
            if size is not None:
                _parse_size(size)
        except ValueError as exc:
            raise ConfigError(f"{key}: {exc}") from None
    if cfg.run_date is not None:
        import datetime as _dt

        try:
            _dt.date.fromisoformat(cfg.run_date)
        except ValueError:
            raise ConfigError(f"run_date must be YYYY-MM-DD, got '{cfg.run_date}'") from None


def run_date(cfg: Config) -> str:
    import datetime as _dt

    return cfg.run_date or _dt.datetime.now(_dt.timezone.utc).date().isoformat()


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
