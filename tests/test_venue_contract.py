"""The venue contract (trading.contract) against the paper broker and TWAP over it, on REAL raw
bars of ``shared/data/cn_etf_morphkyan_raw`` (unadjusted prices, volume in lots).

Sessions and funds come from that data; the blocked cases are real market events:

* limit-up: 512880 (证券ETF) opened at +10.0 % on 2024-10-08 (open 1.218, previous close 1.107);
* limit-down: 518880 (黄金ETF) opened at −10.0 % on 2026-02-02 (open 9.908, previous close 11.009);
* no bar: 513100 (纳指ETF) has no bar on 2022-01-13, an XSHG session (share-split suspension).
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest

from rotation.calendar import get_calendar
from rotation.costs import CostModel
from rotation.sources.files import FileMarketSource, load_dataset_spec
from trading.contract import MarketCase, VenueContract, VenueEnv, temporary_database
from trading.paper import FrameQuotes, PaperBroker
from trading.twap import TwapVenue
from trading.venue import ExecutionVenue

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "config" / "datasets" / "cn_etf_morphkyan_raw.yaml"

SESSION = dt.date(2025, 6, 11)
PREVIOUS = dt.date(2025, 6, 10)
SYMBOLS = ("510300", "510500", "512880", "518880")
LIMIT_UP = MarketCase("512880", dt.date(2024, 10, 8), dt.date(2024, 9, 30))
LIMIT_DOWN = MarketCase("518880", dt.date(2026, 2, 2), dt.date(2026, 1, 30))
NO_BAR = MarketCase("513100", dt.date(2022, 1, 13), dt.date(2022, 1, 12))
START, END = dt.date(2021, 12, 1), dt.date(2026, 3, 31)
CASH = 1_000_000.0
COSTS = CostModel(commission_bps=2.0, min_commission=5.0, slippage_bps=5.0, lot_size=100)


@dataclass
class RealMarket:
    bars: pd.DataFrame
    quotes: FrameQuotes

    def reference_price(self, symbol: str, session: dt.date) -> float:
        """The fund's last raw close before ``session`` (what the executor sizes with)."""
        rows = self.bars.loc[(self.bars["symbol"] == symbol)
                             & (self.bars["date"] < pd.Timestamp(session))]
        return float(rows["close"].iloc[-1])


@pytest.fixture(scope="module")
def market(shared_data: Path) -> RealMarket:
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(DATASET))
    wanted = {*SYMBOLS, LIMIT_UP.symbol, LIMIT_DOWN.symbol, NO_BAR.symbol}
    bars = source.load(START, END).bars
    bars = bars.loc[bars["symbol"].isin(wanted)].reset_index(drop=True)
    limits = {i.symbol: i.price_limit for i in source.instruments()}
    quotes = FrameQuotes(bars, limits)
    # The data really has what the tests rely on.
    for day in (PREVIOUS, SESSION):
        for symbol in SYMBOLS:
            q = quotes.quote(symbol, day)
            assert q is not None and q.previous_close is not None, (symbol, day)
            for price in (q.open, q.close):
                assert abs(price / q.previous_close - 1) < 0.05, (symbol, day, q)
    up = quotes.quote(LIMIT_UP.symbol, LIMIT_UP.session)
    assert up is not None and up.limit_up() and up.close >= up.open, up
    down = quotes.quote(LIMIT_DOWN.symbol, LIMIT_DOWN.session)
    assert down is not None and down.limit_down() and down.close <= down.open, down
    assert quotes.quote(NO_BAR.symbol, NO_BAR.session) is None
    assert get_calendar("XSHG", "2005-01-01").is_session(pd.Timestamp(NO_BAR.session))
    for case in (LIMIT_UP, LIMIT_DOWN, NO_BAR):
        prev = quotes.quote(case.symbol, case.previous_session)
        assert prev is not None and not prev.limit_up() and not prev.limit_down(), prev
    return RealMarket(bars=bars, quotes=quotes)


@pytest.fixture(scope="module")
def database() -> Iterator[str]:
    with temporary_database(prefix="etf_paper") as url:
        yield url


@pytest.fixture(scope="module")
def paper(database: str, market: RealMarket) -> Iterator[PaperBroker]:
    broker = PaperBroker(database, market.quotes, COSTS)
    yield broker
    broker.close()


def make_env(venue: ExecutionVenue, market: RealMarket,
             provision: Callable[[str, float], None] | None = None) -> VenueEnv:
    """The contract's case on the real market; ``provision(account, cash)`` first sets up what
    an account needs beyond ``open_account`` (the vn.py venue: its venue process)."""
    def new_account(cash: float) -> str:
        account = f"acct-{uuid.uuid4().hex[:12]}"
        if provision is not None:
            provision(account, cash)
        venue.open_account(account, cash)
        return account

    return VenueEnv(
        venue=venue, account_id=new_account(CASH), cash=CASH, session=SESSION,
        symbols=SYMBOLS, lot=COSTS.lot_size, reference_price=market.reference_price,
        previous_session=PREVIOUS, new_account=new_account,
        limit_up=lambda: LIMIT_UP, limit_down=lambda: LIMIT_DOWN, no_bar=lambda: NO_BAR,
    )


class TestPaperBrokerContract(VenueContract):
    @pytest.fixture
    def venue_env(self, paper: PaperBroker, market: RealMarket) -> VenueEnv:
        return make_env(paper, market)


class TestTwapOverPaperContract(VenueContract):
    @pytest.fixture
    def venue_env(self, paper: PaperBroker, market: RealMarket) -> VenueEnv:
        return make_env(TwapVenue(paper, slices=3, lot_size=COSTS.lot_size), market)
