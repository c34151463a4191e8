"""How the research-to-execution chain grows with funds, years and factors.

For each grid point (funds × years × factors) the generated sample market
(:mod:`rotation.sources.sample`) goes through every stage, each stage in a FRESH subprocess the
way a Dagster run worker executes one step: it imports, loads the previous stage's output from
the work folder (timed apart, as ``load``), runs the stage (timed) and writes its output. The
stages call the same Dagster-free ``rotation/`` functions the assets call; Dagster itself
(event log, IO manager per partition, MLflow) is NOT in these figures — ``--dagster`` adds one
full rebuild through Dagster (``benchmarks.research``'s path) on the sample source for that.

Stages (what each one runs):

- ``backfill``  generate the market, ``adjust_bars``, write the adjusted bars (one Parquet file)
- ``factors``   ``walkforward.prepare``: panels, factor kernels, cross-section processing,
  eligibility, market panels, labels
- ``screen``    ``walkforward.screen_windows`` over every walk-forward window (rank IC screen)
- ``search``    ``walkforward.evaluate_window`` for every window (combination search, vectorbt
  check of the finalists, out-of-sample result)
- ``backtest``  ``stitched_targets`` + ``oos_backtest`` (the stitched out-of-sample backtest)
- ``target``    ``latest_targets`` (the newest winner on the latest session)
- ``approval``  ``rotation.risk.check_signal`` on that target
- ``execution`` ``rotation.orders.plan_orders`` from cash + ``rotation.risk.check_orders``
  (ledger and venue writes are not included)

Factor counts above the strategy's 25 add window variants of its own factors as configuration
entries (``{name, kernel, params, unit, direction}``, the YAML form), e.g. ``momentum_40``.

Printed per stage: seconds, peak RSS of the stage's process, cost per fund-day (µs) and the
growth of that cost against the 60-fund run of the same years × factors (1.0 = linear in
funds). Results go to JSON; ``--plot`` draws the cost per fund-day per stage.

    python -m benchmarks.scale                       # quick: 60 and 120 funds × 5 years × 25
    python -m benchmarks.scale --funds 60 250 1000 --years 10 20 --factors 25 50 100 \\
        --json docs/scale.json --plot docs/scale.png
"""

from __future__ import annotations

import argparse
import json
import os
import pickle
import resource
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
STAGES = ("backfill", "factors", "screen", "search", "backtest", "target", "approval",
          "execution")
STRATEGY = "etf_rotation_sample"
END = "2025-12-31"
SESSIONS_PER_YEAR = 244
# Processes the search stage spreads the windows over (--workers; 1: in the stage's process).
WORKERS = 1
# Targets of issue 20 at 1,000 funds × 20 years × 50 factors.
TARGET_SECONDS = 600.0
TARGET_MB = 8192.0
TARGET_GROWTH = 1.5


@dataclass(frozen=True)
class Point:
    funds: int
    years: int
    factors: int

    @property
    def label(self) -> str:
        return f"{self.funds}f×{self.years}y×{self.factors}k"


@dataclass
class StageResult:
    stage: str
    seconds: float
    load_seconds: float
    peak_mb: float
    fund_days: int
    windows: int
    # Peak resident memory of the largest window worker (0: none ran); a forked worker's
    # resident pages include those it shares with the stage's process.
    worker_peak_mb: float = 0.0

    @property
    def us_per_fund_day(self) -> float:
        return self.seconds / max(self.fund_days, 1) * 1e6


# -- configuration ------------------------------------------------------------------------------


def start_of(years: int) -> str:
    """First day of a history of ``years`` calendar years ending at :data:`END`."""
    return f"{int(END[:4]) - years + 1}-01-01"


def factor_entries(base: Sequence[Any], count: int) -> list[Any]:
    """``count`` factor specs: the strategy's own first, then window variants of them (×1.5,
    ×2, ×3 … of a single-``window`` kernel) until there are enough. Errors when the base
    factors cannot make that many distinct variants."""
    from rotation.factors.registry import factor_specs_from_config

    specs = list(base)[:count]
    names = {s.name for s in specs}
    extra: list[dict[str, Any]] = []
    for mult in (1.5, 2.0, 3.0, 4.0, 0.5, 2.5, 5.0, 6.0):
        for s in base:
            if len(specs) + len(extra) >= count:
                break
            window = s.params.get("window")
            if not isinstance(window, int) or set(s.params) - {"window", "scale", "k_std"}:
                continue
            new = max(round(window * mult), 3)
            name = f"{s.kernel}_{new}"
            if name in names or new > 250:
                continue
            names.add(name)
            extra.append({"name": name, "kernel": s.kernel, "unit": s.unit,
                          "direction": int(s.direction),
                          "params": {**s.params, "window": new},
                          "description": f"{s.name} over {new} sessions (scale benchmark)"})
    specs += factor_specs_from_config(extra)
    if len(specs) < count:
        raise ValueError(f"scale: cannot make {count} distinct factors from the strategy's "
                         f"{len(base)} (got {len(specs)})")
    return specs


