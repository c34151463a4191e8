"""Research stage, first half: factors → rank-IC screening → selected factors (SPEC §4–§5).

Thin over :mod:`rotation`: factor kernels, T1_OPEN labels, rank IC and the selection rules.
These assets read every session of ``adjusted_bars`` (the whole history is their input).
"""

from collections.abc import Mapping, Sequence

import dagster as dg
import pandas as pd

from assets.code_version import code_version
from assets.metadata import frame_metadata
from assets.metadata import table as metadata_table
from resources.tracking import MlflowTracking
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


IC_COLUMNS = {
    "direction": "the sign the strategy declares for the factor (+1: higher is better)",
    "directed_icir": "ICIR × direction: positive when the factor works as declared",
    "icir": "mean daily rank IC / its standard deviation",
    "mean_ic": "mean daily Spearman rank IC against the T1_OPEN forward return",
    "t_nw": "Newey–West t statistic of the mean IC",
    "hit_rate": "share of days whose IC has the declared sign",
}


def ranked_by_direction(summary: pd.DataFrame, horizon: int) -> pd.DataFrame:
    """The factors of one horizon, best first by ICIR in their declared direction."""
    return (summary.loc[summary["horizon"] == horizon]
            .assign(direction=lambda t: t["direction"].astype(int),
                    directed_icir=lambda t: t["icir"] * t["direction"])
            .sort_values("directed_icir", ascending=False, na_position="last", kind="stable")
            .reset_index(drop=True))


def screen_outcome(selected: Sequence[str], tested: int) -> str:
    """What the full-history SPEC §5 screen decided, in words (the same sentence everywhere)."""
    if not selected:
        return (f"none of the {tested} factors passes the SPEC §5 screen on the full history; "
                "this screen is informative only: each walk-forward window screens its own "
                "in-sample sessions and fills up to the search's minimum with the best "
                "factors in their declared direction (wfo_windows says which and why)")
    return (f"{len(selected)} of {tested} factors pass the SPEC §5 screen on the full history "
            f"({', '.join(selected)}); each walk-forward window screens its own in-sample "
            "sessions (wfo_windows)")


def _log_screening(context: dg.AssetExecutionContext, tracking: MlflowTracking,
                   experiment: str, shown: pd.DataFrame, figures: Mapping[str, object]
                   ) -> dict[str, object]:
    """The screening's plots and table as an MLflow run; the plots shown inline in Dagster
    from the MLflow UI, with a link to the run."""
    with tracking.run(context, experiment=experiment, run_name="factor screening",
                      params={"factors": len(shown)}) as run:
        run.log_frame(shown, "factor_ic.csv")
        paths = {name: run.log_figure(fig, f"plots/{name}.png", dpi=80)
                 for name, fig in figures.items()}
        url = run.url
        images = {name: run.artifact_url(path) for name, path in paths.items()}
    meta: dict[str, object] = {}
    if url:
        meta["mlflow_run"] = dg.MetadataValue.url(url)
    for name, image in images.items():
        if image:
            meta[f"plot_{name}"] = dg.MetadataValue.md(f"![{name}]({image})")
    return meta


def union_of_factors(strategies: Sequence[Sequence[FactorSpec]]) -> list[FactorSpec]:
    """The factors of every strategy, each once (the shared ``factors`` asset computes them a
    single time); two strategies may not compute one factor name differently (a direction is
    each strategy's own hypothesis, read by its screening only)."""
    union: dict[str, FactorSpec] = {}
    for specs in strategies:
        for spec in specs:
            known = union.setdefault(spec.name, spec)
            if (known.kernel, known.unit, known.params) != (spec.kernel, spec.unit, spec.params):
                raise ValueError(f"factor {spec.name!r} is defined differently by two strategies "
                                 f"({known} and {spec}): give one of them another name")
    return list(union.values())


def factor_assets(cross_section_config: CrossSectionConfig, specs: Sequence[FactorSpec]
                  ) -> list[dg.AssetsDefinition]:
    """The factor panel shared by every strategy of the deployment (``specs``: their union)."""
    version = code_version("factors", specs, cross_section_config)

    @dg.asset(
        group_name=FACTORS_GROUP,
        kinds={"pandas", "numba"},
        description="Every configured factor per (date, fund), computed from adjusted bars up "
        "to each date's close, then coverage-filtered, winsorised and standardised per date.",
        code_version=version,
    )
    def factors(adjusted_bars: pd.DataFrame) -> dg.Output[pd.DataFrame]:
        panels = Panels.from_bars(adjusted_bars)
        raw = compute_factors(specs, panels)
        eligible = coverage(panels.close, cross_section_config, panels.turnover)
        standardised = {name: process(frame, eligible, cross_section_config)
                        for name, frame in raw.items()}
        long = factors_long(standardised)
        return dg.Output(
            long,
            metadata=frame_metadata(
                long,
                factors=metadata_table(factor_table(specs), limit=100),
                factor_count=len(specs),
            ),
        )

    return [factors]


