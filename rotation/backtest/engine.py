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
* Costs: commission ``max(rate × notional, min_commission)`` per order, plus the market's
  sell-side duties (``sell_rate × notional``: stamp duty, a regulator's fee) on sells; slippage in
  bp moves the fill price against the trade (buy higher, sell lower).
* Cash: a buy that the cash cannot pay (fees included) is cut to the largest affordable number
  of lots (flag ``cash_short``; zero lots → blocked). Sale proceeds of a fund whose class
  reuses sale cash the same session (``reuse``) pay for that session's buys; others are held
  back until the session ends.
* Settlement per instrument class (:mod:`rotation.market`): units bought in a session are
  counted in ``bought_today``; a fund of a T+1 class cannot sell them in that session (flag
  ``t1``, the sellable part fills), a T+0 fund can. One **net** order per fund per fill point
  (target − holding); a second fill point, the close (``close_target``), lets a session hold a
  round trip: bought at the open, sold at the close.
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
(REC_ROW, REC_COL, REC_SIDE, REC_REQ, REC_UNITS, REC_PRICE, REC_NOTIONAL, REC_FEE, REC_FLAGS,
 REC_AT) = range(10)
N_REC = 10
FILL_POINTS = ("open", "close")
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
            notional: float, fee: float, flags: int, at: int) -> None:
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
    r[REC_AT] = at


@numba.njit(cache=True)
def _fee(notional: float, rate: float, min_fee: float) -> float:
    return max(rate * notional, min_fee)


@numba.njit(cache=True)
def _sell_fee(notional: float, rate: float, min_fee: float, sell_rate: float) -> float:
    return _fee(notional, rate, min_fee) + sell_rate * notional


@numba.njit(cache=True)
def _affordable_lots(cash: float, lot_value: float, rate: float, min_fee: float) -> int:
    """Largest number of lots whose cost with commission ``cash`` pays."""
    k1 = math.floor(cash / (lot_value * (1.0 + rate)))
    k2 = math.floor((cash - min_fee) / lot_value)
    k = max(min(k1, k2), 0)
    while k > 0:
        if k * lot_value + _fee(k * lot_value, rate, min_fee) <= cash:
            break
        k -= 1
    return k


@numba.njit(cache=True)
def _fill_nb(t: int, at: int, w: np.ndarray, px: np.ndarray, has: np.ndarray,
             up: np.ndarray, down: np.ndarray, fac: np.ndarray, units: np.ndarray,
             bought: np.ndarray, last_close: np.ndarray, state: np.ndarray, t0: np.ndarray,
             reuse: np.ndarray, costs: np.ndarray, records: np.ndarray, n_rec: int) -> int:
    """Orders of one fill point (``at`` 0 = open, 1 = close) towards the weights ``w`` at the
    prices ``px``: sells first, then buys. ``state`` = [cash, cash held back until the
    session ends]; ``costs`` = [rate, min_fee, sell_rate, slippage, lot_size]. Returns the
    number of records written."""
    rate, min_fee, sell_rate, slippage, lot_size = costs[0], costs[1], costs[2], costs[3], \
        costs[4]
    m = w.shape[0]
    value = state[0] + state[1]
    for j in range(m):
        if units[j] != 0.0:
            value += units[j] * (px[j] if has[j] else last_close[j])
    delta = np.zeros(m)
    for j in range(m):
        if math.isnan(w[j]):
            continue
        p = px[j] if has[j] else last_close[j]
        if math.isnan(p):
            if w[j] > 0.0:
                delta[j] = np.inf  # never traded yet and no bar: a blocked buy
            continue
        delta[j] = (w[j] * value - units[j] * p) / p
        if w[j] <= 0.0 and units[j] > 0.0:
            delta[j] = -units[j]
    for j in range(m):  # sells
        if delta[j] >= 0.0 or units[j] <= 0.0:
            continue
        if w[j] <= 0.0:
            req = units[j]
        elif not has[j]:
            req = min(-delta[j], units[j])
        else:
            lot = lot_size / fac[j]
            req = min(math.floor(-delta[j] / lot + _EPS) * lot, units[j])
        if req <= 0.0:
            continue
        flags = 0
        qty = req
        if not has[j]:
            flags |= FLAG_NO_BAR
            qty = 0.0
        elif down[j]:
            flags |= FLAG_LIMIT_DOWN
            qty = 0.0
        elif not t0[j] and qty > units[j] - bought[j]:
            flags |= FLAG_T1  # units bought this session are not sellable (T+1 class)
            qty = max(units[j] - bought[j], 0.0)
        price = px[j] * (1.0 - slippage) if has[j] else np.nan
        notional = 0.0
        fee = 0.0
        if qty > 0.0:
            notional = qty * price
            fee = _sell_fee(notional, rate, min_fee, sell_rate)
            state[0 if reuse[j] else 1] += notional - fee
            units[j] -= qty
            if units[j] * fac[j] < 1e-6:
                units[j] = 0.0
        _record(records[n_rec], t, j, -1.0, req, qty, price, notional, fee, flags, at)
        n_rec += 1
    for j in range(m):  # buys, in column order, each limited by the cash left
        if delta[j] <= 0.0:
            continue
        flags = 0
        if not has[j]:
            req = 0.0 if math.isinf(delta[j]) else delta[j]
            flags |= FLAG_NO_BAR
            price = np.nan
            qty = 0.0
        else:
            lot = lot_size / fac[j]
            req = math.floor(delta[j] / lot + _EPS) * lot
            if req <= 0.0:
                continue
            price = px[j] * (1.0 + slippage)
            qty = req
            if up[j]:
                flags |= FLAG_LIMIT_UP
                qty = 0.0
            elif qty * price + _fee(qty * price, rate, min_fee) > state[0]:
                flags |= FLAG_CASH_SHORT
                qty = min(_affordable_lots(state[0], lot * price, rate, min_fee) * lot, req)
        notional = 0.0
        fee = 0.0
        if qty > 0.0:
            notional = qty * price
            fee = _fee(notional, rate, min_fee)
            state[0] -= notional + fee
            units[j] += qty
            bought[j] += qty
        _record(records[n_rec], t, j, 1.0, req, qty, price, notional, fee, flags, at)
        n_rec += 1
    return n_rec


