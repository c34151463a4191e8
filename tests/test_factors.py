"""Factor library (``rotation.factors``, SPEC §4).

Every default factor is recomputed here independently with plain pandas / numpy, one fund at a
time on its own bars (``series.dropna()``: the bar clock documented in
``rotation.factors.kernels``), on the generated sample market adjusted by
``rotation.adjust.adjust_bars`` — including the suspended fund and the late-listed fund.

Tolerance: ``rtol = 1e-9`` plus ``atol = 1e-12 × max|expected|`` of the factor (values that
cross zero, e.g. MACD histogram or correlations, cannot be compared relatively there). The
recursive factors (RSI, ADX, MACD) use the same tolerance: the reference runs the identical
recursion through pandas ``ewm(adjust=False)``, which differs only in rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from numpy.lib.stride_tricks import sliding_window_view

from rotation.adjust import adjust_bars
from rotation.factors import (
    DEFAULT_FACTOR_CONFIG,
    DEFAULT_FACTORS,
    KERNELS,
    FactorConfigError,
    FactorSpec,
    Panels,
    compute_factor,
    compute_factors,
    factor_spec,
    factor_specs_from_config,
    factor_specs_from_yaml,
    factor_table,
    factors_long,
    get_factor,
)
from rotation.sources.sample import (
    SAMPLE_LATE_LISTING,
    SAMPLE_SPLIT,
    SAMPLE_SUSPENSION,
    SampleMarketSpec,
    generate_sample_market,
)

# Ten funds carry all three sample events; mid-2023 keeps the test short.
SPEC = SampleMarketSpec(n_funds=10, end="2023-06-30")
SUSP_SYMBOL, SUSP_DATES = SAMPLE_SUSPENSION
LATE_SYMBOL, LATE_DATE = SAMPLE_LATE_LISTING
FACTOR_NAMES = [s.name for s in DEFAULT_FACTORS]
RTOL = 1e-9
ATOL_SCALE = 1e-12


@pytest.fixture(scope="module")
def adjusted() -> pd.DataFrame:
    return adjust_bars(generate_sample_market(SPEC))


@pytest.fixture(scope="module")
def panels(adjusted: pd.DataFrame) -> Panels:
    return Panels.from_bars(adjusted)


@pytest.fixture(scope="module")
def computed(panels: Panels) -> dict[str, pd.DataFrame]:
    return compute_factors(DEFAULT_FACTORS, panels)


def test_sample_has_the_events(panels: Panels) -> None:
    close = panels.close
    susp = pd.DatetimeIndex(SUSP_DATES)
    assert susp.isin(close.index).all()  # other funds trade on the suspension dates
    assert close.loc[susp, SUSP_SYMBOL].isna().all()
    first = close[LATE_SYMBOL].first_valid_index()
    assert first == pd.Timestamp(LATE_DATE) and first > close.index[0]
    assert SAMPLE_SPLIT[0] in close.columns
    assert (panels.turnover.stack() > 0).all()


# -- independent reference implementations ---------------------------------------------------
def _ret(c: pd.Series) -> pd.Series:
    return c / c.shift(1) - 1.0


def _wilder(s: pd.Series, n: int) -> pd.Series:
    """Wilder smoothing: the mean of the first n values, then ewm(alpha=1/n, adjust=False)."""
    seed = pd.Series([s.iloc[:n].mean()], index=[s.index[n - 1]])
    return pd.concat([seed, s.iloc[n:]]).ewm(alpha=1.0 / n, adjust=False).mean()


def _windows(values: pd.Series, w: int) -> np.ndarray:
    return sliding_window_view(values.to_numpy(dtype=np.float64), w)


def _at_ends(values: np.ndarray, index: pd.Index, w: int) -> pd.Series:
    """Per-window results placed on the last bar of each window."""
    return pd.Series(values, index=index[w - 1:]).reindex(index)


def _slope(y: np.ndarray) -> np.ndarray:
    x = np.arange(y.shape[1], dtype=np.float64)
    return np.polyfit(x, y.T, 1)[0]


def _true_range(g: pd.DataFrame) -> pd.Series:
    prev = g.close.shift(1)
    tr = pd.concat([g.high - g.low, (g.high - prev).abs(), (g.low - prev).abs()], axis=1)
    return tr.max(axis=1, skipna=False)


def ref_momentum(g: pd.DataFrame, p: dict) -> pd.Series:
    return g.close / g.close.shift(p["window"]) - 1.0


def ref_volatility(g: pd.DataFrame, p: dict) -> pd.Series:
    return _ret(g.close).rolling(p["window"]).std(ddof=1) * np.sqrt(p["periods_per_year"])


def ref_sharpe(g: pd.DataFrame, p: dict) -> pd.Series:
    r = _ret(g.close).rolling(p["window"])
    return r.mean() / r.std(ddof=1) * np.sqrt(p["periods_per_year"])


def _mdd(g: pd.DataFrame, w: int) -> pd.Series:
    path = _windows(g.close, w + 1)
    dd = (1.0 - path / np.maximum.accumulate(path, axis=1)).max(axis=1)
    return _at_ends(dd, g.index, w + 1)


def ref_max_drawdown(g: pd.DataFrame, p: dict) -> pd.Series:
    return _mdd(g, p["window"])


def ref_calmar(g: pd.DataFrame, p: dict) -> pd.Series:
    w = p["window"]
    ann = (g.close / g.close.shift(w)) ** (p["periods_per_year"] / w) - 1.0
    return ann / _mdd(g, w)


def ref_slope_r2(g: pd.DataFrame, p: dict) -> pd.Series:
    w = p["window"]
    y = _windows(np.log(g.close), w)
    x = np.arange(w, dtype=np.float64)
    slope, intercept = np.polyfit(x, y.T, 1)
    fitted = intercept[:, None] + slope[:, None] * x[None, :]
    r2 = 1.0 - ((y - fitted) ** 2).sum(axis=1) / ((y - y.mean(axis=1, keepdims=True)) ** 2).sum(
        axis=1
    )
    return _at_ends(slope * r2, g.index, w)


def ref_price_position(g: pd.DataFrame, p: dict) -> pd.Series:
    hi = g.high.rolling(p["window"]).max()
    lo = g.low.rolling(p["window"]).min()
    return (g.close - lo) / (hi - lo)


def ref_breakout(g: pd.DataFrame, p: dict) -> pd.Series:
    return g.close / g.high.shift(1).rolling(p["window"]).max() - 1.0


def ref_rsi(g: pd.DataFrame, p: dict) -> pd.Series:
    n = p["window"]
    d = g.close.diff().iloc[1:]
    gain = _wilder(d.clip(lower=0.0), n)
    loss = _wilder((-d).clip(lower=0.0), n)
    return (100.0 * gain / (gain + loss)).reindex(g.index)


def ref_adx(g: pd.DataFrame, p: dict) -> pd.Series:
    n = p["window"]
    up = g.high.diff()
    down = -g.low.diff()
    pdm = up.where((up > down) & (up > 0), 0.0).iloc[1:]
    mdm = down.where((down > up) & (down > 0), 0.0).iloc[1:]
    tr = _wilder(_true_range(g).iloc[1:], n)
    pdi = 100.0 * _wilder(pdm, n) / tr
    mdi = 100.0 * _wilder(mdm, n) / tr
    dx = (100.0 * (pdi - mdi).abs() / (pdi + mdi)).fillna(0.0)
    return _wilder(dx, n).reindex(g.index)


def ref_vortex(g: pd.DataFrame, p: dict) -> pd.Series:
    w = p["window"]
    vmp = (g.high - g.low.shift(1)).abs().rolling(w).sum()
    vmm = (g.low - g.high.shift(1)).abs().rolling(w).sum()
    return (vmp - vmm) / _true_range(g).rolling(w).sum()


def ref_obv_slope(g: pd.DataFrame, p: dict) -> pd.Series:
    w = p["window"]
    obv = (np.sign(g.close.diff()).fillna(0.0) * g.volume).cumsum()
    slope = _at_ends(_slope(_windows(obv, w)), g.index, w)
    return slope / g.volume.rolling(w).mean()


def ref_pv_corr(g: pd.DataFrame, p: dict) -> pd.Series:
    # Centred numpy windows: pandas' rolling corr (E[xy] - E[x]E[y]) loses ~1e-9 relative on
    # price levels against volumes of 1e8.
    w = p["window"]
    x = _windows(g.close, w)
    y = _windows(g.volume, w)
    x = x - x.mean(axis=1, keepdims=True)
    y = y - y.mean(axis=1, keepdims=True)
    r = (x * y).sum(axis=1) / np.sqrt((x * x).sum(axis=1) * (y * y).sum(axis=1))
    return _at_ends(r, g.index, w)


def ref_amihud(g: pd.DataFrame, p: dict) -> pd.Series:
    return (_ret(g.close).abs() / g.turnover).rolling(p["window"]).mean() * p["scale"]


def ref_volume_ratio(g: pd.DataFrame, p: dict) -> pd.Series:
    return g.volume / g.volume.shift(1).rolling(p["window"]).mean()


def ref_updown_volume(g: pd.DataFrame, p: dict) -> pd.Series:
    d = g.close.diff()
    up = g.volume.where(d > 0, 0.0).where(d.notna())
    dn = g.volume.where(d < 0, 0.0).where(d.notna())
    out = up.rolling(p["window"]).sum() / dn.rolling(p["window"]).sum()
    return out.replace(np.inf, np.nan)


def ref_garman_klass(g: pd.DataFrame, p: dict) -> pd.Series:
    term = 0.5 * np.log(g.high / g.low) ** 2 - (2 * np.log(2) - 1) * np.log(g.close / g.open) ** 2
    return np.sqrt(p["periods_per_year"] * term.rolling(p["window"]).mean())


def ref_corr_market(g: pd.DataFrame, p: dict, market_level: pd.Series) -> pd.Series:
    # The market's compounded return between consecutive bars of this fund (several panel rows
    # when the fund was suspended).
    level = market_level.loc[g.index]
    rm = level / level.shift(1) - 1.0
    return _ret(g.close).rolling(p["window"]).corr(rm)


def ref_ma_cross(g: pd.DataFrame, p: dict) -> pd.Series:
    return g.close.rolling(p["fast"]).mean() / g.close.rolling(p["slow"]).mean() - 1.0


def ref_macd_hist(g: pd.DataFrame, p: dict) -> pd.Series:
    c = g.close
    macd = c.ewm(span=p["fast"], adjust=False).mean() - c.ewm(span=p["slow"], adjust=False).mean()
    hist = (macd - macd.ewm(span=p["signal"], adjust=False).mean()) / c
    hist.iloc[: p["slow"] + p["signal"] - 2] = np.nan
    return hist


def ref_bollinger(g: pd.DataFrame, p: dict) -> pd.Series:
    # Two-pass numpy moments: pandas' online rolling std loses ~1e-9 relative on price levels
    # of low-volatility funds (the bond fund), more than the tolerance.
    w = p["window"]
    win = _windows(g.close, w)
    ma = _at_ends(win.mean(axis=1), g.index, w)
    sd = _at_ends(win.std(axis=1, ddof=0), g.index, w)
    return (g.close - (ma - p["k_std"] * sd)) / (2 * p["k_std"] * sd)


REFERENCES: dict[str, Callable[..., pd.Series]] = {
    "momentum": ref_momentum,
    "volatility": ref_volatility,
    "sharpe": ref_sharpe,
    "calmar": ref_calmar,
    "max_drawdown": ref_max_drawdown,
    "slope_r2": ref_slope_r2,
    "price_position": ref_price_position,
    "breakout": ref_breakout,
    "rsi": ref_rsi,
    "adx": ref_adx,
    "vortex": ref_vortex,
    "obv_slope": ref_obv_slope,
    "pv_corr": ref_pv_corr,
    "amihud": ref_amihud,
    "volume_ratio": ref_volume_ratio,
    "updown_volume": ref_updown_volume,
    "garman_klass": ref_garman_klass,
    "corr_market": ref_corr_market,
    "ma_cross": ref_ma_cross,
    "macd_hist": ref_macd_hist,
    "bollinger": ref_bollinger,
}


def _market_level(panels: Panels) -> pd.Series:
    """Cumulated equal-weight mean of the one-row returns (row 0 has none)."""
    r1 = panels.close / panels.close.shift(1) - 1.0
    market = r1.mean(axis=1, skipna=True)
    assert market.iloc[1:].notna().all() and np.isnan(market.iloc[0])
    return (1.0 + market.fillna(0.0)).cumprod()


def reference(spec: FactorSpec, panels: Panels) -> pd.DataFrame:
    fn = REFERENCES[spec.kernel]
    extra = (_market_level(panels),) if spec.kernel == "corr_market" else ()
    out = {}
    for sym in panels.columns:
        g = pd.DataFrame({f: getattr(panels, f)[sym] for f in spec.inputs}).dropna()
        out[sym] = fn(g, dict(spec.params), *extra).reindex(panels.index)
    return pd.DataFrame(out, index=panels.index, columns=panels.columns)


def assert_matches(actual: pd.DataFrame, expected: pd.DataFrame) -> None:
    a = actual.to_numpy(dtype=np.float64)
    e = expected.to_numpy(dtype=np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e))
    assert not np.isinf(a).any()
    atol = ATOL_SCALE * np.nanmax(np.abs(e))
    np.testing.assert_allclose(a, e, rtol=RTOL, atol=atol, equal_nan=True)


# -- agreement with the references ------------------------------------------------------------
def test_every_kernel_has_a_reference() -> None:
    assert set(REFERENCES) == set(KERNELS)


@pytest.mark.parametrize("name", FACTOR_NAMES)
def test_factor_matches_reference(name: str, panels: Panels,
                                  computed: dict[str, pd.DataFrame]) -> None:
    spec = get_factor(name)
    actual = computed[name]
    assert actual.index.equals(panels.index) and actual.columns.equals(panels.columns)
    expected = reference(spec, panels)
    assert_matches(actual, expected)
    # The suspended and the late-listed fund have values (the comparison covered them).
    assert actual[SUSP_SYMBOL].notna().sum() > 500
    assert actual[LATE_SYMBOL].notna().sum() > 300


def test_compute_factor_equals_compute_factors(panels: Panels,
                                               computed: dict[str, pd.DataFrame]) -> None:
    assert list(computed) == FACTOR_NAMES
    for spec in DEFAULT_FACTORS[:5]:
        pd.testing.assert_frame_equal(compute_factor(spec, panels), computed[spec.name])


def test_factor_from_config_with_new_window(panels: Panels) -> None:
    """A new window is configuration only, and computes what it says."""
    specs = factor_specs_from_config([
        {"name": "momentum_250", "kernel": "momentum", "params": {"window": 250},
         "unit": "return", "direction": 1},
        {"name": "bollinger_10_1_5", "kernel": "bollinger", "params": {"window": 10,
         "k_std": 1.5}, "unit": "ratio", "direction": -1},
        {"name": "corr_market_60", "kernel": "corr_market", "params": {"window": 60},
         "unit": "correlation", "direction": -1},
    ])
    out = compute_factors(specs, panels)
    for spec in specs:
        assert_matches(out[spec.name], reference(spec, panels))
    c = panels.close["510010"]
    np.testing.assert_allclose(out["momentum_250"]["510010"].iloc[250], c.iloc[250] / c.iloc[0] - 1)


# -- no look-ahead ----------------------------------------------------------------------------
def _perturbed(adjusted: pd.DataFrame, cut: pd.Timestamp, seed: int) -> pd.DataFrame:
    """Everything after ``cut`` altered: prices and volumes rescaled at random, some bars
    removed, a new fund listed."""
    rng = np.random.default_rng(seed)
    out = adjusted.copy()
    after = (out["date"] > cut).to_numpy()
    k = int(after.sum())
    for col in ("open", "high", "low", "close"):
        out.loc[after, col] *= rng.uniform(0.5, 1.5, k)
    out.loc[after, "volume"] *= rng.uniform(0.01, 10.0, k)
    out.loc[after, "turnover"] *= rng.uniform(0.01, 10.0, k)
    out = out.loc[~after | (rng.random(len(out)) > 0.1)]
    new = out.loc[out["date"] > cut].drop_duplicates("date").copy()
    new["symbol"] = "519999"
    return pd.concat([out, new], ignore_index=True)


@pytest.fixture(scope="module", params=["2021-08-11", "2022-07-15"])
def perturbation(request: pytest.FixtureRequest, adjusted: pd.DataFrame,
                 computed: dict[str, pd.DataFrame]):
    cut = pd.Timestamp(request.param)
    panels = Panels.from_bars(_perturbed(adjusted, cut, seed=cut.day))
    assert "519999" in panels.columns
    return cut, compute_factors(DEFAULT_FACTORS, panels)


@pytest.mark.parametrize("name", FACTOR_NAMES)
def test_no_look_ahead(name: str, perturbation, computed: dict[str, pd.DataFrame]) -> None:
    cut, perturbed = perturbation
    base = computed[name]
    alt = perturbed[name]
    before = base.loc[:cut]
    alt_before = alt.loc[:cut, base.columns]
    assert before.index.equals(alt_before.index)
    # Bit-identical up to and including the cut date.
    assert np.array_equal(before.to_numpy().view(np.uint64), alt_before.to_numpy().view(np.uint64))
    assert alt.loc[:cut, "519999"].isna().all()
    # ... and the perturbation did change later values (the test has teeth).
    after = base.loc[base.index > cut]
    changed = ~np.isclose(after.to_numpy(), alt.reindex_like(after).to_numpy(), equal_nan=True)
    assert changed.any()


# -- NaN semantics -----------------------------------------------------------------------------
@pytest.mark.parametrize("name", FACTOR_NAMES)
def test_warmup_and_missing_bars(name: str, panels: Panels,
                                 computed: dict[str, pd.DataFrame]) -> None:
    spec = get_factor(name)
    out = computed[name]
    valid = panels.close.notna()
    # No bar, no value (suspension, before listing) — and nothing is ever filled with 0.
    assert out.where(~valid).isna().all().all()
    assert out.loc[pd.DatetimeIndex(SUSP_DATES), SUSP_SYMBOL].isna().all()
    assert out.loc[pd.DatetimeIndex(SUSP_DATES)].drop(columns=SUSP_SYMBOL).notna().all().all()
    assert out.loc[: pd.Timestamp(LATE_DATE), LATE_SYMBOL].iloc[:-1].isna().all()
    for sym in panels.columns:
        bars = out[sym][valid[sym]]
        # NaN until the fund has ``warmup`` bars, a value on its ``warmup``-th bar.
        assert bars.iloc[: spec.warmup - 1].isna().all(), sym
        assert np.isfinite(bars.iloc[spec.warmup - 1]), sym
        assert bars.iloc[spec.warmup - 1:].notna().mean() > 0.99
    # The bar clock continues through the suspension: a value on the first bar after it.
    resume = panels.close[SUSP_SYMBOL].loc[pd.Timestamp(SUSP_DATES[-1]):].first_valid_index()
    assert np.isfinite(out.loc[resume, SUSP_SYMBOL])


def test_bar_clock_across_suspension(panels: Panels, computed: dict[str, pd.DataFrame]) -> None:
    c = panels.close[SUSP_SYMBOL].dropna()
    resume = c.index.get_loc(c.loc[pd.Timestamp(SUSP_DATES[-1]):].index[0])
    got = computed["momentum_20"][SUSP_SYMBOL].loc[c.index[resume]]
    assert got == pytest.approx(c.iloc[resume] / c.iloc[resume - 20] - 1, rel=1e-14)


def _toy_panels() -> Panels:
    """Two funds, 40 days; fund B has a missing close on day 10, a missing volume on day 20 and
    zero turnover on day 30."""
    rng = np.random.default_rng(3)
    dates = pd.bdate_range("2024-01-01", periods=40)
    close = pd.DataFrame(np.exp(np.cumsum(rng.normal(0, 0.01, (40, 2)), axis=0)),
                         index=dates, columns=["A", "B"])
    frames = {
        "open": close * 0.999, "high": close * 1.01, "low": close * 0.99, "close": close,
        "volume": pd.DataFrame(rng.uniform(1e5, 1e6, (40, 2)), index=dates, columns=close.columns),
    }
    frames["turnover"] = frames["volume"] * close
    for f in ("open", "high", "low", "close", "volume", "turnover"):
        frames[f] = frames[f].copy()
        frames[f].iloc[10, 1] = np.nan
    frames["volume"].iloc[20, 1] = np.nan
    frames["turnover"].iloc[30, 1] = 0.0
    return Panels(**frames)


def test_missing_input_only_blanks_kernels_that_use_it() -> None:
    panels = _toy_panels()
    mom = compute_factor(factor_spec({"name": "m", "kernel": "momentum", "params": {"window": 3},
                                      "unit": "return", "direction": 1}), panels)
    vr = compute_factor(factor_spec({"name": "v", "kernel": "volume_ratio",
                                     "params": {"window": 3}, "unit": "ratio",
                                     "direction": 1}), panels)
    # No close on day 10: NaN there, and the bar clock skips it.
    assert np.isnan(mom.iloc[10, 1]) and np.isnan(vr.iloc[10, 1])
    c = panels.close["B"]
    assert mom.iloc[11, 1] == pytest.approx(c.iloc[11] / c.iloc[7] - 1, rel=1e-14)
    # No volume on day 20: the volume kernel has no value, the price kernel does.
    assert np.isnan(vr.iloc[20, 1]) and np.isfinite(mom.iloc[20, 1])
    assert np.isfinite(vr.iloc[20, 0])
    assert (mom.iloc[3:, 0].notna()).all() and mom.iloc[:3, 0].isna().all()


def test_undefined_term_blanks_the_window() -> None:
    panels = _toy_panels()
    spec = factor_spec({"name": "ami", "kernel": "amihud", "params": {"window": 5},
                        "unit": "ratio", "direction": 1})
    out = compute_factor(spec, panels)
    # Zero traded value on day 30 makes |r| / turnover undefined: the five windows holding it
    # are NaN (never a zero term), the next one has a value again.
    assert out.iloc[30:35, 1].isna().all()
    assert np.isfinite(out.iloc[35, 1]) and np.isfinite(out.iloc[29, 1])
    assert out.iloc[30:35, 0].notna().all()


# -- configuration ----------------------------------------------------------------------------
def test_default_set() -> None:
    names = [s.name for s in DEFAULT_FACTORS]
    assert len(DEFAULT_FACTORS) >= 25 and len(set(names)) == len(names)
    assert len(DEFAULT_FACTOR_CONFIG) == len(DEFAULT_FACTORS)
    for required in ("momentum_20", "momentum_60", "momentum_120", "volatility_20", "sharpe_20",
                     "calmar_60", "max_drawdown_60", "slope_r2_20", "price_position_20",
                     "price_position_120", "breakout_20", "rsi_14", "adx_14", "vortex_14",
                     "obv_slope_10", "pv_corr_20", "amihud_20", "volume_ratio_20",
                     "updown_volume_20", "garman_klass_20", "corr_market_20", "ma_cross_5_20",
                     "macd_hist_12_26_9", "bollinger_20_2"):
        assert required in names
    for spec in DEFAULT_FACTORS:
        assert spec.direction in (1, -1) and spec.unit and spec.description and spec.window > 0
    table = factor_table(DEFAULT_FACTORS)
    assert list(table["name"]) == names
    assert table.loc[table["name"] == "adx_14", "warmup"].item() == 28
    assert set(table.loc[table["recursive"], "name"]) == {"rsi_14", "adx_14", "macd_hist_12_26_9"}


def test_specs_from_config_defaults_and_round_trip() -> None:
    (spec,) = factor_specs_from_config([
        {"name": "vol_10", "kernel": "volatility", "params": {"window": 10}, "unit": "return",
         "direction": -1},
    ])
    assert spec.params == {"window": 10, "periods_per_year": 252.0}
    assert spec.description  # the kernel summary when none is given
    assert spec.warmup == 11 and spec.window == 10
    assert factor_specs_from_config([spec.to_dict()]) == [spec]
    assert hash(spec) == hash(factor_specs_from_config([spec.to_dict()])[0])
    assert factor_specs_from_config([s.to_dict() for s in DEFAULT_FACTORS]) == list(DEFAULT_FACTORS)
    # Integral floats (as YAML may give them) are accepted for integer parameters.
    assert factor_spec({"name": "m", "kernel": "momentum", "params": {"window": 20.0},
                        "unit": "return", "direction": 1}).params == {"window": 20}
    with pytest.raises(FactorConfigError, match="field 'kernel'"):
        FactorSpec(name="x", kernel="nope", unit="ratio", direction=1)


def test_specs_from_yaml(tmp_path: Path) -> None:
    text = (
        "factors:\n"
        "  - name: mom_30\n"
        "    kernel: momentum\n"
        "    params: {window: 30}\n"
        "    unit: return\n"
        "    direction: +1\n"
        "  - {name: rsi_6, kernel: rsi, params: {window: 6}, unit: score, direction: -1}\n"
    )
    path = tmp_path / "factors.yaml"
    path.write_text(text, encoding="utf-8")
    for source in (text, path, str(path)):
        specs = factor_specs_from_yaml(source)
        assert [(s.name, s.window, s.direction) for s in specs] == [("mom_30", 30, 1),
                                                                    ("rsi_6", 6, -1)]
    with pytest.raises(FactorConfigError, match="'factors' list"):
        factor_specs_from_yaml("other: 1\n")


GOOD = {"name": "mom_20", "kernel": "momentum", "params": {"window": 20}, "unit": "return",
        "direction": 1}


@pytest.mark.parametrize(
    ("change", "pattern"),
    [
        ({"kernel": "momentom"}, r"entry 1 \('mom_20'\): field 'kernel': unknown kernel "
                                 r"'momentom' \(known: .*momentum"),
        ({"unit": None}, r"entry 1 \('mom_20'\): field 'unit': missing required field"),
        ({"direction": 0}, r"entry 1 \('mom_20'\): field 'direction': 0 must be \+1 or -1"),
        ({"direction": "up"}, r"field 'direction': 'up' must be \+1 or -1"),
        ({"direction": True}, r"field 'direction': True must be \+1 or -1"),
        ({"unit": "percent"}, r"field 'unit': 'percent' is not one of"),
        ({"name": "Mom 20"}, r"field 'name': 'Mom 20' must match"),
        ({"params": {"window": 0}}, r"field 'params.window': must be >= 1, got 0"),
        ({"params": {"window": 2.5}}, r"field 'params.window': expected an integer, got 2.5"),
        ({"params": {"window": 20, "lag": 1}}, r"field 'params.lag': unknown parameter"),
        ({"params": {}}, r"field 'params.window': missing required parameter"),
        ({"params": [20]}, r"field 'params': expected a mapping"),
        ({"colour": "red"}, r"field 'colour': unknown field"),
        ({"kernel": "ma_cross", "params": {"fast": 20, "slow": 5}},
         r"field 'params': fast \(20\) must be < slow \(5\)"),
    ],
)
def test_config_errors_name_entry_and_field(change: dict, pattern: str) -> None:
    bad = {**GOOD, "name": "mom_20", **change}
    bad = {k: v for k, v in bad.items() if not (k == "unit" and v is None)}
    entries = [{**GOOD, "name": "ok_first"}, bad]
    with pytest.raises(FactorConfigError, match=pattern):
        factor_specs_from_config(entries)


def test_config_errors_structure() -> None:
    with pytest.raises(FactorConfigError, match=r"entry 1 \('a'\): field 'name': duplicate name "
                                                r"'a' \(also entry 0\)"):
        factor_specs_from_config([{**GOOD, "name": "a"}, {**GOOD, "name": "a"}])
    with pytest.raises(FactorConfigError, match=r"entry 0 \(None\): expected a mapping"):
        factor_specs_from_config(["momentum_20"])
    with pytest.raises(FactorConfigError, match="expected a list"):
        factor_specs_from_config(GOOD)
    with pytest.raises(FactorConfigError, match=r"entry 0 \(None\): field 'name': missing"):
        factor_specs_from_config([{k: v for k, v in GOOD.items() if k != "name"}])


# -- wrappers ---------------------------------------------------------------------------------
def test_panels_from_bars(adjusted: pd.DataFrame, panels: Panels) -> None:
    assert panels.close.shape == (adjusted["date"].nunique(), adjusted["symbol"].nunique())
    row = adjusted.iloc[1234]
    for f in ("open", "high", "low", "close", "volume", "turnover"):
        assert getattr(panels, f).loc[row["date"], row["symbol"]] == row[f]
    # Without ``turnover`` the traded value falls back to amount, then volume × close.
    fallback = Panels.from_bars(adjusted.drop(columns=["turnover", "amount"]))
    pd.testing.assert_frame_equal(fallback.turnover, panels.volume * panels.close)
    with pytest.raises(ValueError, match="missing columns"):
        Panels.from_bars(adjusted.drop(columns=["high"]))
    with pytest.raises(ValueError, match="'volume' is not aligned"):
        Panels(open=panels.open, high=panels.high, low=panels.low, close=panels.close,
               volume=panels.volume.iloc[:-1], turnover=panels.turnover)


def test_factors_long(computed: dict[str, pd.DataFrame]) -> None:
    subset = {k: computed[k] for k in ("momentum_20", "rsi_14")}
    long = factors_long(subset)
    assert list(long.columns) == ["date", "symbol", "factor", "value"]
    assert len(long) == sum(int(f.notna().sum().sum()) for f in subset.values())
    assert long["value"].notna().all()
    row = long.iloc[len(long) // 2]
    assert subset[row["factor"]].loc[row["date"], row["symbol"]] == row["value"]
    full = factors_long(subset, dropna=False)
    assert len(full) == sum(f.size for f in subset.values())
    assert list(factors_long({}).columns) == ["date", "symbol", "factor", "value"]
