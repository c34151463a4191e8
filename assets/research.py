"""Research stage, first half: factors → rank-IC screening → selected factors (SPEC §4–§5).

Thin over :mod:`rotation`: factor kernels, T1_OPEN labels, rank IC and the selection rules.
These assets read every session of ``adjusted_bars`` (the whole history is their input).
"""

from collections.abc import Mapping, Sequence

import dagster as dg
import pandas as pd

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


def research_assets(
    cross_section_config: CrossSectionConfig,
    specs: Sequence[FactorSpec],
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    selection_horizon: int = 5,
    select_kwargs: Mapping[str, float] | None = None,
) -> list[dg.AssetsDefinition]:
    directions = {s.name: s.direction for s in specs}
    select_kwargs = dict(select_kwargs or {})

    @dg.asset(
        group_name=FACTORS_GROUP,
        kinds={"pandas", "numba"},
        description="Every configured factor per (date, fund), computed from adjusted bars up "
        "to each date's close, then coverage-filtered, winsorised and standardised per date.",
        code_version="1",
    )
    def factors(adjusted_bars: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        panels = Panels.from_bars(adjusted_bars)
        raw = compute_factors(specs, panels)
        eligible = coverage(panels.close, cross_section_config)
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
        code_version="1",
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
        kinds={"pandas"},
        description="SPEC §5 selection on the full history (|mean IC|, positive rate in the "
        "declared direction, Benjamini–Hochberg FDR, redundancy removal) with the reason every "
        "factor is in or out. Walk-forward windows repeat this on in-sample data only.",
        code_version="1",
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

    return [factors, factor_ic, selected_factors]
