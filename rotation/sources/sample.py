"""A built-in, deterministic, GENERATED sample market of Chinese exchange-traded funds.

Every number here is synthetic: it is the platform's embedded default data source so that the
demo and the tests run without any downloaded dataset, and it must never be mistaken for real
market data (names start with ``SAMPLE``, the ``source`` column is ``sample:generated``, the codes
are chosen outside the real datasets in ``shared/data``).

The statistics are made realistic enough to exercise the whole pipeline: a common market factor
plus four sector factors (positive cross-correlation between equity funds, little for the bond and
gold funds), GARCH(1,1) volatility clustering, Student-t innovations (fat tails), slowly varying
sector drifts (something for a rotation strategy to find), daily price limits, exchange ticks,
lot-sized volumes and the events a real source has: a suspension, a unit split carried by the
adjustment factor, and a late listing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import pandas as pd

from rotation.bars import Instrument, LoadResult, conform_bars, empty_issues
from rotation.calendar import get_calendar
from rotation.market import DEFAULT_MARKET, ClassAssignment, load_market, resolve

SOURCE = "sample:generated"
TICK = 0.001  # exchange tick of SH/SZ funds, in CNY
LIMIT_MARGIN = 0.995  # close-to-close returns stay within 99.5 % of the daily limit
TRADING_DAYS = 244.0  # sessions per year on XSHG

# Events of the default universe (the symbols are in the first funds of the template, so any
# ``n_funds >= 7`` carries all three). They apply only when the dates are sessions of the spec.
SAMPLE_SUSPENSION: tuple[str, tuple[str, ...]] = (
    "512120",
    ("2021-08-10", "2021-08-11", "2021-08-12"),
)
# (symbol, ex-date, ratio): one unit becomes ``ratio`` units, raw prices divide by it from the
# ex-date and the cumulative adjustment factor multiplies by it (raw × factor is continuous).
SAMPLE_SPLIT: tuple[str, str, float] = ("512150", "2022-07-18", 2.0)
# (symbol, first session): listed at 1.000 like a new ETF.
SAMPLE_LATE_LISTING: tuple[str, str] = ("159150", "2020-06-15")

N_SECTORS = 4  # 0 financials/value, 1 technology/growth, 2 consumer/health, 3 cyclicals


@dataclass(frozen=True)
class SampleMarketSpec:
    """What to generate; frozen (hashable) so the generated market is memoised per spec."""

    seed: int = 20240601
    n_funds: int = 20
    start: str = "2019-01-02"
    end: str = "2025-12-31"
    calendar: str = "XSHG"


@dataclass(frozen=True)
class _Fund:
    """Generation profile of one fund (private: the public view is :class:`Instrument`)."""

    symbol: str
    label: str
    asset_class: str
    sector: int  # -1 for funds outside the equity sectors (bond, gold)
    ann_vol: float
    start_price: float
    market_share: float  # signed loading on the market factor, as sqrt of the variance share
    sector_share: float  # variance share of the sector factor
    drift: float  # annual compound drift of the adjusted price
    turnover: float  # typical daily amount in CNY
    price_limit: float = 0.10

    @property
    def exchange(self) -> str:
        return "SZ" if self.symbol.startswith("15") else "SH"


# Ordered so that a small universe stays diverse: broad, bond, gold, the three event funds and the
# STAR-style fund come first; ``sample_instruments`` then sorts by code.
# fmt: off
_TEMPLATE: tuple[_Fund, ...] = (
    _Fund("510010", "Broad Large-Cap ETF", "equity_broad", 0, 0.19, 3.10, 0.88, 0.12, 0.05, 2.0e9),
    _Fund("511110", "Treasury Bond 10Y ETF", "bond_gov_10y", -1, 0.025, 4.60, -0.12, 0.0, 0.03,
          6.0e8),
    _Fund("518110", "Gold ETF", "commodity(gold)", -1, 0.14, 3.20, 0.10, 0.0, 0.07, 8.0e8),
    _Fund("512120", "Brokerage Sector ETF", "equity_sector", 0, 0.32, 1.05, 0.74, 0.28, 0.04,
          1.2e9),
    _Fund("512150", "Healthcare Sector ETF", "equity_sector", 2, 0.26, 4.20, 0.70, 0.30, 0.05,
          5.0e8),
    _Fund("159150", "Growth Board ETF", "equity_broad", 1, 0.28, 1.00, 0.80, 0.25, 0.06, 9.0e8),
    _Fund("588110", "STAR Market 50 ETF", "equity_broad", 1, 0.33, 1.25, 0.72, 0.35, 0.05, 1.5e9,
          0.20),
    _Fund("510020", "Broad Mid-Cap ETF", "equity_broad", 3, 0.23, 2.40, 0.85, 0.15, 0.05, 7.0e8),
    _Fund("510030", "Dividend ETF", "equity_dividend", 0, 0.16, 2.80, 0.75, 0.25, 0.06, 3.0e8),
    _Fund("512110", "Bank Sector ETF", "equity_sector", 0, 0.19, 1.20, 0.66, 0.40, 0.05, 4.0e8),
    _Fund("512130", "Semiconductor Sector ETF", "equity_sector", 1, 0.35, 1.60, 0.68, 0.38, 0.06,
          1.0e9),
    _Fund("512140", "Software Sector ETF", "equity_sector", 1, 0.31, 0.95, 0.70, 0.33, 0.05,
          3.5e8),
    _Fund("512160", "Consumer Staples ETF", "equity_sector", 2, 0.22, 1.85, 0.72, 0.32, 0.05,
          4.5e8),
    _Fund("515110", "Coal Sector ETF", "equity_sector", 3, 0.29, 1.10, 0.62, 0.38, 0.06, 3.0e8),
    _Fund("515120", "Nonferrous Metals ETF", "equity_sector", 3, 0.30, 1.40, 0.68, 0.36, 0.05,
          4.0e8),
    _Fund("159110", "New Energy Sector ETF", "equity_sector", 3, 0.32, 0.88, 0.70, 0.33, 0.05,
          6.0e8),
    _Fund("159120", "Liquor Sector ETF", "equity_sector", 2, 0.30, 1.30, 0.66, 0.38, 0.06, 5.5e8),
    _Fund("159130", "Defence Sector ETF", "equity_sector", 3, 0.30, 0.92, 0.72, 0.28, 0.04, 2.5e8),
    _Fund("159140", "Real Estate Sector ETF", "equity_sector", 0, 0.27, 0.83, 0.70, 0.28, 0.02,
          2.0e8),
    _Fund("159160", "Media Sector ETF", "equity_sector", 1, 0.30, 0.90, 0.68, 0.30, 0.04, 2.0e8),
)
# fmt: on
_MAX_EXTRA = 1000  # the scale benchmark's 1,000 funds (benchmarks/scale.py)

# GARCH(1,1) on unit-variance series: h_t = (1 - a - b) + a e_{t-1}^2 + b h_{t-1}.
_FACTOR_GARCH = (0.07, 0.91)
_IDIO_GARCH = (0.05, 0.90)
_T_DF = 4.0
_SECTOR_DRIFT_SD = 0.12  # annualised stationary sd of a sector's slowly varying drift
_SECTOR_DRIFT_HALF_LIFE = 90.0  # sessions


def _funds(n_funds: int) -> tuple[_Fund, ...]:
    """The first ``n_funds`` profiles; beyond the template, equity sector funds on 5178xx,
    then on 520100.. (codes in no dataset of ``shared/data``)."""
    if not 1 <= n_funds <= len(_TEMPLATE) + _MAX_EXTRA:
        raise ValueError(
            f"SampleMarketSpec.n_funds must be within 1..{len(_TEMPLATE) + _MAX_EXTRA}, "
            f"got {n_funds}"
        )
    funds = list(_TEMPLATE[:n_funds])
    for j in range(n_funds - len(funds)):
        sector = j % N_SECTORS
        funds.append(
            _Fund(
                symbol=f"5178{j:02d}" if j < 100 else f"52{j:04d}",
                label=f"Extra Sector {sector} Fund {j:02d}",
                asset_class="equity_sector",
                sector=sector,
                ann_vol=0.18 + 0.15 * ((7 * j) % 10) / 9.0,
                start_price=round(0.8 + 4.2 * ((3 * j) % 11) / 10.0, 3),
                market_share=0.70,
                sector_share=0.30,
                drift=0.05,
                turnover=3.0e8,
            )
        )
    return tuple(funds)


# The generated funds' classes in the A-share fund profile (config/markets/cn_funds.yaml).
SAMPLE_CLASSES = ClassAssignment(
    by_asset_class_prefix={"bond": "bond", "commodity(gold)": "gold"},
)


def _row(fund: _Fund) -> dict[str, str]:
    return {"symbol": fund.symbol, "exchange": fund.exchange, "asset_class": fund.asset_class,
            "name": f"SAMPLE {fund.label} (generated data, not a real fund)"}


def sample_instruments(spec: SampleMarketSpec = SampleMarketSpec()) -> list[Instrument]:
    """The generated universe, sorted by code (names say the data is generated)."""
    funds = sorted(_funds(spec.n_funds), key=lambda f: f.symbol)
    out = resolve(load_market(DEFAULT_MARKET), SAMPLE_CLASSES, [_row(f) for f in funds])
    for fund, instrument in zip(funds, out, strict=True):
        assert instrument.price_limit == fund.price_limit, "generator and profile disagree"
    return out


# -- random building blocks ----------------------------------------------------------------------
def _student_t(rng: np.random.Generator, size: tuple[int, ...]) -> np.ndarray:
    """Student-t draws scaled to unit variance (fat tails with a well-defined scale)."""
    return rng.standard_t(_T_DF, size=size) / math.sqrt(_T_DF / (_T_DF - 2.0))


def _garch(z: np.ndarray, alpha: float, beta: float) -> tuple[np.ndarray, np.ndarray]:
    """Unit-variance GARCH(1,1) along axis 0 driven by standardised shocks ``z``.

    Returns the series and its conditional variance; clustering of large moves is what makes
    volatility-targeting and drawdown statistics behave like they do on real data.
    """
    omega = 1.0 - alpha - beta
    h = np.empty_like(z)
    e = np.empty_like(z)
    h_prev = np.ones(z.shape[1:])
    e_prev = np.zeros(z.shape[1:])
    for t in range(z.shape[0]):
        h_t = omega + alpha * e_prev * e_prev + beta * h_prev
        # Bound the conditional variance so one extreme t draw cannot explode the process.
        h_t = np.minimum(h_t, 9.0)
        h[t] = h_t
        e[t] = np.sqrt(h_t) * z[t]
        h_prev, e_prev = h_t, e[t]
    return e, h


def _ou(rng: np.random.Generator, n: int, k: int, sd: float, half_life: float) -> np.ndarray:
    """Stationary AR(1) paths (n × k) with the given marginal sd: slowly varying drifts."""
    phi = 0.5 ** (1.0 / half_life)
    shocks = rng.standard_normal((n, k)) * sd * math.sqrt(1.0 - phi * phi)
    out = np.empty((n, k))
    x = rng.standard_normal(k) * sd
    for t in range(n):
        x = phi * x + shocks[t]
        out[t] = x
    return out


# -- prices on the tick grid ---------------------------------------------------------------------
def _close_ticks(ret: np.ndarray, factor: np.ndarray, limit: float, ref_adj: float) -> np.ndarray:
    """Raw closes in ticks, sequentially, so that rounding never breaks the limit.

    Each close is the previous adjusted close moved by the generated return, divided by the
    adjustment factor, rounded to the tick and kept inside the limit band (conservatively
    rounded inwards). A fourth identical close in a row is nudged by one tick: real funds rarely
    sit still that long and the quality rules flag long flat runs.
    """
    cap = LIMIT_MARGIN * limit
    n = len(ret)
    out = np.empty(n, dtype=np.int64)
    scale = 1.0 / TICK
    prev_adj = ref_adj
    c1 = c2 = c3 = -1  # the last three closes
    for t in range(n):
        f = float(factor[t])
        base = prev_adj / f * scale
        lo = math.ceil(base * (1.0 - cap))
        hi = math.floor(base * (1.0 + cap))
        target = base * (1.0 + float(ret[t]))
        c = min(max(math.floor(target + 0.5), lo), hi)
        if c == c1 == c2 == c3:
            step = 1 if target >= c else -1
            c = c + step if lo <= c + step <= hi else c - step
        out[t] = c
        c3, c2, c1 = c2, c1, c
        prev_adj = c * TICK * f
    return out


def _fund_bars(
    fund: _Fund,
    rng: np.random.Generator,
    sessions: pd.DatetimeIndex,
    market: tuple[np.ndarray, np.ndarray],
    sectors: tuple[np.ndarray, np.ndarray],
    idio: tuple[np.ndarray, np.ndarray],
    sector_drift: np.ndarray,
) -> pd.DataFrame:
    """One fund's canonical bars over its active sessions (``rng`` is the fund's own stream)."""
    n = len(sessions)
    daily_vol = fund.ann_vol / math.sqrt(TRADING_DAYS)

    # Return = drift + vol × (market + sector + idiosyncratic), loadings as sqrt variance shares.
    a_m = fund.market_share
    a_s = math.sqrt(fund.sector_share) if fund.sector >= 0 else 0.0
    a_i = math.sqrt(max(1.0 - a_m * a_m - a_s * a_s, 0.02))
    norm = math.sqrt(a_m * a_m + a_s * a_s + a_i * a_i)
    a_m, a_s, a_i = a_m / norm, a_s / norm, a_i / norm
    f_m, h_m = market
    # Arithmetic daily drift = compound drift + half the variance, so the drift is what a
    # buy-and-hold investor earns on average rather than being eaten by volatility drag.
    drift = np.full(n, (fund.drift + 0.5 * fund.ann_vol**2) / TRADING_DAYS)
    if fund.sector >= 0:
        f_s, h_s = sectors[0][:, fund.sector], sectors[1][:, fund.sector]
        drift += sector_drift[:, fund.sector] / TRADING_DAYS
    else:
        f_s, h_s = np.zeros(n), np.zeros(n)
    shock = a_m * f_m + a_s * f_s + a_i * idio[0]
    cond_vol = daily_vol * np.sqrt(a_m * a_m * h_m + a_s * a_s * h_s + a_i * a_i * idio[1])
    ret = drift + daily_vol * shock
    cap = LIMIT_MARGIN * fund.price_limit
    ret = np.clip(ret, -cap, cap)

    # Intraday draws are taken for every session so that events do not shift the random stream.
    gap_noise = rng.standard_normal(n)
    up_ext = np.abs(rng.standard_normal(n))
    down_ext = np.abs(rng.standard_normal(n))
    vwap_noise = rng.standard_normal(n)
    vol_noise = rng.standard_normal(n)

    # Events: late listing (listed at 1.000), suspension (no rows), split (factor steps up).
    active = np.ones(n, dtype=bool)
    ref_price = fund.start_price
    late_symbol, late_date = SAMPLE_LATE_LISTING
    if fund.symbol == late_symbol and pd.Timestamp(late_date) > sessions[0]:
        active &= sessions >= pd.Timestamp(late_date)
        ref_price = 1.0
    susp_symbol, susp_dates = SAMPLE_SUSPENSION
    if fund.symbol == susp_symbol:
        active &= ~sessions.isin(pd.DatetimeIndex(susp_dates))
    factor = np.ones(n)
    split_symbol, split_date, split_ratio = SAMPLE_SPLIT
    if fund.symbol == split_symbol:
        factor[sessions >= pd.Timestamp(split_date)] = split_ratio
    # The factor is 1.0 before the ex-date (adjusted = raw there); adjusted = raw × factor.

    idx = np.flatnonzero(active)
    ret, factor, cond_vol = ret[idx], factor[idx], cond_vol[idx]
    gap_noise, up_ext, down_ext = gap_noise[idx], up_ext[idx], down_ext[idx]
    vwap_noise, vol_noise = vwap_noise[idx], vol_noise[idx]
    m = len(idx)

    close = _close_ticks(ret, factor, fund.price_limit, ref_price).astype(np.float64)
    close_adj = close * TICK * factor
    prev_adj = np.concatenate(([ref_price], close_adj[:-1]))
    base = prev_adj / factor / TICK  # previous close in today's raw ticks
    band_lo = np.maximum(np.ceil(base * (1.0 - cap)), 1.0)
    band_hi = np.floor(base * (1.0 + cap))

    # Open: an overnight gap carrying part of the day's move plus noise.
    gap = 0.35 * ret + 0.30 * cond_vol * gap_noise
    open_ = np.clip(np.rint(base * (1.0 + gap)), band_lo, band_hi)

    # High / low: extend beyond the open-close body by a vol-scaled amount, inside the band.
    body_hi = np.maximum(open_, close)
    body_lo = np.minimum(open_, close)
    high = np.ceil(body_hi * (1.0 + 0.55 * cond_vol * up_ext))
    high = np.maximum(np.minimum(high, band_hi), body_hi)
    low = np.floor(body_lo * (1.0 - 0.55 * cond_vol * down_ext))
    low = np.minimum(np.maximum(low, band_lo), body_lo)
    flat = high <= low  # keep a non-zero range so a VWAP strictly inside exists
    can_up = flat & (high + 1.0 <= band_hi)
    high = np.where(can_up, high + 1.0, high)
    low = np.where(flat & ~can_up, low - 1.0, low)

    # Volume (units, lots of 100): lognormal, persistent, larger on big moves and in stress.
    noise = np.empty(m)
    acc = 0.0
    for t in range(m):
        acc = 0.7 * acc + 0.30 * vol_noise[t]
        noise[t] = acc
    rel_vol = cond_vol / daily_vol
    z_move = np.abs(ret) / np.maximum(cond_vol, 1e-9)
    log_amount = math.log(fund.turnover) + 0.5 * np.log(rel_vol) + 0.35 * (z_move - 0.8) + noise
    typical = (open_ + high + low + close) / 4.0 * TICK
    volume = np.maximum(np.rint(np.exp(log_amount) / typical / 100.0), 1.0) * 100.0

    # VWAP strictly inside [low, high]; amount = volume × VWAP.
    u = (typical / TICK - low) / (high - low) + 0.08 * vwap_noise
    u = np.clip(u, 0.05, 0.95)
    vwap = (low + u * (high - low)) * TICK
    amount = volume * vwap

    return pd.DataFrame(
        {
            "date": sessions[idx],
            "symbol": fund.symbol,
            "open": np.round(open_ * TICK, 3),
            "high": np.round(high * TICK, 3),
            "low": np.round(low * TICK, 3),
            "close": np.round(close * TICK, 3),
            "volume": volume,
            "amount": amount,
            "adj_factor": factor,
            "source": SOURCE,
        }
    )


@lru_cache(maxsize=8)
def _generate(spec: SampleMarketSpec) -> pd.DataFrame:
    funds = _funds(spec.n_funds)
    # Share the platform's cached calendar (built from 2005) unless the spec starts earlier.
    cal_start = min(spec.start, "2005-01-01")
    sessions = get_calendar(spec.calendar, cal_start).sessions(spec.start, spec.end)
    if len(sessions) < 2:
        raise ValueError(f"sample market {spec}: fewer than two sessions in the window")
    n = len(sessions)
    # One stream for the factors and one per fund, so a fund's series does not depend on how
    # many funds are generated after it.
    rng = np.random.default_rng([spec.seed, 0])
    factors, h_factors = _garch(_student_t(rng, (n, 1 + N_SECTORS)), *_FACTOR_GARCH)
    market = (factors[:, 0], h_factors[:, 0])
    sectors = (factors[:, 1:], h_factors[:, 1:])
    sector_drift = _ou(rng, n, N_SECTORS, _SECTOR_DRIFT_SD, _SECTOR_DRIFT_HALF_LIFE)
    fund_rngs = [np.random.default_rng([spec.seed, 1 + i]) for i in range(len(funds))]
    idio_z = np.column_stack([_student_t(r, (n,)) for r in fund_rngs])
    idio, h_idio = _garch(idio_z, *_IDIO_GARCH)
    frames = [
        _fund_bars(
            fund,
            fund_rngs[i],
            sessions,
            market,
            sectors,
            (idio[:, i], h_idio[:, i]),
            sector_drift,
        )
        for i, fund in enumerate(funds)
    ]
    return conform_bars(pd.concat(frames, ignore_index=True))


def generate_sample_market(spec: SampleMarketSpec = SampleMarketSpec()) -> pd.DataFrame:
    """Full generated history as canonical bars (memoised per spec; callers get a copy)."""
    return _generate(spec).copy()


def load_sample_bars(
    spec: SampleMarketSpec, start: object = None, end: object = None
) -> LoadResult:
    """Generated bars with ``start <= date <= end`` (either bound may be None), as a source."""
    bars = _generate(spec)
    mask = np.ones(len(bars), dtype=bool)
    if start is not None:
        mask &= (bars["date"] >= pd.Timestamp(start).normalize()).to_numpy()
    if end is not None:
        mask &= (bars["date"] <= pd.Timestamp(end).normalize()).to_numpy()
    return LoadResult(
        bars=bars.loc[mask].reset_index(drop=True),
        issues=empty_issues(),
        sources=[f"{SOURCE}(seed={spec.seed})"],
    )
