"""The daily risk and compliance report (issue 19 item 6) and the breach alerts, on the real
PostgreSQL ledger, a real Dagster instance, a real MLflow store and a real HTTP webhook.

* The report of an account is read from a ledger holding positions, valuations, an approved
  and a rejected signal, a sent and a rejected order and a conduct breach; the HTML holds
  every section (parsed), every rejection with its reason, escaped; the PDF has its pages.
* ``risk_compliance_report`` in the execution stage on real data writes both files under the
  storage root, logs them to MLflow and links them from its materialisation.
* ``risk_breach_alert_sensor`` posts exactly the new breaches of its account, once.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import threading
from collections.abc import Iterator
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import numpy as np
import pandas as pd
import pytest
from conftest import paper_account

from assets.compliance import experiment_of, report_inputs, report_paths
from assets.signals import risk_tables
from resources.ledger import LedgerResource
from resources.tracking import MlflowTracking
from rotation import portfolio_risk
from rotation.compliance_report import build_report, limit_use_path, render_html, render_pdf
from rotation.risk import LAYERS, RiskLimits, check_signal
from sensors.breaches import risk_breach_alert_sensor
from trading.ledger import Ledger, OrderRecord, SignalRecord
from trading.models import (
    AuditEntry,
    Fill,
    OrderStatus,
    Side,
    SignalStatus,
    order_id_of,
    signal_id_of,
    weights_hash,
)

ACCOUNT = "paper-report"
DAY = dt.date(2024, 3, 29)
FUNDS = ("510300", "518880", "159915")
SECTIONS = ("positions", "p-l", "risk-figures-var-es-fraction-of-equity-lost",
            "var-backtest-liquidity-and-unmeasured-figures", "stress", "limit-use", "breaches",
            "rejections-of-the-day")


# -- a ledger with a day of decisions ---------------------------------------------------------

def _signal(weights: dict[str, float], status: SignalStatus, reasons: list[dict[str, str]],
            account: str = ACCOUNT, day: dt.date = DAY) -> SignalRecord:
    return SignalRecord(signal_id=signal_id_of("report-test", account, day, weights),
                        account_id=account, strategy="report-test", as_of=day,
                        weights=weights, weights_hash=weights_hash(weights), status=status,
                        reasons=reasons, data_version=None, dagster_run_id=None)


def _rejected_signal(limits: RiskLimits, account: str = ACCOUNT) -> SignalRecord:
    """A target the signal rules reject for several reasons (real violations)."""
    weights = {"510300": 0.9, "ZZZ999": 0.3}
    found = check_signal(weights, as_of=DAY, latest_session=DAY, sessions_between=0,
                         universe=set(FUNDS), halted=[], previous_weights={},
                         failed_checks=[], data_as_of=DAY, drawdown=0.0, limits=limits)
    assert len(found) >= 2
    return _signal(weights, SignalStatus.REJECTED, [v.as_dict() for v in found], account)


def _order(signal: SignalRecord, symbol: str, quantity: int, price: float,
           status: OrderStatus = OrderStatus.PLANNED, reason: str | None = None
           ) -> OrderRecord:
    return OrderRecord(order_id=order_id_of(signal.signal_id, symbol, Side.BUY),
                       signal_id=signal.signal_id, account_id=signal.account_id, symbol=symbol,
                       side=Side.BUY, quantity=quantity, reference_price=price,
                       session=DAY + dt.timedelta(days=3), status=status, reason=reason)


def _conduct_breach(ledger: Ledger, account: str, message: str) -> None:
    ledger.audit(AuditEntry(actor="test:conduct", action="conduct_breach", entity="account",
                            entity_id=account, reason=message,
                            details={"rule": "trade_window", "subject": account,
                                     "message": message, "session": DAY.isoformat()}))


def _fill_book(ledger: Ledger, limits: RiskLimits) -> dict[str, Any]:
    """An approved signal of D filled, a rejected one, a rejected order, valuations and a
    conduct breach; what was written, for the assertions."""
    ledger.open_account(ACCOUNT, 1_000_000.0, actor="test")
    approved = ledger.record_signal(_signal({"510300": 0.45, "518880": 0.45},
                                            SignalStatus.APPROVED, []), actor="test")
    rejected = ledger.record_signal(_rejected_signal(limits), actor="test")
    bought = _order(approved, "510300", 100_000, 4.0)
    refused = _order(approved, "518880", 90_000, 5.0, OrderStatus.REJECTED,
                     "order/max_order_notional: order notional 450,000.00 exceeds 400,000.00")
    ledger.record_orders([bought, refused], actor="test")
    ledger.update_order(bought.order_id, status=OrderStatus.SUBMITTED, actor="test")
    ledger.record_fill(Fill("f-1", bought.order_id, ACCOUNT, "510300", Side.BUY, 100_000, 4.0,
                            80.0, DAY, dt.datetime(2024, 3, 29, 1, 30, tzinfo=dt.UTC)),
                       actor="test")
    for day, equity_delta in ((DAY - dt.timedelta(days=1), 0.0), (DAY, -12_500.0)):
        ledger.record_valuation(ACCOUNT, day, cash=ledger.cash(ACCOUNT),
                                positions_value=400_000.0 + equity_delta, actor="test")
    message = "order sent outside the <b>trading</b> window"
    _conduct_breach(ledger, ACCOUNT, message)
    _conduct_breach(ledger, "someone-else", "not this account's")
    return {"rejected": rejected, "refused": refused, "message": message}


Portfolios = dict[str, tuple[dict[str, float], float]]


def measured_risk(day: dt.date, funds: tuple[str, ...], portfolios: Portfolios,
                  limits: RiskLimits, seed: int) -> pd.DataFrame:
    """portfolio_risk's long table, measured by rotation.portfolio_risk from 400 sessions of
    returns of ``funds`` (a seeded random walk) up to ``day``."""
    rng = np.random.default_rng(seed)
    dates = pd.bdate_range(end=pd.Timestamp(day), periods=400)
    closes = pd.DataFrame(100 * np.exp(np.cumsum(rng.normal(0, 0.012, (400, len(funds))),
                                                 axis=0)), index=dates, columns=list(funds))
    amounts = pd.DataFrame(rng.uniform(5e6, 5e7, (400, len(funds))), index=dates,
                           columns=list(funds))
    returns = closes.pct_change()
    report = portfolio_risk.risk_report(
        returns, amounts, portfolios, day, dict.fromkeys(funds, "equity"),
        portfolio_risk.load_stress("cn_funds"), returns[funds[0]].dropna(), limits)
    return risk_tables(report)


def _risk_table(limits: RiskLimits) -> pd.DataFrame:
    """The risk of a target and a book of this module's account."""
    return measured_risk(DAY, FUNDS, {"target": ({"510300": 0.45, "518880": 0.45}, 1e6),
                                      "book": ({"510300": 0.4}, 1e6)}, limits, seed=19)


