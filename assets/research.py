"""Research stage, first half: factors → rank-IC screening → selected factors (SPEC §4–§5).

Thin over :mod:`rotation`: factor kernels, T1_OPEN labels, rank IC and the selection rules.
These assets read every session of ``adjusted_bars`` (the whole history is their input).
"""

from collections.abc import Mapping, Sequence

import dagster as dg
import pandas as pd

from assets.code_version import code_version
from assets.metadata import frame_metadata, markdown
from rotation import ic as ic_stats
from rotation import report
from rotation.cross_section import CrossSectionConfig, coverage, process
from rotation.factors import FactorSpec, Panels, compute_factors, factor_table, factors_long
from rotation.labels import forward_returns

FACTORS_GROUP = "factors"
SCREENING_GROUP = "factor_screening"
DEFAULT_HORIZONS = (1, 5, 10, 20)


def _wide(long: pd.DataFrame) -> dict[str, pd.DataFrame]:
    return {
        str(name): part.pivot(index="date", columns="symbol", values="value").sort_index()
        for name, part in long.groupby("factor", sort=True)
    }


def daily_ic(factors: pd.DataFrame, adjusted_bars: pd.DataFrame, horizons: Sequence[int]
             ) -> pd.DataFrame:
    """Long frame ``date, horizon, factor, ic``: the daily cross-sectional Spearman rank IC of
    every factor against the T1_OPEN forward return of each horizon, as ``factor_ic`` computes
    it (``rotation.ic.rank_ic_many``); days without enough funds are left out."""
    opens = adjusted_bars.pivot(index="date", columns="symbol", values="open").sort_index()
    labels = forward_returns(opens, horizons, "T1_OPEN")
    wide = _wide(factors)
    parts = []
    for horizon in horizons:
        ics = ic_stats.rank_ic_many(wide, labels[horizon])
        ics.index.name, ics.columns.name = "date", "factor"
        long = ics.stack(future_stack=True).dropna().rename("ic").reset_index()
        long.insert(1, "horizon", horizon)
        parts.append(long)
    return pd.concat(parts, ignore_index=True).sort_values(
        ["date", "horizon", "factor"], ignore_index=True)


