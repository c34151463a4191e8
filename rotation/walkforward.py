"""Walk-forward research (SPEC §5–§8) over one history: screen → search → freeze → out of sample.

:func:`prepare` turns adjusted bars into every panel a strategy needs (standardised factors,
eligibility, market panels, labels) once. Per window, :func:`screen_window` repeats the SPEC §5
screen on in-sample data only, :func:`evaluate_window` searches the combinations, freezes the
winner, checks the finalists against vectorbt and evaluates the winner out of sample with the
full backtest (lots, minimum commission). :func:`stitched_targets` chains the windows' frozen
winners into one out-of-sample target path for :func:`rotation.backtest.run_backtest`, and
:func:`latest_targets` applies the newest winner to the latest session.

Timing: the screen of a window reads labels ending before its first out-of-sample session
(purge), the search reads in-sample sessions only, and out-of-sample decisions of session D read
rows <= D — so nothing here depends on data after the session it is about.
"""

from __future__ import annotations

import multiprocessing
import threading
from collections import deque
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent.futures import Future, ProcessPoolExecutor
from dataclasses import dataclass, field
from itertools import islice
from multiprocessing.context import BaseContext
from typing import Any, TypeVar

import numba
import numpy as np
import pandas as pd

from rotation import ic as ic_stats
from rotation.backtest import (
    BacktestConfig,
    BacktestResult,
    MarketPanels,
    market_panels,
    run_backtest,
)
from rotation.backtest.metrics import equal_weight_benchmark
from rotation.bars import Instrument
from rotation.cross_section import CrossSectionConfig, coverage, process
from rotation.factors import FactorSpec, Panels, compute_factors
from rotation.labels import forward_returns
from rotation.portfolio import (
    PortfolioConfig,
    PortfolioResult,
    absolute_momentum,
    build_portfolio,
    composite_score,
    explain,
    fund_volatility,
    market_returns_of,
    rebalance_schedule,
    regime_percentile,
)
from rotation.search import Candidate, SearchPanel, SearchSpace, candidate_of, search_window
from rotation.wfo import WfoConfig, WfoWindow, wfo_windows

# Relative daily-equity tolerance between the engine and vectorbt for every finalist.
VBT_TOLERANCE = 1e-9

T = TypeVar("T")


@dataclass(frozen=True)
class Universe:
    """The ranked funds, the benchmark and the defensive fund (None: cash)."""

    ranked: tuple[str, ...]
    benchmark: str | None
    defensive: str | None


@dataclass
class ResearchData:
    """Everything the walk-forward needs, on one session index (the bars' dates)."""

    dates: pd.DatetimeIndex
    std_factors: dict[str, pd.DataFrame]
    directions: dict[str, int]
    eligible: pd.DataFrame
    close: pd.DataFrame
    market: MarketPanels
    labels: dict[int, pd.DataFrame]
    universe: Universe
    instruments: tuple[Instrument, ...] | dict[str, float | None]
    # Whole-history inputs derived on first use (:meth:`derived`).
    memo: dict[tuple[object, ...], Any] = field(default_factory=dict, repr=False,
                                                compare=False)

    def derived(self, key: tuple[object, ...], make: Callable[[], T]) -> T:
        """``make()`` once per ``key``: a whole-history input every window reads a slice of
        (computing it per window would cost the whole history each time)."""
        if key not in self.memo:
            self.memo[key] = make()
        return self.memo[key]

    def search_panel(self, cfg: PortfolioConfig) -> SearchPanel:
        return SearchPanel.build(self.std_factors, self.directions, self.eligible, self.market,
                                 cfg, symbols=list(self.universe.ranked))


def resolve_universe(symbols: Sequence[str], *, exclude: Sequence[str] = (),
                     benchmark: str | None = None, defensive: str | None = None,
                     explicit: Sequence[str] = ()) -> Universe:
    """The ranked funds among the ``symbols`` present in the data; errors name what is missing."""
    present = set(map(str, symbols))
    wanted = [str(s) for s in explicit] if explicit else sorted(present)
    missing = [s for s in wanted if s not in present]
    if missing:
        raise ValueError(f"universe: funds {missing} are not in the market data")
    for role, code in (("benchmark", benchmark), ("defensive", defensive)):
        if code is not None and code not in present:
            raise ValueError(f"universe.{role}: {code} is not in the market data "
                             f"(funds: {sorted(present)[:10]}…)")
    ranked = tuple(s for s in wanted if s not in set(exclude) and s != defensive)
    if len(ranked) < 2:
        raise ValueError(f"universe: {len(ranked)} fund(s) left to rank")
    return Universe(ranked=ranked, benchmark=benchmark, defensive=defensive)


