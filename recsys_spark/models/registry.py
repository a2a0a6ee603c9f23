"""Neural models by name. Registration is explicit (no folder scanning):
adding a model is one file plus one line here."""
from __future__ import annotations

import importlib

from recsys_spark.errors import UserError
from recsys_spark.models.base import RecModel

# name -> "module:Class"; imported lazily so that listing names needs no torch work.
_MODELS: dict[str, str] = {}


class UnknownModel(UserError, KeyError):
    """No neural model is registered under this name (a KeyError, as a missing key is)."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(name: str, target: str) -> None:
    _MODELS[name] = target


def names() -> list[str]:
    return sorted(_MODELS)


def get(name: str) -> type[RecModel]:
    if name not in _MODELS:
        raise UnknownModel(f"unknown model '{name}'; known models: {', '.join(names()) or '(none)'}")
    module, cls = _MODELS[name].split(":")
    return getattr(importlib.import_module(module), cls)


# The registered neural models (each line: name -> its file's class).
register("neumf", "recsys_spark.models.neumf:NeuMF")
register("two_tower", "recsys_spark.models.two_tower:TwoTower")
register("multvae", "recsys_spark.models.multvae:MultVAE")
