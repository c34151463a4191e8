"""Signals to execution end to end on real data (cn_etf_morphkyan_raw), on the real PostgreSQL
(Dagster instance, ledger, paper broker) and Redis: approved_signal → sensor → execution_job →
positions_report, and what must not happen twice."""

from __future__ import annotations

import datetime as dt
import math

import dagster as dg
import pandas as pd
import pytest

from orchestration.definitions import (
    build_definitions,
    market_data_resource,
    strategy_for,
)
from resources.deployment import deployed
from resources.market_data import MarketDataResource
from resources.parquet_io import PartitionedParquetIOManager
from rotation.orders import plan_orders
from trading.ledger import Ledger
from trading.models import OrderStatus, Side, SignalStatus
from trading.paper import PaperBroker

QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def materialize(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str
                ) -> dg.ExecuteInProcessResult:
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, run_config=QUIET, asset_selection=[dg.AssetKey(asset)],
        raise_on_error=False)


def materialization(result: dg.ExecuteInProcessResult, asset: str) -> dict[str, object]:
    events = result.asset_materializations_for_node(asset)
    assert events, f"{asset} was not materialised"
    return {k: v.value for k, v in events[-1].metadata.items()}


def evaluate_sensor(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
                    ) -> dg.SensorResult:
    sensor = defs.resolve_sensor_def("approved_signal_sensor")
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                 resources={"ledger": defs.resources["ledger"]}) as context:
        return sensor(context)


def run_request(defs: dg.Definitions, instance: dg.DagsterInstance,
                request: dg.RunRequest) -> dg.ExecuteInProcessResult:
    return defs.resolve_job_def("execution_job").execute_in_process(
        instance=instance, run_config=request.run_config, tags=request.tags,
        raise_on_error=False)


def step_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    assert outputs
    return {k: v.value for k, v in outputs[-1].event_specific_data.metadata.items()}


@pytest.fixture
def stage(execution_market, ledger_url):
    settings = execution_market.settings(ledger_url)
    defs = build_definitions(settings)
    ledger = Ledger(ledger_url)
    yield execution_market, settings, defs, ledger
    ledger.dispose()


