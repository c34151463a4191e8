"""Portfolio risk on real bars (cn_etf_morphkyan_raw, total returns from raw closes and their
adjustment factors): every figure against a computation written out here, data after D never
used, the VaR backtests' statistics against the binomial likelihood and hand counts, and the
stress episodes against the prices themselves."""

from __future__ import annotations

import datetime as dt
import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats

from rotation.config_paths import DATASET_CONFIG_DIR
from rotation.portfolio_risk import (
    RiskInputError,
    backtest,
    bootstrap_draws,
    bootstrap_many,
    christoffersen,
    cornish_fisher,
    gate_figures,
    historical,
    horizon_returns,
    kupiec,
    liquidity,
    monte_carlo,
    monte_carlo_many,
    parametric,
    portfolio_returns,
    portfolio_windows,
    replay,
    scenario_losses,
    shock,
    shrunk_covariance,
    shrunk_covariances,
    var_es,
    var_es_many,
    window,
    worst_window,
)
from rotation.risk import PortfolioFigures, RiskLimits, check_portfolio
from rotation.sources.files import FileMarketSource, load_dataset_spec

AS_OF = dt.date(2024, 6, 28)
MIX = {"510300": 0.4, "511260": 0.3, "518880": 0.2}        # equity, bond, gold; 10 % cash


@pytest.fixture(scope="module")
def source(shared_data: Path) -> FileMarketSource:
    spec = load_dataset_spec(DATASET_CONFIG_DIR / "cn_etf_morphkyan_raw.yaml")
    return FileMarketSource(shared_data / "cn_etf_morphkyan_raw", spec)


@pytest.fixture(scope="module")
def bars(source: FileMarketSource) -> pd.DataFrame:
    return source.load(dt.date(2014, 1, 1), dt.date(2026, 3, 31)).bars


@pytest.fixture(scope="module")
def prices(bars: pd.DataFrame) -> pd.DataFrame:
    adjusted = bars.assign(price=bars["close"] * bars["adj_factor"])
    return adjusted.pivot(index="date", columns="symbol", values="price")


@pytest.fixture(scope="module")
def returns(prices: pd.DataFrame) -> pd.DataFrame:
    return prices.pct_change(fill_method=None)


@pytest.fixture(scope="module")
def classes(source: FileMarketSource) -> dict[str, str]:
    return {i.symbol: i.instrument_class for i in source.instruments()}


def mix_daily(returns: pd.DataFrame, lookback: int = 250) -> np.ndarray:
    held = returns.loc[:pd.Timestamp(AS_OF), list(MIX)].dropna().iloc[-lookback:]
    return held.to_numpy() @ np.array(list(MIX.values()))


def test_historical_var_and_es_are_the_sorted_losses(returns: pd.DataFrame) -> None:
    daily = np.sort(mix_daily(returns))
    assert len(daily) == 250
    # The 5 % quantile ("lower") of 250 returns is the 13th smallest (index ⌊0.05 × 249⌋).
    var, es = historical(mix_daily(returns), 0.95, 1)
    assert var == pytest.approx(-daily[12])
    assert es == pytest.approx(-daily[:13].mean())
    estimates = {(e.method, e.level, e.horizon): e for e in var_es(returns, MIX, AS_OF)}
    assert estimates[("historical", 0.95, 1)].var == pytest.approx(var)
    five = np.expm1(np.convolve(np.log1p(mix_daily(returns)), np.ones(5), mode="valid"))
    assert estimates[("historical", 0.99, 5)].var == pytest.approx(
        -np.sort(five)[math.floor(0.01 * (len(five) - 1))])


def test_every_estimate_orders_as_risk_must(returns: pd.DataFrame) -> None:
    estimates = {(e.method, e.level, e.horizon): e for e in var_es(returns, MIX, AS_OF)}
    assert len(estimates) == 12
    for (method, level, horizon), e in estimates.items():
        assert e.observations == 250
        assert 0 < e.var <= e.es < 0.5, (method, level, horizon)
        if level == 0.95:
            assert estimates[(method, 0.99, horizon)].var > e.var
        if horizon == 1:
            assert estimates[(method, level, 5)].var > e.var


