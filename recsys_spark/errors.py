"""The one base class of the mistakes a user makes and fixes: a config value, a missing input, a name.

A job ends such an error with exit status 2 and one line on stderr, not a
traceback (:func:`recsys_spark.cli.job_main`; docs/operations.md, "Exit codes").
"""
from __future__ import annotations


class UserError(Exception):
    """Something the person running the job can fix; the message says what, naming the setting or path."""
