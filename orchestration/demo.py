"""`make demo`: the whole chain on the embedded default, then a summary of what it produced.

Local SQLite Dagster instance under ``<home>/dagster`` (the one `make dev` shows), Parquet under
``<home>/storage``, the built-in generated sample market, and the ledger and paper venue on an
embedded PostgreSQL under ``<home>/postgres`` (orchestration/embedded_pg.py), started for the
demo and stopped after it; ``home`` is ``.etf_home`` or ``ETF_HOME``. With ``ETF_POSTGRES_URL``
the ledger is on that server instead. No network.

The chain is replayed over the sample's last two sessions with the clock pinned to each evening
in turn: on the signal day D (the session before the data's last) market data, research,
walk-forward and the target portfolio run, the target is approved, ``approved_signal_sensor``
asks for ``execution_job`` and it sends the orders; on the next session the paper venue fills
them at the open (a bar the sample has) and ``positions_report`` sets paper against backtest.
``ETF_EXECUTION__AS_OF`` picks another D (a session before the data's last).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

import dagster as dg
import pandas as pd

from assets.research import ranked_by_direction, screen_outcome
from assets.walk_forward import fund_names, in_and_out_of_sample, screen_summary
from orchestration.definitions import build_definitions
from orchestration.deployment import strategy_for
from orchestration.embedded_pg import EmbeddedPostgresError, embedded_ledger
from orchestration.instance import prepare_local_instance
from orchestration.runs import full_history, rebuild_research, run_range, window_keys
from orchestration.settings import Settings, SettingsError, load_settings
from resources.deployment import deployed
from resources.market_data import MarketDataResource
from resources.parquet_io import PartitionedParquetIOManager
from resources.tracking import MlflowTracking
from trading.ledger import Ledger

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# The tags the sensor daemon gives the runs it launches: with them on the demo's execution run,
# the daemon of `make dev` sees the signal's run key as used and launches nothing again.
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
SENSOR = "approved_signal_sensor"


@dataclass(frozen=True)
class DemoDays:
    """The signal day D and the session after it, whose open fills D's orders."""

    start: str
    signal: str
    fill: str


def main() -> int:
    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    settings = load_settings()
    home = prepare_local_instance(settings)
    print(f"instance    : {home} (SQLite)")
    if settings.postgres_url:
        print("ledger      : ETF_POSTGRES_URL")
        return _demo(settings, ui_hint="make dev  (with the same ETF_POSTGRES_URL)")
    try:
        with embedded_ledger(settings.data_home) as server:
            print(f"ledger      : embedded PostgreSQL {server.url(hide_password=True)}, "
                  f"data in {server.data}")
            status = _demo(settings.model_copy(update={"postgres_url": server.url()}),
                           ui_hint=_embedded_ui_hint(server.data))
        print("ledger      : embedded PostgreSQL stopped")
        return status
    except EmbeddedPostgresError as exc:
        print(f"embedded PostgreSQL: {exc}", file=sys.stderr)
        return 1


def _embedded_ui_hint(data: object) -> str:
    return (f"make dev  (same instance; it starts the embedded PostgreSQL on {data} again, "
            "hands its URL to the UI as ETF_POSTGRES_URL and stops it when the UI stops)")


def _demo(settings: Settings, *, ui_hint: str) -> int:
    defs = build_definitions(settings)
    market_data = deployed(defs, "market_data", MarketDataResource)
    days = demo_days(market_data, full_history(defs), settings.execution.as_of)
    print(f"market data : {market_data.label}")
    print(f"storage     : {settings.resolved_storage_root}")
    print(f"clock       : the evening of {days.signal} (signal day), then of {days.fill} "
          "(the next session, whose open fills the orders)")
    at_signal = _at(settings, days.signal)
    with session_clock(at_signal, days.signal):
        status = _research(at_signal, days)
        if status:
            return status
    _summarise_research(at_signal, days.signal)
    with session_clock(at_signal, days.signal):
        signal_id = _approve_and_execute(at_signal)
    if signal_id is None:
        return 1
    at_fill = _at(settings, days.fill)
    with session_clock(at_fill, days.fill):
        status = _next_session(at_fill, days, signal_id)
    print(f"\nMLflow      : {settings.resolved_mlflow_uri} "
          f"(experiment {strategy_for(settings).experiment_name})")
    print(f"Inspect it in the UI: {ui_hint}")
    _print_links(settings)
    return status


