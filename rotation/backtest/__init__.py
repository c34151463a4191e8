"""Backtest of target weights (SPEC §7) under ``T1_OPEN`` execution.

Public API: :class:`BacktestConfig`, :func:`run_backtest` → :class:`BacktestResult`;
:func:`rotation.backtest.vbt.replay` re-runs the executed orders in vectorbt.

Pricing: the engine simulates in adjusted price space (adjusted = raw × adj_factor) with the
lot scaled by the factor (100 raw units = ``100 / factor`` adjusted units), so splits and
distributions are handled and order sizes are whole raw lots. The ledger reports both raw
(``units``, ``price``) and adjusted (``adj_units``, ``adj_price``) quantities; positions are
reported in raw units (``positions``) and adjusted units (``positions_adj``). See
:mod:`rotation.backtest.engine` for the trading rules (T+1, limits, lots, fees).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

from rotation.backtest.engine import (
    FILL_POINTS,
    FLAG_NAMES,
    REC_AT,
    REC_COL,
    REC_FEE,
    REC_FLAGS,
    REC_NOTIONAL,
    REC_PRICE,
    REC_REQ,
    REC_ROW,
    REC_SIDE,
    REC_UNITS,
    limit_flags_nb,
    simulate_nb,
)
from rotation.backtest.metrics import (
    benchmark_comparison,
    equal_weight_benchmark,
    performance_metrics,
)
from rotation.bars import Instrument
from rotation.costs import CostModel

__all__ = ["BacktestConfig", "BacktestResult", "MarketPanels", "class_arrays", "cost_array",
           "market_panels", "run_backtest"]

DEFAULT_PRICE_LIMIT = 0.10


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class BacktestConfig:
    """The cost model, starting capital and trading rules of a simulation (validated).
    ``tick`` is the limit-check tolerance in the market's currency."""

    costs: CostModel = Field(default_factory=CostModel)
    initial_cash: float = Field(default=1_000_000.0, gt=0)
    execution: Literal["T1_OPEN"] = "T1_OPEN"
    tick: float = Field(default=0.001, ge=0)
    risk_free: float = 0.0


@dataclass
class MarketPanels:
    """Aligned ``dates × symbols`` panels in adjusted price space (see module doc)."""

    open: pd.DataFrame
    close: pd.DataFrame
    factor: pd.DataFrame
    has_bar: pd.DataFrame
    limit_up: pd.DataFrame
    limit_down: pd.DataFrame
    close_limit_up: pd.DataFrame
    close_limit_down: pd.DataFrame
    # Per fund, from its instrument class: units bought in a session sellable in it (T+0);
    # sale cash usable for buys in the same session.
    same_session_sell: pd.Series
    sale_cash_same_day: pd.Series

    @property
    def close_marked(self) -> pd.DataFrame:
        """Close carried forward over days without a bar (the marking price)."""
        return self.close.ffill()

    def covers(self, symbols: pd.Index) -> bool:
        return bool(pd.Index(symbols).isin(self.open.columns).all())

    def on(self, index: pd.Index, symbols: pd.Index) -> MarketPanels:
        """These panels on ``index × symbols`` (subsets of their own rows and columns): what
        :func:`market_panels` gives for them, read instead of recomputed over the whole history
        (the limit flags of a row read the bars before it, so a subset cannot recompute them)."""
        missing = pd.Index(index).difference(self.open.index)
        if len(missing):
            raise ValueError(f"target dates without market data calendar rows: "
                             f"{list(missing[:5])}")
        if not self.covers(symbols):
            raise ValueError(f"MarketPanels.on: no columns for "
                             f"{list(pd.Index(symbols).difference(self.open.columns))}")

        def part(frame: pd.DataFrame) -> pd.DataFrame:
            return frame.reindex(index=index, columns=symbols)

        return MarketPanels(
            open=part(self.open), close=part(self.close), factor=part(self.factor),
            has_bar=part(self.has_bar), limit_up=part(self.limit_up),
            limit_down=part(self.limit_down), close_limit_up=part(self.close_limit_up),
            close_limit_down=part(self.close_limit_down),
            same_session_sell=self.same_session_sell.reindex(symbols),
            sale_cash_same_day=self.sale_cash_same_day.reindex(symbols))


@dataclass
class BacktestResult:
    equity: pd.Series
    cash: pd.Series
    positions: pd.DataFrame
    positions_adj: pd.DataFrame
    orders: pd.DataFrame
    metrics: dict[str, float]
    panels: MarketPanels
    config: BacktestConfig
    target_weights: pd.DataFrame = field(repr=False, default_factory=pd.DataFrame)


def _limits(instruments: Sequence[Instrument] | Mapping[str, float | None] | None,
            symbols: pd.Index) -> np.ndarray:
    if instruments is None:
        table: Mapping[str, float | None] = {}
    elif isinstance(instruments, Mapping):
        table = instruments
    else:
        table = {i.symbol: i.price_limit for i in instruments}
    out = np.empty(len(symbols))
    for k, s in enumerate(symbols):
        lim = table.get(str(s), DEFAULT_PRICE_LIMIT)
        out[k] = np.nan if lim is None else float(lim)
    return out


