"""What every job entry point shares: flags, config loading, the session, a report line."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Callable

from recsys_spark.config import Config, ConfigError, add_config_args, config_from_args


def parse_job_args(
    description: str,
    argv: list[str] | None = None,
    add_args: Callable[[argparse.ArgumentParser], None] | None = None,
) -> tuple[argparse.Namespace, Config]:
    """Parse the shared config flags plus a job's own; exit 2 on a malformed config."""
    parser = argparse.ArgumentParser(description=description)
    add_config_args(parser)
    if add_args:
        add_args(parser)
    args = parser.parse_args(argv)
    try:
        cfg = config_from_args(args)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        raise SystemExit(2) from None
    return args, cfg


def print_report(title: str, report: dict) -> None:
    """One JSON block on stdout: what the job did, for logs and for scripts/demo.sh."""
    print(f"== {title}")
    print(json.dumps(report, indent=2, sort_keys=True, default=str))
