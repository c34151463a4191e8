"""Numba event loop of a long-only fund portfolio with shared cash (SPEC §1 ``T1_OPEN``, §7).

Conventions
-----------
* Targets of row D are decided after close(D) and executed at open(D+1). A row without any
  finite weight is "no decision"; inside a decision row a NaN cell means "no order for that
  fund" (its holding is kept), a finite cell is the fund's target weight of equity.
* Prices: the loop runs in **adjusted price space** (adjusted = raw × ``factor``), so splits and
  cash distributions never move equity. Units are held as *adjusted units*
  (raw units = adjusted units × factor of the day); the lot of day t in adjusted units is
  ``lot_size / factor[t]``, i.e. orders are sized and rounded in raw lots of 100 units, and
  notional / commission (units × price) are the same in both spaces.
* Sizing: order value = target weight × equity − holding value, both valued at the execution
  open (last close for a fund without a bar). Sells (in column order) before buys (in column
  order); buys are rounded down to whole lots; a sell to a zero target closes the whole
  position (odd remainder included), other sells are rounded down to whole lots.
* Costs: commission ``max(rate × notional, min_commission)`` per order; slippage in bp moves the
  fill price against the trade (buy higher, sell lower); no stamp duty.
* Cash: a buy that the cash cannot pay (fees included) is cut to the largest affordable number
  of lots (flag ``cash_short``; zero lots → blocked).
* T+1: one **net** order per fund per session (target − holding), so a buy and a sell of one
  fund decided for the same session are netted into a single order for the difference. Units
  bought in a session are counted in ``bought_today`` and are not sellable in that session
  (reset at the next session); with one net order per session this guard can only bite on a
  sell following a buy of the same fund in the same session, which it blocks (flag ``t1``).
* Blocks (no fill, flag set): ``no_bar`` (no bar on the execution day), ``limit_up`` (cannot
  buy), ``limit_down`` (cannot sell). Blocked orders are not carried to the next session.
* Equity is marked at the close (last close for a fund without a bar).
"""

from __future__ import annotations

import math

import numba
import numpy as np

# Order-ledger flags (bit mask).
FLAG_LIMIT_UP = 1
FLAG_LIMIT_DOWN = 2
FLAG_NO_BAR = 4
FLAG_CASH_SHORT = 8
FLAG_T1 = 16
FLAG_NAMES = {
    FLAG_LIMIT_UP: "limit_up",
    FLAG_LIMIT_DOWN: "limit_down",
    FLAG_NO_BAR: "no_bar",
    FLAG_CASH_SHORT: "cash_short",
    FLAG_T1: "t1",
}
# Columns of the raw order records returned by the kernel.
REC_ROW, REC_COL, REC_SIDE, REC_REQ, REC_UNITS, REC_PRICE, REC_NOTIONAL, REC_FEE, REC_FLAGS = (
    range(9)
)
N_REC = 9
_EPS = 1e-9


