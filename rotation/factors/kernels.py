"""Numba factor kernels over ``(dates × symbols)`` float64 panels (SPEC §4).

Conventions shared by every kernel
----------------------------------
* Inputs are 2-D float64 arrays shaped ``(dates, symbols)``; NaN means "no bar". The output has
  the same shape.
* **Bar clock.** Each fund is processed on its own sequence of bars: the rows where *every*
  input of the kernel is finite. A window of ``w`` observations is the last ``w`` bars of that
  fund, so a suspension pauses the fund's clock (the first return after a suspension is the
  return since the last bar before it, as a holder would experience it) and a late listing
  starts the clock at the first bar. Rows without a bar are NaN in the output — never 0, never
  forward-filled. Staleness limits belong to the cross-section filter
  (``rotation.cross_section.coverage``), not to the factors.
* **Warm-up.** A value exists only once the full window is available; each kernel documents its
  warm-up in bars (``warmup`` in ``rotation.factors.registry``). Before that the output is NaN.
  A window containing an undefined term (e.g. zero traded value in Amihud) is NaN; missing
  terms are never treated as zero.
* **No look-ahead.** The value at row ``t`` is a function of rows ``<= t`` only, computed in a
  fixed order, so altering any data after ``t`` leaves it bit-identical.
* Returns are simple close-to-close returns of the (adjusted) close, ``c[k] / c[k-1] - 1``.
  Prices are assumed positive (SPEC §2 quality gate). Window statistics are computed directly
  (two-pass mean / deviation) for accuracy, not with running sums.
* **Recursive kernels** (RSI, ADX: Wilder smoothing; MACD: EMAs) carry state from the fund's
  first bar in the panel, so their values depend (with geometrically decaying weight) on where
  the panel starts. Give them a burn-in of several windows before the first date you use.

Every factor has a 1-D kernel ``<name>_1d_nb`` (one fund's compressed bar series) and a 2-D
kernel ``<name>_nb`` (the panel), which gathers each column's bars, calls the 1-D kernel and
scatters the result back.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

# -- helpers -----------------------------------------------------------------------------------


@njit(cache=True)
def valid_rows_nb(a, b, c, d, col):
    """Row indices of column ``col`` where all four inputs are finite (pass repeats if fewer)."""
    n = a.shape[0]
    idx = np.empty(n, dtype=np.int64)
    cnt = 0
    for t in range(n):
        if (
            np.isfinite(a[t, col])
            and np.isfinite(b[t, col])
            and np.isfinite(c[t, col])
            and np.isfinite(d[t, col])
        ):
            idx[cnt] = t
            cnt += 1
    return idx[:cnt]


@njit(cache=True)
def gather_nb(a, idx, col):
    out = np.empty(idx.shape[0], dtype=np.float64)
    for k in range(idx.shape[0]):
        out[k] = a[idx[k], col]
    return out


@njit(cache=True)
def scatter_nb(out, res, idx, col):
    for k in range(idx.shape[0]):
        out[idx[k], col] = res[k]


@njit(cache=True)
def returns_1d_nb(c):
    """Simple returns on the bar clock; the first bar has none (NaN)."""
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(1, n):
        out[k] = c[k] / c[k - 1] - 1.0
    return out


@njit(cache=True)
def _mean(x, lo, hi):
    s = 0.0
    for i in range(lo, hi):
        s += x[i]
    return s / (hi - lo)


@njit(cache=True)
def _std(x, lo, hi, ddof):
    m = _mean(x, lo, hi)
    s = 0.0
    for i in range(lo, hi):
        s += (x[i] - m) * (x[i] - m)
    return math.sqrt(s / (hi - lo - ddof))


@njit(cache=True)
def _corr(x, y, lo, hi):
    """Pearson correlation of ``x[lo:hi]`` and ``y[lo:hi]``; NaN if either is constant."""
    mx = _mean(x, lo, hi)
    my = _mean(y, lo, hi)
    sxy = 0.0
    sxx = 0.0
    syy = 0.0
    for i in range(lo, hi):
        dx = x[i] - mx
        dy = y[i] - my
        sxy += dx * dy
        sxx += dx * dx
        syy += dy * dy
    if not (sxx > 0.0 and syy > 0.0):
        return np.nan
    return sxy / math.sqrt(sxx * syy)


@njit(cache=True)
def _max_drawdown(c, lo, hi):
    """Largest peak-to-trough loss ``1 - c / running_max`` along ``c[lo:hi]`` (>= 0)."""
    peak = c[lo]
    mdd = 0.0
    for i in range(lo, hi):
        if c[i] > peak:
            peak = c[i]
        dd = 1.0 - c[i] / peak
        if dd > mdd:
            mdd = dd
    return mdd


@njit(cache=True)
def _true_range(h, lo_, c_prev, k):
    return max(h[k] - lo_[k], abs(h[k] - c_prev), abs(lo_[k] - c_prev))


# -- return / risk -----------------------------------------------------------------------------


@njit(cache=True)
def momentum_1d_nb(c, window):
    """``c[k] / c[k - window] - 1``. Warm-up ``window + 1`` bars."""
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(window, n):
        out[k] = c[k] / c[k - window] - 1.0
    return out


@njit(cache=True, nogil=True)
def momentum_nb(close, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        scatter_nb(out, momentum_1d_nb(gather_nb(close, idx, j), window), idx, j)
    return out


@njit(cache=True)
def volatility_1d_nb(c, window, periods_per_year):
    """Sample std (ddof=1) of the last ``window`` returns × sqrt(periods_per_year).

    Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    r = returns_1d_nb(c)
    out = np.full(n, np.nan)
    scale = math.sqrt(periods_per_year)
    for k in range(window, n):
        out[k] = _std(r, k - window + 1, k + 1, 1) * scale
    return out