def strategy_for(factors: int) -> Any:
    from rotation.strategy import load_strategy

    base = load_strategy(STRATEGY, warn=False)
    return base.model_copy(update={"factors": tuple(factor_entries(base.factor_specs, factors))})


# -- the stages (each runs in its own process) ---------------------------------------------------


def _save(work: Path, name: str, obj: object) -> None:
    with open(work / f"{name}.pkl", "wb") as fh:
        pickle.dump(obj, fh, protocol=pickle.HIGHEST_PROTOCOL)


def _load(work: Path, name: str) -> Any:
    with open(work / f"{name}.pkl", "rb") as fh:
        return pickle.load(fh)


def _universe_and_specs(point: Point) -> tuple[Any, Any]:
    from rotation.sources.sample import SampleMarketSpec, sample_instruments

    spec = SampleMarketSpec(n_funds=point.funds, start=start_of(point.years), end=END)
    return spec, sample_instruments(spec)


def stage_backfill(point: Point, work: Path) -> Callable[[], dict[str, int]]:
    from rotation.adjust import adjust_bars
    from rotation.sources.sample import generate_sample_market

    spec, _ = _universe_and_specs(point)

    def run() -> dict[str, int]:
        adjusted = adjust_bars(generate_sample_market(spec))
        adjusted.to_parquet(work / "adjusted.parquet", index=False)
        return {"fund_days": len(adjusted)}
    return run


def stage_factors(point: Point, work: Path) -> Callable[[], dict[str, int]]:
    import pandas as pd

    from assets.walk_forward import warmup_sessions
    from rotation import walkforward as wf
    from rotation.cross_section import CrossSectionConfig

    _, instruments = _universe_and_specs(point)
    strategy = strategy_for(point.factors)
    bars = pd.read_parquet(work / "adjusted.parquet")

    def run() -> dict[str, int]:
        u = strategy.universe
        universe = wf.resolve_universe(bars["symbol"].unique(), exclude=u.exclude,
                                       benchmark=u.benchmark, defensive=u.defensive)
        data = wf.prepare(bars, strategy.factor_specs, CrossSectionConfig(), universe,
                          instruments, strategy.horizons)
        windows = wf.windows_for(data, strategy.wfo_config, warmup_sessions(strategy))
        _save(work, "data", data)
        _save(work, "windows", windows)
        return {"fund_days": len(bars), "windows": len(windows)}
    return run


def stage_screen(point: Point, work: Path) -> Callable[[], dict[str, int]]:
    from rotation import walkforward as wf

    strategy = strategy_for(point.factors)
    data, windows = _load(work, "data"), _load(work, "windows")

    def run() -> dict[str, int]:
        screens = wf.screen_windows(data, windows, strategy.screening_horizon,
                                    strategy.select_kwargs(), strategy.search.min_factors)
        chosen = [s.loc[s["selected"], "factor"].tolist() for s in screens]
        _save(work, "chosen", chosen)
        return {}
    return run


def stage_search(point: Point, work: Path) -> Callable[[], dict[str, int]]:
    from assets.walk_forward import search_space
    from rotation import walkforward as wf

    strategy = strategy_for(point.factors)
    data, windows, chosen = _load(work, "data"), _load(work, "windows"), _load(work, "chosen")

    def run() -> dict[str, int]:
        panel = data.search_panel(strategy.portfolio_config())
        space, bcfg = search_space(strategy), strategy.backtest_config()
        jobs = list(zip(windows, chosen, strict=True))
        winners = [(result.window, result.winner) for result in wf.evaluate_windows(
            data, panel, jobs, space, bcfg, workers=WORKERS)]
        _save(work, "winners", winners)
        return {}
    return run


def stage_backtest(point: Point, work: Path) -> Callable[[], dict[str, int]]:
    from rotation import walkforward as wf

    strategy = strategy_for(point.factors)
    data, winners = _load(work, "data"), _load(work, "winners")

    def run() -> dict[str, int]:
        targets = wf.stitched_targets(data, strategy.portfolio_config(), winners)
        wf.oos_backtest(data, targets, strategy.backtest_config())
        return {}
    return run