def test_parametric_of_one_fund_is_the_normal_quantile(returns: pd.DataFrame) -> None:
    # Ledoit–Wolf of a single fund shrinks nothing: its variance is the sample's (1/n).
    held = window(returns, {"510300": 1.0}, AS_OF, 250).to_numpy()
    mean, sigma = held.mean(), held.std(ddof=0)
    var, es = parametric(held, np.array([1.0]), 0.99, 1)
    assert var == pytest.approx(-(mean + stats.norm.ppf(0.01) * sigma))
    assert es == pytest.approx(-(mean - sigma * stats.norm.pdf(stats.norm.ppf(0.01)) / 0.01))


def test_cornish_fisher_widens_the_tail_of_a_crash_year(returns: pd.DataFrame) -> None:
    # 510300 over the year to 2016-01-29: the 2015 crash and the January 2016 circuit
    # breaker give a fat left tail; the corrected 99 % VaR exceeds the normal one.
    daily = window(returns, {"510300": 1.0}, dt.date(2016, 1, 29), 250)["510300"].to_numpy()
    assert stats.kurtosis(daily) > 1
    normal = -(daily.mean() + stats.norm.ppf(0.01) * daily.std(ddof=1))
    var, es, monotone = cornish_fisher(daily, 0.99, 1)
    assert monotone and var > normal and es > var
    # With no skew and no excess kurtosis the expansion is the normal quantile.
    rng = np.random.default_rng(7)
    plain = rng.standard_normal(200_000) * 0.01
    var, _, _ = cornish_fisher(plain, 0.99, 1)
    assert var == pytest.approx(-stats.norm.ppf(0.01) * 0.01, rel=0.02)


def test_no_data_after_d_is_used(returns: pd.DataFrame) -> None:
    before = var_es(returns, MIX, AS_OF)
    perturbed = returns.copy()
    later = perturbed.index > pd.Timestamp(AS_OF)
    perturbed.loc[later] = perturbed.loc[later] * 10 - 0.05
    after = var_es(perturbed, MIX, AS_OF)
    # Equal to the last bits (a matrix product's rounding may follow memory alignment).
    assert [(e.method, e.level, e.horizon, e.observations) for e in after] == [
        (e.method, e.level, e.horizon, e.observations) for e in before]
    assert [x for e in after for x in (e.var, e.es)] == pytest.approx(
        [x for e in before for x in (e.var, e.es)], rel=1e-12)


def test_too_little_history_and_unknown_funds_are_named(returns: pd.DataFrame) -> None:
    with pytest.raises(RiskInputError, match="look-back needs 250"):
        var_es(returns, {"511130": 1.0}, dt.date(2024, 6, 28))       # listed 2024-03-28
    with pytest.raises(RiskInputError, match=r"\['999999'\]"):
        var_es(returns, {"999999": 1.0}, AS_OF)


def test_kupiec_is_the_binomial_likelihood_ratio() -> None:
    for n, x, level in [(250, 8, 0.99), (1000, 37, 0.95), (500, 0, 0.99)]:
        lr, p = kupiec(n, x, level)
        expected = 2 * (stats.binom.logpmf(x, n, x / n) - stats.binom.logpmf(x, n, 1 - level))
        assert lr == pytest.approx(expected, abs=1e-9)
        assert p == pytest.approx(stats.chi2.sf(expected, 1))


def test_christoffersen_counts_transitions() -> None:
    # Transitions 0→0 ×4, 0→1 ×2, 1→0 ×2, 1→1 ×1: π0 = π1 = π = 1/3, nothing clusters.
    lr, p = christoffersen(np.array([0, 0, 1, 1, 0, 0, 0, 1, 0, 0]))
    assert lr == pytest.approx(0.0, abs=1e-12) and p == pytest.approx(1.0)
    # Clustered: 0→0 ×5, 0→1 ×1, 1→0 ×1, 1→1 ×2.
    lr, _ = christoffersen(np.array([0, 0, 0, 1, 1, 1, 0, 0, 0, 0]))
    pi, pi0, pi1 = 3 / 9, 1 / 6, 2 / 3
    restricted = 6 * math.log(1 - pi) + 3 * math.log(pi)
    markov = (5 * math.log(1 - pi0) + math.log(pi0) + math.log(1 - pi1) + 2 * math.log(pi1))
    assert lr == pytest.approx(-2 * (restricted - markov))


