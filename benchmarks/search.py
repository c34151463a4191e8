"""Walk-forward combination search: the numba engine against vectorbt, one candidate at a time.

Requirement: the combination search at ≥ 300× (issue 20; 200× before it) the speed of running
each combination through ``vectorbt.Portfolio.from_orders``, and every combination of 2–5 of 18
factors over every walk-forward window of the 6-year history in under 60 s, on 2 cores.

Data: the real ``cn_etf_akshare_qfq_2020`` bars (60 funds, 2020-01 .. 2026-05) read from
``../shared/data`` (``ETF_SHARED_DATA`` overrides), prepared once by
:func:`rotation.walkforward.prepare` with the first 18 factors of
:data:`rotation.factors.DEFAULT_FACTORS`. Windows: every default :class:`rotation.wfo.WfoConfig`
window (252 in-sample sessions, 60 out of sample, step 60) after the longest factor warm-up.
Portfolio rules: ``PortfolioConfig(max_weight=0.5)``, top 3, rebalance every 5 sessions, equal
weights; proportional costs of the default :class:`rotation.costs.CostModel` (2 bp commission, 5 bp
slippage).

Measured in one process, after a warm-up (numba compilation or cache load, timed separately):

- the fast engine: :func:`rotation.search.search_window` (the full search, ranked and labelled
  table included — the headline) and the bare ``search_window_nb`` kernel, over the in-sample
  sessions of every window: 12,597 combinations × windows candidates; both in interleaved
  rounds, best of each, so a burst of load from other processes affects them alike;
- the baseline, on a fixed-seed sample of candidates (10 per combination size, spread over the
  windows): (a) ``vbt.Portfolio.from_orders(size_type="targetpercent", cash_sharing=True,
  call_seq="auto", ...)`` + ``value()`` on the engine's targets, exactly the inputs of
  :meth:`rotation.search.SearchPanel.vectorbt_equity` (the conservative baseline: nothing but
  vectorbt), and (b) the candidate's target weights in pandas
  (:func:`rotation.walkforward.portfolio_result` + :func:`~rotation.walkforward.trade_rows`)
  then the same ``from_orders`` call on them. Each sampled candidate runs once; the mean is
  the per-candidate figure.

Ratios are baseline seconds per candidate / fast seconds per candidate (the headline uses (a));
the baseline is extrapolated to the full job. Checked on the way (exit status 1 on failure):
the engine's equity (``candidate_equity``) equals vectorbt's to 1e-9 relative for every sampled
candidate, the kernel's total return for that candidate in the timed search equals the engine's
equity, the replicated vectorbt call equals ``SearchPanel.vectorbt_equity``, and the pandas
targets reproduce the engine's. Missed speed targets are printed as MISSED, not an error.

    .venv/bin/python -m benchmarks.search [rounds]    # default 3 (best of, for the fast side)
"""

from __future__ import annotations

import os
import resource
import sys
import time
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, TypeVar

import numba
import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASET = "cn_etf_akshare_qfq_2020"
N_FACTORS = 18
MIN_K, MAX_K = 2, 5
TOP_N, REBALANCE, WEIGHTING = 3, 5, "equal"
MAX_WEIGHT = 0.5
HORIZONS = (1, 5, 10, 20)
PER_SIZE = 10  # sampled baseline candidates per combination size
SEED = 20260507
TOLERANCE = 1e-9
TARGET_RATIO = 300.0  # issue 20
TARGET_SECONDS = 60.0

T = TypeVar("T")


def _timed(fn: Callable[[], T]) -> tuple[float, T]:
    started = time.perf_counter()
    result = fn()
    return time.perf_counter() - started, result


