"""Combination search engine (``rotation.search``, SPEC §6).

The fast numba engine against its references on real data (cn_etf_akshare_qfq_2020, 20 ranked
funds to 2023-12-31): daily equity against ``vectorbt.Portfolio.from_orders``, target weights
against the pandas SPEC §8 chain of :mod:`rotation.walkforward`, the labelled table's metrics
against the candidate's own equity; market rules, fees and slippage on hand-computed cases;
and no look-ahead past the in-sample end.
"""

from __future__ import annotations

import dataclasses
import math
import multiprocessing
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rotation import walkforward as wf
from rotation.adjust import adjust_bars
from rotation.backtest import BacktestConfig, run_backtest
from rotation.costs import CostModel
from rotation.cross_section import CrossSectionConfig
from rotation.factors.registry import DEFAULT_FACTORS
from rotation.portfolio import (
    PortfolioConfig,
    PortfolioResult,
    build_portfolio,
    composite_score,
    rebalance_schedule,
)
from rotation.search import (
    METRICS,
    Candidate,
    SearchPanel,
    SearchSpace,
    candidate_of,
    combinations,
    rank_score,
    search_window,
    simulate_target_percent_nb,
)
from rotation.sources.files import FileMarketSource, load_dataset_spec
from rotation.wfo import WfoConfig

ROOT = Path(__file__).resolve().parents[1]
DATASET = "cn_etf_akshare_qfq_2020"
# 20 ranked funds: broad, sector, ChiNext/STAR (20 % limit), cross-border (no limit) and funds
# listed during the history (588000, 159819, 515790, 516160, 513130); gold is the defensive fund.
RANKED = ["510300", "510500", "159915", "512880", "512100", "510880", "513100", "512690",
          "512010", "512660", "512480", "159928", "515030", "515790", "588000", "159819",
          "513130", "516160", "159992", "512170"]
DEFENSIVE = "518880"
FACTORS = ["momentum_20", "momentum_60", "volatility_20", "sharpe_20", "rsi_14",
           "price_position_20"]
LOW_COSTS = BacktestConfig(costs=CostModel(commission_bps=2.0, slippage_bps=5.0))
# Buys run short of cash.
HIGH_COSTS = BacktestConfig(costs=CostModel(commission_bps=200.0, slippage_bps=100.0),
                            initial_cash=250_000.0)
CANDIDATES = [
    Candidate(("momentum_20", "sharpe_20"), 3, 5, "equal"),
    Candidate(("momentum_60", "volatility_20", "rsi_14"), 2, 10, "inverse_vol"),
    Candidate(("momentum_20", "momentum_60", "price_position_20", "sharpe_20"), 4, 1, "score"),
    Candidate(("volatility_20", "price_position_20"), 5, 20, "inverse_vol"),
    Candidate(("momentum_60", "rsi_14", "sharpe_20"), 3, 7, "score"),
    Candidate(("rsi_14", "momentum_20", "volatility_20", "momentum_60"), 2, 3, "equal"),
]


@dataclasses.dataclass
class Real:
    data: wf.ResearchData
    windows: list
    cfgs: dict[str, PortfolioConfig]
    panels: dict[str, SearchPanel]


@pytest.fixture(scope="module")
def real(shared_data: Path) -> Real:
    spec = load_dataset_spec(ROOT / "config" / "datasets" / f"{DATASET}.yaml")
    source = FileMarketSource(shared_data / DATASET, spec)
    bars = source.load(end="2023-12-31").bars
    bars = adjust_bars(bars[bars["symbol"].isin([*RANKED, DEFENSIVE])])
    specs = [s for s in DEFAULT_FACTORS if s.name in FACTORS]
    assert sorted(s.name for s in specs) == sorted(FACTORS)
    universe = wf.resolve_universe(bars["symbol"].unique(), defensive=DEFENSIVE)
    assert sorted(universe.ranked) == sorted(RANKED)
    data = wf.prepare(bars, specs, CrossSectionConfig(), universe, source.instruments(), (5,))
    windows = wf.windows_for(data, WfoConfig(), max(s.warmup for s in specs))
    cfgs = {"defensive": PortfolioConfig(max_weight=0.5, defensive_symbol=DEFENSIVE),
            "cash": PortfolioConfig(max_weight=0.5)}
    return Real(data=data, windows=windows, cfgs=cfgs,
                panels={k: data.search_panel(c) for k, c in cfgs.items()})