def prepare(adjusted_bars: pd.DataFrame, specs: Sequence[FactorSpec],
            cross_section: CrossSectionConfig, universe: Universe,
            instruments: Sequence[Instrument] | Mapping[str, float | None] | None,
            horizons: Sequence[int], std_factors: Mapping[str, pd.DataFrame] | None = None
            ) -> ResearchData:
    """Panels for the walk-forward from adjusted bars. ``std_factors`` (name → dates × symbols,
    e.g. the ``factors`` asset) is computed from the bars when not given."""
    panels = Panels.from_bars(adjusted_bars)
    eligible = coverage(panels.close, cross_section, panels.turnover)
    names = [s.name for s in specs]
    if std_factors is None:
        raw = compute_factors(specs, panels)
        std = {n: process(raw[n], eligible, cross_section) for n in names}
    else:
        missing = [n for n in names if n not in std_factors]
        if missing:
            raise ValueError(f"prepare: factors {missing} are not in the factor table")
        std = {n: std_factors[n].reindex(index=panels.index, columns=panels.columns)
               for n in names}
    # The funds' market rules (price band, settlement class) travel with the data.
    table: tuple[Instrument, ...] | dict[str, float | None] = (
        tuple(instruments) if instruments is not None and not isinstance(instruments, Mapping)
        else dict(instruments or {}))
    traded = pd.Index(list(universe.ranked) + ([universe.defensive] if universe.defensive
                                                else []))
    market = market_panels(adjusted_bars, panels.index, traded, table)
    labels = forward_returns(panels.open, horizons, "T1_OPEN")
    return ResearchData(dates=pd.DatetimeIndex(panels.index), std_factors=std,
                        directions={s.name: int(s.direction) for s in specs},
                        eligible=eligible, close=panels.close, market=market, labels=labels,
                        universe=universe, instruments=table)


def windows_for(data: ResearchData, cfg: WfoConfig, warmup: int) -> list[WfoWindow]:
    """Walk-forward windows over the sessions after ``warmup`` (the longest factor window)."""
    return wfo_windows(data.dates[warmup:], cfg)


# -- one window ---------------------------------------------------------------------------------


def screen_window(data: ResearchData, window: WfoWindow, horizon: int,
                  select_kwargs: Mapping[str, float], min_factors: int) -> pd.DataFrame:
    """SPEC §5 screen on the window's in-sample sessions only, one row per factor with its
    statistics, ``selected`` and ``reason``. When fewer than ``min_factors`` pass, the best
    remaining factors by in-sample |ICIR| with the declared sign fill up (and say so)."""
    return screen_windows(data, [window], horizon, select_kwargs, min_factors)[0]


# Sessions per block of the daily screen statistics: bounds the stacked (factors × sessions ×
# funds) array whatever the history and the number of windows.
SCREEN_BLOCK = 256


def screen_windows(data: ResearchData, windows: Sequence[WfoWindow], horizon: int,
                   select_kwargs: Mapping[str, float], min_factors: int) -> list[pd.DataFrame]:
    """:func:`screen_window` of each window. The daily rank ICs and pairwise factor
    correlations do not depend on the window, so they are computed once per session over the
    windows' in-sample span (in blocks of :data:`SCREEN_BLOCK` sessions) and each window
    averages its own sessions — overlapping in-sample periods are not recomputed."""
    if not windows:
        return []
    lo = min(int(data.dates.searchsorted(w.is_start)) for w in windows)
    hi = max(int(data.dates.searchsorted(w.is_end, side="right")) for w in windows)
    names = list(data.std_factors)
    label = data.labels[horizon]
    ics, daily = [], []
    for a in range(lo, hi, SCREEN_BLOCK):
        rows = slice(a, min(a + SCREEN_BLOCK, hi))
        wide = {n: f.iloc[rows] for n, f in data.std_factors.items()}
        ics.append(ic_stats.rank_ic_many(wide, label.iloc[rows]))
        daily.append(ic_stats.daily_pairwise_correlation(wide))
    ic_all = pd.concat(ics)
    pairs = np.hstack(daily)
    out = []
    for window in windows:
        a = int(data.dates.searchsorted(window.is_start)) - lo
        b = int(data.dates.searchsorted(window.is_end, side="right")) - lo
        correlations = ic_stats.pairwise_mean(names, pairs, a, b)
        out.append(_screen_table(data, window, ic_all.iloc[a:b], correlations, horizon,
                                 select_kwargs, min_factors))
    return out


