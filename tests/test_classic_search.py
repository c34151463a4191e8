"""The classic strategies' walk-forward search (rotation/classic_search.py) on real data
(cn_etf_akshare_qfq_2020): grid and Optuna scored in-sample only by the rotation's score and
backtest engine, no look-ahead, reproducible Optuna."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rotation import classic_search as cs
from rotation import walkforward as wf
from rotation.adjust import adjust_bars
from rotation.cross_section import CrossSectionConfig
from rotation.search import SearchSpace, rank_score
from rotation.sources.files import FileMarketSource, load_dataset_spec
from rotation.strategy import StrategyConfig, load_strategy
from rotation.wfo import WfoWindow

ROOT = Path(__file__).resolve().parents[1]
END = "2022-03-31"


@pytest.fixture(scope="module")
def real(shared_data: Path) -> tuple[pd.DataFrame, object]:
    root = shared_data / "cn_etf_akshare_qfq_2020"
    source = FileMarketSource(root, load_dataset_spec(
        ROOT / "config/datasets/cn_etf_akshare_qfq_2020.yaml"))
    return adjust_bars(source.load(end=END).bars), source.instruments()


def _research(bars: pd.DataFrame, instruments: object, strategy: StrategyConfig
              ) -> tuple[wf.ResearchData, list[WfoWindow]]:
    u = strategy.universe
    universe = wf.resolve_universe(bars["symbol"].unique(), benchmark=u.benchmark,
                                   defensive=u.defensive)
    data = wf.prepare(bars, (), CrossSectionConfig(), universe, instruments,  # type: ignore[arg-type]
                      strategy.horizons, std_factors={})
    assert strategy.classic is not None
    windows = wf.windows_for(data, strategy.wfo_config, cs.warmup_sessions(strategy.classic))
    return data, windows


def _small_macd(trials: int = 8, seed: int = 7) -> StrategyConfig:
    strategy = load_strategy("macd_akshare")
    assert strategy.classic is not None
    section = strategy.classic.model_copy(update={"trials": trials, "seed": seed})
    return strategy.model_copy(update={"classic": section})


def test_grid_scores_every_candidate_in_sample_with_the_rotation_score(real) -> None:
    bars, instruments = real
    strategy = load_strategy("ma_cross_akshare")
    section = strategy.classic
    assert section is not None and section.method == "grid"
    data, windows = _research(bars, instruments, strategy)
    window = windows[0]
    table = cs.search_window(data, section, window, strategy.backtest_config())
    assert sorted(table["params"]) == sorted(cs.params_text(p) for p in section.candidates())
    w = section.score_weights
    expected = rank_score(table.assign(n_factors=0), SearchSpace(
        complexity_penalty=0.0, score_weights=(w.annual_return, w.sharpe, w.max_drawdown)))
    np.testing.assert_allclose(table["score"], expected)
    assert table["score"].is_monotonic_decreasing
    # the score's metrics are the full engine's: lots of 100, the strategy's cost model
    best = cs.in_sample_backtest(data, section, table.iloc[0][["fast", "slow"]].to_dict(),
                                 window, strategy.backtest_config())
    assert best.metrics["cagr"] == pytest.approx(table.iloc[0]["annual_return"])
    bought = best.orders.loc[(best.orders["side"] == "buy") & ~best.orders["blocked"]]
    assert len(bought) and (bought["units"] % 100 == 0).all()
    assert best.equity.index[-1] == window.is_end  # nothing after the in-sample end


def test_the_winner_trades_out_of_sample_and_windows_stitch(real) -> None:
    bars, instruments = real
    strategy = load_strategy("ma_cross_akshare")
    section = strategy.classic
    assert section is not None
    data, windows = _research(bars, instruments, strategy)
    results = [cs.evaluate_window(data, section, w, strategy.backtest_config())
               for w in windows[:2]]
    for result in results:
        summary = result.summary()
        assert summary["params"] == result.candidates.iloc[0]["params"]
        assert result.oos.equity.index[-1] == result.window.oos_end
        assert result.oos.equity.index[1] == result.window.oos_start
    targets = cs.stitched_targets(data, section, [(r.window, r.winner) for r in results])
    assert targets.index[0] == data.dates[data.dates.get_loc(windows[0].oos_start) - 1]
    assert targets.index[-1] == windows[1].oos_end and targets.iloc[-1].isna().all()
    assert (targets.fillna(0).sum(axis=1) <= 1 + 1e-9).all()


def test_no_look_ahead_the_winner_ignores_data_after_the_in_sample_end(real) -> None:
    bars, instruments = real
    strategy = load_strategy("ma_cross_akshare")
    section = strategy.classic
    assert section is not None
    data, windows = _research(bars, instruments, strategy)
    window = windows[0]
    changed = bars.copy()
    after = changed["date"] > window.is_end
    rng = np.random.default_rng(3)
    scale = rng.uniform(0.6, 1.4, size=int(after.sum()))
    for column in ("open", "high", "low", "close", "raw_open", "raw_close"):
        changed.loc[after, column] = changed.loc[after, column] * scale
    data_changed, _ = _research(changed, instruments, strategy)
    cfg = strategy.backtest_config()
    base = cs.search_window(data, section, window, cfg)
    other = cs.search_window(data_changed, section, window, cfg)
    pd.testing.assert_frame_equal(base, other, check_exact=True)
    # ...while the out-of-sample result of the same winner does change
    winner = cs.evaluate_window(data, section, window, cfg)
    moved = cs.evaluate_window(data_changed, section, window, cfg)
    assert winner.winner == moved.winner
    assert not winner.oos.equity.equals(moved.oos.equity)


@pytest.mark.parametrize("name", ["macd_akshare", "ma_cross_akshare"])
def test_span_weights_equal_the_generator_on_closes_cut_at_the_span(real, name: str) -> None:
    """A span's targets are the rows of the generator run once over the history: exactly
    the generator run on the closes up to the span's last decision (it is causal)."""
    from rotation.classic import CLASSIC_CONFIGS, CLASSIC_STRATEGIES

    bars, instruments = real
    strategy = load_strategy(name)
    section = strategy.classic
    assert section is not None
    data, windows = _research(bars, instruments, strategy)
    ranked = list(data.universe.ranked)
    for params in list(section.candidates())[:3]:
        for window in (windows[0], windows[-1]):
            last = window.oos_end
            config = CLASSIC_CONFIGS[section.generator](**params, rebalance="daily")
            cut = CLASSIC_STRATEGIES[section.generator](data.close.loc[:last, ranked], config)
            expected = cut.where(data.eligible.loc[:last, ranked].fillna(False).astype(bool), 0.0)
            pd.testing.assert_frame_equal(cs._weights(data, section, params, last), expected)