def _window(real: Real, k: int) -> tuple[pd.Timestamp, pd.Timestamp]:
    w = real.windows[k]
    return w.is_start, w.is_end


# -- combinations ------------------------------------------------------------------------------


def test_combinations_counts_padding_and_bounds() -> None:
    combos = combinations(18, 2, 5)
    sizes = (combos >= 0).sum(axis=1)
    assert combos.shape == (153 + 816 + 3060 + 8568, 5)
    assert [int((sizes == k).sum()) for k in (2, 3, 4, 5)] == [153, 816, 3060, 8568]
    assert combos.dtype == np.int64
    # Padding: the indices first (strictly increasing), -1 after them, nothing else.
    for row, k in zip(combos, sizes, strict=True):
        assert (row[k:] == -1).all() and (np.diff(row[:k]) > 0).all() and row[:k].min() >= 0
    assert len({tuple(r) for r in combos}) == len(combos)
    np.testing.assert_array_equal(combinations(3, 1, 3), [[0, -1, -1], [1, -1, -1],
                                                          [2, -1, -1], [0, 1, -1], [0, 2, -1],
                                                          [1, 2, -1], [0, 1, 2]])
    # max_k beyond the number of factors: only the sizes that exist, still max_k wide.
    assert combinations(3, 2, 5).shape == (4, 5)
    with pytest.raises(ValueError, match="min_k <= max_k"):
        combinations(18, 4, 3)
    with pytest.raises(ValueError, match="min_k <= max_k"):
        combinations(18, 0, 3)


# -- engine = vectorbt -------------------------------------------------------------------------


def _vbt_portfolio(panel: SearchPanel, c: Candidate, start: object, end: object,
                   costs: BacktestConfig):
    """The call of ``SearchPanel.vectorbt_equity``, returning the portfolio (for its cash)."""
    import vectorbt as vbt

    weights, trade = panel.candidate_targets(c, start, end)
    a, b = panel.rows(start, end)
    size = np.full(weights.shape, np.nan)
    decided = np.flatnonzero(trade.to_numpy()[:-1])
    size[decided + 1] = weights.to_numpy()[decided]
    size[~panel.tradable[a:b + 1]] = np.nan
    close = pd.DataFrame(panel.close[a:b + 1], index=weights.index,
                         columns=panel.columns).fillna(1.0)
    return vbt.Portfolio.from_orders(
        close=close, size=size, size_type="targetpercent", direction="longonly",
        price=panel.price[a:b + 1], fees=costs.costs.commission_rate,
        slippage=costs.costs.slippage_rate, init_cash=costs.initial_cash, cash_sharing=True,
        group_by=True, call_seq="auto", freq="1D")


def _blocked_orders(weights: np.ndarray, trade: np.ndarray, tradable: np.ndarray) -> int:
    """Fill rows (after a trade row) where a fund targeted or held cannot trade."""
    fills = np.flatnonzero(trade[:-1]) + 1
    wanted = weights[fills - 1] > 0
    wanted[1:] |= weights[fills[1:] - 2] > 0
    return int((wanted & ~tradable[fills]).sum())


