"""One rules model (issue 13, SPEC §7): settlement by instrument class, on real bars.

A same-session round trip — bought at the open of D, sold at the close of D — in the bond ETF
511260 (T+0 on SSE) is executed by the backtest, by the search engine's simulation, by the paper
broker and passes pre-trade risk; the same trip in the equity ETF 510300 (T+1) is refused by
all four, for the same reason. The rules come from config/markets/cn_funds.yaml through the
dataset's class assignment; the engines still agree with vectorbt to 1e-9, with and without a
sell-side duty (the US profile's SEC fee).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rotation.backtest import BacktestConfig, BacktestResult, market_panels, run_backtest
from rotation.backtest import vbt as vbt_replay
from rotation.bars import Instrument
from rotation.costs import CostModel
from rotation.market import load_market
from rotation.risk import OrderCheck, RiskLimits, check_orders, unsellable_units
from rotation.search import simulate_sessions_nb
from rotation.sources.files import FileMarketSource, load_dataset_spec
from trading.contract import temporary_database
from trading.models import OrderRequest, OrderStatus, Side
from trading.paper import FrameQuotes, PaperBroker

ROOT = Path(__file__).resolve().parents[1]
BOND, EQUITY = "511260", "510300"
DAY = pd.Timestamp("2025-06-11")          # D: the round trip's session
START, END = pd.Timestamp("2025-06-03"), pd.Timestamp("2025-06-17")
COSTS = CostModel(commission_bps=2.0, min_commission=5.0, slippage_bps=5.0, lot_size=100)


@pytest.fixture(scope="module")
def market(shared_data: Path) -> tuple[pd.DataFrame, dict[str, Instrument]]:
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw",
                              load_dataset_spec(ROOT / "config/datasets/cn_etf_morphkyan_raw.yaml"))
    bars = source.load(START, END).bars
    bars = bars.loc[bars["symbol"].isin([BOND, EQUITY])].reset_index(drop=True)
    return bars, {i.symbol: i for i in source.instruments() if i.symbol in (BOND, EQUITY)}


def test_classes_come_from_the_market_profile(market) -> None:
    _, instruments = market
    rules = load_market("cn_funds").classes
    assert instruments[BOND].instrument_class == "bond" and rules["bond"].settlement == "T+0"
    assert instruments[EQUITY].instrument_class == "equity"
    assert rules["equity"].settlement == "T+1"
    assert instruments[BOND].same_session_sell and not instruments[EQUITY].same_session_sell


def _round_trip(bars: pd.DataFrame, instruments: dict[str, Instrument], symbol: str,
                cfg: BacktestConfig) -> BacktestResult:
    dates = pd.DatetimeIndex(sorted(bars["date"].unique()))
    buy = pd.DataFrame(np.nan, index=dates, columns=[symbol])
    buy.loc[dates[dates.get_loc(DAY) - 1], symbol] = 0.5   # decided after close(D-1)
    sell = pd.DataFrame(np.nan, index=dates, columns=[symbol])
    sell.loc[DAY, symbol] = 0.0                              # out again at close(D)
    return run_backtest(buy, bars, list(instruments.values()), cfg, close_weights=sell)


@pytest.mark.parametrize(("symbol", "round_trip"), [(BOND, True), (EQUITY, False)])
def test_backtest_round_trip_by_class(market, symbol: str, round_trip: bool) -> None:
    bars, instruments = market
    result = _round_trip(bars, instruments, symbol,
                         BacktestConfig(costs=CostModel(slippage_bps=5.0)))
    orders = result.orders.set_index(["fill_at", "side"])
    assert orders.loc[("open", "buy"), "units"] > 0
    sold = orders.loc[("close", "sell")]
    assert bool(sold["units"] > 0) is round_trip
    assert bool(sold["reason"] == "t1") is not round_trip
    held_after = result.positions.loc[DAY, symbol]
    assert bool(held_after == 0) is round_trip
    assert vbt_replay.compare(result, vbt_replay.replay(result)) < 1e-9


def test_search_simulation_round_trip_by_class(market) -> None:
    bars, instruments = market
    cols = pd.Index([BOND, EQUITY])
    dates = pd.DatetimeIndex(sorted(bars["date"].unique()))
    panels = market_panels(bars, dates, cols, list(instruments.values()))
    i = dates.get_loc(DAY)
    weights = np.zeros((len(dates), 2))
    weights[i - 1] = [0.4, 0.4]
    trade = np.zeros(len(dates), dtype=np.bool_)
    trade[i - 1] = True
    close_weights = np.full((len(dates), 2), np.nan)
    close_weights[i] = [0.0, 0.0]
    tradable = panels.has_bar.to_numpy(bool) & ~panels.limit_up.to_numpy(bool) \
        & ~panels.limit_down.to_numpy(bool)
    t0 = panels.same_session_sell.to_numpy(bool)
    args = (weights, trade, panels.open.to_numpy(float), tradable,
            panels.close.ffill().to_numpy(float), 1e6, 0.0, 0.0)
    equity, _ = simulate_sessions_nb(*args, t0, close_weights)
    none = np.empty((0, 2))
    held, _ = simulate_sessions_nb(*args, t0, none)
    # Equity after D: the bond was sold at its close (flat from then on), the equity fund not.
    close = panels.close.to_numpy(float)
    bond_units = 0.4 * 1e6 / panels.open.to_numpy(float)[i, 0]
    moves = (close[i + 1:, 1] - close[i, 1]) * 0.4 * 1e6 / panels.open.to_numpy(float)[i, 1]
    assert equity[i + 1:] - equity[i] == pytest.approx(moves, rel=1e-12)
    assert held[i + 1:] - held[i] == pytest.approx(
        moves + bond_units * (close[i + 1:, 0] - close[i, 0]), rel=1e-12)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with temporary_database(prefix="etf_classes") as url:
        yield url


@pytest.mark.parametrize(("symbol", "round_trip"), [(BOND, True), (EQUITY, False)])
def test_paper_broker_round_trip_by_class(market, database: str, symbol: str,
                                          round_trip: bool) -> None:
    bars, instruments = market
    quotes = FrameQuotes(bars, {s: i.price_limit for s, i in instruments.items()},
                         classes={s: (i.same_session_sell, i.sale_cash_same_day)
                                  for s, i in instruments.items()})
    broker = PaperBroker(database, quotes, COSTS)
    try:
        account = f"acct-{uuid.uuid4().hex[:10]}"
        broker.open_account(account, 1_000_000.0)
        day = DAY.date()

        def order(side: Side, **extra: object) -> OrderRequest:
            return OrderRequest(client_order_id=f"o-{uuid.uuid4().hex[:12]}", account_id=account,
                                symbol=symbol, side=side, quantity=1_000, session=day,
                                reference_price=100.0, **extra)  # type: ignore[arg-type]

        broker.submit(order(Side.BUY))
        # The sell is the last child of a two-slice order: it trades at the session's close.
        sell = order(Side.SELL, parent_order_id=f"p-{uuid.uuid4().hex[:12]}", slices=2,
                     slice_index=2)
        broker.submit(sell)
        broker.fills(account, day)
        done = broker.order(sell.client_order_id)
        assert done is not None
        if round_trip:
            assert done.status is OrderStatus.FILLED and done.filled_quantity == 1_000
            assert broker.positions(account).get(symbol, 0) == 0
        else:
            assert done.status is OrderStatus.EXPIRED and done.reason == "t1"
            assert broker.positions(account)[symbol] == 1_000
    finally:
        broker.close()


@pytest.mark.parametrize(("symbol", "round_trip"), [(BOND, True), (EQUITY, False)])
def test_pre_trade_risk_round_trip_by_class(market, symbol: str, round_trip: bool) -> None:
    _, instruments = market
    unsellable = unsellable_units({symbol: 1_000}, {symbol: instruments[symbol].same_session_sell})
    sell = OrderCheck(order_id="s", symbol=symbol, side="sell", quantity=1_000,
                      reference_price=100.0, closes_position=True, held_before=1_000)
    accepted, rejected = check_orders(
        [sell], last_close={symbol: 100.0}, limit_up_close=(), limit_down_close=(), halted=(),
        committed_notional=0.0, equity=1e6, positions_value_after=0.0,
        limits=RiskLimits(max_order_notional=1e9, max_daily_notional=1e9), unsellable=unsellable)
    if round_trip:
        assert accepted == [sell] and rejected == []
    else:
        assert [v.rule for _, v in rejected] == ["t1_same_session_sell"]
        assert symbol in rejected[0][1].message and "T+1" in rejected[0][1].message


def test_sell_side_duty_engine_vectorbt_and_paper_agree(market, database: str) -> None:
    """The US profile's SEC fee on sales, charged the same way by every engine."""
    bars, instruments = market
    fees = load_market("us_funds").fees
    costs = CostModel(commission_bps=2.0, min_commission=5.0, slippage_bps=5.0, lot_size=100,
                      sell_fee_bps=fees.sell_rate * 1e4)
    cfg = BacktestConfig(costs=costs)
    result = _round_trip(bars, instruments, BOND, cfg)
    sold = result.orders.loc[result.orders["side"] == "sell"].iloc[0]
    expected = max(sold["notional"] * 2e-4, 5.0) + sold["notional"] * fees.sell_rate
    assert sold["commission"] == pytest.approx(expected, rel=1e-12)
    assert vbt_replay.compare(result, vbt_replay.replay(result)) < 1e-9
    assert costs.fee(sold["notional"], "sell") == pytest.approx(expected, rel=1e-12)
    assert costs.fee(sold["notional"], "buy") == pytest.approx(max(sold["notional"] * 2e-4, 5.0))
    quotes = FrameQuotes(bars, {s: i.price_limit for s, i in instruments.items()},
                         classes={s: (True, True) for s in instruments})
    broker = PaperBroker(database, quotes, costs)
    try:
        account = f"acct-{uuid.uuid4().hex[:10]}"
        broker.open_account(account, 1_000_000.0)
        for side, session in ((Side.BUY, dt.date(2025, 6, 10)), (Side.SELL, DAY.date())):
            broker.submit(OrderRequest(client_order_id=f"o-{uuid.uuid4().hex[:12]}",
                                       account_id=account, symbol=BOND, side=side,
                                       quantity=1_000, session=session, reference_price=100.0))
        fill = next(f for f in broker.fills(account, DAY.date()) if f.side is Side.SELL)
        notional = fill.price * fill.quantity
        assert fill.commission == pytest.approx(max(notional * 2e-4, 5.0)
                                                + notional * fees.sell_rate, rel=1e-12)
    finally:
        broker.close()
