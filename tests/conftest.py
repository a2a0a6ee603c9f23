"""Shared fixtures: one local[2] SparkSession for the whole run, data paths."""
from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
ML100K = (REPO.parent / "shared" / "data" / "ml-100k").resolve()

# A synthetic log of a few thousand events: every dirty kind, two bots, seconds to make.
TINY_SYNTHETIC = [
    "synthetic.num_users=300",
    "synthetic.num_items=200",
    "synthetic.num_events=4000",
    "synthetic.num_clusters=5",
    "synthetic.partitions=2",
    "synthetic.bot_users=2",
    "synthetic.bot_events_each=300",
]


# Spark's own switch for its tests: queries interpreted, not compiled (whole-stage and expression
# codegen, Janino). Tests run hundreds of small distinct queries, where compiling each one's
# generated Java costs more CPU than running it: interpreted, test_recommend.py took 182 s instead
# of 249 s, the failing-model night of test_nightly_run 53 s instead of 61-65 s. The results are
# the same. The runs that test a real deployment keep Spark's defaults, codegen included: the
# standalone cluster and its worker faults, the `local[2]` submit of train_neural, the demo.
INTERPRETED = {"spark.sql.codegen.wholeStage": "false", "spark.sql.codegen.factoryMode": "NO_CODEGEN"}


def load_job(name: str):
    """A job's module from jobs/<name>.py, to call its main(argv)."""
    from recsys_spark.pipeline import load_job as load

    return load(REPO / "jobs", name)


def synthetic_job_argv(root: Path, overrides: list[str]) -> tuple[list[str], Path, Path]:
    """Job arguments for a synthetic log under ``root``/raw and a warehouse at ``root``/wh."""
    raw, wh = root / "raw", root / "wh"
    argv = ["--dataset", "synthetic", "--warehouse", str(wh)]
    for o in [*overrides, f"dataset.source.path={raw}"]:
        argv += ["--set", o]
    return argv, raw, wh


def run_data_stages(argv: list[str], *, reference_time: str) -> None:
    """generate -> clean -> tables -> split through the jobs themselves (a synthetic warehouse)."""
    load_job("generate_events").main(argv)
    load_job("clean_events").main(argv + ["--reference-time", reference_time])
    load_job("build_tables").main(argv)
    load_job("split").main(argv)


@pytest.fixture(scope="session")
def spark(tmp_path_factory):
    """The one SparkSession of the test run (2 cores, few partitions, no UI)."""
    from recsys_spark.config import load_config
    from recsys_spark.session import build_spark

    os.environ.setdefault("PYSPARK_PYTHON", os.environ.get("PYSPARK_PYTHON", __import__("sys").executable))
    cfg = load_config(
        overrides=[
            "spark.shuffle_partitions=2",
            # The session's own catalog: tests register tables in it without a Derby
            # database per run (the embedded metastore is tested across JVMs in test_nightly_run).
            "catalog.metastore=session",
            # Queries interpreted (INTERPRETED, above).
            "spark.extra=" + json.dumps({"spark.ui.enabled": "false", **INTERPRETED,
                                         "spark.sql.warehouse.dir": str(tmp_path_factory.mktemp("spark-warehouse"))}),
        ]
    )
    session = build_spark(cfg, app_name="recsys-spark-tests")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def one_torch_thread():
    """One torch thread for a module of tiny tensors: intra-op threads only add overhead
    (10x on a busy 2-core machine); the count before is restored after the module."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    if not (ML100K / "ratings.csv").exists():
        pytest.skip(f"MovieLens 100K not found at {ML100K} (it lives in ../shared, never in the repo)")
    return ML100K


def free_port() -> int:
    """A TCP port free on loopback now (for a one-process torch.distributed group)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
