"""The approval gate (SPEC §9): a target portfolio becomes an approved signal only when every
blocking data check for its date passed, the data is fresh, the risk limits hold and the account
has no other approved signal for that session; otherwise it is a rejected signal carrying every
reason. Either way the decision is recorded in the ledger (immutable once approved) and in the
audit log.

One approved signal per account and session (rule ``one_signal_per_session``): two approved
targets for one day would each be sized against the whole account (the incident of issue 11:
1,999,431 CNY of buys against 1,000,000 cash). The gate rejects a second, different target with
a reason naming the approved one; the database refuses it as well (a partial unique index), and
the only way to approve another target for that session is to supersede the first explicitly
(:meth:`trading.ledger.Ledger.supersede_signal`, ``supersede_signal_job``) before it traded."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from rotation.risk import (
    LAYERS,
    PortfolioFigures,
    RiskLimits,
    RiskViolation,
    check_portfolio,
    check_signal,
    drawdown_of,
)
from trading.ledger import Ledger, SignalRecord, SignalSessionConflict
from trading.models import SignalStatus, signal_id_of, weights_hash


@dataclass(frozen=True)
class SignalFacts:
    """Everything the gate looks at, gathered by the caller (the Dagster asset)."""

    strategy: str
    account_id: str
    as_of: dt.date                       # the target portfolio's date D
    weights: Mapping[str, float]         # as proposed (NaN / negative kept: they are rejected)
    latest_session: dt.date              # newest session that has closed by the clock
    sessions_between: int                # sessions after D up to latest_session
    data_as_of: dt.date | None           # newest session of stored, checked market data
    universe: Collection[str]
    halted: Collection[str]              # funds without a bar (or volume) on D
    failed_checks: Sequence[str]         # "asset:check (partition)" that did not pass
    data_version: str | None = None
    dagster_run_id: str | None = None
    # The target's portfolio risk (rotation.portfolio_risk.gate_figures), or why it could not
    # be measured; checked against the limits that are configured.
    portfolio: PortfolioFigures | str | None = None


ONE_SIGNAL_PER_SESSION = "one_signal_per_session"


def proposed_weights(symbols: Sequence[str], weights: Sequence[float]) -> dict[str, float]:
    """The signal's weights: every fund with a non-zero (or non-finite) weight."""
    return {str(s): float(w) for s, w in zip(symbols, weights, strict=True)
            if not (math.isfinite(float(w)) and float(w) == 0.0)}


def decide(facts: SignalFacts, ledger: Ledger, limits: RiskLimits, *, actor: str
           ) -> SignalRecord:
    """Decide and record. Re-deciding the same signal (same strategy, account, date and
    weights) returns the stored approval (or supersession) unchanged."""
    signal_id = signal_id_of(facts.strategy, facts.account_id, facts.as_of, facts.weights)
    existing = ledger.signal(signal_id)
    if existing is not None and existing.status is not SignalStatus.REJECTED:
        return existing
    try:
        return ledger.record_signal(_decision(facts, signal_id, ledger, limits), actor=actor)
    except SignalSessionConflict:
        # Another target of this account and session was approved between our look and our
        # write: decide again, which now rejects this one naming it.
        return ledger.record_signal(_decision(facts, signal_id, ledger, limits), actor=actor)


def _decision(facts: SignalFacts, signal_id: str, ledger: Ledger, limits: RiskLimits
              ) -> SignalRecord:
    previous = _previous_weights(ledger, facts)
    valuations = ledger.valuations(facts.account_id)
    drawdown = drawdown_of(valuations["equity"].tolist()) if len(valuations) else None
    violations = check_signal(
        facts.weights, as_of=facts.as_of, latest_session=facts.latest_session,
        sessions_between=facts.sessions_between, universe=facts.universe, halted=facts.halted,
        previous_weights=previous, failed_checks=facts.failed_checks,
        data_as_of=facts.data_as_of, drawdown=drawdown, limits=limits)
    extra = check_portfolio(facts.portfolio, limits)
    holder = ledger.approved_signal_for(facts.account_id, facts.as_of)
    if holder is not None and holder.signal_id != signal_id:
        extra.append(_session_taken(facts, holder))
    if extra:
        # Stable sort by layer: the account rules join their layer after check_signal's.
        violations = sorted([*violations, *extra], key=lambda v: LAYERS.index(v.layer))
    return SignalRecord(
        signal_id=signal_id, account_id=facts.account_id, strategy=facts.strategy,
        as_of=facts.as_of, weights=dict(facts.weights),
        weights_hash=weights_hash(facts.weights),
        status=SignalStatus.REJECTED if violations else SignalStatus.APPROVED,
        reasons=[v.as_dict() for v in violations], data_version=facts.data_version,
        dagster_run_id=facts.dagster_run_id)


def _session_taken(facts: SignalFacts, holder: SignalRecord) -> RiskViolation:
    return RiskViolation(
        layer="account", rule=ONE_SIGNAL_PER_SESSION, subject=facts.account_id,
        message=f"account {facts.account_id} already has approved signal {holder.signal_id} "
                f"for session {facts.as_of:%Y-%m-%d}; one approved signal per account and "
                "session: supersede it (supersede_signal_job) before approving another")


def _previous_weights(ledger: Ledger, facts: SignalFacts) -> dict[str, float] | None:
    earlier = [s for s in ledger.signals(facts.account_id, SignalStatus.APPROVED)
               if s.strategy == facts.strategy and s.as_of < facts.as_of]
    return dict(earlier[-1].weights) if earlier else None

