"""Pipeline parameters as resources, so they are set from settings in one place (the wiring)."""

from __future__ import annotations

from typing import Literal

import dagster as dg

from rotation.cross_section import CrossSectionConfig
from rotation.quality import QualityConfig


class DataQualityResource(dg.ConfigurableResource):
    """Tolerances of the market-data quality rules (SPEC §2)."""

    max_stale_days: int = 5
    max_gap_sessions: int = 5
    limit_slack: float = 0.002
    vwap_slack: float = 0.05
    unlimited_move_bound: float = 0.25
    lookback_sessions: int = 10

    def to_config(self) -> QualityConfig:
        return QualityConfig(
            max_stale_days=self.max_stale_days,
            max_gap_sessions=self.max_gap_sessions,
            limit_slack=self.limit_slack,
            vwap_slack=self.vwap_slack,
            unlimited_move_bound=self.unlimited_move_bound,
        )


class CrossSectionResource(dg.ConfigurableResource):
    """Coverage filter, winsorising and standardisation of the cross-sections (SPEC §3)."""

    min_history: int = 60
    max_stale_days: int = 5
    winsorize: Literal["quantile", "mad", "none"] = "quantile"
    lower_quantile: float = 0.025
    upper_quantile: float = 0.975
    mad_k: float = 5.0
    standardize: Literal["zscore", "rank"] = "zscore"
    neutralize_beta: bool = False
    beta_window: int = 60
    min_funds: int = 3

    def to_config(self) -> CrossSectionConfig:
        return CrossSectionConfig(**self.model_dump())