def class_arrays(instruments: Sequence[Instrument] | Mapping[str, float | None] | None,
                 symbols: pd.Index) -> tuple[np.ndarray, np.ndarray]:
    """Per fund: may units bought in a session be sold in it (T+0), and may its sale cash buy
    in the same session. Funds without an :class:`Instrument` are T+1 and reuse sale cash."""
    table = {i.symbol: i for i in instruments} if instruments is not None \
        and not isinstance(instruments, Mapping) else {}
    t0 = np.array([table[s].same_session_sell if s in table else False for s in symbols],
                  dtype=np.bool_)
    reuse = np.array([table[s].sale_cash_same_day if s in table else True for s in symbols],
                     dtype=np.bool_)
    return t0, reuse


def market_panels(bars: pd.DataFrame | Mapping[str, pd.DataFrame], index: pd.Index,
                  symbols: pd.Index,
                  instruments: Sequence[Instrument] | Mapping[str, float | None] | None = None,
                  tick: float = 0.001) -> MarketPanels:
    """Panels on ``index × symbols`` from long bars or from panels.

    ``bars``: adjusted bars (with ``raw_open``: ``open``/``close`` are already adjusted), raw bars
    (``open``/``close`` raw, multiplied by ``adj_factor``), or a mapping with ``open``, ``close``
    (adjusted) and optionally ``adj_factor`` panels. Limit flags use the previous available close
    on the bars' own calendar (so the first session of ``index`` is checked too). A symbol
    without a price limit entry gets 10 %.
    """
    if isinstance(bars, Mapping):
        o = bars["open"].astype(float)
        c = bars["close"].astype(float)
        f = bars.get("adj_factor")
        f = pd.DataFrame(1.0, index=o.index, columns=o.columns) if f is None else f.astype(float)
    else:
        adjusted = "raw_open" in bars.columns
        fac = bars["adj_factor"] if "adj_factor" in bars.columns else 1.0
        frame = pd.DataFrame({"date": pd.to_datetime(bars["date"]),
                              "symbol": bars["symbol"].astype(str)})
        frame["open"] = bars["open"] if adjusted else bars["open"] * fac
        frame["close"] = bars["close"] if adjusted else bars["close"] * fac
        frame["adj_factor"] = fac
        wide = frame.pivot(index="date", columns="symbol")
        o, c, f = wide["open"], wide["close"], wide["adj_factor"]
    cols = pd.Index(symbols)
    o, c, f = (x.reindex(columns=cols).sort_index() for x in (o, c, f))
    has = (o.notna() & c.notna()).to_numpy()
    f_ff = f.ffill().fillna(1.0)
    limits = _limits(instruments, cols)
    t0, reuse = class_arrays(instruments, cols)
    up, down = limit_flags_nb(o.to_numpy(float), c.to_numpy(float), f_ff.to_numpy(float), has,
                              limits, float(tick))
    # The close against the previous close: a fund closing at a limit cannot trade that way.
    close_up, close_down = limit_flags_nb(c.to_numpy(float), c.to_numpy(float),
                                          f_ff.to_numpy(float), has, limits, float(tick))
    missing = pd.Index(index).difference(o.index)
    if len(missing):
        raise ValueError(f"target dates without market data calendar rows: {list(missing[:5])}")

    def _on(values: np.ndarray | pd.DataFrame, fill: object) -> pd.DataFrame:
        df = values if isinstance(values, pd.DataFrame) else pd.DataFrame(
            values, index=o.index, columns=cols)
        return df.reindex(index).fillna(fill) if fill is not None else df.reindex(index)

    return MarketPanels(
        open=_on(o, None), close=_on(c, None), factor=_on(f_ff, None),
        has_bar=_on(pd.DataFrame(has, index=o.index, columns=cols), False).astype(bool),
        limit_up=_on(up, False).astype(bool), limit_down=_on(down, False).astype(bool),
        close_limit_up=_on(close_up, False).astype(bool),
        close_limit_down=_on(close_down, False).astype(bool),
        same_session_sell=pd.Series(t0, index=cols, name="same_session_sell"),
        sale_cash_same_day=pd.Series(reuse, index=cols, name="sale_cash_same_day"),
    )


def _ledger(rec: np.ndarray, panels: MarketPanels) -> pd.DataFrame:
    dates, cols = panels.open.index, panels.open.columns
    rows = rec[:, REC_ROW].astype(np.int64)
    js = rec[:, REC_COL].astype(np.int64)
    fac = panels.factor.to_numpy(float)[rows, js] if len(rec) else np.empty(0)
    flags = rec[:, REC_FLAGS].astype(np.int64)
    reason = ["+".join(name for bit, name in FLAG_NAMES.items() if fl & bit) for fl in flags]
    out = pd.DataFrame({
        "date": dates[rows],
        "symbol": cols[js].astype(str),
        "side": np.where(rec[:, REC_SIDE] > 0, "buy", "sell"),
        "fill_at": np.asarray(FILL_POINTS)[rec[:, REC_AT].astype(np.int64)],
        "requested_units": np.round(rec[:, REC_REQ] * fac, 6),
        "units": np.round(rec[:, REC_UNITS] * fac, 6),
        "price": rec[:, REC_PRICE] / fac,
        "notional": rec[:, REC_NOTIONAL],
        "commission": rec[:, REC_FEE],
        "reason": reason,
        "blocked": rec[:, REC_UNITS] <= 0,
        "adj_units": rec[:, REC_UNITS],
        "adj_price": rec[:, REC_PRICE],
    })
    return out


