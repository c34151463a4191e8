"""The trading account as every part of the platform reads it (issue 15).

One object holds what an account is: its id, the cash it opened with, the cost model its venue
charges, its risk limits and conduct rules, how long an execution waits for its lock, how many
sessions of bars its venue looks back, and the paper-versus-backtest tolerance. The composition
root builds it once from the settings and the strategy (``orchestration.definitions.account_of``);
the ledger resource, the execution jobs, the gate and report assets and the sensors take it
whole instead of a handful of loose arguments each.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field, model_validator

from rotation.allocation import AllocationMethod
from rotation.costs import CostModel
from rotation.risk import RiskLimits
from trading.conduct import ConductRules

__all__ = ["Account", "Allocation", "stage_of"]


def stage_of(account_id: str) -> str:
    """An account's stage name: the asset group, key prefix and job-name prefix of a further
    account of a deployment (Dagster's name rule: ``-`` as ``_``)."""
    return account_id.replace("-", "_")


class Allocation(BaseModel):
    """The strategies an account trades and how its capital is split among them
    (``rotation.allocation``); their targets are netted into the account's one target."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    # Names of strategies the deployment runs; empty: the deployment's strategy alone.
    strategies: tuple[str, ...] = ()
    method: AllocationMethod = "fixed"
    # ``fixed``: each strategy's share (normalised); unset: equal shares.
    weights: dict[str, float] = Field(default_factory=dict)
    # Out-of-sample sessions (the latest) whose returns size inverse_volatility / risk_parity.
    lookback_sessions: int = Field(250, ge=60)

    @model_validator(mode="after")
    def _coherent(self) -> Allocation:
        if len(set(self.strategies)) != len(self.strategies):
            raise ValueError(f"allocation.strategies: {list(self.strategies)} names a strategy "
                             "twice")
        if self.weights and self.method != "fixed":
            raise ValueError(f"allocation.weights: given with method {self.method!r}, which "
                             "computes the weights (weights go with method 'fixed')")
        return self

    @property
    def netted(self) -> bool:
        """Whether the account nets several strategies (else it trades one target as is)."""
        return len(self.strategies) > 1


class Account(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    account_id: str = Field(min_length=1)
    initial_cash: float = Field(gt=0, allow_inf_nan=False)
    venue: str = "paper"     # the execution resource's venue it trades through
    costs: CostModel
    limits: RiskLimits
    conduct: ConductRules = Field(default_factory=ConductRules)
    lock_timeout_seconds: float = Field(60.0, gt=0)
    # Sessions of bars before the first traded session the venue reads (limit detection).
    quote_lookback_sessions: int = Field(ge=1)
    # Paper-versus-backtest parity: the largest relative equity difference accepted.
    parity_tolerance: float = Field(0.01, gt=0)
    allocation: Allocation = Field(default_factory=Allocation)

    @model_validator(mode="after")
    def _one_lot(self) -> Account:
        # Pre-trade risk checks lots against the lot the venue trades in: one lot rule.
        if self.limits.lot_size != self.costs.lot_size:
            raise ValueError(f"account {self.account_id}: risk limits check lots of "
                             f"{self.limits.lot_size} units but the venue trades lots of "
                             f"{self.costs.lot_size}")
        return self