def research_assets(
    cross_section_config: CrossSectionConfig,
    specs: Sequence[FactorSpec],
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    selection_horizon: int = 5,
    select_kwargs: Mapping[str, float] | None = None,
) -> list[dg.AssetsDefinition]:
    directions = {s.name: s.direction for s in specs}
    select_kwargs = dict(select_kwargs or {})
    versions = {
        "factors": code_version("factors", specs, cross_section_config),
        "factor_ic": code_version("factor_ic", horizons, directions, selection_horizon),
        "factor_ic_daily": code_version("factor_ic_daily", horizons),
        "selected_factors": code_version("selected_factors", selection_horizon, select_kwargs,
                                         directions),
    }

    @dg.asset(
        group_name=FACTORS_GROUP,
        kinds={"pandas", "numba"},
        description="Every configured factor per (date, fund), computed from adjusted bars up "
        "to each date's close, then coverage-filtered, winsorised and standardised per date.",
        code_version=versions["factors"],
    )
    def factors(adjusted_bars: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        panels = Panels.from_bars(adjusted_bars)
        raw = compute_factors(specs, panels)
        eligible = coverage(panels.close, cross_section_config, panels.turnover)
        standardised = {name: process(frame, eligible, cross_section_config)
                        for name, frame in raw.items()}
        long = factors_long(standardised)
        table = factor_table(specs)
        return dg.Output(
            long,
            metadata=frame_metadata(
                long,
                factors=dg.MetadataValue.md(markdown(table, limit=100)),
                factor_count=len(specs),
            ),
        )

    @dg.asset(
        group_name=SCREENING_GROUP,
        kinds={"pandas", "numba"},
        description="Daily cross-sectional Spearman rank IC of every factor against T1_OPEN "
        "forward returns for each horizon, with ICIR, Newey–West t, positive rate and decay.",
        code_version=versions["factor_ic"],
    )
    def factor_ic(factors: pd.DataFrame, adjusted_bars: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        opens = adjusted_bars.pivot(index="date", columns="symbol", values="open").sort_index()
        labels = forward_returns(opens, horizons, "T1_OPEN")
        wide = _wide(factors)
        tables = []
        daily: dict[int, pd.DataFrame] = {}
        for horizon in horizons:
            ics = ic_stats.rank_ic_many(wide, labels[horizon])
            daily[horizon] = ics
            table = ic_stats.ic_summary_table(ics, horizon, directions)
            tables.append(table.reset_index())
        summary = pd.concat(tables, ignore_index=True)
        summary["turnover"] = summary["factor"].map(
            {name: ic_stats.factor_turnover(frame) for name, frame in wide.items()}
        )

        top = (summary.loc[summary["horizon"] == selection_horizon]
               .assign(abs_icir=lambda t: t["icir"].abs())
               .sort_values("abs_icir", ascending=False))
        fig, axes = plt.subplots(1, 2, figsize=(12, 4))
        cumulative = daily[selection_horizon][top["factor"].head(6)].fillna(0.0).cumsum()
        cumulative.plot(ax=axes[0], title=f"cumulative rank IC, H={selection_horizon}")
        decay = summary.pivot(index="horizon", columns="factor", values="mean_ic")
        decay[top["factor"].head(6)].plot(ax=axes[1], marker="o", title="IC decay (mean IC)")
        plot = report.markdown_image(report.png_base64(fig), "cumulative IC and decay")
        shown = top.drop(columns=["abs_icir"]).round(4)
        return dg.Output(
            summary,
            metadata={
                "dagster/row_count": dg.MetadataValue.int(len(summary)),
                "horizons": dg.MetadataValue.json(list(horizons)),
                f"top_by_icir_h{selection_horizon}": dg.MetadataValue.md(markdown(shown, 15)),
                "plots": dg.MetadataValue.md(plot),
                "first_date": dg.MetadataValue.text(str(factors["date"].min().date())),
                "last_date": dg.MetadataValue.text(str(factors["date"].max().date())),
            },
        )

    @dg.asset(
        group_name=SCREENING_GROUP,
        kinds={"pandas", "numba"},
        description="The daily rank IC series behind factor_ic, one row per (date, horizon, "
        "factor): the Spearman rank IC of the factor's cross-section on that date against the "
        "T1_OPEN forward returns of the horizon. Load it to plot, resample or test an IC series.",
        code_version=versions["factor_ic_daily"],
    )
    def factor_ic_daily(factors: pd.DataFrame, adjusted_bars: pd.DataFrame
                        ) -> dg.Output[pd.DataFrame]:
        frame = daily_ic(factors, adjusted_bars, horizons)
        means = frame.pivot_table(index="factor", columns="horizon", values="ic", aggfunc="mean")
        return dg.Output(frame, metadata=frame_metadata(
            frame,
            horizons=list(horizons),
            factor_count=int(frame["factor"].nunique()),
            days_per_horizon={str(h): int(n) for h, n in
                              frame.groupby("horizon")["date"].nunique().items()},
            mean_ic=dg.MetadataValue.md(markdown(means.round(4).reset_index(), 100)),
        ))

    @dg.asset(
        group_name=SCREENING_GROUP,
        kinds={"pandas"},
        description="SPEC §5 selection on the full history (|mean IC|, positive rate in the "
        "declared direction, Benjamini–Hochberg FDR, redundancy removal) with the reason every "
        "factor is in or out. Walk-forward windows repeat this on in-sample data only.",
        code_version=versions["selected_factors"],
    )
    def selected_factors(factor_ic: pd.DataFrame, factors: pd.DataFrame
                         ) -> dg.Output[pd.DataFrame]:
        table = factor_ic.loc[factor_ic["horizon"] == selection_horizon].set_index("factor")
        correlations = ic_stats.mean_pairwise_correlation(_wide(factors))
        result = ic_stats.select_factors(table, correlations=correlations, directions=directions,
                                         **select_kwargs)
        reasons = result.reasons.reset_index()
        reasons["selected"] = reasons["factor"].isin(result.selected)
        return dg.Output(
            reasons,
            metadata={
                "selected": dg.MetadataValue.json(result.selected),
                "selected_count": dg.MetadataValue.int(len(result.selected)),
                "tested": dg.MetadataValue.int(len(reasons)),
                "reasons": dg.MetadataValue.md(markdown(reasons.round(4), 100)),
                "horizon": dg.MetadataValue.int(selection_horizon),
            },
        )

    return [factors, factor_ic, factor_ic_daily, selected_factors]