def cost_array(costs: CostModel) -> np.ndarray:
    """The engine's ``costs`` vector: [rate, min_fee, sell_rate, slippage, lot_size]."""
    return np.array([costs.commission_rate, float(costs.min_commission), costs.sell_fee_rate,
                     costs.slippage_rate, float(costs.lot_size)])


def run_backtest(target_weights: pd.DataFrame,
                 bars: pd.DataFrame | Mapping[str, pd.DataFrame] | MarketPanels,
                 instruments: Sequence[Instrument] | Mapping[str, float | None] | None = None,
                 cfg: BacktestConfig | None = None, *,
                 benchmark: str | pd.Series | None = None,
                 close_weights: pd.DataFrame | None = None) -> BacktestResult:
    """Simulate ``target_weights`` (dates × symbols, decided after close of each row, NaN row =
    no decision) on the calendar ``target_weights.index``; see the module docs for rules.
    ``close_weights`` (same layout, NaN = no order) are filled at the close of their own row,
    after that session's open fills (a same-session exit).

    Metrics always include the equal-weight universe benchmark (``ew_*``, daily rebalanced over
    the target columns' adjusted closes); ``benchmark`` adds a fund (a symbol among the bars,
    e.g. ``"510300"``) or a given curve (``bm_*``). ``bars`` may be :class:`MarketPanels`
    already built by :func:`market_panels` over a longer history with the same ``instruments``
    and ``cfg.tick`` (many short backtests of one history read them instead of rebuilding
    them).
    """
    cfg = cfg or BacktestConfig()
    tw = target_weights.sort_index().astype(float)
    if (tw < 0).any().any() or (tw.fillna(0).sum(axis=1) > 1 + 1e-9).any():
        raise ValueError("target weights must be >= 0 with rows summing to <= 1 (long only)")
    panels = (bars.on(tw.index, tw.columns) if isinstance(bars, MarketPanels)
              else market_panels(bars, tw.index, tw.columns, instruments, cfg.tick))
    at_close = (pd.DataFrame(np.nan, index=tw.index, columns=tw.columns) if close_weights is None
                else close_weights.reindex(index=tw.index, columns=tw.columns).astype(float))
    equity, cash, units, rec = simulate_nb(
        tw.to_numpy(float), panels.open.to_numpy(float), panels.close.to_numpy(float),
        panels.factor.to_numpy(float), panels.has_bar.to_numpy(bool),
        panels.limit_up.to_numpy(bool), panels.limit_down.to_numpy(bool),
        float(cfg.initial_cash), cost_array(cfg.costs), panels.same_session_sell.to_numpy(bool),
        panels.sale_cash_same_day.to_numpy(bool), at_close.to_numpy(float),
        panels.close_limit_up.to_numpy(bool), panels.close_limit_down.to_numpy(bool))
    idx, cols = tw.index, tw.columns
    eq = pd.Series(equity, index=idx, name="equity")
    cash_s = pd.Series(cash, index=idx, name="cash")
    pos_adj = pd.DataFrame(units, index=idx, columns=cols)
    pos = (pos_adj * panels.factor).round(6)
    orders = _ledger(rec, panels)
    metrics = performance_metrics(eq, initial=cfg.initial_cash, cash=cash_s, positions=pos,
                                  traded_notional=float(orders["notional"].sum()),
                                  risk_free=cfg.risk_free)
    ew = equal_weight_benchmark(panels.close)
    metrics.update({f"ew_{k}": v for k, v in benchmark_comparison(eq, ew).items()})
    if benchmark is not None:
        if isinstance(benchmark, str):
            symbol = pd.Index([benchmark])
            bm_panels = (bars.on(tw.index, symbol) if isinstance(bars, MarketPanels)
                         else market_panels(bars, tw.index, symbol, instruments))
            curve = bm_panels.close_marked[benchmark]
        else:
            curve = benchmark
        metrics.update({f"bm_{k}": v for k, v in benchmark_comparison(eq, curve).items()})
    metrics["total_commission"] = float(orders["commission"].sum())
    metrics["orders_filled"] = float((~orders["blocked"]).sum())
    metrics["orders_blocked"] = float(orders["blocked"].sum())
    return BacktestResult(equity=eq, cash=cash_s, positions=pos, positions_adj=pos_adj,
                          orders=orders, metrics=metrics, panels=panels, config=cfg,
                          target_weights=tw)