def stage_target(point: Point, work: Path) -> Callable[[], dict[str, int]]:
    from rotation import walkforward as wf

    strategy = strategy_for(point.factors)
    data, winners = _load(work, "data"), _load(work, "winners")

    def run() -> dict[str, int]:
        window, winner = winners[-1]
        day, table = wf.latest_targets(data, strategy.portfolio_config(), winner, window)
        last_close = data.market.close.loc[day].dropna()
        _save(work, "target", (day, table["weight"].to_dict(),
                               {str(k): float(v) for k, v in last_close.items()}))
        return {}
    return run


def stage_approval(point: Point, work: Path) -> Callable[[], dict[str, int]]:
    from rotation.risk import RiskLimits, check_signal

    day, weights, last_close = _load(work, "target")

    def run() -> dict[str, int]:
        held = {s: w for s, w in weights.items() if w > 0}
        check_signal(held, as_of=day.date(), latest_session=day.date(), sessions_between=0,
                     universe=list(last_close), halted=(), previous_weights={},
                     failed_checks=(), data_as_of=day.date(), drawdown=0.0,
                     limits=RiskLimits())
        return {}
    return run


def stage_execution(point: Point, work: Path) -> Callable[[], dict[str, int]]:
    from rotation.orders import plan_orders
    from rotation.risk import RiskLimits, check_orders, order_check_of

    strategy = strategy_for(point.factors)
    _, weights, last_close = _load(work, "target")

    def run() -> dict[str, int]:
        cash = 1_000_000.0
        held = {s: w for s, w in weights.items() if w > 0 and s in last_close}
        orders = plan_orders(held, {}, cash, last_close, costs=strategy.cost_model)
        checks = [order_check_of(o, f"bench-{i}") for i, o in enumerate(orders)]
        value = sum(o.notional for o in orders if o.side == "buy")
        check_orders(checks, last_close=last_close, limit_up_close=(), limit_down_close=(),
                     halted=(), committed_notional=0.0, equity=cash,
                     positions_value_after=value, limits=RiskLimits())
        return {}
    return run


STAGE_FUNCTIONS: dict[str, Callable[[Point, Path], Callable[[], dict[str, int]]]] = {
    "backfill": stage_backfill, "factors": stage_factors, "screen": stage_screen,
    "search": stage_search, "backtest": stage_backtest, "target": stage_target,
    "approval": stage_approval, "execution": stage_execution,
}


def peak_mb(who: int = resource.RUSAGE_SELF) -> float:
    """Peak resident memory of this process (or of its largest finished child, with
    ``RUSAGE_CHILDREN``); Linux reports kB."""
    return resource.getrusage(who).ru_maxrss / 1024


def run_stage(stage: str, point: Point, work: Path) -> dict[str, float]:
    """One stage in this process: load (timed apart), run (timed); the child's JSON line."""
    t0 = time.perf_counter()
    run = STAGE_FUNCTIONS[stage](point, work)
    loaded = time.perf_counter()
    extra = run()
    done = time.perf_counter()
    return {"seconds": done - loaded, "load_seconds": loaded - t0, "peak_mb": peak_mb(),
            "worker_peak_mb": peak_mb(resource.RUSAGE_CHILDREN),
            **{k: float(v) for k, v in extra.items()}}


# -- the driver ---------------------------------------------------------------------------------


def measure(point: Point, work: Path, stages: Sequence[str] = STAGES, *,
            verbose: bool = False, workers: int = 1) -> list[StageResult]:
    """Every stage of ``point`` in a fresh subprocess, in order (a failure raises)."""
    out: list[StageResult] = []
    fund_days = windows = 0
    for stage in stages:
        cmd = [sys.executable, "-m", "benchmarks.scale", "--child", stage, "--work", str(work),
               "--funds", str(point.funds), "--years", str(point.years),
               "--factors", str(point.factors), "--workers", str(workers)]
        proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise RuntimeError(f"scale {point.label}: stage {stage} failed "
                               f"(exit {proc.returncode}):\n{proc.stderr[-3000:]}")
        row = json.loads(proc.stdout.strip().splitlines()[-1])
        fund_days = int(row.get("fund_days", fund_days))
        windows = int(row.get("windows", windows))
        out.append(StageResult(stage=stage, seconds=row["seconds"],
                               load_seconds=row["load_seconds"], peak_mb=row["peak_mb"],
                               fund_days=fund_days, windows=windows,
                               worker_peak_mb=row["worker_peak_mb"]))
        if verbose:
            workers_mb = (f", children {row['worker_peak_mb']:.0f} MB"
                          if row["worker_peak_mb"] else "")
            print(f"  {point.label} {stage:<10} {row['seconds']:8.2f} s "
                  f"(load {row['load_seconds']:.1f} s) peak {row['peak_mb']:.0f} MB"
                  f"{workers_mb}", flush=True)
    return out


