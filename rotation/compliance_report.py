"""The daily risk and compliance report of one account (issue 19 item 6), as HTML and PDF.

Pure: plain inputs in (:class:`ReportInputs`: the ledger's book, valuations, the day's
decisions and audit entries, ``portfolio_risk``'s long table, the configured limits), a
:class:`ComplianceReport` of display tables out, rendered by :func:`render_html` (one
self-contained page, figures inlined as base64 PNG through :mod:`rotation.report`) and
:func:`render_pdf` (matplotlib's ``PdfPages``: A4 pages of tables and the equity / drawdown
figure). No Dagster, no database: the asset ``risk_compliance_report`` gathers the inputs.

Sections: account header, positions, P&L, risk figures, stress, limit use, breaches and the
day's rejections. Each limit of :class:`~rotation.risk.RiskLimits` appears in the limit use:
a figure against its limit (utilisation and ok / breach), "not limited" for a limit that is not
configured (None), and for limits checked order by order or signal by signal (price band,
signal age) the day's rejections under their rule. An empty section says so in a sentence.
"""

from __future__ import annotations

import datetime as dt
import io
import json
import math
import re
import textwrap
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

import pandas as pd

from rotation import report
from rotation.report import _STYLE, _esc, _img  # the backtest report's page style and escaping
from rotation.risk import Layer, RiskLimits, drawdown_of, reasons_of, turnover

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = [
    "BREACH_ACTIONS",
    "LIMIT_LAYERS",
    "AuditEntryLike",
    "ComplianceReport",
    "LimitUse",
    "OrderLike",
    "ReportInputs",
    "SignalLike",
    "build_report",
    "latest_limit_use",
    "limit_use_document",
    "limit_use_path",
    "render_html",
    "render_pdf",
    "report_folder",
]

# Audit actions that are breaches of the account's conduct or limit rules (written by the
# risk layer with details {rule, subject, message}).
BREACH_ACTIONS = ("conduct_breach", "limits_tightened", "risk_breach")
_ESTIMATE = re.compile(r"^(?P<method>\S+) (?P<measure>VaR|ES) (?P<level>\d+)% (?P<horizon>\d+)d$")
_WORST_FUND = re.compile(r"worst fund (\S+)")
_NONE = "–"
_FEW_SESSIONS = 10
# The risk layer that checks each limit of RiskLimits (rotation.risk's violations name it).
LIMIT_LAYERS: dict[str, Layer] = {
    "max_signal_age_sessions": "signal",
    "max_gross_exposure": "account", "max_daily_notional": "account", "max_var_99": "account",
    "max_es_99": "account", "max_stress_loss": "account", "max_days_to_liquidate": "account",
    "max_intraday_loss": "account",
    "max_turnover": "strategy", "drawdown_stop": "strategy",
    "max_weight": "instrument", "price_band": "instrument",
    "max_order_notional": "order", "lot_size": "order", "max_participation": "order",
}
# Beside each day's HTML and PDF: the limit use as numbers, for the desk API.
LIMITS_SUFFIX = ".limits.json"


class SignalLike(Protocol):
    """What the report reads of a decided signal (``trading.ledger.SignalRecord`` fits)."""

    @property
    def signal_id(self) -> str: ...
    @property
    def as_of(self) -> dt.date: ...
    @property
    def status(self) -> str: ...
    @property
    def weights(self) -> dict[str, float]: ...
    @property
    def reasons(self) -> list[dict[str, Any]]: ...


class OrderLike(Protocol):
    """What the report reads of an order (``trading.ledger.OrderRecord`` fits)."""

    @property
    def order_id(self) -> str: ...
    @property
    def signal_id(self) -> str: ...
    @property
    def symbol(self) -> str: ...
    @property
    def side(self) -> str: ...
    @property
    def quantity(self) -> int: ...
    @property
    def reference_price(self) -> float: ...
    @property
    def status(self) -> str: ...
    @property
    def reason(self) -> str | None: ...
    @property
    def parent_order_id(self) -> str | None: ...


AuditEntryLike = Mapping[str, Any]     # a row of Ledger.audit_log: id, at, action, details...