def test_backtest_counts_the_days_beyond_yesterdays_var(returns: pd.DataFrame) -> None:
    daily = returns["510300"].loc["2016-01-01":"2025-12-31"].dropna()
    result = backtest(daily, lookback=250, level=0.99)
    values = daily.to_numpy()
    by_hand = sum(values[t] < np.quantile(values[t - 250:t], 0.01, method="lower")
                  for t in range(250, len(values)))
    assert (result.observations, result.exceedances) == (len(values) - 250, by_hand)
    assert result.expected == pytest.approx(0.01 * result.observations)
    for method in ("historical", "parametric", "cornish_fisher"):
        tested = backtest(daily, lookback=250, level=0.99, method=method)
        assert 0 <= tested.kupiec_p <= 1 and 0 <= tested.conditional_p <= 1
    # A normal VaR of a fat-tailed fund is exceeded more often than its historical VaR.
    assert backtest(daily, method="parametric").exceedances > result.exceedances


def test_a_replayed_episode_is_the_funds_own_price_path(returns: pd.DataFrame,
                                                        prices: pd.DataFrame,
                                                        classes: dict[str, str]) -> None:
    start, end = dt.date(2015, 6, 15), dt.date(2015, 8, 26)
    loss = replay("2015 June–August", returns, MIX, start, end, classes)
    path = prices.loc[:pd.Timestamp(end), "510300"]
    before = path.loc[:pd.Timestamp(start) - pd.Timedelta(days=1)].iloc[-1]
    fall = path.iloc[-1] / before - 1
    assert fall < -0.35                                      # the 2015 crash in CSI 300
    assert loss.by_fund["510300"] == pytest.approx(-0.4 * fall)
    # 511260 (bond) was listed in 2017: it takes the mean of the bond funds of 2015 (none),
    # so it is reported and counted flat; gold traded throughout.
    assert loss.by_fund["511260"] == 0.0 and "no fund of its class" in loss.proxied["511260"]
    assert "518880" not in loss.proxied
    assert loss.loss == pytest.approx(sum(loss.by_fund.values()))
    # A 2019 equity fund in the 2015 episode takes the mean of the equity funds that traded.
    proxied = replay("2015", returns, {"515000": 1.0}, start, end, classes)
    assert "equity fund(s)" in proxied.proxied["515000"] and proxied.loss > 0.3


def test_the_worst_window_and_a_parametric_shock(returns: pd.DataFrame,
                                                 classes: dict[str, str]) -> None:
    daily = portfolio_returns(returns.loc[:"2025-12-31", ["510300"]].dropna(), {"510300": 1.0})
    worst = worst_window(daily, 5)
    assert worst.start is not None and worst.end is not None
    assert dt.date(2015, 6, 1) <= worst.start <= dt.date(2016, 2, 1)
    prices = (1 + daily).cumprod()
    assert worst.loss == pytest.approx(
        1 - prices[pd.Timestamp(worst.end)] / prices.shift(1)[pd.Timestamp(worst.start)])
    moved = shock("equity -10 %, bonds +100 bp (duration 5)", MIX, classes,
                  {"equity": -0.10, "bond": -0.05, "gold": 0.02})
    assert moved.by_fund == pytest.approx({"510300": 0.04, "511260": 0.015, "518880": -0.004})
    assert moved.loss == pytest.approx(0.051)


def test_liquidity_is_the_share_of_the_average_day(bars: pd.DataFrame) -> None:
    amounts = bars.pivot(index="date", columns="symbol", values="amount")
    table = liquidity({"510300": 50_000_000.0, "563020": 5_000_000.0}, amounts, AS_OF,
                      window_sessions=20, participation=0.1)
    recent = amounts.loc[:pd.Timestamp(AS_OF)].iloc[-20:]
    adv = recent["563020"].fillna(0.0).sum() / 20      # a day without a bar traded nothing
    assert table.loc["563020", "average_amount"] == pytest.approx(adv)
    assert table.loc["563020", "days_to_trade"] == pytest.approx(5_000_000 / adv / 0.1)
    # The CSI 300 ETF trades billions a day: 50 million is a small fraction of it.
    assert table.loc["510300", "share_of_day"] < 0.05


# ------------------------------------------------------------------------------ scenarios


