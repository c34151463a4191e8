"""The research chain on real data (cn_etf_akshare_qfq_2020), without Dagster: a look-ahead
test across every stage, and the finalists' agreement with vectorbt.

SPEC §1: changing any data after a date D must leave every factor, IC value, selection, weight
and equity value up to D bit-identical. The chain here is the one the assets run: factors from
adjusted bars → per-window in-sample screen → combination search → frozen winner →
out-of-sample targets stitched → full backtest.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from assets.walk_forward import search_space, warmup_sessions
from rotation import walkforward as wf
from rotation.adjust import adjust_bars
from rotation.cross_section import CrossSectionConfig
from rotation.search import SearchSpace
from rotation.sources.files import FileMarketSource, load_dataset_spec
from rotation.strategy import load_strategy

ROOT = Path(__file__).resolve().parents[1]
END = "2023-06-30"


def _chain(bars: pd.DataFrame, instruments: object) -> dict[str, object]:
    strategy = load_strategy("etf_rotation_akshare")
    space = SearchSpace(**{**search_space(strategy).__dict__, "max_factors": 2,
                           "top_n": (3, 5), "rebalance_every": (5, 10), "finalists": 3})
    u = strategy.universe
    universe = wf.resolve_universe(bars["symbol"].unique(), benchmark=u.benchmark,
                                   defensive=u.defensive)
    data = wf.prepare(bars, strategy.factor_specs, CrossSectionConfig(), universe,
                      instruments, strategy.horizons)  # type: ignore[arg-type]
    pcfg = strategy.portfolio_config()
    panel = data.search_panel(pcfg)
    windows = wf.windows_for(data, strategy.wfo_config, warmup_sessions(strategy))
    screens, results = {}, {}
    for window in windows:
        screen = wf.screen_window(data, window, strategy.screening_horizon,
                                  strategy.select_kwargs(), space.min_factors)
        chosen = screen.loc[screen["selected"], "factor"].tolist()
        screens[window.key] = screen
        results[window.key] = wf.evaluate_window(data, panel, window, chosen, space,
                                                 strategy.backtest_config())
    winners = [(r.window, r.winner) for r in results.values()]
    targets = wf.stitched_targets(data, pcfg, winners)
    backtest = wf.oos_backtest(data, targets, strategy.backtest_config())
    return {"data": data, "windows": windows, "screens": screens, "results": results,
            "targets": targets, "backtest": backtest}


@pytest.fixture(scope="module")
def real(shared_data: Path) -> tuple[pd.DataFrame, object]:
    root = shared_data / "cn_etf_akshare_qfq_2020"
    source = FileMarketSource(root, load_dataset_spec(
        ROOT / "config/datasets/cn_etf_akshare_qfq_2020.yaml"))
    bars = source.load(end=END).bars
    return adjust_bars(bars), source.instruments()


@pytest.fixture(scope="module")
def chains(real: tuple[pd.DataFrame, object]) -> tuple[dict, dict, pd.Timestamp]:
    bars, instruments = real
    base = _chain(bars, instruments)
    windows = base["windows"]
    assert len(windows) >= 4
    cut = windows[2].oos_end  # D: inside the chain, after three windows' out-of-sample ends
    rng = np.random.default_rng(7)
    changed = bars.copy()
    after = changed["date"] > cut
    scale = rng.uniform(0.7, 1.3, size=int(after.sum()))
    for column in ("open", "high", "low", "close", "raw_open", "raw_close"):
        changed.loc[after, column] = changed.loc[after, column] * scale
    for column in ("volume", "turnover"):
        changed.loc[after, column] = changed.loc[after, column] * rng.uniform(
            0.2, 5.0, size=int(after.sum()))
    return base, _chain(changed, instruments), cut


def test_every_stage_up_to_d_is_bit_identical_after_changing_later_data(chains) -> None:
    base, changed, cut = chains
    a, b = base["data"], changed["data"]
    for name, frame in a.std_factors.items():  # factors
        pd.testing.assert_frame_equal(frame.loc[:cut], b.std_factors[name].loc[:cut],
                                      check_exact=True)
    decided = [w.key for w in base["windows"] if w.oos_start <= cut]
    assert len(decided) >= 3
    for key in decided:
        # IC statistics, screen and selection of every window decided by D
        pd.testing.assert_frame_equal(base["screens"][key], changed["screens"][key],
                                      check_exact=True)
        ra, rb = base["results"][key], changed["results"][key]
        assert ra.winner == rb.winner
        pd.testing.assert_frame_equal(ra.candidates, rb.candidates, check_exact=True)
    # weights decided up to D, and the stitched out-of-sample equity up to D
    pd.testing.assert_frame_equal(base["targets"].loc[:cut], changed["targets"].loc[:cut],
                                  check_exact=True)
    ea, eb = base["backtest"].equity.loc[:cut], changed["backtest"].equity.loc[:cut]
    pd.testing.assert_series_equal(ea, eb, check_exact=True)
    # ...and the perturbation did change what comes after D
    assert not base["backtest"].equity.loc[cut:].iloc[1:].equals(
        changed["backtest"].equity.loc[cut:].iloc[1:])


def test_every_finalist_matches_vectorbt(chains) -> None:
    base, _, _ = chains
    for result in base["results"].values():
        assert len(result.finalists) == 3
        assert (result.finalists["max_rel_diff"] <= wf.VBT_TOLERANCE).all()


def test_out_of_sample_backtest_replays_in_vectorbt(chains) -> None:
    from rotation.backtest import vbt as vbt_replay

    base, _, _ = chains
    result = base["backtest"]
    assert vbt_replay.compare(result, vbt_replay.replay(result)) <= 1e-9
    assert {"bm_excess_return", "ew_excess_return", "sharpe", "max_drawdown"} <= set(
        result.metrics)
    # Only out-of-sample sessions are traded: nothing before the first window's first decision.
    first = base["windows"][0]
    assert result.orders["date"].min() >= first.oos_start


def test_a_window_too_thin_to_screen_is_no_trade_with_its_reason(shared_data: Path) -> None:
    """2006–2008 with two funds: no factor can pass a cross-sectional screen, so each window
    completes as "no trade" (cash), names itself and why, and the stitched curve goes on."""
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(
        ROOT / "config/datasets/cn_etf_morphkyan_raw.yaml"))
    bars = source.load("2005-02-23", "2008-12-31").bars
    bars = adjust_bars(bars.loc[bars["symbol"].isin(["510050", "510180"])])
    strategy = load_strategy("etf_rotation_default")
    space = SearchSpace(**{**search_space(strategy).__dict__, "max_factors": 2,
                           "top_n": (1,), "rebalance_every": (5,), "finalists": 1})
    universe = wf.resolve_universe(bars["symbol"].unique())
    data = wf.prepare(bars, strategy.factor_specs[:4], CrossSectionConfig(), universe,
                      source.instruments(), strategy.horizons)
    pcfg = strategy.portfolio_config(top_n=1)
    pcfg = type(pcfg)(**{**pcfg.__dict__, "defensive_symbol": None, "max_weight": 1.0})
    panel = data.search_panel(pcfg)
    windows = wf.windows_for(data, strategy.wfo_config, warmup_sessions(strategy))
    assert len(windows) >= 2
    results = []
    for window in windows:
        screen = wf.screen_window(data, window, strategy.screening_horizon,
                                  strategy.select_kwargs(), space.min_factors)
        chosen = screen.loc[screen["selected"], "factor"].tolist()
        results.append(wf.evaluate_window(data, panel, window, chosen, space,
                                          strategy.backtest_config()))
    for result in results:
        summary = result.summary()
        assert summary["no_trade"] is True and result.winner is None
        assert result.window.key in summary["no_trade_reason"]
        assert "fewer than the 2 a combination needs" in summary["no_trade_reason"]
        assert result.oos.orders.empty or not result.oos.orders["units"].gt(0).any()
    targets = wf.stitched_targets(data, pcfg, [(r.window, r.winner) for r in results])
    backtest = wf.oos_backtest(data, targets, strategy.backtest_config())
    assert backtest.equity.eq(strategy.costs.initial_cash).all()
    as_of, why = wf.latest_targets(data, pcfg, None, results[-1].window,
                                   results[-1].no_trade_reason)
    assert as_of == data.dates[-1] and why["weight"].eq(0).all()
    assert why["reason"].str.contains("no trade").all()
