"""GET /api/v1/accounts/{account_id}/intraday through the served API (``python -m api``) over a
seeded scratch ledger, the real stored bars (cn_etf_morphkyan_raw) and real Redis, with live
prices written as the quote relay writes them (trading.quotes)."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
import redis
from api_desk import REDIS_URL, SESSION, desk
from test_api_live import Live, api_env, free_port, serve_api

from api.permissions import Role
from api.schemas import AccountIntraday
from rotation.sources.files import FileMarketSource, load_dataset_spec
from trading.live_prices import last_key
from trading.paper import SHANGHAI

ROOT = Path(__file__).resolve().parents[1]
V1 = "/api/v1"
MARKET_DATA = "cn_etf_morphkyan_raw"
# A Redis database of its own: the API reads the deployment's namespace (etf), not a test one.
INTRADAY_REDIS = REDIS_URL.rsplit("/", 1)[0] + "/9"
# The deployment's clock pinned to the end of the seeded fill's session (2024-03-05).
NOW = dt.datetime.combine(SESSION, dt.time(23, 59), SHANGHAI)
MARKET = "cn_funds"      # the market profile of the strategy trading cn_etf_morphkyan_raw


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Live]:
    with desk(tmp_path_factory.mktemp("api_intraday_home"), login_attempts=1000) as d:
        log = tmp_path_factory.mktemp("api_intraday_log") / "server.log"
        env = api_env(d, API_PORT=str(free_port()), ETF_REDIS_URL=INTRADAY_REDIS,
                      ETF_MARKET_DATA__SOURCE="files", ETF_MARKET_DATA__DATASET=MARKET_DATA,
                      ETF_MARKET_DATA__FILES_ROOT=str(shared_data / MARKET_DATA),
                      ETF_EXECUTION__AS_OF=SESSION.isoformat())
        with serve_api(env, log) as url:
            yield Live(url=url, desk=d, log=log)


@pytest.fixture
def relay_hash() -> Iterator[redis.Redis]:
    client = redis.Redis.from_url(INTRADAY_REDIS)
    client.delete(last_key("etf", MARKET))
    yield client
    client.delete(last_key("etf", MARKET))
    client.close()


def previous_close(shared_data: Path, symbol: str) -> float:
    """510300's raw close of the session before SESSION (2024-03-04)."""
    source = FileMarketSource(shared_data / MARKET_DATA,
                              load_dataset_spec(ROOT / "config/datasets" / f"{MARKET_DATA}.yaml"))
    bars = source.load(dt.date(2024, 3, 4), dt.date(2024, 3, 4)).bars
    return float(bars.loc[bars["symbol"].astype(str) == symbol, "close"].iloc[0])


def get(served: Live, account: str) -> httpx.Response:
    return httpx.get(f"{served.url}{V1}/accounts/{account}/intraday",
                     headers=served.desk.headers(Role.VIEWER), timeout=60)


def test_intraday_pnl_at_a_fresh_live_price_else_at_the_close(
        served: Live, relay_hash: redis.Redis, shared_data: Path) -> None:
    prev = previous_close(shared_data, "510300")
    # The seeded book: 1000 units of 510300 bought on SESSION at 3.51, commission 5.
    trades = 1000 * (prev - 3.51) - 5.0
    live_price = round(prev * 1.01, 3)
    at = NOW - dt.timedelta(seconds=5)
    relay_hash.hset(last_key("etf", MARKET), "510300",
                    json.dumps({"price": live_price, "at": at.isoformat()}))
    response = get(served, served.desk.account)
    assert response.status_code == 200, response.text
    body = AccountIntraday.model_validate(response.json())
    assert (body.account_id, body.session, body.market) == (served.desk.account, SESSION, MARKET)
    assert body.at == NOW and body.max_age_seconds == 30.0
    (position,) = body.positions
    assert (position.symbol, position.units, position.source) == ("510300", 1000, "live")
    assert position.previous_close == pytest.approx(prev)
    assert position.price == live_price and position.price_at == at
    assert position.age_seconds == pytest.approx(5.0)
    assert position.pnl == pytest.approx(1000 * (live_price - prev))
    assert body.trades == pytest.approx(trades)
    assert body.total == pytest.approx(1000 * (live_price - 3.51) - 5.0)
    assert body.stale == []

    # Two minutes old: stale, the position is marked at its previous close.
    relay_hash.hset(last_key("etf", MARKET), "510300", json.dumps(
        {"price": live_price, "at": (NOW - dt.timedelta(minutes=2)).isoformat()}))
    body = AccountIntraday.model_validate(get(served, served.desk.account).json())
    (position,) = body.positions
    assert (position.source, position.price_at, position.age_seconds) == ("close", None, None)
    assert position.price == pytest.approx(prev) and position.pnl == 0.0
    assert body.stale == ["510300"] and body.total == pytest.approx(trades)


def test_intraday_pnl_of_an_unknown_account_is_404(served: Live) -> None:
    response = get(served, "no-such-account")
    assert response.status_code == 404, response.text
    assert "no-such-account" in response.text


def test_intraday_pnl_needs_a_session(served: Live) -> None:
    response = httpx.get(f"{served.url}{V1}/accounts/{served.desk.account}/intraday", timeout=30)
    assert response.status_code == 401


def test_session_trades_pnl_counts_the_session_s_fills_against_the_previous_close() -> None:
    from trading.live_prices import session_trades_pnl
    from trading.models import Fill, Side

    def fill(fid: str, side: Side, qty: int, price: float, session: dt.date) -> Fill:
        return Fill(fill_id=fid, client_order_id="o", account_id="a", symbol="510300",
                    side=side, quantity=qty, price=price, commission=5.0, session=session,
                    filled_at=dt.datetime(2024, 3, 5, 2, tzinfo=dt.UTC))

    fills = [fill("b", Side.BUY, 1000, 3.51, SESSION), fill("s", Side.SELL, 500, 3.60, SESSION),
             fill("old", Side.BUY, 100, 3.0, dt.date(2024, 3, 4))]
    assert session_trades_pnl(fills, {"510300": 3.55}, SESSION) == pytest.approx(
        1000 * (3.55 - 3.51) - 5 + 500 * (3.60 - 3.55) - 5)
    with pytest.raises(ValueError, match="fill b of 510300 on 2024-03-05 has no previous close"):
        session_trades_pnl(fills, {}, SESSION)
