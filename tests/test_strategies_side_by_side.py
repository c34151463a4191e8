"""Several strategies in one deployment (issue 15 item 1), through Dagster on PostgreSQL: each
strategy's research stage comes from the same factory (its own group, key prefix, jobs, weekly
rebuild and MLflow experiment); the market data and the factor panel are computed once.

On the built-in sample market shortened to 2019–2020, with short windows and a small search."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import numpy as np
import pandas as pd
import pytest
import yaml
from mlflow import MlflowClient

from assets.code_version import VERSION_LENGTH
from assets.walk_forward import VBT_CHECK
from orchestration.definitions import build_definitions, deployment_strategies
from orchestration.runs import full_history, rebuild_research, run_range, window_keys
from orchestration.settings import Settings, SettingsError
from resources.deployment import deployed
from resources.parquet_io import PartitionedParquetIOManager
from rotation.config_paths import STRATEGY_CONFIG_DIR
from trading.account import Allocation
from trading.ledger import Ledger
from trading.models import SignalStatus

SAMPLE = "sample_first"
SECOND = "sample_momentum"
FIRST_FACTORS = ["momentum_20", "momentum_60", "volatility_20", "sharpe_20", "rsi_14"]
SECOND_FACTORS = ["momentum_20", "momentum_60", "momentum_120", "volatility_20", "calmar_60"]
MOMENTUM_40 = {"name": "momentum_40", "kernel": "momentum", "params": {"window": 40},
               "unit": "return", "direction": 1}
# A small search (the strategies' research, not the search, is under test here).
SMALL = {"search": {"min_factors": 2, "max_factors": 2, "top_n": [2, 3], "rebalance_every": [5],
                    "weightings": ["equal"], "finalists": 3},
         "wfo": {"in_sample": 120, "out_of_sample": 40, "step": 40, "mode": "rolling"}}


def _strategy(name: str, **fields: object) -> dict:
    data = yaml.safe_load((STRATEGY_CONFIG_DIR / "etf_rotation_sample.yaml").read_text())
    data.update({"name": name, **SMALL, **fields})
    return data


def _folder(root: Path, second: dict | None = None) -> Path:
    """A strategy folder: two strategies on the sample data (the first is the deployment's)."""
    folder = root / "strategies"
    folder.mkdir(exist_ok=True)
    for name, data in ((SAMPLE, _strategy(SAMPLE, factors=FIRST_FACTORS)),
                       (SECOND, _strategy(SECOND, **{"factors": [*SECOND_FACTORS, MOMENTUM_40],
                                                     **(second or {})}))):
        (folder / f"{name}.yaml").write_text(yaml.safe_dump(data))
    return folder


def _settings(home: Path, second: dict | None = None) -> Settings:
    return Settings(home=home, strategy=SAMPLE, strategy_dir=_folder(home, second),
                    market_data={"sample_end": "2020-12-31"})


@pytest.fixture(scope="module")
def two(tmp_path_factory: pytest.TempPathFactory, pg_instance: dg.DagsterInstance):
    home = tmp_path_factory.mktemp("two_strategies")
    settings = _settings(home)
    defs = build_definitions(settings)
    start, end = full_history(defs)
    assert run_range(defs, pg_instance, start, end, log_level="WARNING").success
    first = rebuild_research(defs, pg_instance)
    second = rebuild_research(defs, pg_instance, prefix=f"{SECOND}_")
    compared = defs.resolve_job_def("strategy_comparison_job").execute_in_process(
        instance=pg_instance, raise_on_error=False)
    return settings, defs, first, [*second, compared]


def _materialized(results: list[dg.ExecuteInProcessResult]) -> set[str]:
    return {e.asset_key.to_user_string() for r in results
            for e in r.get_asset_materialization_events() if e.asset_key}


def test_each_strategy_is_its_own_group_jobs_and_schedule(two) -> None:
    _, defs, _, _ = two
    graph = defs.resolve_asset_graph()
    for asset in ("factor_ic", "selected_factors", "wfo_windows", "wfo_results",
                  "oos_backtest", "oos_positions", "target_portfolio"):
        assert graph.get(dg.AssetKey(asset)).group_name != SECOND
        assert graph.get(dg.AssetKey([SECOND, asset])).group_name == SECOND
    assert dg.AssetCheckKey(dg.AssetKey([SECOND, "wfo_results"]), VBT_CHECK) in \
        graph.asset_check_keys
    # Its window runs read the shared panels, and its inputs from itself are its own.
    parents = graph.get(dg.AssetKey([SECOND, "wfo_results"])).parent_keys
    assert parents == {dg.AssetKey("adjusted_bars"), dg.AssetKey("factors"),
                       dg.AssetKey([SECOND, "wfo_windows"])}
    for job in ("research_job", "walk_forward_job", "portfolio_job"):
        assert defs.resolve_job_def(f"{SECOND}_{job}") is not None
    schedule = defs.resolve_schedule_def(f"{SECOND}_weekly_research")
    assert schedule.job_name == f"{SECOND}_research_job"
    assert defs.resolve_sensor_def(f"{SECOND}_research_to_walk_forward") is not None
    # Its own windows: its longest factor window (its warm-up) is not the first's.
    assert window_keys(defs, f"{SECOND}_")[0] > window_keys(defs)[0]
    # Its code versions follow its own configuration; the comparison's follows its code.
    for asset in ("wfo_results", "target_portfolio"):
        assert graph.get(dg.AssetKey([SECOND, asset])).code_version != \
            graph.get(dg.AssetKey(asset)).code_version
    comparison = graph.get(dg.AssetKey("strategy_comparison"))
    assert len(str(comparison.code_version)) == VERSION_LENGTH
    assert comparison.parent_keys == {dg.AssetKey("oos_backtest"),
                                      dg.AssetKey([SECOND, "oos_backtest"])}


def test_both_strategies_run_and_the_shared_stages_run_once(two, pg_instance) -> None:
    _, _, first, second = two
    assert all(r.success for r in first + second)
    assert "factors" in _materialized(first)
    ran = _materialized(second)
    assert "factors" not in ran and "adjusted_bars" not in ran
    assert ran == {f"{SECOND}/{a}" for a in ("factor_ic", "factor_ic_daily", "selected_factors",
                                             "wfo_windows", "wfo_results", "oos_backtest",
                                             "oos_positions", "target_portfolio")
                   } | {"strategy_comparison"}


def test_the_factor_panel_is_the_union_and_each_screens_its_own(two) -> None:
    settings, defs, _, _ = two
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    panel = set(pd.read_parquet(io.path_for(dg.AssetKey("factors")))["factor"].unique())
    primary = deployment_strategies(settings).strategy
    assert panel == {*FIRST_FACTORS, *SECOND_FACTORS, "momentum_40"}
    assert {s.name for s in primary.factor_specs} == set(FIRST_FACTORS)
    screened = pd.read_parquet(io.path_for(dg.AssetKey([SECOND, "factor_ic"])))
    assert set(screened["factor"]) == {*SECOND_FACTORS, "momentum_40"}
    target = pd.read_parquet(io.path_for(dg.AssetKey([SECOND, "target_portfolio"])))
    assert set(target["strategy"]) == {SECOND}
    assert target["weight"].ge(0).all() and float(target["weight"].sum()) <= 1 + 1e-9


def test_each_strategy_has_its_own_experiment(two) -> None:
    settings, _, _, _ = two
    client = MlflowClient(settings.resolved_mlflow_uri)
    for name in (SAMPLE, SECOND):
        experiment = client.get_experiment_by_name(name)
        assert experiment is not None, name
        runs = client.search_runs([experiment.experiment_id])
        assert any(r.info.run_name == "oos backtest" for r in runs), name


def test_the_strategies_beside_are_chosen_by_setting(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    assert [s.name for s in deployment_strategies(settings).others] == [SECOND]
    alone = settings.model_copy(update={"strategies": []})
    assert deployment_strategies(alone).others == []
    with pytest.raises(SettingsError, match=r"strategies \[env ETF_STRATEGIES\]='nope': no "
                                            r"strategy file nope\.yaml"):
        deployment_strategies(settings.model_copy(update={"strategies": ["nope"]}))


def test_two_strategies_load_as_a_code_location(tmp_path: Path) -> None:
    """Every job a code location builds on load, Dagster's implicit one over all assets
    included: the strategies' ops never share a name."""
    defs = build_definitions(_settings(tmp_path))
    dg.Definitions.validate_loadable(defs)
    graph = defs.resolve_asset_graph()
    assert graph.assets_def_for_key(dg.AssetKey([SECOND, "oos_backtest"])).node_def.name == \
        f"{SECOND}__oos_backtest"


def test_one_factor_name_computed_two_ways_is_refused(tmp_path: Path) -> None:
    clash = {"name": "momentum_20", "kernel": "momentum", "params": {"window": 30},
             "unit": "return", "direction": 1}
    with pytest.raises(SettingsError, match="factor 'momentum_20' is defined differently"):
        build_definitions(_settings(tmp_path, second={"factors": [clash, "momentum_60"]}))


def test_the_comparison_sets_every_strategy_side_by_side(two, pg_instance) -> None:
    settings, defs, _, _ = two
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    curves = {name: pd.read_parquet(io.path_for(key)).set_index("date")["equity"]
              for name, key in ((SAMPLE, dg.AssetKey("oos_backtest")),
                                (SECOND, dg.AssetKey([SECOND, "oos_backtest"])))}
    frame = pd.read_parquet(io.path_for(dg.AssetKey("strategy_comparison")))
    wide = frame.pivot(index="date", columns="strategy", values="equity")
    assert list(wide.columns) == sorted([SAMPLE, SECOND])
    common = curves[SAMPLE].index.intersection(curves[SECOND].index)
    for name, curve in curves.items():   # each curve rebased to 1 on the common sessions
        expected = curve.loc[common] / curve.loc[common[0]]
        assert np.allclose(wide[name].to_numpy(), expected.to_numpy(), rtol=1e-12)
    returns = wide.pct_change().iloc[1:]
    record = pg_instance.get_latest_materialization_event(dg.AssetKey("strategy_comparison"))
    meta = record.asset_materialization.metadata  # type: ignore[union-attr]
    rows = {r.data["strategy"]: r.data for r in meta["return_correlation"].value.records}
    assert rows[SAMPLE][SECOND] == pytest.approx(returns.corr().loc[SAMPLE, SECOND], abs=5e-4)
    assert {r.data["strategy"] for r in meta["metrics"].value.records} == {SAMPLE, SECOND}
    assert "sessions all strategies cover" in meta["common_span"].value
    client = MlflowClient(settings.resolved_mlflow_uri)
    experiment = client.get_experiment_by_name("strategy_comparison")
    assert experiment is not None
    [run] = client.search_runs([experiment.experiment_id])
    assert f"{SECOND}.sharpe" in run.data.metrics and f"{SAMPLE}.sharpe" in run.data.metrics
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "plots")}
    assert artifacts == {"plots/comparison.png"}


