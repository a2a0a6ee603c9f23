"""Why a serving run cannot publish: the exceptions ``jobs/recommend.py`` maps to exit codes."""
from __future__ import annotations


class RecommendError(RuntimeError):
    """The run cannot be published; the message says why."""


class ValidationFailed(RecommendError):
    """The staged output breaks a rule of the recommendations contract."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        super().__init__("staged recommendations failed validation:\n  - " + "\n  - ".join(problems))


class QualityGateRefused(RecommendError):
    """The run is worse than the last published one (or too narrow); ``--force`` overrides."""

    def __init__(self, failures: list[str]):
        self.failures = failures
        super().__init__("quality gate: " + "; ".join(failures) + " (re-run with --force to publish anyway)")
