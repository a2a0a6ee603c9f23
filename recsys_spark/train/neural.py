"""Training a registered neural model: what ``jobs/train_neural.py`` calls.

* :func:`fit` / :func:`fit_and_refit` — materialise the examples
  (:mod:`recsys_spark.train.data`), run the loop in ``neural.num_processes``
  processes (:mod:`recsys_spark.train.distributed`) and return a
  :class:`TrainedNetwork` (weights as bytes, per-epoch history). Selection
  (``final=False``) trains on train with early stopping on the validation
  fold; the refit (``final=True``) trains on train + validation for a given
  number of epochs, without validation.
* :func:`fitted_model` — the network as the project's
  :class:`~recsys_spark.models.fitted.FittedModel`: dot-product models as user
  and item vectors, the others as weights scored by a forward pass.
* :func:`train` — the whole stage: selection, refit, test scoring, save.
"""
from __future__ import annotations

import hashlib
import inspect
import json
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from pyspark.sql import DataFrame, SparkSession
from pyspark.sql import functions as F

from recsys_spark import io, memory, split, tables, watchdog
from recsys_spark.evaluate import folds
from recsys_spark.config import Config
from recsys_spark.models import artifacts, fitted, registry
from recsys_spark.models.fitted import FittedModel
from recsys_spark.schemas import FACTORS, ITEMS, ITEM_INDEX, LAST_TIME, USER_INDEX, WEIGHT
from recsys_spark.train import checkpoint, data, distributed, search, shared_launch
from recsys_spark.train.loop import TrainSettings


@dataclass
class TrainedNetwork:
    """A trained network as the driver holds it (rank 0's result): weights, history, timings."""

    name: str
    build_kwargs: dict[str, Any]  # n_users, n_items, params
    state_dict: bytes
    history: list[dict]
    best_epoch: int  # 0-based
    best_metric: float | None
    epochs_run: int
    stopped_early: bool
    resumed_from: int
    seconds: float
    item_features: dict[str, np.ndarray] | None = None
    model_class: type | None = None  # None: registry.get(name)
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cls(self):
        return self.model_class or registry.get(self.name)

    def build(self):
        """The trained model on the driver (CPU, eval mode)."""
        return _load_model(self.cls, self.build_kwargs, self.item_features, self.state_dict)

    def torch_build_kwargs(self) -> dict[str, Any]:
        """``RecModel.build``'s keyword arguments, item features as tensors (for TorchModelScorer)."""
        return with_feature_tensors(self.build_kwargs, self.item_features)


def with_feature_tensors(build_kwargs: dict[str, Any], item_features) -> dict[str, Any]:
    """``build_kwargs`` plus ``item_features`` (NumPy arrays) as tensors, when there are any."""
    import torch

    kwargs = dict(build_kwargs)
    if item_features:
        kwargs["item_features"] = {k: torch.as_tensor(v) for k, v in item_features.items()}
    return kwargs


def _load_model(cls, build_kwargs, item_features, state: bytes):
    from recsys_spark.train.loop import state_dict_from_bytes

    model = cls.build(**with_feature_tensors(build_kwargs, item_features))
    model.load_state_dict(state_dict_from_bytes(state))
    return model.eval()


def takes_item_features(cls) -> bool:
    """Whether a model class is built with item metadata (its constructor names ``item_features``)."""
    return "item_features" in inspect.signature(cls.__init__).parameters


def needs_graph(cls) -> bool:
    """Whether a model class propagates over the training graph (built with ``graph=``, e.g. LightGCN)."""
    return bool(getattr(cls, "needs_graph", False))


def training_graph(rows: DataFrame, *, name: str, n_edges: int) -> tuple[np.ndarray, np.ndarray]:
    """The training pairs ``(user_index, item_index)`` as int32 arrays: a graph model's edges.

    A sparse COO list (one entry per training row, i.e. per pair), never a
    dense matrix; collected once on the driver after a memory check, then
    pickled to every training process with the job.

    Raises:
        MemoryBudgetError: the driver (its Python or its JVM) could not hold the pairs.
    """
    memory.require_python(
        f"collecting the training graph of '{name}' ({n_edges:,} edges) on the driver",
        memory.graph_collect_bytes(n_edges),
        remedy=f"Leave the graph model out (RECSYS_MODELS for scripts/pipeline.sh), or train '{name}' on a "
               "machine with more memory.",
    )
    # The pairs cross the driver JVM as Arrow batches before reaching Python.
    memory.require_driver_jvm(rows.sparkSession, f"collecting the training graph of '{name}' ({n_edges:,} edges)",
                              12 * n_edges, remedy=f"Raise spark.driver_memory, or leave '{name}' out "
                                                   "(RECSYS_MODELS for scripts/pipeline.sh).")
    pairs = rows.select(USER_INDEX, ITEM_INDEX).toPandas()
    return pairs[USER_INDEX].to_numpy(dtype=np.int32), pairs[ITEM_INDEX].to_numpy(dtype=np.int32)


