"""Research jobs: factors and their screening, the walk-forward windows, and the portfolio.

Three jobs because their assets are partitioned differently: the screening assets and the
portfolio assets cover the whole history, the walk-forward assets have one partition per
window. A full rebuild runs them in order (``orchestration.runs.rebuild_research``); in the UI,
"Materialize all" on the research groups launches the same as one asset backfill.
"""

import dagster as dg

from assets.research import FACTORS_GROUP, SCREENING_GROUP
from assets.walk_forward import BACKTEST_GROUP, PORTFOLIO_GROUP, WFO_GROUP
from orchestration.dagster_private import UnresolvedAssetJobDefinition


def research_job(prefix: str = "", selection: dg.AssetSelection | None = None
                 ) -> UnresolvedAssetJobDefinition:
    """``prefix``/``selection``: another strategy's job of the deployment (its name and keys)."""
    return dg.define_asset_job(
        f"{prefix}research_job",
        selection=selection or dg.AssetSelection.groups(FACTORS_GROUP, SCREENING_GROUP),
        executor_def=dg.in_process_executor,
        description="Factors → rank IC per horizon → selected factors, on the full history of "
        "adjusted bars (run it after the market data backfill or the daily run).",
    )


def walk_forward_job(executor_def: dg.ExecutorDefinition = dg.in_process_executor,
                     fan_out: bool = False, prefix: str = "",
                     selection: dg.AssetSelection | None = None) -> UnresolvedAssetJobDefinition:
    how = ("Each window is its own run (one pod per run, one pod per step with "
           "k8s_job_executor)." if fan_out else
           "Backfill all windows as one run to share the panels (single-run backfill policy).")
    return dg.define_asset_job(
        f"{prefix}walk_forward_job",
        selection=selection or dg.AssetSelection.groups(WFO_GROUP),
        executor_def=executor_def,
        description="Per walk-forward window: the in-sample factor screen, the combination "
        "search, the vectorbt check of the finalists and the frozen winner's out-of-sample "
        "result, one MLflow run per window. " + how,
    )


def portfolio_job(prefix: str = "", selection: dg.AssetSelection | None = None
                  ) -> UnresolvedAssetJobDefinition:
    return dg.define_asset_job(
        f"{prefix}portfolio_job",
        selection=selection or dg.AssetSelection.groups(BACKTEST_GROUP, PORTFOLIO_GROUP),
        executor_def=dg.in_process_executor,
        description="The stitched out-of-sample backtest of the walk-forward winners (MLflow "
        "run, plots, benchmarks) and the target portfolio for the latest session.",
    )