@dataclass(frozen=True)
class ReportInputs:
    """Everything the report shows, read by the caller for session ``session`` of the account.

    ``positions``: symbol, quantity, cost, price (the last close up to D; NaN when unknown).
    ``valuations``: session, cash, positions_value, equity (the ledger's, any sessions).
    ``risk``: ``portfolio_risk``'s long table (section, portfolio, name, value, detail).
    ``signals``: the account's signals of D; ``previous_weights``: the last approved target
    before D (turnover). ``orders``: the orders of those signals. ``audit``: the account's
    breach entries of the day (:data:`BREACH_ACTIONS`)."""

    account_id: str
    session: dt.date
    generated_at: dt.datetime
    data_as_of: dt.date | None
    cash: float
    initial_cash: float
    positions: pd.DataFrame
    valuations: pd.DataFrame
    risk: pd.DataFrame
    limits: RiskLimits
    signals: Sequence[SignalLike] = ()
    previous_weights: Mapping[str, float] | None = None
    orders: Sequence[OrderLike] = ()
    audit: Sequence[AuditEntryLike] = ()


@dataclass(frozen=True)
class ComplianceReport:
    """The report as display tables (text cells, formatted once for HTML and PDF alike);
    ``sections`` in report order, each a table or a sentence saying it is empty."""

    title: str
    header: dict[str, str]
    pnl: dict[str, str]
    equity: pd.Series                   # by session, for the figures (may be empty)
    sections: dict[str, pd.DataFrame | str] = field(default_factory=dict)
    limit_uses: tuple[LimitUse, ...] = ()   # the "Limit use" section as numbers
    breaches: int = 0                   # limits in breach + breach entries of the audit log
    rejections: int = 0                 # signal reasons + rejected orders

    def markdown(self) -> str:
        """A short preview for the Dagster UI: header, P&L and the counts."""
        lines = [f"**{self.title}**", ""]
        lines += [f"- {k}: {v}" for k, v in {**self.header, **self.pnl}.items()]
        lines += [f"- breaches: {self.breaches}", f"- rejections: {self.rejections}"]
        return "\n".join(lines)


# -- formatting ---------------------------------------------------------------------------------

def _pct(value: float | None, digits: int = 2) -> str:
    if value is None or not math.isfinite(value):
        return _NONE
    return f"{100.0 * value:.{digits}f}%"


