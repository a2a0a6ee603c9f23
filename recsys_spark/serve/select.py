"""Choosing the serving model among the trained ones and loading it for scoring."""
from __future__ import annotations

from pyspark.sql import SparkSession

from recsys_spark import io
from recsys_spark.models import artifacts, fitted
from recsys_spark.models.fitted import FittedModel
from recsys_spark.serve.errors import RecommendError


def select_model(metadata: dict[str, dict], primary_metric: str, requested: str | None = None) -> str:
    """The serving model: ``requested``, or (None / "best") the best on validation ``primary_metric``.

    Args:
        metadata: model name -> its ``metadata.json`` (``metrics.validation``).

    Ties go to the first name in sorted order, so the choice is reproducible.
    """
    if requested not in (None, "best"):
        if requested not in metadata:
            raise RecommendError(
                f"recommend.model='{requested}' has no trained model; found: {', '.join(sorted(metadata)) or '(none)'}"
            )
        return requested
    scored = [
        (name, validation_metric(meta, primary_metric)) for name, meta in sorted(metadata.items())
    ]
    scored = [(name, value) for name, value in scored if value is not None]
    if not scored:
        raise RecommendError(
            f"no model has a validation '{primary_metric}' to pick the best by "
            f"(models: {', '.join(sorted(metadata)) or '(none)'}); train one or set recommend.model"
        )
    return max(scored, key=lambda pair: pair[1])[0]


def validation_metric(meta: dict, primary_metric: str) -> float | None:
    value = (meta.get("metrics") or {}).get("validation", {}).get(primary_metric)
    return None if value is None else float(value)


def list_models(spark: SparkSession, warehouse: str) -> dict[str, dict]:
    """Every model folder's metadata (folders without readable metadata are skipped)."""
    out = {}
    for name in io.list_dir(spark, io.models_root(warehouse)):
        if name.startswith((".", "_")):
            continue
        try:
            out[name] = artifacts.load_metadata(spark, warehouse, name)
        except (FileNotFoundError, ValueError) as exc:
            print(f"recommend: skipping model '{name}': {exc}", flush=True)
    return out


def load_model(spark: SparkSession, warehouse: str, name: str, *, history_length: int = 50) -> FittedModel:
    """The serving model, loaded as every model is (:func:`recsys_spark.models.fitted.load`)."""
    try:
        return fitted.load(spark, warehouse, name, history_length=history_length)
    except (FileNotFoundError, ValueError) as exc:
        raise RecommendError(f"model '{name}' cannot be served: {exc}") from None