def test_signal_to_fills_end_to_end(stage) -> None:
    market, settings, defs, ledger = stage
    instance = market.instance
    account = settings.execution.account_id
    strategy = strategy_for(settings)

    start = evaluate_sensor(defs, instance, None).cursor  # after earlier tests' signals
    approved = materialize(defs, instance, "approved_signal")
    assert approved.success
    meta = materialization(approved, "approved_signal")
    assert meta["status"] == "approved", meta["reasons"]
    signal_id = str(meta["signal_id"])
    assert signal_id.startswith(f"{strategy.name}:{account}:{market.signal_day}:")
    signal = ledger.signal(signal_id)
    assert signal is not None and signal.status is SignalStatus.APPROVED
    target = pd.read_parquet(settings.resolved_storage_root / "target_portfolio.parquet")
    held = target.loc[target["weight"] > 0]
    assert signal.weights == pytest.approx(dict(zip(held["symbol"], held["weight"],
                                                    strict=True)))
    assert [r["action"] for r in ledger.audit_log(entity_id=signal_id)] == ["signal_approved"]

    # The sensor asks for exactly one run, keyed by the signal id.
    first = evaluate_sensor(defs, instance, start)
    assert [r.run_key for r in first.run_requests] == [signal_id]
    request = first.run_requests[0]
    assert request.tags["etf/account"] == account

    executed = run_request(defs, instance, request)
    assert executed.success
    assert step_metadata(executed)["status"] == "completed"

    # Orders: the ledger's empty book diffed against the target at the signal day's raw
    # closes, in 100-unit lots, all submitted; the next open has not printed yet (clock = D).
    bars = deployed(defs, "market_data", MarketDataResource).load(market.signal_day,
                                              market.fill_day).bars
    closes = bars.loc[bars["date"] == pd.Timestamp(market.signal_day)].set_index("symbol")
    costs = strategy.cost_model
    expected = plan_orders(signal.weights, {}, settings.execution.initial_cash,
                           closes["close"].to_dict(), costs=costs)
    orders = ledger.orders(signal_id=signal_id)
    assert [(o.symbol, o.side, o.quantity) for o in orders] == [
        (p.symbol, Side(p.side), p.quantity) for p in expected]
    assert all(o.quantity % 100 == 0 and o.status is OrderStatus.SUBMITTED for o in orders)
    assert all(str(o.session) == market.fill_day for o in orders)
    assert ledger.fills(account) == []

    # Next day: the paper venue fills at the open with slippage and commission.
    next_day = build_definitions(market.settings(ledger.url if hasattr(ledger, "url")
                                                 else settings.postgres_url,
                                                 as_of=market.fill_day))
    report = materialize(next_day, instance, "positions_report")
    assert report.success
    fills = ledger.fills(account)
    opens = bars.loc[bars["date"] == pd.Timestamp(market.fill_day)].set_index("symbol")["open"]
    cash = settings.execution.initial_cash
    assert len(fills) == len(orders)
    for order, fill in zip(orders, sorted(fills, key=lambda f: [o.order_id for o in orders]
                                          .index(f.client_order_id)), strict=True):
        slip = costs.slippage_bps / 1e4
        price = opens[order.symbol] * (1 + slip if order.side is Side.BUY else 1 - slip)
        assert fill.price == pytest.approx(price, rel=1e-9)
        assert fill.quantity == order.quantity
        commission = max(fill.quantity * price * costs.commission_bps / 1e4,
                         costs.min_commission)
        assert fill.commission == pytest.approx(commission, rel=1e-9)
        cash -= fill.quantity * price + commission
    assert ledger.cash(account) == pytest.approx(cash, abs=1e-6)
    assert {s: p.quantity for s, p in ledger.positions(account).items()} == {
        o.symbol: o.quantity for o in orders}
    assert all(o.status is OrderStatus.FILLED for o in ledger.orders(signal_id=signal_id))
    assert cash >= 0

    # Every decision is in the audit log.
    actions = [r["action"] for r in ledger.audit_log()]
    assert actions.count("order_planned") == len(orders)
    assert actions.count("order_submitted") == len(orders)
    assert actions.count("filled") == len(orders)

    # Paper versus backtest, as an asset check.
    check = report.get_asset_check_evaluations()
    parity = [c for c in check if c.check_name == "paper_matches_backtest"]
    assert parity and parity[0].passed, parity[0].metadata if parity else None
    report_meta = materialization(report, "positions_report")
    assert report_meta["fills"] == len(orders)
    assert report_meta["equity"] == pytest.approx(report_meta["cash"] + sum(
        p.quantity * bars.loc[(bars["date"] == pd.Timestamp(market.fill_day))
                              & (bars["symbol"] == s), "close"].iloc[0]
        for s, p in ledger.positions(account).items()), rel=1e-9)

    # The paper venue's own book agrees with the ledger.
    venue = PaperBroker(settings.postgres_url, NoQuotes(), costs)
    assert venue.positions(account) == {s: p.quantity
                                        for s, p in ledger.positions(account).items()}
    assert venue.cash(account) == pytest.approx(ledger.cash(account), abs=1e-6)

    # Replays: the sensor again from its cursor asks for nothing; with a reset cursor it asks
    # for the same run key (Dagster launches nothing new for a used key), and a re-execution
    # (as from the UI) sends no order and books no fill twice.
    assert evaluate_sensor(defs, instance, first.cursor).run_requests == []
    again = evaluate_sensor(defs, instance, None)
    assert {r.run_key for r in again.run_requests} == {signal_id}
    before = (len(ledger.orders(account_id=account)), len(ledger.fills(account)),
              len(ledger.audit_log()))
    rerun = run_request(next_day, instance, again.run_requests[-1])
    assert rerun.success
    assert step_metadata(rerun)["submitted"] == 0
    assert (len(ledger.orders(account_id=account)), len(ledger.fills(account))) == before[:2]
    assert ledger.execution(signal_id).status == "completed"  # type: ignore[union-attr]


def test_stale_signal_is_rejected_and_not_executed(stage) -> None:
    market, settings, _, ledger = stage
    instance = market.instance
    late = build_definitions(market.settings(settings.postgres_url, as_of="2024-01-05"))
    cursor = evaluate_sensor(late, instance, None).cursor
    result = materialize(late, instance, "approved_signal")
    assert result.success
    meta = materialization(result, "approved_signal")
    assert meta["status"] == "rejected"
    assert meta["rejected_rules"] == ["stale_signal"]
    signal_id = str(meta["signal_id"])
    rows = ledger.audit_log(entity_id=signal_id)
    assert [r["action"] for r in rows] == ["signal_rejected"]
    assert "stale_signal" in str(rows[0]["details"]) or "stale" in str(rows[0]["reason"])
    # The sensor launches nothing for it; executing it anyway is refused and sends nothing.
    found = evaluate_sensor(late, instance, cursor)
    assert found.run_requests == [] and found.cursor != cursor
    forced = late.resolve_job_def("execution_job").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {"execute_signal_op": {"config": {"signal_id": signal_id}}}})
    assert not forced.success
    failure = [e for e in forced.all_events if e.event_type_value == "STEP_FAILURE"]
    assert "rejected" in str(failure[0].event_specific_data.error)
    assert ledger.orders(signal_id=signal_id) == []


