"""execution_job's pre-trade checks at live prices (issue 18 item 3): ``run_signal`` (what
``execute_signal_op`` runs) on the real ledger, the paper venue, the stored real bars and real
Redis, with the live prices written as the quote relay (``trading.quotes``) writes them. A fresh
live price outside the price band rejects the order and the reason names that live price; a
stale one falls back to the last close and the order goes out."""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import redis
from conftest import TEST_CACHE_SECRET

from jobs.execution import run_signal
from orchestration.definitions import account_of, resources_for, strategy_for
from orchestration.settings import Settings, load_settings
from resources.cache import CacheStats
from resources.execution import ExecutionResource
from resources.ledger import LedgerResource
from resources.live_quotes import LiveQuotesResource
from resources.market_data import MarketDataResource
from trading.ledger import SignalRecord
from trading.live_prices import last_key
from trading.models import OrderStatus, SignalStatus, signal_id_of, weights_hash

REDIS_URL = os.environ.get("ETF_TEST_REDIS_URL", "redis://127.0.0.1:6379/3")
DAY = "2023-12-29"           # a Friday of the stored history; orders for 2024-01-02
FUND = "510300"


@pytest.fixture
def settings(tmp_path: Path, shared_data: Path, ledger_url: str) -> Settings:
    return load_settings(
        home=tmp_path / "home", postgres_url=ledger_url, redis_url=REDIS_URL,
        cache_secret=TEST_CACHE_SECRET,
        market_data={"source": "files", "dataset": "cn_etf_morphkyan_raw",
                     "files_root": str(shared_data / "cn_etf_morphkyan_raw")},
        execution={"as_of": DAY})


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"etf-test-live-{uuid.uuid4().hex[:8]}"
    yield ns
    client = redis.Redis.from_url(REDIS_URL)
    client.delete(*client.keys(f"{ns}:*") or [f"{ns}:none"])
    client.close()


def _relay_writes(namespace: str, market: str, price: float, at: dt.datetime) -> None:
    """The live price as QuoteRelay.on_tick sets it."""
    client = redis.Redis.from_url(REDIS_URL)
    client.hset(last_key(namespace, market), FUND,
                json.dumps({"price": float(price), "at": at.isoformat()}))
    client.close()


def test_execution_checks_at_a_fresh_live_price_else_at_the_close(
        settings: Settings, namespace: str) -> None:
    resources = resources_for(settings)
    ledger, execution = resources["ledger"], resources["execution"]
    market_data, clock = resources["market_data"], resources["clock"]
    assert isinstance(ledger, LedgerResource) and isinstance(execution, ExecutionResource)
    assert isinstance(market_data, MarketDataResource)
    strategy = strategy_for(settings)
    market = strategy.market.name
    base = account_of(settings, strategy)
    bars = market_data.load(pd.Timestamp(DAY), pd.Timestamp(DAY)).bars
    close = float(bars.loc[bars["symbol"].astype(str) == FUND, "close"].iloc[0])
    far = round(close * (1 + base.limits.price_band + 0.02), 3)
    now = clock.now().to_pydatetime()
    live_quotes = LiveQuotesResource(url=REDIS_URL, namespace=namespace)
    book = ledger.ledger
    weights = {FUND: 0.3}
    outcome: dict[str, object] = {}
    notes: list[str] = []
    for name, age in (("fresh", 5), ("stale", 120)):
        account = base.model_copy(update={"account_id": f"live-{name}-{uuid.uuid4().hex[:6]}"})
        book.open_account(account.account_id, account.initial_cash, actor="test")
        sid = signal_id_of(strategy.name, account.account_id, dt.date.fromisoformat(DAY),
                           weights)
        book.record_signal(SignalRecord(
            signal_id=sid, account_id=account.account_id, strategy=strategy.name,
            as_of=dt.date.fromisoformat(DAY), weights=weights,
            weights_hash=weights_hash(weights), status=SignalStatus.APPROVED, reasons=[],
            data_version=None, dagster_run_id=None), actor="test")
        _relay_writes(namespace, market, far, now - dt.timedelta(seconds=age))
        run_signal(sid, ledger=ledger, execution=execution, market_data=market_data,
                   cache=resources["cache"], clock=clock, account=account,  # type: ignore[arg-type]
                   actor="test", dagster_run_id=None, warn=notes.append,
                   cache_stats=CacheStats(), live_quotes=live_quotes, market=market)
        (order,) = book.orders(signal_id=sid)
        outcome[name] = order
    fresh, stale = outcome["fresh"], outcome["stale"]
    at = (now - dt.timedelta(seconds=5)).isoformat()
    assert fresh.status is OrderStatus.REJECTED  # type: ignore[attr-defined]
    reason = str(fresh.reason)  # type: ignore[attr-defined]
    assert "price_band" in reason and f"live last price {far:.3f} at {at}" in reason, reason
    assert f"from the last close {close:.3f}" in reason, reason
    assert stale.status is OrderStatus.SUBMITTED, stale.reason  # type: ignore[attr-defined]
    assert notes == []


