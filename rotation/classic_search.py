"""Walk-forward research of a classic strategy (issue 15 item 2): in-sample parameter search →
frozen winner → out of sample, through the rotation's engines and market rules.

A classic strategy (:class:`rotation.strategy.ClassicSection`) names a generator of
:mod:`rotation.classic` and candidate values per parameter. Per walk-forward window every
candidate (the grid) or a seeded Optuna TPE sample of them is backtested on the window's
in-sample sessions only with the full backtest engine (:func:`rotation.walkforward.oos_backtest`:
the strategy's cost model, lots, tick, T+1 and price limits), ranked by the rotation search's
in-sample score (:func:`rotation.search.rank_score`: rank-weighted annual return, Sharpe and
drawdown), and the winner is frozen and run on the out-of-sample sessions. Windows are stitched
with :func:`rotation.walkforward.stitch` like the rotation's.

Timing: the targets of a span are the generator's rows up to the span's last decision; the
generator is causal (each row reads closes up to it), so an in-sample score never sees a
session after the in-sample end, and a decision of session D fills at open(D+1).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from rotation import walkforward as wf
from rotation.backtest import BacktestConfig, BacktestResult
from rotation.classic import CLASSIC_CONFIGS, CLASSIC_STRATEGIES, emit
from rotation.search import SearchSpace, rank_score
from rotation.strategy import ClassicSection
from rotation.wfo import WfoWindow

# The in-sample metrics the score ranks (the rotation search's names) and where the backtest
# engine reports them.
SCORED = {"annual_return": "cagr", "sharpe": "sharpe", "max_drawdown": "max_drawdown"}
# Parameters whose values are look-back lengths (sessions of history a decision needs).
_LOOKBACKS = ("slow", "window", "signal")

Params = dict[str, Any]


def warmup_sessions(section: ClassicSection) -> int:
    """Sessions before the first in-sample start: the longest look-back any candidate needs
    (MACD: slow + signal), so the first window's indicators are warm."""
    longest = 0
    for params in section.candidates():
        config = CLASSIC_CONFIGS[section.generator](**params)
        longest = max(longest, sum(int(getattr(config, name, 0) or 0) for name in _LOOKBACKS))
    return longest


def params_text(params: Mapping[str, Any]) -> str:
    """Canonical text of a parameter set (sorted JSON): a table key and a readable label."""
    return json.dumps(dict(params), sort_keys=True, separators=(",", ":"))


def _weights(data: wf.ResearchData, section: ClassicSection, params: Mapping[str, Any],
             last: pd.Timestamp) -> pd.DataFrame:
    """Daily targets of the generator decided on every session up to ``last`` from closes up to
    ``last`` only; funds outside the point-in-time universe (SPEC §2 eligibility) get 0.

    The generators are causal (a row reads the closes up to it, in order), so these are the
    rows up to ``last`` of the generator run once over the whole history per parameter set:
    each window then costs its own sessions, not the history before it."""
    return data.derived(("classic", section.generator, params_text(params)),
                        lambda: _history_weights(data, section, params)).loc[:last]


def _history_weights(data: wf.ResearchData, section: ClassicSection,
                     params: Mapping[str, Any]) -> pd.DataFrame:
    ranked = list(data.universe.ranked)
    config = CLASSIC_CONFIGS[section.generator](**params, rebalance="daily")
    weights = CLASSIC_STRATEGIES[section.generator](data.close[ranked], config)
    eligible = data.eligible[ranked].fillna(False).astype(bool)
    return weights.where(eligible, 0.0)


def span_targets(data: wf.ResearchData, section: ClassicSection, params: Mapping[str, Any],
                 first: pd.Timestamp, last: pd.Timestamp) -> pd.DataFrame:
    """Targets decided from the close of ``first`` to the close before ``last`` (filled at the
    next opens), on the sessions ``first..last`` (``last`` has no decision). Under ``on_change``
    only rows where the target changes trade; the first row always does (it takes over)."""
    dates = data.dates
    last_decision = dates[dates.get_loc(last) - 1]
    weights = emit(_weights(data, section, params, last_decision).loc[first:],
                   section.rebalance)
    return weights.reindex(index=dates[dates.get_loc(first): dates.get_loc(last) + 1],
                           columns=wf.traded_columns(data))