@njit(cache=True, nogil=True)
def volatility_nb(close, window, periods_per_year):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        res = volatility_1d_nb(gather_nb(close, idx, j), window, periods_per_year)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def sharpe_1d_nb(c, window, periods_per_year):
    """``mean / std (ddof=1)`` of the last ``window`` returns × sqrt(periods_per_year).

    No risk-free rate. NaN when the std is zero. Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    r = returns_1d_nb(c)
    out = np.full(n, np.nan)
    scale = math.sqrt(periods_per_year)
    for k in range(window, n):
        lo = k - window + 1
        sd = _std(r, lo, k + 1, 1)
        if sd > 0.0:
            out[k] = _mean(r, lo, k + 1) / sd * scale
    return out


@njit(cache=True, nogil=True)
def sharpe_nb(close, window, periods_per_year):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        res = sharpe_1d_nb(gather_nb(close, idx, j), window, periods_per_year)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def max_drawdown_1d_nb(c, window):
    """Max drawdown (positive fraction) of the close path ``c[k-window .. k]`` (window returns).

    Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(window, n):
        out[k] = _max_drawdown(c, k - window, k + 1)
    return out


@njit(cache=True, nogil=True)
def max_drawdown_nb(close, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        scatter_nb(out, max_drawdown_1d_nb(gather_nb(close, idx, j), window), idx, j)
    return out


@njit(cache=True)
def calmar_1d_nb(c, window, periods_per_year):
    """Annualised window return / max drawdown of the same path.

    ``((c[k] / c[k-window]) ** (periods_per_year / window) - 1) / mdd(c[k-window .. k])``;
    NaN when the drawdown is zero. Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    expo = periods_per_year / window
    for k in range(window, n):
        mdd = _max_drawdown(c, k - window, k + 1)
        if mdd > 0.0:
            out[k] = ((c[k] / c[k - window]) ** expo - 1.0) / mdd
    return out


@njit(cache=True, nogil=True)
def calmar_nb(close, window, periods_per_year):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        res = calmar_1d_nb(gather_nb(close, idx, j), window, periods_per_year)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def slope_r2_1d_nb(c, window):
    """OLS slope of ``log(close)`` on bar number over the last ``window`` bars, times R².

    Slope in log-return per bar. NaN when the window's log-price is constant (R² undefined).
    Warm-up ``window`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    y = np.log(c)
    xm = (window - 1) / 2.0
    sxx = 0.0
    for i in range(window):
        sxx += (i - xm) * (i - xm)
    for k in range(window - 1, n):
        lo = k - window + 1
        ym = _mean(y, lo, k + 1)
        sxy = 0.0
        syy = 0.0
        for i in range(window):
            dy = y[lo + i] - ym
            sxy += (i - xm) * dy
            syy += dy * dy
        if syy > 0.0:
            out[k] = (sxy / sxx) * (sxy * sxy / (sxx * syy))
    return out


@njit(cache=True, nogil=True)
def slope_r2_nb(close, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        scatter_nb(out, slope_r2_1d_nb(gather_nb(close, idx, j), window), idx, j)
    return out


# -- price location / trend --------------------------------------------------------------------


@njit(cache=True)
def price_position_1d_nb(h, lo_, c, window):
    """``(c - min(low)) / (max(high) - min(low))`` over the last ``window`` bars (incl. today).

    In [0, 1]; NaN when the range is zero. Warm-up ``window`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(window - 1, n):
        hi = h[k]
        mn = lo_[k]
        for i in range(k - window + 1, k + 1):
            if h[i] > hi:
                hi = h[i]
            if lo_[i] < mn:
                mn = lo_[i]
        if hi > mn:
            out[k] = (c[k] - mn) / (hi - mn)
    return out


@njit(cache=True, nogil=True)
def price_position_nb(high, low, close, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(high, low, close, close, j)
        res = price_position_1d_nb(
            gather_nb(high, idx, j), gather_nb(low, idx, j), gather_nb(close, idx, j), window
        )
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def breakout_1d_nb(h, c, window):
    """``c[k] / max(high[k-window .. k-1]) - 1``: close against the prior ``window``-bar high.

    Excludes today's high. Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(window, n):
        hi = h[k - window]
        for i in range(k - window, k):
            if h[i] > hi:
                hi = h[i]
        out[k] = c[k] / hi - 1.0
    return out


@njit(cache=True, nogil=True)
def breakout_nb(high, close, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(high, close, close, close, j)
        res = breakout_1d_nb(gather_nb(high, idx, j), gather_nb(close, idx, j), window)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def rsi_1d_nb(c, window):
    """Wilder's RSI in [0, 100].

    Close changes ``d[k] = c[k] - c[k-1]`` split into gains ``max(d, 0)`` and losses
    ``max(-d, 0)``. Averages are seeded at bar ``window`` with the simple mean of the first
    ``window`` changes, then smoothed recursively ``avg = (1 - a) * avg + a * x`` with
    ``a = 1 / window`` (Wilder; equals pandas ``ewm(alpha=1/window, adjust=False)`` started from
    the seed). ``RSI = 100 * G / (G + L)``; NaN when ``G + L == 0``. Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    if n <= window:
        return out
    g = 0.0
    ls = 0.0
    for k in range(1, window + 1):
        d = c[k] - c[k - 1]
        g += max(d, 0.0)
        ls += max(-d, 0.0)
    g /= window
    ls /= window
    a = 1.0 / window
    for k in range(window, n):
        if k > window:
            d = c[k] - c[k - 1]
            g = (1.0 - a) * g + a * max(d, 0.0)
            ls = (1.0 - a) * ls + a * max(-d, 0.0)
        if g + ls > 0.0:
            out[k] = 100.0 * g / (g + ls)
    return out


@njit(cache=True, nogil=True)
def rsi_nb(close, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        scatter_nb(out, rsi_1d_nb(gather_nb(close, idx, j), window), idx, j)
    return out


@njit(cache=True)
def adx_1d_nb(h, lo_, c, window):
    """Wilder's ADX in [0, 100].

    From bar 1: true range ``TR = max(h - l, |h - c_prev|, |l - c_prev|)``; ``up = h - h_prev``,
    ``down = l_prev - l``; ``+DM = up if up > down and up > 0 else 0``,
    ``-DM = down if down > up and down > 0 else 0``. TR, +DM, -DM are Wilder-smoothed (seed: mean
    of bars 1..window, available at bar ``window``; then ``s = (1 - a) s + a x``, ``a = 1/window``).
    ``+DI = 100 s(+DM) / s(TR)``, ``-DI`` likewise (both 0 when ``s(TR) == 0``);
    ``DX = 100 |+DI - -DI| / (+DI + -DI)`` (0 when both are 0: no directional movement).
    ADX = Wilder smoothing of DX seeded with the mean of the first ``window`` DX values.
    Warm-up ``2 * window`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    if n < 2 * window:
        return out
    a = 1.0 / window
    s_tr = 0.0
    s_p = 0.0
    s_m = 0.0
    adx = 0.0
    for k in range(1, n):
        tr = _true_range(h, lo_, c[k - 1], k)
        up = h[k] - h[k - 1]
        down = lo_[k - 1] - lo_[k]
        pdm = up if (up > down and up > 0.0) else 0.0
        mdm = down if (down > up and down > 0.0) else 0.0
        if k <= window:
            s_tr += tr
            s_p += pdm
            s_m += mdm
            if k < window:
                continue
            s_tr /= window
            s_p /= window
            s_m /= window
        else:
            s_tr = (1.0 - a) * s_tr + a * tr
            s_p = (1.0 - a) * s_p + a * pdm
            s_m = (1.0 - a) * s_m + a * mdm
        if s_tr > 0.0:
            pdi = 100.0 * s_p / s_tr
            mdi = 100.0 * s_m / s_tr
        else:
            pdi = 0.0
            mdi = 0.0
        dx = 100.0 * abs(pdi - mdi) / (pdi + mdi) if pdi + mdi > 0.0 else 0.0
        # DX exists from bar ``window``; ADX from bar ``2 * window - 1``.
        if k < 2 * window - 1:
            adx += dx
        elif k == 2 * window - 1:
            adx = (adx + dx) / window
            out[k] = adx
        else:
            adx = (1.0 - a) * adx + a * dx
            out[k] = adx
    return out


@njit(cache=True, nogil=True)
def adx_nb(high, low, close, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(high, low, close, close, j)
        res = adx_1d_nb(
            gather_nb(high, idx, j), gather_nb(low, idx, j), gather_nb(close, idx, j), window
        )
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def vortex_1d_nb(h, lo_, c, window):
    """Vortex spread ``VI+ - VI-`` over the last ``window`` bars.

    ``VM+ = |h - l_prev|``, ``VM- = |l - h_prev|``, ``VI± = sum(VM±) / sum(TR)`` (TR as in ADX).
    NaN when ``sum(TR) == 0``. Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(window, n):
        sp = 0.0
        sm = 0.0
        st = 0.0
        for i in range(k - window + 1, k + 1):
            sp += abs(h[i] - lo_[i - 1])
            sm += abs(lo_[i] - h[i - 1])
            st += _true_range(h, lo_, c[i - 1], i)
        if st > 0.0:
            out[k] = (sp - sm) / st
    return out


@njit(cache=True, nogil=True)
def vortex_nb(high, low, close, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(high, low, close, close, j)
        res = vortex_1d_nb(
            gather_nb(high, idx, j), gather_nb(low, idx, j), gather_nb(close, idx, j), window
        )
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def ma_cross_1d_nb(c, fast, slow):
    """``mean(c, last fast bars) / mean(c, last slow bars) - 1``. Warm-up ``slow`` bars."""
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(slow - 1, n):
        out[k] = _mean(c, k - fast + 1, k + 1) / _mean(c, k - slow + 1, k + 1) - 1.0
    return out


@njit(cache=True, nogil=True)
def ma_cross_nb(close, fast, slow):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        scatter_nb(out, ma_cross_1d_nb(gather_nb(close, idx, j), fast, slow), idx, j)
    return out


@njit(cache=True)
def macd_hist_1d_nb(c, fast, slow, signal):
    """MACD histogram divided by the close: ``(MACD - signal) / c``.

    EMAs use ``a = 2 / (span + 1)`` and are seeded with the first bar (pandas
    ``ewm(span=span, adjust=False)``): ``MACD = EMA_fast(c) - EMA_slow(c)``,
    ``signal = EMA_signal(MACD)``. Values before ``slow + signal - 1`` bars are NaN (the
    TA-Lib look-back), the recursion itself starts at the first bar.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    if n == 0:
        return out
    af = 2.0 / (fast + 1.0)
    aslow = 2.0 / (slow + 1.0)
    asig = 2.0 / (signal + 1.0)
    ef = c[0]
    es = c[0]
    sig = 0.0
    first = slow + signal - 2
    for k in range(n):
        if k > 0:
            ef = (1.0 - af) * ef + af * c[k]
            es = (1.0 - aslow) * es + aslow * c[k]
        m = ef - es
        sig = m if k == 0 else (1.0 - asig) * sig + asig * m
        if k >= first:
            out[k] = (m - sig) / c[k]
    return out


@njit(cache=True, nogil=True)
def macd_hist_nb(close, fast, slow, signal):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        res = macd_hist_1d_nb(gather_nb(close, idx, j), fast, slow, signal)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def bollinger_1d_nb(c, window, k_std):
    """Bollinger %B: ``(c - (ma - k sd)) / (2 k sd)`` with the population std (ddof=0).

    0 at the lower band, 1 at the upper band. NaN when ``sd == 0``. Warm-up ``window`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(window - 1, n):
        lo = k - window + 1
        ma = _mean(c, lo, k + 1)
        sd = _std(c, lo, k + 1, 0)
        if sd > 0.0:
            out[k] = (c[k] - (ma - k_std * sd)) / (2.0 * k_std * sd)
    return out


@njit(cache=True, nogil=True)
def bollinger_nb(close, window, k_std):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        scatter_nb(out, bollinger_1d_nb(gather_nb(close, idx, j), window, k_std), idx, j)
    return out


# -- volume / liquidity ------------------------------------------------------------------------


@njit(cache=True)
def obv_slope_1d_nb(c, v, window):
    """OLS slope of on-balance volume over the last ``window`` bars / their mean volume.

    OBV steps by ``sign(c - c_prev) * volume``; the slope does not depend on the OBV level, so
    it is accumulated inside the window from 0. Unit: fraction of the mean volume per bar.
    NaN when the mean volume is zero. Warm-up ``window`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    xm = (window - 1) / 2.0
    sxx = 0.0
    for i in range(window):
        sxx += (i - xm) * (i - xm)
    y = np.empty(window)
    for k in range(window - 1, n):
        lo = k - window + 1
        y[0] = 0.0
        for i in range(1, window):
            d = c[lo + i] - c[lo + i - 1]
            step = v[lo + i] if d > 0.0 else (-v[lo + i] if d < 0.0 else 0.0)
            y[i] = y[i - 1] + step
        ym = _mean(y, 0, window)
        sxy = 0.0
        for i in range(window):
            sxy += (i - xm) * (y[i] - ym)
        vm = _mean(v, lo, k + 1)
        if vm > 0.0:
            out[k] = sxy / sxx / vm
    return out


@njit(cache=True, nogil=True)
def obv_slope_nb(close, volume, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, volume, close, close, j)
        res = obv_slope_1d_nb(gather_nb(close, idx, j), gather_nb(volume, idx, j), window)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def pv_corr_1d_nb(c, v, window):
    """Pearson correlation of close and volume levels over the last ``window`` bars.

    NaN when either is constant. Warm-up ``window`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(window - 1, n):
        out[k] = _corr(c, v, k - window + 1, k + 1)
    return out


@njit(cache=True, nogil=True)
def pv_corr_nb(close, volume, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, volume, close, close, j)
        res = pv_corr_1d_nb(gather_nb(close, idx, j), gather_nb(volume, idx, j), window)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def amihud_1d_nb(c, turnover, window, scale):
    """Amihud illiquidity: ``mean(|r| / turnover) * scale`` over the last ``window`` returns.

    ``turnover`` is the traded value in CNY; with ``scale = 1e8`` the unit is return per
    100 million CNY. A bar with non-positive turnover has an undefined term, so every window
    containing it is NaN. Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    r = returns_1d_nb(c)
    term = np.full(n, np.nan)
    for k in range(1, n):
        if turnover[k] > 0.0:
            term[k] = abs(r[k]) / turnover[k]
    for k in range(window, n):
        out[k] = _mean(term, k - window + 1, k + 1) * scale
    return out


@njit(cache=True, nogil=True)
def amihud_nb(close, turnover, window, scale):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, turnover, close, close, j)
        res = amihud_1d_nb(gather_nb(close, idx, j), gather_nb(turnover, idx, j), window, scale)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def volume_ratio_1d_nb(v, window):
    """``v[k] / mean(v[k-window .. k-1])``: today's volume against the prior window's mean.

    NaN when the prior mean is zero. Warm-up ``window + 1`` bars.
    """
    n = v.shape[0]
    out = np.full(n, np.nan)
    for k in range(window, n):
        m = _mean(v, k - window, k)
        if m > 0.0:
            out[k] = v[k] / m
    return out


@njit(cache=True, nogil=True)
def volume_ratio_nb(volume, window):
    out = np.full(volume.shape, np.nan)
    for j in range(volume.shape[1]):
        idx = valid_rows_nb(volume, volume, volume, volume, j)
        scatter_nb(out, volume_ratio_1d_nb(gather_nb(volume, idx, j), window), idx, j)
    return out


@njit(cache=True)
def updown_volume_1d_nb(c, v, window):
    """Volume on up bars / volume on down bars over the last ``window`` returns.

    Up: ``c > c_prev``, down: ``c < c_prev``; unchanged bars count for neither. NaN when there
    is no down volume. Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    for k in range(window, n):
        up = 0.0
        dn = 0.0
        for i in range(k - window + 1, k + 1):
            if c[i] > c[i - 1]:
                up += v[i]
            elif c[i] < c[i - 1]:
                dn += v[i]
        if dn > 0.0:
            out[k] = up / dn
    return out


@njit(cache=True, nogil=True)
def updown_volume_nb(close, volume, window):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, volume, close, close, j)
        res = updown_volume_1d_nb(gather_nb(close, idx, j), gather_nb(volume, idx, j), window)
        scatter_nb(out, res, idx, j)
    return out


@njit(cache=True)
def garman_klass_1d_nb(o, h, lo_, c, window, periods_per_year):
    """Garman–Klass volatility over the last ``window`` bars, annualised.

    ``sqrt(periods_per_year * mean(0.5 ln(h/l)^2 - (2 ln 2 - 1) ln(c/o)^2))``.
    Warm-up ``window`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    term = np.empty(n)
    coef = 2.0 * math.log(2.0) - 1.0
    for k in range(n):
        hl = math.log(h[k] / lo_[k])
        co = math.log(c[k] / o[k])
        term[k] = 0.5 * hl * hl - coef * co * co
    for k in range(window - 1, n):
        out[k] = math.sqrt(periods_per_year * _mean(term, k - window + 1, k + 1))
    return out


@njit(cache=True, nogil=True)
def garman_klass_nb(open_, high, low, close, window, periods_per_year):
    out = np.full(close.shape, np.nan)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(open_, high, low, close, j)
        res = garman_klass_1d_nb(
            gather_nb(open_, idx, j),
            gather_nb(high, idx, j),
            gather_nb(low, idx, j),
            gather_nb(close, idx, j),
            window,
            periods_per_year,
        )
        scatter_nb(out, res, idx, j)
    return out


# -- cross-sectional ---------------------------------------------------------------------------


@njit(cache=True)
def market_returns_nb(close):
    """Equal-weight market return per row: the mean of the one-row returns of the funds with a
    bar on that row and on the previous row. NaN on rows where no fund has one (e.g. row 0).
    Uses rows ``t - 1`` and ``t`` only (causal)."""
    n, m = close.shape
    out = np.full(n, np.nan)
    for t in range(1, n):
        s = 0.0
        cnt = 0
        for j in range(m):
            a = close[t - 1, j]
            b = close[t, j]
            if np.isfinite(a) and np.isfinite(b):
                s += b / a - 1.0
                cnt += 1
        if cnt > 0:
            out[t] = s / cnt
    return out


@njit(cache=True)
def corr_market_1d_nb(c, rows, mkt, window):
    """Correlation of a fund's bar returns with the market over the same spans.

    ``rows`` are the panel rows of the fund's bars and ``mkt`` the panel's market returns
    (``market_returns_nb``). For a return from bar ``rows[k-1]`` to bar ``rows[k]`` the market
    return is the compounded ``prod(1 + mkt[rows[k-1]+1 .. rows[k]]) - 1`` (one row unless the
    fund was suspended). Pearson correlation over the last ``window`` pairs; NaN if a pair's
    market return is undefined or either side is constant. Warm-up ``window + 1`` bars.
    """
    n = c.shape[0]
    out = np.full(n, np.nan)
    rf = returns_1d_nb(c)
    rm = np.full(n, np.nan)
    for k in range(1, n):
        p = 1.0
        for t in range(rows[k - 1] + 1, rows[k] + 1):
            p *= 1.0 + mkt[t]
        rm[k] = p - 1.0
    for k in range(window, n):
        out[k] = _corr(rf, rm, k - window + 1, k + 1)
    return out


@njit(cache=True, nogil=True)
def corr_market_nb(close, window):
    """Rolling correlation of each fund to the equal-weight market of the panel."""
    out = np.full(close.shape, np.nan)
    mkt = market_returns_nb(close)
    for j in range(close.shape[1]):
        idx = valid_rows_nb(close, close, close, close, j)
        res = corr_market_1d_nb(gather_nb(close, idx, j), idx, mkt, window)
        scatter_nb(out, res, idx, j)
    return out