def screening_assets(
    specs: Sequence[FactorSpec],
    horizons: Sequence[int] = DEFAULT_HORIZONS,
    selection_horizon: int = 5,
    select_kwargs: Mapping[str, float] | None = None,
    experiment: str | None = None,
) -> list[dg.AssetsDefinition]:
    """One strategy's screening of its own factors (``specs``) in the shared factor panel.
    ``experiment``: the MLflow experiment the screening's plots are logged to (None: the plots
    stay in the metadata as inline images)."""
    names = [s.name for s in specs]
    directions = {s.name: s.direction for s in specs}
    select_kwargs = dict(select_kwargs or {})
    versions = {
        "factor_ic": code_version("factor_ic", horizons, directions, selection_horizon),
        "factor_ic_daily": code_version("factor_ic_daily", names, horizons),
        "selected_factors": code_version("selected_factors", selection_horizon, select_kwargs,
                                         directions),
    }

    def own(factors: pd.DataFrame) -> pd.DataFrame:
        """This strategy's factors of the shared panel (which holds every strategy's)."""
        return factors.loc[factors["factor"].isin(names)]

    @dg.asset(
        group_name=SCREENING_GROUP,
        kinds={"pandas", "numba"},
        description="Daily cross-sectional Spearman rank IC of every factor against T1_OPEN "
        "forward returns for each horizon, with ICIR, Newey–West t, positive rate and decay.",
        code_version=versions["factor_ic"],
    )
    def factor_ic(context: dg.AssetExecutionContext, factors: pd.DataFrame,
                  adjusted_bars: pd.DataFrame, tracking: MlflowTracking
                  ) -> dg.Output[pd.DataFrame]:
        opens = adjusted_bars.pivot(index="date", columns="symbol", values="open").sort_index()
        labels = forward_returns(opens, horizons, "T1_OPEN")
        wide = _wide(own(factors))
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

        top = ranked_by_direction(summary, selection_horizon)
        best = top["factor"].head(6).tolist()
        signs = pd.Series({f: float(directions.get(f, 1)) for f in best})
        cumulative = (daily[selection_horizon][best].fillna(0.0) * signs).cumsum()
        decay = summary.pivot(index="horizon", columns="factor", values="mean_ic")[best] * signs
        decay.index = decay.index.astype(int)          # horizons as ticks: 1, 5, 10, 20
        figures = {
            "cumulative_ic": report.lines_figure(
                cumulative, title=f"cumulative rank IC in the declared direction, "
                f"H={selection_horizon} (best 6 by directed ICIR)", ylabel="sum of daily IC"),
            "ic_decay": report.lines_figure(
                decay, title="IC decay: mean IC in the declared direction by horizon",
                ylabel="mean IC", marker="o"),
        }
        shown = top[["factor", "direction", "directed_icir", "icir", "mean_ic", "t_nw",
                     "p_value", "hit_rate", "turnover"]].round(4)
        meta: dict[str, object] = {
            "dagster/row_count": dg.MetadataValue.int(len(summary)),
            "horizons": dg.MetadataValue.text(", ".join(f"{h} sessions" for h in horizons)),
            "first_date": dg.MetadataValue.text(str(factors["date"].min().date())),
            "last_date": dg.MetadataValue.text(str(factors["date"].max().date())),
            f"top_by_directed_icir_h{selection_horizon}": metadata_table(shown, 15, IC_COLUMNS),
            "ranking": dg.MetadataValue.text(
                "ranked by directed ICIR = ICIR × declared direction: a factor whose IC has "
                "the opposite sign of its declared direction ranks last, not first"),
        }
        if experiment is not None:
            meta |= _log_screening(context, tracking, experiment, shown, figures)
        else:
            meta["plots"] = dg.MetadataValue.md("\n\n".join(
                report.markdown_image(report.png_base64(f), n) for n, f in figures.items()))
        return dg.Output(summary, metadata=meta)

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
        frame = daily_ic(own(factors), adjusted_bars, horizons)
        means = frame.pivot_table(index="factor", columns="horizon", values="ic", aggfunc="mean")
        return dg.Output(frame, metadata=frame_metadata(
            frame,
            horizons=list(horizons),
            factor_count=int(frame["factor"].nunique()),
            days_per_horizon={str(h): int(n) for h, n in
                              frame.groupby("horizon")["date"].nunique().items()},
            mean_ic=metadata_table(means.rename(columns=lambda h: f"h{h}").reset_index(), 100),
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
        stats = factor_ic.loc[factor_ic["horizon"] == selection_horizon].set_index("factor")
        correlations = ic_stats.mean_pairwise_correlation(_wide(own(factors)))
        result = ic_stats.select_factors(stats, correlations=correlations, directions=directions,
                                         **select_kwargs)
        reasons = result.reasons.reset_index()
        reasons["selected"] = reasons["factor"].isin(result.selected)
        shown = reasons.sort_values(["selected", "factor"], ascending=[False, True])
        return dg.Output(
            reasons,
            metadata={
                "outcome": dg.MetadataValue.text(screen_outcome(result.selected, len(reasons))),
                "selected": dg.MetadataValue.json(result.selected),
                "selected_count": dg.MetadataValue.int(len(result.selected)),
                "tested": dg.MetadataValue.int(len(reasons)),
                "reasons": metadata_table(shown, 100),
                "horizon": dg.MetadataValue.int(selection_horizon),
            },
        )

    return [factor_ic, factor_ic_daily, selected_factors]