def _screen_table(data: ResearchData, window: WfoWindow, ics: pd.DataFrame,
                  correlations: pd.DataFrame, horizon: int,
                  select_kwargs: Mapping[str, float], min_factors: int) -> pd.DataFrame:
    summary = ic_stats.ic_summary_table(ics, horizon, data.directions)
    result = ic_stats.select_factors(summary, correlations=correlations,
                                     directions=data.directions, **select_kwargs)
    table = result.reasons.copy()
    if len(result.selected) < min_factors:
        right_sign = table.loc[~table["selected"] & table["pass_sign"]
                               & table["redundant_with"].eq("")]
        fill = right_sign["icir"].abs().sort_values(ascending=False, kind="stable")
        for name in fill.index[: min_factors - len(result.selected)]:
            table.at[name, "selected"] = True
            table.at[name, "reason"] = (f"filled up: only {len(result.selected)} passed the "
                                        f"screen, best in-sample |ICIR| with the declared sign; "
                                        f"({table.at[name, 'reason']})")
    table = table.reset_index()
    for key, value in window.as_dict().items():
        table.insert(0, key, value)
    return table


@dataclass
class WindowResult:
    window: WfoWindow
    winner: Candidate | None  # None: the window does not trade (``no_trade_reason``)
    candidates: pd.DataFrame
    finalists: pd.DataFrame
    oos: BacktestResult
    no_trade_reason: str = ""

    def summary(self) -> dict[str, object]:
        out: dict[str, object] = {**self.window.as_dict(), "no_trade": self.winner is None,
                                  "no_trade_reason": self.no_trade_reason}
        if self.winner is None:
            out.update(factors="", top_n=None, rebalance_every=None, weighting=None,
                       candidates=0, vbt_max_rel_diff=0.0)
            out.update({f"in_sample_{m}": float("nan")
                        for m in ("annual_return", "sharpe", "max_drawdown", "score")})
        else:
            best = self.candidates.iloc[0]
            out.update(self.winner.as_dict())
            out["factors"] = ",".join(self.winner.factors)
            out["candidates"] = len(self.candidates)
            for metric in ("annual_return", "sharpe", "max_drawdown", "score"):
                out[f"in_sample_{metric}"] = float(best[metric])
            out["vbt_max_rel_diff"] = float(self.finalists["max_rel_diff"].max())
        for key in ("total_return", "cagr", "sharpe", "max_drawdown", "ew_excess_return"):
            if key in self.oos.metrics:
                out[f"oos_{key}"] = float(self.oos.metrics[key])
        return out


def evaluate_window(data: ResearchData, panel: SearchPanel, window: WfoWindow,
                    factors: Sequence[str], space: SearchSpace, backtest: BacktestConfig
                    ) -> WindowResult:
    """Search on the in-sample sessions, re-run the finalists in vectorbt (they must agree to
    :data:`VBT_TOLERANCE`), freeze the winner and backtest it on the out-of-sample sessions."""
    if len(factors) < space.min_factors:
        return _no_trade(data, panel.cfg, window, backtest,
                         f"window {window.key}: {len(factors)} factor(s) passed the in-sample "
                         f"screen, fewer than the {space.min_factors} a combination needs (too "
                         "few funds or too little signal in-sample): no trade, held in cash")
    table = search_window(panel, factors, window.is_start, window.is_end, space, backtest)
    rows = []
    chosen = [candidate_of(table.iloc[rank]) for rank in range(min(space.finalists, len(table)))]
    # One vectorbt call for all finalists: its per-call overhead dominated the window.
    checks = panel.vectorbt_equities(chosen, window.is_start, window.is_end, backtest)
    for rank, (candidate, vbt) in enumerate(zip(chosen, checks, strict=True)):
        engine = panel.candidate_equity(candidate, window.is_start, window.is_end, backtest)
        diff = float(np.max(np.abs(engine.to_numpy() / vbt.to_numpy() - 1.0)))
        rows.append({"rank": rank + 1, "factors": ",".join(candidate.factors),
                     "top_n": candidate.top_n, "rebalance_every": candidate.rebalance_every,
                     "weighting": candidate.weighting, "score": float(table.iloc[rank]["score"]),
                     "engine_final": float(engine.iloc[-1]), "vbt_final": float(vbt.iloc[-1]),
                     "max_rel_diff": diff})
    finalists = pd.DataFrame(rows)
    bad = finalists.loc[finalists["max_rel_diff"] > VBT_TOLERANCE]
    if len(bad):
        raise AssertionError(f"window {window.key}: the engine and vectorbt disagree for "
                             f"{len(bad)} finalist(s), worst relative difference "
                             f"{bad['max_rel_diff'].max():.3g} ({bad.iloc[0]['factors']})")
    winner = candidate_of(table.iloc[0])
    targets = window_targets(data, panel.cfg, winner, window)
    oos = oos_backtest(data, targets, backtest)
    return WindowResult(window=window, winner=winner, candidates=table, finalists=finalists,
                        oos=oos)