class NoQuotes:
    """Reading the paper venue's book needs no market."""

    def quote(self, symbol, session):
        return None

    def latest_session(self):
        return None


def test_signal_id_is_deterministic() -> None:
    from trading.models import signal_id_of

    a = signal_id_of("s", "acct", pd.Timestamp("2024-01-02").date(),
                     {"510300": 0.5, "518880": 0.5})
    b = signal_id_of("s", "acct", pd.Timestamp("2024-01-02").date(),
                     {"518880": 0.5 + 1e-13, "510300": 0.5})
    c = signal_id_of("s", "acct", pd.Timestamp("2024-01-02").date(),
                     {"510300": 0.6, "518880": 0.4})
    # The account is part of the id: the same target for another account is another signal.
    other = signal_id_of("s", "acct-2", pd.Timestamp("2024-01-02").date(),
                         {"510300": 0.5, "518880": 0.5})
    assert other != a and ":acct-2:" in other
    assert a == b != c


def test_portfolio_risk_is_measured_and_its_limits_reject(stage) -> None:
    """The gate measures the target's VaR, ES, worst window and days to liquidate from data up
    to D and shows them; configured limits below the figures reject with rule and figures."""
    market, settings, _, ledger = stage
    instance = market.instance
    measured = materialize(build_definitions(market.settings(
        settings.postgres_url, account_id="risk-measured")), instance, "approved_signal")
    meta = materialization(measured, "approved_signal")
    assert meta["status"] == "approved", meta
    var = float(meta["var_99_1d_pct"]) / 100                               # type: ignore[arg-type]
    stress = float(meta["stress_loss_pct"]) / 100                          # type: ignore[arg-type]
    assert 0 < var < float(meta["es_99_1d_pct"]) / 100 < 0.2               # type: ignore[arg-type]
    assert meta["risk_observations"] == 250

    limited = build_definitions(market.settings(
        settings.postgres_url, account_id="risk-limited",
        risk={"max_var_99": round(var / 2, 6), "max_stress_loss": round(stress / 2, 6)}))
    cursor = evaluate_sensor(limited, instance, None).cursor
    result = materialize(limited, instance, "approved_signal")
    meta = materialization(result, "approved_signal")
    assert meta["status"] == "rejected"
    assert meta["rejected_rules"] == ["stress_loss", "var_limit"]
    signal = ledger.signal(str(meta["signal_id"]))
    assert signal is not None
    messages = {r["rule"]: r["message"] for r in signal.reasons}
    assert f"{100 * var:.2f}%" in messages["var_limit"]
    assert f"limit {100 * round(var / 2, 6):.2f}%" in messages["var_limit"]
    assert str(meta["stress_window"]) in messages["stress_loss"]
    # In the audit log with its figures; no order is planned or sent.
    audited = ledger.audit_log(entity_id=signal.signal_id)
    assert [r["action"] for r in audited] == ["signal_rejected"]
    assert f"{100 * var:.2f}%" in str(audited[0]["details"]) + str(audited[0]["reason"])
    assert evaluate_sensor(limited, instance, cursor).run_requests == []
    assert ledger.orders(signal_id=signal.signal_id) == []