def item_features(spark: SparkSession, warehouse: str, n_items: int) -> dict[str, np.ndarray] | None:
    """Item metadata from the ``items`` table as model inputs, or None when it has none.

    ``genres``: multi-hot [n_items, G] over the sorted genre vocabulary;
    ``year``: [n_items, 1] standardised over the items that have one (0 for
    those that do not, i.e. the mean). Item metadata, not training examples:
    one row per item is collected.
    """
    items = io.read_table_if_exists(spark, warehouse, ITEMS)
    if items is None:
        return None
    rows = items.select(ITEM_INDEX, "year", "genres").collect()
    out: dict[str, np.ndarray] = {}
    genres = tables.genre_matrix({r[ITEM_INDEX]: r["genres"] for r in rows}, n_items)
    if genres.any():
        out["genres"] = genres
    years = [(r[ITEM_INDEX], r["year"]) for r in rows if r["year"] is not None and r[ITEM_INDEX] < n_items]
    if years:
        values = np.array([y for _, y in years], dtype=np.float64)
        std = values.std() or 1.0
        year = np.zeros((n_items, 1), dtype=np.float32)
        for idx, y in years:
            year[idx, 0] = (y - values.mean()) / std
        out["year"] = year
    return out or None


def data_fingerprint(rows: DataFrame) -> dict[str, Any]:
    """Cheap summary of the training rows; a checkpoint of other data is not resumed."""
    r = rows.agg(
        F.count(F.lit(1)).alias("rows"),
        F.sum(WEIGHT).alias("weight"),
        F.sum(F.xxhash64(USER_INDEX, ITEM_INDEX)).alias("pairs"),
        F.max(LAST_TIME).alias(LAST_TIME),
    ).first()
    return {k: str(v) for k, v in r.asDict().items()}


def run_key(**parts: Any) -> str:
    return hashlib.sha256(json.dumps(parts, sort_keys=True, default=str).encode()).hexdigest()


def checkpoint_dir(cfg: Config, name: str, phase: str) -> str:
    return f"{cfg.neural.checkpoint_dir.rstrip('/')}/{name}-{phase}"


def clear_checkpoints(cfg: Config, name: str) -> None:
    """After the model is saved: the next run starts fresh."""
    for phase in ("selection", "refit"):
        checkpoint.clear(checkpoint_dir(cfg, name, phase))