def window_targets(data: wf.ResearchData, section: ClassicSection, params: Mapping[str, Any],
                   window: WfoWindow) -> pd.DataFrame:
    """Out-of-sample targets of a frozen winner, from the close before the window's first
    out-of-sample session (as :func:`rotation.walkforward.window_targets`)."""
    first = data.dates[data.dates.get_loc(window.oos_start) - 1]
    return span_targets(data, section, params, first, window.oos_end)


def in_sample_backtest(data: wf.ResearchData, section: ClassicSection,
                       params: Mapping[str, Any], window: WfoWindow, cfg: BacktestConfig
                       ) -> BacktestResult:
    """The candidate traded on the window's in-sample sessions only (full engine)."""
    targets = span_targets(data, section, params, window.is_start, window.is_end)
    return wf.oos_backtest(data, targets, cfg)


def _scored_row(data: wf.ResearchData, section: ClassicSection, params: Params,
                window: WfoWindow, cfg: BacktestConfig) -> dict[str, Any]:
    metrics = in_sample_backtest(data, section, params, window, cfg).metrics
    row: dict[str, Any] = {"params": params_text(params), **params}
    row.update({name: float(metrics.get(key, np.nan)) for name, key in SCORED.items()})
    row.update(total_return=float(metrics.get("total_return", np.nan)),
               turnover=float(metrics.get("turnover", np.nan)))
    return row


def _space(section: ClassicSection) -> SearchSpace:
    """The rotation score's settings: the section's weights, no complexity penalty (every
    candidate has the same number of parameters)."""
    w = section.score_weights
    return SearchSpace(min_factors=0, complexity_penalty=0.0,
                       score_weights=(w.annual_return, w.sharpe, w.max_drawdown))


def _grid_rows(data: wf.ResearchData, section: ClassicSection, window: WfoWindow,
               cfg: BacktestConfig) -> list[dict[str, Any]]:
    return [_scored_row(data, section, params, window, cfg) for params in section.candidates()]


def _optuna_rows(data: wf.ResearchData, section: ClassicSection, window: WfoWindow,
                 cfg: BacktestConfig) -> list[dict[str, Any]]:
    """A seeded multi-objective TPE search over the candidate values (one objective per scored
    metric, so the sampler looks where the rank-weighted score can be high); each distinct
    parameter set is backtested once, combinations the generator refuses are pruned."""
    import optuna  # heavy: imported only where a large space is searched

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    valid = {params_text(p) for p in section.candidates()}
    rows: dict[str, dict[str, Any]] = {}

    def objective(trial: optuna.Trial) -> tuple[float, float, float]:
        params = {name: trial.suggest_categorical(name, list(values))
                  for name, values in sorted(section.params.items())}
        key = params_text(params)
        if key not in valid:
            raise optuna.TrialPruned(f"not a valid {section.generator} configuration: {key}")
        if key not in rows:
            rows[key] = _scored_row(data, section, params, window, cfg)
        row = rows[key]
        # NaN (no annual rate on a flat curve) would fail the trial: worst instead.
        return tuple(float(np.nan_to_num(row[m], nan=-1e9)) for m in SCORED)  # type: ignore[return-value]

    sampler = optuna.samplers.TPESampler(seed=section.seed)
    study = optuna.create_study(directions=["maximize"] * len(SCORED), sampler=sampler)
    study.optimize(objective, n_trials=section.trials, n_jobs=1)
    return list(rows.values())


