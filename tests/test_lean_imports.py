"""The code location loads without the libraries the daily path does not use at load.

The daemon starts a fresh process for every run (the run worker loads the code location, then
runs); the gRPC code server loads it on every reload. Great Expectations (the quality suite
inside ``raw_bars``), MLflow (the research runs), vectorbt (the finalists' replay) and
matplotlib (figures) are imported by the steps that use them, never at load: each costs seconds
in a fresh process (``python -m benchmarks.daily --profile DIR`` shows the table). Checked in a
subprocess, whose ``sys.modules`` holds exactly what loading imported.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Imported by the steps that use them, never by loading the code location.
NOT_AT_LOAD = ("great_expectations", "mlflow", "vectorbt", "matplotlib", "plotly", "sklearn")

LOAD = """
import json, sys
from orchestration.definitions import defs

loaded = defs()
jobs = {job: loaded.resolve_job_def(job).name for job in ("daily_job", "execution_job")}
print(json.dumps({"jobs": sorted(jobs), "modules": sorted(sys.modules)}))
"""


def loaded_modules(env: dict[str, str]) -> tuple[list[str], set[str]]:
    """The jobs resolved and every module a fresh interpreter holds after loading ``defs``."""
    # The deployment's settings are ``env`` alone (none of this process's ETF_ settings).
    plain = {k: v for k, v in os.environ.items() if not k.startswith("ETF_")}
    out = subprocess.run([sys.executable, "-c", LOAD], cwd=ROOT, env={**plain, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    return found["jobs"], set(found["modules"])


def test_loading_the_code_location_imports_no_heavy_library(tmp_path: Path, ledger_url: str
                                                            ) -> None:
    """The code location of the default deployment (sample data, the PostgreSQL ledger: the
    daily job and the execution stage are defined) as the run worker and the code server load
    it."""
    env = {"ETF_HOME": str(tmp_path / "home"), "ETF_POSTGRES_URL": ledger_url,
           "DAGSTER_HOME": str(tmp_path / "dagster"), "GX_ANALYTICS_ENABLED": "false"}
    (tmp_path / "dagster").mkdir()
    jobs, modules = loaded_modules(env)
    assert jobs == ["daily_job", "execution_job"]
    # The libraries the load does need are there: the check sees what loading imported.
    assert {"dagster", "pandas", "orchestration.definitions", "assets.market"} <= modules
    heavy = sorted(m for m in modules if m.partition(".")[0] in NOT_AT_LOAD)
    assert not heavy, f"loading the code location imported {heavy[:10]}"