class _Sections(HTMLParser):
    """h2 ids, and the text of each section's tables and paragraphs."""

    def __init__(self) -> None:
        super().__init__()
        self.current = "header"
        self.text: dict[str, list[str]] = {"header": []}
        self.images = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "h2":
            self.current = dict(attrs)["id"] or ""
            self.text[self.current] = []
        if tag == "img":
            assert (dict(attrs)["src"] or "").startswith("data:image/png;base64,")
            self.images += 1

    def handle_data(self, data: str) -> None:
        self.text[self.current].append(data)

    def section(self, name: str) -> str:
        return " ".join(" ".join(self.text[name]).split())


def test_the_report_of_a_real_ledger_has_every_section(ledger_url: str, tmp_path: Path
                                                        ) -> None:
    limits = RiskLimits(max_var_99=0.001, max_order_notional=400_000.0)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    try:
        written = _fill_book(ledger, limits)
        bars = pd.DataFrame({"date": [pd.Timestamp(DAY)] * 2, "symbol": ["510300", "518880"],
                             "close": [3.875, 5.0]})
        inputs = report_inputs(ledger, ACCOUNT, DAY, _risk_table(limits), limits, bars, DAY)
    finally:
        ledger.dispose()
    rep = build_report(inputs)
    html_path, pdf_path = report_paths(tmp_path, ACCOUNT, DAY)
    html_path.parent.mkdir(parents=True)
    html_path.write_text(render_html(rep), encoding="utf-8")
    pages = render_pdf(rep, pdf_path)

    page = html_path.read_text(encoding="utf-8")
    assert "<b>trading</b>" not in page and "&lt;b&gt;trading&lt;/b&gt;" in page
    assert "<script" not in page and "http" not in page.replace("http-equiv", "")
    parsed = _Sections()
    parsed.feed(page)
    assert set(SECTIONS) <= set(parsed.text)
    assert parsed.images == 2                                  # equity and drawdown
    header = parsed.section("header")
    assert ACCOUNT in header and DAY.isoformat() in header and "generated at" in header
    positions = parsed.section("positions")
    assert "510300" in positions and "387,500.00" in positions          # 100,000 × 3.875
    assert "-12,500.00" in parsed.section("p-l")                         # the day's P&L
    assert "historical" in parsed.section("risk-figures-var-es-fraction-of-equity-lost")
    assert "worst 5-session window" in parsed.section("stress")
    limit_use = parsed.section("limit-use")
    assert "max_es_99 book" in limit_use and "not limited" in limit_use
    assert "max_var_99 target" in limit_use and "breach" in limit_use
    breaches = parsed.section("breaches")
    assert "max_var_99" in breaches and "max_order_notional" not in breaches
    assert "trade_window" in breaches and "not this account's" not in page
    rejections = parsed.section("rejections-of-the-day")
    for reason in written["rejected"].reasons:
        assert reason["rule"] in rejections and " ".join(reason["message"].split()) \
            in rejections
    # The order's reason split into its rule and message (what the limit use counts by).
    rule, _, message = str(written["refused"].reason).partition(": ")
    assert rule.split("/")[1] in rejections and message in rejections
    assert rep.rejections == len(written["rejected"].reasons) + 1
    assert rep.breaches == 2 + 1           # VaR of target and book, and the conduct breach
    # The same limit use as numbers, each limit under the layer that checks it.
    uses = {(u.limit, u.applies_to): u for u in rep.limit_uses}
    assert len(uses) == len(rep.sections["Limit use"])
    var = uses[("max_var_99", "target")]
    assert (var.layer, var.status, var.bound) == ("account", "breach", 0.001)
    assert var.value is not None and var.utilisation == pytest.approx(var.value / 0.001)
    assert uses[("max_es_99", "book")].status == "not limited"
    order = uses[("max_order_notional", "orders sent")]       # 100,000 × 4.00 sent
    assert (order.layer, order.value, order.utilisation) == ("order", 400_000.0, 1.0)

    data = pdf_path.read_bytes()
    assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF")
    assert pages >= 3 and len(re.findall(rb"/Type /Page\b(?!s)", data)) == pages


