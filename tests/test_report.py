"""Backtest report artifacts: drawdown, figures (PNG, benchmark rebasing), markdown images and
the self-contained HTML page (escaping, embedded images, metric formatting, latest weights)."""

from __future__ import annotations

import base64
import math
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from rotation.backtest.metrics import drawdown
from rotation.report import (
    drawdown_figure,
    drawdown_of,
    equity_figure,
    figure_png,
    html_report,
    markdown_image,
    png_base64,
)

PNG = b"\x89PNG\r\n\x1a\n"
DATES = pd.bdate_range("2024-01-03", periods=5)
EQUITY = pd.Series([100.0, 110.0, 99.0, 121.0, 110.0], index=DATES, name="equity")
# Starts two sessions before the equity and has no value on DATES[2] (forward-filled).
BENCH = pd.Series([40.0, 45.0, 50.0, 55.0, 60.0, 48.0],
                  index=pd.DatetimeIndex(["2024-01-01", "2024-01-02", "2024-01-03",
                                          "2024-01-04", "2024-01-08", "2024-01-09"]))
BENCH_ON_EQUITY = np.array([50.0, 55.0, 55.0, 60.0, 48.0])


def test_drawdown_on_hand_made_series() -> None:
    dd = drawdown_of(EQUITY)
    np.testing.assert_allclose(dd.to_numpy(), [0.0, 0.0, 99 / 110 - 1, 0.0, 110 / 121 - 1])
    assert dd.index.equals(DATES)
    assert drawdown_of is drawdown  # one concept, one place


def test_figures_are_png() -> None:
    for fig in (equity_figure(EQUITY, {"bench": BENCH}, segments=[DATES[2]]),
                drawdown_figure(EQUITY, {"bench": BENCH})):
        assert figure_png(fig).startswith(PNG)
    b64 = png_base64(equity_figure(EQUITY))
    assert base64.b64decode(b64).startswith(PNG)
    assert markdown_image(b64, "Equity curve") == f"![Equity curve](data:image/png;base64,{b64})"


def test_equity_and_benchmark_rebased_at_equity_start() -> None:
    fig = equity_figure(EQUITY, {"bench": BENCH}, segments=[DATES[1], DATES[3]])
    lines = fig.axes[0].get_lines()
    assert len(lines) == 2 + 2  # strategy, benchmark, two segment lines
    np.testing.assert_allclose(lines[0].get_ydata(), EQUITY.to_numpy() / 100.0)
    np.testing.assert_allclose(lines[1].get_ydata(), BENCH_ON_EQUITY / 50.0)
    assert lines[1].get_ydata()[0] == 1.0
    assert pd.DatetimeIndex(lines[1].get_xdata()).equals(DATES)
    assert [pd.Timestamp(ln.get_xdata()[0]) for ln in lines[2:]] == [DATES[1], DATES[3]]


def test_benchmark_drawdown_over_equity_dates() -> None:
    fig = drawdown_figure(EQUITY, {"bench": BENCH})
    (line,) = fig.axes[0].get_lines()
    expected = (BENCH_ON_EQUITY / np.maximum.accumulate(BENCH_ON_EQUITY) - 1) * 100
    np.testing.assert_allclose(line.get_ydata(), expected)
    assert fig.axes[0].collections  # the strategy's filled area


def _report() -> str:
    weights = pd.DataFrame(
        [[0.5, 0.5, 0.0], [0.2, 0.0, 0.7], [np.nan, np.nan, np.nan]],
        index=DATES[2:], columns=["510300", "510500", "159915"])
    return html_report(
        "Rotation <v1> & co",
        metrics={"total_return": 0.1234, "max_drawdown": -0.05, "max_drawdown_duration": 12.0,
                 "sharpe": 1.23456, "total_commission": 123456.7, "sortino": math.nan},
        equity=EQUITY, benchmarks={"CSI 300": BENCH}, weights=weights,
        tables={"Orders <all>": pd.DataFrame({"note": ["<b>bold</b>"]})},
        notes=["run <script>alert(1)</script> done"])


def test_html_report_is_escaped_and_self_contained() -> None:
    page = _report()
    assert "<title>Rotation &lt;v1&gt; &amp; co</title>" in page
    assert "<h1>Rotation &lt;v1&gt; &amp; co</h1>" in page
    assert "<p>run &lt;script&gt;alert(1)&lt;/script&gt; done</p>" in page
    assert "<script" not in page.lower()
    assert "<h2>Orders &lt;all&gt;</h2>" in page and "&lt;b&gt;bold&lt;/b&gt;" in page
    assert "<b>" not in page
    assert re.search(r"https?://|src=\"//", page) is None
    images = re.findall(r'<img alt="[^"]*" src="data:image/png;base64,([A-Za-z0-9+/=]+)">', page)
    assert len(images) == 2
    assert all(base64.b64decode(img).startswith(PNG) for img in images)


def test_html_report_metrics_formatting() -> None:
    page = _report()
    assert "<tr><th>total_return</th><td>12.34%</td></tr>" in page
    assert "<tr><th>max_drawdown</th><td>-5.00%</td></tr>" in page
    assert "<tr><th>max_drawdown_duration</th><td>12</td></tr>" in page
    assert "<tr><th>sharpe</th><td>1.235</td></tr>" in page
    assert "<tr><th>total_commission</th><td>123,457</td></tr>" in page
    assert "<tr><th>sortino</th><td>–</td></tr>" in page


def test_html_report_latest_weights() -> None:
    page = _report()
    # The last row is all NaN (no decision): the latest decision is DATES[3].
    assert f"Latest weights ({DATES[3].date().isoformat()})" in page
    section = page.split("Latest weights", 1)[1]
    assert (section.index("<th>159915</th><td>70.00%</td>")
            < section.index("<th>510300</th><td>20.00%</td>"))
    assert "<th>510500</th>" not in section.split("</table>", 1)[0]
    assert "Cash: 10.00%" in section


def test_all_cash_and_no_weights() -> None:
    cash = pd.DataFrame([[0.0, 0.0]], index=DATES[:1], columns=["a", "b"])
    assert "No holdings (all cash)." in html_report("t", metrics={}, equity=EQUITY, weights=cash)
    assert "Latest weights" not in html_report("t", metrics={}, equity=EQUITY)


def test_empty_equity_is_rejected() -> None:
    with pytest.raises(ValueError, match="equity has no values"):
        equity_figure(pd.Series([], dtype=float))


def test_matplotlib_is_not_imported_at_module_import() -> None:
    code = "import sys, rotation.report; print('matplotlib' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True)
    assert out.stdout.strip() == "False"
