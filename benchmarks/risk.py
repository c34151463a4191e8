"""Portfolio risk of a whole strategy history: 60 funds × 6 years, 10,000 historical-bootstrap
and 10,000 Monte Carlo scenarios per as-of date, against a plain pandas/numpy baseline.

Data (deterministic): the real ``cn_etf_akshare_qfq_2020`` adjusted closes (60 funds, 1534
sessions, 2020-01-02 .. 2026-05-07) loaded through the project's file source. Daily returns
close to close; a session without a bar (a halt, 13 funds once each) carries the last close, so
the halt earns 0 and the resumption the move since the last bar; before a fund's listing there
is no return.

The history of portfolios: every session with ``LOOKBACK`` sessions behind it is an as-of
date. Its universe is the funds with a return on each of those sessions (33 funds at first,
60 from mid-2022); the portfolio holds the ``HOLD`` funds of the universe with the best
``MOMENTUM``-session return, ``INVESTED`` of equity in equal parts, the rest in cash.

Measured, one-session 99 % VaR and ES of every as-of date:

- historical bootstrap: ``SCENARIOS`` sessions of the look-back resampled with replacement
  (the same draws, made once outside the timing, for both);
- Monte Carlo: ``SCENARIOS`` draws of the universe's fund returns from the normal with the
  look-back mean and the Ledoit–Wolf covariance.

Ours (``rotation.portfolio_risk``): every portfolio on every session in one matrix product
(``portfolio_windows``), the resampled scenarios gathered and cut by ``np.partition``
(``bootstrap_many``); the covariances of all the dates with one universe in batched matrix
products, and every date valued against the same standard normal draws, one product per
universe and chunk of dates (``monte_carlo_many``). The baseline, written the obvious way per
as-of date: a DataFrame of the resampled sessions, ``.dot(weights)``, ``.quantile`` and the
mean of the tail; scikit-learn's ``LedoitWolf`` and ``Generator.multivariate_normal`` (the
Cholesky factor, seeded alike every date, so it draws what ours draws: the legacy
``np.random.multivariate_normal`` factors by SVD, which would make the two incomparable).

Both run in this process in interleaved rounds (best of each, so a burst of load from other
processes hits both alike). They must agree to 1e-15 for historical (the same resampled
session is the VaR; what is left is the last bits of the portfolio return, which one matrix
product for every date and pandas' per-date ``.dot`` add up in another order) and to 1e-12 for
Monte Carlo; the share of dates where the historical VaR is equal to the bit is printed. Peak
memory of ours by tracemalloc in a separate pass. Targets on 2 cores: ours ≥ 10× the baseline
for each method. The load average is printed: other processes on the same cores lower every
figure.

    python -m benchmarks.risk [rounds]      # default 2
"""

from __future__ import annotations

import os
import resource
import sys
import time
import tracemalloc
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import pandas as pd

from benchmarks.ic import DATASET, _real_prices

LOOKBACK = 250
LEVEL = 0.99
SCENARIOS = 10_000
SEED = 19
HOLD = 5
MOMENTUM = 20
INVESTED = 0.95
CHUNK = 128                 # as-of dates valued together (bounds memory)
TARGET_RATIO = 10.0

Figures = tuple[np.ndarray, np.ndarray]         # VaR and ES of each as-of date


@dataclass(frozen=True)
class History:
    frame: pd.DataFrame         # daily returns, sessions × funds
    ends: np.ndarray            # row of each as-of date in ``frame``
    universe: np.ndarray        # as-of dates × funds: a return on every look-back session
    weights: np.ndarray         # as-of dates × funds


