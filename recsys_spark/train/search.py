"""The settings search of a neural model on validation, inside the training processes.

Every trial is a selection fit through the same loop and data path as the
final fit (:func:`recsys_spark.train.loop.train`, the Petastorm shards, early
stopping on the validation fold), run in the processes of the one
TorchDistributor launch that then refits the winner: a trial costs its epochs,
not a launch and a materialisation.

Optuna (``optuna``) proposes the settings and prunes. Rank 0 holds the study
in memory: it asks for a trial, sends the trial's values to every rank, reports
each epoch's validation metric and sends the pruning decision with the early
stopping one (:func:`recsys_spark.train.loop.train`'s ``should_prune``), so
every rank leaves the trial at the same epoch. Why Optuna and not a grid or a
hand-written loop: its TPE sampler spends a small budget where the metric is
good rather than on a grid's corners, its median pruner stops a trial whose
per-epoch curve is below the other trials' at the same epoch, and both are a
few lines here; ``docs/architecture.md`` says more.

* Trial 0 is the configured settings (``neural.models``, ``neural.per_model``
  over the model's defaults), so the search never chooses worse than the
  configuration on validation; a configured value outside its searched range
  or choices widens them to include it.
* The budget (``neural.search``): ``trials``, and ``minutes`` after which no
  new trial starts. Trials before ``startup_trials`` and epochs before
  ``warmup_epochs`` are never pruned.
* A setting is either a model hyperparameter (its class's ``default_params``)
  or one of the trainer's :data:`TRAINER_KEYS`.
* Choices may be any values (lists included): Optuna sees their positions.
"""
from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from recsys_spark.errors import UserError

# The trainer's settings a search may set (TrainSettings fields).
TRAINER_KEYS = ("learning_rate", "weight_decay", "negatives_per_positive", "negative_sampling")


