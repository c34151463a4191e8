"""``benchmarks/scale.py`` at a tiny size: the generator beyond the template, the factor grid
from configuration, the per-stage accounting and one stage in a fresh subprocess."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

from benchmarks import scale
from benchmarks.scale import Point, StageResult
from rotation.sources.sample import SampleMarketSpec, generate_sample_market, sample_instruments


def test_generator_reaches_a_thousand_funds_with_distinct_codes() -> None:
    spec = SampleMarketSpec(n_funds=1000, start="2025-12-01", end="2025-12-31")
    codes = [i.symbol for i in sample_instruments(spec)]
    assert len(codes) == len(set(codes)) == 1000
    assert all(len(c) == 6 and c.isdigit() for c in codes)
    bars = generate_sample_market(spec)
    assert bars["symbol"].nunique() == 1000
    # The first 120 funds keep their codes (and so their series) from before the extension.
    assert {"517800", "517899", "520100", "520979"} <= set(codes)
    with pytest.raises(ValueError, match="n_funds"):
        sample_instruments(SampleMarketSpec(n_funds=1021))


@pytest.mark.parametrize("count", [25, 50, 100])
def test_factor_grid_from_configuration(count: int) -> None:
    strategy = scale.strategy_for(count)
    names = [s.name for s in strategy.factor_specs]
    assert len(names) == len(set(names)) == count
    base = scale.strategy_for(25).factor_specs
    assert names[:25] == [s.name for s in base]  # the strategy's own factors come first


def test_start_of_years() -> None:
    assert scale.start_of(10) == "2016-01-01"
    assert scale.start_of(1) == "2025-01-01"


def _rows(seconds: dict[str, float], fund_days: int) -> list[StageResult]:
    return [StageResult(stage=s, seconds=v, load_seconds=0.5, peak_mb=100.0 + v,
                        fund_days=fund_days, windows=4) for s, v in seconds.items()]


def test_cost_per_fund_day_and_growth_against_sixty_funds() -> None:
    small, big = Point(60, 10, 25), Point(250, 10, 25)
    results = {small: _rows({"factors": 1.0, "search": 2.0}, 60_000),
               big: _rows({"factors": 250 / 60, "search": 4 * 250 / 60}, 250_000)}
    assert results[small][0].us_per_fund_day == pytest.approx(1e6 / 60_000)
    ratios = scale.growth(results)
    assert ratios[(small, "factors")] == pytest.approx(1.0)
    assert ratios[(big, "factors")] == pytest.approx(1.0)  # linear in funds
    assert ratios[(big, "search")] == pytest.approx(2.0)  # twice the cost per fund-day
    text = scale.table(results)
    assert "2.00x" in text and "TOTAL" in text
    payload = scale.to_json(results)
    assert payload[1]["stages"][1]["growth_vs_60"] == pytest.approx(2.0)


def test_growth_needs_the_sixty_fund_run() -> None:
    results = {Point(250, 10, 25): _rows({"factors": 1.0}, 250_000)}
    assert scale.growth(results) == {}


def test_backfill_stage_in_a_fresh_process(tmp_path: Path) -> None:
    point = Point(8, 1, 25)
    rows = scale.measure(point, tmp_path, ["backfill"])
    assert [r.stage for r in rows] == ["backfill"]
    bars = pd.read_parquet(tmp_path / "adjusted.parquet")
    assert bars["symbol"].nunique() == 8
    assert rows[0].fund_days == len(bars) > 8 * 200
    assert rows[0].seconds > 0 and rows[0].peak_mb > 0


def test_results_json_round_trip_and_plot(tmp_path: Path) -> None:
    small, big = Point(60, 10, 25), Point(250, 10, 25)
    results = {big: _rows({"factors": 5.0}, 250_000), small: _rows({"factors": 1.0}, 60_000)}
    path = tmp_path / "scale.json"
    path.write_text(json.dumps({"points": scale.to_json(results)}), encoding="utf-8")
    merged = scale.from_json([path])
    assert list(merged) == [small, big]  # sorted by years, factors, funds
    assert merged[big][0].us_per_fund_day == pytest.approx(results[big][0].us_per_fund_day)
    scale.plot(merged, tmp_path / "scale.png")
    assert (tmp_path / "scale.png").stat().st_size > 10_000