def _one_signal(settings: Settings, live_quotes: LiveQuotesResource
                ) -> tuple[OrderStatus, str | None, list[str]]:
    """One approved signal of the deployment's account executed with ``live_quotes``: the
    order's status and reason, and the warnings."""
    resources = resources_for(settings)
    strategy = strategy_for(settings)
    ledger = resources["ledger"]
    assert isinstance(ledger, LedgerResource)
    account = account_of(settings, strategy)
    book = ledger.ledger
    book.open_account(account.account_id, account.initial_cash, actor="test")
    weights = {FUND: 0.3}
    day = dt.date.fromisoformat(DAY)
    sid = signal_id_of(strategy.name, account.account_id, day, weights)
    book.record_signal(SignalRecord(
        signal_id=sid, account_id=account.account_id, strategy=strategy.name, as_of=day,
        weights=weights, weights_hash=weights_hash(weights), status=SignalStatus.APPROVED,
        reasons=[], data_version=None, dagster_run_id=None), actor="test")
    notes: list[str] = []
    run_signal(sid, ledger=ledger, execution=resources["execution"],  # type: ignore[arg-type]
               market_data=resources["market_data"],  # type: ignore[arg-type]
               cache=resources["cache"], clock=resources["clock"],  # type: ignore[arg-type]
               account=account, actor="test", dagster_run_id=None, warn=notes.append,
               cache_stats=CacheStats(), live_quotes=live_quotes,
               market=strategy.market.name)
    (order,) = book.orders(signal_id=sid)
    return order.status, order.reason, notes


def test_an_unreadable_live_price_is_named_and_the_close_is_used(
        settings: Settings, namespace: str) -> None:
    """A corrupt entry in the relay's hash: named in a warning, never used."""
    market = strategy_for(settings).market.name
    client = redis.Redis.from_url(REDIS_URL)
    client.hset(last_key(namespace, market), FUND, "not json")
    client.close()
    status, reason, notes = _one_signal(
        settings, LiveQuotesResource(url=REDIS_URL, namespace=namespace))
    assert status is OrderStatus.SUBMITTED, reason
    assert len(notes) == 1 and f"{namespace}:last:{market}[{FUND}]" in notes[0], notes
    assert "checked at the last close" in notes[0]


def test_an_unreachable_quote_store_falls_back_to_the_closes(settings: Settings) -> None:
    """The relay's Redis down (nothing listens on the port): the order is checked at the last
    close and goes out, and a warning says why."""
    status, reason, notes = _one_signal(
        settings, LiveQuotesResource(url="redis://127.0.0.1:9/0", namespace="etf"))
    assert status is OrderStatus.SUBMITTED, reason
    assert len(notes) == 1 and "live prices unreadable" in notes[0], notes
    assert "every fund is checked at the last close" in notes[0]
