"""What the desk API's intraday P&L (``GET /accounts/{id}/intraday``) reads from the
deployment, in one place: the deployment's clock, the market of its strategy, each fund's close
of the last session before today (the market data) and the quote relay's live prices (Redis).
The API imports it when the route is asked; the Dagster resources stay behind it."""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

from orchestration.settings import Settings
from trading.intraday import LastPrice


@dataclass(frozen=True)
class IntradayInputs:
    now: pd.Timestamp
    market: str
    previous_close: dict[str, float]
    live: dict[str, LastPrice]


def intraday_inputs(settings: Settings) -> IntradayInputs:
    from orchestration.deployment import market_data_resource, strategy_for
    from resources.clock import ClockResource
    from resources.live_quotes import LiveQuotesResource
    from sensors.risk_monitor import last_closes

    now = ClockResource(as_of=settings.execution.as_of,
                        timezone=settings.schedule_timezone).now()
    market = strategy_for(settings).market.name
    # From midnight, the newest closed session is the one before today's.
    previous = last_closes(market_data_resource(settings), now.normalize())
    live, _ = LiveQuotesResource(url=settings.redis_url).last_prices(market)
    return IntradayInputs(now, market, previous, live)
