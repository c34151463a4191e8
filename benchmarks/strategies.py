"""The research rebuild with three strategies against one (issue 15): wall time, peak memory,
and proof that the shared stages are computed once, not once per strategy.

Two scenarios on cn_etf_akshare_qfq_2020, each on a fresh PostgreSQL-backed Dagster instance
(scratch database, dropped afterwards) and a fresh home with a strategy folder of its own:

- ``one``: the deployment's strategy, etf_rotation_akshare, alone in its folder;
- ``three``: the same beside two more strategies on the same data (``--beside``): by default
  the classic ma_cross_akshare and macd_akshare of ``config/strategies``, ``variants`` for two
  variants of it with other names and factor lists (overlapping factors, and factors only they
  use), or any strategy files.

Each scenario runs in fresh subprocesses: one backfills the market data (timed on its own, not
part of the rebuild), the next rebuilds the research of every strategy
(``orchestration.runs.rebuild_research``: prefix "" for the deployment's strategy, "<name>_"
for the others), so the peak RSS printed for the rebuild is the rebuild's own and not the
backfill's left-over heap. The rebuild counts every materialisation of its runs: ``factors``
must be materialised exactly once in all and ``adjusted_bars`` not at all; otherwise a shared
stage was recomputed per strategy and the benchmark exits 1. The ratios three / one are of
the same run on the same machine; the rebuild's wall is split into the shared part (the
``factors`` step) and the per-strategy part (everything else).

    python -m benchmarks.strategies [--beside variants | --beside FILE FILE] [--start DATE]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import yaml

from benchmarks.scratch import scratch_postgres_home

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASET = "cn_etf_akshare_qfq_2020"
PRIMARY = "etf_rotation_akshare"
STRATEGY_FILES = ROOT / "config" / "strategies"
SHARED_STAGES = ("factors", "adjusted_bars")
# What the rebuild may materialise of the shared stages, whatever the number of strategies:
# the factor panel once (the union of every strategy's factors), the market data never (the
# backfill stored it).
EXPECTED = {"factors": 1, "adjusted_bars": 0}
# The classic strategies beside the rotation when the folder holds them (issue 15 item 2).
CLASSIC = ("ma_cross_akshare", "macd_akshare")
# Otherwise (``--beside variants``) two variants of the deployment's strategy: other names,
# factor lists that overlap it, and factors only they use (ma_cross_10_60, volatility_60,
# sharpe_60, price_position_60), so the shared panel is the union of three lists. Everything
# else is the deployment's file.
VARIANTS: dict[str, list[str]] = {
    "akshare_trend": ["momentum_20", "momentum_60", "momentum_120", "slope_r2_20", "adx_14",
                      "breakout_20", "ma_cross_5_20", "ma_cross_10_60", "macd_hist_12_26_9"],
    "akshare_defensive": ["volatility_20", "volatility_60", "sharpe_20", "sharpe_60",
                          "calmar_60", "max_drawdown_60", "price_position_60",
                          "garman_klass_20", "corr_market_20"],
}


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _load() -> str:
    one, five, fifteen = os.getloadavg()
    return f"{one:.2f} {five:.2f} {fifteen:.2f}"


# --- the strategy folders ----------------------------------------------------------------


def _write_folder(folder: Path, beside: Sequence[str]) -> None:
    """The deployment's strategy file, and the files of the strategies run beside it."""
    folder.mkdir(parents=True)
    shutil.copy(STRATEGY_FILES / f"{PRIMARY}.yaml", folder / f"{PRIMARY}.yaml")
    if list(beside) == ["variants"]:
        primary = yaml.safe_load((STRATEGY_FILES / f"{PRIMARY}.yaml").read_text())
        for name, factors in VARIANTS.items():
            variant = {**primary, "name": name, "factors": factors,
                       "description": f"{PRIMARY} on another factor list (benchmark variant)"}
            (folder / f"{name}.yaml").write_text(yaml.safe_dump(variant, sort_keys=False))
        return
    for file in beside:
        path = Path(file) if file.endswith((".yaml", ".yml")) else STRATEGY_FILES / f"{file}.yaml"
        if not path.is_file():
            raise SystemExit(f"--beside {file}: no strategy file {path}")
        shutil.copy(path, folder / path.name)


# --- the children --------------------------------------------------------------------------


def _settings(home: Path, start: str | None) -> Any:
    from orchestration.settings import load_settings

    return load_settings(
        home=home / "etf", strategy=PRIMARY, strategy_dir=home / "strategies",
        partitions_start=start,
        market_data={"source": "files", "dataset": DATASET, "files_root": str(SHARED / DATASET)})