def check_training_memory(
    cls, build_kwargs: dict, *, name: str, n_items: int, batch_size: int, num_processes: int,
    executor_python_memory: str | None = None, available: int | None = None, graph_edges: int = 0,
    history_length: int = 0,
) -> int:
    """Refuse a model whose training processes would not fit, before anything is materialised.

    The need comes from the model's own parameters (built on the meta device, so
    catalog-wide layers such as Mult-VAE's are counted whatever the model) and
    [rows, items] blocks (the class's ``score_rows_per_step``: a sequence model scores every
    position of ``history_length``, not one row per user; the two-tower model's full softmax a
    batch's logits over the catalog); the class's ``memory_remedy`` joins the refusal's message.
    Each process is checked against ``spark.executor.pyspark.memory`` when set; all of them together against
    what this machine has available (``available``; default: measured), which
    is where they run on a local master or the local standalone cluster.
    A graph model (``needs_graph``) adds its graph of ``graph_edges`` training
    pairs (the class's ``graph_bytes``: adjacency and layer embeddings).

    Returns:
        The bytes one process needs.
    """
    score_rows = cls.score_rows_per_step(batch_size=batch_size, history_length=history_length,
                                         params=build_kwargs.get("params"))
    per_process = memory.training_need(memory.parameter_bytes(cls, build_kwargs), n_items=n_items,
                                       score_rows=score_rows)
    if graph_edges:
        per_process += cls.graph_bytes(n_users=build_kwargs["n_users"], n_items=n_items, n_edges=graph_edges,
                                       params=build_kwargs.get("params"))
    grows_with_history = score_rows != cls.score_rows_per_step(batch_size=batch_size, history_length=1,
                                                               params=build_kwargs.get("params"))
    remedy = (f"Lower neural.batch_size (neural.per_model.{name}.batch_size) or the model's catalog-wide sizes "
              f"(neural.models.{name}){', or neural.history_length' if grows_with_history else ''}, "
              "run fewer neural.num_processes, or leave the model out (RECSYS_MODELS for scripts/pipeline.sh).")
    model_remedy = cls.memory_remedy(build_kwargs.get("params"))
    if model_remedy:
        remedy += " " + model_remedy
    if graph_edges:
        remedy += (f" Its training graph ({graph_edges:,} edges) is held whole by every process: lower "
                   f"neural.models.{name}.embedding_dim or .layers, or run fewer processes.")
    if executor_python_memory:
        memory.require(f"training '{name}' (one process, {n_items} items)", per_process,
                       memory.parse_size(executor_python_memory), share=1.0,
                       remedy=remedy + " Or raise spark.executor.pyspark.memory.")
    memory.require(f"training '{name}' ({num_processes} processes, {n_items} items)", per_process * num_processes,
                   memory.python_available_bytes() if available is None else available,
                   share=memory.PYTHON_SHARE, remedy=remedy)
    return per_process


@dataclass
class _Phase:
    """One fit's inputs: its training rows, examples, validation (selection only), settings and checkpoint key."""

    name: str  # selection | refit
    rows: DataFrame
    examples: DataFrame
    validation: tuple[DataFrame, DataFrame] | None
    settings: TrainSettings
    key: str
    checkpoint_dir: str


def _phase(cfg: Config, split_rows: DataFrame, name: str, cls, *, final: bool, epochs: int | None,
           n_items: int, build_kwargs: dict, features) -> _Phase:
    nc = cfg.neural
    rows = split.training_rows(split_rows, final=final)
    examples = data.training_examples(rows, input_kind=cls.input_kind, needs_history=cls.needs_history,
                                      n_items=n_items, history_length=nc.history_length)
    validation = None
    if not final:
        held = split.fold(split_rows, folds.SELECTION_FOLD, segment="warm")
        validation = data.validation_examples(rows, held, n_items=n_items, history_length=nc.history_length)
    # A refit keeps the selection's schedules (annealing over neural.epochs' steps).
    settings = TrainSettings.from_config(cfg, epochs=epochs, early_stopping=not final,
                                         schedule_epochs=nc.epochs if final else None)
    phase = "refit" if final else "selection"
    key = run_key(model=name, phase=phase, build=build_kwargs, settings=asdict(settings),
                  batch_size=nc.batch_size, history_length=nc.history_length, processes=nc.num_processes,
                  data=data_fingerprint(rows), features=sorted(features or {}))
    return _Phase(phase, rows, examples, validation, settings, key, checkpoint_dir(cfg, name, phase))


def fit(
    spark: SparkSession,
    cfg: Config,
    split_rows: DataFrame,
    name: str,
    *,
    n_users: int,
    n_items: int,
    final: bool,
    epochs: int | None = None,
    features: dict[str, np.ndarray] | None = None,
    model_class: type | None = None,
) -> TrainedNetwork:
    """Train model ``name`` on train (selection, early stopping on validation) or train + validation (refit).

    Args:
        split_rows: the ``split`` table.
        epochs: the refit's epoch count (selection: ``neural.epochs``, an upper bound).
        features: item features (:func:`item_features`), used if the model takes them.
    """
    return _fit(spark, cfg, split_rows, name, n_users=n_users, n_items=n_items, features=features,
                model_class=model_class, final=final, epochs=epochs, then_refit=False)[0]