def demo_days(market_data: MarketDataResource, history: tuple[str, str],
              as_of: str | None) -> DemoDays:
    """D = ``as_of`` or the session before the data's last; the fill session is the one after
    D and must have a bar (the paper venue fills at its open)."""
    start, last = history
    calendar = market_data.calendar
    signal = pd.Timestamp(as_of) if as_of else calendar.previous_session(last)
    if not calendar.is_session(signal) or not pd.Timestamp(start) < signal < pd.Timestamp(last):
        raise SettingsError(
            f"setting execution.as_of [env ETF_EXECUTION__AS_OF]={as_of!r}: the demo's signal "
            f"day must be a session after {start} and before {last}, the data's last session "
            "(its orders fill at the next session's open, which needs a bar)")
    fill = calendar.offset(signal, 1)
    return DemoDays(start=start, signal=f"{signal:%Y-%m-%d}", fill=f"{fill:%Y-%m-%d}")


def _at(settings: Settings, day: str) -> Settings:
    """``settings`` with the execution clock pinned to the evening of ``day``."""
    execution = settings.execution.model_copy(update={"as_of": day})
    return settings.model_copy(update={"execution": execution})


@contextmanager
def session_clock(settings: Settings, day: str) -> Iterator[None]:
    """Dagster's partitions as they are on the evening of ``day``: they follow the wall clock
    (and would include the later sessions of a historical sample), the execution clock is pinned
    by ``execution.as_of``; both must say the same day."""
    evening = pd.Timestamp(f"{day} 23:59").tz_localize(settings.schedule_timezone)
    with dg.partition_loading_context(effective_dt=evening.to_pydatetime()):
        yield


def _research(settings: Settings, days: DemoDays) -> int:
    defs = build_definitions(settings)
    print(f"running     : market_data_job over {days.start} .. {days.signal} as one run")
    started = time.perf_counter()
    with dg.DagsterInstance.get() as instance:
        result = run_range(defs, instance, days.start, days.signal, log_level="INFO")
        print(f"run         : {result.run_id} {'succeeded' if result.success else 'FAILED'} "
              f"in {time.perf_counter() - started:.1f}s")
        _print_checks(result)
        if not result.success:
            _print_failures(result)
            return 1
        print("running     : research_job, walk_forward_job (every window, one run), "
              "portfolio_job")
        started = time.perf_counter()
        for research in rebuild_research(defs, instance):
            ok = "succeeded" if research.success else "FAILED"
            print(f"  {research.dagster_run.job_name:<17}: {ok}")
            if not research.success:
                _print_failures(research)
                return 1
        print(f"research    : {time.perf_counter() - started:.1f}s")
    return 0


def _print_checks(result: dg.ExecuteInProcessResult) -> None:
    checks = [e.asset_check_evaluation_data for e in result.all_events
              if e.event_type_value == "ASSET_CHECK_EVALUATION"]
    print(f"checks      : {sum(1 for c in checks if c.passed)}/{len(checks)} passed")
    for c in checks:
        if not c.passed:
            print(f"  FAILED {c.check_name}: {c.metadata.get('first_failure')}")


def _summarise_research(settings: Settings, end: str) -> None:
    defs = build_definitions(settings)
    io = deployed(defs, "io_manager", PartitionedParquetIOManager)
    pd.set_option("display.width", 160)
    for name in ("raw_bars", "adjusted_bars", "cross_sections"):
        stored = io.stored_partitions(dg.AssetKey(name))
        print(f"{name:<14}: {len(stored)} partitions stored in {io.base_path}/{name}")
    last = io.load_partitions(dg.AssetKey("cross_sections"), [end])
    print(f"\ncross-section of {end} ({len(last)} eligible funds):")
    print(last.drop(columns=["date"]).round(4).to_string(index=False))
    _summarise_screening(io, strategy_for(settings).screening_horizon)
    _summarise_walk_forward(settings, defs, io)


def _summarise_screening(io: PartitionedParquetIOManager, horizon: int) -> None:
    ic = pd.read_parquet(io.path_for(dg.AssetKey("factor_ic")))
    top = ranked_by_direction(ic, horizon).head(8)
    print(f"\nfactor screening, horizon {horizon} sessions (T1_OPEN), best ICIR in the "
          "declared direction first:")
    print(top[["factor", "direction", "directed_icir", "mean_ic", "t_nw", "p_value",
               "hit_rate"]].round(4).to_string(index=False))
    reasons = pd.read_parquet(io.path_for(dg.AssetKey("selected_factors")))
    chosen = reasons.loc[reasons["selected"], "factor"].tolist()
    print(f"full-history screen: {screen_outcome(chosen, len(reasons))}")


