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


GATE = """
import datetime as dt, json, sys
import numpy as np, pandas as pd
from rotation import portfolio_risk
from rotation.risk import RiskLimits

days = pd.bdate_range("2023-01-02", periods=300)
rng = np.random.default_rng(7)
close = 100 * np.exp(np.cumsum(rng.normal(0, 0.01, (len(days), 3)), axis=0))
bars = pd.DataFrame([{"date": d, "symbol": s, "close": close[i, j], "amount": 1e8,
                      "volume": 1e6} for i, d in enumerate(days)
                     for j, s in enumerate(["510050", "510300", "159915"])])
returns, amounts = portfolio_risk.panels_from_bars(bars)
as_of = days[-1].date()
limits, _ = portfolio_risk.limits_in_force(returns, as_of, RiskLimits())
figures = portfolio_risk.gate_figures(returns, amounts, {"510050": 0.5, "510300": 0.5}, as_of,
                                      1e6, limits)
print(json.dumps({"var": figures.var_99, "scipy_stats": "scipy.stats" in sys.modules}))
"""


def test_the_approval_gates_risk_figures_do_not_import_scipy_stats() -> None:
    """The gate's figures (historical VaR and ES, the worst window, liquidity) are measured in
    every daily run worker: scipy.stats, a second of import, is left to the measures that use
    it (parametric and Cornish–Fisher VaR, the backtests of VaR)."""
    out = subprocess.run([sys.executable, "-c", GATE], cwd=ROOT, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found = json.loads(out.stdout.strip().splitlines()[-1])
    assert found["var"] > 0
    assert found["scipy_stats"] is False