def search_window(data: wf.ResearchData, section: ClassicSection, window: WfoWindow,
                  cfg: BacktestConfig) -> pd.DataFrame:
    """Every evaluated parameter set of the window, scored on in-sample sessions only, best
    first (ties: the earlier candidate)."""
    method = section.method
    rows = (_grid_rows if method == "grid" else _optuna_rows)(data, section, window, cfg)
    table = pd.DataFrame(rows)
    table.insert(1, "n_factors", 0)
    table["score"] = rank_score(table, _space(section))
    table["method"] = method
    ordered = table.sort_values("score", ascending=False, kind="stable")
    return ordered.drop(columns="n_factors").reset_index(drop=True)


@dataclass
class ClassicWindowResult:
    """A window's search, its frozen winner and the winner's out-of-sample backtest."""

    window: WfoWindow
    generator: str
    winner: Params
    candidates: pd.DataFrame
    oos: BacktestResult

    def summary(self) -> dict[str, object]:
        """One row of ``wfo_results``: the rotation's columns (no factors, no vectorbt
        finalists) with the generator, the winner's parameters and ``winner`` in words."""
        best = self.candidates.iloc[0]
        out: dict[str, object] = {
            **self.window.as_dict(), "no_trade": False, "no_trade_reason": "",
            "factors": "", "n_factors": 0, "top_n": None, "rebalance_every": None,
            "weighting": None, "candidates": len(self.candidates), "vbt_max_rel_diff": 0.0,
            "generator": self.generator, "params": params_text(self.winner),
            "search_method": str(best["method"]),
            "winner": f"{self.generator} {params_text(self.winner)}"}
        for metric in (*SCORED, "score"):
            out[f"in_sample_{metric}"] = float(best[metric])
        for key in ("total_return", "cagr", "sharpe", "max_drawdown", "ew_excess_return"):
            if key in self.oos.metrics:
                out[f"oos_{key}"] = float(self.oos.metrics[key])
        return out


def evaluate_window(data: wf.ResearchData, section: ClassicSection, window: WfoWindow,
                    cfg: BacktestConfig) -> ClassicWindowResult:
    """Search in-sample, freeze the best candidate, backtest it out of sample."""
    table = search_window(data, section, window, cfg)
    winner = json.loads(str(table.iloc[0]["params"]))
    oos = wf.oos_backtest(data, window_targets(data, section, winner, window), cfg)
    return ClassicWindowResult(window=window, generator=section.generator, winner=winner,
                               candidates=table, oos=oos)


def stitched_targets(data: wf.ResearchData, section: ClassicSection,
                     winners: Sequence[tuple[WfoWindow, Params]]) -> pd.DataFrame:
    """One out-of-sample target path of the windows' frozen winners."""
    return wf.stitch(data, [(window, window_targets(data, section, params, window))
                            for window, params in winners])


def latest_targets(data: wf.ResearchData, section: ClassicSection, params: Mapping[str, Any]
                   ) -> tuple[pd.Timestamp, pd.DataFrame]:
    """The newest winner's target at the latest close, per fund with why it is in or out, in
    the columns of :func:`rotation.portfolio.explain`."""
    last = data.dates[-1]
    weights = _weights(data, section, params, last)
    held = weights.gt(0).to_numpy()[::-1]  # newest first
    runs = np.where(held.all(axis=0), len(held), held.argmin(axis=0))  # sessions held in a row
    eligible = data.eligible.loc[last, weights.columns].fillna(False).astype(bool)
    today = weights.loc[last]
    before = held[1] if len(held) > 1 else np.zeros(held.shape[1], dtype=bool)
    label = f"{section.generator} {params_text(params)}"
    reasons = [("not eligible (SPEC §2 point-in-time universe)" if not eligible[s]
                else f"in: {label} long" if today[s] > 0 else f"out: {label} flat")
               for s in weights.columns]
    table = pd.DataFrame({"score": today.gt(0).astype(float), "rank": np.nan,
                          "eligible": eligible, "held_before": before,
                          "held_days": runs.astype(float), "selected": today.gt(0),
                          "base_weight": today, "weight": today, "reason": reasons})
    table.index = pd.Index(weights.columns, name="symbol")
    return last, table.sort_values(["weight"], ascending=False, kind="stable")
