"""The one cost model and the one account object (issue 15 item 6)."""

from __future__ import annotations

import pytest
from conftest import paper_account

from orchestration.definitions import account_of, strategy_for
from orchestration.settings import SettingsError
from rotation.costs import NO_FEES, CostModel
from rotation.market import load_market
from rotation.orders import plan_orders
from rotation.risk import RiskLimits
from rotation.strategy import load_strategy


def test_the_cost_model_charges_what_the_market_profile_states() -> None:
    cn = load_market("cn_funds")
    costs = CostModel.of_market(cn.fees, lot_size=cn.lot_size, slippage_bps=5.0)
    assert (costs.commission_bps, costs.min_commission, costs.lot_size) == (2.0, 5.0, 100)
    assert costs.fee(10_000.0, "buy") == 5.0                  # the minimum
    assert costs.fee(1_000_000.0, "sell") == pytest.approx(200.0)   # no stamp duty on funds
    us = load_market("us_funds")
    sec = CostModel.of_market(us.fees, lot_size=us.lot_size, slippage_bps=0.0)
    assert sec.fee(1_000_000.0, "buy") == 0.0
    assert sec.fee(1_000_000.0, "sell") == pytest.approx(27.8)    # SEC fee on sales only
    assert (sec.commission_rate, sec.slippage_rate) == (0.0, 0.0)


def test_one_model_for_the_backtest_the_account_and_order_planning(make_settings) -> None:
    settings = make_settings()
    strategy = strategy_for(settings)
    account = account_of(settings, strategy)
    assert account.costs == strategy.backtest_config().costs == strategy.cost_model
    assert account.account_id == settings.execution.account_id
    assert account.initial_cash == settings.execution.initial_cash
    assert account.limits.lot_size == strategy.market.lot_size == account.costs.lot_size
    assert account.quote_lookback_sessions >= 5
    # The planner's cash bound uses the account's commission: 10,000 at 1.00 all-in buys 9,900.
    orders = plan_orders({"A": 1.0}, {}, 10_000.0, {"A": 1.0}, costs=account.costs)
    assert [(o.symbol, o.quantity) for o in orders] == [("A", 9_900)]
    assert [o.quantity for o in plan_orders({"A": 1.0}, {}, 10_000.0, {"A": 1.0},
                                            costs=NO_FEES)] == [10_000]


def test_an_account_refuses_a_lot_its_venue_does_not_trade(make_settings) -> None:
    with pytest.raises(ValueError, match="risk limits check lots of 10 units but the venue "
                                         "trades lots of 100"):
        paper_account(limits=RiskLimits(lot_size=10))
    settings = make_settings(execution={"risk": {"lot_size": 10}})
    with pytest.raises(SettingsError, match=r"setting execution\.risk\.lot_size: 10 differs from "
                                            r"market cn_funds's lot of 100 units"):
        account_of(settings, load_strategy("etf_rotation_sample"))


def test_an_allocation_names_each_strategy_once_and_weights_only_when_fixed() -> None:
    from trading.account import Allocation

    with pytest.raises(ValueError, match=r"names a strategy twice"):
        Allocation(strategies=("a", "b", "a"))
    with pytest.raises(ValueError, match=r"given with method 'risk_parity'"):
        Allocation(strategies=("a", "b"), method="risk_parity", weights={"a": 1, "b": 1})
    assert Allocation(strategies=("a", "b")).netted and not Allocation(strategies=("a",)).netted