def test_an_empty_day_says_so(ledger_url: str, tmp_path: Path) -> None:
    limits = RiskLimits()
    ledger = Ledger(ledger_url)
    ledger.migrate()
    try:
        ledger.open_account(ACCOUNT, 500_000.0, actor="test")
        empty = pd.DataFrame(columns=["section", "portfolio", "name", "value", "detail"])
        inputs = report_inputs(ledger, ACCOUNT, DAY, empty, limits,
                               pd.DataFrame(columns=["date", "symbol", "close"]), None)
    finally:
        ledger.dispose()
    rep = build_report(inputs)
    page = render_html(rep)
    for sentence in ("No positions: the account holds cash only (500,000.00).",
                     "No equity curve: no valuation recorded yet.",
                     "No VaR / ES was measured for this session.",
                     "No stress scenario was measured for this session.",
                     "No limit is in breach and no breach was audited.",
                     f"No signal, order or conduct rejection on {DAY}."):
        assert sentence in page
    assert (rep.breaches, rep.rejections) == (0, 0)
    assert render_pdf(rep, tmp_path / "empty.pdf") >= 1


# -- the asset in the execution stage ---------------------------------------------------------

def _materialize(defs: dg.Definitions, instance: dg.DagsterInstance, asset: str
                 ) -> dg.ExecuteInProcessResult:
    return defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(asset)], raise_on_error=False,
        run_config={"loggers": {"console": {"config": {"log_level": "WARNING"}}}})


def test_the_asset_writes_both_files_logs_them_to_mlflow_and_links_them(execution_market,
                                                                         ledger_url) -> None:
    from orchestration.definitions import build_definitions

    settings = execution_market.settings(ledger_url, account_id=ACCOUNT)
    defs = build_definitions(settings)
    instance = execution_market.instance
    for asset in ("approved_signal", "portfolio_risk"):
        assert _materialize(defs, instance, asset).success, asset
    result = _materialize(defs, instance, "risk_compliance_report")
    assert result.success
    events = result.asset_materializations_for_node("risk_compliance_report")
    meta = {k: v.value for k, v in events[-1].metadata.items()}
    day = dt.date.fromisoformat(execution_market.signal_day)
    html_path, pdf_path = report_paths(settings.resolved_storage_root.resolve(), ACCOUNT, day)
    assert meta["html"] == str(html_path) and meta["pdf"] == str(pdf_path)
    assert html_path.is_file() and pdf_path.read_bytes().startswith(b"%PDF-")
    # The limit use as numbers beside them: what GET /accounts/{id}/limits serves.
    limits = limit_use_path(settings.resolved_storage_root.resolve(), ACCOUNT, day)
    assert meta["limit_use"] == str(limits)
    stored = json.loads(limits.read_text(encoding="utf-8"))
    assert (stored["account_id"], stored["session"]) == (ACCOUNT, execution_market.signal_day)
    assert {u["layer"] for u in stored["limits"]} <= set(LAYERS)
    assert sum(u["status"] == "breach" for u in stored["limits"]) <= meta["breaches"]
    assert ACCOUNT in str(meta["preview"]) and f"breaches: {meta['breaches']}" \
        in str(meta["preview"])
    assert meta["session"] == execution_market.signal_day
    tracking = MlflowTracking(tracking_uri=settings.resolved_mlflow_uri)
    runs = tracking.search(experiment_of(ACCOUNT))
    assert runs[0].info.run_id == meta["mlflow_run_id"] and runs[0].info.status == "FINISHED"
    logged = {a.path for a in tracking.client().list_artifacts(runs[0].info.run_id, "report")}
    assert logged == {f"report/{day}.html", f"report/{day}.pdf"}
    assert runs[0].data.metrics["breaches"] == meta["breaches"]


