"""One launch of the training processes for every neural model of a night run in one driver.

Each ``train_neural <model>`` stage of a night launches its own training
processes (a TorchDistributor barrier stage, torchrun, torch's import, the
process group): about 10 s a model on 2 CPU cores whatever the data
(docs/benchmarks.md, "Where the demo's eight neural stages spend their
time"). When the night runs in one driver (``jobs/pipeline.py``, not
``RECSYS_ISOLATED``), the runner plans the neural models its remaining stages
will train (:func:`planned`); the first of those stages then materialises
every planned model's examples and trains them all in one launch, one model
after the other in the same processes (:func:`recsys_spark.train.distributed.run`
with a list of jobs), and keeps each model's trained networks here. Every
stage, the first included, then takes its own model's networks and scores,
judges and saves it as before: each model keeps its stage, its status, its
report and its resume entry.

What the shared launch cannot do, it leaves to the stages, which then train
their model in a launch of their own (the path every stage takes outside a
planned night, e.g. ``scripts/submit.sh jobs/train_neural.py``):

* a model that cannot be prepared (its memory check refuses, its config is
  wrong) is left out of the launch, and its own stage fails with that error;
  so is a graph model whose training pairs would stay in every process while
  the others train (over ``neural.SHARED_GRAPH_BYTES``), which its own stage trains;
* a model whose launch settings differ (``neural.num_processes``, GPUs,
  threads per process) is left out and launched alone;
* when the shared launch fails (a process raised or died: one model's
  failure is every model's in a launch), nothing of it is kept and every
  planned model trains in its own launch, so the failing one fails alone and
  the others are trained anyway. The cost is the failed launch's time.

The stage that runs the launch prints each model's training lines
(``[<model>] epoch ...``) in its log; the other stages' logs say where their
training was.
"""
from __future__ import annotations

import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any


@dataclass
class SharedLaunch:
    """The neural models a night's remaining stages train, and what their shared launch produced."""

    models: list[str]
    attempted: bool = False
    launched_by: str | None = None  # the stage's model whose stage ran the launch
    failure: str | None = None  # why the launch failed (every model then trained alone)
    left_out: dict[str, str] = field(default_factory=dict)  # model -> why it was not in the launch
    trained: dict[tuple, Any] = field(default_factory=dict)  # key -> (selected, final) TrainedNetworks
    seconds: float = 0.0

    def wants(self, name: str) -> bool:
        """Whether the stage of ``name`` should run the shared launch now (it is planned, none ran yet)."""
        return name in self.models and not self.attempted and len(self.models) > 1

    def take(self, key: tuple) -> Any:
        """``(selected, final)`` trained for ``key`` in the shared launch (once), or None."""
        return self.trained.pop(key, None)


_CURRENT: SharedLaunch | None = None


@contextmanager
def planned(models: Sequence[str]) -> Iterator[SharedLaunch]:
    """While the ``with`` block runs, the stages of ``models`` share one launch (:func:`current`)."""
    global _CURRENT
    before, _CURRENT = _CURRENT, SharedLaunch(list(dict.fromkeys(models)))
    try:
        yield _CURRENT
    finally:
        _CURRENT = before


def current() -> SharedLaunch | None:
    """The night's planned shared launch, or None (a stage on its own, an isolated night)."""
    return _CURRENT


def key(name: str, model_cfg: Any, *, n_users: int, n_items: int) -> tuple:
    """What a stage's model must match to take a shared launch's result: the model, every
    setting it trains with and the catalog's sizes (the split is the night's, read by each stage)."""
    return (name, model_cfg.fingerprint(), n_users, n_items)


def run(shared: SharedLaunch, prepare, launch, collect, *, stage_model: str, log=print,
        fatal=lambda exc: False) -> None:
    """Prepare every planned model, launch them together, keep each one's networks.

    The callables keep this module free of Spark and torch (tested without either):
    ``prepare(name) -> (key, prepared, launch_settings)`` (raises to leave the model out),
    ``launch([prepared]) -> [result]``, ``collect(prepared, result, launch_seconds) -> networks``;
    each ``prepared`` has ``delete()`` and ``seconds_in_epochs(result)``. A launch error for
    which ``fatal(exc)`` is true (the cluster lost its executors: every launch would wait the
    same timeout) is raised, not retried model by model.
    """
    shared.attempted, shared.launched_by = True, stage_model
    prepared: list[tuple[str, tuple, Any]] = []
    settings = None
    try:
        for name in shared.models:
            try:
                k, p, launch_settings = prepare(name)
            except Exception as exc:  # noqa: BLE001 - its own stage raises it again, as its failure
                shared.left_out[name] = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
                continue
            if settings is None:
                settings = launch_settings
            if launch_settings != settings:
                p.delete()
                shared.left_out[name] = f"launch settings {launch_settings} differ from the launch's {settings}"
                continue
            prepared.append((name, k, p))
        for name, why in shared.left_out.items():
            log(f"shared launch: '{name}' trains in its own launch ({why})")
        if len(prepared) < 2:
            log("shared launch: fewer than two models to share it; each trains in its own launch")
            return
        names = ", ".join(n for n, _, _ in prepared)
        log(f"shared launch: training {names} in one launch of the training processes")
        started = time.time()
        try:
            results = launch([p for _, _, p in prepared])
        except Exception as exc:  # noqa: BLE001 - every model then trains alone, the failing one fails alone
            if fatal(exc):
                raise
            shared.failure = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            log(f"shared launch failed ({shared.failure}); each model trains in its own launch")
            return
        shared.seconds = time.time() - started
        # The launch's fixed part, shared out: what the processes did not spend in epochs.
        fixed = max(0.0, shared.seconds - sum(p.seconds_in_epochs(r) for (_, _, p), r in zip(prepared, results)))
        for (name, k, p), result in zip(prepared, results):
            shared.trained[k] = collect(p, result, fixed / len(prepared))
        log(f"shared launch: {len(prepared)} models trained in {shared.seconds:.1f} s")
    finally:
        for _, _, p in prepared:
            p.delete()


__all__ = ["SharedLaunch", "current", "key", "planned", "run"]