def _summarise_walk_forward(settings: Settings, defs: dg.Definitions,
                            io: PartitionedParquetIOManager) -> None:
    keys = window_keys(defs)
    results = io.load_partitions(dg.AssetKey("wfo_results"), keys)
    screens = io.load_partitions(dg.AssetKey("wfo_windows"), keys)
    min_factors = strategy_for(settings).search.min_factors
    print(f"\nwalk-forward: {len(results)} windows; each window screens its own in-sample "
          "sessions:")
    print(screen_summary(screens, min_factors)[["window", "passed", "filled_up", "chosen"]]
          .to_string(index=False))
    print("\nfrozen winner per window, in-sample beside out-of-sample (Sharpe; annualised "
          "return %):")
    print(in_and_out_of_sample(results).drop(columns=["out_of_sample"]).to_string(index=False))
    daily = pd.read_parquet(io.path_for(dg.AssetKey("oos_backtest")))
    first, last_row = daily.iloc[0], daily.iloc[-1]
    print(f"\nstitched out-of-sample backtest {first['date']:%Y-%m-%d} .. "
          f"{last_row['date']:%Y-%m-%d}: equity {first['equity']:,.0f} -> "
          f"{last_row['equity']:,.0f} {_currency(defs)}, max drawdown "
          f"{daily['drawdown'].min():.2%}")
    for column in [c for c in daily.columns if c.startswith("benchmark_")]:
        print(f"  {column.removeprefix('benchmark_'):<22}: {last_row[column] - 1:+.2%}")
    target = pd.read_parquet(io.path_for(dg.AssetKey("target_portfolio")))
    held = target.loc[target["weight"] > 0, ["symbol", "weight", "reason"]]
    names = fund_names(deployed(defs, "market_data", MarketDataResource))
    held.insert(1, "name", held["symbol"].map(names).fillna(""))
    print(f"\ntarget portfolio decided at the close of {target['date'].iloc[0]:%Y-%m-%d} for "
          f"the next open (window {target['window'].iloc[0]}):")
    print(held.assign(weight=held["weight"].map("{:.2%}".format)).to_string(index=False))
    print(f"cash: {1 - held['weight'].sum():.2%}")


def _approve_and_execute(settings: Settings) -> str | None:
    """approved_signal, then the sensor's run request, then execution_job; the signal id, or
    None when any of them did not go through."""
    defs = build_definitions(settings)
    with dg.DagsterInstance.get() as instance:
        approval = _materialize(defs, instance, "approved_signal")
        if not approval.success:
            _print_failures(approval)
            return None
        meta = approval.asset_materializations_for_node("approved_signal")[-1].metadata
        signal_id, status = str(meta["signal_id"].value), str(meta["status"].value)
        print(f"\nsignal      : {signal_id} {status.upper()} (approved_signal, clock "
              f"{settings.execution.as_of})")
        if status != "approved":
            print(meta["reasons"].value)
            return None
        _print_signal(settings, signal_id)
        if not _launch_execution(defs, instance, signal_id):
            return None
    _print_orders(settings, signal_id)
    return signal_id


def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str
                 ) -> dg.ExecuteInProcessResult:
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, run_config=QUIET, asset_selection=[dg.AssetKey(asset)],
        raise_on_error=False)


def _launch_execution(defs: dg.Definitions, instance: dg.DagsterInstance,
                      signal_id: str) -> bool:
    """Evaluate ``approved_signal_sensor`` as the daemon would and run what it asks for
    (in process); a run key already used launches nothing, as under the daemon."""
    sensor = defs.resolve_sensor_def(SENSOR)
    with dg.build_sensor_context(instance=instance, definitions=defs,
                                 resources={"ledger": defs.resources["ledger"]}) as tick:
        requests = [r for r in sensor(tick).run_requests if r.run_key == signal_id]
    if not requests:
        print(f"sensor      : {SENSOR} asked for no run for {signal_id}")
        return False
    request = requests[-1]
    tags = {**request.tags, RUN_KEY_TAG: signal_id, SENSOR_NAME_TAG: SENSOR}
    earlier = instance.get_runs(filters=dg.RunsFilter(
        tags={RUN_KEY_TAG: signal_id, SENSOR_NAME_TAG: SENSOR}))
    if earlier:
        print(f"sensor      : {SENSOR} → run key {signal_id} already used by run "
              f"{earlier[0].run_id} ({earlier[0].status.value}): nothing launched")
        return True
    run = defs.resolve_job_def("execution_job").execute_in_process(
        instance=instance, run_config={**QUIET, **request.run_config}, tags=tags,
        raise_on_error=False)
    print(f"sensor      : {SENSOR} → execution_job run {run.run_id} "
          f"{'succeeded' if run.success else 'FAILED'}")
    if not run.success:
        _print_failures(run)
    return run.success


def _print_signal(settings: Settings, signal_id: str) -> None:
    ledger = Ledger(str(settings.postgres_url))
    try:
        record = ledger.signal(signal_id)
    finally:
        ledger.dispose()
    assert record is not None, f"approved signal {signal_id} is not in the ledger"
    weights = ", ".join(f"{s} {w:.2%}" for s, w in sorted(record.weights.items()))
    print(f"weights     : {weights}")