def fit_and_refit(
    spark: SparkSession,
    cfg: Config,
    split_rows: DataFrame,
    name: str,
    *,
    n_users: int,
    n_items: int,
    features: dict[str, np.ndarray] | None = None,
    model_class: type | None = None,
) -> tuple[TrainedNetwork, TrainedNetwork]:
    """Selection (train, early stopping on validation), then the refit on train + validation for the
    best epoch count, in one launch of the training processes.

    The same two fits as :func:`fit` with ``final=False`` then ``final=True,
    epochs=best + 1``, and the same weights: each phase builds its model from
    the same seed and reads its examples in the same seeded order. One launch
    instead of two saves the processes' start (torchrun, torch's import, the
    process group), about 10 s a model on 2 CPU cores (docs/benchmarks.md).

    Returns:
        (selected, final): the selection's best model and the refit model.
    """
    selected, final = _fit(spark, cfg, split_rows, name, n_users=n_users, n_items=n_items, features=features,
                           model_class=model_class, final=False, epochs=None, then_refit=True)
    return selected, final


@dataclass
class _Prepared:
    """One model's fits, checked and materialised: the job its processes run, and what its
    results are read with. :meth:`delete` removes the materialised examples."""

    name: str
    params: dict[str, Any]
    build_kwargs: dict[str, Any]
    features: dict[str, np.ndarray] | None
    model_class: type | None
    plan: Any  # search.SearchPlan | None
    then_refit: bool
    use_gpu: bool
    data: list  # data.PetastormData, one per phase
    materialise_seconds: list[float]
    job: distributed.WorkerJob

    def delete(self) -> None:
        for d in self.data:
            d.delete()

    def results(self, result: dict) -> list[dict]:
        """Rank 0's result per phase (selection, then the refit when there is one)."""
        return [result["selection"], result["refit"]] if self.then_refit else [result]

    def seconds_in_epochs(self, result: dict) -> float:
        """The processes' time in epochs (training and validation), every search trial's included."""
        results = self.results(result)
        seconds = sum(h["seconds"] + h.get("validation_seconds", 0.0) for r in results for h in r["history"])
        searched = results[0].get("search")
        if searched is not None:  # every trial's epochs, not only the chosen one's
            seconds += searched["seconds"] - sum(h["seconds"] + h.get("validation_seconds", 0.0)
                                                 for h in results[0]["history"])
        return seconds


def _prepare(spark, cfg, split_rows, name, *, n_users, n_items, features, model_class, final, epochs,
             then_refit, max_graph_bytes: int | None = None) -> _Prepared:
    """Check memory, materialise the examples and build the processes' job (nothing launched).

    Raises:
        MemoryError: the model's training graphs take more than ``max_graph_bytes`` (checked
            before anything is materialised).
    """
    nc = cfg.neural
    cls = model_class or registry.get(name)
    params = dict(nc.models.get(name, {}))
    reads_history = cls.needs_history or cls.input_kind == data.HISTORIES
    features = features if takes_item_features(cls) else None
    build_kwargs = {"n_users": n_users, "n_items": n_items, "params": params}
    # A search replaces selection (final=False) only: a refit alone trains what it is given.
    plan = None if final else search.plan_for(cfg, name, cls, params)
    phases = [_phase(cfg, split_rows, name, cls, final=final, epochs=epochs, n_items=n_items,
                     build_kwargs=build_kwargs, features=features)]
    if then_refit:
        phases.append(_phase(cfg, split_rows, name, cls, final=True, epochs=None, n_items=n_items,
                             build_kwargs=build_kwargs, features=features))
    use_gpu = distributed.resolve_use_gpu(spark, nc.use_gpu)
    edges = [p.rows.count() if needs_graph(cls) else 0 for p in phases]  # a pair per training row
    largest = {**build_kwargs, "params": search.largest(plan, params)}  # the biggest model a trial may build
    check_training_memory(cls, with_feature_tensors(largest, features), name=name,
                          n_items=n_items, batch_size=nc.batch_size, num_processes=nc.num_processes,
                          history_length=nc.history_length if reads_history else 0,
                          executor_python_memory=spark.sparkContext.getConf().get("spark.executor.pyspark.memory"),
                          graph_edges=max(edges))
    graphs = [training_graph(p.rows, name=name, n_edges=n) if needs_graph(cls) else None for p, n in zip(phases, edges)]
    graph_bytes = sum(a.nbytes for g in graphs if g is not None for a in g)
    if max_graph_bytes is not None and graph_bytes > max_graph_bytes:
        raise MemoryError(f"its training graphs ({graph_bytes / 2**20:.0f} MiB) are over {max_graph_bytes / 2**20:.0f} MiB")
    materialised_data, materialise_seconds = [], []
    try:
        for p in phases:
            started = time.time()
            materialised_data.append(data.materialise(
                spark, p.examples, cache_dir=nc.cache_dir, shard_count=nc.num_processes,
                history_length=nc.history_length if reads_history else 0, seed=nc.seed, validation=p.validation,
            ))
            materialise_seconds.append(time.time() - started)
    except BaseException:
        for d in materialised_data:
            d.delete()
        raise
    first = phases[0]
    refit = None
    if then_refit:
        refit = distributed.RefitPlan(data=materialised_data[1], settings=phases[1].settings,
                                      item_counts=data.item_counts(phases[1].rows, n_items),
                                      checkpoint_dir=phases[1].checkpoint_dir, run_key=phases[1].key,
                                      graph=graphs[1])
    job = distributed.WorkerJob(
        model_name=name, model_class=model_class, build_kwargs=build_kwargs, data=materialised_data[0],
        settings=first.settings, item_counts=data.item_counts(first.rows, n_items), batch_size=nc.batch_size,
        item_features=features, validate=not final, checkpoint_dir=first.checkpoint_dir, run_key=first.key,
        threads_per_process=nc.threads_per_process or distributed.threads_per_process(spark, nc.num_processes),
        use_gpu=use_gpu,
        refit=refit, graph=graphs[0], search=plan,
    )
    return _Prepared(name, params, build_kwargs, features, model_class, plan, then_refit, use_gpu,
                     materialised_data, materialise_seconds, job)


