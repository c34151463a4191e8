"""The approval gate (SPEC §9): a target portfolio becomes an approved signal only when every
blocking data check for its date passed, the data is fresh and the risk limits hold; otherwise
it is a rejected signal carrying every reason. Either way the decision is recorded in the
ledger (immutable once approved) and in the audit log."""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass

from rotation.risk import RiskLimits, check_signal, drawdown_of
from trading.ledger import Ledger, SignalRecord
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


def proposed_weights(symbols: Sequence[str], weights: Sequence[float]) -> dict[str, float]:
    """The signal's weights: every fund with a non-zero (or non-finite) weight."""
    return {str(s): float(w) for s, w in zip(symbols, weights, strict=True)
            if not (math.isfinite(float(w)) and float(w) == 0.0)}


def decide(facts: SignalFacts, ledger: Ledger, limits: RiskLimits, *, actor: str
           ) -> SignalRecord:
    """Decide and record. Re-deciding the same signal (same strategy, date and weights) returns
    the stored approval unchanged."""
    signal_id = signal_id_of(facts.strategy, facts.as_of, facts.weights)
    existing = ledger.signal(signal_id)
    if existing is not None and existing.status is SignalStatus.APPROVED:
        return existing
    previous = _previous_weights(ledger, facts)
    valuations = ledger.valuations(facts.account_id)
    drawdown = drawdown_of(valuations["equity"].tolist()) if len(valuations) else None
    violations = check_signal(
        facts.weights, as_of=facts.as_of, latest_session=facts.latest_session,
        sessions_between=facts.sessions_between, universe=facts.universe, halted=facts.halted,
        previous_weights=previous, failed_checks=facts.failed_checks,
        data_as_of=facts.data_as_of, drawdown=drawdown, limits=limits)
    record = SignalRecord(
        signal_id=signal_id, account_id=facts.account_id, strategy=facts.strategy,
        as_of=facts.as_of, weights=dict(facts.weights),
        weights_hash=weights_hash(facts.weights),
        status=SignalStatus.REJECTED if violations else SignalStatus.APPROVED,
        reasons=[v.as_dict() for v in violations], data_version=facts.data_version,
        dagster_run_id=facts.dagster_run_id)
    return ledger.record_signal(record, actor=actor)


def _previous_weights(ledger: Ledger, facts: SignalFacts) -> dict[str, float] | None:
    earlier = [s for s in ledger.signals(facts.account_id, SignalStatus.APPROVED)
               if s.strategy == facts.strategy and s.as_of < facts.as_of]
    return dict(earlier[-1].weights) if earlier else None

