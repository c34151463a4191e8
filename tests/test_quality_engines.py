"""The bar rules' one table of expectations gives the same verdicts evaluated by Great
Expectations and by pandera (rotation/quality.py): on the real datasets, and on adversarial
frames with nulls, values on every bound and duplicated keys. The daily run's one-session
evaluation does not import GX."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pydantic
import pytest

from resources.market_data import FileMarketData
from rotation import quality

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASETS = ("cn_etf_morphkyan_raw", "cn_etf_akshare_qfq_2020")


def _market(dataset: str) -> FileMarketData:
    return FileMarketData(root=str(SHARED / dataset),
                          dataset_config=str(ROOT / "config" / "datasets" / f"{dataset}.yaml"))


def _context(market: FileMarketData) -> quality.QualityContext:
    return quality.QualityContext(calendar=market.calendar, instruments=market.instruments())


@pytest.mark.parametrize("dataset", DATASETS)
def test_both_engines_find_the_same_rows_in_a_real_history(dataset: str) -> None:
    market = _market(dataset)
    loaded = market.load(pd.Timestamp("2000-01-01"), pd.Timestamp("2026-12-01"))
    ctx = _context(market)
    frame = quality.derive_rule_columns(loaded.bars, ctx)
    by_gx = quality.offending_rows(frame, ctx, "gx")
    by_pandera = quality.offending_rows(frame, ctx, "pandera")
    assert by_pandera == by_gx
    # Not a vacuous equality: these histories hold known anomalies (PROVENANCE.md).
    assert sum(map(len, by_gx.values())) > 0


def _adversarial(seed: int, rows: int = 240) -> pd.DataFrame:
    """Every checked column with nulls, values on and beside each bound, and repeated
    (date, symbol) keys, a null symbol among them."""
    rng = np.random.default_rng(seed)

    def values(choices: list[float]) -> np.ndarray:
        return rng.choice(np.array(choices, dtype="float64"), size=rows)

    prices = [np.nan, -1.0, 0.0, 1e-9, 1.0, 1.5, 2.0]
    frame = pd.DataFrame({
        "row_id": np.arange(rows, dtype=np.int64),
        "date": pd.to_datetime("2024-01-02") + pd.to_timedelta(rng.integers(0, 4, rows), "D"),
        "symbol": rng.choice(np.array(["510050", "510300", None], dtype=object), size=rows),
        "open": values(prices), "high": values(prices), "low": values(prices),
        "close": values(prices),
        "volume": values([np.nan, -1.0, 0.0, 100.0]),
        "is_session": rng.choice(np.array([True, False, None], dtype=object), size=rows),
        "symbol_known": rng.choice(np.array([True, False, None], dtype=object), size=rows),
        "source": "adversarial.csv",
    })
    for column in ("limit_excess", "open_excess", "range_excess", "stale_excess",
                   "vwap_excess"):
        frame[column] = values([np.nan, -0.5, 0.0, 1e-12, 0.3])
    frame["missing_sessions_before"] = values([np.nan, 0.0, 5.0, 6.0])
    return frame


@pytest.mark.parametrize("seed", range(4))
def test_both_engines_find_the_same_rows_in_adversarial_frames(seed: int) -> None:
    market = _market("cn_etf_akshare_qfq_2020")
    ctx = _context(market)
    frame = _adversarial(seed)
    by_gx = quality.offending_rows(frame, ctx, "gx")
    by_pandera = quality.offending_rows(frame, ctx, "pandera")
    assert by_pandera == by_gx
    # Every bar rule is violated somewhere in such a frame.
    assert {rule for rule, rows in by_gx.items() if rows} == {
        c.rule for c in quality.rule_checks(ctx)}


def test_a_one_session_evaluation_does_not_import_great_expectations() -> None:
    """The daily run's gate (one session, the ``auto`` engine) in a fresh interpreter; a range
    in the same process is then evaluated by GX."""
    script = f"""
import sys
import pandas as pd
from resources.market_data import FileMarketData
from rotation import quality
market = FileMarketData(root={str(SHARED / "cn_etf_morphkyan_raw")!r},
                        dataset_config={str(ROOT / "config/datasets/cn_etf_morphkyan_raw.yaml")!r})
cal = market.calendar
day = pd.Timestamp("2023-12-29")
ctx = quality.QualityContext(calendar=cal, instruments=market.instruments())
def run(first):
    loaded = market.load(cal.offset(first, -20), day)
    return quality.evaluate(loaded.bars, loaded.issues, ctx, evaluate_from=first,
                            expected_sessions=list(cal.sessions(first, day)))
one = run(day)
assert all(o.passed for o in one if o.rule.blocking), [o.summary() for o in one]
print("after one session:", "great_expectations" in sys.modules)
run(cal.offset(day, -5))
print("after a range:", "great_expectations" in sys.modules)
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "GX_ANALYTICS_ENABLED": "false"},
                          check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.split("\n")[:2] == ["after one session: False", "after a range: True"]


def test_an_unknown_engine_is_refused_by_name() -> None:
    with pytest.raises(pydantic.ValidationError, match="engine"):
        quality.QualityConfig(engine="spreadsheet")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="quality engine 'spreadsheet'"):
        quality.offending_rows(_adversarial(0), _context(_market("cn_etf_akshare_qfq_2020")),
                               "spreadsheet")


def test_a_check_that_cannot_be_evaluated_is_no_pass() -> None:
    """A column whose values cannot be compared (conform_bars makes them floats, so only a
    bug gets here) is no verdict: pandera's check raises instead of passing the rule."""
    ctx = _context(_market("cn_etf_akshare_qfq_2020"))
    frame = _adversarial(0, rows=6)
    frame["volume"] = ["a", 1.0, 2.0, 3.0, 4.0, 5.0]
    with pytest.raises(RuntimeError, match="volume_non_negative"):
        quality.offending_rows(frame, ctx, "pandera")