def growth(results: dict[Point, list[StageResult]]) -> dict[tuple[Point, str], float]:
    """Cost per fund-day of each stage over the same stage's cost at the 60-fund run with the
    same years and factors (absent when that run is not in the grid)."""
    out: dict[tuple[Point, str], float] = {}
    for point, rows in results.items():
        base = results.get(Point(60, point.years, point.factors))
        if base is None:
            continue
        by_stage = {r.stage: r for r in base}
        for r in rows:
            ref = by_stage.get(r.stage)
            if ref is not None and ref.us_per_fund_day > 0:
                out[(point, r.stage)] = r.us_per_fund_day / ref.us_per_fund_day
    return out


def table(results: dict[Point, list[StageResult]]) -> str:
    ratios = growth(results)
    lines = [f"{'point':<18}{'stage':<11}{'seconds':>9}{'load s':>8}{'peak MB':>9}"
             f"{'µs/fund-day':>13}{'vs 60 funds':>12}"]
    for point, rows in results.items():
        for r in rows:
            ratio = ratios.get((point, r.stage))
            lines.append(f"{point.label:<18}{r.stage:<11}{r.seconds:>9.2f}{r.load_seconds:>8.1f}"
                         f"{r.peak_mb:>9.0f}{r.us_per_fund_day:>13.3f}"
                         f"{'' if ratio is None else f'{ratio:.2f}x':>12}")
        total = sum(r.seconds for r in rows)
        lines.append(f"{point.label:<18}{'TOTAL':<11}{total:>9.2f}"
                     f"{sum(r.load_seconds for r in rows):>8.1f}"
                     f"{max(r.peak_mb for r in rows):>9.0f}"
                     f"{total / max(rows[0].fund_days, 1) * 1e6:>13.3f}"
                     f"   ({rows[0].fund_days} fund-days, {rows[-1].windows} windows)")
    return "\n".join(lines)


def to_json(results: dict[Point, list[StageResult]]) -> list[dict[str, Any]]:
    ratios = growth(results)
    return [{**asdict(p), "stages": [{**asdict(r), "us_per_fund_day": r.us_per_fund_day,
                                       "growth_vs_60": ratios.get((p, r.stage))}
                                      for r in rows]}
            for p, rows in results.items()]


def from_json(paths: Sequence[Path]) -> dict[Point, list[StageResult]]:
    """Results saved by ``--json`` (later files replace a point of earlier ones)."""
    out: dict[Point, list[StageResult]] = {}
    for path in paths:
        for row in json.loads(path.read_text(encoding="utf-8"))["points"]:
            point = Point(row["funds"], row["years"], row["factors"])
            out[point] = [StageResult(**{k: v for k, v in stage.items()
                                         if k in StageResult.__dataclass_fields__})
                          for stage in row["stages"]]
    return dict(sorted(out.items(), key=lambda kv: (kv[0].years, kv[0].factors, kv[0].funds)))