def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_research_data() -> tuple[Any, list[str], int]:
    """``(ResearchData, factor names, warm-up sessions)`` of the real dataset."""
    from rotation import walkforward as wf
    from rotation.adjust import adjust_bars
    from rotation.cross_section import CrossSectionConfig
    from rotation.factors import DEFAULT_FACTORS
    from rotation.sources.files import FileMarketSource, load_dataset_spec

    spec = load_dataset_spec(ROOT / "config" / "datasets" / f"{DATASET}.yaml")
    source = FileMarketSource(SHARED / DATASET, spec)
    bars = source.load().bars
    if "raw_open" not in bars.columns:
        bars = adjust_bars(bars)
    specs = DEFAULT_FACTORS[:N_FACTORS]
    universe = wf.resolve_universe(bars["symbol"].unique())
    data = wf.prepare(bars, specs, CrossSectionConfig(), universe, source.instruments(),
                      HORIZONS)
    return data, [s.name for s in specs], max(s.warmup for s in specs)


def sample_combos(combos: np.ndarray, rng: np.random.Generator) -> list[int]:
    """``PER_SIZE`` combination rows of each size, interleaved by size (2, 3, 4, 5, 2, …)."""
    sizes = (combos >= 0).sum(axis=1)
    per_size = [rng.choice(np.flatnonzero(sizes == k), PER_SIZE, replace=False)
                for k in range(MIN_K, MAX_K + 1)]
    return [int(rows[i]) for i in range(PER_SIZE) for rows in per_size]


def _size_array(targets: np.ndarray, trade: np.ndarray, tradable: np.ndarray) -> np.ndarray:
    """``from_orders`` sizes: targets decided on trade rows, filled at the next row's open, no
    order where the fund cannot trade (as in ``SearchPanel.vectorbt_equity``)."""
    size = np.full(targets.shape, np.nan)
    decided = np.flatnonzero(trade[:-1])
    size[decided + 1] = targets[decided]
    size[~tradable] = np.nan
    return size


def _vbt_run(close: pd.DataFrame, size: np.ndarray, price: np.ndarray, costs: Any) -> np.ndarray:
    """The baseline call, with ``SearchPanel.vectorbt_equity``'s arguments."""
    import vectorbt as vbt

    pf = vbt.Portfolio.from_orders(
        close=close, size=size, size_type="targetpercent", direction="longonly", price=price,
        fees=costs.costs.commission_rate, slippage=costs.costs.slippage_rate,
        init_cash=costs.initial_cash,
        cash_sharing=True, group_by=True, call_seq="auto", freq="1D")
    return np.asarray(pf.value(), dtype=float).ravel()


def _max_rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a / b - 1.0)))


def pandas_targets(data: Any, cfg: Any, candidate: Any, start: object, end: object
                   ) -> pd.DataFrame:
    """The baseline's target weights: the SPEC §8 chain in pandas, on its trade rows."""
    from rotation import walkforward as wf

    return wf.trade_rows(wf.portfolio_result(data, cfg, candidate, start, end), start)


def _cache_state(kernels: Sequence[Any]) -> str:
    """Whether numba loaded the kernels from its on-disk cache or compiled them."""
    hits = sum(sum(k.stats.cache_hits.values()) for k in kernels)
    misses = sum(sum(k.stats.cache_misses.values()) for k in kernels)
    return f"{hits} loaded from numba's cache, {misses} compiled"


