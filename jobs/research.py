"""The research job: rebuild factors and their screening on the full history."""

import dagster as dg
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition

from assets.research import FACTORS_GROUP, SCREENING_GROUP


def research_job() -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        "research_job",
        selection=dg.AssetSelection.groups(FACTORS_GROUP, SCREENING_GROUP),
        executor_def=dg.in_process_executor,
        description="Factors → rank IC per horizon → selected factors, on the full history of "
        "adjusted bars (run it after the market data backfill or the daily run).",
    )