def test_portfolio_risk_reports_every_figure_from_data_up_to_d(stage) -> None:
    """portfolio_risk of the target on real data: the VaR/ES grid, the out-of-sample VaR
    backtest, the stress episodes the data holds, the shocks and worst windows, and liquidity,
    each as rotation.portfolio_risk computes it from the stored bars up to D."""
    from rotation import portfolio_risk as risk
    from trading.approval import proposed_weights

    market, settings, defs, _ = stage
    result = materialize(defs, market.instance, "portfolio_risk")
    assert result.success
    meta = materialization(result, "portfolio_risk")
    stored = result.output_for_node("portfolio_risk")
    assert set(stored["section"]) == {"estimate", "backtest", "stress", "liquidity"}, stored
    assert set(stored["portfolio"]) == {"target", "out-of-sample"}     # no position yet

    root = settings.resolved_storage_root
    target = pd.read_parquet(root / "target_portfolio.parquet")
    day = pd.Timestamp(target["date"].iloc[0]).normalize()
    io = PartitionedParquetIOManager(base_path=str(root))
    adjusted = dg.AssetKey("adjusted_bars")
    bars = io.load_partitions(adjusted, io.stored_partitions(adjusted))
    returns, amounts = risk.panels_from_bars(bars.loc[bars["date"] <= day])
    weights = {s: w for s, w in proposed_weights(target["symbol"].astype(str).tolist(),
                                                 target["weight"].tolist()).items() if w}

    estimates = stored.loc[stored["section"] == "estimate"].set_index("name")["value"]
    assert len(estimates) == 2 * 3 * 2 * 2            # VaR and ES × methods × levels × horizons
    for e in risk.var_es(returns, weights, day.date(), lookback=250):
        name = f"{e.method} {{}} {e.level:.0%} {e.horizon}d"
        assert estimates[name.format("VaR")] == pytest.approx(e.var, abs=1e-12)
        assert estimates[name.format("ES")] == pytest.approx(e.es, abs=1e-12)
    assert meta["target_var_99_1d_pct"] == 100 * estimates["historical VaR 99% 1d"]

    stress = stored.loc[stored["section"] == "stress"].set_index("name")
    # The stored bars start in 2021 and D is 2023-12-29: the 2022 episode is replayed, the
    # earlier ones are listed as not measured (and why), the 2024 one is after D.
    assert {"2015 crash", "2016 circuit breaker", "2020 pandemic sell-off",
            "2022 April sell-off", "worst 5-session window", "worst 20-session window"} \
        <= set(stress.index)
    assert "2024 small-cap crash" not in stress.index
    for old in ("2015 crash", "2016 circuit breaker", "2020 pandemic sell-off"):
        assert math.isnan(stress.loc[old, "value"])
        assert "not measured: no sessions between" in stress.loc[old, "detail"]
    stress = stress["value"]
    classes = {i.symbol: i.instrument_class
               for i in market_data_resource(settings).instruments()}
    assert stress["equity -10%"] == pytest.approx(
        risk.shock("equity -10%", weights, classes, {"equity": -0.10, "equity_20": -0.10,
                                                     "cross_border": -0.10}).loss)
    april = risk.replay("2022", returns, weights, dt.date(2022, 4, 1), dt.date(2022, 4, 26),
                        classes)
    assert stress["2022 April sell-off"] == pytest.approx(april.loss)

    # The stitched out-of-sample history is shorter than 2 × 250 sessions: half of it is the
    # look-back, every day after it a forecast.
    backtests = stored.loc[stored["section"] == "backtest"]
    assert len(backtests) == 6                       # 3 methods × 2 levels
    oos = pd.read_parquet(root / "oos_backtest.parquet")["equity"].pct_change().dropna()
    assert backtests["detail"].str.contains(
        f"of {len(oos) - len(oos) // 2} forecasts").all()
    liquid = stored.loc[stored["section"] == "liquidity"].set_index("name")["value"]
    cash = settings.execution.initial_cash         # no position yet: equity is the cash
    expected = risk.liquidity({s: w * cash for s, w in weights.items()}, amounts, day.date())
    assert liquid.sort_index().tolist() == pytest.approx(
        expected["days_to_trade"].sort_index().tolist())


def _executed(defs: dg.Definitions, instance: dg.DagsterInstance, signal_id: str
              ) -> dg.ExecuteInProcessResult:
    """execution_job of ``signal_id``, as the sensor launches it."""
    return defs.resolve_job_def("execution_job").execute_in_process(
        instance=instance, raise_on_error=False,
        run_config={"ops": {"execute_signal_op": {"config": {"signal_id": signal_id}}}})


def _approve(market, ledger_url: str, **execution) -> tuple[dg.Definitions, str]:
    defs = build_definitions(market.settings(ledger_url, **execution))
    meta = materialization(materialize(defs, market.instance, "approved_signal"),
                           "approved_signal")
    assert meta["status"] == "approved", meta["reasons"]
    return defs, str(meta["signal_id"])


