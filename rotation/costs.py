"""The one cost model (SPEC §7): what an order pays and loses, in the lots it trades.

Every part that charges or predicts a cost reads a :class:`CostModel`: the backtest engine
(:class:`rotation.backtest.BacktestConfig` holds one), the combination search (its proportional
rates), the paper venue's fills, order planning and pre-trade risk, and the account
(:class:`trading.account.Account`). It is built in one place from the market profile's fee
schedule and the strategy's overrides (:meth:`rotation.strategy.StrategyConfig.cost_model`), so
the venue charges what the backtest charges.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from pydantic import ConfigDict, Field
from pydantic.dataclasses import dataclass as pydantic_dataclass

if TYPE_CHECKING:
    from rotation.market import FeeSchedule

__all__ = ["NO_FEES", "CostModel"]


@pydantic_dataclass(frozen=True, config=ConfigDict(extra="forbid"))
class CostModel:
    """Commission at ``commission_bps`` of the notional with ``min_commission`` per order (in
    the market's currency), sell-side duties (stamp duty, a regulator's fee) at
    ``sell_fee_bps``, ``slippage_bps`` against the trade, and orders in lots of ``lot_size``."""

    commission_bps: float = Field(default=2.0, ge=0, allow_inf_nan=False)
    min_commission: float = Field(default=5.0, ge=0, allow_inf_nan=False)
    sell_fee_bps: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    slippage_bps: float = Field(default=0.0, ge=0, allow_inf_nan=False)
    lot_size: int = Field(default=100, ge=1)

    @classmethod
    def of_market(cls, fees: FeeSchedule, *, lot_size: int, slippage_bps: float) -> CostModel:
        """The model of a market's fee schedule (with any overrides already applied)."""
        return cls(commission_bps=fees.commission_bps, min_commission=fees.min_commission,
                   sell_fee_bps=fees.sell_rate * 1e4, slippage_bps=slippage_bps,
                   lot_size=lot_size)

    @property
    def commission_rate(self) -> float:
        return self.commission_bps / 1e4

    @property
    def sell_fee_rate(self) -> float:
        return self.sell_fee_bps / 1e4

    @property
    def slippage_rate(self) -> float:
        return self.slippage_bps / 1e4

    def commission(self, notional: float) -> float:
        return max(notional * self.commission_rate, self.min_commission)

    def fee(self, notional: float, side: str) -> float:
        """Everything an order pays: commission, plus the sell-side duties on a sell."""
        duty = notional * self.sell_fee_rate if str(side).lower() == "sell" else 0.0
        return self.commission(notional) + duty


# Lots of 100 and nothing charged: order arithmetic on its own (tests, what-if sizing).
NO_FEES = CostModel(commission_bps=0.0, min_commission=0.0)