Shared = tuple[ResearchData, SearchPanel, SearchSpace, BacktestConfig]
# What a window worker reads, set once per worker by :func:`_start_worker`.
_SHARED: Shared | None = None


def _start_worker(shared: Shared, threads: int) -> None:
    global _SHARED
    _SHARED = shared
    numba.set_num_threads(threads)  # the workers share the cores, not each all of them


def _evaluate_shared(window: WfoWindow, factors: Sequence[str]) -> WindowResult:
    if _SHARED is None:
        raise RuntimeError("evaluate_windows: a window worker started without the shared panels")
    data, panel, space, backtest = _SHARED
    return evaluate_window(data, panel, window, factors, space, backtest)


def _pool_context() -> BaseContext:
    """``fork`` while this process has one thread and numba's thread pool has not started:
    the workers then share its panels copy-on-write, nothing is pickled. Otherwise
    ``forkserver``: a lock held by another thread (a connection pool's, a logger's) would stay
    held forever in the child, GNU OpenMP (numba's ``omp`` layer) does not survive a fork, and
    each worker receives one pickled copy of the panels."""
    if threading.active_count() > 1:
        return multiprocessing.get_context("forkserver")
    try:
        numba.threading_layer()
    except ValueError:  # "not initialized": no parallel kernel has run yet
        return multiprocessing.get_context("fork")
    return multiprocessing.get_context("forkserver")