def strategy_history(returns: pd.DataFrame) -> History:
    """The as-of dates, their universes and their momentum portfolios (data up to each date)."""
    values = returns.to_numpy()
    ends = np.arange(LOOKBACK, len(values))
    seen = np.vstack([np.zeros(values.shape[1]), np.isfinite(values).cumsum(axis=0)])
    universe = seen[ends + 1] - seen[ends + 1 - LOOKBACK] == LOOKBACK
    growth = np.log1p(np.nan_to_num(values)).cumsum(axis=0)
    score = np.where(universe, growth[ends] - growth[ends - MOMENTUM], -np.inf)
    top = np.argsort(-score, axis=1, kind="stable")[:, :HOLD]
    weights = np.zeros(universe.shape)
    np.put_along_axis(weights, top, INVESTED / HOLD, axis=1)
    return History(returns, ends, universe, weights)


def ours_historical(h: History, draws: np.ndarray) -> Figures:
    from rotation.portfolio_risk import bootstrap_many, portfolio_windows

    windows = portfolio_windows(h.frame.to_numpy(), h.weights, h.ends, LOOKBACK)
    found = [bootstrap_many(windows[c], draws[c], LEVEL) for c in _chunks(len(h.ends))]
    return np.concatenate([f[0] for f in found]), np.concatenate([f[1] for f in found])