def plot(results: dict[Point, list[StageResult]], path: Path) -> None:
    """Cost per fund-day of each stage against the number of funds, one panel per
    years × factors."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = sorted({(p.years, p.factors) for p in results})
    fig, axes = plt.subplots(1, len(groups), figsize=(5.5 * len(groups), 4.2), squeeze=False)
    for ax, (years, factors) in zip(axes[0], groups, strict=True):
        points = sorted((p for p in results if (p.years, p.factors) == (years, factors)),
                        key=lambda p: p.funds)
        for stage in STAGES:
            xs, ys = [], []
            for p in points:
                row = next((r for r in results[p] if r.stage == stage), None)
                if row is not None and row.seconds > 0:
                    xs.append(p.funds)
                    ys.append(row.us_per_fund_day)
            if xs:
                ax.plot(xs, ys, marker="o", label=stage)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("funds")
        ax.set_ylabel("µs per fund-day")
        ax.set_title(f"{years} years × {factors} factors")
        ax.grid(True, which="both", alpha=0.3)
    axes[0][-1].legend(fontsize=8, loc="best")
    fig.suptitle("Cost per fund-day by stage (flat = linear growth)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def dagster_rebuild(funds: int, years: int) -> dict[str, float]:
    """Market backfill and the full research rebuild (3 jobs) through Dagster on a scratch
    PostgreSQL instance, on the sample source (at most the settings' 60 funds)."""
    import dagster as dg

    from benchmarks.scratch import scratch_postgres_home

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    os.environ["ETF_STRATEGY"] = STRATEGY
    os.environ["ETF_MARKET_DATA__SOURCE"] = "sample"
    os.environ["ETF_MARKET_DATA__SAMPLE_FUNDS"] = str(funds)
    os.environ["ETF_MARKET_DATA__SAMPLE_START"] = start_of(years)
    os.environ["ETF_MARKET_DATA__SAMPLE_END"] = END
    from orchestration.definitions import build_definitions
    from orchestration.instance import configure_event_batching
    from orchestration.runs import full_history, rebuild_research, run_range
    from orchestration.settings import load_settings

    configure_event_batching()
    with scratch_postgres_home() as scratch:
        os.environ["ETF_HOME"] = str(scratch.root)
        defs = build_definitions(load_settings())
        with dg.DagsterInstance.from_config(str(scratch.dagster_home)) as instance:
            start, end = full_history(defs)
            t0 = time.perf_counter()
            ok = run_range(defs, instance, start, end, log_level="WARNING").success
            backfill_s = time.perf_counter() - t0
            t0 = time.perf_counter()
            results = rebuild_research(defs, instance)
            rebuild_s = time.perf_counter() - t0
            ok = ok and all(r.success for r in results)
    return {"funds": funds, "years": years, "backfill_seconds": backfill_s,
            "rebuild_seconds": rebuild_s, "peak_mb": peak_mb(), "ok": float(ok)}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--funds", type=int, nargs="+", default=[60, 120])
    parser.add_argument("--years", type=int, nargs="+", default=[5])
    parser.add_argument("--factors", type=int, nargs="+", default=[25])
    parser.add_argument("--stages", nargs="+", choices=STAGES, default=list(STAGES))
    parser.add_argument("--workers", type=int, default=1,
                        help="processes the search stage spreads the windows over")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument("--plot", type=Path, help="save the cost-per-fund-day plot here")
    parser.add_argument("--dagster", action="store_true",
                        help="also one full rebuild through Dagster at the smallest point "
                             "(sample source, ≤ 60 funds)")
    parser.add_argument("--replot", type=Path, nargs="+",
                        help="no runs: merge these results JSON files, print the table and "
                             "(with --plot) draw it")
    parser.add_argument("--child", choices=STAGES, help=argparse.SUPPRESS)
    parser.add_argument("--work", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.child:
        global WORKERS
        WORKERS = args.workers
        point = Point(args.funds[0], args.years[0], args.factors[0])
        print(json.dumps(run_stage(args.child, point, args.work)))
        return 0

    if args.replot:
        merged = from_json(args.replot)
        print(table(merged))
        if args.plot:
            plot(merged, args.plot)
        return 0
    results: dict[Point, list[StageResult]] = {}
    for years in args.years:
        for factors in args.factors:
            for funds in args.funds:
                point = Point(funds, years, factors)
                with tempfile.TemporaryDirectory(prefix="etf_scale_") as tmp:
                    t0 = time.perf_counter()
                    results[point] = measure(point, Path(tmp), args.stages, verbose=True,
                                             workers=args.workers)
                    wall = time.perf_counter() - t0
                print(f"{point.label}: {wall:.1f} s wall (fresh processes, loads included)",
                      flush=True)
    print(f"\nscale benchmark, cpus {os.cpu_count()}, search workers {args.workers}, load average "
          f"{' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    print(table(results))
    for point, rows in results.items():
        if (point.funds, point.years, point.factors) == (1000, 20, 50):
            total = sum(r.seconds + r.load_seconds for r in rows)
            peak = max(r.peak_mb for r in rows)
            print(f"target point {point.label}: {total:.0f} s (≤ {TARGET_SECONDS:.0f}: "
                  f"{'MET' if total <= TARGET_SECONDS else 'MISSED'}), peak {peak:.0f} MB "
                  f"(≤ {TARGET_MB:.0f}: {'MET' if peak <= TARGET_MB else 'MISSED'})")
    payload: dict[str, Any] = {"load_average": os.getloadavg(), "cpus": os.cpu_count(),
                               "workers": args.workers,
                               "points": to_json(results)}
    if args.dagster:
        small = min(results, key=lambda p: (p.funds, p.years))
        payload["dagster"] = dagster_rebuild(min(small.funds, 60), small.years)
        d = payload["dagster"]
        print(f"\nthrough Dagster ({d['funds']} funds × {d['years']} years, sample strategy): "
              f"backfill {d['backfill_seconds']:.1f} s, research rebuild "
              f"{d['rebuild_seconds']:.1f} s, peak {d['peak_mb']:.0f} MB")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(payload, indent=1), encoding="utf-8")
    if args.plot:
        plot(results, args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
