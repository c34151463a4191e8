"""Trading safety on real data, the real PostgreSQL and Redis (issue: no path around the gate or
the kill switch, no double-spend, crash-safe slicing).

* No run config can change a control: every job refuses every resource field a launch could
  name, so the clock, the kill switch, the ledger, the venue, the cache, the market data and the
  storage stay the deployment's.
* Write-ahead TWAP: every child is in the ledger before the first is sent; a run killed
  mid-slicing and never retried leaves nothing the ledger does not know, the next session
  reconciles, the stall is found and recovered; a retry under another slicing setting sends the
  stored plan, never more than the target.
* Planning counts the account's open orders and the cash they commit.
* One lock per account: the PostgreSQL advisory lock."""

from __future__ import annotations

import datetime as dt
from collections import defaultdict

import dagster as dg
import pytest
from test_execution_faults import (
    approve,
    assert_consistent,
    build,
    fill_next_day,
    kill_after_submits,
    ledger_account,
    run_direct,
)
from test_execution_pipeline import (
    evaluate_sensor,
    materialization,
    materialize,
    run_request,
    step_metadata,
)

from assets.signals import BOOK_CHECK, STALL_CHECK
from resources.deployment import FixedIOManager, FixedResource
from rotation.costs import CostModel
from rotation.risk import RiskLimits
from sensors.executions import SENSOR_NAME, stalled_executions
from trading.executor import MarketView, execute_signal
from trading.ledger import Ledger, LedgerError, OrderRecord, SignalRecord
from trading.models import OrderStatus, Quote, SignalStatus, signal_id_of, weights_hash
from trading.paper import FrameQuotes, PaperBroker

SAMPLES: dict[type, object] = {str: "forged", bool: False, int: 1, float: 1e18}


def _forged_value(annotation: object) -> object:
    for kind, value in SAMPLES.items():
        if annotation is kind or kind.__name__ in str(annotation):
            return value
    return "forged"


def test_no_launch_config_reaches_a_resource(execution_market, ledger_url) -> None:
    """What the Dagster UI would send: resources.<key>.config.<field> for every field of every
    resource of every job. Each is refused before anything runs."""
    defs = build(execution_market, ledger_url, kill_switch=True)
    tried = 0
    for job in defs.resolve_all_job_defs():
        for key in job.resource_defs:
            definition = defs.resources.get(key)
            if definition is None:        # Dagster's own (e.g. the default io manager)
                continue
            assert isinstance(definition, FixedResource | FixedIOManager), key
            fields = type(definition.deployed).model_fields
            for field, info in fields.items():
                config = {"resources": {key: {"config": {
                    field: _forged_value(info.annotation)}}}}
                with pytest.raises(dg.DagsterInvalidConfigError):
                    dg.validate_run_config(job, config)
                tried += 1
    assert tried >= 20
    # The protected controls, as a launch would try them, through execute_in_process too.
    execution_job = defs.resolve_job_def("execution_job")
    for key, field, value in (("execution", "kill_switch", False),
                              ("clock", "as_of", "2099-01-01"),
                              ("ledger", "url", "postgresql+psycopg://postgres@127.0.0.1/x"),
                              ("io_manager", "base_path", "/tmp/forged")):
        with pytest.raises(dg.DagsterInvalidConfigError):
            execution_job.execute_in_process(
                instance=execution_market.instance,
                run_config={"ops": {"execute_signal_op": {"config": {"signal_id": "x"}}},
                            "resources": {key: {"config": {field: value}}}})
    ledger = Ledger(ledger_url)
    try:
        ledger.migrate()
        assert ledger.orders() == []
    finally:
        ledger.dispose()


def _stall_tick(defs: dg.Definitions, instance: dg.DagsterInstance) -> object:
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    with dg.build_sensor_context(instance=instance, definitions=defs,
                                 resources={"ledger": defs.resources["ledger"]}) as context:
        return sensor(context)


def _parents_and_children(orders: list[OrderRecord]
                          ) -> tuple[list[OrderRecord], dict[str, list[OrderRecord]]]:
    children: dict[str, list[OrderRecord]] = defaultdict(list)
    for o in orders:
        if o.parent_order_id is not None:
            children[o.parent_order_id].append(o)
    return [o for o in orders if o.parent_order_id is None], children


def _assert_at_most_target(ledger: Ledger, account: str, orders: list[OrderRecord]) -> None:
    """From an empty book every order is a buy: no position beyond its parent's quantity."""
    target = {o.symbol: o.quantity for o in orders
              if o.parent_order_id is None and o.status is not OrderStatus.REJECTED}
    for symbol, position in ledger.positions(account).items():
        assert position.quantity <= target.get(symbol, 0), (symbol, position.quantity)