def _fit(spark, cfg, split_rows, name, *, n_users, n_items, features, model_class, final, epochs, then_refit):
    prepared = _prepare(spark, cfg, split_rows, name, n_users=n_users, n_items=n_items, features=features,
                        model_class=model_class, final=final, epochs=epochs, then_refit=then_refit)
    try:
        launched = time.time()
        result = distributed.run(spark, prepared.job, num_processes=cfg.neural.num_processes)
        ended = time.time()
    finally:
        prepared.delete()
    return _networks(prepared, result, launch_seconds=ended - launched - prepared.seconds_in_epochs(result))


def _networks(prepared: _Prepared, result: dict, *, launch_seconds: float) -> list[TrainedNetwork]:
    """Rank 0's result as the phases' :class:`TrainedNetwork` s, with where their time went:
    what is fixed (materialising, launching the processes: ``launch_seconds``, counted in the
    selection's phases) and what grows with the data and the epochs."""
    results = prepared.results(result)
    build_kwargs = prepared.build_kwargs
    searched = results[0].get("search")
    if searched is not None:  # both fits were built with the chosen hyperparameters
        chosen_params, _ = prepared.plan.split(searched["chosen"])
        build_kwargs = {**build_kwargs, "params": {**prepared.params, **chosen_params}}
    fitted = []
    for i, (r, d) in enumerate(zip(results, prepared.data)):
        train_s = sum(h["seconds"] for h in r["history"])
        validation_s = sum(h.get("validation_seconds", 0.0) for h in r["history"])
        phase_times = {"materialise_seconds": round(prepared.materialise_seconds[i], 1),
                       # the trials not chosen (the chosen one's epochs are train and validation)
                       **({"other_trials_seconds": round(searched["seconds"] - train_s - validation_s, 1)}
                          if searched is not None and i == 0 else {}),
                       "train_seconds": round(train_s, 1), "validation_seconds": round(validation_s, 1),
                       "launch_and_setup_seconds": round(launch_seconds, 1) if i == 0 else 0.0}
        fitted.append(TrainedNetwork(
            name=prepared.name, build_kwargs=build_kwargs, state_dict=r["state_dict"], history=r["history"],
            best_epoch=r["best_epoch"], best_metric=r["best_metric"], epochs_run=r["epochs_run"],
            stopped_early=r["stopped_early"], resumed_from=r["resumed_from"],
            seconds=sum(phase_times.values()), item_features=prepared.features, model_class=prepared.model_class,
            extra={"examples": d.rows, "parquet_files": d.files, "use_gpu": prepared.use_gpu, "phases": phase_times,
                   "search": searched},
        ))
    return fitted


# --------------------------------------------------------------------------- scoring


