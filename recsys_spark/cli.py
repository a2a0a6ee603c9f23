"""What every job entry point shares: flags, config loading, user errors as exit 2, a report line."""
from __future__ import annotations

import argparse
import datetime as dt
import functools
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from recsys_spark import watchdog
from recsys_spark.config import Config, ConfigError, add_config_args, config_from_args
from recsys_spark.errors import UserError

# A job's exit status (docs/operations.md, "Exit codes"); recommend adds its own 3 and 4.
EXIT_OK, EXIT_FAILED, EXIT_USER_ERROR = 0, 1, 2
# The mistakes a user fixes: a config value, an unknown name (UserError), a missing input
# table or file (the project's FileNotFoundErrors name the path and the stage that writes it).
USER_ERRORS = (UserError, FileNotFoundError)


def job_main(main: Callable[..., Any]) -> Callable[..., Any]:
    """Decorate a job's ``main(argv)``: a user's mistake ends it with exit status 2 and one line on stderr.

    ``<job>: <what is wrong>`` (``<job>: config error: ...`` for a config
    value) instead of a traceback; any other error propagates (a traceback,
    exit status 1). On ``main`` itself, so every way a job runs gets the same
    status: spark-submit (``__main__``, also through ``session.run_job``), the
    one-driver pipeline, which calls ``main(argv)`` and records a ``SystemExit``'s
    code, and tests. An error after the job was cancelled for want of executors
    (:mod:`recsys_spark.watchdog`) is raised as ``ExecutorsLostError`` with the watchdog's line.
    """
    job = Path(main.__code__.co_filename).stem

    @functools.wraps(main)
    def wrapper(argv: list[str] | None = None) -> Any:
        since = watchdog.mark()
        try:
            return main(argv)
        except USER_ERRORS as exc:
            print(f"{job}: {'config error: ' if isinstance(exc, ConfigError) else ''}{_one_line(exc)}",
                  file=sys.stderr)
            raise SystemExit(EXIT_USER_ERROR) from None
        except Exception as exc:
            # A job cancelled because the cluster lost its executors: the watchdog's one line,
            # not the cancelled action's Java stack, is the failure's reason.
            lost = watchdog.given_up_since(since)
            if lost is not None:
                raise watchdog.ExecutorsLostError(lost) from exc
            raise

    return wrapper


def _one_line(exc: BaseException) -> str:
    text = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)  # KeyError's str() quotes it
    return " ".join(line.strip() for line in str(text).splitlines() if line.strip()) or type(exc).__name__


def iso_date(text: str) -> str:
    """An argparse type: a YYYY-MM-DD date, returned as given (argparse names the flag when it is not one)."""
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a YYYY-MM-DD date") from None
    return text


def parse_job_args(
    description: str,
    argv: list[str] | None = None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, Config]:
    """Parse the shared config flags plus a job's own and load the config (ConfigError: see :func:`job_main`)."""
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser)
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    return args, config_from_args(args)


def print_report(title: str, report: dict) -> None:
    """One JSON block on stdout: what the job did, for logs and for scripts/demo.sh."""
    print(f"== {title}")
    print(json.dumps(report, indent=2, sort_keys=True, default=str))