def run_baseline(data: Any, panel: Any, windows: Sequence[Any], candidates: Sequence[Any],
                 costs: Any) -> dict[str, Any]:
    """Per candidate: vectorbt alone on the engine's targets, pandas targets, vectorbt on the
    pandas targets, and the agreement checks."""
    t_vbt, t_weights, t_vbt_pd = [], [], []
    engine_vs_vbt, replica_vs_lib, pandas_vs_engine, pandas_eq_vs_engine = [], [], [], []
    for candidate, window in zip(candidates, windows, strict=True):
        start, end = window.is_start, window.is_end
        a, b = panel.rows(start, end)
        weights, trade = panel.candidate_targets(candidate, start, end)
        tradable = panel.tradable[a:b + 1]
        price = panel.price[a:b + 1]
        close = pd.DataFrame(panel.close[a:b + 1], index=weights.index,
                             columns=panel.columns).fillna(1.0)
        size = _size_array(weights.to_numpy(), trade.to_numpy(), tradable)
        seconds, vbt_eq = _timed(partial(_vbt_run, close, size, price, costs))
        t_vbt.append(seconds)

        seconds, targets = _timed(partial(pandas_targets, data, panel.cfg, candidate, start,
                                          end))
        t_weights.append(seconds)
        targets = targets.reindex(index=weights.index, columns=panel.columns)
        pd_trade = targets.notna().any(axis=1).to_numpy()
        pd_targets = targets.fillna(0.0).to_numpy()
        pd_size = _size_array(pd_targets, pd_trade, tradable)
        seconds, pd_eq = _timed(partial(_vbt_run, close, pd_size, price, costs))
        t_vbt_pd.append(seconds)

        engine = panel.candidate_equity(candidate, start, end, costs).to_numpy()
        library = panel.vectorbt_equity(candidate, start, end, costs).to_numpy()
        engine_vs_vbt.append(_max_rel(engine, vbt_eq))
        replica_vs_lib.append(_max_rel(vbt_eq, library))
        both = trade.to_numpy()[:-1] | pd_trade[:-1]  # the rows that place orders
        pandas_vs_engine.append(float(np.max(np.abs(
            pd_targets[:-1][both] - weights.to_numpy()[:-1][both]), initial=0.0)))
        pandas_eq_vs_engine.append(_max_rel(pd_eq, engine))
    return {"vbt": np.array(t_vbt), "weights": np.array(t_weights),
            "vbt_pandas": np.array(t_vbt_pd), "engine_vs_vbt": np.array(engine_vs_vbt),
            "replica_vs_lib": np.array(replica_vs_lib),
            "pandas_vs_engine": np.array(pandas_vs_engine),
            "pandas_eq_vs_engine": np.array(pandas_eq_vs_engine)}


