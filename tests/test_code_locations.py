"""One module, three code locations (``ETF_CODE_LOCATION``): everything (local development),
or a deployment's research location (etf_rotation) and execution location (etf_execution),
so that the webserver researchers reach serves nothing that sends an order or changes a
control. The daily path across the two runs in tests/test_proxy.py."""

from __future__ import annotations

from collections.abc import Callable

import dagster as dg
import pytest

from orchestration.definitions import build_definitions
from orchestration.settings import Settings, SettingsError

LEDGER = "postgresql+psycopg://unused@127.0.0.1:1/unused"   # not connected to at load time
# What sends orders, changes a control or decides a signal.
DESK_JOBS = {"execution_job", "kill_switch_job", "supersede_signal_job", "approval_job",
             "end_of_day_job"}
DESK_ASSETS = {"approved_signal", "portfolio_risk", "positions_report", "risk_compliance_report"}
DESK_SENSORS = {"approved_signal_sensor", "stalled_execution_sensor", "approval_after_daily",
                "intraday_risk_sensor", "risk_breach_alert_sensor"}


def _contents(defs: dg.Definitions) -> tuple[set[str], set[str], set[str], set[str]]:
    repo = defs.get_repository_def()
    jobs = {j.name for j in repo.get_all_jobs() if not j.name.startswith("__")}
    graph = repo.asset_graph
    executable = {k.to_user_string() for k in graph.executable_asset_keys}
    external = {k.to_user_string() for k in graph.get_all_asset_keys()} - executable
    return jobs, executable, external, {s.name for s in repo.sensor_defs}


def _location(make_settings: Callable[..., Settings], part: str) -> dg.Definitions:
    return build_definitions(make_settings(postgres_url=LEDGER, code_location=part))


def test_the_research_location_serves_nothing_of_the_desk(make_settings) -> None:
    jobs, executable, external, sensors = _contents(_location(make_settings, "research"))
    assert {"daily_job", "market_data_job", "research_job", "walk_forward_job",
            "portfolio_job"} <= jobs
    assert not jobs & DESK_JOBS
    assert not (executable | external) & DESK_ASSETS
    assert not sensors & DESK_SENSORS
    # The only asset it does not materialise: the strategy files as read (shown, not run).
    assert "target_portfolio" in executable and external == {"strategy_files"}


def test_the_execution_location_serves_the_desk_on_the_research_assets(make_settings) -> None:
    defs = _location(make_settings, "execution")
    jobs, executable, external, sensors = _contents(defs)
    assert jobs == DESK_JOBS
    assert executable == DESK_ASSETS
    # The inputs of the gate and of the risk report, stored by the research location, with
    # their partitions.
    assert external == {"target_portfolio", "adjusted_bars", "oos_backtest"}
    graph = defs.get_repository_def().asset_graph
    assert graph.get(dg.AssetKey("adjusted_bars")).partitions_def is not None
    assert sensors == DESK_SENSORS | {"run_failure_alert_sensor"}
    approval = defs.resolve_job_def("approval_job")
    assert {k.to_user_string() for k in approval.asset_layer.executable_asset_keys} \
        == {"approved_signal"}


def test_a_vnpy_account_closes_its_slices_from_the_execution_location(make_settings) -> None:
    """On the vn.py venue the execution location adds the slice-end job and its sensor,
    running by default as the other execution sensors; a paper deployment has neither
    (DESK_JOBS and DESK_SENSORS above are exact), and the research location never."""
    vnpy = {"venue": "vnpy", "vnpy": {"rep_port": 3014, "pub_port": 3015}}
    defs = build_definitions(make_settings(postgres_url=LEDGER, code_location="execution",
                                           execution=vnpy))
    jobs, _, _, sensors = _contents(defs)
    assert jobs == DESK_JOBS | {"slice_end_job"}
    assert sensors == DESK_SENSORS | {"run_failure_alert_sensor", "slice_end_sensor"}
    driver = defs.resolve_sensor_def("slice_end_sensor")
    assert driver.job_name == "slice_end_job" and driver.minimum_interval_seconds == 30
    assert driver.default_status == defs.resolve_sensor_def(
        "approved_signal_sensor").default_status == dg.DefaultSensorStatus.RUNNING
    research = build_definitions(make_settings(postgres_url=LEDGER, code_location="research",
                                               execution=vnpy))
    jobs, _, _, sensors = _contents(research)
    assert "slice_end_job" not in jobs and "slice_end_sensor" not in sensors


def test_one_location_holds_everything_by_default(make_settings) -> None:
    jobs, executable, external, sensors = _contents(_location(make_settings, "all"))
    assert jobs >= DESK_JOBS - {"approval_job"} and "approval_job" not in jobs
    assert executable >= DESK_ASSETS and external == {"strategy_files"}
    assert "approval_after_daily" not in sensors
    daily = _location(make_settings, "all").resolve_job_def("daily_job")
    assert "approved_signal" in {k.to_user_string()
                                 for k in daily.asset_layer.executable_asset_keys}


def test_an_execution_location_without_the_ledger_says_what_it_needs(make_settings) -> None:
    with pytest.raises(SettingsError, match=r"ETF_CODE_LOCATION.*ETF_POSTGRES_URL"):
        build_definitions(make_settings(code_location="execution"))


def test_an_unknown_location_is_refused(make_settings) -> None:
    with pytest.raises(SettingsError, match="code_location"):
        make_settings(code_location="desk")
