"""``risk_compliance_report``: the account's daily risk and compliance report (issue 19 item 6).

After ``portfolio_risk`` and ``positions_report``, the report of session D (the newest session
the clock has closed, as ``positions_report`` marks it) is gathered from the ledger (book,
valuations, the day's signals, orders and breach entries of the audit log), the risk table and
the configured limits, rendered by :mod:`rotation.compliance_report` as HTML and PDF, written
to ``<storage_root>/reports/<account>/<D>.html|.pdf`` (with the limit use as numbers in
``<D>.limits.json``, which the desk API serves) and logged to MLflow (experiment
``<account> compliance reports``, one run per report). The materialisation links both files,
the MLflow run and a preview: the report is one click from the asset in the UI.
"""

import datetime as dt
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd

from assets.code_version import code_version
from resources.clock import ClockResource
from resources.execution import venue_bars
from resources.ledger import LedgerResource
from resources.market_data import MarketDataResource
from resources.tracking import MlflowTracking
from rotation.compliance_report import (
    BREACH_ACTIONS,
    ComplianceReport,
    ReportInputs,
    build_report,
    limit_use_document,
    limit_use_path,
    render_html,
    render_pdf,
    report_folder,
)
from rotation.risk import RiskLimits
from trading.account import Account
from trading.ledger import Ledger
from trading.models import SignalStatus

COMPLIANCE_GROUP = "compliance"
REPORT_ASSET = "risk_compliance_report"


def experiment_of(account_id: str) -> str:
    """The MLflow experiment holding the account's compliance reports."""
    return f"{account_id} compliance reports"


def report_paths(storage_root: Path, account_id: str, session: dt.date) -> tuple[Path, Path]:
    folder = report_folder(storage_root, account_id)
    return folder / f"{session:%Y-%m-%d}.html", folder / f"{session:%Y-%m-%d}.pdf"


def _on_day(entry: dict[str, Any], session: dt.date) -> bool:
    """An audit entry is of session D when its details name D (session or as_of); otherwise
    when it was written on D's calendar day (the entry's own timestamp, UTC)."""
    details = entry.get("details") or {}
    named = details.get("session") or details.get("as_of")
    if named:
        return str(named) == session.isoformat()
    at = entry.get("at")
    return isinstance(at, dt.datetime) and at.astimezone(dt.UTC).date() == session


def _of_account(entry: dict[str, Any], account_id: str) -> bool:
    details = entry.get("details") or {}
    return entry.get("entity_id") == account_id or details.get("account_id") == account_id


def breach_entries(ledger: Ledger, account_id: str, session: dt.date) -> list[dict[str, Any]]:
    """The account's conduct breaches and tightened limits of session D, oldest first."""
    entries = [e for action in BREACH_ACTIONS for e in ledger.audit_log(action=action)]
    return sorted((e for e in entries if _of_account(e, account_id) and _on_day(e, session)),
                  key=lambda e: e["id"])


def marked_positions(ledger: Ledger, account_id: str, bars: pd.DataFrame) -> pd.DataFrame:
    """The ledger's positions with each fund's last raw close in ``bars`` (NaN: no bar)."""
    last = (bars.sort_values("date").groupby("symbol")["close"].last()
            if len(bars) else pd.Series(dtype=float))
    rows = [{"symbol": s, "quantity": p.quantity, "cost": p.cost,
             "price": float(last[s]) if s in last.index else float("nan")}
            for s, p in ledger.positions(account_id).items()]
    return pd.DataFrame(rows, columns=["symbol", "quantity", "cost", "price"])


def report_inputs(ledger: Ledger, account_id: str, session: dt.date, risk: pd.DataFrame,
                  limits: RiskLimits, bars: pd.DataFrame, data_as_of: dt.date | None
                  ) -> ReportInputs:
    """Everything the report of session D shows, read from the ledger."""
    signals = ledger.signals(account_id)
    today = [s for s in signals if s.as_of == session]
    earlier = [s for s in signals if s.as_of < session and s.status is SignalStatus.APPROVED]
    ids = {s.signal_id for s in today}
    orders = [o for o in ledger.orders(account_id=account_id) if o.signal_id in ids]
    return ReportInputs(
        account_id=account_id, session=session, generated_at=dt.datetime.now(dt.UTC),
        data_as_of=data_as_of, cash=ledger.cash(account_id),
        initial_cash=ledger.initial_cash(account_id),
        positions=marked_positions(ledger, account_id, bars),
        valuations=ledger.valuations(account_id), risk=risk, limits=limits, signals=today,
        previous_weights=earlier[-1].weights if earlier else None, orders=orders,
        audit=breach_entries(ledger, account_id, session))


