"""Visual and HTML artifacts of a backtest: equity / drawdown figures, PNG and base64 encodings,
markdown images (Dagster metadata) and a self-contained HTML page (MLflow artifact).

Figures are built on :class:`matplotlib.figure.Figure` directly, not through ``pyplot``: no GUI
backend is needed, no global figure registry fills up in a long-running process, and the
backend of the host process (e.g. a notebook) is left alone. matplotlib is imported lazily.

Metric formatting in :func:`html_report`: a metric is shown as a percentage (``12.34%``) when
its name contains one of :data:`PERCENT_KEYS` and none of :data:`COUNT_KEYS` (so
``max_drawdown`` is a percentage but ``max_drawdown_duration`` a number of sessions); other
values get 4 significant digits, or a thousands-separated integer from 10,000 up; NaN / None
are shown as ``–``.
"""

from __future__ import annotations

import base64
import html
import io
import math
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import pandas as pd

from rotation.backtest.metrics import drawdown as drawdown_of

if TYPE_CHECKING:
    from matplotlib.axes import Axes
    from matplotlib.figure import Figure

__all__ = [
    "COUNT_KEYS",
    "PERCENT_KEYS",
    "drawdown_figure",
    "drawdown_of",
    "equity_figure",
    "figure_png",
    "html_report",
    "lines_figure",
    "markdown_image",
    "png_base64",
    "window_bars_figure",
]

PERCENT_KEYS = ("return", "cagr", "drawdown", "volatility", "exposure", "turnover", "win_rate",
                "tracking_error")
COUNT_KEYS = ("duration", "days")

_DPI = 100
_MISSING = "–"
_STYLE = """
body { font-family: sans-serif; margin: 2em auto; max-width: 1100px; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: right; }
th { background: #f3f3f3; }
th:first-child { text-align: left; }
img { max-width: 100%; }
"""


def _curve(series: pd.Series, what: str) -> pd.Series:
    s = series.astype(float).sort_index().dropna()
    if s.empty:
        raise ValueError(f"{what} has no values")
    return s


def _aligned(benchmark: pd.Series, index: pd.Index) -> pd.Series:
    """``benchmark`` on ``index``, forward-filled (from its own earlier dates too)."""
    bm = benchmark.astype(float).sort_index()
    bm = bm[~bm.index.duplicated(keep="last")]
    return bm.reindex(bm.index.union(index)).ffill().reindex(index)


def _rebased(curve: pd.Series) -> pd.Series:
    # Rebased at the first date; a benchmark starting later is rebased at its first value.
    valid = curve.dropna()
    return curve / valid.iloc[0] if len(valid) else curve


def _new_figure(height: float, index: pd.Index) -> tuple[Figure, Axes]:
    from matplotlib.dates import AutoDateLocator, ConciseDateFormatter
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, height), dpi=_DPI)
    ax = fig.add_subplot()
    if isinstance(index, pd.DatetimeIndex):
        locator = AutoDateLocator()
        ax.xaxis.set_major_locator(locator)
        ax.xaxis.set_major_formatter(ConciseDateFormatter(locator))
    ax.grid(True, alpha=0.3)
    return fig, ax


def equity_figure(equity: pd.Series, benchmarks: Mapping[str, pd.Series] | None = None, *,
                  title: str = "Equity", segments: Sequence[pd.Timestamp] = ()) -> Figure:
    """Equity rebased to 1.0 with benchmarks rebased at equity's first date; ``segments`` are
    drawn as light vertical lines (e.g. walk-forward window starts)."""
    eq = _curve(equity, "equity")
    fig, ax = _new_figure(4.0, eq.index)
    ax.plot(eq.index, (eq / eq.iloc[0]).to_numpy(), label=str(equity.name or "strategy"),
            color="C0", lw=1.6)
    for k, (name, bm) in enumerate((benchmarks or {}).items(), start=1):
        ax.plot(eq.index, _rebased(_aligned(bm, eq.index)).to_numpy(), label=str(name),
                color=f"C{k}", lw=1.0)
    for ts in segments:
        ax.axvline(pd.Timestamp(ts), color="grey", alpha=0.35, lw=0.8)
    ax.set_title(title)
    ax.set_ylabel("growth of 1")
    _legend_outside(ax)
    return fig