def test_twap_killed_without_retry_then_the_next_session(execution_market, ledger_url) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url, twap_slices=4)
    kill_after_submits(market, ledger_url, signal_id, 2, twap_slices=4)
    ledger = Ledger(ledger_url)
    try:
        orders = ledger.orders(signal_id=signal_id)
        parents, children = _parents_and_children(orders)
        # Write-ahead: the whole slicing plan was in the ledger before the first child left.
        assert parents and all(len(children[p.order_id]) == 4 for p in parents
                               if p.status is not OrderStatus.REJECTED and p.quantity >= 400)
        for p in parents:
            assert sum(c.quantity for c in children.get(p.order_id, [])) in (0, p.quantity)
        assert ledger.execution(signal_id).status == "running"  # type: ignore[union-attr]

        # The next session: the morning's fills reconcile (no "not in the ledger"), the two
        # children the dead worker sent fill, the others were never sent and expire.
        report = fill_next_day(market, ledger_url)
        book = [e for e in report.get_asset_check_evaluations()
                if e.check_name == BOOK_CHECK]
        assert book and book[0].passed
        stall = [e for e in report.get_asset_check_evaluations()
                 if e.check_name == STALL_CHECK]
        assert stall and not stall[0].passed      # the dead run's execution is found
        account = ledger_account(defs)
        fills = ledger.fills(account)
        assert len(fills) == 2
        after = ledger.orders(signal_id=signal_id)
        children_after = [o for o in after if o.parent_order_id is not None]
        assert sum(o.status is OrderStatus.FILLED and o.venue_order_id is not None
                   for o in children_after) == 2
        assert sum(o.status is OrderStatus.EXPIRED and o.venue_order_id is None
                   for o in children_after) == len(children_after) - 2

        # The stall watch alerts and relaunches; the recovery sends nothing (the session is
        # over) and closes the execution.
        later = build(market, ledger_url, as_of=market.fill_day, twap_slices=4)
        tick = _stall_tick(later, market.instance)
        assert isinstance(tick, dg.SensorResult)
        (request,) = tick.run_requests
        assert request.run_key == f"recover:{signal_id}:1"
        recovered = run_request(later, market.instance, request)
        assert recovered.success
        meta = step_metadata(recovered)
        assert (meta["status"], meta["submitted"]) == ("halted", 0)
        assert stalled_executions(market.instance, ledger, account) == []
        assert len(ledger.fills(account)) == 2
        assert_consistent(ledger, defs, signal_id, ledger_url)
        _assert_at_most_target(ledger, account, after)
    finally:
        ledger.dispose()


def test_twap_killed_then_retried_under_another_slicing(execution_market, ledger_url) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url, twap_slices=4)
    kill_after_submits(market, ledger_url, signal_id, 1, twap_slices=4)
    ledger = Ledger(ledger_url)
    try:
        planned = ledger.orders(signal_id=signal_id)
        # The operator changes the slicing and the run is retried: the stored plan is sent.
        resliced = build(market, ledger_url, twap_slices=2)
        request = next(r for r in evaluate_sensor(resliced, market.instance, None).run_requests
                       if r.run_key == signal_id)
        retried = run_request(resliced, market.instance, request)
        assert retried.success
        orders = ledger.orders(signal_id=signal_id)
        assert [o.order_id for o in orders] == [o.order_id for o in planned]
        venue = PaperBroker(ledger_url, FrameQuotes(_empty_bars()), CostModel())
        sent: dict[str, int] = defaultdict(int)
        for o in orders:
            remote = venue.order(o.order_id)
            if remote is not None:
                sent[o.symbol] += remote.quantity
        parents, _ = _parents_and_children(orders)
        assert dict(sent) == {p.symbol: p.quantity for p in parents
                              if p.status is not OrderStatus.REJECTED}
        fill_next_day(market, ledger_url)
        account = ledger_account(defs)
        assert_consistent(ledger, defs, signal_id, ledger_url)
        _assert_at_most_target(ledger, account, orders)
    finally:
        ledger.dispose()


def _empty_bars():
    import pandas as pd

    return pd.DataFrame(columns=["date", "symbol", "open", "high", "low", "close", "volume"])


def test_a_held_account_lock_stops_a_second_execution(execution_market, ledger_url) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url, lock_timeout_seconds=1.0)
    ledger = Ledger(ledger_url)
    try:
        with ledger.account_lock(ledger_account(defs)), pytest.raises(
                LedgerError, match="locked by another execution"):
            run_direct(defs, signal_id)
        assert ledger.orders(signal_id=signal_id) == []
        report, lock = run_direct(defs, signal_id)      # the lock released: it runs
        assert (report.status, lock) == ("completed", "postgres")
    finally:
        ledger.dispose()