def _risk_as_of(context: dg.AssetExecutionContext, key: dg.AssetKey) -> dt.date | None:
    """The session the stored portfolio_risk (``key``) was measured on (its ``as_of``
    metadata)."""
    event = context.instance.get_latest_materialization_event(key)
    materialization = event.asset_materialization if event is not None else None
    value = materialization.metadata.get("as_of") if materialization is not None else None
    return dt.date.fromisoformat(str(value.value)) if value is not None else None


def _log_to_mlflow(context: dg.AssetExecutionContext, tracking: MlflowTracking,
                   account_id: str, session: dt.date, rep: ComplianceReport,
                   files: tuple[Path, Path]) -> tuple[str, str | None]:
    """Both files as artifacts of one run (closed on return); its id and UI link."""
    with tracking.run(context, experiment=experiment_of(account_id),
                      run_name=f"{account_id} {session:%Y-%m-%d}",
                      params={"account_id": account_id, "session": session.isoformat()},
                      tags={"account_id": account_id, "session": session.isoformat()}) as run:
        run.log_metrics({"breaches": rep.breaches, "rejections": rep.rejections})
        for path in files:
            run.client.log_artifact(run.run_id, str(path), artifact_path="report")
        return run.run_id, run.url


def compliance_assets(account: Account, *, storage_root: Path) -> list[dg.AssetsDefinition]:
    """The account's ``risk_compliance_report`` (written under ``storage_root/reports``)."""
    account_id, limits = account.account_id, account.limits

    @dg.asset(
        name=REPORT_ASSET,
        group_name=COMPLIANCE_GROUP,
        kinds={"html", "pdf", "postgres"},
        ins={"portfolio_risk": dg.AssetIn()},
        deps=["positions_report"],
        code_version=code_version(REPORT_ASSET, limits, account_id),
        description="The account's daily risk and compliance report (HTML and PDF): positions "
        "with value and weight, P&L and the equity curve, VaR / ES of the target and the book, "
        "the stress table, the use of every configured limit, breaches and every rejection of "
        "the session with its reason (signals, orders, conduct). Kept under "
        "storage/reports/<account>/ and in the MLflow experiment '<account> compliance "
        "reports'; the materialisation links both.",
    )
    def risk_compliance_report(context: dg.AssetExecutionContext, portfolio_risk: pd.DataFrame,
                               ledger: LedgerResource, market_data: MarketDataResource,
                               clock: ClockResource, tracking: MlflowTracking
                               ) -> dg.MaterializeResult:
        day = market_data.calendar.latest_closed_session(clock.now())
        bars = venue_bars(market_data, day, day,
                          lookback_sessions=account.quote_lookback_sessions)
        inputs = report_inputs(ledger.ledger, account_id, day.date(), portfolio_risk, limits,
                               bars.loc[pd.to_datetime(bars["date"]) <= day],
                               _risk_as_of(context, context.asset_key_for_input("portfolio_risk")))
        rep = build_report(inputs)
        html_path, pdf_path = report_paths(storage_root, account_id, day.date())
        html_path.parent.mkdir(parents=True, exist_ok=True)
        html_path.write_text(render_html(rep), encoding="utf-8")
        pages = render_pdf(rep, pdf_path)
        limits_path = limit_use_path(storage_root, account_id, day.date())
        partial = limits_path.with_name(limits_path.name + ".partial")
        partial.write_text(limit_use_document(inputs, rep), encoding="utf-8")
        partial.replace(limits_path)        # the API never reads a half-written file
        run_id, url = _log_to_mlflow(context, tracking, account_id, day.date(), rep,
                                     (html_path, pdf_path))
        if rep.breaches:
            context.log.warning(f"account {account_id} {day:%Y-%m-%d}: {rep.breaches} "
                                "breaches in the compliance report")
        return dg.MaterializeResult(metadata={
            "account_id": dg.MetadataValue.text(account_id),
            "session": dg.MetadataValue.text(f"{day:%Y-%m-%d}"),
            "html": dg.MetadataValue.path(str(html_path)),
            "pdf": dg.MetadataValue.path(str(pdf_path)),
            "pdf_pages": dg.MetadataValue.int(pages),
            "limit_use": dg.MetadataValue.path(str(limits_path)),
            "mlflow_run_id": dg.MetadataValue.text(run_id),
            **({"mlflow_run": dg.MetadataValue.url(url)} if url else {}),
            "breaches": dg.MetadataValue.int(rep.breaches),
            "rejections": dg.MetadataValue.int(rep.rejections),
            "preview": dg.MetadataValue.md(rep.markdown()),
        })

    return [risk_compliance_report]