def _chunks(n: int) -> list[np.ndarray]:
    """Consecutive positions below ``n`` in parts of at most ``CHUNK``."""
    return np.array_split(np.arange(n), -(-n // CHUNK))


def ours_monte_carlo(h: History) -> Figures:
    """Grouped by universe (the draws of a universe of k funds are the first k columns' worth
    of the seeded stream, as the baseline's), in chunks of ``CHUNK`` dates."""
    from rotation.portfolio_risk import monte_carlo_many

    values = h.frame.to_numpy()
    var, es = np.empty(len(h.ends)), np.empty(len(h.ends))
    universes, group = np.unique(h.universe, axis=0, return_inverse=True)
    for g, members in enumerate(universes):
        funds, dates = np.flatnonzero(members), np.flatnonzero(group == g)
        for chunk in (dates[c] for c in _chunks(len(dates))):
            rows = h.ends[chunk, np.newaxis] + np.arange(1 - LOOKBACK, 1)
            windows = values[rows[:, :, np.newaxis], funds]
            var[chunk], es[chunk] = monte_carlo_many(
                windows, h.weights[np.ix_(chunk, funds)], LEVEL, scenarios=SCENARIOS, seed=SEED)
    return var, es


def _tail(portfolio: pd.Series) -> tuple[float, float]:
    cut = portfolio.quantile(1 - LEVEL, interpolation="lower")
    return -cut, -portfolio[portfolio <= cut].mean()


def baseline_historical(h: History, draws: np.ndarray) -> Figures:
    found = []
    for i, end in enumerate(h.ends):
        funds = h.frame.columns[h.universe[i]]
        weights = pd.Series(h.weights[i, h.universe[i]], index=funds)
        window = h.frame.iloc[end - LOOKBACK + 1:end + 1][funds]
        found.append(_tail(window.iloc[draws[i]].dot(weights)))
    return np.array([f[0] for f in found]), np.array([f[1] for f in found])


def baseline_monte_carlo(h: History) -> Figures:
    from sklearn.covariance import LedoitWolf

    found = []
    for i, end in enumerate(h.ends):
        funds = h.frame.columns[h.universe[i]]
        weights = pd.Series(h.weights[i, h.universe[i]], index=funds)
        window = h.frame.iloc[end - LOOKBACK + 1:end + 1][funds]
        covariance = LedoitWolf().fit(window.to_numpy()).covariance_
        draws = np.random.default_rng(SEED).multivariate_normal(
            window.mean().to_numpy(), covariance, SCENARIOS, method="cholesky")
        found.append(_tail(pd.DataFrame(draws, columns=funds).dot(weights)))
    return np.array([f[0] for f in found]), np.array([f[1] for f in found])


def _timed(fn: Callable[[], Figures]) -> tuple[float, Figures]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _peak_mb(fn: Callable[[], object]) -> float:
    tracemalloc.start()
    fn()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak / 2 ** 20


def _diff(a: Figures, b: Figures) -> tuple[float, float]:
    return float(np.max(np.abs(a[0] - b[0]))), float(np.max(np.abs(a[1] - b[1])))


def main(argv: list[str]) -> int:
    from rotation.portfolio_risk import bootstrap_draws

    rounds = int(argv[0]) if argv else 2
    closes = _real_prices()[1]
    h = strategy_history(closes.ffill().pct_change(fill_method=None))
    draws = bootstrap_draws(len(h.ends), LOOKBACK, SCENARIOS, SEED)
    runs: dict[str, Callable[[], Figures]] = {
        "ours historical": lambda: ours_historical(h, draws),
        "ours monte carlo": lambda: ours_monte_carlo(h),
        "baseline historical": lambda: baseline_historical(h, draws),
        "baseline monte carlo": lambda: baseline_monte_carlo(h)}
    best = dict.fromkeys(runs, float("inf"))
    found: dict[str, Figures] = {}
    for _ in range(rounds):
        for name, run in runs.items():
            seconds, found[name] = _timed(run)
            best[name] = min(best[name], seconds)
    peak = _peak_mb(lambda: (runs["ours historical"](), runs["ours monte carlo"]()))
    _report(h, closes, best, found, peak, rounds)
    return 0 if _agree(found) else 1


def _agree(found: dict[str, Figures]) -> bool:
    hist = _diff(found["ours historical"], found["baseline historical"])
    mc = _diff(found["ours monte carlo"], found["baseline monte carlo"])
    return max(hist) <= 1e-15 and max(mc) <= 1e-12


def _report(h: History, closes: pd.DataFrame, best: dict[str, float],
            found: dict[str, Figures], peak: float, rounds: int) -> None:
    load = os.getloadavg()
    dates = h.frame.index[h.ends]
    print(f"portfolio risk: {len(h.ends):,} as-of dates ({dates[0]:%Y-%m-%d}..{dates[-1]:%Y-%m-%d})"
          f" × {SCENARIOS:,} scenarios per method, 1-session {LEVEL:.0%} VaR and ES")
    print(f"  data: real {DATASET}, {closes.shape[1]} funds × {len(closes)} sessions; universe "
          f"{h.universe.sum(axis=1).min()}..{h.universe.sum(axis=1).max()} funds "
          f"(mean {h.universe.sum(axis=1).mean():.1f}), look-back {LOOKBACK}, top {HOLD} by "
          f"{MOMENTUM}-session momentum")
    print(f"  cpus {os.cpu_count()}, load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f},"
          f" best of {rounds} interleaved rounds")
    for method in ("historical", "monte carlo"):
        mine, theirs = best[f"ours {method}"], best[f"baseline {method}"]
        ratio = theirs / mine
        var_diff, es_diff = _diff(found[f"ours {method}"], found[f"baseline {method}"])
        print(f"  {method:<12} ours {mine:7.3f} s   baseline {theirs:7.3f} s   ratio "
              f"{ratio:6.1f}x ({'PASS' if ratio >= TARGET_RATIO else 'FAIL'} >= "
              f"{TARGET_RATIO:.0f}x)   max |diff| VaR {var_diff:.1e} ES {es_diff:.1e}")
    hist, mc = found["ours historical"], found["ours monte carlo"]
    print(f"  median VaR / ES: historical {np.median(hist[0]):.4f} / {np.median(hist[1]):.4f}, "
          f"monte carlo {np.median(mc[0]):.4f} / {np.median(mc[1]):.4f}")
    print(f"  ours peak traced memory {peak:.0f} MB; process peak RSS "
          f"{resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f} MB")
    equal = np.mean(found["ours historical"][0] == found["baseline historical"][0])
    print(f"  agreement (historical <= 1e-15, monte carlo <= 1e-12): "
          f"{'PASS' if _agree(found) else 'FAIL'}; historical VaR equal to the bit on "
          f"{equal:.1%} of the dates")


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
