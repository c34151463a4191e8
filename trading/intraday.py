"""The book during the session at live prices (issue 19 item 4), pure functions: what the
intraday risk monitor (``sensors/risk_monitor.py``) checks between the daily runs.

A held fund is marked at its live last price when that price is fresh (at most
``max_age`` old); otherwise at its last close, and named as stale: a monitor that silently
valued a halted feed at yesterday's prices would report a calm that nobody measured.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from rotation.risk import RiskLimits, RiskViolation


@dataclass(frozen=True)
class LastPrice:
    price: float
    at: dt.datetime             # when it traded (timezone-aware)


@dataclass(frozen=True)
class IntradayBook:
    at: dt.datetime
    cash: float
    values: dict[str, float]            # fund -> value at its mark
    close_equity: float                 # equity at the last close (its valuation)
    peak_equity: float                  # highest equity of the valuations and now
    stale: tuple[str, ...]              # held funds marked at the last close

    @property
    def equity(self) -> float:
        return self.cash + sum(self.values.values())

    @property
    def pnl(self) -> float:
        return self.equity - self.close_equity

    @property
    def drawdown(self) -> float:
        return 1.0 - self.equity / self.peak_equity if self.peak_equity > 0 else 0.0


def mark(positions: Mapping[str, int], cash: float, closes: Mapping[str, float],
         live: Mapping[str, LastPrice], equity_history: Sequence[float], *, now: dt.datetime,
         max_age: dt.timedelta) -> IntradayBook:
    """The book at ``now``: each position at its fresh live price, else at its last close.
    ``equity_history``: the account's equity at each past close (the last is the reference)."""
    if not equity_history:
        raise ValueError("no valuation of the account yet: nothing to measure the session "
                         "against (positions_report records one per session)")
    values, stale = {}, []
    for symbol, units in positions.items():
        quote = live.get(symbol)
        if quote is not None and dt.timedelta(0) <= now - quote.at <= max_age:
            values[symbol] = units * quote.price
        else:
            values[symbol] = units * closes[symbol]
            stale.append(symbol)
    equity = cash + sum(values.values())
    return IntradayBook(at=now, cash=cash, values=values, close_equity=equity_history[-1],
                        peak_equity=max(*equity_history, equity), stale=tuple(sorted(stale)))


def check_intraday(book: IntradayBook, limits: RiskLimits, account_id: str
                   ) -> list[RiskViolation]:
    """The limits that can move within a session: the loss since the last close
    (``intraday_loss``), the drawdown stop and the gross exposure at live prices."""
    out = []
    loss = -book.pnl / book.close_equity if book.close_equity > 0 else 0.0
    if limits.max_intraday_loss is not None and loss > limits.max_intraday_loss:
        out.append(RiskViolation(
            "account", "intraday_loss", account_id,
            f"equity {book.equity:,.2f} is {loss:.2%} below the last close's "
            f"{book.close_equity:,.2f}, beyond the limit {limits.max_intraday_loss:.2%}"))
    if book.drawdown >= limits.drawdown_stop:
        out.append(RiskViolation(
            "strategy", "drawdown_stop", account_id,
            f"equity {book.equity:,.2f} is {book.drawdown:.2%} below its peak "
            f"{book.peak_equity:,.2f}, at or beyond the drawdown stop {limits.drawdown_stop:.2%}"))
    exposure = sum(abs(v) for v in book.values.values()) / book.equity if book.equity > 0 \
        else float("inf")
    if exposure > limits.max_gross_exposure + limits.weight_tolerance:
        out.append(RiskViolation(
            "account", "gross_exposure", account_id,
            f"positions at live prices are {exposure:.2%} of equity, above the max gross "
            f"exposure {limits.max_gross_exposure:.2%}"))
    return out
