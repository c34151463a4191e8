"""Strategies side by side (issue 15 item 4): every strategy's stitched out-of-sample curve and
metrics over the sessions all of them cover, and the correlation of their daily returns, in the
asset's metadata and in an MLflow run. Thin over :mod:`rotation.comparison`."""

from collections.abc import Mapping

import dagster as dg
import pandas as pd

from assets.code_version import code_version
from assets.metadata import data_fingerprint, frame_metadata, table
from resources.tracking import MlflowTracking
from rotation import report
from rotation.comparison import Comparison, compare, comparison_figure

COMPARISON_GROUP = "comparison"
COMPARISON_EXPERIMENT = "strategy_comparison"
PLOT_DPI = 70


def input_name(strategy: str) -> str:
    """The asset input that carries ``strategy``'s backtest (an identifier that no argument
    of the asset function can be)."""
    return f"oos_{strategy}"


def comparison_assets(backtests: Mapping[str, dg.AssetKey]) -> list[dg.AssetsDefinition]:
    """``backtests``: strategy name → the key of its ``oos_backtest``."""
    names = {input_name(name): name for name in backtests}

    @dg.asset(
        group_name=COMPARISON_GROUP,
        kinds={"pandas", "mlflow"},
        ins={input_name(name): dg.AssetIn(key=key) for name, key in backtests.items()},
        code_version=code_version("strategy_comparison", sorted(backtests)),
        description="Every strategy of the deployment side by side: its stitched out-of-sample "
        "equity rebased to 1 on the sessions all of them cover, its metrics over that span "
        "(like for like) and the correlation of the strategies' daily returns. One row per "
        "(date, strategy).",
    )
    def strategy_comparison(context: dg.AssetExecutionContext, tracking: MlflowTracking,
                            **oos: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        curves = {names[key]: frame.set_index("date")["equity"] for key, frame in oos.items()}
        try:
            result = compare(curves)
        except ValueError as exc:
            raise dg.Failure(str(exc)) from None
        version = data_fingerprint(pd.concat(list(oos.values()), keys=list(oos)))
        with tracking.run(context, experiment=COMPARISON_EXPERIMENT,
                          run_name="strategy comparison", params={"strategies": sorted(curves)},
                          data_version=version) as run:
            image = run.log_figure(comparison_figure(result), "plots/comparison.png",
                                   dpi=PLOT_DPI)
            run.log_frame(result.metrics.reset_index(names="strategy"), "metrics.csv")
            run.log_frame(result.correlation.reset_index(names="strategy"), "correlation.csv")
            run.log_frame(result.curves.reset_index(names="date"), "curves.csv")
            run.log_metrics({f"{name}.{metric}": float(value)
                             for name, row in result.metrics.iterrows()
                             for metric, value in row.items() if pd.notna(value)})
            url, link = run.url, run.artifact_url(image)
        return dg.Output(_long(result), metadata=_metadata(result, url, link))

    return [strategy_comparison]


def _long(result: Comparison) -> pd.DataFrame:
    frame = result.curves.rename_axis(index="date", columns="strategy").stack()
    return frame.rename("equity").reset_index()


def _metadata(result: Comparison, url: str | None, image: str | None) -> dict[str, object]:
    first, last = result.curves.index[[0, -1]]
    plot = (f"![comparison]({image})" if image else report.markdown_image(
        report.png_base64(comparison_figure(result)), "comparison"))
    meta: dict[str, object] = {
        "common_span": dg.MetadataValue.text(
            f"{first:%Y-%m-%d}..{last:%Y-%m-%d} ({len(result.curves)} sessions all strategies "
            "cover; the metrics are over this span only)"),
        "metrics": table(result.metrics.round(4).reset_index(names="strategy"), 50),
        "return_correlation": table(
            result.correlation.round(3).reset_index(names="strategy"), 50),
        "own_spans": table(result.spans.reset_index(names="strategy"), 50),
        "plot_comparison": dg.MetadataValue.md(plot),
    }
    if url:
        meta["mlflow_run"] = dg.MetadataValue.url(url)
    return meta | frame_metadata(_long(result))