def _money(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return _NONE
    return f"{value:,.2f}"


def _number(value: float | None) -> str:
    if value is None or not math.isfinite(value):
        return _NONE
    return f"{value:,.1f}"


# -- sections -----------------------------------------------------------------------------------

def _positions(inputs: ReportInputs) -> tuple[pd.DataFrame | str, float, dict[str, float]]:
    """The positions table, the equity it sums to (cash + marked positions) and the weights."""
    book = inputs.positions
    values = {str(r.symbol): float(r.quantity) * float(r.price) for r in book.itertuples()}
    equity = inputs.cash + sum(v for v in values.values() if math.isfinite(v))
    weights = {s: (v / equity if equity > 0 else math.nan) for s, v in values.items()}
    if book.empty:
        return f"No positions: the account holds cash only ({_money(inputs.cash)}).", \
            equity, weights
    rows = [{"symbol": str(r.symbol), "quantity": f"{int(r.quantity):,}",
             "cost": _money(float(r.cost)), "price": _money(float(r.price)),
             "value": _money(values[str(r.symbol)]), "weight": _pct(weights[str(r.symbol)])}
            for r in book.itertuples()]
    rows.append({"symbol": "cash", "quantity": "", "cost": "", "price": "",
                 "value": _money(inputs.cash),
                 "weight": _pct(inputs.cash / equity if equity > 0 else math.nan)})
    rows.append({"symbol": "total", "quantity": "", "cost": "", "price": "",
                 "value": _money(equity), "weight": _pct(1.0 if equity > 0 else math.nan)})
    return pd.DataFrame(rows), equity, weights


def _equity_curve(inputs: ReportInputs) -> pd.Series:
    frame = inputs.valuations
    if frame.empty:
        return pd.Series(dtype=float, name="equity")
    curve = frame.set_index(pd.to_datetime(frame["session"]))["equity"].astype(float)
    return curve.loc[curve.index <= pd.Timestamp(inputs.session)].sort_index().rename("equity")


def _pnl(inputs: ReportInputs, curve: pd.Series) -> dict[str, str]:
    """Day and cumulative P&L from the ledger's valuations up to D."""
    if curve.empty:
        return {"P&L": f"no valuation up to {inputs.session} (positions_report records them)"}
    last_day = curve.index[-1].date()
    equity = float(curve.iloc[-1])
    previous = float(curve.iloc[-2]) if len(curve) > 1 else inputs.initial_cash
    out = {"valuation of": last_day.isoformat()
           + ("" if last_day == inputs.session else f" (none on {inputs.session})"),
           "equity": _money(equity),
           "day P&L": f"{_money(equity - previous)} ({_pct(equity / previous - 1.0)})",
           "cumulative P&L": f"{_money(equity - inputs.initial_cash)} "
                             f"({_pct(equity / inputs.initial_cash - 1.0)}) on initial cash "
                             f"{_money(inputs.initial_cash)}",
           "drawdown": _pct(drawdown_of(curve.tolist()))}
    return out


def _section(risk: pd.DataFrame, name: str) -> pd.DataFrame:
    return risk.loc[risk["section"] == name] if len(risk) else risk


def _estimates(risk: pd.DataFrame) -> pd.DataFrame:
    """VaR and ES side by side per portfolio, method, level and horizon (values as stored)."""
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for r in _section(risk, "estimate").itertuples():
        found = _ESTIMATE.match(str(r.name))
        if found is None:
            continue
        key = (str(r.portfolio), found["method"], f"{found['level']}%", f"{found['horizon']}d")
        row = rows.setdefault(key, {"portfolio": key[0], "method": key[1], "level": key[2],
                                    "horizon": key[3], "sessions": str(r.detail)})
        row[found["measure"]] = float(r.value)
    frame = pd.DataFrame(list(rows.values()))
    if frame.empty:
        return frame
    for measure in ("VaR", "ES"):
        frame[measure] = frame.get(measure, pd.Series(math.nan, index=frame.index)).map(_pct)
    return frame[["portfolio", "method", "level", "horizon", "VaR", "ES", "sessions"]]


def _risk_figures(risk: pd.DataFrame) -> pd.DataFrame | str:
    estimates = _estimates(risk)
    if estimates.empty:
        return "No VaR / ES was measured for this session."
    return estimates


def _risk_notes(risk: pd.DataFrame) -> pd.DataFrame | str:
    """The out-of-sample VaR backtest, liquidity and what could not be measured."""
    rows = []
    for r in _section(risk, "backtest").itertuples():
        rows.append({"section": "VaR backtest", "portfolio": str(r.portfolio),
                     "name": str(r.name), "value": f"exceedances: {r.value:g}",
                     "detail": str(r.detail)})
    for r in _section(risk, "liquidity").itertuples():
        rows.append({"section": "liquidity", "portfolio": str(r.portfolio), "name": str(r.name),
                     "value": f"{_number(float(r.value))} sessions", "detail": str(r.detail)})
    for r in _section(risk, "unmeasured").itertuples():
        rows.append({"section": "not measured", "portfolio": str(r.portfolio),
                     "name": str(r.name), "value": _NONE, "detail": str(r.detail)})
    return pd.DataFrame(rows) if rows else "No backtest, liquidity or unmeasured figures."


def _stress(risk: pd.DataFrame) -> pd.DataFrame | str:
    rows = []
    for r in _section(risk, "stress").itertuples():
        worst = _WORST_FUND.search(str(r.detail))
        fund = worst.group(1) if worst and worst.group(1) != "None" else _NONE
        # The stored detail repeats the worst fund and has ".." where a scenario has no dates.
        detail = " ".join(_WORST_FUND.sub("", str(r.detail)).replace(" .. ", " ").split())
        rows.append({"portfolio": str(r.portfolio), "scenario": str(r.name),
                     "loss": _pct(float(r.value)), "worst fund": fund, "detail": detail})
    return pd.DataFrame(rows) if rows else "No stress scenario was measured for this session."


def _figure(risk: pd.DataFrame, section: str, portfolio: str, name: str) -> float | None:
    rows = _section(risk, section)
    rows = rows.loc[(rows["portfolio"] == portfolio) & (rows["name"] == name)] \
        if len(rows) else rows
    value = float(rows["value"].iloc[0]) if len(rows) else math.nan
    return value if math.isfinite(value) else None


def _slowest(risk: pd.DataFrame, portfolio: str) -> float | None:
    rows = _section(risk, "liquidity")
    rows = rows.loc[rows["portfolio"] == portfolio] if len(rows) else rows
    values = rows["value"].astype(float).dropna() if len(rows) else pd.Series(dtype=float)
    return float(values.max()) if len(values) else None


@dataclass(frozen=True)
class _Use:
    limit: str
    portfolio: str
    value: float | None
    bound: float | None
    unit: str                     # "percent" (a fraction), "money" or "sessions"
    why_unmeasured: str = "not measured"


_SHOW = {"percent": _pct, "money": _money, "sessions": _number}


@dataclass(frozen=True)
class LimitUse:
    """One row of the limit use as numbers (what the desk API serves): ``unit`` is
    ``percent`` (a fraction), ``money``, ``sessions``, or ``rejections`` for a limit checked
    order by order or signal by signal (``value`` then counts the day's rejections under its
    rule and ``bound`` is the limit's setting); ``utilisation`` is value / bound."""

    layer: str
    limit: str
    applies_to: str
    value: float | None
    bound: float | None
    unit: str
    utilisation: float | None
    status: str                   # ok, breach, not limited, or why it was not measured
    shown_value: str
    shown_bound: str


def _finite(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _use_of(use: _Use, tolerance: float) -> LimitUse:
    show = _SHOW[use.unit]
    value, utilisation = _finite(use.value), None
    if use.bound is None:
        status = "not limited"
    elif value is None:
        status = use.why_unmeasured
    else:
        slack = tolerance if use.unit == "percent" else 0.0
        status = "breach" if value > use.bound + slack else "ok"
        utilisation = value / use.bound
    return LimitUse(layer=LIMIT_LAYERS[use.limit], limit=use.limit, applies_to=use.portfolio,
                    value=value, bound=use.bound, unit=use.unit, utilisation=utilisation,
                    status=status, shown_value=show(value), shown_bound=show(use.bound))


def _use_row(use: LimitUse) -> dict[str, str]:
    utilisation = _NONE if use.utilisation is None else f"{100.0 * use.utilisation:.1f}%"
    return {"limit": use.limit, "applies to": use.applies_to, "value": use.shown_value,
            "limit value": use.shown_bound, "utilisation": utilisation, "status": use.status}


def _day_orders(inputs: ReportInputs) -> list[OrderLike]:
    """The orders sent or planned (not rejected); a TWAP parent counts, not its slices."""
    return [o for o in inputs.orders if str(o.status) != "rejected" and o.parent_order_id is None]


def _limit_uses(inputs: ReportInputs, weights: Mapping[str, float],
                curve: pd.Series) -> list[_Use]:
    limits, risk = inputs.limits, inputs.risk
    approved = [s for s in inputs.signals if str(s.status) == "approved"]
    target = approved[-1].weights if approved else None
    gross = sum(w for w in weights.values() if math.isfinite(w))
    sent = [float(o.quantity) * float(o.reference_price) for o in _day_orders(inputs)]
    uses = [
        _Use("max_weight", "book", max(weights.values(), default=0.0), limits.max_weight,
             "percent"),
        _Use("max_gross_exposure", "book", gross, limits.max_gross_exposure, "percent"),
        _Use("drawdown_stop", "book", drawdown_of(curve.tolist()) if len(curve) else None,
             limits.drawdown_stop, "percent", "no valuation yet"),
        _Use("max_turnover", "target",
             turnover(target, inputs.previous_weights or {}) if target is not None else None,
             limits.max_turnover, "percent", "no approved signal of the session"),
        _Use("max_order_notional", "orders sent", max(sent) if sent else None,
             limits.max_order_notional, "money", "no order of the session"),
        _Use("max_daily_notional", "orders sent", sum(sent) if sent else None,
             limits.max_daily_notional, "money", "no order of the session"),
    ]
    window = f"worst {limits.stress_window_sessions}-session window"
    portfolios = sorted(set(risk["portfolio"]) & {"target", "book"}) if len(risk) else []
    for p in portfolios or ["target"]:
        uses += [
            _Use("max_var_99", p, _figure(risk, "estimate", p, "historical VaR 99% 1d"),
                 limits.max_var_99, "percent"),
            _Use("max_es_99", p, _figure(risk, "estimate", p, "historical ES 99% 1d"),
                 limits.max_es_99, "percent"),
            _Use("max_stress_loss", p, _figure(risk, "stress", p, window),
                 limits.max_stress_loss, "percent"),
            _Use("max_days_to_liquidate", p, _slowest(risk, p), limits.max_days_to_liquidate,
                 "sessions"),
        ]
    return uses


# Limits that hold per order or per signal: their use is the day's rejections under the rule.
_PER_DECISION = (("price_band", "price_band", "per order: |reference / last close − 1|", _pct),
                 ("max_signal_age_sessions", "stale_signal", "per signal: sessions behind",
                  "{:d}".format),
                 ("lot_size", "lot_size", "per order: whole lots of", "{:,d} units".format),
                 ("max_participation", "participation",
                  "per order: share of the fund's average daily amount", _pct),
                 ("max_intraday_loss", "intraday_loss",
                  "intraday: loss since the last close (monitor)", _pct))


def _all_limit_uses(inputs: ReportInputs, weights: Mapping[str, float], curve: pd.Series
                    ) -> list[LimitUse]:
    tolerance = inputs.limits.weight_tolerance
    uses = [_use_of(u, tolerance) for u in _limit_uses(inputs, weights, curve)]
    rejected = _rejections(inputs)
    rules = list(rejected["rule"]) if isinstance(rejected, pd.DataFrame) else []
    for name, rule, what, show in _PER_DECISION:
        count = rules.count(rule)
        limit = getattr(inputs.limits, name)
        uses.append(LimitUse(
            layer=LIMIT_LAYERS[name], limit=name, applies_to=what, value=float(count),
            bound=None if limit is None else float(limit), unit="rejections",
            utilisation=None, status="breach" if count else "ok" if limit is not None
            else "not limited", shown_value=f"{count} rejected",
            shown_bound=_NONE if limit is None else show(limit)))
    return uses


def _breaches(limit_use: pd.DataFrame, audit: Sequence[AuditEntryLike]) -> pd.DataFrame | str:
    """The limits in breach and the audit log's breach entries of the day."""
    rows = [{"source": "limit use", "rule": str(r["limit"]), "subject": str(r["applies to"]),
             "message": f"{r['value']} against the limit {r['limit value']}"
                        + ("" if r["utilisation"] == _NONE else f" ({r['utilisation']} used)")}
            for _, r in limit_use.loc[limit_use["status"] == "breach"].iterrows()]
    rows += [{"source": f"audit {e['kind']}", "rule": e["rule"], "subject": e["subject"],
              "message": e["message"]}
             for e in map(_audit_row, audit) if e["kind"] in BREACH_ACTIONS]
    return pd.DataFrame(rows) if rows else "No limit is in breach and no breach was audited."


def _audit_row(entry: AuditEntryLike) -> dict[str, str]:
    details = entry.get("details") or {}
    at = entry.get("at")
    when = f" at {at:%H:%M:%S}" if isinstance(at, dt.datetime) else ""
    return {"kind": str(entry.get("action")), "id": str(entry.get("entity_id", "")) + when,
            "rule": str(details.get("rule", "")), "subject": str(details.get("subject", "")),
            "message": str(details.get("message") or entry.get("reason") or "")}


def _rejections(inputs: ReportInputs) -> pd.DataFrame | str:
    """Every reason of every rejected signal, every rejected order and every breach entry of
    the audit log of the day."""
    rows = [{"kind": "signal rejected", "id": s.signal_id,
             "rule": f"{r.get('layer', '')}/{r.get('rule', '')}",
             "subject": str(r.get("subject", "")), "message": str(r.get("message", ""))}
            for s in inputs.signals if str(s.status) == "rejected" for r in s.reasons]
    rows += [{"kind": "order rejected", "id": o.order_id, "rule": rule,
              "subject": f"{o.side} {o.quantity:,} {o.symbol}", "message": message}
             for o in inputs.orders if str(o.status) == "rejected"
             for rule, message in reasons_of(o.reason)]
    rows += [_audit_row(e) for e in inputs.audit if e.get("action") in BREACH_ACTIONS]
    if not rows:
        return f"No signal, order or conduct rejection on {inputs.session}."
    frame = pd.DataFrame(rows)
    # The bare rule name (without its layer) is what the limit use counts by.
    frame["rule"] = frame["rule"].str.split("/").str[-1]
    return frame


def build_report(inputs: ReportInputs) -> ComplianceReport:
    """The report's tables from ``inputs`` (see the module docstring for the sections)."""
    positions, equity, weights = _positions(inputs)
    curve = _equity_curve(inputs)
    uses = _all_limit_uses(inputs, weights, curve)
    limit_use = pd.DataFrame([_use_row(u) for u in uses])
    rejections = _rejections(inputs)
    breaches = _breaches(limit_use, inputs.audit)
    entries = sum(1 for e in inputs.audit if e.get("action") in BREACH_ACTIONS)
    header = {"account": inputs.account_id, "session": inputs.session.isoformat(),
              "generated at": inputs.generated_at.strftime("%Y-%m-%d %H:%M:%S %Z").strip(),
              "data as of": inputs.data_as_of.isoformat() if inputs.data_as_of else _NONE,
              "equity (marked)": _money(equity)}
    sections: dict[str, pd.DataFrame | str] = {
        "Positions": positions,
        "Risk figures (VaR / ES, fraction of equity lost)": _risk_figures(inputs.risk),
        "VaR backtest, liquidity and unmeasured figures": _risk_notes(inputs.risk),
        "Stress": _stress(inputs.risk),
        "Limit use": limit_use,
        "Breaches": breaches,
        "Rejections of the day": rejections,
    }
    return ComplianceReport(
        title=f"Risk and compliance report: {inputs.account_id}, {inputs.session}",
        header=header, pnl=_pnl(inputs, curve), equity=curve, sections=sections,
        limit_uses=tuple(uses), breaches=0 if isinstance(breaches, str) else len(breaches),
        rejections=0 if isinstance(rejections, str) else len(rejections) - entries)


# -- the limit use file ---------------------------------------------------------------------------

def report_folder(storage_root: Path, account_id: str) -> Path:
    """Where the account's daily reports are kept (every account of a deployment alike)."""
    return storage_root / "reports" / account_id


def limit_use_path(storage_root: Path, account_id: str, session: dt.date) -> Path:
    return report_folder(storage_root, account_id) / f"{session:%Y-%m-%d}{LIMITS_SUFFIX}"


def limit_use_document(inputs: ReportInputs, rep: ComplianceReport) -> str:
    """The report's limit use as JSON (no NaN: an unmeasured figure is null)."""
    return json.dumps({"account_id": inputs.account_id, "session": inputs.session.isoformat(),
                       "generated_at": inputs.generated_at.isoformat(),
                       "limits": [asdict(u) for u in rep.limit_uses]},
                      allow_nan=False, indent=1)


def latest_limit_use(storage_root: Path, account_id: str) -> dict[str, Any] | None:
    """The newest session's limit use of the account (None: no report written yet). The
    caller vouches for ``account_id`` (an account of the deployment, not a path)."""
    files = sorted(report_folder(storage_root, account_id).glob(f"*{LIMITS_SUFFIX}"))
    if not files:
        return None
    document: dict[str, Any] = json.loads(files[-1].read_text(encoding="utf-8"))
    return document


# -- HTML ---------------------------------------------------------------------------------------

def _html_pairs(pairs: Mapping[str, str], cls: str) -> str:
    rows = "".join(f"<tr><th>{_esc(k)}</th><td>{_esc(v)}</td></tr>" for k, v in pairs.items())
    return f'<table class="{cls}">{rows}</table>'


def _html_section(title: str, body: pd.DataFrame | str) -> str:
    slug = re.sub(r"[^a-z]+", "-", title.lower()).strip("-")
    head = f'<h2 id="{_esc(slug)}">{_esc(title)}</h2>'
    if isinstance(body, str):
        return f'{head}<p class="empty">{_esc(body)}</p>'
    table = body.to_html(escape=True, border=0, index=False)
    # A limit in breach stands out (the cell's text is exactly "breach", already escaped).
    return head + table.replace("<td>breach</td>", '<td class="breach">breach</td>')


def _figures(curve: pd.Series, account: str) -> tuple[Figure, Figure]:
    """Equity (growth of 1 since the first valuation) and drawdown; a young account's few
    sessions are ticked one by one (the automatic date ticks would show hours)."""
    figures = (report.equity_figure(curve, title=f"Equity of {account} (growth of 1 since "
                                    f"{curve.index[0]:%Y-%m-%d})"),
               report.drawdown_figure(curve, title=f"Drawdown of {account}"))
    if len(curve) <= _FEW_SESSIONS:
        from matplotlib.dates import DateFormatter

        for figure in figures:
            for ax in figure.axes:
                ax.set_xticks(list(curve.index))
                ax.xaxis.set_major_formatter(DateFormatter("%Y-%m-%d"))
    return figures


def render_html(rep: ComplianceReport) -> str:
    """One self-contained page (inline CSS and images, no scripts, every cell escaped)."""
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{_esc(rep.title)}</title><style>{_STYLE}"
             "td { text-align: left; } .breach { color: #b00; }</style></head><body>",
             f"<h1>{_esc(rep.title)}</h1>", _html_pairs(rep.header, "header")]
    first, *rest = rep.sections.items()
    parts.append(_html_section(*first))
    parts += ['<h2 id="p-l">P&amp;L</h2>', _html_pairs(rep.pnl, "pnl")]
    if rep.equity.empty:
        parts.append('<p class="empty">No equity curve: no valuation recorded yet.</p>')
    else:
        equity, drawdown = _figures(rep.equity, rep.header["account"])
        parts += [_img(report.png_base64(equity), "Equity"),
                  _img(report.png_base64(drawdown), "Drawdown")]
    parts += [_html_section(title, body) for title, body in rest]
    parts.append("</body></html>")
    return "\n".join(parts)


# -- PDF ----------------------------------------------------------------------------------------

_PAGE = (8.27, 11.69)        # A4 portrait, inches
_MARGIN = 0.5
_LINE = 0.16                 # inches per text line in a table cell (7 pt)
_CHARS = 112                 # characters of 7 pt text across the page's width (with padding)


class _PdfFlow:
    """Places titles, key-value tables, tables and images down A4 pages, starting a new page
    when the next block does not fit (a long table continues with its header repeated)."""

    def __init__(self, pdf: Any, title: str) -> None:
        self.pdf, self.title, self.page = pdf, title, 0
        self.fig: Figure | None = None
        self.y = 0.0                                    # inches from the top

    def _new_page(self) -> Figure:
        from matplotlib.figure import Figure

        self.close_page()
        self.page += 1
        self.fig = Figure(figsize=_PAGE)
        self.fig.text(_MARGIN / _PAGE[0], 1 - 0.3 / _PAGE[1], f"{self.title} — page {self.page}",
                      fontsize=7, color="grey", va="top")
        self.y = _MARGIN + 0.2
        return self.fig

    def close_page(self) -> None:
        if self.fig is not None:
            self.pdf.savefig(self.fig)
            self.fig = None

    def _room(self) -> float:
        return _PAGE[1] - _MARGIN - self.y

    def _page(self, needed: float) -> Figure:
        if self.fig is None or self._room() < needed:
            return self._new_page()
        return self.fig

    def text(self, text: str, size: float = 9, weight: str = "normal") -> None:
        height = size / 72 * 1.6
        fig = self._page(height + 0.6 if weight == "bold" else height)
        fig.text(_MARGIN / _PAGE[0], 1 - self.y / _PAGE[1], text, fontsize=size,
                 fontweight=weight, va="top")
        # A sentence keeps the next heading off it; a heading stays close to its table.
        self.y += height + (0.0 if weight == "bold" else 0.2)

    def image(self, png: bytes, width: float = 6.0) -> None:
        from matplotlib.image import imread

        pixels = imread(io.BytesIO(png), format="png")
        height = width * pixels.shape[0] / pixels.shape[1]
        fig = self._page(height)
        left = (_PAGE[0] - width) / 2
        ax = fig.add_axes((left / _PAGE[0], 1 - (self.y + height) / _PAGE[1],
                           width / _PAGE[0], height / _PAGE[1]))
        ax.imshow(pixels)
        ax.axis("off")
        self.y += height + 0.1

    def table(self, frame: pd.DataFrame, header: bool = True) -> None:
        cells = [[str(v) for v in row] for row in frame.itertuples(index=False)]
        labels = [str(c) for c in frame.columns]
        widths = _column_widths([labels, *cells] if header else cells)
        wrapped = [[textwrap.fill(v, widths[c]) for c, v in enumerate(r)]
                   for r in ([labels, *cells] if header else cells)]
        heights = [(max(v.count("\n") for v in r) + 1) * _LINE + 0.06 for r in wrapped]
        head = (wrapped[0], heights[0]) if header else None
        body = list(zip(wrapped[int(header):], heights[int(header):], strict=True))
        shares = [w / sum(widths) for w in widths]
        while body:
            top = head[1] if head else 0.0
            fig = self._page(top + body[0][1])
            take, used = 0, top
            while take < len(body) and used + body[take][1] <= self._room():
                used += body[take][1]
                take += 1
            take = max(take, 1)
            chunk, body = body[:take], body[take:]
            self._draw(fig, [head, *chunk] if head else chunk, shares, header)

    def _draw(self, fig: Figure, rows: list[tuple[list[str], float]], shares: list[float],
              header: bool) -> None:
        total = sum(h for _, h in rows)
        width = _PAGE[0] - 2 * _MARGIN
        ax = fig.add_axes((_MARGIN / _PAGE[0], 1 - (self.y + total) / _PAGE[1],
                           width / _PAGE[0], total / _PAGE[1]))
        ax.axis("off")
        table = ax.table(cellText=[r for r, _ in rows], colWidths=shares, cellLoc="left",
                         loc="upper left")
        table.auto_set_font_size(False)
        table.set_fontsize(7)
        for (row, _), cell in table.get_celld().items():
            cell.set_height(rows[row][1] / total)
            cell.set_linewidth(0.3)
            cell.PAD = 0.02
            if header and row == 0:
                cell.set_facecolor("#f3f3f3")
                cell.get_text().set_fontweight("bold")
            elif cell.get_text().get_text() == "breach":
                cell.get_text().set_color("#b00")
        self.y += total + 0.25

    def pairs(self, pairs: Mapping[str, str]) -> None:
        self.table(pd.DataFrame({"key": list(pairs), "value": list(pairs.values())}),
                   header=False)


def _column_widths(rows: list[list[str]]) -> list[int]:
    """Characters per column: each column's longest cell, the widest ones narrowed (their
    cells wrap) until the row fits the page's line."""
    widths = [max(8, max(len(r[c]) for r in rows)) for c in range(len(rows[0]))]
    while sum(widths) > _CHARS and max(widths) > 8:
        widest = widths.index(max(widths))
        widths[widest] -= 1
    return widths


def render_pdf(rep: ComplianceReport, path: Path) -> int:
    """Write the report as an A4 PDF at ``path``; returns its number of pages."""
    from matplotlib.backends.backend_pdf import PdfPages

    with PdfPages(path, metadata={"Title": rep.title, "Creator": "etf-rotation"}) as pdf:
        flow = _PdfFlow(pdf, rep.title)
        flow.text(rep.title, size=13, weight="bold")
        flow.pairs(rep.header)
        sections = list(rep.sections.items())
        _pdf_section(flow, *sections[0])
        flow.text("P&L", size=11, weight="bold")
        flow.pairs(rep.pnl)
        if rep.equity.empty:
            flow.text("No equity curve: no valuation recorded yet.")
        else:
            for figure in _figures(rep.equity, rep.header["account"]):
                flow.image(report.figure_png(figure))
        for title, body in sections[1:]:
            _pdf_section(flow, title, body)
        flow.close_page()
        return int(pdf.get_pagecount())


def _pdf_section(flow: _PdfFlow, title: str, body: pd.DataFrame | str) -> None:
    flow.text(title, size=11, weight="bold")
    if isinstance(body, str):
        flow.text(body)
    else:
        flow.table(body)