def _backfill(home: Path, dagster_home: Path, start: str | None) -> dict[str, Any]:
    """The market data of the whole history as one run (set-up, timed on its own)."""
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.runs import full_history, run_range

    defs = build_definitions(_settings(home, start))
    first, last = full_history(defs)
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        started = time.perf_counter()
        result = run_range(defs, instance, first, last, log_level="WARNING")
        seconds = time.perf_counter() - started
    if not result.success:
        raise SystemExit(f"market data backfill {first}..{last} failed")
    return {"seconds": seconds, "peak_mb": _peak_mb(), "first": first, "last": last}


def _rebuild(home: Path, dagster_home: Path, start: str | None) -> dict[str, Any]:
    """Every strategy's research rebuild, the deployment's first (it owns the shared jobs)."""
    import dagster as dg

    from orchestration.definitions import build_definitions, deployment_strategies
    from orchestration.runs import rebuild_research, window_keys

    settings = _settings(home, start)
    defs = build_definitions(settings)
    deployed = deployment_strategies(settings)
    strategies, counts = [], Counter[str]()
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        for strategy in (deployed.strategy, *deployed.others):
            prefix = "" if strategy is deployed.strategy else f"{strategy.name}_"
            started = time.perf_counter()
            results = rebuild_research(defs, instance, prefix=prefix)
            seconds = time.perf_counter() - started
            counts.update(_materialised(results))
            strategies.append({
                "name": strategy.name, "seconds": seconds, "factors": _own_factors(strategy),
                "windows": len(window_keys(defs, prefix)), "shared_s": _factors_step_s(results),
                "ok": _rebuilt(results, prefix)})
    return {"strategies": strategies, "peak_mb": _peak_mb(),
            "materialised": {stage: counts[stage] for stage in SHARED_STAGES}}


def _own_factors(strategy: Any) -> int:
    """The factors the strategy screens (a classic strategy screens none: it reads no panel)."""
    return 0 if getattr(strategy, "classic", None) is not None else len(strategy.factor_specs)


def _rebuilt(results: Sequence[Any], prefix: str) -> bool:
    """Every run succeeded up to the portfolio job (a classic strategy has no research_job)."""
    return bool(results) and all(r.success for r in results) and \
        results[-1].dagster_run.job_name == f"{prefix}portfolio_job"


def _materialised(results: Sequence[Any]) -> Counter[str]:
    """Materialisation events per asset (one per partition) over the runs."""
    return Counter(e.asset_key.to_user_string() for r in results
                   for e in r.get_asset_materialization_events() if e.asset_key)


def _factors_step_s(results: Sequence[Any]) -> float:
    """Wall of the shared factor panel's step in these runs (0 when they did not compute it)."""
    return sum(e.event_specific_data.duration_ms / 1000 for r in results for e in r.all_events
               if e.event_type_value == "STEP_SUCCESS" and e.step_key == "factors")


def _child(stage: str, home: Path, dagster_home: Path, start: str | None) -> int:
    from orchestration.instance import configure_event_batching

    os.environ.setdefault("GX_ANALYTICS_ENABLED", "false")
    configure_event_batching()
    measure = _backfill if stage == "backfill" else _rebuild
    print(json.dumps(measure(home, dagster_home, start)))
    return 0


# --- the parent ----------------------------------------------------------------------------


def _run_child(stage: str, home: Path, dagster_home: Path, start: str | None
               ) -> dict[str, Any]:
    argv = [sys.executable, "-m", "benchmarks.strategies", "--child", stage,
            "--home", str(home), "--dagster-home", str(dagster_home)]
    out = subprocess.run(argv + (["--start", start] if start else []), cwd=ROOT,
                         capture_output=True, text=True, check=False)
    if out.returncode:
        print(out.stderr[-4000:], file=sys.stderr)
        raise SystemExit(f"the {stage} child failed (exit {out.returncode})")
    result: dict[str, Any] = json.loads(out.stdout.strip().splitlines()[-1])
    return result


def _scenario(beside: Sequence[str], start: str | None) -> dict[str, Any]:
    """One scenario on its own scratch database and home."""
    with scratch_postgres_home() as scratch:
        _write_folder(scratch.root / "strategies", beside)
        backfill = _run_child("backfill", scratch.root, scratch.dagster_home, start)
        rebuild = _run_child("rebuild", scratch.root, scratch.dagster_home, start)
    return {"backfill": backfill, "expected_strategies": 1 + _count_beside(beside), **rebuild}


def _count_beside(beside: Sequence[str]) -> int:
    return len(VARIANTS) if list(beside) == ["variants"] else len(beside)