def test_the_account_cash_is_the_ledgers(execution_market, ledger_url) -> None:
    market = execution_market
    defs, signal_id = approve(market, ledger_url)
    run_direct(defs, signal_id)
    # initial_cash changed in the settings after the account opened: the ledger's stands.
    result = materialize(build(market, ledger_url, as_of=market.fill_day,
                               initial_cash=5_000_000.0), market.instance, "positions_report")
    assert result.success
    meta = materialization(result, "positions_report")
    assert meta["initial_cash"] == 1_000_000.0
    account = ledger_account(defs)
    book = Ledger(ledger_url)
    try:
        assert book.initial_cash(account) == 1_000_000.0
        assert abs(float(meta["equity"]) - 1_000_000.0) < 50_000.0   # not ~5,000,000
    finally:
        book.dispose()


# -- planning counts open orders ------------------------------------------------------------

D0, D1, D2 = dt.date(2024, 1, 2), dt.date(2024, 1, 3), dt.date(2024, 1, 4)


# Traded amounts far above the account: the participation limit is not what is tested here.
LIQUID = {"510300": 5e9, "510500": 2e9}


def _quote(symbol: str, day: dt.date, price: float) -> Quote:
    return Quote(symbol=symbol, session=day, open=price, high=price, low=price, close=price,
                 volume=1e6, previous_close=price, price_limit=0.10)


def _approved(ledger: Ledger, strategy: str, day: dt.date, weights: dict[str, float]) -> str:
    sid = signal_id_of(strategy, "acct", day, weights)
    ledger.record_signal(SignalRecord(
        signal_id=sid, account_id="acct", strategy=strategy, as_of=day, weights=weights,
        weights_hash=weights_hash(weights), status=SignalStatus.APPROVED, reasons=[],
        data_version=None, dagster_run_id=None), actor="test")
    return sid


def test_planning_counts_open_orders_and_committed_cash(ledger_url) -> None:
    """Signal 1 (D0) buys with all the cash for D1; the venue has not matched D1 yet when
    signal 2 (D1, another strategy on the same account) is planned: its buys may only spend
    what signal 1 did not commit, and the units signal 1 is buying count as held."""
    ledger = Ledger(ledger_url)
    ledger.migrate()
    ledger.open_account("acct", 1_000_000.0, actor="test")
    costs = CostModel()
    broker = PaperBroker(ledger_url, FrameQuotes(_empty_bars()), costs)  # sees no bar yet
    limits = RiskLimits(max_weight=1.0, max_order_notional=2_000_000.0,
                        max_daily_notional=5_000_000.0)
    try:
        first = _approved(ledger, "alpha", D0, {"510300": 1.0})
        view = MarketView(signal_day=D0, order_session=D1, closed_through=D0,
                          quotes={"510300": _quote("510300", D0, 4.0)},
                          average_amount=LIQUID)
        execute_signal(ledger=ledger, venue=broker, signal_id=first, account_id="acct",
                       market=view, limits=limits, costs=costs, actor="test")
        committed = sum(o.quantity * o.reference_price for o in ledger.orders(signal_id=first))
        assert committed > 990_000.0
        second = _approved(ledger, "beta", D1, {"510300": 0.5, "510500": 0.5})
        view = MarketView(signal_day=D1, order_session=D2, closed_through=D1,
                          quotes={"510300": _quote("510300", D1, 4.0),
                                  "510500": _quote("510500", D1, 6.0)},
                          average_amount=LIQUID)
        execute_signal(ledger=ledger, venue=broker, signal_id=second, account_id="acct",
                       market=view, limits=limits, costs=costs, actor="test")
        orders = ledger.orders(signal_id=second)
        buys = sum(o.quantity * o.reference_price for o in orders if o.side == "buy")
        sells = sum(o.quantity * o.reference_price for o in orders if o.side == "sell")
        # Without counting signal 1's open buys, signal 2 would buy ~1,000,000 more on cash
        # already committed; with them it sells half of what signal 1 is buying and buys with
        # that only: the account never spends more than it has.
        assert committed + buys - sells <= 1_000_000.0 + 1e-6, (committed, buys, sells)
        assert buys > 400_000.0
        assert {(o.symbol, str(o.side)) for o in orders} <= {("510300", "sell"),
                                                             ("510500", "buy")}
    finally:
        ledger.dispose()
        broker.close()