def user_factor_table(spark: SparkSession, fitted: TrainedNetwork, train_rows: DataFrame, *,
                      history_length: int, batch_users: int = 1024) -> DataFrame:
    """``user_index``, ``factors``: a dot-product model's user vectors for every user with training rows.

    Computed in Spark tasks (the weights are broadcast), never on the driver.
    """
    histories = data.user_histories(train_rows, n_items=fitted.build_kwargs["n_items"], history_length=history_length)
    payload = spark.sparkContext.broadcast((fitted.cls, fitted.build_kwargs, fitted.item_features, fitted.state_dict))

    def run(batches):
        import torch

        torch.set_num_threads(1)  # one Spark task per core already
        model = _load_model(*payload.value)
        for pdf in batches:
            for start in range(0, len(pdf), batch_users):
                chunk = pdf.iloc[start : start + batch_users]
                with torch.no_grad():
                    vectors = model.user_vectors(
                        torch.as_tensor(chunk[USER_INDEX].to_numpy(dtype=np.int64)),
                        torch.as_tensor(np.stack(chunk["history"].to_numpy()).astype(np.int64)),
                        torch.as_tensor(chunk["history_len"].to_numpy(dtype=np.int64)),
                    ).float().numpy()
                yield pd.DataFrame({USER_INDEX: chunk[USER_INDEX].to_numpy(dtype=np.int32),
                                    FACTORS: list(vectors)})

    return histories.mapInPandas(run, f"{USER_INDEX} int, factors array<float>")


def item_factor_table(spark: SparkSession, fitted: TrainedNetwork) -> DataFrame:
    """``item_index``, ``factors``: the item vectors (computed once on the driver: the item
    side is broadcast to every scoring task anyway)."""
    import torch

    with torch.no_grad():
        matrix = fitted.build().item_vectors().float().numpy()
    return artifacts.factors_frame(spark, matrix, ITEM_INDEX)


def fitted_model(spark: SparkSession, cfg: Config, trained: TrainedNetwork, train_rows: DataFrame) -> FittedModel:
    """The trained network as the project's :class:`FittedModel`.

    Dot-product models become user and item vectors (the user side computed
    in Spark tasks from ``train_rows``, the histories the vectors are read
    from); the others keep their weights and score by a forward pass.
    """
    cls, n_items = trained.cls, trained.build_kwargs["n_items"]
    metadata = {
        "build_kwargs": trained.build_kwargs,
        "item_features": sorted(trained.item_features or {}),
        "history_length": cfg.neural.history_length,
        "input_kind": cls.input_kind,
        "needs_history": cls.needs_history,
        "epochs": trained.epochs_run,
        "history": trained.history,
    }
    if trained.extra.get("search") is not None:  # the settings search: every trial and the chosen values
        metadata["search"] = trained.extra["search"]
    params = {**cls.default_params, **trained.build_kwargs["params"]}
    if cls.dot_product:
        return fitted.dot_product(
            spark, trained.name, n_items=n_items, params=params, metadata=metadata,
            user_factors=user_factor_table(spark, trained, train_rows, history_length=cfg.neural.history_length),
            item_factors=item_factor_table(spark, trained),
        )
    metadata["state_dict_file"] = artifacts.MODEL_FILE
    return fitted.torch_model(spark, trained.name, cls, state_dict=trained.state_dict,
                              build_kwargs=trained.torch_build_kwargs(), history_length=cfg.neural.history_length,
                              params=params, metadata=metadata)


# --------------------------------------------------------------------------- the training stage


# A graph model's training pairs larger than this train in a launch of their own (_shared_fit).
SHARED_GRAPH_BYTES = 64 * 2**20


