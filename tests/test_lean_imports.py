"""The code location loads without the libraries the daily path does not use at load; the desk
API's intraday P&L reads the deployment without loading the code location.

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
from typing import Any

from conftest import TEST_CACHE_SECRET

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


# What ``GET /accounts/{id}/intraday`` runs in the API process.
INTRADAY = """
import json, sys
from orchestration.intraday import intraday_inputs
from orchestration.settings import load_settings

inputs = intraday_inputs(load_settings())
print(json.dumps({"market": inputs.market, "closes": len(inputs.previous_close),
                  "modules": sorted(sys.modules)}))
"""


def run_fresh(script: str, env: dict[str, str]) -> dict[str, Any]:
    """What ``script`` printed last (JSON) in a fresh interpreter."""
    # The deployment's settings are ``env`` alone (none of this process's ETF_ settings).
    plain = {k: v for k, v in os.environ.items() if not k.startswith("ETF_")}
    out = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env={**plain, **env},
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    found: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return found


def loaded_modules(env: dict[str, str]) -> tuple[list[str], set[str]]:
    """The jobs resolved and every module a fresh interpreter holds after loading ``defs``."""
    found = run_fresh(LOAD, env)
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


def test_the_intraday_pnl_reads_the_deployment_without_the_code_location(
        tmp_path: Path, shared_data: Path) -> None:
    """The API imports orchestration.intraday on the first intraday request: the deployment's
    strategy, market data and clock come from orchestration.deployment, not from building (or
    importing) the code location's definitions."""
    env = {"ETF_HOME": str(tmp_path / "home"), "ETF_MARKET_DATA__SOURCE": "files",
           "ETF_MARKET_DATA__DATASET": "cn_etf_morphkyan_raw",
           "ETF_MARKET_DATA__FILES_ROOT": str(shared_data / "cn_etf_morphkyan_raw"),
           "ETF_EXECUTION__AS_OF": "2024-03-05",
           "ETF_REDIS_URL": os.environ.get("ETF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3"),
           "ETF_CACHE_SECRET": TEST_CACHE_SECRET}
    found = run_fresh(INTRADAY, env)
    # It did read them: the strategy's market and a close of each fund of the data.
    assert found["market"] == "cn_funds" and found["closes"] > 10
    modules = set(found["modules"])
    assert "orchestration.deployment" in modules
    loaded = sorted(m for m in modules if m == "orchestration.definitions"
                    or m.partition(".")[0] in {"assets", "jobs"} or m in {
                        "orchestration.account_stage", "orchestration.strategy_stage"})
    assert not loaded, f"the intraday P&L imported the code location's {loaded}"


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
    found = run_fresh(GATE, {})
    assert found["var"] > 0
    assert found["scipy_stats"] is False
