"""The intraday risk monitor (issue 19 item 4): the book at live prices from the Redis quote
feed, on real data, the real ledger and Redis; the limits that move within a session, each
breach audited once a day."""

from __future__ import annotations

import datetime as dt

import dagster as dg
import pytest
from test_execution_faults import approve, build, fill_next_day, ledger_account, run_direct

from orchestration.definitions import strategy_for
from resources.clock import ClockResource
from resources.deployment import deployed
from resources.live_quotes import LiveQuotesResource
from resources.market_data import MarketDataResource
from rotation.risk import RiskLimits
from sensors.risk_monitor import SENSOR_NAME, last_closes
from trading.intraday import LastPrice, check_intraday, mark
from trading.ledger import Ledger

NOW = dt.datetime(2024, 1, 3, 10, 30, tzinfo=dt.timezone(dt.timedelta(hours=8)))
AGE = dt.timedelta(minutes=2)


def test_the_book_is_marked_at_fresh_prices_and_stale_ones_are_named() -> None:
    live = {"510300": LastPrice(3.6, NOW - dt.timedelta(seconds=30)),
            "518880": LastPrice(5.0, NOW - dt.timedelta(minutes=10))}       # stale
    book = mark({"510300": 10_000, "518880": 2_000}, 50_000.0,
                {"510300": 4.0, "518880": 4.5}, live, [100_000.0, 100_000.0], now=NOW,
                max_age=AGE)
    assert book.values == {"510300": 36_000.0, "518880": 9_000.0}
    assert book.stale == ("518880",)
    assert book.equity == 95_000.0 and book.pnl == -5_000.0
    assert book.drawdown == pytest.approx(0.05)
    found = check_intraday(book, RiskLimits(max_intraday_loss=0.04, drawdown_stop=0.05),
                           "acct")
    assert [v.rule for v in found] == ["intraday_loss", "drawdown_stop"]
    assert "5.00% below the last close's 100,000.00, beyond the limit 4.00%" in found[0].message
    assert check_intraday(book, RiskLimits(), "acct") == []        # no intraday limit set
    with pytest.raises(ValueError, match="no valuation"):
        mark({}, 0.0, {}, {}, [], now=NOW, max_age=AGE)


def test_unreadable_quotes_are_named_not_used() -> None:
    quotes = LiveQuotesResource(url="redis://127.0.0.1:6379/3", namespace="etf-test-monitor")
    market = "unreadable"
    client = quotes._redis()
    client.delete(quotes.key(market))
    try:
        quotes.publish(market, "510300", 4.0, NOW)
        client.hset(quotes.key(market), "510500", '{"price": -1, "at": "2024-01-03T10:30:00"}')
        client.hset(quotes.key(market), "159915", "not json")
        found, problems = quotes.last_prices(market)
        assert found == {"510300": LastPrice(4.0, NOW)}
        assert len(problems) == 2 and all(quotes.key(market) in p for p in problems)
        with pytest.raises(ValueError, match="aware time"):
            quotes.publish(market, "510300", 4.0, NOW.replace(tzinfo=None))
    finally:
        client.delete(quotes.key(market))
    assert LiveQuotesResource(url=None).last_prices(market) == ({}, [])


def _tick(defs: dg.Definitions, instance: dg.DagsterInstance, cursor: str | None
          ) -> tuple[dg.SkipReason, str | None]:
    sensor = defs.resolve_sensor_def(SENSOR_NAME)
    names = ("ledger", "live_quotes", "market_data", "clock")
    with dg.build_sensor_context(instance=instance, cursor=cursor, definitions=defs,
                                 resources={k: defs.resources[k] for k in names}) as context:
        result = sensor(context)
        return result, context.cursor


def test_a_live_loss_beyond_the_limit_is_audited_once(execution_market, ledger_url) -> None:
    """The paper account bought the signal's funds at the open of the fill day; live prices
    10 % under the last close put the book beyond a 5 % intraday loss limit: one risk_breach
    in the audit log, not repeated by the next tick; without fresh quotes nothing is
    measured."""
    market = execution_market
    defs, signal_id = approve(market, ledger_url)
    run_direct(defs, signal_id)
    fill_next_day(market, ledger_url)
    watched = build(market, ledger_url, as_of=market.fill_day,
                    risk={"max_intraday_loss": 0.05})
    account = ledger_account(watched)
    now = deployed(watched, "clock", ClockResource).now().to_pydatetime()
    quotes = deployed(watched, "live_quotes", LiveQuotesResource)
    market_name = strategy_for(market.settings(ledger_url)).market.name
    feed = quotes.key(market_name)
    quotes._redis().delete(feed)
    ledger = Ledger(ledger_url)
    try:
        skipped, _ = _tick(watched, market.instance, None)
        assert "no fresh live quote" in str(skipped.skip_message)
        held = ledger.positions(account)
        assert held
        closes = last_closes(deployed(watched, "market_data", MarketDataResource),
                             deployed(watched, "clock", ClockResource).now())
        for symbol in held:
            quotes.publish(market_name, symbol, closes[symbol] * 0.9,
                           now - dt.timedelta(seconds=30))
        result, cursor = _tick(watched, market.instance, None)
        breaches = ledger.audit_log(action="risk_breach")
        assert [(b["entity_id"], b["details"]["rule"]) for b in breaches] == [
            (account, "intraday_loss")]
        valued = ledger.valuations(account)["equity"].iloc[-1]
        equity = ledger.cash(account) + sum(p.quantity * closes[s] * 0.9
                                            for s, p in held.items())
        assert breaches[0]["details"]["equity"] == pytest.approx(equity, rel=1e-9)
        assert breaches[0]["details"]["close_equity"] == pytest.approx(valued, rel=1e-9)
        assert "intraday_loss" in str(result.skip_message)
        _tick(watched, market.instance, cursor)
        assert len(ledger.audit_log(action="risk_breach")) == 1
    finally:
        quotes._redis().delete(feed)
        ledger.dispose()