@pytest.mark.parametrize("window", [0, 6])
@pytest.mark.parametrize("kind", ["defensive", "cash"])
@pytest.mark.parametrize("costs", [LOW_COSTS, HIGH_COSTS], ids=["low_costs", "high_costs"])
def test_engine_equity_equals_vectorbt(real: Real, kind: str, window: int,
                                       costs: BacktestConfig) -> None:
    panel = real.panels[kind]
    start, end = _window(real, window)
    a, b = panel.rows(start, end)
    assert b - a + 1 == 252
    tradable = panel.tradable[a:b + 1]
    defensive_weight, blocked = 0.0, 0
    for c in CANDIDATES:
        engine = panel.candidate_equity(c, start, end, costs)
        vbt = panel.vectorbt_equity(c, start, end, costs)
        assert engine.index.equals(vbt.index) and len(engine) == 252
        rel = np.abs(engine.to_numpy() / vbt.to_numpy() - 1.0)
        assert rel.max() <= 1e-9, (c, float(rel.max()))
        assert engine.iloc[0] == costs.initial_cash and engine.nunique() > 100  # it trades
        weights, trade = panel.candidate_targets(c, start, end)
        blocked += _blocked_orders(weights.to_numpy(), trade.to_numpy(), tradable)
        if kind == "defensive":
            assert list(weights.columns) == [*panel.symbols, DEFENSIVE]
            defensive_weight = max(defensive_weight, float(weights[DEFENSIVE].max()))
        else:
            assert DEFENSIVE not in weights.columns
    if kind == "defensive":  # the absolute-momentum leg to the defensive fund is exercised
        assert defensive_weight > 0
    # Some fills hit a fund without a bar (suspension) that is held or targeted: it keeps its
    # position there, as in vectorbt.
    assert blocked > 0


def test_engine_equals_vectorbt_when_cash_runs_short(real: Real) -> None:
    # Fully invested equal weights with 2 % fees + 1 % slippage: the last buy of every
    # rebalance cannot be paid in full and is filled partially, leaving zero cash (to rounding).
    panel = real.panels["cash"]
    start, end = _window(real, 0)
    c = CANDIDATES[0]
    weights, trade = panel.candidate_targets(c, start, end)
    assert np.isclose(weights.to_numpy()[trade.to_numpy()].sum(axis=1), 1.0).sum() > 10
    pf = _vbt_portfolio(panel, c, start, end, HIGH_COSTS)
    cash = np.asarray(pf.cash(), dtype=float).ravel()
    assert (cash == 0.0).sum() > 10 and cash.min() >= -1e-9
    engine = panel.candidate_equity(c, start, end, HIGH_COSTS).to_numpy()
    library = np.asarray(pf.value(), dtype=float).ravel()
    assert np.max(np.abs(engine / library - 1.0)) <= 1e-9
    np.testing.assert_array_equal(
        library, panel.vectorbt_equity(c, start, end, HIGH_COSTS).to_numpy())
    # The costs are felt: the same candidate ends well below its low-cost run.
    low = panel.candidate_equity(c, start, end, LOW_COSTS)
    assert engine[-1] / HIGH_COSTS.initial_cash < low.iloc[-1] / LOW_COSTS.initial_cash - 0.2


# -- engine targets = the pandas chain ---------------------------------------------------------


