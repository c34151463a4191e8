"""Signals netting several strategies, executed through the paper venue on a real ledger and
REAL raw bars of ``shared/data/cn_etf_morphkyan_raw`` (510300, 510500, June 2025): opposite
wishes cross inside the account at the reference close, the paper fills are attributed as they
are booked, and the strategies add up to the account."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from test_attribution import assert_adds_up

from rotation.costs import CostModel
from rotation.risk import RiskLimits
from rotation.sources.files import FileMarketSource, load_dataset_spec
from trading.attribution import SignalParts, netted_strategy, wishes_from_weights
from trading.executor import MarketView, execute_signal
from trading.ledger import Ledger, SignalRecord
from trading.models import SignalStatus, signal_id_of, weights_hash
from trading.paper import FrameQuotes, PaperBroker

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "config" / "datasets" / "cn_etf_morphkyan_raw.yaml"
SYMBOLS = ("510300", "510500")
D1, D2, D3 = dt.date(2025, 6, 10), dt.date(2025, 6, 11), dt.date(2025, 6, 12)
COSTS = CostModel(commission_bps=2.0, min_commission=5.0, slippage_bps=5.0, lot_size=100)
LIMITS = RiskLimits(max_weight=1.0, max_order_notional=2_000_000.0,
                    max_daily_notional=5_000_000.0)
LIQUID = {"510300": 5e9, "510500": 2e9}       # participation is not what is tested here
NETTED = netted_strategy(["alpha", "beta"])
CASH = 1_000_000.0


@pytest.fixture(scope="module")
def quotes(shared_data: Path) -> FrameQuotes:
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(DATASET))
    bars = source.load(dt.date(2025, 5, 1), D3).bars
    limits = {i.symbol: i.price_limit for i in source.instruments()}
    return FrameQuotes(bars.loc[bars["symbol"].isin(SYMBOLS)].reset_index(drop=True), limits)


@pytest.fixture
def venue(ledger_url: str, quotes: FrameQuotes) -> Iterator[tuple[Ledger, PaperBroker, str]]:
    ledger = Ledger(ledger_url)
    ledger.migrate()
    broker = PaperBroker(ledger_url, quotes, COSTS)
    account = f"acct-{uuid.uuid4().hex[:8]}"
    ledger.open_account(account, CASH, actor="test")
    yield ledger, broker, account
    broker.close()
    ledger.dispose()


def closes(quotes: FrameQuotes, day: dt.date) -> dict[str, float]:
    found = {s: quotes.quote(s, day) for s in SYMBOLS}
    return {s: q.close for s, q in found.items() if q is not None}


def decide(ledger: Ledger, account: str, day: dt.date,
           targets: dict[str, dict[str, float]], quotes: FrameQuotes) -> str:
    """The approval side of a netted signal: the account's weights and each strategy's wish
    (``targets``: fund -> strategy -> weight of the account) sized at the close of ``day``."""
    weights = {fund: sum(by.values()) for fund, by in targets.items()}
    signal_id = signal_id_of(NETTED, account, day, weights)
    ledger.record_signal(SignalRecord(
        signal_id=signal_id, account_id=account, strategy=NETTED, as_of=day, weights=weights,
        weights_hash=weights_hash(weights), status=SignalStatus.APPROVED, reasons=[],
        data_version=None, dagster_run_id=None), actor="gate")
    prices = closes(quotes, day)
    held = {s: {f: h.quantity for f, h in by.items()}
            for s, by in ledger.strategy_holdings(account).items()}
    equity = ledger.cash(account) + sum(p.quantity * prices[f]
                                        for f, p in ledger.positions(account).items())
    wishes = wishes_from_weights(targets, equity=equity, prices=prices, held=held)
    ledger.record_signal_parts(SignalParts(signal_id, wishes, {f: prices[f] for f in wishes}),
                               actor="gate")
    return signal_id


def execute(ledger: Ledger, broker: PaperBroker, account: str, signal_id: str,
            day: dt.date, session: dt.date, quotes: FrameQuotes) -> int:
    found = {s: quotes.quote(s, day) for s in SYMBOLS}
    market = MarketView(signal_day=day, order_session=session, closed_through=day,
                        quotes={s: q for s, q in found.items() if q is not None},
                        average_amount=LIQUID)
    report = execute_signal(ledger=ledger, venue=broker, signal_id=signal_id,
                            account_id=account, market=market, limits=LIMITS, costs=COSTS,
                            actor="test")
    assert report.status == "completed" and report.new_fills > 0, report.summary()
    return report.crossed


def test_paper_fills_of_a_netted_signal_are_attributed_and_add_up(
        venue: tuple[Ledger, PaperBroker, str], quotes: FrameQuotes) -> None:
    ledger, broker, account = venue
    first = decide(ledger, account, D1, {"510300": {"alpha": 0.4, "beta": 0.2}}, quotes)
    assert execute(ledger, broker, account, first, D1, D2, quotes) == 0
    fills = ledger.fills(account, signal_id=first)
    assert fills and all(set(ledger.fill_attribution(f.fill_id)) == {"alpha", "beta"}
                         for f in fills)
    held = ledger.strategy_holdings(account)
    # 2 : 1 wishes, the lot-rounded order shared pro rata (within a unit)
    assert abs(held["alpha"]["510300"].quantity - 2 * held["beta"]["510300"].quantity) <= 2
    assert_adds_up(ledger, account, closes(quotes, D2))

    # alpha halves 510300 and beta doubles it: the account's 510300 barely moves, the units
    # cross from alpha to beta at the close of D2; beta's 510500 is bought at the venue.
    second = decide(ledger, account, D2, {"510300": {"alpha": 0.2, "beta": 0.4},
                                          "510500": {"beta": 0.2}}, quotes)
    crossed = execute(ledger, broker, account, second, D2, D3, quotes)
    (crossing,) = ledger.crossings(second)
    assert (crossing.seller, crossing.buyer, crossing.units) == ("alpha", "beta", crossed)
    assert crossing.price == closes(quotes, D2)["510300"]
    assert crossed > 0
    assert {ledger.fill_attribution(f.fill_id).keys() == {"beta"}
            for f in ledger.fills(account, signal_id=second) if f.symbol == "510500"} == {True}
    assert_adds_up(ledger, account, closes(quotes, D3))
    # A replayed execution crosses nothing twice and books no fill twice.
    before = ledger.strategy_books(account, closes(quotes, D3))
    execute_signal(ledger=ledger, venue=broker, signal_id=second, account_id=account,
                   market=MarketView(signal_day=D2, order_session=D3, closed_through=D2,
                                     quotes={}, average_amount=LIQUID),
                   limits=LIMITS, costs=COSTS, actor="test")
    assert ledger.strategy_books(account, closes(quotes, D3)) == before