def test_the_strategy_files_show_in_the_ui(two) -> None:
    _, defs, _, _ = two
    spec = defs.resolve_assets_def("strategy_files").specs_by_key[dg.AssetKey("strategy_files")]
    assert spec.metadata["running"].value == [SAMPLE, SECOND]
    assert spec.metadata["refused"].value == 0
    states = {r.data["file"]: r.data["state"] for r in spec.metadata["files"].records}
    assert states == {SAMPLE: "runs: the deployment's strategy", SECOND: "runs beside it"}


# -- one account netting both strategies (issue 15 item 3) ------------------------------------

SIGNAL_DAY = "2020-12-31"


@pytest.fixture(scope="module")
def netting(two, pg_instance: dg.DagsterInstance):
    """The deployment above with a ledger and its account trading both strategies by inverse
    volatility: the daily path for the last session, up to the approved signal."""
    from conftest import PG_SERVER, scratch_database

    settings = two[0]
    with scratch_database("etf_netting_ledger") as name:
        url = f"postgresql+psycopg://{PG_SERVER}/{name}"
        netted = settings.model_copy(update={
            "postgres_url": url,
            "execution": settings.execution.model_copy(update={
                "as_of": SIGNAL_DAY, "allocation": Allocation(
                    strategies=(SAMPLE, SECOND), method="inverse_volatility")})})
        defs = build_definitions(netted)
        daily = defs.resolve_job_def("daily_job").execute_in_process(
            instance=pg_instance, partition_key=SIGNAL_DAY, raise_on_error=False)
        ledger = Ledger(url)
        try:
            yield defs, daily, ledger
        finally:
            ledger.dispose()