@pytest.mark.parametrize("window", [0, 6])
@pytest.mark.parametrize("kind", ["defensive", "cash"])
def test_engine_targets_equal_pandas_chain(real: Real, kind: str, window: int) -> None:
    panel, cfg = real.panels[kind], real.cfgs[kind]
    start, end = _window(real, window)
    for c in CANDIDATES:
        weights, trade = panel.candidate_targets(c, start, end)
        result = wf.portfolio_result(real.data, cfg, c, start, end)
        expected = result.weights.loc[start:]
        assert list(expected.columns) == list(panel.columns)
        expected = expected.reindex(index=weights.index, columns=panel.columns).fillna(0.0)
        assert expected.index.equals(weights.index)
        diff = np.abs(expected.to_numpy() - weights.to_numpy())
        assert diff.max() <= 1e-12, (c, float(diff.max()))
        assert weights.to_numpy().sum(axis=1).max() <= 1.0 + 1e-12
        assert (weights.to_numpy() > 0).sum(axis=1).max() <= c.top_n + (kind == "defensive")
        rows = wf.trade_rows(result, start)
        is_trade = rows.notna().any(axis=1).reindex(weights.index)
        assert is_trade.notna().all()
        np.testing.assert_array_equal(is_trade.to_numpy(), trade.to_numpy())
        traded = rows.loc[is_trade.to_numpy()].reindex(columns=panel.columns).fillna(0.0)
        assert np.abs(traded.to_numpy() - weights.to_numpy()[trade.to_numpy()]).max() <= 1e-12
        # Every rebalance session trades, and the candidate is not re-weighted every day.
        assert trade.iloc[:: c.rebalance_every].all()
        if c.rebalance_every > 1:
            assert not trade.all()


# -- a window's chain costs its own sessions ---------------------------------------------------


def _chain_from_first_session(data: wf.ResearchData, cfg: PortfolioConfig, c: Candidate,
                              start: pd.Timestamp, end: pd.Timestamp) -> PortfolioResult:
    """The reference: the SPEC §8 chain on every session up to ``end``, holding nothing before
    ``start`` (what portfolio_result ran before it started at ``start``)."""
    ranked = list(data.universe.ranked)
    score = composite_score({n: data.std_factors[n].loc[:end, ranked] for n in c.factors},
                            data.directions)
    pcfg = c.portfolio_config(cfg)
    return build_portfolio(score, data.eligible.loc[:end], pcfg, close=data.close.loc[:end, ranked],
                           rebalance=rebalance_schedule(score.index, pcfg, start))


@pytest.mark.parametrize("kind", ["defensive", "cash"])
def test_window_chain_equals_the_chain_from_the_first_session(real: Real, kind: str) -> None:
    """portfolio_result starts at the window with the look-back inputs read over the whole
    history: every stage equals the chain run from the first session, exactly, on windows late
    in the history (regime percentile and momentum warm) and with every weighting."""
    cfg = real.cfgs[kind]
    for k in (3, len(real.windows) - 1):
        window = real.windows[k]
        start = real.data.dates[real.data.dates.get_loc(window.oos_start) - 1]
        for c in CANDIDATES:
            got = wf.portfolio_result(real.data, cfg, c, start, window.oos_end)
            ref = _chain_from_first_session(real.data, cfg, c, start, window.oos_end)
            assert got.score.index[0] == start
            for stage in ("weights", "selection", "rank", "held_days", "base_weights",
                          "capped", "abs_mom"):
                pd.testing.assert_frame_equal(getattr(got, stage),
                                              getattr(ref, stage).loc[start:], obj=stage)
            for stage in ("percentile", "exposure", "decision", "rebalance"):
                pd.testing.assert_series_equal(getattr(got, stage),
                                               getattr(ref, stage).loc[start:], obj=stage)
            assert ref.weights.loc[:start].iloc[:-1].eq(0.0).all().all()
            assert got.percentile.notna().any() and got.abs_mom.notna().any().any()


def test_backtest_reads_the_history_panels_exactly(real: Real) -> None:
    """oos_backtest reads the market panels built once over the history: the same result as
    building them from the bars for the window alone."""
    window = real.windows[-1]
    targets = wf.window_targets(real.data, real.cfgs["defensive"], CANDIDATES[1], window)
    got = wf.oos_backtest(real.data, targets, LOW_COSTS)
    ref = run_backtest(targets, {"open": real.data.market.open,
                                 "close": real.data.market.close,
                                 "adj_factor": real.data.market.factor},
                       real.data.instruments, LOW_COSTS,
                       benchmark=wf._benchmark_curve(real.data))
    pd.testing.assert_series_equal(got.equity, ref.equity)
    pd.testing.assert_frame_equal(got.orders, ref.orders)
    pd.testing.assert_frame_equal(got.positions, ref.positions)
    assert pd.Series(got.metrics).equals(pd.Series(ref.metrics))
    assert len(got.orders) > 0


