"""Superseding a signal from Dagster (jobs/signal_decisions.py) and what the execution sensor
makes of a superseded signal, on a real ledger database."""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator

import dagster as dg
import pytest
from conftest import paper_account

from jobs.execution import execution_jobs
from jobs.signal_decisions import supersede_signal_job
from resources.ledger import LedgerResource
from rotation.risk import RiskLimits
from sensors.signals import approved_signal_sensor
from trading import approval
from trading.ledger import Ledger, OrderRecord, SignalRecord
from trading.models import OrderStatus, Side, SignalStatus, order_id_of

DAY = dt.date(2024, 3, 4)
UNIVERSE = {"510300", "510500", "159915"}
FIRST = {"510300": 0.5, "510500": 0.5}
OTHER = {"510300": 0.5, "159915": 0.5}


@pytest.fixture
def account() -> str:
    return f"acct-{uuid.uuid4().hex[:8]}"


@pytest.fixture
def book(ledger_url: str, account: str) -> Iterator[Ledger]:
    ledger = Ledger(ledger_url, retry_seconds=10)
    ledger.migrate()
    ledger.open_account(account, 1_000_000.0, actor="test")
    yield ledger
    ledger.dispose()


def decide(book: Ledger, account: str, weights: dict[str, float]) -> SignalRecord:
    facts = approval.SignalFacts(
        strategy="rot", account_id=account, as_of=DAY, weights=weights, latest_session=DAY,
        sessions_between=0, data_as_of=DAY, universe=UNIVERSE, halted=[], failed_checks=[])
    return approval.decide(facts, book, RiskLimits(), actor="gate")


def supersede(ledger_url: str, account: str, signal_id: str, reason: str,
              job_account: str | None = None) -> dg.ExecuteInProcessResult:
    job = supersede_signal_job(paper_account(job_account or account))
    return job.execute_in_process(
        run_config={"ops": {"supersede_signal": {"config": {"signal_id": signal_id,
                                                            "reason": reason}}}},
        resources={"ledger": LedgerResource(url=ledger_url, account_id=account)},
        raise_on_error=False)


def failure(result: dg.ExecuteInProcessResult) -> str:
    assert not result.success
    (event,) = [e for e in result.all_events if e.event_type_value == "STEP_FAILURE"]
    return str(event.event_specific_data.error)   # type: ignore[union-attr]


def step_metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
    (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    return {k: v.value for k, v in
            output.event_specific_data.metadata.items()}  # type: ignore[union-attr]


def test_supersede_signal_job_supersedes_and_audits(ledger_url: str, book: Ledger,
                                                    account: str) -> None:
    first = decide(book, account, FIRST)
    assert decide(book, account, OTHER).status is SignalStatus.REJECTED

    result = supersede(ledger_url, account, first.signal_id, "wrong universe file")
    assert result.success
    stored = book.signal(first.signal_id)
    assert stored is not None and stored.status is SignalStatus.SUPERSEDED
    row = book.audit_log(entity="signal", entity_id=first.signal_id)[-1]
    assert (row["action"], row["actor"], row["reason"]) == (
        "signal_superseded", f"dagster:{result.run_id}", "wrong universe file")
    assert step_metadata(result)["already_superseded"] is False
    # the session is free: the other target is approved when decided again
    assert decide(book, account, OTHER).status is SignalStatus.APPROVED
    # again: nothing changes, the run says so
    again = supersede(ledger_url, account, first.signal_id, "again")
    assert again.success and step_metadata(again)["already_superseded"] is True
    assert len(book.audit_log(entity="signal", entity_id=first.signal_id)) == 2


def test_supersede_signal_job_refusals(ledger_url: str, book: Ledger, account: str) -> None:
    signal = decide(book, account, FIRST)
    assert "belongs to account" in failure(
        supersede(ledger_url, account, signal.signal_id, "x", job_account="another-account"))
    assert "is not in the ledger" in failure(supersede(ledger_url, account, "nope", "x"))

    order = OrderRecord(order_id=order_id_of(signal.signal_id, "510300", Side.BUY),
                        signal_id=signal.signal_id, account_id=account, symbol="510300",
                        side=Side.BUY, quantity=100, reference_price=3.9,
                        session=dt.date(2024, 3, 5))
    book.record_orders([order], actor="executor")
    book.update_order(order.order_id, status=OrderStatus.SUBMITTED, actor="executor")
    message = failure(supersede(ledger_url, account, signal.signal_id, "too late"))
    assert "already went to the venue" in message and signal.signal_id in message
    assert book.signal(signal.signal_id) == signal


def gate_of(record: SignalRecord) -> dg.AssetsDefinition:
    """An ``approved_signal`` asset that records ``record`` as approved, as the gate does."""

    @dg.asset(name="approved_signal")
    def gate() -> dg.MaterializeResult:
        return dg.MaterializeResult(metadata={"signal_id": record.signal_id,
                                              "status": "approved"})

    return gate


def test_the_sensor_never_launches_a_superseded_signal(ledger_url: str, book: Ledger,
                                                       account: str) -> None:
    """Both were materialised as approved; the first was superseded before the tick."""
    first = decide(book, account, FIRST)
    book.supersede_signal(first.signal_id, actor="ops", reason="replaced")
    second = decide(book, account, OTHER)
    assert second.status is SignalStatus.APPROVED
    job, _ = execution_jobs(paper_account(account, lock_timeout_seconds=5.0))
    sensor = approved_signal_sensor(job, paper_account(account))
    with dg.instance_for_test() as instance:
        for record in (first, second):      # each by a run, as the gate materialises them
            assert dg.materialize([gate_of(record)], instance=instance).success
        with dg.build_sensor_context(
                instance=instance,
                resources={"ledger": LedgerResource(url=ledger_url, account_id=account)}
        ) as context:
            result = sensor(context)
    assert isinstance(result, dg.SensorResult)
    assert [r.run_key for r in result.run_requests or []] == [second.signal_id]