def test_the_stall_watch_marks_a_recurring_failure_for_an_operator(execution_market,
                                                                  ledger_url) -> None:
    """Three recoveries that died too: the fourth tick stops relaunching and fails the
    execution with the reason, so the queue is not retried forever."""
    market = execution_market
    defs, signal_id = approve(market, ledger_url)
    ledger = Ledger(ledger_url)
    try:
        ledger.start_execution(signal_id, "paper-main", dagster_run_id=None, actor="test")
        for n in range(3):
            market.instance.add_run(dg.DagsterRun(
                job_name="execution_job", run_id=f"dead-{signal_id[-6:]}-{n}",
                status=dg.DagsterRunStatus.FAILURE,
                tags={"etf/signal_id": signal_id, "etf/recovers_run": "none"}))
        tick = _stall_tick(defs, market.instance)
        assert isinstance(tick, dg.SensorResult) and tick.run_requests == []
        execution = ledger.execution(signal_id)
        assert execution is not None and execution.status == "failed"
        assert "needs an operator" in str(execution.reason)
    finally:
        ledger.dispose()


def test_a_run_that_run_retries_will_relaunch_is_not_a_stall(execution_market,
                                                            ledger_url) -> None:
    market = execution_market
    _, signal_id = approve(market, ledger_url)
    ledger = Ledger(ledger_url)
    try:
        for will_retry, stalled in (("true", 0), ("false", 1)):
            run_id = f"failed-{will_retry}-{signal_id[-8:]}"
            market.instance.add_run(dg.DagsterRun(
                job_name="execution_job", run_id=run_id, status=dg.DagsterRunStatus.FAILURE,
                tags={"dagster/will_retry": will_retry}))
            ledger.start_execution(signal_id, "paper-main", dagster_run_id=run_id, actor="test")
            found = stalled_executions(market.instance, ledger, "paper-main")
            assert len(found) == stalled, found
        assert found[0].run_status == "FAILURE"
    finally:
        ledger.dispose()


def test_vwap_from_the_relays_bars_through_the_execution_job(execution_market,
                                                             ledger_url) -> None:
    """ETF_EXECUTION__ALGORITHM=vwap with the profile learned from the quote relay's 1-minute
    bars in Redis: with too few bars the execution job fails once, naming the stream and the
    count, before the ledger records anything; once the bars are there, the children follow
    the learned profile and the ledger records the plan."""
    import uuid

    import redis
    from test_vwap import REDIS_URL, _write_session

    from jobs.execution import signal_run_config
    from resources.execution import learn_profile
    from trading.live_prices import bars_key
    from trading.twap import slice_sizes

    market = execution_market
    namespace = f"vwap-job-{uuid.uuid4().hex[:8]}"
    vwap = {"source": "bars", "quotes_namespace": namespace, "sessions": 2, "min_sessions": 2}
    defs, signal_id = approve(market, ledger_url, twap_slices=3, algorithm="vwap", vwap=vwap)
    client = redis.Redis.from_url(REDIS_URL)
    ledger = Ledger(ledger_url)
    try:
        result = defs.resolve_job_def("execution_job").execute_in_process(
            instance=market.instance, run_config=signal_run_config(signal_id),
            raise_on_error=False)
        assert not result.success
        failure = next(e for e in result.all_events if e.event_type_value == "STEP_FAILURE")
        message = failure.event_specific_data.error.message
        assert f"Redis stream {bars_key(namespace)}: 0 usable session(s)" in message, message
        assert "at least 2 needed" in message
        assert ledger.orders(signal_id=signal_id) == [] and ledger.execution(signal_id) is None
        for day in (dt.date(2025, 6, 9), dt.date(2025, 6, 10)):
            _write_session(client, namespace, "510300", day,
                           lambda i: 3000.0 if i < 60 else 1000.0)
        result = defs.resolve_job_def("execution_job").execute_in_process(
            instance=market.instance, run_config=signal_run_config(signal_id),
            raise_on_error=False)
        assert result.success
        assert step_metadata(result)["venue"] == "paper+vwap3"
        weights = learn_profile(client, namespace, sessions=2, min_sessions=2).slice_weights(3)
        orders = ledger.orders(signal_id=signal_id)
        parents = [o for o in orders if o.parent_order_id is None and o.slices > 1]
        assert parents
        for parent in parents:
            kids = [o for o in orders if o.parent_order_id == parent.order_id]
            assert [(k.slice_index, k.quantity) for k in kids] == \
                slice_sizes(parent.quantity, 3, 100, weights)
            (plan,) = [r for r in ledger.audit_log(entity="order", entity_id=parent.order_id)
                       if r["action"] == "order_sliced"]
            assert plan["details"]["algorithm"] == "vwap"
            assert bars_key(namespace) in plan["details"]["profile"]["source"]
    finally:
        client.delete(bars_key(namespace))
        client.close()
        ledger.dispose()