def _legend_outside(ax: Axes) -> None:
    """The legend below the plot area, never over the lines."""
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), fontsize="small",
                  ncol=min(len(handles), 3), frameon=False)


def drawdown_figure(equity: pd.Series, benchmarks: Mapping[str, pd.Series] | None = None, *,
                    title: str = "Drawdown") -> Figure:
    """Strategy drawdown (%) as a filled area; benchmark drawdowns over the same dates as lines."""
    from matplotlib.ticker import PercentFormatter

    eq = _curve(equity, "equity")
    fig, ax = _new_figure(3.0, eq.index)
    dd = drawdown_of(eq) * 100.0
    ax.fill_between(eq.index, dd.to_numpy(), 0.0, color="C0", alpha=0.35,
                    label=str(equity.name or "strategy"))
    for k, (name, bm) in enumerate((benchmarks or {}).items(), start=1):
        bm_dd = drawdown_of(_aligned(bm, eq.index)) * 100.0
        ax.plot(eq.index, bm_dd.to_numpy(), label=str(name), color=f"C{k}", lw=1.0)
    ax.yaxis.set_major_formatter(PercentFormatter(xmax=100.0))
    ax.set_title(title)
    _legend_outside(ax)
    return fig


def window_bars_figure(windows: pd.DataFrame, *, title: str = "Sharpe per walk-forward window"
                       ) -> Figure:
    """In-sample against out-of-sample per walk-forward window: ``windows`` has the columns
    ``window`` and ``in_sample`` / ``out_of_sample`` (one bar each); a window without a value
    (no trade) has no bar."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(10, 3.6), dpi=_DPI)
    ax = fig.add_subplot()
    x = list(range(len(windows)))
    width = 0.4
    for k, (column, color) in enumerate((("in_sample", "C7"), ("out_of_sample", "C0"))):
        if column in windows:
            ax.bar([i + (k - 0.5) * width for i in x], windows[column].astype(float).to_numpy(),
                   width=width, color=color, label=column.replace("_", "-"))
    ax.axhline(0.0, color="black", lw=0.8)
    ax.set_xticks(x)
    ax.set_xticklabels([str(w).split("_")[-1] if "_" in str(w) else str(w)
                        for w in windows["window"]], rotation=45, ha="right", fontsize="small")
    ax.set_xlabel("window (out-of-sample start)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    _legend_outside_right(ax)
    return fig


def _legend_outside_right(ax: Axes) -> None:
    handles, _ = ax.get_legend_handles_labels()
    if handles:
        ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize="small",
                  frameon=False)


def lines_figure(frame: pd.DataFrame, *, title: str, ylabel: str = "",
                 marker: str | None = None, height: float = 3.6) -> Figure:
    """Each column of ``frame`` as a line over its index, the legend below the plot."""
    fig, ax = _new_figure(height, frame.index)
    for k, column in enumerate(frame.columns):
        ax.plot(frame.index, frame[column].astype(float).to_numpy(), label=str(column),
                color=f"C{k % 10}", lw=1.2, marker=marker)
    if pd.api.types.is_integer_dtype(frame.index):
        ax.set_xticks(list(frame.index))       # e.g. horizons: 1, 5, 10, 20
    ax.set_title(title)
    if ylabel:
        ax.set_ylabel(ylabel)
    _legend_outside(ax)
    return fig


def figure_png(fig: Figure) -> bytes:
    """PNG bytes (dpi 100, tight bounding box); the figure is closed afterwards."""
    buf = io.BytesIO()
    # No "Software" text chunk: it carries matplotlib's URL and makes bytes version-dependent.
    fig.savefig(buf, format="png", dpi=_DPI, bbox_inches="tight", metadata={"Software": None})
    _close(fig)
    return buf.getvalue()


def _close(fig: Figure) -> None:
    import sys

    # Only figures made through pyplot are registered anywhere; ours are freed with the object.
    if "matplotlib.pyplot" in sys.modules:
        sys.modules["matplotlib.pyplot"].close(fig)
    fig.clear()


def png_base64(fig: Figure) -> str:
    """The figure as base64-encoded PNG (closes the figure)."""
    return base64.b64encode(figure_png(fig)).decode("ascii")


def markdown_image(png_b64: str, alt: str) -> str:
    """A markdown image with the PNG inlined as a data URI."""
    safe_alt = alt.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
    return f"![{safe_alt}](data:image/png;base64,{png_b64})"


def _is_percent(name: str) -> bool:
    key = name.lower()
    return any(p in key for p in PERCENT_KEYS) and not any(c in key for c in COUNT_KEYS)


def _format_metric(name: str, value: object) -> str:
    try:
        v = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return _MISSING if value is None else str(value)
    if math.isnan(v):
        return _MISSING
    if _is_percent(name):
        return f"{v * 100:.2f}%"
    if math.isfinite(v) and abs(v) >= 1e4:
        return f"{v:,.0f}"
    return f"{v:.4g}"


def _esc(text: object) -> str:
    return html.escape(str(text), quote=True)


def _metrics_table(metrics: Mapping[str, float]) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(_format_metric(k, v))}</td></tr>"
                   for k, v in metrics.items())
    return f'<table class="metrics"><tr><th>metric</th><th>value</th></tr>{rows}</table>'


def _weights_section(weights: pd.DataFrame, names: Mapping[str, str] | None = None,
                     title: str = "Latest weights") -> str:
    # An all-NaN row means "no decision"; an all-zero row is a decision to hold cash.
    decided = weights.sort_index().dropna(how="all")
    if decided.empty:
        return f"<h2>{_esc(title)}</h2><p>No weights.</p>"
    when = decided.index[-1]
    label = when.date().isoformat() if isinstance(when, pd.Timestamp) else str(when)
    row = decided.iloc[-1].astype(float)
    held = row[row > 0].sort_values(ascending=False, kind="stable")
    head = f"<h2>{_esc(title)} ({_esc(label)})</h2>"
    if held.empty:
        return f"{head}<p>No holdings (all cash).</p>"
    names = names or {}
    named = any(names.get(str(sym)) for sym in held.index)
    body = "".join(f"<tr><th>{_esc(sym)}</th>"
                   + (f"<td style=\"text-align:left\">{_esc(names.get(str(sym), ''))}</td>"
                      if named else "")
                   + f"<td>{w * 100:.2f}%</td></tr>" for sym, w in held.items())
    cash = 1.0 - float(held.sum())
    foot = f"<p>Cash: {cash * 100:.2f}%</p>" if cash > 1e-9 else "<p>Cash: 0.00%</p>"
    header = "<tr><th>symbol</th>" + ("<th>name</th>" if named else "") + "<th>weight</th></tr>"
    return f'{head}<table class="weights">{header}{body}</table>{foot}'


def _img(png_b64: str, alt: str) -> str:
    return f'<img alt="{_esc(alt)}" src="data:image/png;base64,{png_b64}">'


def html_report(title: str, *, metrics: Mapping[str, float], equity: pd.Series,
                benchmarks: Mapping[str, pd.Series] | None = None,
                weights: pd.DataFrame | None = None,
                tables: Mapping[str, pd.DataFrame] | None = None,
                notes: Sequence[str] = (),
                names: Mapping[str, str] | None = None,
                weights_title: str = "Latest weights",
                figures: Mapping[str, Figure] | None = None) -> str:
    """One self-contained HTML page (inline CSS and images, no scripts, no external URLs).
    ``names``: fund names by symbol, shown beside the weights; ``figures``: more plots after
    the equity and drawdown (e.g. per-window bars)."""
    eq_png = png_base64(equity_figure(equity, benchmarks))
    dd_png = png_base64(drawdown_figure(equity, benchmarks))
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{_esc(title)}</title><style>{_STYLE}</style></head><body>",
        f"<h1>{_esc(title)}</h1>",
        *(f"<p>{_esc(note)}</p>" for note in notes),
        "<h2>Metrics</h2>",
        _metrics_table(metrics),
        "<h2>Equity</h2>",
        _img(eq_png, "Equity"),
        "<h2>Drawdown</h2>",
        _img(dd_png, "Drawdown"),
    ]
    for name, figure in (figures or {}).items():
        parts += [f"<h2>{_esc(name)}</h2>", _img(png_base64(figure), name)]
    if weights is not None:
        parts.append(_weights_section(weights, names, weights_title))
    for name, table in (tables or {}).items():
        parts += [f"<h2>{_esc(name)}</h2>", table.to_html(escape=True, border=0)]
    parts.append("</body></html>")
    return "\n".join(parts)
