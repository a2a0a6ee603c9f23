"""Every model family by name. Registration is explicit (no folder scanning):
adding a model is one file plus one line here, and nothing in the pipeline,
training, evaluation or serving names a model.

Two kinds of entry:

* neural models (:func:`register`): a :class:`recsys_spark.models.base.RecModel`
  subclass, trained by ``jobs/train_neural.py``; the night runs one stage
  ``train_neural <name>`` each.
* the other families (:func:`register_family`): a family is one stage of the
  night, ``train_<family>``, training one or more models (a folder each under
  ``models/``). Its fit, ``fit(spark, name, rows, *, n_items, cfg) ->
  FittedModel`` (``name``: the model to fit, one of the family's; ``rows``:
  training rows of the split), is called by ``jobs/train_baselines.py``, which
  judges it on validation, refits it on train + validation, scores test and
  saves it; a family with its own search (EASE's lambda, ALS's grid) names its own job instead.

The night's model stages are the families in the order registered here, then
the neural models (:func:`recsys_spark.pipeline.plan`). Targets are
``"module:attribute"`` strings imported when used, so listing names or
planning a run imports neither torch nor a model's file.
"""
from __future__ import annotations

import importlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from recsys_spark.errors import UserError

if TYPE_CHECKING:
    from recsys_spark.models.base import RecModel

# The job that trains every family with a fit (its stem under jobs/).
TRAIN_BASELINES = "train_baselines"

# name -> "module:Class"; imported lazily so that listing names needs no torch work.
_MODELS: dict[str, str] = {}
# family name -> Family, in registration order (the order the night trains them in).
_FAMILIES: dict[str, "Family"] = {}


class UnknownModel(UserError, KeyError):
    """No model is registered under this name (a KeyError, as a missing key is)."""

    def __str__(self) -> str:
        return str(self.args[0])


def _resolve(target: str):
    module, attr = target.split(":")
    return getattr(importlib.import_module(module), attr)


# --------------------------------------------------------------------------- neural models


def register(name: str, target: str) -> None:
    """A neural model: ``target`` is its ``"module:Class"``."""
    _MODELS[name] = target


def names() -> list[str]:
    """The registered neural models, sorted."""
    return sorted(_MODELS)


def get(name: str) -> type[RecModel]:
    """The neural model class registered as ``name``."""
    if name not in _MODELS:
        raise UnknownModel(f"unknown model '{name}'; known models: {', '.join(names()) or '(none)'}")
    return _resolve(_MODELS[name])


# --------------------------------------------------------------------------- the other families


@dataclass(frozen=True)
class Family:
    """A non-neural model family: one stage of the night, training ``models``.

    Attributes:
        name: the family's name; its stage is ``train_<name>``.
        models: the models it trains (their folders under ``models/``), in order.
        fit: ``"module:function"``, ``fit(spark, name, rows, *, n_items, cfg) -> FittedModel``
            for each of ``models``, called by ``jobs/train_baselines.py``; None when ``job`` trains it.
        job: the job (stem under ``jobs/``) the family's stage runs.
        required: the night publishes nothing when this family fails (popularity: something
            safe is always served).
    """

    name: str
    models: tuple[str, ...]
    fit: str | None = None
    job: str = TRAIN_BASELINES
    required: bool = False

    @property
    def stage(self) -> str:
        return f"train_{self.name}"

    @property
    def args(self) -> tuple[str, ...]:
        """The stage's own job arguments: the models to fit for ``train_baselines``, none for a family's own job."""
        return ("--models", ",".join(self.models)) if self.fit is not None else ()


def register_family(name: str, fit: str | None = None, *, models: tuple[str, ...] | None = None,
                    job: str | None = None, required: bool = False) -> Family:
    """Register a non-neural family: either ``fit`` (trained by ``train_baselines``) or its own ``job``.

    Args:
        name: the family (its stage is ``train_<name>``).
        fit: ``"module:function"``, see :class:`Family`.
        models: the models it trains; default: one, named as the family.
        job: its own job instead of a fit (EASE, ALS: a search on validation with its own job).
        required: a failure of its stage ends the night with nothing published.

    Raises:
        ValueError: neither or both of ``fit`` and ``job``, or a family or model name already taken.
    """
    if (fit is None) == (job is None):
        raise ValueError(f"family '{name}': give its fit ('module:function') or its own job, one of the two")
    models = tuple(models or (name,))
    taken = {m for f in _FAMILIES.values() for m in f.models} | set(_MODELS)
    clash = sorted(taken & set(models))
    if name in _FAMILIES or clash:
        raise ValueError(f"family '{name}': already registered: {', '.join(clash) or name}")
    family = Family(name, models, fit, job or TRAIN_BASELINES, required)
    _FAMILIES[name] = family
    return family


def unregister_family(name: str) -> None:
    """Forget the family ``name`` (a test's throwaway family)."""
    _FAMILIES.pop(name, None)


def families() -> list[Family]:
    """Every non-neural family, in registration order (the order the night trains them in)."""
    return list(_FAMILIES.values())


def baseline_names() -> list[str]:
    """Every model ``train_baselines`` can fit (the families with a fit), in registration order."""
    return [m for f in _FAMILIES.values() if f.fit is not None for m in f.models]


def baseline_fit(name: str) -> Callable:
    """The fit of the family that trains model ``name`` (see :class:`Family`).

    Raises:
        UnknownModel: no family with a fit trains ``name`` (a family with its own job names it).
    """
    for family in _FAMILIES.values():
        if name in family.models:
            if family.fit is None:
                raise UnknownModel(f"model '{name}' is trained by its own job (jobs/{family.job}.py), "
                                   f"not {TRAIN_BASELINES}")
            return _resolve(family.fit)
    raise UnknownModel(f"unknown baseline '{name}'; known baselines: {', '.join(baseline_names()) or '(none)'}")


# The registered neural models (each line: name -> its file's class).
register("neumf", "recsys_spark.models.neumf:NeuMF")
register("two_tower", "recsys_spark.models.two_tower:TwoTower")
register("multvae", "recsys_spark.models.multvae:MultVAE")
register("lightgcn", "recsys_spark.models.lightgcn:LightGCN")
register("dlae", "recsys_spark.models.dlae:DLAE")
register("gru4rec", "recsys_spark.models.gru4rec:GRU4Rec")
register("sasrec", "recsys_spark.models.sasrec:SASRec")
register("caser", "recsys_spark.models.caser:Caser")

# The other families, in the order the night trains them (each line: a family -> its file's fit, or its job).
register_family("popularity", "recsys_spark.models.baselines:fit_popularity_model",
                models=("popularity", "popularity_recent"), required=True)
register_family("ease", job="train_ease")  # a lambda searched on validation: its own job
register_family("als", job="train_als")
register_family("markov", "recsys_spark.models.markov:fit_markov_model")