def evaluate_windows(data: ResearchData, panel: SearchPanel,
                     jobs: Sequence[tuple[WfoWindow, Sequence[str]]], space: SearchSpace,
                     backtest: BacktestConfig, workers: int = 1) -> Iterator[WindowResult]:
    """:func:`evaluate_window` of each ``(window, screened factors)``, in order.

    With ``workers > 1`` the windows run in that many processes (:func:`_pool_context`: forked
    ones read ``data`` and ``panel`` copy-on-write), each with its share of numba's threads;
    only each window's result comes back. At most ``2 × workers`` windows are in flight and
    results are yielded in order, so memory does not grow with the number of windows when the
    caller keeps only what it needs of each. Results equal the in-process ones (the same code
    on the same arrays; every window is independent of the others).
    """
    if workers <= 1 or len(jobs) <= 1:
        for window, factors in jobs:
            yield evaluate_window(data, panel, window, factors, space, backtest)
        return
    # Derived once here so that the children inherit them instead of each building its own.
    chain_inputs(data, panel.cfg)
    backtest_panels(data, backtest.tick)
    threads = max(1, numba.config.NUMBA_NUM_THREADS // workers)  # type: ignore[attr-defined]
    with ProcessPoolExecutor(workers, mp_context=_pool_context(), initializer=_start_worker,
                             initargs=((data, panel, space, backtest), threads)) as pool:
        queue = iter(jobs)
        pending: deque[Future[WindowResult]] = deque(
            pool.submit(_evaluate_shared, w, f) for w, f in islice(queue, 2 * workers))
        while pending:
            result = pending.popleft().result()
            for window, factors in islice(queue, 1):
                pending.append(pool.submit(_evaluate_shared, window, factors))
            yield result


def _no_trade(data: ResearchData, cfg: PortfolioConfig, window: WfoWindow,
              backtest: BacktestConfig, reason: str) -> WindowResult:
    """A window that holds cash through its out-of-sample sessions, and why."""
    oos = oos_backtest(data, window_targets(data, cfg, None, window), backtest)
    return WindowResult(window=window, winner=None, candidates=pd.DataFrame(),
                        finalists=pd.DataFrame({"max_rel_diff": pd.Series(dtype=float)}),
                        oos=oos, no_trade_reason=reason)


# -- targets ------------------------------------------------------------------------------------


def _bars_mapping(data: ResearchData) -> dict[str, pd.DataFrame]:
    m = data.market
    return {"open": m.open, "close": m.close, "adj_factor": m.factor}


def _benchmark_curve(data: ResearchData) -> pd.Series | None:
    code = data.universe.benchmark
    if code is None:
        return None
    return data.close[code].ffill()


def benchmark_curves(data: ResearchData, result: BacktestResult) -> dict[str, pd.Series]:
    """The curves a backtest is compared with: the equal-weight universe (daily rebalanced over
    the traded funds) and the benchmark fund, on the backtest's sessions."""
    out = {"equal-weight universe": equal_weight_benchmark(result.panels.close)}
    curve = _benchmark_curve(data)
    if curve is not None:
        out[str(data.universe.benchmark)] = curve.reindex(result.equity.index)
    return out


@dataclass(frozen=True)
class ChainInputs:
    """The inputs of the SPEC §8 chain that look back before a window, over the whole history:
    fund volatility, absolute momentum (None: filter off) and the regime percentile (None: gate
    off). Causal kernels, so each row equals the one computed on the history up to it."""

    vol: pd.DataFrame
    abs_mom: pd.DataFrame | None
    percentile: pd.Series | None


def chain_inputs(data: ResearchData, cfg: PortfolioConfig) -> ChainInputs:
    """:class:`ChainInputs` of the ranked funds under ``cfg``, computed once per history and
    set of look-backs (what :func:`rotation.portfolio.build_portfolio` derives from ``close``)."""
    key = ("chain", cfg.vol_window, cfg.abs_mom_window, cfg.regime_window, cfg.regime_lookback,
           cfg.regime_min_periods, bool(cfg.regime_levels))

    def make() -> ChainInputs:
        ranked = list(data.universe.ranked)
        close = data.close[ranked]
        percentile = None
        if cfg.regime_levels:
            eligible = data.eligible.reindex(columns=ranked).astype("boolean").fillna(False)
            percentile = regime_percentile(market_returns_of(close, eligible.astype(bool)), cfg)
        return ChainInputs(
            vol=fund_volatility(close, cfg),
            abs_mom=absolute_momentum(close, cfg) if cfg.abs_mom_window is not None else None,
            percentile=percentile)
    return data.derived(key, make)


def portfolio_result(data: ResearchData, cfg: PortfolioConfig, candidate: Candidate,
                     start: object, end: object) -> PortfolioResult:
    """The SPEC §8 chain of ``candidate`` through :func:`rotation.portfolio.build_portfolio`
    on the sessions ``start..end``, ``start`` being its first rebalance session.

    Equal, row for row, to the chain run from the first session of the history while holding
    nothing before ``start``: before its first rebalance the chain holds and decides nothing,
    so its state at ``start`` is empty, and the inputs that look further back (volatility,
    absolute momentum, the regime percentile) are read from :func:`chain_inputs` over the
    whole history. So a window costs its own sessions, not the history before it.
    """
    rows = slice(pd.Timestamp(start), pd.Timestamp(end))
    ranked = list(data.universe.ranked)
    score_frame = composite_score(
        {n: data.std_factors[n].loc[rows, ranked] for n in candidate.factors}, data.directions)
    pcfg = candidate.portfolio_config(cfg)
    inputs = chain_inputs(data, pcfg)
    return build_portfolio(
        score_frame, data.eligible.loc[rows], pcfg, vol=inputs.vol.loc[rows],
        abs_mom=None if inputs.abs_mom is None else inputs.abs_mom.loc[rows],
        percentile=None if inputs.percentile is None else inputs.percentile.loc[rows],
        rebalance=rebalance_schedule(score_frame.index, pcfg, start))


def trade_rows(result: PortfolioResult, start: object) -> pd.DataFrame:
    """Targets from ``start`` on the sessions that trade (rebalance sessions and sessions where
    the targets change), NaN elsewhere: between rebalances positions drift, they are not
    re-weighted."""
    w = result.weights.loc[pd.Timestamp(start):]
    changed = w.ne(w.shift()).any(axis=1)
    changed.iloc[:1] = True
    keep = result.rebalance.reindex(w.index).fillna(False).astype(bool) | changed
    return w.where(keep, np.nan)


def window_targets(data: ResearchData, cfg: PortfolioConfig, winner: Candidate | None,
                   window: WfoWindow) -> pd.DataFrame:
    """Out-of-sample targets of a frozen winner: decisions from the close before the first
    out-of-sample session to the close before the last one (filled at the next opens), on the
    index from that first decision to the last out-of-sample session. Without a winner (a
    no-trade window) everything is sold at the first open and held in cash."""
    pos = data.dates.get_loc(window.oos_start)
    first_decision = data.dates[pos - 1]
    if winner is None:
        index = data.dates[pos - 1: data.dates.get_loc(window.oos_end) + 1]
        cash = pd.DataFrame(np.nan, index=index, columns=traded_columns(data))
        cash.iloc[0] = 0.0
        return cash
    last_decision = data.dates[data.dates.get_loc(window.oos_end) - 1]
    result = portfolio_result(data, cfg, winner, first_decision, last_decision)
    targets = trade_rows(result, first_decision)
    index = data.dates[pos - 1: data.dates.get_loc(window.oos_end) + 1]
    return targets.reindex(index)


def stitched_targets(data: ResearchData, cfg: PortfolioConfig,
                     winners: Sequence[tuple[WfoWindow, Candidate | None]]) -> pd.DataFrame:
    """One out-of-sample target path: each window's frozen winner decides from the close before
    its first out-of-sample session until the next window takes over."""
    return stitch(data, [(window, window_targets(data, cfg, candidate, window))
                         for window, candidate in winners])


def stitch(data: ResearchData, windows: Sequence[tuple[WfoWindow, pd.DataFrame]]
           ) -> pd.DataFrame:
    """Chain the windows' out-of-sample targets (each from the close before its first
    out-of-sample session to its last session, as :func:`window_targets`) into one path: a
    window decides until the next one takes over; the last session has no decision."""
    ordered = sorted(windows, key=lambda item: item[0].oos_start)
    parts = []
    for k, (_, window_part) in enumerate(ordered):
        targets = window_part.iloc[:-1]
        if k + 1 < len(ordered):
            next_first = data.dates[data.dates.get_loc(ordered[k + 1][0].oos_start) - 1]
            targets = targets.loc[targets.index < next_first]
        parts.append(targets)
    out = pd.concat(parts).sort_index()
    last = ordered[-1][0].oos_end
    out.loc[last] = np.nan
    return out.reindex(columns=traded_columns(data))


def traded_columns(data: ResearchData) -> list[str]:
    return list(data.universe.ranked) + ([data.universe.defensive]
                                         if data.universe.defensive else [])


def backtest_panels(data: ResearchData, tick: float) -> MarketPanels:
    """The backtest's market panels of the traded funds over the whole history (limit flags
    with ``tick``), built once: each backtest reads its own rows of them."""
    return data.derived(("backtest_panels", tick), lambda: market_panels(
        _bars_mapping(data), data.dates, pd.Index(traded_columns(data)), data.instruments,
        tick))


def oos_backtest(data: ResearchData, targets: pd.DataFrame, cfg: BacktestConfig
                 ) -> BacktestResult:
    """The stitched out-of-sample backtest with the equal-weight universe (``ew_*``) and the
    benchmark fund (``bm_*``) in its metrics. The market panels come from
    :func:`backtest_panels` (built once per history)."""
    market = backtest_panels(data, cfg.tick)
    bars = market if market.covers(targets.columns) else _bars_mapping(data)
    return run_backtest(targets, bars, data.instruments, cfg, benchmark=_benchmark_curve(data))


def latest_targets(data: ResearchData, cfg: PortfolioConfig, winner: Candidate | None,
                   window: WfoWindow, no_trade_reason: str = ""
                   ) -> tuple[pd.Timestamp, pd.DataFrame]:
    """The frozen winner of the newest window applied up to the latest session: the latest
    session and why each fund is in or out (:func:`rotation.portfolio.explain`). A no-trade
    window targets cash, every fund with the window's reason."""
    start = data.dates[data.dates.get_loc(window.oos_start) - 1]
    last = data.dates[-1]
    if winner is None:
        columns = traded_columns(data)
        return last, pd.DataFrame({"score": np.nan, "rank": np.nan, "eligible": False,
                                   "held_before": False, "held_days": np.nan,
                                   "selected": False, "base_weight": 0.0, "weight": 0.0,
                                   "reason": no_trade_reason or "no trade"},
                                  index=pd.Index(columns, name="symbol"))
    result = portfolio_result(data, cfg, winner, start, last)
    return last, explain(last, result)