def test_the_daily_path_nets_the_account_before_its_gate(netting) -> None:
    defs, daily, _ = netting
    selected = {k.to_user_string() for k in
                defs.resolve_job_def("daily_job").asset_layer.executable_asset_keys}
    assert {"target_portfolio", f"{SECOND}/target_portfolio", "account_allocation",
            "account_target", "approved_signal"} <= selected
    assert daily.success


def test_the_account_target_is_the_allocated_sum_of_the_strategies(netting) -> None:
    defs, _, _ = netting
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    shares = pd.read_parquet(io.path_for(dg.AssetKey("account_allocation"))
                             ).set_index("strategy")["weight"]
    curves = pd.DataFrame({
        name: pd.read_parquet(io.path_for(key)).set_index("date")["equity"]
        for name, key in ((SAMPLE, dg.AssetKey("oos_backtest")),
                          (SECOND, dg.AssetKey([SECOND, "oos_backtest"])))})
    inverse = 1 / curves.pct_change().dropna().tail(250).std(ddof=1)
    assert np.allclose(shares.loc[inverse.index], inverse / inverse.sum(), rtol=1e-12)
    target = pd.read_parquet(io.path_for(dg.AssetKey("account_target"))).set_index("symbol")
    for name, key in ((SAMPLE, dg.AssetKey("target_portfolio")),
                      (SECOND, dg.AssetKey([SECOND, "target_portfolio"]))):
        own = pd.read_parquet(io.path_for(key)).set_index("symbol")["weight"]
        part = target[f"part:{name}"]
        assert np.allclose(part.reindex(own.index, fill_value=0.0), shares[name] * own)
    assert np.allclose(target["weight"], target[[f"part:{SAMPLE}", f"part:{SECOND}"]].sum(1))
    assert set(target["strategy"]) == {f"{SAMPLE}+{SECOND}"}


