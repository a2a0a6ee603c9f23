"""No config value passes through a shell unquoted: values full of shell
metacharacters go through scripts/pipeline.sh and scripts/submit.sh (the job's
arguments, and RECSYS_SET, which submit.sh reads itself) as plain text; none is
run, and the job's message quotes the value as given."""
from __future__ import annotations

import json
import os
import subprocess

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.slow]


def evil(marker) -> str:
    """A value that runs ``touch marker`` if any shell evaluates it, however it is quoted there."""
    return f"""x'; touch {marker}; echo "$(touch {marker})" `touch {marker}` | touch {marker} & >{marker}.2"""


def test_shell_metacharacters_in_config_values_stay_text(tmp_path):
    marker = tmp_path / "pwned"
    source = f"{tmp_path}/raw-{evil(marker)}"
    logs = tmp_path / "logs"
    env = {**os.environ, "RECSYS_LOG_DIR": str(logs), "RECSYS_MODELS": "", "RECSYS_STAGES": "clean_events",
           # submit.sh reads RECSYS_SET itself (cluster settings): the same value there.
           "RECSYS_SET": f"cluster.run_dir={tmp_path}/run-{evil(marker).replace(' ', '_')}"}
    env.pop("SPARK_MASTER", None)
    proc = subprocess.run(
        [str(REPO / "scripts" / "pipeline.sh"), "--dataset", "synthetic", "--warehouse", str(tmp_path / "wh"),
         "--set", f"dataset.source.path={source}"],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    output = proc.stdout + proc.stderr
    assert not marker.exists() and not (tmp_path / "pwned.2").exists(), output[-2000:]
    # The source does not exist: the clean job refuses it (exit 2), naming the path as given.
    assert proc.returncode == 2, output[-2000:]
    status = json.loads((logs / "status.json").read_text())
    assert source in status["stages"][0]["reason"]
    # The lock and the run manifest hold no secret and no more than the run's facts.
    manifest = (tmp_path / "wh" / "runs").rglob("manifest.json")
    text = "".join(p.read_text() for p in manifest)
    assert "secret" not in text.lower() and not (tmp_path / "wh" / "_run.lock").exists()