def test_optuna_with_a_fixed_seed_is_reproducible(real) -> None:
    bars, instruments = real
    strategy = _small_macd()
    section = strategy.classic
    assert section is not None and section.method == "optuna"
    data, windows = _research(bars, instruments, strategy)
    cfg = strategy.backtest_config()
    first = cs.search_window(data, section, windows[0], cfg)
    again = cs.search_window(data, section, windows[0], cfg)
    pd.testing.assert_frame_equal(first, again, check_exact=True)
    assert (first["method"] == "optuna").all()
    # a sample of the 100-combination space, each distinct set scored once
    assert 1 <= len(first) <= section.trials and first["params"].is_unique
    valid = {cs.params_text(p) for p in section.candidates()}
    assert set(first["params"]) <= valid


def test_the_latest_target_explains_every_fund(real) -> None:
    bars, instruments = real
    strategy = load_strategy("ma_cross_akshare")
    section = strategy.classic
    assert section is not None
    data, _ = _research(bars, instruments, strategy)
    params = {"fast": 5, "slow": 20}
    as_of, table = cs.latest_targets(data, section, params)
    assert as_of == data.dates[-1]
    assert list(table.columns) == ["score", "rank", "eligible", "held_before", "held_days",
                                   "selected", "base_weight", "weight", "reason"]
    assert set(table.index) == set(data.universe.ranked)
    full = cs._weights(data, section, params, as_of)
    pd.testing.assert_series_equal(table["weight"].sort_index(), full.loc[as_of].sort_index(),
                                   check_names=False)
    held = table.loc[table["weight"] > 0]
    assert len(held) and (held["held_days"] >= 1).all()
    assert held["reason"].str.startswith("in: ma_cross").all()
    # a fund held for k sessions in a row: k trailing positive weights
    symbol = held.index[0]
    k = int(held.loc[symbol, "held_days"])
    column = full[symbol].to_numpy()
    assert (column[-k:] > 0).all() and (len(column) == k or column[-k - 1] <= 0)


@pytest.mark.parametrize("name", ["bollinger_akshare", "rsi_akshare"])
def test_the_other_shipped_files_search_a_window(real, name: str) -> None:
    bars, instruments = real
    strategy = load_strategy(name)
    section = strategy.classic
    assert section is not None
    data, windows = _research(bars, instruments, strategy)
    result = cs.evaluate_window(data, section, windows[0], strategy.backtest_config())
    assert len(result.candidates) == len(section.candidates())
    assert result.winner in section.candidates()
    assert result.oos.equity.index[-1] == windows[0].oos_end


def test_the_grid_generator_runs_through_the_search(real) -> None:
    bars, instruments = real
    strategy = load_strategy("ma_cross_akshare")
    section = strategy.classic.model_validate(  # type: ignore[union-attr]
        {"generator": "grid", "params": {"step": [0.03, 0.06], "n_levels": [2, 4]}})
    data, windows = _research(bars, instruments, strategy.model_copy(update={"classic": section}))
    table = cs.search_window(data, section, windows[0], strategy.backtest_config())
    assert len(table) == 4 and table["score"].is_monotonic_decreasing