# -- the breach alert sensor ------------------------------------------------------------------

class _Webhook(BaseHTTPRequestHandler):
    received: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.server.received.append(json.loads(body))          # type: ignore[attr-defined]
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        return None


@pytest.fixture
def webhook() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    server.received = []                                         # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/hook/secret", server.received  # type: ignore[attr-defined]
    server.shutdown()
    server.server_close()


def _tick(sensor: dg.SensorDefinition, instance: dg.DagsterInstance, url: str,
          cursor: str | None) -> str | None:
    resource = LedgerResource(url=url, account_id=ACCOUNT)
    with dg.build_sensor_context(instance=instance, cursor=cursor,
                                 resources={"ledger": resource}) as context:
        data = sensor.evaluate_tick(context)
    return data.cursor


def test_the_sensor_posts_exactly_the_new_breaches_once(ledger_url: str, webhook,
                                                        pg_instance: dg.DagsterInstance
                                                        ) -> None:
    url, received = webhook
    limits = RiskLimits()
    sensor = risk_breach_alert_sensor(paper_account(ACCOUNT), url, timeout=5.0,
                                      retry_delay=0.01)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    try:
        ledger.open_account(ACCOUNT, 1_000_000.0, actor="test")
        _conduct_breach(ledger, ACCOUNT, "before the sensor ran")
        cursor = _tick(sensor, pg_instance, ledger_url, None)
        assert cursor is not None and received == []            # starts after the history

        ledger.open_account("other", 1_000_000.0, actor="test")
        rejected = ledger.record_signal(_rejected_signal(limits), actor="test")
        approved = ledger.record_signal(_signal({"510300": 0.5}, SignalStatus.APPROVED, []),
                                        actor="test")
        refused = _order(approved, "510300", 200_000, 4.0, OrderStatus.REJECTED,
                         "order/max_order_notional: order notional 800,000.00 exceeds "
                         "500,000.00")
        ledger.record_orders([refused, _order(approved, "518880", 100, 5.0)], actor="test")
        ledger.record_signal(_rejected_signal(limits, "other"), actor="test")
        _conduct_breach(ledger, "other", "another account's")
        _conduct_breach(ledger, ACCOUNT, "order sent outside the trading window")

        cursor = _tick(sensor, pg_instance, ledger_url, cursor)
        assert len(received) == 1                                # one payload per tick
        posted = received[0]["breaches"]
        expected = [(r["rule"], r["message"]) for r in rejected.reasons] + [
            ("order", refused.reason), ("trade_window", "order sent outside the trading window")]
        assert [(b["rule"], b["message"]) for b in posted] == expected
        assert [b["action"] for b in posted] == ["signal_rejected"] * len(rejected.reasons) + [
            "order_rejected", "conduct_breach"]
        text = received[0]["text"]
        assert ACCOUNT in text and "other" not in text.replace(ACCOUNT, "")
        assert refused.order_id in text and "max_weight" in text

        assert _tick(sensor, pg_instance, ledger_url, cursor) == cursor
        assert len(received) == 1                                # nothing new: nothing posted
    finally:
        ledger.dispose()


def test_a_failing_webhook_does_not_fail_the_tick(ledger_url: str,
                                                  pg_instance: dg.DagsterInstance) -> None:
    closed = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    port = closed.server_port
    closed.server_close()                                       # nothing listens there now
    sensor = risk_breach_alert_sensor(paper_account(ACCOUNT), f"http://127.0.0.1:{port}/hook",
                                      timeout=1.0,
                                      retry_delay=0.01)
    ledger = Ledger(ledger_url)
    ledger.migrate()
    try:
        ledger.open_account(ACCOUNT, 1_000_000.0, actor="test")
        start = _tick(sensor, pg_instance, ledger_url, None)
        _conduct_breach(ledger, ACCOUNT, "undeliverable")
        after = _tick(sensor, pg_instance, ledger_url, start)
        assert after is not None and start is not None and int(after) > int(start)
    finally:
        ledger.dispose()