@numba.njit(cache=True)
def _decides(row: np.ndarray) -> bool:
    return bool(np.any(~np.isnan(row)))


@numba.njit(cache=True)
def simulate_nb(target: np.ndarray, open_adj: np.ndarray, close_adj: np.ndarray,
                factor: np.ndarray, has_bar: np.ndarray, limit_up: np.ndarray,
                limit_down: np.ndarray, init_cash: float, costs: np.ndarray, t0: np.ndarray,
                reuse: np.ndarray, close_target: np.ndarray, close_up: np.ndarray,
                close_down: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Run the event loop. Returns ``(equity, cash, units_adj, records)`` (see module doc).

    ``costs`` = [rate, min_fee, sell_rate, slippage, lot_size]; ``t0`` / ``reuse``: per fund,
    same-session sells allowed / sale cash usable in the session. ``close_target`` (same shape
    as ``target``, NaN = no order) is filled at the close of its own row, after that session's
    open fills; ``close_up`` / ``close_down`` flag a close at the limit. ``records`` has one
    row per order attempt (columns ``REC_*``); blocked orders have zero filled units.
    """
    n, m = target.shape
    equity = np.empty(n)
    cash_out = np.empty(n)
    units_out = np.zeros((n, m))
    records = np.empty((2 * n * m + 1, N_REC))
    n_rec = 0
    units = np.zeros(m)
    bought = np.zeros(m)
    last_close = np.full(m, np.nan)
    state = np.array([init_cash, 0.0])
    for t in range(n):
        bought[:] = 0.0
        if t > 0 and _decides(target[t - 1]):
            n_rec = _fill_nb(t, 0, target[t - 1], open_adj[t], has_bar[t], limit_up[t],
                             limit_down[t], factor[t], units, bought, last_close, state, t0,
                             reuse, costs, records, n_rec)
        if _decides(close_target[t]):
            n_rec = _fill_nb(t, 1, close_target[t], close_adj[t], has_bar[t], close_up[t],
                             close_down[t], factor[t], units, bought, last_close, state, t0,
                             reuse, costs, records, n_rec)
        state[0] += state[1]  # held-back sale cash is usable from the next session
        state[1] = 0.0
        value = state[0]
        for j in range(m):  # mark at the close
            if has_bar[t, j]:
                last_close[j] = close_adj[t, j]
            if units[j] != 0.0:
                value += units[j] * last_close[j]
            units_out[t, j] = units[j]
        equity[t] = value
        cash_out[t] = state[0]
    return equity, cash_out, units_out, records[:n_rec].copy()