def mixes(returns: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """The three MIX funds' look-back at AS_OF and eight portfolios of them (rows)."""
    held = window(returns, MIX, AS_OF, 250).to_numpy()
    weights = np.array([list(MIX.values()), [1, 0, 0], [0, 1, 0], [0, 0, 1], [0.5, 0.5, 0],
                        [0.9, -0.2, 0.3], [0.2, 0.2, 0.2], [0.3, 0.3, 0.4]])
    return held, weights


def test_var_es_many_is_a_loop_of_historical(returns: pd.DataFrame) -> None:
    held, weights = mixes(returns)
    daily = held @ weights.T                                        # sessions × portfolios
    losses = scenario_losses(held, weights)
    assert losses == pytest.approx(-daily.T, abs=1e-17)
    for level in (0.95, 0.99):
        for h in (1, 5):
            outcomes = np.array([horizon_returns(daily[:, i], h) for i in range(len(weights))])
            var, es = var_es_many(-outcomes, level)
            assert [(v, e) for v, e in zip(var, es, strict=True)] == [
                historical(daily[:, i], level, h) for i in range(len(weights))]
            # The partition picks numpy's "lower" quantile; the ES is the mean beyond it.
            cut = np.quantile(outcomes, 1 - level, axis=1, method="lower")
            assert (var == -cut).all()
            assert es == pytest.approx([-o[o <= c].mean() for o, c in zip(outcomes, cut,
                                                                          strict=True)],
                                       rel=1e-13)
    # Ties at the VaR are in the tail: 2, 2, 2 and 3 are at or beyond the 60 % VaR of 2.
    var, es = var_es_many(np.array([[2.0, 1.0, 3.0, 2.0, 2.0]]), 0.6)
    assert (var[0], es[0]) == (2.0, 2.25)


def test_the_bootstrap_of_many_portfolios_is_historical_of_each(returns: pd.DataFrame) -> None:
    _, weights = mixes(returns)
    panel = returns[list(MIX)].to_numpy()
    end = int(np.searchsorted(returns.index, pd.Timestamp(AS_OF)))
    ends = np.full(len(weights), end)
    windows = portfolio_windows(panel, weights, ends, 250)
    assert windows[0] == pytest.approx(mix_daily(returns), abs=1e-17)
    draws = bootstrap_draws(len(weights), 250, 10_000, seed=3)
    var, es = bootstrap_many(windows, draws, 0.99)
    assert [(v, e) for v, e in zip(var, es, strict=True)] == [
        historical(w[d], 0.99, 1) for w, d in zip(windows, draws, strict=True)]
    # 511130 was listed on 2024-03-28: no look-back of 250 sessions at AS_OF.
    listed = returns[["511130"]].to_numpy()
    with pytest.raises(RiskInputError, match="no return in its portfolio's look-back"):
        portfolio_windows(listed, np.array([[1.0]]), np.array([end]), 250)


def normal_error(sigma: float, level: float, scenarios: int) -> tuple[float, float]:
    """The standard errors of the VaR and the ES estimated from ``scenarios`` normal draws
    of standard deviation ``sigma``: the sample quantile's √(p(1−p)/n)/φ(z), and the tail
    mean's √((Var(X | X ≤ q) + (1−p)(q − ES)²)/(n p)) (Chen 2008)."""
    p = 1 - level
    z = stats.norm.ppf(p)
    density = stats.norm.pdf(z)
    tail_mean = -density / p
    tail_var = 1 + z * tail_mean - tail_mean ** 2
    var_se = math.sqrt(p * (1 - p) / scenarios) / density
    es_se = math.sqrt((tail_var + (1 - p) * (z - tail_mean) ** 2) / (scenarios * p))
    return sigma * var_se, sigma * es_se


def test_monte_carlo_converges_to_the_parametric_normal(returns: pd.DataFrame) -> None:
    held, weights = mixes(returns)
    w = weights[0]
    sigma = math.sqrt(float(w @ shrunk_covariance(held) @ w))
    for level, scenarios in [(0.95, 10_000), (0.99, 10_000), (0.99, 200_000)]:
        var, es = monte_carlo(held, w, level, 1, scenarios=scenarios)
        normal_var, normal_es = parametric(held, w, level, 1)
        var_se, es_se = normal_error(sigma, level, scenarios)
        assert abs(var - normal_var) <= 4 * var_se, (level, scenarios)
        assert abs(es - normal_es) <= 4 * es_se, (level, scenarios)
    # Twenty times the draws: the error bound shrinks √20-fold and the figure stays inside.
    assert 4 * normal_error(sigma, 0.99, 200_000)[0] < 0.05 * normal_var


def test_monte_carlo_compounds_numpys_multivariate_normal_draws(returns: pd.DataFrame) -> None:
    held, weights = mixes(returns)
    w = weights[0]
    draws = np.random.default_rng(5).multivariate_normal(
        held.mean(axis=0), shrunk_covariance(held), 2_000 * 5, method="cholesky")
    outcomes = np.prod(1 + (draws @ w).reshape(2_000, 5), axis=1) - 1
    cut = np.quantile(outcomes, 0.01, method="lower")
    var, es = monte_carlo(held, w, 0.99, 5, scenarios=2_000, seed=5)
    assert var == pytest.approx(-cut, abs=1e-12)
    assert es == pytest.approx(-outcomes[outcomes <= cut].mean(), abs=1e-12)
    # Five sessions compounded lose more than one.
    assert var > monte_carlo(held, w, 0.99, 1, scenarios=2_000, seed=5)[0]


def test_monte_carlo_is_deterministic_given_a_seed(returns: pd.DataFrame) -> None:
    held, weights = mixes(returns)
    first = monte_carlo(held, weights[0], 0.99, 5, seed=11)
    assert monte_carlo(held, weights[0], 0.99, 5, seed=11) == first
    assert monte_carlo(held, weights[0], 0.99, 5, seed=12) != first
    stacked = np.stack([held, held[::-1]])
    many = monte_carlo_many(stacked, weights[:2], 0.99, seed=11)
    again = monte_carlo_many(stacked, weights[:2], 0.99, seed=11)
    assert all((a == b).all() for a, b in zip(many, again, strict=True))


def test_many_windows_are_valued_as_each_alone(returns: pd.DataFrame) -> None:
    """The batched Ledoit–Wolf is scikit-learn's, and monte_carlo_many's figure of each
    window is monte_carlo's of that window alone (the same draws)."""
    ends = [pd.Timestamp("2016-01-29"), pd.Timestamp("2020-03-31"), pd.Timestamp(AS_OF)]
    funds = ["510300", "510500", "518880", "513100"]
    clean = returns[funds].dropna()
    windows = np.stack([clean.loc[:end].iloc[-250:].to_numpy() for end in ends])
    for w, covariance in zip(windows, shrunk_covariances(windows), strict=True):
        assert covariance == pytest.approx(shrunk_covariance(w), rel=1e-12, abs=1e-18)
    weights = np.array([[0.25] * 4, [0.5, 0.1, 0.2, 0.1], [0.0, 0.0, 1.0, 0.0]])
    var, es = monte_carlo_many(windows, weights, 0.99, seed=7)
    for i in range(len(windows)):
        alone = monte_carlo(windows[i], weights[i], 0.99, 1, seed=7)
        assert (var[i], es[i]) == pytest.approx(alone, abs=1e-12)
    # One fund: nothing to shrink, the sample variance (1/n).
    single = windows[:, :, :1]
    assert shrunk_covariances(single)[:, 0, 0] == pytest.approx(single.var(axis=1)[:, 0])


# ------------------------------------------------------------------------------ the gate


def test_the_gates_figures_are_the_methods_own(returns: pd.DataFrame, bars: pd.DataFrame
                                                ) -> None:
    limits = RiskLimits(risk_lookback_sessions=250, stress_window_sessions=5)
    amounts = bars.pivot(index="date", columns="symbol", values="amount")
    figures = gate_figures(returns, amounts, MIX, AS_OF, 1_000_000.0, limits)
    daily = portfolio_returns(window(returns, MIX, AS_OF, 250), MIX)
    assert (figures.var_99, figures.es_99) == historical(daily.to_numpy(), 0.99, 1)
    worst = worst_window(daily, 5)
    assert figures.stress_loss == worst.loss
    assert figures.stress_window == f"{worst.start}..{worst.end}"
    assert figures.observations == 250
    expected = liquidity({s: w * 1_000_000.0 for s, w in MIX.items()}, amounts, AS_OF)
    assert figures.days_to_liquidate == expected["days_to_trade"].to_dict()
    # Nothing held: nothing at risk; a fund without the history: no figure, said why.
    assert gate_figures(returns, amounts, {}, AS_OF, 1e6, limits).var_99 == 0.0
    with pytest.raises(RiskInputError, match="look-back needs 250"):
        gate_figures(returns, amounts, MIX, dt.date(2014, 3, 31), 1e6, limits)


def test_configured_portfolio_limits_reject_with_their_figures() -> None:
    figures = PortfolioFigures(var_99=0.031, es_99=0.042, stress_loss=0.09,
                               stress_window="2024-01-29..2024-02-02",
                               days_to_liquidate={"510300": 0.2, "159999": 7.5},
                               observations=250)
    assert check_portfolio(figures, RiskLimits()) == []          # measured, not limited
    assert check_portfolio("too little history", RiskLimits()) == []
    found = check_portfolio(figures, RiskLimits(max_var_99=0.02, max_es_99=0.05,
                                                max_stress_loss=0.08, max_days_to_liquidate=5))
    assert [(v.layer, v.rule, v.subject) for v in found] == [
        ("account", "var_limit", "portfolio"), ("account", "stress_loss", "portfolio"),
        ("account", "days_to_liquidate", "159999")]
    assert "3.10%" in found[0].message and "2.00%" in found[0].message
    assert "2024-01-29..2024-02-02" in found[1].message
    assert "7.5 sessions" in found[2].message
    (unmeasured,) = check_portfolio("no returns for held fund(s) ['159999']",
                                    RiskLimits(max_var_99=0.02))
    assert unmeasured.rule == "risk_unmeasured" and "159999" in unmeasured.message


def _ledoit_wolf_by_hand(x: np.ndarray) -> np.ndarray:
    """Ledoit and Wolf (2004) shrinkage towards μ·I, written out (not scikit-learn)."""
    n, p = x.shape
    centred = x - x.mean(axis=0)
    sample = centred.T @ centred / n
    mu = np.trace(sample) / p
    squares = centred ** 2
    beta = (np.sum(squares.T @ squares) / n - np.sum(sample ** 2)) / (p * n)
    delta = np.sum((sample - mu * np.eye(p)) ** 2) / p
    shrink = min(beta, delta) / delta
    return (1 - shrink) * sample + shrink * mu * np.eye(p)


def test_every_method_agrees_with_an_independent_computation(returns: pd.DataFrame) -> None:
    """Historical, parametric (Ledoit–Wolf) and Cornish–Fisher VaR and ES of a three-fund mix
    on real data, against formulas written out here with numpy and scipy, to 1e-9."""
    held = window(returns, MIX, AS_OF, 250).to_numpy()
    weights = np.array(list(MIX.values()))
    daily = held @ weights
    z = stats.norm.ppf(0.01)
    estimates = {(e.method, e.level, e.horizon): e for e in var_es(returns, MIX, AS_OF)}

    cut = np.sort(daily)[math.floor(0.01 * (len(daily) - 1))]
    by_hand = {"historical": (-cut, -daily[daily <= cut].mean())}
    mean, sigma = daily.mean(), math.sqrt(weights @ _ledoit_wolf_by_hand(held) @ weights)
    by_hand["parametric"] = (-(mean + z * sigma), -(mean - sigma * stats.norm.pdf(z) / 0.01))
    s, k = stats.skew(daily, bias=False), stats.kurtosis(daily, bias=False)

    def cf(q: np.ndarray) -> np.ndarray:
        return q + (q**2 - 1) * s / 6 + (q**3 - 3 * q) * k / 24 - (2 * q**3 - 5 * q) * s**2 / 36

    tail = stats.norm.ppf(0.01 * (np.arange(200) + 0.5) / 200)
    sd = daily.std(ddof=1)
    by_hand["cornish_fisher"] = (-(mean + cf(np.array([z]))[0] * sd),
                                 -(mean + sd * cf(tail).mean()))
    for method, (var, es) in by_hand.items():
        got = estimates[(method, 0.99, 1)]
        assert abs(got.var - var) < 1e-9 and abs(got.es - es) < 1e-9, method