def test_the_netted_signal_carries_each_strategys_units(netting) -> None:
    defs, _, ledger = netting
    [signal] = ledger.signals("paper-main")
    assert signal.strategy == f"{SAMPLE}+{SECOND}"
    assert signal.status is SignalStatus.APPROVED, signal.reasons
    parts = ledger.signal_parts(signal.signal_id)
    assert parts is not None
    equity = ledger.initial_cash("paper-main")
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    assert isinstance(io, PartitionedParquetIOManager)
    target = pd.read_parquet(io.path_for(dg.AssetKey("account_target"))).set_index("symbol")
    held = target.loc[target["weight"] > 0]
    assert set(parts.wishes) == set(held.index)
    for fund, row in held.iterrows():
        price = parts.reference_prices[fund]
        for name in (SAMPLE, SECOND):   # each strategy's part of the equity, in whole units
            units = parts.wishes[fund].get(name, 0)
            assert units == int(row[f"part:{name}"] * equity // price), (fund, name)


def test_an_account_allocation_is_checked_against_the_strategies_run(tmp_path: Path) -> None:
    settings = _settings(tmp_path).model_copy(update={
        "postgres_url": "postgresql+psycopg://postgres@127.0.0.1:5432/none"})

    def with_allocation(**fields: object) -> Settings:
        return settings.model_copy(update={"execution": settings.execution.model_copy(
            update={"allocation": Allocation(**fields)})})  # type: ignore[arg-type]

    with pytest.raises(SettingsError, match=r"strategies \['nope'\] are not run"):
        build_definitions(with_allocation(strategies=(SAMPLE, "nope")))
    with pytest.raises(SettingsError, match="an account trading one strategy trades the "
                                            f"deployment's \\({SAMPLE}\\)"):
        build_definitions(with_allocation(strategies=(SECOND,)))
    with pytest.raises(SettingsError, match="weights must name exactly"):
        build_definitions(with_allocation(strategies=(SAMPLE, SECOND), weights={SAMPLE: 1}))


def _with_accounts(settings: Settings, *accounts: dict) -> Settings:
    return settings.model_copy(update={
        "postgres_url": "postgresql+psycopg://postgres@127.0.0.1:5432/none",
        "execution": settings.execution.model_validate(
            {**settings.execution.model_dump(), "accounts": list(accounts)})})


def test_a_further_account_is_its_own_gate_jobs_schedule_and_sensors(tmp_path: Path) -> None:
    settings = _with_accounts(_settings(tmp_path), {
        "account_id": "paper-two", "initial_cash": 250_000.0,
        "allocation": {"strategies": [SECOND]}})
    defs = build_definitions(settings)
    repo = defs.get_repository_def()
    names = {j.name for j in repo.get_all_jobs()} | {s.name for s in repo.sensor_defs} | {
        s.name for s in repo.schedule_defs}
    for name in ("execution_job", "kill_switch_job", "supersede_signal_job", "end_of_day_job",
                 "end_of_day_report", "approved_signal_sensor", "stalled_execution_sensor",
                 "intraday_risk_sensor", "risk_breach_alert_sensor"):
        assert {name, f"paper_two_{name}"} <= names
    graph = defs.resolve_asset_graph()
    gate = graph.get(dg.AssetKey(["paper_two", "approved_signal"]))
    assert gate.group_name == "paper_two"
    assert dg.AssetKey([SECOND, "target_portfolio"]) in gate.parent_keys     # its strategy's
    assert dg.AssetKey([SECOND, "oos_backtest"]) in graph.get(
        dg.AssetKey(["paper_two", "portfolio_risk"])).parent_keys
    assert graph.get(dg.AssetKey("approved_signal")).parent_keys >= {
        dg.AssetKey("target_portfolio")}
    daily = {k.to_user_string() for k in defs.resolve_job_def("daily_job").asset_layer
             .selected_asset_keys}
    assert {"approved_signal", "paper_two/approved_signal", f"{SECOND}/target_portfolio"} <= daily
    end_of_day = {k.to_user_string() for k in defs.resolve_job_def("paper_two_end_of_day_job")
                  .asset_layer.selected_asset_keys}
    assert end_of_day == {"paper_two/positions_report", "paper_two/portfolio_risk",
                          "paper_two/risk_compliance_report"}
    execution = build_definitions(settings.model_copy(update={"code_location": "execution"}))
    approval = {k.to_user_string() for k in execution.resolve_job_def("approval_job")
                .asset_layer.selected_asset_keys}
    assert approval == {"approved_signal", "paper_two/approved_signal"}


def test_further_accounts_are_checked_against_the_deployment(tmp_path: Path) -> None:
    settings = _settings(tmp_path)
    with pytest.raises(SettingsError, match=r"execution\.accounts\[paper-two\].*strategies "
                                            r"\['nope'\] are not run"):
        build_definitions(_with_accounts(settings, {"account_id": "paper-two",
                                                    "allocation": {"strategies": ["nope"]}}))
    with pytest.raises(SettingsError, match=f"account {SECOND} names stage '{SECOND}', which is "
                                            "a strategy or a stage group"):
        build_definitions(_with_accounts(settings, {"account_id": SECOND,
                                                    "allocation": {"strategies": [SAMPLE]}}))
    with pytest.raises(ValueError, match=r"account ids \['paper-main', 'paper_main'\] repeat"):
        _with_accounts(settings, {"account_id": "paper_main",
                                  "allocation": {"strategies": [SAMPLE]}})
    with pytest.raises(ValueError, match=r"allocation\.strategies is empty"):
        _with_accounts(settings, {"account_id": "two", "allocation": {}})
