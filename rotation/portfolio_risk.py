"""Portfolio risk from data up to D only (issue 19): value at risk and expected shortfall over
one and several sessions by three methods, their backtest, stress scenarios and liquidity.
Pure numpy/pandas/scipy, no Dagster.

Conventions: ``returns`` are simple daily total returns, sessions × funds (NaN where a fund did
not trade: before its listing, on a halt); ``weights`` are fractions of equity (the rest is cash,
which neither gains nor loses). Every loss figure is a positive fraction of equity: a VaR of
0.021 means "2.1 % of the account is lost or worse on the worst (1 − level) of sessions".

Methods:

* ``historical`` — the empirical quantile of the portfolio's overlapping ``h``-session returns
  over the look-back (the weights held constant through it), ES the mean beyond it.
* ``parametric`` — normal, the fund covariance shrunk towards a scaled identity (Ledoit–Wolf),
  scaled to ``h`` sessions by √h.
* ``cornish_fisher`` — the normal quantile corrected for the portfolio's skewness and excess
  kurtosis (moments of daily returns, aggregated to ``h`` sessions as for i.i.d. returns); ES
  the mean of the corrected quantiles over the tail. The expansion is only a valid quantile
  function while it is monotone: :attr:`RiskEstimate.valid` says whether it was.

The scenario engine values losses against a matrix of scenarios instead (issue 19, the
benchmark ``benchmarks/risk.py``):

* :func:`monte_carlo` — ``scenarios`` draws of multivariate normal fund returns with the mean
  and the Ledoit–Wolf covariance, ``horizon`` daily vectors per scenario compounded through the
  portfolio (weights held constant, as ``historical`` does). At one session it is the
  parametric normal figure plus sampling noise of known size.
* :func:`scenario_losses` and :func:`var_es_many` — the losses of many portfolios (or of one
  strategy's portfolio at many as-of dates) in one matrix product, VaR and ES of each row by
  ``np.partition`` (linear per row, no sort); ``historical`` is its one-row case.
* :func:`bootstrap_many` and :func:`monte_carlo_many` — the one-session risk of a whole history
  of portfolios: resampled sessions of each look-back, and normal draws shared by every date
  (common random numbers: the day-to-day changes of the figure are the market's, not the
  simulation's).

Monte Carlo is not one of :data:`METHODS`: those are also the methods of the VaR backtest
(``rolling_var``, every day's forecast), the asset's table and its tests count them, and at one
session a Monte Carlo VaR is the parametric figure with noise, so it would add a column that
says nothing new. It is the engine for many portfolios and longer horizons.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from types import ModuleType
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from rotation.bars import traded_amount
from rotation.config_paths import RISK_CONFIG_DIR
from rotation.risk import SESSIONS_PER_YEAR, PortfolioFigures, RiskLimits, regime_limits
from rotation.yaml_config import parse_yaml

Method = Literal["historical", "parametric", "cornish_fisher"]
METHODS: tuple[Method, ...] = ("historical", "parametric", "cornish_fisher")
LEVELS = (0.95, 0.99)
HORIZONS = (1, 5)
# Tail points over which the Cornish–Fisher ES averages its quantiles.
CF_TAIL_POINTS = 200
# The shortest look-back of the out-of-sample VaR backtest (sessions).
BACKTEST_MIN_LOOKBACK = 60
# Scenario engine: draws per estimate and the default seed (figures are reproducible).
SCENARIOS = 10_000
SEED = 19


class RiskInputError(ValueError):
    """Inputs that cannot give an honest figure (too little history, unknown funds)."""


@dataclass(frozen=True)
class RiskEstimate:
    method: Method
    level: float
    horizon: int            # sessions
    var: float              # loss, fraction of equity
    es: float               # mean loss beyond the VaR, fraction of equity
    observations: int       # daily portfolio returns the estimate rests on
    valid: bool = True      # False: the Cornish–Fisher expansion was not monotone


# ------------------------------------------------------------------------------ inputs


def window(returns: pd.DataFrame, weights: Mapping[str, float], as_of: dt.date,
           lookback: int) -> pd.DataFrame:
    """The held funds' returns of the ``lookback`` sessions up to and including ``as_of``
    (nothing after it), on the sessions where every held fund traded."""
    held = [s for s, w in weights.items() if w != 0]
    unknown = sorted(set(held) - set(returns.columns))
    if unknown:
        raise RiskInputError(f"no returns for held fund(s) {unknown}")
    upto = returns.loc[returns.index <= pd.Timestamp(as_of), held].dropna()
    if len(upto) < lookback:
        raise RiskInputError(
            f"{len(upto)} sessions up to {as_of} where every held fund traded; the look-back "
            f"needs {lookback}")
    return upto.iloc[-lookback:]


def portfolio_returns(returns: pd.DataFrame, weights: Mapping[str, float]) -> pd.Series:
    """Daily returns of the weights held constant (cash earns nothing)."""
    held = [s for s, w in weights.items() if w != 0]
    vector = np.array([weights[s] for s in held], dtype=float)
    return pd.Series(returns[held].to_numpy() @ vector, index=returns.index, name="portfolio")


def horizon_returns(daily: np.ndarray, horizon: int) -> np.ndarray:
    """Overlapping ``horizon``-session compounded returns."""
    if horizon == 1:
        return daily
    growth = np.log1p(daily)
    sums = np.convolve(growth, np.ones(horizon), mode="valid")
    return np.expm1(sums)


# ------------------------------------------------------------------------------ methods


def _stats() -> ModuleType:
    """scipy.stats, imported by the measures that use it: its import costs about a second of
    every fresh run worker, and the approval gate (historical VaR, stress, liquidity) does not
    need it."""
    import scipy.stats

    return scipy.stats


def historical(daily: np.ndarray, level: float, horizon: int) -> tuple[float, float]:
    """Empirical VaR and ES of ``horizon``-session returns (the one-row case of
    :func:`var_es_many`, so a batch of portfolios gives the same figures to the last bit)."""
    var, es = var_es_many(-horizon_returns(daily, horizon)[np.newaxis, :], level)
    return float(var[0]), float(es[0])


def shrunk_covariance(returns: np.ndarray) -> np.ndarray:
    """Ledoit–Wolf covariance (scikit-learn's estimator, imported where used)."""
    from sklearn.covariance import LedoitWolf

    return np.asarray(LedoitWolf(assume_centered=False).fit(returns).covariance_)


def parametric(returns: np.ndarray, weights: np.ndarray, level: float,
               horizon: int) -> tuple[float, float]:
    """Normal VaR and ES from the mean and the shrunk covariance, scaled to ``horizon``."""
    mean = float(returns.mean(axis=0) @ weights) * horizon
    sigma = math.sqrt(float(weights @ shrunk_covariance(returns) @ weights) * horizon)
    z = float(_stats().norm.ppf(1 - level))
    return -(mean + z * sigma), -(mean - sigma * float(_stats().norm.pdf(z)) / (1 - level))


def cornish_fisher_z(z: np.ndarray, skew: float, excess_kurtosis: float) -> np.ndarray:
    return (z + (z ** 2 - 1) * skew / 6 + (z ** 3 - 3 * z) * excess_kurtosis / 24
            - (2 * z ** 3 - 5 * z) * skew ** 2 / 36)


def cornish_fisher(daily: np.ndarray, level: float, horizon: int
                   ) -> tuple[float, float, bool]:
    """Cornish–Fisher VaR and ES, and whether the expansion was monotone over the tail."""
    mean, sigma = float(daily.mean()) * horizon, float(daily.std(ddof=1)) * math.sqrt(horizon)
    skew = float(_stats().skew(daily, bias=False)) / math.sqrt(horizon)
    kurt = float(_stats().kurtosis(daily, fisher=True, bias=False)) / horizon
    tail = (1 - level) * (np.arange(CF_TAIL_POINTS) + 0.5) / CF_TAIL_POINTS
    quantiles = cornish_fisher_z(_stats().norm.ppf(tail), skew, kurt)
    z = float(cornish_fisher_z(np.array([_stats().norm.ppf(1 - level)]), skew, kurt)[0])
    monotone = bool(np.all(np.diff(quantiles) > 0))
    return -(mean + z * sigma), -(mean + sigma * float(quantiles.mean())), monotone


def var_es(returns: pd.DataFrame, weights: Mapping[str, float], as_of: dt.date, *,
           lookback: int = 250, levels: Sequence[float] = LEVELS,
           horizons: Sequence[int] = HORIZONS) -> list[RiskEstimate]:
    """Every method × level × horizon for ``weights`` held at ``as_of``, from the
    ``lookback`` sessions up to ``as_of``."""
    held = window(returns, weights, as_of, lookback)
    vector = np.array([weights[s] for s in held.columns], dtype=float)
    daily = held.to_numpy() @ vector
    found = []
    for level in levels:
        for h in horizons:
            var, es = historical(daily, level, h)
            found.append(RiskEstimate("historical", level, h, var, es, len(daily)))
            var, es = parametric(held.to_numpy(), vector, level, h)
            found.append(RiskEstimate("parametric", level, h, var, es, len(daily)))
            var, es, monotone = cornish_fisher(daily, level, h)
            found.append(RiskEstimate("cornish_fisher", level, h, var, es, len(daily),
                                      valid=monotone))
    return found


# ------------------------------------------------------------------------------ scenarios


def var_es_many(losses: np.ndarray, level: float) -> tuple[np.ndarray, np.ndarray]:
    """VaR and ES of each row of ``losses`` (portfolios × scenarios). The VaR is the loss at
    numpy's "lower" ``1 − level`` quantile of the returns (as ``np.quantile``), found by
    ``np.partition`` along the rows (linear time, no sort); the ES is the mean loss at or
    beyond it: the partition's upper part, which holds every larger loss, and the losses
    below it equal to the VaR (ties), so only the tail is summed."""
    n = losses.shape[1]
    j = n - 1 - math.floor((n - 1) * (1 - level))
    parted = np.partition(losses, j, axis=1)
    var = parted[:, j]
    ties = (parted[:, :j] == var[:, np.newaxis]).sum(axis=1)
    return var, (parted[:, j:].sum(axis=1) + ties * var) / (n - j + ties)


def scenario_losses(scenarios: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """The loss of each portfolio (rows of ``weights``, portfolios × funds) in each scenario
    (rows of ``scenarios``, scenarios × funds of simple returns): portfolios × scenarios, one
    matrix product."""
    return -(np.atleast_2d(weights) @ scenarios.T)


def standard_normals(scenarios: int, funds: int, seed: int) -> np.ndarray:
    """Independent N(0, 1) draws, scenarios × funds, in the order numpy's
    ``Generator.multivariate_normal`` draws them (so its draws can be reproduced)."""
    return np.random.default_rng(seed).standard_normal((scenarios, funds))


def _cholesky(covariances: np.ndarray) -> np.ndarray:
    try:
        return np.linalg.cholesky(covariances)
    except np.linalg.LinAlgError:
        raise RiskInputError("the shrunk covariance is not positive definite") from None


def monte_carlo(returns: np.ndarray, weights: np.ndarray, level: float, horizon: int, *,
                scenarios: int = SCENARIOS, seed: int = SEED) -> tuple[float, float]:
    """VaR and ES from ``scenarios`` paths of ``horizon`` daily fund-return vectors drawn from
    the normal with the funds' mean and Ledoit–Wolf covariance, each path's portfolio returns
    compounded (weights held constant, cash flat). A fund vector μ + Lz is worth
    μ·w + z·(Lᵀw) to the portfolio, so the draws are valued without forming the vectors."""
    factor = _cholesky(shrunk_covariance(returns))
    z = standard_normals(scenarios * horizon, returns.shape[1], seed)
    daily = float(returns.mean(axis=0) @ weights) + z @ (factor.T @ weights)
    outcomes = np.prod(1 + daily.reshape(scenarios, horizon), axis=1) - 1
    var, es = var_es_many(-outcomes[np.newaxis, :], level)
    return float(var[0]), float(es[0])


def shrunk_covariances(windows: np.ndarray) -> np.ndarray:
    """Ledoit–Wolf covariances of many windows at once (windows × sessions × funds): the
    formulas of scikit-learn's ``ledoit_wolf_shrinkage`` in batched matrix products, so the
    covariances of a whole history cost one pass instead of one estimator fit per date."""
    x = windows - windows.mean(axis=1, keepdims=True)
    n, funds = x.shape[1:]
    x2 = x ** 2
    gram = np.einsum("dni,dnj->dij", x, x, optimize=True)       # BLAS per window
    trace = x2.sum(axis=1) / n
    mu = trace.sum(axis=1) / funds
    delta_ = (gram ** 2).sum(axis=(1, 2)) / n ** 2
    beta_ = (x2.sum(axis=2) ** 2).sum(axis=1)      # the sum of X2ᵀX2's entries, in O(n·funds)
    beta = (beta_ / n - delta_) / (funds * n)
    delta = (delta_ - 2 * mu * trace.sum(axis=1) + funds * mu ** 2) / funds
    beta = np.minimum(beta, delta)
    shrinkage = np.divide(beta, delta, out=np.zeros_like(beta), where=beta != 0)
    if funds == 1:                      # one fund: nothing to shrink towards
        shrinkage[:] = 0.0
    shrunk = (1 - shrinkage)[:, np.newaxis, np.newaxis] * (gram / n)
    diagonal = np.arange(funds)
    shrunk[:, diagonal, diagonal] += (shrinkage * mu)[:, np.newaxis]
    return shrunk


def monte_carlo_many(windows: np.ndarray, weights: np.ndarray, level: float, *,
                     scenarios: int = SCENARIOS, seed: int = SEED
                     ) -> tuple[np.ndarray, np.ndarray]:
    """One-session Monte Carlo VaR and ES of many portfolios, each with its own look-back of
    fund returns (portfolios × sessions × funds, the same funds in the same order) and weights
    (portfolios × funds). Every portfolio is valued against the same standard normal draws
    (common random numbers): one matrix product for all of them."""
    loadings = np.einsum("dfg,df->dg", _cholesky(shrunk_covariances(windows)), weights)
    means = np.einsum("df,df->d", windows.mean(axis=1), weights)
    z = standard_normals(scenarios, windows.shape[2], seed)
    return var_es_many(scenario_losses(z, loadings) - means[:, np.newaxis], level)


def bootstrap_draws(portfolios: int, sessions: int, scenarios: int = SCENARIOS,
                    seed: int = SEED) -> np.ndarray:
    """Which session of its look-back each scenario of each portfolio replays
    (portfolios × scenarios, drawn with replacement)."""
    return np.random.default_rng(seed).integers(0, sessions, size=(portfolios, scenarios))


def portfolio_windows(returns: np.ndarray, weights: np.ndarray, ends: np.ndarray,
                      lookback: int) -> np.ndarray:
    """The daily returns of each portfolio (weights: portfolios × funds) over the ``lookback``
    sessions ending at its row ``ends`` of ``returns`` (sessions × funds): portfolios ×
    lookback. Every portfolio on every session is one matrix product; a fund without a return
    where it is held is an error, not a zero."""
    held = (weights != 0).astype(float)
    missing = np.isnan(returns).astype(float) @ held.T
    daily = np.nan_to_num(returns) @ weights.T                      # sessions × portfolios
    rows = ends[:, np.newaxis] + np.arange(1 - lookback, 1)
    columns = np.arange(len(ends))[:, np.newaxis]
    if rows.min() < 0 or missing[rows, columns].any():
        raise RiskInputError("a held fund has no return in its portfolio's look-back")
    return daily[rows, columns]


def bootstrap_many(windows: np.ndarray, draws: np.ndarray, level: float
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Historical-bootstrap VaR and ES of many portfolios: each row of ``windows`` (portfolio
    daily returns over its look-back) resampled at the sessions ``draws`` (same rows)."""
    return var_es_many(np.take_along_axis(-windows, draws, axis=1), level)


# ------------------------------------------------------------------------------ backtest


@dataclass(frozen=True)
class VarBacktest:
    """One-session VaR forecasts from the ``lookback`` sessions before each day, against the
    day's realised return."""

    method: Method
    level: float
    observations: int
    exceedances: int
    expected: float
    kupiec_lr: float            # unconditional coverage (POF), χ²(1)
    kupiec_p: float
    independence_lr: float      # Christoffersen: exceedances do not cluster, χ²(1)
    independence_p: float
    conditional_lr: float       # both, χ²(2)
    conditional_p: float


def _xlogy(x: float, y: float) -> float:
    return 0.0 if x == 0 else x * math.log(y)


def kupiec(observations: int, exceedances: int, level: float) -> tuple[float, float]:
    """Kupiec's proportion-of-failures likelihood ratio and its p-value."""
    p, x, n = 1 - level, exceedances, observations
    observed = x / n
    lr = -2 * (_xlogy(n - x, 1 - p) + _xlogy(x, p)
               - _xlogy(n - x, 1 - observed) - _xlogy(x, observed))
    return lr, float(_stats().chi2.sf(lr, 1))


def christoffersen(hits: np.ndarray) -> tuple[float, float]:
    """Christoffersen's independence likelihood ratio (first-order Markov against
    independence) and its p-value."""
    before, after = hits[:-1].astype(bool), hits[1:].astype(bool)
    n00 = int(np.sum(~before & ~after))
    n01 = int(np.sum(~before & after))
    n10 = int(np.sum(before & ~after))
    n11 = int(np.sum(before & after))
    pi = (n01 + n11) / max(n00 + n01 + n10 + n11, 1)
    pi0 = n01 / max(n00 + n01, 1)
    pi1 = n11 / max(n10 + n11, 1)
    restricted = _xlogy(n00 + n10, 1 - pi) + _xlogy(n01 + n11, pi)
    markov = (_xlogy(n00, 1 - pi0) + _xlogy(n01, pi0) + _xlogy(n10, 1 - pi1)
              + _xlogy(n11, pi1))
    lr = max(-2 * (restricted - markov), 0.0)
    return lr, float(_stats().chi2.sf(lr, 1))


def rolling_var(daily: np.ndarray, lookback: int, level: float, method: Method) -> np.ndarray:
    """The one-session VaR of each day from ``lookback`` to the end, from the sessions before
    it only."""
    windows = np.lib.stride_tricks.sliding_window_view(daily[:-1], lookback)
    if method == "historical":
        return -np.quantile(windows, 1 - level, axis=1, method="lower")
    mean, sigma = windows.mean(axis=1), windows.std(axis=1, ddof=1)
    z = np.full(len(windows), _stats().norm.ppf(1 - level))
    if method == "cornish_fisher":
        skew = _stats().skew(windows, axis=1, bias=False)
        kurt = _stats().kurtosis(windows, axis=1, fisher=True, bias=False)
        z = cornish_fisher_z(z, skew, kurt)
    return np.asarray(-(mean + z * sigma))


def backtest(daily: pd.Series, *, lookback: int = 250, level: float = 0.99,
             method: Method = "historical") -> VarBacktest:
    """Exceedances of a daily return series (e.g. the stitched out-of-sample returns) over
    its rolling one-session VaR, with Kupiec's and Christoffersen's tests."""
    values = daily.dropna().to_numpy(dtype=float)
    if len(values) <= lookback + 1:
        raise RiskInputError(f"{len(values)} returns: a backtest with a look-back of "
                             f"{lookback} needs more")
    forecasts = rolling_var(values, lookback, level, method)
    hits = values[lookback:] < -forecasts
    n, x = len(hits), int(hits.sum())
    pof, pof_p = kupiec(n, x, level)
    ind, ind_p = christoffersen(hits)
    return VarBacktest(method, level, n, x, n * (1 - level), pof, pof_p, ind, ind_p,
                       pof + ind, float(_stats().chi2.sf(pof + ind, 2)))


# ------------------------------------------------------------------------------ stress


@dataclass(frozen=True)
class ScenarioLoss:
    scenario: str
    loss: float                         # fraction of equity (negative: a gain)
    by_fund: dict[str, float]           # each fund's share of the loss
    proxied: dict[str, str]             # fund -> how its missing history was filled
    start: dt.date | None = None
    end: dt.date | None = None


def _episode_growth(returns: pd.DataFrame, start: dt.date, end: dt.date) -> pd.Series:
    span = returns.loc[pd.Timestamp(start):pd.Timestamp(end)]
    if span.empty:
        raise RiskInputError(f"no sessions between {start} and {end} in the returns")
    complete = span.notna().all()
    return ((1 + span.fillna(0.0)).prod() - 1).where(complete)


def replay(name: str, returns: pd.DataFrame, weights: Mapping[str, float], start: dt.date,
           end: dt.date, classes: Mapping[str, str]) -> ScenarioLoss:
    """The episode's compounded return of each held fund applied to today's weights. A fund
    without the whole episode (listed later) takes the mean episode return of the funds of its
    instrument class that had it; with none, it is reported unproxied and counts as flat."""
    growth = _episode_growth(returns, start, end)
    by_fund, proxied = {}, {}
    for symbol, weight in weights.items():
        if weight == 0:
            continue
        move = growth.get(symbol, math.nan)
        if math.isnan(move):
            peers = [s for s, c in classes.items()
                     if c == classes.get(symbol) and not math.isnan(growth.get(s, math.nan))]
            move = float(growth[peers].mean()) if peers else 0.0
            proxied[symbol] = (f"mean of {len(peers)} {classes.get(symbol)} fund(s)" if peers
                               else "no fund of its class traded then: counted flat")
        by_fund[symbol] = 0.0 - weight * float(move)      # 0.0, not -0.0, when flat
    return ScenarioLoss(name, sum(by_fund.values()), by_fund, proxied, start, end)


def shock(name: str, weights: Mapping[str, float], classes: Mapping[str, str],
          moves: Mapping[str, float]) -> ScenarioLoss:
    """A parametric shock: each instrument class moves by ``moves[class]`` (classes not named
    do not move)."""
    by_fund = {s: -w * moves.get(classes.get(s, ""), 0.0) for s, w in weights.items() if w}
    return ScenarioLoss(name, sum(by_fund.values()), by_fund, {})


def worst_window(daily: pd.Series, sessions: int) -> ScenarioLoss:
    """The worst compounded ``sessions``-session loss of a portfolio's daily returns."""
    values = daily.dropna()
    outcomes = horizon_returns(values.to_numpy(dtype=float), sessions)
    if len(outcomes) == 0:
        raise RiskInputError(f"{len(values)} returns: no {sessions}-session window")
    worst = int(np.argmin(outcomes))
    return ScenarioLoss(f"worst {sessions}-session window", -float(outcomes[worst]), {}, {},
                        values.index[worst].date(), values.index[worst + sessions - 1].date())


# ------------------------------------------------------------------------------ liquidity


def liquidity(values: Mapping[str, float], amounts: pd.DataFrame, as_of: dt.date, *,
              window_sessions: int = 20, participation: float = 0.10) -> pd.DataFrame:
    """Each holding (or order) of ``values`` (CNY) against the fund's average traded amount
    over the ``window_sessions`` up to ``as_of``: its share of a day's amount and the sessions
    needed to trade it at ``participation`` of the amount. The average is the window's total
    over its sessions, a session without a bar (a halt) counting as nothing traded, as the
    order participation check has it (``resources.execution.average_amounts``)."""
    recent = amounts.loc[amounts.index <= pd.Timestamp(as_of)].iloc[-window_sessions:]
    rows = []
    for symbol, value in values.items():
        adv = (float(recent[symbol].fillna(0.0).sum()) / len(recent) if symbol in recent
               else math.nan)
        share = abs(value) / adv if adv > 0 else math.inf
        rows.append({"symbol": symbol, "value": float(value), "average_amount": adv,
                     "share_of_day": share, "days_to_trade": share / participation})
    return pd.DataFrame(rows).set_index("symbol")


# ------------------------------------------------------------------------------ the gate


def panels_from_bars(bars: pd.DataFrame) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(daily total returns, traded amounts), sessions × funds, from adjusted bars (columns
    date, symbol, close adjusted for distributions, amount — or volume and the raw close where
    the source has no amount)."""
    close = bars.pivot(index="date", columns="symbol", values="close").sort_index()
    traded = bars.assign(traded=traded_amount(bars))
    amounts = traded.pivot(index="date", columns="symbol", values="traded").sort_index()
    return close.pct_change(fill_method=None), amounts


def market_volatility(returns: pd.DataFrame, as_of: dt.date, sessions: int,
                      proxy: str | None = None) -> float:
    """Annualised realised volatility of the market over the ``sessions`` up to ``as_of``:
    the ``proxy`` fund's returns, or the equal-weighted mean return of the funds that traded
    each session. Raises :class:`RiskInputError` when the window is not covered."""
    upto = returns.loc[returns.index <= pd.Timestamp(as_of)]
    if proxy is not None and proxy not in upto.columns:
        raise RiskInputError(f"volatility regime: no returns for the proxy fund {proxy}")
    market = (upto[proxy] if proxy is not None else upto.mean(axis=1)).dropna()
    if len(market) < sessions:
        raise RiskInputError(f"volatility regime: {len(market)} market returns up to "
                             f"{as_of}; the window needs {sessions}")
    return float(market.iloc[-sessions:].std(ddof=1)) * math.sqrt(SESSIONS_PER_YEAR)


def limits_in_force(returns: pd.DataFrame, as_of: dt.date, limits: RiskLimits
                    ) -> tuple[RiskLimits, str | None]:
    """The limits the gate applies on ``as_of`` (rotation.risk.regime_limits) and, when the
    volatility regime tightened them, why. A regime whose volatility cannot be measured
    tightens: not knowing the market's state is no reason to relax."""
    regime = limits.regime
    if regime is None:
        return limits, None
    try:
        volatility = market_volatility(returns, as_of, regime.window_sessions, regime.proxy)
    except RiskInputError as exc:
        tightened, why = regime_limits(limits, math.inf)
        return tightened, f"{why}; {exc}"
    return regime_limits(limits, volatility)


def gate_figures(returns: pd.DataFrame, amounts: pd.DataFrame, weights: Mapping[str, float],
                 as_of: dt.date, equity: float, limits: RiskLimits) -> PortfolioFigures:
    """What the approval gate checks of ``weights`` held at ``as_of`` on an account of
    ``equity``: 1-session 99 % historical VaR and ES and the worst window over the look-back,
    and the sessions to trade each position. Raises :class:`RiskInputError` when the history
    cannot give an honest figure."""
    held = {s: w for s, w in weights.items() if w}
    if not held:
        return PortfolioFigures(0.0, 0.0, 0.0, "no position", {}, 0)
    looked = window(returns, held, as_of, limits.risk_lookback_sessions)
    daily = pd.Series(looked.to_numpy() @ np.array([held[s] for s in looked.columns]),
                      index=looked.index)
    var, es = historical(daily.to_numpy(), 0.99, 1)
    worst = worst_window(daily, limits.stress_window_sessions)
    values = {s: w * equity for s, w in held.items()}
    liquid = liquidity(values, amounts, as_of, window_sessions=limits.liquidity_sessions,
                       participation=limits.max_participation)
    return PortfolioFigures(var_99=var, es_99=es, stress_loss=worst.loss,
                            stress_window=f"{worst.start}..{worst.end}",
                            days_to_liquidate=liquid["days_to_trade"].to_dict(),
                            observations=len(daily))


# ------------------------------------------------------------------------------ the report


class Episode(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    start: dt.date
    end: dt.date


class Shock(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str = Field(min_length=1)
    moves: dict[str, float]             # instrument class -> fractional move


class StressConfig(BaseModel):
    """One market's stress scenarios (config/risk/stress.yaml)."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    episodes: list[Episode] = Field(default_factory=list)
    shocks: list[Shock] = Field(default_factory=list)
    worst_windows: list[int] = Field(default_factory=lambda: [5, 20])


def load_stress(market: str, path: Path = RISK_CONFIG_DIR / "stress.yaml") -> StressConfig:
    """The scenarios of ``market`` (none configured: only the worst windows)."""
    raw = parse_yaml(path.read_text(encoding="utf-8")) or {}
    try:
        return StressConfig.model_validate(raw.get(market) or {})
    except ValidationError as exc:
        raise RiskInputError(f"{path} [{market}]: {exc}") from None


@dataclass(frozen=True)
class RiskReport:
    """Every figure of ``portfolio_risk``, one long table per section."""

    estimates: pd.DataFrame     # portfolio, method, level, horizon, var, es, observations, valid
    backtests: pd.DataFrame     # method, level, observations, exceedances, expected, p-values
    stress: pd.DataFrame        # portfolio, scenario, kind, start, end, loss, proxied
    liquidity: pd.DataFrame     # portfolio, symbol, value, average_amount, share, days
    errors: pd.DataFrame        # portfolio, section, error: what could not be measured


def _estimates(name: str, returns: pd.DataFrame, weights: Mapping[str, float],
               as_of: dt.date, lookback: int) -> list[dict[str, object]]:
    return [{"portfolio": name, **dataclasses.asdict(e)}
            for e in var_es(returns, weights, as_of, lookback=lookback)]


def _stress(name: str, returns: pd.DataFrame, weights: Mapping[str, float], as_of: dt.date,
            classes: Mapping[str, str], config: StressConfig, lookback: int
            ) -> list[dict[str, object]]:
    """Each scenario's loss; an episode the returns do not cover is a row without a loss
    that says so (the others are still measured)."""
    found: list[tuple[str, ScenarioLoss | str]] = []
    for episode in config.episodes:
        if pd.Timestamp(episode.end) > pd.Timestamp(as_of):
            continue                    # after D: not known on D
        try:
            found.append(("episode", replay(episode.name, returns, weights, episode.start,
                                            episode.end, classes)))
        except RiskInputError as exc:
            found.append(("episode", f"{episode.name}: {exc}"))
    found += [("shock", shock(s.name, weights, classes, s.moves)) for s in config.shocks]
    daily = portfolio_returns(window(returns, weights, as_of, lookback), weights)
    found += [("worst window", worst_window(daily, n)) for n in config.worst_windows]
    return [_scenario_row(name, kind, loss) for kind, loss in found]


def _scenario_row(portfolio: str, kind: str, loss: ScenarioLoss | str) -> dict[str, object]:
    if isinstance(loss, str):
        scenario, _, why = loss.partition(": ")
        return {"portfolio": portfolio, "scenario": scenario, "kind": kind, "start": None,
                "end": None, "loss": math.nan, "worst_fund": None,
                "proxied": f"not measured: {why}"}
    return {"portfolio": portfolio, "scenario": loss.scenario, "kind": kind,
            "start": loss.start, "end": loss.end, "loss": loss.loss,
            "worst_fund": _worst_fund(loss.by_fund),
            "proxied": "; ".join(f"{s}: {how}" for s, how in sorted(loss.proxied.items()))}


def _worst_fund(by_fund: Mapping[str, float]) -> str | None:
    """The fund that lost most, if any lost (a scenario that moves nothing names none)."""
    worst = max(by_fund, key=lambda s: by_fund[s], default=None)
    return worst if worst is not None and by_fund[worst] > 0 else None


def _liquidity(name: str, amounts: pd.DataFrame, held: Mapping[str, float], equity: float,
               as_of: dt.date, limits: RiskLimits) -> list[dict[str, object]]:
    table = liquidity({s: w * equity for s, w in held.items()}, amounts, as_of,
                      window_sessions=limits.liquidity_sessions,
                      participation=limits.max_participation)
    return [{"portfolio": name, "symbol": s, **row} for s, row in table.to_dict("index").items()]


def risk_report(returns: pd.DataFrame, amounts: pd.DataFrame,
                portfolios: Mapping[str, tuple[Mapping[str, float], float]], as_of: dt.date,
                classes: Mapping[str, str], config: StressConfig, oos_daily: pd.Series | None,
                limits: RiskLimits) -> RiskReport:
    """VaR and ES (every method, level, horizon), stress scenarios and liquidity of each
    portfolio (name -> (weights, equity)) from data up to ``as_of``, and the VaR backtest of
    the strategy's stitched out-of-sample returns. A section that cannot be measured for a
    portfolio is named in ``errors`` with why; the others are still measured."""
    rows: dict[str, list[dict[str, object]]] = {k: [] for k in ("estimates", "stress",
                                                                 "liquidity", "errors")}
    lookback = limits.risk_lookback_sessions
    for name, (weights, equity) in portfolios.items():
        held = {s: w for s, w in weights.items() if w}
        if not held:
            continue
        sections = {
            "estimates": partial(_estimates, name, returns, held, as_of, lookback),
            "stress": partial(_stress, name, returns, held, as_of, classes, config, lookback),
            "liquidity": partial(_liquidity, name, amounts, held, equity, as_of, limits)}
        for section, measure in sections.items():
            try:
                rows[section] += measure()
            except RiskInputError as exc:
                rows["errors"].append({"portfolio": name, "section": section,
                                       "error": str(exc)})
    return RiskReport(
        estimates=pd.DataFrame(rows["estimates"]), backtests=_backtests(oos_daily, lookback,
                                                                         rows["errors"]),
        stress=pd.DataFrame(rows["stress"]), liquidity=pd.DataFrame(rows["liquidity"]),
        errors=pd.DataFrame(rows["errors"], columns=["portfolio", "section", "error"]))


def _backtests(daily: pd.Series | None, lookback: int, errors: list[dict[str, object]]
               ) -> pd.DataFrame:
    """The VaR backtest of the out-of-sample returns: a look-back of the configured length, or
    half the history when it is shorter (at least BACKTEST_MIN_LOOKBACK sessions)."""
    if daily is None:
        return pd.DataFrame()
    usable = min(lookback, len(daily.dropna()) // 2)
    if usable < BACKTEST_MIN_LOOKBACK:
        errors.append({"portfolio": "out-of-sample", "section": "backtest",
                       "error": f"{len(daily.dropna())} out-of-sample returns: a VaR backtest "
                                f"needs at least {2 * BACKTEST_MIN_LOOKBACK}"})
        return pd.DataFrame()
    return pd.DataFrame([dataclasses.asdict(backtest(daily, lookback=usable, level=level,
                                                     method=method))
                         for method in METHODS for level in LEVELS])
