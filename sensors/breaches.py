"""``risk_breach_alert_sensor``: the account's breaches, as the ledger's audit log records
them, posted to the alert webhook (issue 19 item 6).

Breaches are the audit entries of the account whose action is one of :data:`ALERT_ACTIONS`:
a rejected signal (``signal_rejected``, written by the ledger's signal trigger with every
reason), a rejected order (``order_rejected``: by pre-trade risk or by the venue), a conduct
breach, tightened limits and an intraday breach (``conduct_breach``, ``limits_tightened``,
``risk_breach``: details {rule, subject, message}). The cursor is the last audit id seen;
a sensor without a cursor (just enabled) starts at the newest entry, so turning it on does
not replay the account's history. Each tick posts every new breach in one payload
(Slack-style ``text`` plus the entries)::

    {"text": "...", "account_id": "...",
     "breaches": [{"audit_id": 1, "at": "...", "action": "...", "rule": "...",
                   "subject": "...", "message": "..."}, ...]}

Without a webhook they are logged. A webhook that fails is logged too, and the tick still
succeeds and moves on (as ``run_failure_alert_sensor``): the audit log keeps every entry.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from typing import Any

import dagster as dg
import sqlalchemy as sa

from resources.ledger import LedgerResource
from sensors.alerts import post_webhook
from trading.account import Account
from trading.ledger import AUDIT_LOG, ORDERS, Ledger

SENSOR_NAME = "risk_breach_alert_sensor"
ALERT_ACTIONS = ("signal_rejected", "order_rejected", "conduct_breach", "limits_tightened",
                 "risk_breach")
BATCH = 200              # entries per tick: one webhook payload stays a readable size
TEXT_LINES = 20          # lines of the text; the payload's list holds every entry


@dataclass(frozen=True)
class Breach:
    audit_id: int
    at: str
    action: str
    rule: str
    subject: str
    message: str

    def line(self) -> str:
        return f"{self.action} {self.rule} [{self.subject}]: {self.message}"


def _of_account(account_id: str) -> sa.ColumnElement[bool]:
    """Entries about the account: its own, those naming it, and those of its orders (a venue's
    rejection names only the order)."""
    order_of_account = sa.exists().where(ORDERS.c.order_id == AUDIT_LOG.c.entity_id,
                                         ORDERS.c.account_id == account_id)
    return sa.or_(sa.and_(AUDIT_LOG.c.entity == "account", AUDIT_LOG.c.entity_id == account_id),
                  AUDIT_LOG.c.details["account_id"].astext == account_id,
                  sa.and_(AUDIT_LOG.c.entity == "order", order_of_account))


def new_entries(ledger: Ledger, account_id: str, after: int, limit: int = BATCH
                ) -> list[dict[str, Any]]:
    """The account's breach entries with an audit id above ``after``, oldest first."""
    query = (sa.select(AUDIT_LOG)
             .where(AUDIT_LOG.c.id > after, AUDIT_LOG.c.action.in_(ALERT_ACTIONS),
                    _of_account(account_id))
             .order_by(AUDIT_LOG.c.id).limit(limit))
    with ledger.reader.connect() as conn:
        return [dict(r._mapping) for r in conn.execute(query)]


def newest_id(ledger: Ledger) -> int:
    with ledger.reader.connect() as conn:
        return int(conn.execute(sa.select(sa.func.coalesce(sa.func.max(AUDIT_LOG.c.id), 0)))
                   .scalar_one())


def breaches_of(entry: Mapping[str, Any]) -> Iterator[Breach]:
    """One breach per reason of a rejected signal, one per other entry."""
    details = entry.get("details") or {}
    if entry["action"] == "signal_rejected" and details.get("reasons"):
        for r in details["reasons"]:
            yield _breach(entry, str(r.get("rule", "")),
                          f"signal {entry['entity_id']} {r.get('subject', '')}".strip(),
                          str(r.get("message", "")))
    elif entry["action"] == "order_rejected":
        what = " ".join(str(details[k]) for k in ("side", "quantity", "symbol") if k in details)
        yield _breach(entry, "order", f"order {entry['entity_id']} {what}".strip(),
                      str(entry.get("reason") or "(no reason recorded)"))
    else:
        yield _breach(entry, str(details.get("rule", "")),
                      str(details.get("subject", entry.get("entity_id", ""))),
                      str(details.get("message") or entry.get("reason") or ""))


def _breach(entry: Mapping[str, Any], rule: str, subject: str, message: str) -> Breach:
    at = entry["at"].isoformat() if entry.get("at") is not None else ""
    return Breach(int(entry["id"]), at, str(entry["action"]), rule, subject, message)


def alert_payload(account_id: str, breaches: list[Breach]) -> dict[str, Any]:
    lines = [b.line() for b in breaches[:TEXT_LINES]]
    if len(breaches) > TEXT_LINES:
        lines.append(f"… and {len(breaches) - TEXT_LINES} more")
    text = f"Risk breaches of account {account_id} ({len(breaches)}):\n" + "\n".join(lines)
    return {"text": text, "account_id": account_id, "breaches": [asdict(b) for b in breaches]}


def risk_breach_alert_sensor(account: Account, webhook_url: str | None, timeout: float = 5.0,
                             *, retry_delay: float = 1.0, minimum_interval_seconds: int = 60,
                             prefix: str = "") -> dg.SensorDefinition:
    """Posts the account's new breach entries of the ledger's audit log (module docstring);
    ``prefix``: of a further account's sensor name."""
    account_id = account.account_id

    @dg.sensor(
        name=f"{prefix}{SENSOR_NAME}", minimum_interval_seconds=minimum_interval_seconds,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"Posts every new breach of account {account_id} in the ledger's audit log "
        f"({', '.join(ALERT_ACTIONS)}) to the alert webhook, or logs it without one.")
    def _sensor(context: dg.SensorEvaluationContext, ledger: LedgerResource
                ) -> dg.SkipReason:
        book = ledger.ledger
        if context.cursor is None:
            start = newest_id(book)
            context.update_cursor(str(start))
            return dg.SkipReason(f"started at audit id {start}: later breaches are posted")
        entries = new_entries(book, account_id, int(context.cursor))
        if not entries:
            return dg.SkipReason(f"no new breach of account {account_id}")
        breaches = [b for e in entries for b in breaches_of(e)]
        _deliver(context, account_id, breaches, webhook_url, timeout, retry_delay)
        context.update_cursor(str(entries[-1]["id"]))
        return dg.SkipReason(f"{len(breaches)} breaches of account {account_id} alerted "
                             f"(audit ids up to {entries[-1]['id']})")

    return _sensor


def _deliver(context: dg.SensorEvaluationContext, account_id: str, breaches: list[Breach],
             webhook_url: str | None, timeout: float, retry_delay: float) -> None:
    payload = alert_payload(account_id, breaches)
    context.log.warning(payload["text"])
    if not webhook_url:
        return
    if not post_webhook(webhook_url, payload, timeout=timeout, retry_delay=retry_delay,
                        warn=context.log.warning):
        context.log.error(f"{len(breaches)} breaches of account {account_id} NOT delivered "
                          "to the webhook (they stay in the ledger's audit log)")