def _totals(scenario: dict[str, Any]) -> tuple[float, float]:
    """The rebuild's wall and its shared part (the factor panel)."""
    rows = scenario["strategies"]
    return sum(s["seconds"] for s in rows), sum(s["shared_s"] for s in rows)


def _print_strategies(name: str, scenario: dict[str, Any]) -> None:
    for s in scenario["strategies"]:
        print(f"  {name:<6} {s['name']:<22} {s['factors']:>7} {s['windows']:>7} "
              f"{s['seconds']:>8.1f} {s['shared_s']:>9.1f}  {'ok' if s['ok'] else 'FAILED'}")


def _print_scenario(name: str, scenario: dict[str, Any]) -> None:
    wall, shared = _totals(scenario)
    made = scenario["materialised"]
    print(f"  {name:<6} {len(scenario['strategies']):>3} {scenario['backfill']['seconds']:>9.1f} "
          f"{wall:>8.1f} {shared:>7.1f} {wall - shared:>10.1f} {scenario['peak_mb']:>8.0f} "
          f"{made['factors']:>8} {made['adjusted_bars']:>14}")


def _report(one: dict[str, Any], three: dict[str, Any]) -> None:
    backfill = one["backfill"]
    print(f"research rebuild of {DATASET} ({backfill['first']}..{backfill['last']}), "
          f"cpus {os.cpu_count()}")
    print("  scenario strategy               factors windows   wall s  factors s")
    _print_strategies("one", one)
    _print_strategies("three", three)
    print("  scenario  n backfill s rebuild s shared s per-strat s  peak MB  factors "
          "adjusted_bars")
    _print_scenario("one", one)
    _print_scenario("three", three)
    (wall_1, shared_1), (wall_3, shared_3) = _totals(one), _totals(three)
    print(f"  ratio three/one: rebuild wall {wall_3 / wall_1:.2f}x, peak RSS "
          f"{three['peak_mb'] / one['peak_mb']:.2f}x; shared part {shared_3 / shared_1:.2f}x, "
          f"per-strategy part {(wall_3 - shared_3) / (wall_1 - shared_1):.2f}x")
    print(f"  backfill peak RSS (own process): one {one['backfill']['peak_mb']:.0f} MB, "
          f"three {three['backfill']['peak_mb']:.0f} MB")


def _failures(scenarios: dict[str, dict[str, Any]]) -> list[str]:
    """Every failed run and every shared stage recomputed (or not computed) in the rebuild."""
    failures = [f"{name}: {s['name']} rebuild FAILED" for name, scenario in scenarios.items()
                for s in scenario["strategies"] if not s["ok"]]
    failures += [f"{name}: {len(scenario['strategies'])} strategies ran, expected "
                 f"{scenario['expected_strategies']} (a refused file? see the warnings)"
                 for name, scenario in scenarios.items()
                 if len(scenario["strategies"]) != scenario["expected_strategies"]]
    for name, scenario in scenarios.items():
        for stage, expected in EXPECTED.items():
            made = scenario["materialised"][stage]
            if made != expected:
                failures.append(f"{name}: {stage} materialised {made} times in the rebuild of "
                                f"{len(scenario['strategies'])} strategies, expected {expected}"
                                " (a shared stage recomputed per strategy)")
    return failures


def _default_beside() -> list[str]:
    """The classic strategies when config/strategies holds them, else the variants."""
    if all((STRATEGY_FILES / f"{name}.yaml").is_file() for name in CLASSIC):
        return list(CLASSIC)
    return ["variants"]


def _arguments(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.strategies",
                                     description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--beside", nargs="+", default=_default_beside(), metavar="FILE",
                        help="the strategies beside etf_rotation_akshare in scenario three: "
                        "'variants' (two built-in variants of it) or strategy files (names in "
                        "config/strategies or paths); default: %(default)s")
    parser.add_argument("--start", default=None, metavar="YYYY-MM-DD",
                        help="a shorter history: the first session partition (default: the "
                        "data's first session)")
    parser.add_argument("--child", choices=("backfill", "rebuild"), help=argparse.SUPPRESS)
    parser.add_argument("--home", type=Path, help=argparse.SUPPRESS)
    parser.add_argument("--dagster-home", type=Path, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


def main(argv: list[str]) -> int:
    args = _arguments(argv)
    if args.child:
        return _child(args.child, args.home, args.dagster_home, args.start)
    load_before = _load()
    scenarios = {"one": _scenario([], args.start), "three": _scenario(args.beside, args.start)}
    _report(scenarios["one"], scenarios["three"])
    print(f"  load average (1/5/15 min): {load_before} before, {_load()} after")
    failures = _failures(scenarios)
    for failure in failures:
        print(f"  FAILED: {failure}", file=sys.stderr)
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