@dataclass
class SearchPlan:
    """What the processes need to search: budget, the space, trial 0's values."""

    model: str
    trials: int
    minutes: float
    startup_trials: int
    warmup_epochs: int
    seed: int
    space: dict[str, dict[str, Any]]  # key -> SearchDim as a dict (choices | low, high, log, integer)
    configured: dict[str, Any]  # trial 0: the configured value of every searched key
    model_keys: list[str] = field(default_factory=list)  # the keys that are model hyperparameters

    @property
    def active(self) -> bool:
        return self.trials > 1 and bool(self.space)

    def split(self, values: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """A trial's values as (model hyperparameters, trainer settings)."""
        params = {k: v for k, v in values.items() if k in self.model_keys}
        return params, {k: v for k, v in values.items() if k not in self.model_keys}


def plan_for(cfg, name: str, cls, params: dict[str, Any]) -> SearchPlan | None:
    """The search of model ``name`` (``cfg`` is ``cfg.for_neural_model(name)``); None when it has none.

    Args:
        cls: the model class (its ``default_params`` say which keys are hyperparameters).
        params: the configured hyperparameters (``neural.models.<name>``), over the defaults.

    Raises:
        UserError: a searched key that is neither a hyperparameter of the model nor a trainer setting.
    """
    sc = cfg.neural.search
    dims = sc.space.get(name) or {}
    if sc.trials <= 1 or not dims:
        return None
    hyper = {**cls.default_params, **params}
    trainer = {k: getattr(cfg.neural, k) for k in TRAINER_KEYS}
    space, configured, model_keys = {}, {}, []
    for key, dim in dims.items():
        if key in hyper:
            model_keys.append(key)
            value = hyper[key]
        elif key in trainer:
            value = trainer[key]
        else:
            raise UserError(
                f"neural.search.space.{name}.{key}: '{key}' is neither a hyperparameter of model '{name}' "
                f"({', '.join(sorted(cls.default_params))}) nor a trainer setting ({', '.join(TRAINER_KEYS)})")
        space[key] = _including(dataclasses.asdict(dim), value)
        configured[key] = value
    return SearchPlan(model=name, trials=sc.trials, minutes=sc.minutes, startup_trials=sc.startup_trials,
                      warmup_epochs=sc.warmup_epochs, seed=cfg.neural.seed, space=space, configured=configured,
                      model_keys=model_keys)


def _including(dim: dict[str, Any], value: Any) -> dict[str, Any]:
    """``dim`` widened, when needed, so that the configured ``value`` is one of its candidates."""
    dim = copy.deepcopy(dim)
    if dim.get("choices") is not None:
        if value not in dim["choices"]:
            dim["choices"].append(value)
    elif value is not None:
        dim["low"], dim["high"] = min(dim["low"], float(value)), max(dim["high"], float(value))
    return dim


def largest(plan: SearchPlan | None, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every searched numeric hyperparameter at its largest candidate: the
    memory check before any trial runs must hold for the biggest model the search may build."""
    if plan is None:
        return params
    out = dict(params)
    for key in plan.model_keys:
        dim = plan.space[key]
        candidates = dim["choices"] if dim.get("choices") is not None else [dim["high"]]
        numbers = [c for c in candidates if isinstance(c, (int, float)) and not isinstance(c, bool)]
        lists = [c for c in candidates if isinstance(c, list)]
        if numbers:
            out[key] = int(max(numbers)) if dim.get("integer") or all(isinstance(c, int) for c in numbers) \
                else max(numbers)
        elif lists:
            out[key] = max(lists, key=lambda c: sum(x for x in c if isinstance(x, (int, float))))
    return out


class Study:
    """Rank 0's side of the search: an in-memory Optuna study with a TPE sampler and a median pruner."""

    def __init__(self, plan: SearchPlan):
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        self.plan = plan
        self.optuna = optuna
        self.study = optuna.create_study(
            direction="maximize",
            sampler=optuna.samplers.TPESampler(seed=plan.seed, n_startup_trials=min(4, plan.trials)),
            pruner=optuna.pruners.MedianPruner(n_startup_trials=plan.startup_trials,
                                               n_warmup_steps=plan.warmup_epochs),
        )
        positions = {k: plan.space[k]["choices"].index(v) if plan.space[k].get("choices") is not None else v
                     for k, v in plan.configured.items()}
        self.study.enqueue_trial(positions)
        self.trial = None
        self.best_so_far = float("-inf")
        self.started = time.monotonic()
        self.records: list[dict[str, Any]] = []

    def ask(self) -> dict[str, Any] | None:
        """The next trial's values, or None when the budget is spent."""
        if len(self.records) >= self.plan.trials:
            return None
        if self.records and time.monotonic() - self.started >= self.plan.minutes * 60:
            return None
        self.trial = self.study.ask()
        values = {}
        for key, dim in self.plan.space.items():
            if dim.get("choices") is not None:
                values[key] = dim["choices"][self.trial.suggest_categorical(key, list(range(len(dim["choices"]))))]
            elif dim.get("integer"):
                values[key] = self.trial.suggest_int(key, int(dim["low"]), int(dim["high"]), log=bool(dim["log"]))
            else:
                values[key] = self.trial.suggest_float(key, float(dim["low"]), float(dim["high"]),
                                                       log=bool(dim["log"]))
        return values

    def should_prune(self, epoch: int, metric: float) -> bool:
        """Report the trial's validation metric after ``epoch`` (0-based); whether to stop it now.

        What is reported is the trial's best so far, not the epoch's own value: a validation
        curve is noisy from epoch to epoch, and a trial is worth what early stopping would keep.
        """
        self.best_so_far = metric if epoch == 0 else max(self.best_so_far, metric)
        self.trial.report(self.best_so_far, epoch)
        return self.trial.should_prune()

    def tell(self, values: dict[str, Any], result: dict[str, Any], seconds: float) -> None:
        pruned = bool(result.get("pruned"))
        state = self.optuna.trial.TrialState.PRUNED if pruned else self.optuna.trial.TrialState.COMPLETE
        self.study.tell(self.trial, None if pruned else result["best_metric"], state=state)
        self.records.append({"trial": len(self.records), "values": values, "pruned": pruned,
                             "best_metric": result["best_metric"], "best_epoch": result["best_epoch"] + 1,
                             "epochs_run": result["epochs_run"], "seconds": round(seconds, 1)})


def run(plan: SearchPlan, fit: Callable[[dict[str, Any], Callable | None], dict[str, Any] | None], *,
        rank: int, broadcast: Callable[[Any], Any], log: Callable[[str], None] = print) -> dict[str, Any] | None:
    """Run the search in every process; rank 0 returns the best trial's result with ``search`` added.

    Args:
        fit: ``fit(values, should_prune)`` trains one trial on every rank (``should_prune`` is
            None on the other ranks) and returns the loop's result on rank 0.
        broadcast: sends rank 0's object to every rank (returns it everywhere).

    Returns:
        On rank 0 the best trial's loop result plus ``search`` (the trials, the chosen values,
        the seconds); None on the other ranks. A pruned trial is never chosen: trial 0 is
        never pruned (the first ``startup_trials`` >= 1 are not; with 0, trial 0 still
        completes, having no trial to be compared with).
    """
    study = Study(plan) if rank == 0 else None
    best, best_values, started = None, None, time.monotonic()
    while True:
        values = broadcast(study.ask() if rank == 0 else None)
        if values is None:
            break
        trial_started = time.monotonic()
        result = fit(values, study.should_prune if rank == 0 else None)
        if rank != 0:
            continue
        study.tell(values, result, time.monotonic() - trial_started)
        record = study.records[-1]
        log(f"trial {record['trial']} {json.dumps(values, default=str)}: "
            + ("pruned" if record["pruned"] else f"{record['best_metric']:.4f} at epoch {record['best_epoch']}")
            + f" [{record['seconds']:.0f}s]")
        if not record["pruned"] and (best is None or result["best_metric"] > best["best_metric"]):
            best, best_values = result, values
    if rank != 0:
        return None
    if best is None:
        raise RuntimeError(f"[{plan.model}] every search trial was pruned (trial 0 should never be)")
    chosen = next(r for r in study.records if r["values"] is best_values)
    best["search"] = {"trials": study.records, "chosen": best_values, "chosen_trial": chosen["trial"],
                      "pruned": sum(r["pruned"] for r in study.records), "seconds": round(time.monotonic() - started, 1),
                      "budget": {"trials": plan.trials, "minutes": plan.minutes}}
    return best


__all__ = ["SearchPlan", "Study", "TRAINER_KEYS", "largest", "plan_for", "run"]
