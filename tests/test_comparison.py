"""Strategies side by side (rotation.comparison), on real curves checked by hand.

Buy-and-hold curves of real funds (cn_etf_akshare_qfq_2020) stand in for strategies'
stitched out-of-sample equity, each starting on a different session."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from rotation.comparison import compare, comparison_figure
from rotation.report import figure_png

FUNDS = {"rotation": "510300", "ma_cross": "518880", "rsi": "159915"}


@pytest.fixture(scope="module")
def curves(shared_data: Path) -> dict[str, pd.Series]:
    root = shared_data / "cn_etf_akshare_qfq_2020" / "parquet"
    out = {}
    for k, (name, fund) in enumerate(FUNDS.items()):
        bars = pd.read_parquet(root / f"{fund}.parquet")
        close = bars.set_index(pd.to_datetime(bars["date"]))["close"]
        out[name] = 1e6 * close.iloc[60 * k:] / close.iloc[60 * k]   # later starts
    return out


def test_curves_share_the_common_span_rebased(curves: dict[str, pd.Series]) -> None:
    got = compare(curves)
    start = max(c.index[0] for c in curves.values())
    assert got.curves.index[0] == start
    assert (got.curves.iloc[0] == 1.0).all()
    for name, curve in curves.items():
        on_common = curve.loc[got.curves.index]
        np.testing.assert_allclose(got.curves[name], on_common / on_common.iloc[0], rtol=1e-12)
        assert got.spans.loc[name, "sessions"] == len(curve)
        assert got.spans.loc[name, "first"] == curve.index[0]


def test_metrics_and_correlation_by_hand(curves: dict[str, pd.Series]) -> None:
    got = compare(curves)
    returns = got.curves.pct_change().iloc[1:]
    for name in curves:
        r = returns[name].to_numpy()
        years = len(r) / 252
        total = got.curves[name].iloc[-1] - 1.0
        assert got.metrics.loc[name, "total_return"] == pytest.approx(total, rel=1e-12)
        assert got.metrics.loc[name, "cagr"] == pytest.approx((1 + total) ** (1 / years) - 1,
                                                              rel=1e-12)
        assert got.metrics.loc[name, "sharpe"] == pytest.approx(
            r.mean() / r.std(ddof=1) * math.sqrt(252), rel=1e-12)
        peak = np.maximum.accumulate(got.curves[name].to_numpy())
        assert got.metrics.loc[name, "max_drawdown"] == pytest.approx(
            (got.curves[name].to_numpy() / peak - 1).min(), rel=1e-12)
    np.testing.assert_allclose(got.correlation.to_numpy(),
                               np.corrcoef(returns.to_numpy().T), atol=1e-12)


def test_bad_inputs_name_the_strategy(curves: dict[str, pd.Series]) -> None:
    with pytest.raises(ValueError, match=r"\['grid'\] have no out-of-sample equity"):
        compare({**curves, "grid": pd.Series(dtype=float)})
    late = curves["rotation"].iloc[-1:]
    with pytest.raises(ValueError, match="share 1 out-of-sample session"):
        compare({"a": curves["ma_cross"], "b": late})


def test_the_chart_draws_every_strategy(curves: dict[str, pd.Series]) -> None:
    fig = comparison_figure(compare(curves))
    labels = [line.get_label() for line in fig.axes[0].get_lines()]
    assert labels == list(FUNDS)
    assert figure_png(fig)[:8] == b"\x89PNG\r\n\x1a\n"