def _print_orders(settings: Settings, signal_id: str) -> None:
    ledger = Ledger(str(settings.postgres_url))
    try:
        orders = ledger.orders(signal_id=signal_id)
    finally:
        ledger.dispose()
    print(f"orders      : {len(orders)} in the ledger, sent to the paper venue for the next "
          "session's open")
    for o in orders:
        print(f"  {o.side:<4} {o.symbol} {o.quantity:>9,d} @ ref {o.reference_price:.3f} "
              f"for {o.session} {o.status}")


def _next_session(settings: Settings, days: DemoDays, signal_id: str) -> int:
    """The clock moves to the fill session: its bars are stored (the daily market data run),
    then positions_report reconciles the venue's fills and marks the account."""
    defs = build_definitions(settings)
    partitions = defs.resolve_job_def("market_data_job").partitions_def
    assert partitions is not None
    keys = [k for k in partitions.get_partition_keys() if days.signal < k <= days.fill]
    print(f"\nnext session: {days.fill}; market_data_job over {keys[0]} .. {keys[-1]}, "
          "then positions_report")
    with dg.DagsterInstance.get() as instance:
        market = run_range(defs, instance, keys[0], keys[-1], log_level="WARNING")
        if not market.success:
            _print_failures(market)
            return 1
        report = _materialize(defs, instance, "positions_report")
    _print_fills(settings, signal_id)
    _print_report(report, _currency(defs))
    if not report.success:
        _print_failures(report)
        return 1
    return 0


def _print_fills(settings: Settings, signal_id: str) -> None:
    ledger = Ledger(str(settings.postgres_url))
    try:
        fills = ledger.fills(settings.execution.account_id, signal_id=signal_id)
    finally:
        ledger.dispose()
    print(f"fills       : {len(fills)} at the open of the next session (paper venue, "
          "slippage and commission as in the backtest)")
    for f in fills:
        print(f"  {f.side:<4} {f.symbol} {f.quantity:>9,d} @ {f.price:.4f} "
              f"commission {f.commission:.2f} on {f.session}")


def _currency(defs: dg.Definitions) -> str:
    return deployed(defs, "market_data", MarketDataResource).market().currency


def _print_report(report: dg.ExecuteInProcessResult, currency: str) -> None:
    done = report.asset_materializations_for_node("positions_report")
    if done:
        meta = {k: v.value for k, v in done[-1].metadata.items()}
        print(f"account     : equity {meta['equity']:,.2f} {currency} (cash {meta['cash']:,.2f}), "
              f"P&L {meta['pnl']:+,.2f} on {meta['initial_cash']:,.0f}")
        rows = pd.DataFrame([r.data for r in done[-1].metadata["positions"].value.records])
        print(f"positions   :\n{rows.to_string(index=False) if len(rows) else 'none'}")
    for check in report.get_asset_check_evaluations():
        figures = {k: v.value for k, v in check.metadata.items()}
        if "max_rel_diff" in figures:
            print(f"parity      : paper vs backtest max relative difference "
                  f"{figures['max_rel_diff']:.4%} over {figures['sessions']} session(s), "
                  f"tolerance {figures['tolerance']:.2%}: "
                  f"{'passed' if check.passed else 'FAILED'} ({check.check_name})")
        else:
            print(f"check       : {check.check_name} {'passed' if check.passed else 'FAILED'}")


def _print_links(settings: Settings) -> None:
    """Where `make dev` shows what the demo made (the UIs at the ports of the settings)."""
    defs = build_definitions(settings)
    tracking = deployed(defs, "tracking", MlflowTracking)
    experiment = tracking.experiment(strategy_for(settings).experiment_name, create=False)
    if settings.resolved_dagster_url:
        print(f"  Dagster   : {settings.resolved_dagster_url}/assets")
        print(f"  lineage   : {lineage_url(settings.resolved_dagster_url, defs)}")
    if experiment is not None and tracking.experiment_url(experiment.experiment_id):
        print(f"  MLflow    : {tracking.experiment_url(experiment.experiment_id)}")


def lineage_url(dagster_url: str, defs: dg.Definitions) -> str:
    """The global lineage page with every asset group expanded (the UI collapses them all
    when it opens on more than one; ``expanded`` lists the groups it shows open)."""
    groups = sorted({group for asset in defs.assets or []
                     if isinstance(asset, dg.AssetsDefinition)
                     for group in asset.group_names_by_key.values()})
    expanded = ",".join(f"global@global:{g}" for g in groups)
    return f"{dagster_url.rstrip('/')}/asset-groups?expanded={quote(expanded, safe='@:,')}"


def _print_failures(result: dg.ExecuteInProcessResult) -> None:
    for event in result.all_events:
        if event.event_type_value == "STEP_FAILURE":
            print(event.message)


if __name__ == "__main__":
    sys.exit(main())