@pytest.mark.parametrize("start", ["chosen", "forkserver"])
def test_windows_in_worker_processes_equal_in_process(real: Real, start: str,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """evaluate_windows over two workers, started as ``_pool_context`` chooses or from a fork
    server (each worker given a pickled copy of the panels, as in a process with threads),
    gives every window's result exactly as in this process, in order."""
    if start != "chosen":
        monkeypatch.setattr(wf, "_pool_context", lambda: multiprocessing.get_context(start))
    panel = real.panels["defensive"]
    space = SearchSpace(min_factors=2, max_factors=3, top_n=(2, 3), rebalance_every=(5,),
                        weightings=("equal", "inverse_vol"), complexity_penalty=0.02,
                        finalists=2)
    jobs = [(w, FACTORS[:4]) for w in real.windows[:3]] + [(real.windows[3], FACTORS[:1])]
    local = list(wf.evaluate_windows(real.data, panel, jobs, space, LOW_COSTS, workers=1))
    pooled = list(wf.evaluate_windows(real.data, panel, jobs, space, LOW_COSTS, workers=2))
    assert [r.window for r in pooled] == [w for w, _ in jobs]
    assert pooled[-1].winner is None  # one factor: the no-trade window
    for a, b in zip(local, pooled, strict=True):
        assert a.winner == b.winner
        pd.testing.assert_frame_equal(a.candidates, b.candidates)
        pd.testing.assert_frame_equal(a.finalists, b.finalists)
        pd.testing.assert_series_equal(a.oos.equity, b.oos.equity)
        pd.testing.assert_frame_equal(a.oos.orders, b.oos.orders)


# -- the table's metrics and ranking -----------------------------------------------------------

SPACE = SearchSpace(min_factors=2, max_factors=4, top_n=(2, 3, 5), rebalance_every=(5, 10),
                    weightings=("equal", "inverse_vol", "score"), complexity_penalty=0.02)


@pytest.fixture(scope="module")
def table(real: Real) -> pd.DataFrame:
    start, end = _window(real, 0)
    return search_window(real.panels["defensive"], FACTORS, start, end, SPACE, LOW_COSTS)


def _metrics_of(equity: np.ndarray, traded: float) -> dict[str, float]:
    n = len(equity)
    years = (n - 1) / 252.0
    r = equity[1:] / equity[:-1] - 1.0
    return {"total_return": equity[-1] / equity[0] - 1.0,
            "annual_return": (equity[-1] / equity[0]) ** (1.0 / years) - 1.0,
            "max_drawdown": float(np.min(equity / np.maximum.accumulate(equity) - 1.0)),
            "sharpe": r.mean() / r.std(ddof=1) * math.sqrt(252.0),
            "turnover": traded / equity.mean() / years}


def test_table_metrics_equal_candidate_equity(real: Real, table: pd.DataFrame) -> None:
    panel = real.panels["defensive"]
    start, end = _window(real, 0)
    n_combos = 15 + 20 + 15  # 2, 3 and 4 of 6 factors
    assert len(table) == n_combos * 3 * 2 * 3
    assert list(table.columns) == ["factors", "n_factors", "top_n", "rebalance_every",
                                   "weighting", *METRICS, "score"]
    assert not table.duplicated(["factors", "top_n", "rebalance_every", "weighting"]).any()
    a, b = panel.rows(start, end)
    for pos in (0, 1, len(table) // 2, len(table) - 1):
        row = table.iloc[pos]
        c = candidate_of(row)
        equity = panel.candidate_equity(c, start, end, LOW_COSTS).to_numpy()
        weights, trade = panel.candidate_targets(c, start, end)
        eq2, traded = simulate_target_percent_nb(
            weights.to_numpy(), trade.to_numpy(), panel.price[a:b + 1],
            panel.tradable[a:b + 1], panel.close[a:b + 1], LOW_COSTS.initial_cash,
            LOW_COSTS.costs.commission_rate, LOW_COSTS.costs.slippage_rate)
        np.testing.assert_array_equal(eq2, equity)
        expected = _metrics_of(equity, traded)
        for name in ("total_return", "max_drawdown", "annual_return"):
            assert abs(row[name] - expected[name]) <= 1e-12, (pos, name)
        for name in ("sharpe", "turnover"):
            assert row[name] == pytest.approx(expected[name], rel=1e-12, abs=1e-12), (pos, name)
        assert row["max_drawdown"] <= 0.0


def test_table_sorted_by_score(table: pd.DataFrame) -> None:
    score = table["score"].to_numpy()
    assert (np.diff(score) <= 0).all()
    ties = np.diff(score) == 0
    assert (np.diff(table["n_factors"].to_numpy())[ties] >= 0).all()
    np.testing.assert_array_equal(score, rank_score(table, SPACE).to_numpy())
    # The best candidate is no worse than every candidate on the rank-weighted score.
    assert table.iloc[0]["score"] == table["score"].max()


def test_rank_score_by_hand() -> None:
    table = pd.DataFrame({"annual_return": [0.1, 0.2, 0.2, -0.1],
                          "sharpe": [1.0, 0.5, 2.0, 0.0],
                          "max_drawdown": [-0.1, -0.3, -0.2, -0.05],
                          "n_factors": [2, 3, 4, 2]})
    space = SearchSpace(min_factors=2, complexity_penalty=0.05, score_weights=(0.5, 0.25, 0.25))
    # Percentile ranks (ties share the average rank, 3.5 / 4):
    #   annual_return [2/4, 3.5/4, 3.5/4, 1/4], sharpe [3/4, 2/4, 4/4, 1/4],
    #   max_drawdown (higher = shallower = better) [3/4, 1/4, 2/4, 4/4];
    #   penalty 0.05 per factor beyond 2: [0, 0.05, 0.10, 0].
    expected = [0.5 * 0.5 + 0.25 * 0.75 + 0.25 * 0.75,              # 0.625
                0.5 * 0.875 + 0.25 * 0.5 + 0.25 * 0.25 - 0.05,       # 0.575
                0.5 * 0.875 + 0.25 * 1.0 + 0.25 * 0.5 - 0.10,        # 0.7125
                0.5 * 0.25 + 0.25 * 0.25 + 0.25 * 1.0]               # 0.4375
    np.testing.assert_allclose(rank_score(table, space).to_numpy(), expected, rtol=0, atol=1e-15)


# -- market rules, fees and slippage by hand ---------------------------------------------------

T, F = True, False
NAN = np.nan
# The hand case: two funds, six sessions. Orders decided on trade row i fill at open(i+1).
# B is at a price limit on row 1 (bar, no trade); A has no bar on row 4.
HAND_WEIGHTS = np.array([[0.5, 0.5], [0.5, 0.5], [0.9, 0.1], [0.0, 1.0], [0.0, 1.0],
                         [0.3, 0.3]])
HAND_TRADE = np.array([T, T, F, T, T, F])
HAND_PRICE = np.array([[10.0, 20.0], [10.0, 20.0], [12.0, 25.0], [11.0, 30.0], [NAN, 28.0],
                       [13.0, 27.0]])
HAND_TRADABLE = np.array([[T, T], [T, F], [T, T], [T, T], [F, T], [T, T]])
HAND_CLOSE = np.array([[10.0, 20.0], [11.0, 22.0], [12.0, 25.0], [12.0, 26.0], [12.0, 27.0],
                       [14.0, 28.0]])  # A's close carried over its missing bar
HAND = (HAND_WEIGHTS, HAND_TRADE, HAND_PRICE, HAND_TRADABLE, HAND_CLOSE)


def test_simulation_market_rules_by_hand() -> None:
    # Two funds, 1 000 cash, no costs. Orders decided on trade row i fill at open(i+1).
    weights, trade, price, tradable, close = HAND
    equity, traded = simulate_target_percent_nb(weights, trade, price, tradable, close,
                                                1000.0, 0.0, 0.0)
    a_units = 0.5 * 1100.0 / 12.0                    # 45.833…: rebalanced at open row 2
    value5 = a_units * 13.0 + 22.0 * 27.0           # group value at open row 5
    expected = [
        1000.0,                                      # row 0: nothing filled yet
        500.0 + 50.0 * 11.0,                         # row 1: A 50 units at 10, B blocked
        a_units * 12.0 + 22.0 * 25.0,                # row 2: value 1 100 at the opens → A
        #   sells 50 − 45.83 units (+50 cash), B (blocked yesterday) buys 22 units at 25
        a_units * 12.0 + 22.0 * 26.0,                # row 3: not a fill row, positions drift
        a_units * 12.0 + 22.0 * 27.0,                # row 4: A has no bar → kept; B's buy
        #   needs cash and there is none (A could not be sold)
        value5 / 27.0 * 28.0,                        # row 5: A sold at 13, all in B at 27
    ]
    np.testing.assert_allclose(equity, expected, rtol=1e-12)
    assert traded == pytest.approx(500.0 + 50.0 + 550.0 + 2 * a_units * 13.0, rel=1e-12)
    # Row 2's decision (0.9/0.1) is not a trade row: never executed. Had row 2 traded, row 3
    # would have re-weighted to it.
    forced = trade.copy()
    forced[2] = True
    eq_forced, _ = simulate_target_percent_nb(weights, forced, price, tradable, close,
                                              1000.0, 0.0, 0.0)
    np.testing.assert_array_equal(eq_forced[:3], equity[:3])
    assert eq_forced[3] != pytest.approx(equity[3], rel=1e-6)


def test_simulation_matches_vectorbt_on_hand_case() -> None:
    import vectorbt as vbt

    weights, trade, price, tradable, close = HAND
    for fees, slippage in ((0.0, 0.0), (0.003, 0.002), (0.05, 0.01)):
        equity, _ = simulate_target_percent_nb(weights, trade, price, tradable, close, 1000.0,
                                               fees, slippage)
        size = np.full(weights.shape, np.nan)
        decided = np.flatnonzero(trade[:-1])
        size[decided + 1] = weights[decided]
        size[~tradable] = np.nan
        pf = vbt.Portfolio.from_orders(
            close=pd.DataFrame(close), size=size, size_type="targetpercent",
            direction="longonly", price=price, fees=fees, slippage=slippage, init_cash=1000.0,
            cash_sharing=True, group_by=True, call_seq="auto", freq="1D")
        np.testing.assert_allclose(equity, np.asarray(pf.value(), dtype=float).ravel(),
                                   rtol=1e-12)


def test_simulation_fees_and_slippage_by_hand() -> None:
    # One fund, 10 000 cash, 0.1 % fees, 0.2 % slippage: buy 50 % at open row 1, hold, sell
    # everything at open row 3.
    price = np.array([[10.0], [10.0], [11.0], [12.0]])
    close = np.array([[10.0], [10.5], [11.5], [12.5]])
    tradable = np.ones((4, 1), dtype=bool)
    trade = np.array([T, F, T, F])
    weights = np.array([[0.5], [0.8], [0.0], [0.8]])
    equity, traded = simulate_target_percent_nb(weights, trade, price, tradable, close,
                                                10_000.0, 0.001, 0.002)
    # Buy: 0.5 × 10 000 / 10 = 500 units at 10 × 1.002 = 10.02 → 5 010 + fee 5.01.
    cash1 = 10_000.0 - 5_010.0 - 5.01                    # 4 984.99
    # Sell: 500 units at 12 × 0.998 = 11.976 → 5 988 − fee 5.988.
    cash3 = cash1 + 5_988.0 - 5.988                      # 10 967.002
    np.testing.assert_allclose(equity, [10_000.0, cash1 + 500 * 10.5, cash1 + 500 * 11.5,
                                        cash3], rtol=1e-12)
    assert equity[3] == pytest.approx(10_967.002, rel=1e-12)
    assert traded == pytest.approx(5_010.0 + 5_988.0, rel=1e-12)

    # All in: 1 000 units would cost 10 020 + 10.02 > 10 000 cash → partial fill of
    # 10 000 / 1.001 / 10.02 units, cash exactly 0.
    weights[0] = 1.0
    equity, traded = simulate_target_percent_nb(weights, trade, price, tradable, close,
                                                10_000.0, 0.001, 0.002)
    units = 10_000.0 / 1.001 / 10.02
    np.testing.assert_allclose(equity, [10_000.0, units * 10.5, units * 11.5,
                                        units * 11.976 * (1 - 0.001)], rtol=1e-12)
    assert traded == pytest.approx(units * 10.02 + units * 11.976, rel=1e-12)


# -- no look-ahead -----------------------------------------------------------------------------


def test_search_reads_nothing_after_in_sample_end(real: Real, table: pd.DataFrame) -> None:
    data, cfg = real.data, real.cfgs["defensive"]
    start, end = _window(real, 0)
    later = data.dates > end
    assert later.sum() > 500
    rng = np.random.default_rng(7)

    def perturb(frame: pd.DataFrame, scale: float) -> pd.DataFrame:
        out = frame.copy()
        out.loc[later] = out.loc[later] * scale
        return out

    std = {}
    for name, f in data.std_factors.items():
        g = f.copy()
        g.loc[later] = g.loc[later] + rng.normal(0.0, 1.0, g.loc[later].shape)
        std[name] = g
    m = data.market
    before = np.broadcast_to(~later[:, None], m.open.shape)
    market = dataclasses.replace(
        m, open=perturb(m.open, 1.3), close=perturb(m.close, 1.3),
        limit_up=m.limit_up.where(before, ~m.limit_up),
        has_bar=m.has_bar.where(before, rng.random(m.has_bar.shape) < 0.9))
    elig = data.eligible.astype(bool)
    eligible = elig.where(np.broadcast_to(~later[:, None], elig.shape), ~elig)
    panel = SearchPanel.build(std, data.directions, eligible, market, cfg,
                              symbols=list(data.universe.ranked))
    base = real.panels["defensive"]
    _, b = base.rows(start, end)
    assert not np.allclose(panel.close[b + 1:], base.close[b + 1:], equal_nan=True)
    # Every input the search reads is unchanged up to the in-sample end (causal panels).
    np.testing.assert_array_equal(panel.signed[:, : b + 1], base.signed[:, : b + 1])
    for name in ("eligible", "vol", "exposure", "abs_neg", "def_ok", "price", "tradable",
                 "close"):
        np.testing.assert_array_equal(getattr(panel, name)[: b + 1],
                                      getattr(base, name)[: b + 1], err_msg=name)

    again = search_window(panel, FACTORS, start, end, SPACE, LOW_COSTS)
    pd.testing.assert_frame_equal(again, table, check_exact=True)
    # The perturbation matters once the window reaches past the in-sample end.
    later_end = data.dates[b + 40]
    moved = search_window(panel, FACTORS, start, later_end, SPACE, LOW_COSTS)
    same = search_window(base, FACTORS, start, later_end, SPACE, LOW_COSTS)
    assert not np.allclose(moved[list(METRICS)].to_numpy(), same[list(METRICS)].to_numpy())