def main(argv: list[str]) -> int:
    from rotation import search as S
    from rotation import walkforward as wf
    from rotation.backtest import BacktestConfig
    from rotation.costs import CostModel
    from rotation.portfolio import PortfolioConfig
    from rotation.wfo import WfoConfig

    rounds = int(argv[0]) if argv else 3
    prep, (data, names, warmup) = _timed(load_research_data)
    cfg = PortfolioConfig(max_weight=MAX_WEIGHT)
    t_panel, panel = _timed(lambda: data.search_panel(cfg))
    windows = wf.windows_for(data, WfoConfig(), warmup)
    costs = BacktestConfig(costs=CostModel(commission_bps=2.0, slippage_bps=5.0))
    space = S.SearchSpace(min_factors=MIN_K, max_factors=MAX_K, top_n=(TOP_N,),
                          rebalance_every=(REBALANCE,), weightings=(WEIGHTING,))
    params = space.params()
    idx = panel.factor_indices(names)
    combos = S.combinations(len(names), MIN_K, MAX_K)
    mapped = np.ascontiguousarray(np.where(combos >= 0, idx[np.maximum(combos, 0)], -1))
    rows = [panel.rows(w.is_start, w.is_end) for w in windows]
    n_windows, n_combos = len(windows), len(combos)
    n_candidates = n_windows * n_combos * len(params)

    # Warm-up: compile (or load from numba's cache) every kernel on a 30-session window.
    a0, _ = rows[0]
    tiny = S.SearchSpace(min_factors=2, max_factors=2, top_n=(TOP_N,),
                         rebalance_every=(REBALANCE,), weightings=(WEIGHTING,))
    tiny_end = panel.dates[a0 + 29]
    warm_cand = S.Candidate(tuple(names[:2]), TOP_N, REBALANCE, WEIGHTING)
    t_compile, _ = _timed(lambda: (
        S.search_window(panel, names, windows[0].is_start, tiny_end, tiny, costs),
        panel.candidate_equity(warm_cand, windows[0].is_start, tiny_end, costs)))
    cache = _cache_state([S.search_window_nb, S.score_nb, S._candidate_nb,
                          S.simulate_target_percent_nb])

    # The fast engine over every window: the labelled search (headline) and the bare kernel.
    def kernel_all() -> list[np.ndarray]:
        return [S.search_window_nb(panel.signed, mapped, params, a, b, *panel._common(),
                                   panel.price, panel.tradable, panel.close, costs.initial_cash,
                                   costs.costs.commission_rate, costs.costs.slippage_rate)
                for a, b in rows]

    def labelled_all() -> list[pd.DataFrame]:
        return [S.search_window(panel, names, w.is_start, w.is_end, space, costs)
                for w in windows]

    t_search = t_kernel = float("inf")
    metrics: list[np.ndarray] = []
    tables: list[pd.DataFrame] = []
    for _ in range(rounds):  # interleaved, best of each
        seconds, tables = _timed(labelled_all)
        t_search = min(t_search, seconds)
        seconds, metrics = _timed(kernel_all)
        t_kernel = min(t_kernel, seconds)
    assert all(len(t) == n_combos * len(params) for t in tables)

    # The baseline on a sample of candidates spread over sizes and windows.
    sample = sample_combos(combos, np.random.default_rng(SEED))
    cands = [S.Candidate(tuple(names[i] for i in combos[c] if i >= 0), TOP_N, REBALANCE,
                         WEIGHTING) for c in sample]
    where = [round(i * (n_windows - 1) / max(len(sample) - 1, 1)) for i in range(len(sample))]
    t_base_warm, _ = _timed(lambda: run_baseline(data, panel, windows[:1], cands[:1], costs))
    base = run_baseline(data, panel, [windows[w] for w in where], cands, costs)
    # The timed search's own result for each sampled candidate matches the engine's equity.
    kernel_vs_engine = 0.0
    for c, w, cand in zip(sample, where, cands, strict=True):
        eq = panel.candidate_equity(cand, windows[w].is_start, windows[w].is_end, costs)
        total = float(eq.iloc[-1] / eq.iloc[0] - 1.0)
        kernel_vs_engine = max(kernel_vs_engine, abs(metrics[w][c, 0, 3] - total))

    fast = t_search / n_candidates
    fast_kernel = t_kernel / n_candidates
    vbt_alone = float(base["vbt"].mean())
    pandas_vbt = float((base["weights"] + base["vbt_pandas"]).mean())
    ratio = vbt_alone / fast
    ratio_pandas = pandas_vbt / fast
    first, last = windows[0], windows[-1]
    sizes = (combos >= 0).sum(axis=1)
    load = os.getloadavg()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()

    print(f"combination search: every {MIN_K}-{MAX_K} of {len(names)} factors × every "
          f"walk-forward window, top {TOP_N}, rebalance every {REBALANCE}, {WEIGHTING} weights")
    print(f"  cpus {os.cpu_count()} (usable {cores}), numba threads {numba.get_num_threads()}, "
          f"load average {load[0]:.2f} / {load[1]:.2f} / {load[2]:.2f}")
    print(f"  data: real {DATASET}, {len(panel.symbols)} funds, {len(panel.dates)} sessions "
          f"{panel.dates[0]:%Y-%m-%d} .. {panel.dates[-1]:%Y-%m-%d}; prepared in {prep:.1f} s, "
          f"search panel {t_panel:.2f} s")
    print(f"  windows: {n_windows} (WfoConfig defaults: 252 in-sample / 60 out-of-sample / "
          f"step 60, after {warmup} warm-up sessions), in-sample "
          f"{first.is_start:%Y-%m-%d} .. {last.is_end:%Y-%m-%d}, out-of-sample "
          f"{first.oos_start:%Y-%m-%d} .. {last.oos_end:%Y-%m-%d}")
    print(f"  candidates: {n_combos:,} combinations ("
          + ", ".join(f"{int((sizes == k).sum()):,} of {k}" for k in range(MIN_K, MAX_K + 1))
          + f") × {len(params)} rule set × {n_windows} windows = {n_candidates:,}")
    print(f"  warm-up: numba {t_compile:.2f} s ({cache}); baseline (vectorbt, pandas chain) "
          f"{t_base_warm:.2f} s")
    print()
    print(f"  {'':44s}{'total s':>12s}{'per candidate':>16s}{'vs fast':>10s}")
    print(f"  {'fast: search_window, ranked table (headline)':44s}{t_search:12.2f}"
          f"{fast * 1e6:13.1f} µs{1.0:9.1f}x")
    print(f"  {'fast: search_window_nb kernel only':44s}{t_kernel:12.2f}"
          f"{fast_kernel * 1e6:13.1f} µs{fast_kernel / fast:9.2f}x")
    print(f"  {'baseline (a): vectorbt from_orders alone':44s}{vbt_alone * n_candidates:12.0f}"
          f"{vbt_alone * 1e3:13.2f} ms{ratio:9.0f}x")
    print(f"  {'baseline (b): pandas weights + from_orders':44s}"
          f"{pandas_vbt * n_candidates:12.0f}{pandas_vbt * 1e3:13.2f} ms{ratio_pandas:9.0f}x")
    print(f"    pandas weights alone {base['weights'].mean() * 1e3:.2f} ms, from_orders on them "
          f"{base['vbt_pandas'].mean() * 1e3:.2f} ms (means over {len(cands)} sampled "
          f"candidates, {PER_SIZE} per size, seed {SEED}, on {len(set(where))} windows; "
          "baseline totals extrapolated to every candidate)")
    print()
    checks = [
        ("engine equity vs vectorbt (max rel diff)", float(base["engine_vs_vbt"].max())),
        ("timed kernel total return vs engine equity", kernel_vs_engine),
        ("replicated call vs SearchPanel.vectorbt_equity", float(base["replica_vs_lib"].max())),
        ("pandas targets vs engine targets (max abs)", float(base["pandas_vs_engine"].max())),
        ("vectorbt on pandas targets vs engine equity", float(base["pandas_eq_vs_engine"].max())),
    ]
    failed = [name for name, value in checks if not value <= TOLERANCE]
    for name, value in checks:
        print(f"  {name:52s}{value:10.1e}  {'ok' if value <= TOLERANCE else 'DISAGREE'}"
              f" (tolerance {TOLERANCE:.0e}, {len(cands)} candidates)")
    ok_ratio = ratio >= TARGET_RATIO
    ok_time = t_search < TARGET_SECONDS
    print(f"  target >= {TARGET_RATIO:.0f}x vectorbt from_orders: "
          f"{'MET' if ok_ratio else 'MISSED'} ({ratio:.0f}x; {ratio_pandas:.0f}x against "
          "pandas weights + from_orders)")
    print(f"  target full job < {TARGET_SECONDS:.0f} s: {'MET' if ok_time else 'MISSED'} "
          f"({t_search:.1f} s; vectorbt alone would take {vbt_alone * n_candidates / 60:.0f} min)")
    print(f"  peak RSS {_peak_rss_mb():.0f} MB")
    print()
    print(f"summary: {n_candidates:,} candidates ({n_combos:,} combinations × {n_windows} "
          f"windows) searched in {t_search:.1f} s on {numba.get_num_threads()} threads = "
          f"{fast * 1e6:.0f} µs each, {ratio:.0f}x vectorbt from_orders "
          f"({'MET' if ok_ratio else 'MISSED'} >= {TARGET_RATIO:.0f}x), "
          f"{'MET' if ok_time else 'MISSED'} < {TARGET_SECONDS:.0f} s; "
          f"agreement {'ok' if not failed else 'FAILED: ' + ', '.join(failed)}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