def test_an_order_above_the_participation_limit_is_rejected_and_not_sent(stage) -> None:
    """Orders larger than 0.01 % of the fund's average daily amount over 20 sessions (from the
    raw bars up to D) are rejected with the figures, audited, and never reach the venue."""
    market, settings, _, ledger = stage
    defs, signal_id = _approve(market, settings.postgres_url, account_id="thin-market",
                               risk={"max_participation": 1e-4})
    result = _executed(defs, market.instance, signal_id)
    assert result.success
    orders = ledger.orders(signal_id=signal_id)
    assert orders and all(o.status is OrderStatus.REJECTED for o in orders)
    data = deployed(defs, "market_data", MarketDataResource)
    day = pd.Timestamp(market.signal_day)
    start = data.calendar.offset(day, -19)
    bars = data.load(start, day).bars
    for order in orders:
        own = bars.loc[bars["symbol"] == order.symbol]
        adv = float(own["amount"].fillna(own["volume"] * own["close"]).sum()) / 20
        share = order.quantity * order.reference_price / adv
        assert f"order/participation: {order.side} {order.quantity} {order.symbol}" \
            in str(order.reason)
        assert f"({adv:,.2f})" in str(order.reason) and f"{100 * share:.2f}%" in str(order.reason)
    audited = ledger.audit_log(action="order_rejected")
    assert {r["entity_id"] for r in audited} == {o.order_id for o in orders}
    venue = PaperBroker(settings.postgres_url, NoQuotes(), strategy_for(settings).cost_model)
    assert all(venue.order(o.order_id) is None for o in orders)


def test_an_order_stream_beyond_the_rate_limit_is_stopped(stage) -> None:
    """One order a minute on real data, against a plan of several: the stream is stopped
    before its first order (a stream stopped half-way would leave the book half-rotated), every
    order rejected with the rule, the breach audited with the orders."""
    market, settings, _, ledger = stage
    defs, signal_id = _approve(market, settings.postgres_url, account_id="paced",
                               conduct={"max_orders_per_minute": 1})
    result = _executed(defs, market.instance, signal_id)
    assert result.success and step_metadata(result)["submitted"] == 0
    orders = ledger.orders(signal_id=signal_id)
    assert len(orders) >= 2
    assert all(o.status is OrderStatus.REJECTED for o in orders)
    assert all(f"the plan has {len(orders)} orders to send" in str(o.reason) for o in orders)
    breaches = ledger.audit_log(action="conduct_breach")
    assert [(b["entity_id"], b["details"]["rule"]) for b in breaches] == [("paced",
                                                                            "order_rate")]
    venue = PaperBroker(settings.postgres_url, NoQuotes(), strategy_for(settings).cost_model)
    assert all(venue.order(o.order_id) is None for o in orders)


def test_a_volatile_market_tightens_the_limits_with_the_rule_in_the_audit_log(stage) -> None:
    """A VaR limit above the target's VaR approves in a calm regime; the same limit halved by
    a volatility regime rejects, and the audit log says which rule tightened it and why."""
    market, settings, _, ledger = stage
    instance = market.instance
    measured = materialization(materialize(build_definitions(market.settings(
        settings.postgres_url, account_id="regime-measure")), instance, "approved_signal"),
        "approved_signal")
    var = float(measured["var_99_1d_pct"]) / 100                         # type: ignore[arg-type]
    limit = round(var * 1.5, 6)

    def decided(account: str, threshold: float) -> dict[str, object]:
        regime = {"threshold": threshold, "tighten": {"max_var_99": 0.5}}
        defs = build_definitions(market.settings(
            settings.postgres_url, account_id=account,
            risk={"max_var_99": limit, "regime": regime}))
        return materialization(materialize(defs, instance, "approved_signal"),
                               "approved_signal")

    calm = decided("regime-calm", threshold=5.0)
    assert calm["status"] == "approved" and calm["limits_in_force"] == "as configured"
    assert ledger.audit_log(action="limits_tightened") == []

    volatile = decided("regime-volatile", threshold=0.01)
    assert volatile["status"] == "rejected" and volatile["rejected_rules"] == ["var_limit"]
    tightened = ledger.audit_log(action="limits_tightened")
    assert [(r["entity_id"], r["details"]["rule"]) for r in tightened] == [
        ("regime-volatile", "volatility_regime")]
    assert f"max_var_99 {limit:g} -> {limit * 0.5:g}" in str(tightened[0]["reason"])
    assert str(volatile["limits_in_force"]) == tightened[0]["reason"]
    signal = ledger.signal(str(volatile["signal_id"]))
    assert signal is not None
    assert f"limit {100 * limit * 0.5:.2f}%" in signal.reasons[0]["message"]
    # Deciding the day again reports the tightening once.
    assert decided("regime-volatile", threshold=0.01)["status"] == "rejected"
    assert len(ledger.audit_log(action="limits_tightened")) == 1