@numba.njit(cache=True)
def limit_flags_nb(open_adj: np.ndarray, close_adj: np.ndarray, factor: np.ndarray,
                   has_bar: np.ndarray, limit: np.ndarray, tick: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Limit-up / limit-down at the open of each session.

    Reference = previous available close, ex-adjusted to the day's raw scale
    (``close_adj[prev] / factor[t]``); ``open_raw >= ref × (1 + limit) − tick`` is limit-up,
    ``open_raw <= ref × (1 − limit) + tick`` limit-down. ``limit`` NaN = no limit.
    """
    n, m = open_adj.shape
    up = np.zeros((n, m), dtype=np.bool_)
    down = np.zeros((n, m), dtype=np.bool_)
    for j in range(m):
        lim = limit[j]
        prev = np.nan
        for t in range(n):
            if not has_bar[t, j]:
                continue
            if not math.isnan(lim) and not math.isnan(prev):
                f = factor[t, j]
                ref = prev / f
                o = open_adj[t, j] / f
                up[t, j] = o >= ref * (1.0 + lim) - tick
                down[t, j] = o <= ref * (1.0 - lim) + tick
            prev = close_adj[t, j]
    return up, down


@numba.njit(cache=True)
def _record(r: np.ndarray, t: int, j: int, side: float, req: float, qty: float, price: float,
            notional: float, fee: float, flags: int) -> None:
    """One row of the order ledger (sells and buys share the layout)."""
    r[REC_ROW] = t
    r[REC_COL] = j
    r[REC_SIDE] = side
    r[REC_REQ] = req
    r[REC_UNITS] = qty
    r[REC_PRICE] = price
    r[REC_NOTIONAL] = notional
    r[REC_FEE] = fee
    r[REC_FLAGS] = flags


@numba.njit(cache=True)
def _fee(notional: float, rate: float, min_fee: float) -> float:
    return max(rate * notional, min_fee)


@numba.njit(cache=True)
def simulate_nb(target: np.ndarray, open_adj: np.ndarray, close_adj: np.ndarray,
                factor: np.ndarray, has_bar: np.ndarray, limit_up: np.ndarray,
                limit_down: np.ndarray, init_cash: float, rate: float, min_fee: float,
                slippage: float, lot_size: float
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the event loop. Returns ``(equity, cash, units_adj, records)`` (see module doc).

    ``records`` has one row per order attempt (columns ``REC_*``); blocked orders have zero
    filled units.
    """
    n, m = target.shape
    equity = np.empty(n)
    cash_out = np.empty(n)
    units_out = np.zeros((n, m))
    records = np.empty((n * m + 1, N_REC))
    n_rec = 0
    units = np.zeros(m)
    bought = np.zeros(m)
    last_close = np.full(m, np.nan)
    delta = np.zeros(m)
    cash = init_cash
    for t in range(n):
        bought[:] = 0.0
        decide = False
        if t > 0:
            for j in range(m):
                if not math.isnan(target[t - 1, j]):
                    decide = True
                    break
        if decide:
            # Equity at the open: holdings valued at the open (last close without a bar).
            value = cash
            for j in range(m):
                if units[j] != 0.0:
                    p = open_adj[t, j] if has_bar[t, j] else last_close[j]
                    value += units[j] * p
            for j in range(m):
                delta[j] = 0.0
                w = target[t - 1, j]
                if math.isnan(w):
                    continue
                p = open_adj[t, j] if has_bar[t, j] else last_close[j]
                if math.isnan(p):
                    if w > 0.0:
                        delta[j] = np.inf  # never traded yet and no bar: a blocked buy
                    continue
                delta[j] = (w * value - units[j] * p) / p
                if w <= 0.0 and units[j] > 0.0:
                    delta[j] = -units[j]
            # Sells first.
            for j in range(m):
                if delta[j] >= 0.0 or units[j] <= 0.0:
                    continue
                if target[t - 1, j] <= 0.0:
                    req = units[j]
                elif not has_bar[t, j]:
                    req = min(-delta[j], units[j])
                else:
                    lot = lot_size / factor[t, j]
                    req = min(math.floor(-delta[j] / lot + _EPS) * lot, units[j])
                if req <= 0.0:
                    continue
                flags = 0
                qty = req
                if not has_bar[t, j]:
                    flags |= FLAG_NO_BAR
                    qty = 0.0
                elif limit_down[t, j]:
                    flags |= FLAG_LIMIT_DOWN
                    qty = 0.0
                else:
                    sellable = units[j] - bought[j]
                    if qty > sellable:
                        flags |= FLAG_T1
                        qty = max(sellable, 0.0)
                price = open_adj[t, j] * (1.0 - slippage) if has_bar[t, j] else np.nan
                notional = 0.0
                fee = 0.0
                if qty > 0.0:
                    notional = qty * price
                    fee = _fee(notional, rate, min_fee)
                    cash += notional - fee
                    units[j] -= qty
                    if units[j] * factor[t, j] < 1e-6:
                        units[j] = 0.0
                _record(records[n_rec], t, j, -1.0, req, qty, price, notional, fee, flags)
                n_rec += 1
            # Then buys, in column order, each limited by the cash left.
            for j in range(m):
                if delta[j] <= 0.0:
                    continue
                flags = 0
                if not has_bar[t, j]:
                    req = 0.0 if math.isinf(delta[j]) else delta[j]
                    flags |= FLAG_NO_BAR
                    price = np.nan
                    qty = 0.0
                else:
                    lot = lot_size / factor[t, j]
                    req = math.floor(delta[j] / lot + _EPS) * lot
                    if req <= 0.0:
                        continue
                    price = open_adj[t, j] * (1.0 + slippage)
                    qty = req
                    if limit_up[t, j]:
                        flags |= FLAG_LIMIT_UP
                        qty = 0.0
                    else:
                        cost = qty * price + _fee(qty * price, rate, min_fee)
                        if cost > cash:
                            flags |= FLAG_CASH_SHORT
                            lot_value = lot * price
                            k1 = math.floor(cash / (lot_value * (1.0 + rate)))
                            k2 = math.floor((cash - min_fee) / lot_value)
                            k = max(min(k1, k2), 0)
                            while k > 0:
                                c = k * lot_value + _fee(k * lot_value, rate, min_fee)
                                if c <= cash:
                                    break
                                k -= 1
                            qty = min(k * lot, req)
                notional = 0.0
                fee = 0.0
                if qty > 0.0:
                    notional = qty * price
                    fee = _fee(notional, rate, min_fee)
                    cash -= notional + fee
                    units[j] += qty
                    bought[j] += qty
                _record(records[n_rec], t, j, 1.0, req, qty, price, notional, fee, flags)
                n_rec += 1
        # Mark at the close.
        value = cash
        for j in range(m):
            if has_bar[t, j]:
                last_close[j] = close_adj[t, j]
            if units[j] != 0.0:
                value += units[j] * last_close[j]
            units_out[t, j] = units[j]
        equity[t] = value
        cash_out[t] = cash
    return equity, cash_out, units_out, records[:n_rec].copy()