def _shared_fit(spark: SparkSession, night_cfg: Config, split_rows: DataFrame, name: str, *, n_users: int,
                n_items: int, features) -> tuple[TrainedNetwork, TrainedNetwork] | None:
    """``(selected, final)`` of ``name`` from the night's shared launch (:mod:`recsys_spark.train.shared_launch`):
    run by the first planned stage, taken by each; None when ``name`` trains in a launch of its own."""
    shared = shared_launch.current()
    if shared is None:
        return None
    sizes = dict(n_users=n_users, n_items=n_items)
    if shared.wants(name):
        def prepare(model):
            model_cfg = night_cfg.for_neural_model(model)
            refit = model_cfg.neural.refit
            # Every process of a launch holds every job it was given, for the whole launch: the memory
            # check counts a graph for its own model's training, not beside the others'.
            prepared = _prepare(spark, model_cfg, split_rows, model, features=features, model_class=None,
                                final=False, epochs=None, then_refit=refit, max_graph_bytes=SHARED_GRAPH_BYTES,
                                **sizes)
            launch_settings = (model_cfg.neural.num_processes, prepared.use_gpu, prepared.job.threads_per_process)
            return shared_launch.key(model, model_cfg, **sizes), prepared, launch_settings

        def launch(prepared):
            return distributed.run(spark, [p.job for p in prepared],
                                   num_processes=night_cfg.for_neural_model(prepared[0].name).neural.num_processes)

        def collect(prepared, result, launch_seconds):
            networks = _networks(prepared, result, launch_seconds=launch_seconds)
            return networks[0], networks[-1]  # without a refit, the selection is the final model

        since = watchdog.mark()
        shared_launch.run(shared, prepare, launch, collect, stage_model=name,
                          log=lambda line: print(line, flush=True),
                          fatal=lambda exc: watchdog.given_up_since(since) is not None)
    pair = shared.take(shared_launch.key(name, night_cfg.for_neural_model(name), **sizes))
    if pair is not None and shared.launched_by != name:
        print(f"'{name}' was trained in the shared launch of stage 'train_neural {shared.launched_by}' "
              "(its training lines are in that stage's log)", flush=True)
    return pair


def train(spark: SparkSession, night_cfg: Config, split_rows: DataFrame, name: str, *, n_users: int,
          n_items: int) -> dict:
    """Select (early stopping on validation), refit on train + validation, score test and save model ``name``.

    Returns the job's report. ``night_cfg`` is the night's config: the model trains with
    ``night_cfg.for_neural_model(name)``, and in a night that shares one launch of the training
    processes (:mod:`recsys_spark.train.shared_launch`), the first stage trains the other
    planned models with theirs.
    """
    cfg = night_cfg.for_neural_model(name)
    nc, primary = cfg.neural, cfg.evaluation.primary_metric
    features = item_features(spark, cfg.warehouse, n_items)
    sizes = dict(n_users=n_users, n_items=n_items, features=features)
    shared = _shared_fit(spark, night_cfg, split_rows, name, **sizes)
    launch = "own"
    if shared is not None:
        selected, final = shared
        launch = f"shared: trained with the others of stage 'train_neural {shared_launch.current().launched_by}'"
    elif nc.refit:  # both fits in one launch of the training processes
        selected, final = fit_and_refit(spark, cfg, split_rows, name, **sizes)
    else:
        selected = final = fit(spark, cfg, split_rows, name, final=False, **sizes)
    selection_model = fitted_model(spark, cfg, selected, split.training_rows(split_rows, final=False))
    validation = folds.validation_metrics(selection_model, split_rows, n_items, cfg)
    best_epochs = selected.best_epoch + 1
    final_model = fitted_model(spark, cfg, final, split.training_rows(split_rows, final=True))
    folds.finish(spark, cfg, final_model, split_rows, n_users=n_users, n_items=n_items, validation=validation,
                 extra={"best_epoch": best_epochs, "refit": nc.refit, "selection_history": selected.history,
                        "selection_seconds": selected.seconds, "refit_seconds": final.seconds})
    clear_checkpoints(cfg, name)
    return {"model": name, f"{primary}_validation": validation[primary],
            f"{primary}_validation_in_trainer": selected.best_metric, "best_epoch": best_epochs,
            "stopped_early": selected.stopped_early, "resumed_from_epoch": selected.resumed_from,
            "processes": nc.num_processes,
            "use_gpu": selected.extra["use_gpu"], "selection_seconds": round(selected.seconds, 1),
            "refit_seconds": round(final.seconds, 1) if nc.refit else 0.0,
            "selection_phases": selected.extra["phases"],
            "refit_phases": final.extra["phases"] if nc.refit else None,
            "search": _search_summary(selected.extra.get("search")), "launch": launch}


def _search_summary(searched: dict | None) -> dict | None:
    """The search in the job's report: chosen values, trials run and pruned, seconds."""
    if searched is None:
        return None
    return {"chosen": searched["chosen"], "chosen_trial": searched["chosen_trial"],
            "trials": len(searched["trials"]), "pruned": searched["pruned"], "seconds": searched["seconds"]}


__all__ = [
    "TrainedNetwork",
    "clear_checkpoints",
    "fit",
    "fit_and_refit",
    "fitted_model",
    "item_factor_table",
    "item_features",
    "needs_graph",
    "takes_item_features",
    "training_graph",
    "train",
    "user_factor_table",
]
