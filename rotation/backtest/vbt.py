"""Independent replay of the engine's executed orders in vectorbt (SPEC §7 reference check).

The filled orders of a :class:`~rotation.backtest.BacktestResult` are fed to
``vbt.Portfolio.from_orders`` in adjusted space: size = adjusted units (``amount``), price =
adjusted fill price (slippage included), ``fees`` = commission rate (plus the sell-side duty
rate on sells) and per-order ``fixed_fees`` = ``max(min_commission − rate × notional, 0)`` so
that the total fee is ``max(rate × notional, min_commission) + sell duties``; orders at the
close replay on a second row of their session; one group with shared cash; within each session the
call sequence puts sells before buys (column order inside each side, as the engine). vectorbt is
imported lazily (slow import).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    from rotation.backtest import BacktestResult


def order_arrays(result: BacktestResult) -> dict[str, np.ndarray]:
    """``size``, ``price``, ``fees``, ``fixed_fees`` and ``call_seq`` arrays (rows × symbols).

    One row per session, or two (open fills, then close fills) when the backtest has orders at
    the close."""
    idx, cols = result.equity.index, result.positions.columns
    filled = result.orders.loc[~result.orders["blocked"]]
    per_session = 2 if (filled["fill_at"] == "close").any() else 1
    n, m = len(idx) * per_session, len(cols)
    size = np.full((n, m), np.nan)
    price = np.full((n, m), np.nan)
    fees = np.zeros((n, m))
    fixed = np.zeros((n, m))
    side = np.zeros((n, m))
    costs = result.config.costs
    rate = costs.commission_rate
    rows = idx.get_indexer(filled["date"]) * per_session \
        + (filled["fill_at"].to_numpy() == "close").astype(np.int64)
    js = cols.get_indexer(filled["symbol"])
    sign = np.where(filled["side"].to_numpy() == "buy", 1.0, -1.0)
    size[rows, js] = sign * filled["adj_units"].to_numpy(float)
    price[rows, js] = filled["adj_price"].to_numpy(float)
    notional = filled["notional"].to_numpy(float)
    fees[rows, js] = rate + np.where(sign < 0, costs.sell_fee_rate, 0.0)
    fixed[rows, js] = np.maximum(costs.min_commission - rate * notional, 0.0)
    side[rows, js] = sign
    # Sells (side −1) first, then no-order columns, then buys; stable in column order.
    call_seq = np.argsort(side, axis=1, kind="stable").astype(np.int64)
    return {"size": size, "price": price, "fees": fees, "fixed_fees": fixed,
            "call_seq": call_seq}


def _marks(result: BacktestResult, per_session: int) -> pd.DataFrame:
    """Valuation prices per row: the close; with two rows per session the first is the open."""
    close = result.panels.close_marked.fillna(1.0)  # before listing: no position, any price
    if per_session == 1:
        return close
    opens = result.panels.open.fillna(close).to_numpy(float)
    rows = np.empty((2 * len(close), close.shape[1]))
    rows[0::2], rows[1::2] = opens, close.to_numpy(float)
    return pd.DataFrame(rows, columns=close.columns)


def replay(result: BacktestResult, **kwargs: Any) -> pd.Series:
    """Daily equity (value at the close) of the engine's filled orders replayed in vectorbt."""
    import vectorbt as vbt

    arrays = order_arrays(result)
    per_session = len(arrays["size"]) // max(len(result.equity), 1)
    pf = vbt.Portfolio.from_orders(
        close=_marks(result, per_session),
        size=arrays["size"],
        size_type="amount",
        direction="longonly",
        price=arrays["price"],
        fees=arrays["fees"],
        fixed_fees=arrays["fixed_fees"],
        init_cash=result.config.initial_cash,
        cash_sharing=True,
        group_by=True,
        call_seq=arrays["call_seq"],
        freq="1D",
        **kwargs,
    )
    value = np.asarray(pf.value(), dtype=float).ravel()[per_session - 1::per_session]
    return pd.Series(value, index=result.equity.index, name="vbt_equity")


def compare(engine_equity: pd.Series | BacktestResult, vbt_equity: pd.Series) -> float:
    """Maximum relative difference between the engine's and vectorbt's daily equity."""
    eq = engine_equity if isinstance(engine_equity, pd.Series) else engine_equity.equity
    a = eq.to_numpy(float)
    b = vbt_equity.reindex(eq.index).to_numpy(float)
    return float(np.max(np.abs(a / b - 1.0)))
