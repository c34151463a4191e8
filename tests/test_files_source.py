"""``FileMarketSource`` on the real datasets in ``shared/data`` (read in place, never copied into
the repository) and on small ``tmp_path`` copies of real files.

Expectations are recomputed independently with plain pandas from the files themselves, or taken
from the facts stated in the datasets' PROVENANCE.md.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from orchestration.settings import DATASET_CONFIG_DIR
from rotation.bars import BAR_COLUMNS
from rotation.calendar import get_calendar
from rotation.market import load_market, resolve
from rotation.sources.files import (
    DatasetConfigError,
    DatasetSpec,
    FileMarketSource,
    load_dataset_spec,
)


def _data_root() -> Path:
    env = os.environ.get("ETF_SHARED_DATA")
    return Path(env) if env else Path(__file__).resolve().parents[2] / "shared" / "data"


DATA = _data_root()
MORPH = DATA / "cn_etf_morphkyan_raw"
AKSHARE = DATA / "cn_etf_akshare_qfq_2020"
MORPH_CONFIG = DATASET_CONFIG_DIR / "cn_etf_morphkyan_raw.yaml"
AKSHARE_CONFIG = DATASET_CONFIG_DIR / "cn_etf_akshare_qfq_2020.yaml"

pytestmark = pytest.mark.skipif(
    not (MORPH.is_dir() and AKSHARE.is_dir()), reason=f"real datasets not found under {DATA}"
)

SCHEMA_B = ("159980", "510050", "510180")  # PROVENANCE.md: eastmoney schema (160520 excluded)
OVERSEAS = ("159920", "513030", "513100", "513500")  # asset_class overseas_equity(...)


# -- independent readers ------------------------------------------------------------------------
def _read_morph_csv(path: Path) -> pd.DataFrame:
    """One morphkyan file in a common layout, straight from pandas (volume still in lots)."""
    raw = pd.read_csv(path)
    if "close_price" in raw:
        raw = raw.rename(columns={"open_price": "open", "high_price": "high",
                                  "low_price": "low", "close_price": "close"})
    raw["date"] = pd.to_datetime(raw["trade_date"])
    return raw[["date", "open", "high", "low", "close", "volume", "amount"]].sort_values("date")


def _expected_factor(symbol: str, dates: pd.Series) -> np.ndarray:
    """PROVENANCE.md recipe: forward-filled hfq factor per date, 1 before the first factor row."""
    path = MORPH / "hfq_factor" / f"{symbol}_hfq_factor.csv.gz"
    if not path.is_file():
        return np.ones(len(dates))
    table = pd.read_csv(path)
    series = pd.Series(table["hfq_factor"].to_numpy(), index=pd.to_datetime(table["trade_date"]))
    full = series.reindex(series.index.union(pd.DatetimeIndex(dates))).ffill()
    return full.reindex(pd.DatetimeIndex(dates)).fillna(1.0).to_numpy()


@pytest.fixture(scope="module")
def morph_spec() -> DatasetSpec:
    return load_dataset_spec(MORPH_CONFIG)


@pytest.fixture(scope="module")
def akshare_spec() -> DatasetSpec:
    return load_dataset_spec(AKSHARE_CONFIG)


@pytest.fixture(scope="module")
def morph(morph_spec: DatasetSpec) -> FileMarketSource:
    return FileMarketSource(MORPH, morph_spec)


@pytest.fixture(scope="module")
def akshare(akshare_spec: DatasetSpec) -> FileMarketSource:
    return FileMarketSource(AKSHARE, akshare_spec)


@pytest.fixture(scope="module")
def morph_load(morph: FileMarketSource):
    return morph.load()


@pytest.fixture(scope="module")
def akshare_load(akshare: FileMarketSource):
    return akshare.load()


@pytest.fixture(scope="module")
def morph_raw() -> dict[str, pd.DataFrame]:
    return {p.name[:6]: _read_morph_csv(p) for p in sorted((MORPH / "prices").glob("*.csv.gz"))}


# -- morphkyan: raw prices, two CSV schemas, hfq factors --------------------------------------
def test_morph_row_count_matches_the_csvs(morph_load, morph_raw) -> None:
    bars = morph_load.bars
    expected = sum(len(f) for s, f in morph_raw.items() if s != "160520")
    assert expected == 85344
    assert len(bars) == 85344
    assert len(morph_raw) == 38  # 37 ETFs + the LOF (PROVENANCE.md)
    assert bars["symbol"].nunique() == 37
    assert "160520" not in set(bars["symbol"])
    assert morph_load.issues.empty
    assert len(morph_load.sources) == 37
    assert "cn_etf_morphkyan_raw/prices/160520.csv.gz" not in morph_load.sources
    assert list(bars.columns) == list(BAR_COLUMNS)
    assert not bars.duplicated(["date", "symbol"]).any()
    # Per-fund row counts and date spans equal the files'.
    counts = bars.groupby("symbol").size()
    for symbol, frame in morph_raw.items():
        if symbol == "160520":
            continue
        assert counts[symbol] == len(frame), symbol
    first_last = bars.groupby("symbol")["date"].agg(["min", "max"])
    assert first_last.loc["510050", "min"] == pd.Timestamp("2005-02-23")
    assert first_last.loc["510050", "max"] == pd.Timestamp("2026-04-09")
    assert first_last.loc["159980", "max"] == pd.Timestamp("2026-05-29")
    assert bars["date"].max() == pd.Timestamp("2026-08-03")


@pytest.mark.parametrize("symbol", ["510050", "159980", "510300", "513100", "511260"])
def test_morph_values_units_and_raw_close(morph_load, morph_raw, symbol: str) -> None:
    got = morph_load.bars.loc[morph_load.bars["symbol"] == symbol].sort_values("date")
    raw = morph_raw[symbol]
    assert got["date"].to_numpy().tolist() == raw["date"].to_numpy().tolist()
    for col in ("open", "high", "low", "close"):
        np.testing.assert_array_equal(got[col].to_numpy(), raw[col].to_numpy())  # raw, unadjusted
    np.testing.assert_allclose(got["volume"].to_numpy(), raw["volume"].to_numpy() * 100.0)
    np.testing.assert_allclose(got["amount"].to_numpy(), raw["amount"].to_numpy())
    assert (got["source"] == f"cn_etf_morphkyan_raw/prices/{symbol}.csv.gz").all()


def test_morph_schema_b_files_are_parsed(morph_load) -> None:
    bars = morph_load.bars
    for symbol in SCHEMA_B:
        header = pd.read_csv(MORPH / "prices" / f"{symbol}.csv.gz", nrows=0).columns
        assert "close_price" in header and "code" in header  # really schema B
        rows = bars.loc[bars["symbol"] == symbol]
        assert len(rows) > 1000
        assert rows[["open", "high", "low", "close", "volume", "amount"]].notna().all().all()
    first = bars.loc[(bars["symbol"] == "510050") & (bars["date"] == "2005-02-23")].iloc[0]
    # First row of 510050.csv.gz: 0.881,0.882,0.866,0.876, 12697425 lots, 1111793167 CNY.
    assert (first["open"], first["high"], first["low"], first["close"]) == (
        0.881, 0.882, 0.866, 0.876)
    assert first["volume"] == 1_269_742_500.0
    assert first["amount"] == 1_111_793_167.0


def test_schema_b_symbol_comes_from_the_code_column(tmp_path: Path,
                                                    morph_spec: DatasetSpec) -> None:
    """A schema-B file under another name still yields the symbol of its ``code`` column."""
    (tmp_path / "prices").mkdir()
    shutil.copy(MORPH / "prices" / "510050.csv.gz", tmp_path / "prices" / "999999.csv.gz")
    spec = morph_spec.model_copy(update={"adjustment_factors": None, "splits": None})
    bars = FileMarketSource(tmp_path, spec).load().bars
    assert set(bars["symbol"]) == {"510050"}
    assert (bars["source"] == "cn_etf_morphkyan_raw/prices/999999.csv.gz").all()
    assert len(bars) == len(pd.read_csv(tmp_path / "prices" / "999999.csv.gz"))


def test_morph_amount_is_cny_and_volume_units(morph_load) -> None:
    """PROVENANCE.md: median amount / (volume_lots × close) is 100 for every file, so after the
    conversion to units amount / (volume × close) has a median of 1 per fund."""
    bars = morph_load.bars
    traded = bars.loc[bars["amount"] > 0]
    ratio = (traded["amount"] / (traded["volume"] * traded["close"])).groupby(traded["symbol"])
    medians = ratio.median()
    assert len(medians) == 37
    assert medians.between(0.97, 1.03).all(), medians[~medians.between(0.97, 1.03)]


def test_morph_factors_match_forward_filled_hfq_files(morph_load, morph_raw) -> None:
    bars = morph_load.bars
    factor_files = {p.name[:6] for p in (MORPH / "hfq_factor").glob("*_hfq_factor.csv.gz")}
    assert len(factor_files - {"160520"}) == 26
    for symbol, raw in morph_raw.items():
        if symbol == "160520":
            continue
        got = bars.loc[bars["symbol"] == symbol].sort_values("date")
        expected = _expected_factor(symbol, raw["date"])
        np.testing.assert_allclose(got["adj_factor"].to_numpy(), expected, rtol=1e-12,
                                   err_msg=symbol)
        if symbol not in factor_files:
            assert (got["adj_factor"] == 1.0).all(), symbol


def test_morph_513100_split_is_carried_by_the_factor(morph_load) -> None:
    f = morph_load.bars.loc[morph_load.bars["symbol"] == "513100"].set_index("date")
    before, after = pd.Timestamp("2022-01-12"), pd.Timestamp("2022-01-14")
    assert pd.Timestamp("2022-01-13") not in f.index  # suspended on the split's record day
    assert f.loc[after, "adj_factor"] / f.loc[before, "adj_factor"] == pytest.approx(5.0)
    raw_ret = f.loc[after, "close"] / f.loc[before, "close"] - 1.0
    adj = f["close"] * f["adj_factor"]
    adj_ret = adj.loc[after] / adj.loc[before] - 1.0
    assert raw_ret == pytest.approx(-0.8045, abs=5e-4)  # PROVENANCE.md: max abs raw ret 0.8045
    assert abs(adj_ret) < 0.05
    # Raw prices are kept as they are in the file.
    assert (f.loc[before, "close"], f.loc[after, "close"]) == (5.192, 1.015)


def test_morph_adjusted_series_have_no_jump_over_20_percent(morph_load) -> None:
    """PROVENANCE.md: after close × ffill(hfq_factor) no daily move exceeds 20 %, while the
    raw series of the split funds do."""
    bars = morph_load.bars.sort_values(["symbol", "date"])
    adj = bars["close"] * bars["adj_factor"]
    adj_ret = adj.groupby(bars["symbol"]).pct_change().abs()
    raw_ret = bars["close"].groupby(bars["symbol"]).pct_change().abs()
    assert adj_ret.max() <= 0.2
    jumped = set(bars.loc[raw_ret > 0.2, "symbol"])
    assert {"510180", "510500", "513100", "513500", "512690", "159928"} <= jumped


def test_morph_date_filter(morph: FileMarketSource, morph_load) -> None:
    window = morph.load("2022-01-14", "2022-03-31").bars
    full = morph_load.bars
    expected = full.loc[full["date"].between("2022-01-14", "2022-03-31")].reset_index(drop=True)
    pd.testing.assert_frame_equal(window, expected)
    assert window["date"].min() == pd.Timestamp("2022-01-14")
    assert window["date"].max() == pd.Timestamp("2022-03-31")
    # The factor of a window is the full-history factor (5 for 513100 after its split).
    assert (window.loc[window["symbol"] == "513100", "adj_factor"] == 5.0).all()
    only_end = morph.load(end="2005-03-01").bars
    assert set(only_end["symbol"]) == {"510050"}
    assert only_end["date"].max() <= pd.Timestamp("2005-03-01")
    only_start = morph.load(start="2026-08-01").bars
    assert only_start["date"].min() == pd.Timestamp("2026-08-03")


def test_morph_instruments(morph: FileMarketSource) -> None:
    instruments = morph.instruments()
    table = pd.read_csv(MORPH / "symbols.csv", dtype=str).set_index("code")
    assert len(instruments) == 37
    by_symbol = {i.symbol: i for i in instruments}
    assert "160520" not in by_symbol
    assert set(by_symbol) == set(table.index) - {"160520"}
    for symbol, inst in by_symbol.items():
        assert inst.name == table.loc[symbol, "name"]
        assert inst.exchange == table.loc[symbol, "exchange"]
        assert inst.asset_class == table.loc[symbol, "asset_class"]
        # SPEC §2: cross-border funds also have the 10 % band on SSE/SZSE.
        assert inst.price_limit == 0.10, symbol
        asset_class = table.loc[symbol, "asset_class"]
        t0 = asset_class.startswith(("overseas_equity", "bond", "commodity"))
        assert inst.same_session_sell is t0, (symbol, asset_class, inst.settlement)
    assert {s for s, i in by_symbol.items() if i.instrument_class == "cross_border"} \
        == set(OVERSEAS)
    assert by_symbol["513100"].name == "纳指ETF国泰"
    assert by_symbol["510050"].name == "上证50ETF华夏"


# -- akshare: qfq parquet, no amount ----------------------------------------------------------
def test_akshare_row_count_and_values(akshare_load) -> None:
    bars = akshare_load.bars
    files = sorted((AKSHARE / "parquet").glob("*.parquet"))
    raw = {p.stem: pd.read_parquet(p) for p in files}
    assert len(raw) == 60
    assert sum(len(f) for f in raw.values()) == 86301
    assert len(bars) == 86301
    assert bars["symbol"].nunique() == 60
    assert akshare_load.issues.empty
    assert bars["date"].min() == pd.Timestamp("2020-01-02")
    assert bars["date"].max() == pd.Timestamp("2026-05-07")
    # No amount column in this dataset; qfq prices carry no factor.
    assert bars["amount"].isna().all()
    assert (bars["adj_factor"] == 1.0).all()
    for symbol in ("159915", "510300", "512690"):
        got = bars.loc[bars["symbol"] == symbol].sort_values("date")
        want = raw[symbol].sort_values("date")
        assert len(got) == len(want)
        np.testing.assert_array_equal(got["date"].to_numpy(),
                                      want["date"].astype("datetime64[ns]").to_numpy())
        for col in ("open", "high", "low", "close"):
            np.testing.assert_array_equal(got[col].to_numpy(), want[col].to_numpy())
        np.testing.assert_array_equal(got["volume"].to_numpy(),
                                      want["volume"].to_numpy().astype(float) * 100.0)
    # PROVENANCE.md table: rows per fund.
    counts = bars.groupby("symbol").size()
    assert counts["159755"] == 1178 and counts["159915"] == 1533 and counts["510300"] == 1534
    first = bars.loc[(bars["symbol"] == "159915")].sort_values("date").iloc[0]
    assert (first["close"], first["volume"]) == (1.765, 338_082_500.0)


def test_akshare_date_filter(akshare: FileMarketSource, akshare_load) -> None:
    window = akshare.load("2024-09-30", "2024-10-08").bars
    assert sorted(window["date"].unique()) == [pd.Timestamp("2024-09-30"),
                                               pd.Timestamp("2024-10-08")]
    full = akshare_load.bars
    expected = full.loc[full["date"].between("2024-09-30", "2024-10-08")].reset_index(drop=True)
    pd.testing.assert_frame_equal(window, expected)


def test_akshare_instruments_and_limits(akshare: FileMarketSource) -> None:
    instruments = {i.symbol: i for i in akshare.instruments()}
    table = pd.read_csv(AKSHARE / "symbols.csv", dtype=str).set_index("code")
    assert len(instruments) == 60
    assert set(instruments) == set(table.index)
    for symbol, inst in instruments.items():
        assert inst.name == table.loc[symbol, "name"]
        assert inst.exchange == table.loc[symbol, "exchange"]
    assert instruments["159915"].price_limit == 0.20
    assert instruments["159949"].price_limit == 0.20
    assert instruments["588000"].price_limit == 0.20  # STAR Market prefix
    assert instruments["513100"].price_limit == 0.10  # cross-border: 10 % band (SPEC §2)
    assert instruments["510900"].settlement == "T+0"
    assert instruments["518880"].instrument_class == "gold"
    assert instruments["510300"].price_limit == 0.10
    assert instruments["510300"].settlement == "T+1"
    assert instruments["512690"].price_limit == 0.10
    assert instruments["159915"].name == "创业板ETF易方达"
    cross_border = {s for s, i in instruments.items() if i.instrument_class == "cross_border"}
    assert len(cross_border) == 11


# -- dataset configs --------------------------------------------------------------------------
def test_shipped_dataset_configs_load(morph_spec: DatasetSpec, akshare_spec: DatasetSpec) -> None:
    assert morph_spec.name == "cn_etf_morphkyan_raw"
    assert morph_spec.price_basis == "raw"
    assert morph_spec.prices.volume_multiplier == 100
    assert len(morph_spec.prices.schemas) == 2
    assert morph_spec.prices.schemas[1].symbol == "code"
    assert morph_spec.universe.exclude == ["160520"]
    assert morph_spec.splits is not None and morph_spec.splits.effective == "next_session"
    assert akshare_spec.price_basis == "forward_adjusted"
    assert akshare_spec.prices.format == "parquet"
    assert akshare_spec.adjustment_factors is None
    assert (akshare_spec.history_start, akshare_spec.history_end) == ("2020-01-02", "2026-05-07")


def _minimal_config() -> str:
    return (
        "name: t\n"
        "history_start: '2020-01-02'\n"
        "history_end: '2020-12-31'\n"
        "prices:\n"
        "  glob: 'prices/*.csv'\n"
        "  schemas:\n"
        "    - {date: d, open: o, high: h, low: l, close: c, volume: v}\n"
    )


def test_minimal_dataset_config(tmp_path: Path) -> None:
    path = tmp_path / "ok.yaml"
    path.write_text(_minimal_config(), encoding="utf-8")
    spec = load_dataset_spec(path)
    assert spec.calendar == "XSHG"
    assert spec.prices.format == "csv"
    assert spec.market == "cn_funds"
    profile = load_market(spec.market)
    star, broad = resolve(profile, spec.instrument_classes,
                          [{"symbol": "588000"}, {"symbol": "510300"}])
    assert (star.price_limit, star.settlement) == (0.20, "T+1")
    assert (broad.price_limit, broad.instrument_class) == (0.10, "equity")


@pytest.mark.parametrize(
    ("edit", "field", "why"),
    [
        (lambda t: t.replace("  glob: 'prices/*.csv'\n",
                             "  glob: 'prices/*.csv'\n  format: xlsx\n"),
         "prices.format", "'csv' or 'parquet'"),
        (lambda t: t.replace("history_start: '2020-01-02'\n", ""), "history_start",
         "Field required"),
        (lambda t: t + "price_basis: adjusted\n", "price_basis", "'raw'"),
        (lambda t: t.replace("  glob:", "  volume_multiplier: 0\n  glob:"),
         "prices.volume_multiplier", "greater than 0"),
        (lambda t: t.replace("volume: v}", "volume: v, turnover: t}"),
         "prices.schemas.0.turnover", "Extra inputs"),
        (lambda t: t + "colour: blue\n", "colour", "Extra inputs"),
        (lambda t: t + "accepted_anomalies:\n  - {symbol: '510300', date: 2020-01-02, "
                       "rule: r, reason: short}\n",
         "accepted_anomalies.0.reason", "at least 10 characters"),
        (lambda t: t + "splits: {path: s.csv, symbol_column: c, date_column: d, "
                       "ratio_column: r, effective: later}\n",
         "splits.effective", "'next_session'"),
    ],
)
def test_dataset_config_errors_name_file_and_field(tmp_path: Path, edit, field: str,
                                                   why: str) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(edit(_minimal_config()), encoding="utf-8")
    with pytest.raises(DatasetConfigError) as info:
        load_dataset_spec(path)
    msg = str(info.value)
    assert msg.startswith(f"dataset config {path}: ")
    assert f"{field}: " in msg
    assert why in msg


def test_dataset_config_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    with pytest.raises(DatasetConfigError, match="cannot read") as info:
        load_dataset_spec(path)
    assert str(path) in str(info.value)


def test_dataset_config_bad_yaml(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("name: [unclosed\n", encoding="utf-8")
    with pytest.raises(DatasetConfigError, match="cannot read") as info:
        load_dataset_spec(path)
    assert str(path) in str(info.value)


def test_root_must_be_a_directory(tmp_path: Path, morph_spec: DatasetSpec) -> None:
    with pytest.raises(DatasetConfigError, match="cn_etf_morphkyan_raw") as info:
        FileMarketSource(tmp_path / "missing", morph_spec)
    assert str(tmp_path / "missing") in str(info.value)
    assert "files_root" in str(info.value)


def test_no_matching_files_is_an_issue(tmp_path: Path, morph_spec: DatasetSpec) -> None:
    result = FileMarketSource(tmp_path, morph_spec).load()
    assert result.bars.empty
    assert result.issues["rule"].tolist() == ["source_not_empty"]
    assert "prices/*.csv.gz" in result.issues["message"].iloc[0]


# -- split table fallback ---------------------------------------------------------------------
SPLIT_YAML = """\
name: split_only
calendar: XSHG
calendar_start: "2005-01-01"
history_start: "2013-03-15"
history_end: "2026-08-03"
prices:
  glob: "prices/*.csv.gz"
  volume_multiplier: 100
  schemas:
    - {date: trade_date, open: open, high: high, low: low, close: close, volume: volume,
       amount: amount}
splits:
  path: meta/platform_splits.csv
  symbol_column: code
  date_column: split_date
  ratio_column: split_ratio
  effective: EFFECTIVE
"""


def _split_dataset(tmp_path: Path, symbols: tuple[str, ...], effective: str = "next_session",
                   factors: dict[str, str] | None = None) -> FileMarketSource:
    (tmp_path / "prices").mkdir()
    (tmp_path / "meta").mkdir()
    for symbol in symbols:
        shutil.copy(MORPH / "prices" / f"{symbol}.csv.gz", tmp_path / "prices")
    shutil.copy(MORPH / "meta" / "platform_splits.csv", tmp_path / "meta")
    text = SPLIT_YAML.replace("EFFECTIVE", effective)
    if factors is not None:
        (tmp_path / "hfq_factor").mkdir()
        for symbol, last_day in factors.items():
            table = pd.read_csv(MORPH / "hfq_factor" / f"{symbol}_hfq_factor.csv.gz")
            table = table.loc[table["trade_date"] <= last_day]
            table.to_csv(tmp_path / "hfq_factor" / f"{symbol}_hfq_factor.csv", index=False)
        text += ("adjustment_factors: {glob: 'hfq_factor/*_hfq_factor.csv', "
                 "date_column: trade_date, factor_column: hfq_factor}\n")
    (tmp_path / "split_only.yaml").write_text(text, encoding="utf-8")
    return FileMarketSource(tmp_path, load_dataset_spec(tmp_path / "split_only.yaml"))


def _factor_steps(bars: pd.DataFrame, symbol: str) -> pd.Series:
    f = bars.loc[bars["symbol"] == symbol].set_index("date")["adj_factor"]
    ratio = f / f.shift(1)
    return ratio[(ratio - 1.0).abs() > 1e-12]


def test_split_table_without_factor_files(tmp_path: Path) -> None:
    source = _split_dataset(tmp_path, ("513100", "510500", "512690"))
    bars = source.load().bars
    cal = get_calendar("XSHG", "2005-01-01")
    # Ex-date = the session after the table's split_date.
    assert cal.offset("2022-01-13", 1) == pd.Timestamp("2022-01-14")
    assert cal.offset("2015-04-14", 1) == pd.Timestamp("2015-04-15")
    assert cal.offset("2022-08-26", 1) == pd.Timestamp("2022-08-29")

    steps = _factor_steps(bars, "513100")
    assert steps.index.tolist() == [pd.Timestamp("2022-01-14")]
    assert steps.iloc[0] == pytest.approx(5.0)
    f = bars.loc[bars["symbol"] == "513100"].set_index("date")
    assert (f.loc[:"2022-01-12", "adj_factor"] == 1.0).all()
    assert (f.loc["2022-01-14":, "adj_factor"] == 5.0).all()
    adj = f["close"] * f["adj_factor"]
    assert abs(adj.loc["2022-01-14"] / adj.loc["2022-01-12"] - 1.0) < 0.05
    assert f.loc["2022-01-14", "close"] == 1.015  # raw close untouched

    steps = _factor_steps(bars, "510500")
    assert steps.index.tolist() == [pd.Timestamp("2015-04-15"), pd.Timestamp("2022-08-29")]
    np.testing.assert_allclose(steps.to_numpy(), [0.2803, 1.1454])
    f = bars.loc[bars["symbol"] == "510500"].set_index("date")
    assert f.loc["2015-04-10", "adj_factor"] == 1.0
    assert f.loc["2022-08-26", "adj_factor"] == pytest.approx(0.2803)
    assert f.loc["2026-08-03", "adj_factor"] == pytest.approx(0.2803 * 1.1454)
    raw_jump = f.loc["2015-04-15", "close"] / f.loc["2015-04-10", "close"] - 1.0
    assert raw_jump == pytest.approx(2.4855, abs=1e-3)  # PROVENANCE.md: +249 %
    adj = f["close"] * f["adj_factor"]
    assert abs(adj.loc["2015-04-15"] / adj.loc["2015-04-10"] - 1.0) < 0.05

    steps = _factor_steps(bars, "512690")
    assert steps.index.tolist() == [pd.Timestamp("2021-05-17")]
    assert steps.iloc[0] == pytest.approx(2.0)


def test_split_table_same_session(tmp_path: Path) -> None:
    bars = _split_dataset(tmp_path, ("510500",), effective="same_session").load().bars
    steps = _factor_steps(bars, "510500")
    # 2015-04-14 has no bar (suspended), so the first step shows on the next bar, 2015-04-15;
    # 2022-08-26 is a session with a bar: the step is on the split date itself.
    assert steps.index.tolist() == [pd.Timestamp("2015-04-15"), pd.Timestamp("2022-08-26")]


def test_split_after_the_factor_file_ends(tmp_path: Path) -> None:
    """Events inside a factor series are not applied twice; events after it are applied."""
    source = _split_dataset(tmp_path, ("513100", "510500"),
                            factors={"513100": "2021-12-31", "510500": "2020-12-31"})
    bars = source.load().bars
    for symbol, last in (("513100", "2021-12-31"), ("510500", "2020-12-31")):
        got = bars.loc[bars["symbol"] == symbol].sort_values("date")
        table = pd.read_csv(tmp_path / "hfq_factor" / f"{symbol}_hfq_factor.csv")
        series = pd.Series(table["hfq_factor"].to_numpy(),
                           index=pd.to_datetime(table["trade_date"]))
        assert series.index.max() <= pd.Timestamp(last)
        dates = pd.DatetimeIndex(got["date"])
        expected = series.reindex(series.index.union(dates)).ffill().reindex(dates).fillna(1.0)
        if symbol == "513100":
            expected[dates >= "2022-01-14"] *= 5.0
        else:  # the 2015 conversion is inside the file, the 2022 split is not
            expected[dates >= "2022-08-29"] *= 1.1454
        np.testing.assert_allclose(got["adj_factor"].to_numpy(), expected.to_numpy(),
                                   rtol=1e-12, err_msg=symbol)
    f510500 = bars.loc[bars["symbol"] == "510500"].set_index("date")["adj_factor"]
    # The 2015 step comes from the factor file only (≈0.2803), not 0.2803 twice.
    assert f510500.loc["2015-04-15"] == pytest.approx(0.2804, abs=2e-4)


# -- inputs that used to crash or mislead (issue 13) -------------------------------------------
def test_gbk_symbols_file_reads_with_its_names(tmp_path: Path) -> None:
    """Chinese vendors often write GBK: the names come out right, not as a decode error."""
    src = _data_root() / "cn_etf_morphkyan_raw"
    table = pd.read_csv(src / "symbols.csv", dtype=str)
    (tmp_path / "prices").mkdir()
    (tmp_path / "symbols.csv").write_bytes(table.to_csv(index=False).encode("gbk"))
    spec = load_dataset_spec(DATASET_CONFIG_DIR / "cn_etf_morphkyan_raw.yaml")
    names = {i.symbol: i.name for i in FileMarketSource(tmp_path, spec).instruments()}
    expected = table.set_index("code")["name"].drop("160520")
    assert names == expected.to_dict()
    # Neither UTF-8 nor GBK: read with the bad bytes replaced, a named issue (not a crash).
    (tmp_path / "symbols.csv").write_bytes(b"code,name\n510300,\xff\xfe\xfa\n")
    source = FileMarketSource(tmp_path, spec)
    assert [i.symbol for i in source.instruments()] == ["510300"]
    found = source.load().issues.set_index("rule")
    assert "line 2 (510300)" in found.loc["symbols_file_encoding", "message"]


def test_split_recorded_on_a_non_session_applies_from_the_next_session(tmp_path: Path) -> None:
    """159928 split 1:4 recorded on 2021-06-24 (a session); moved to Saturday 2021-06-26 it
    takes effect on Monday 2021-06-28, the first session after it, not a session later."""
    src = _data_root() / "cn_etf_morphkyan_raw"
    (tmp_path / "prices").mkdir()
    (tmp_path / "meta").mkdir()
    shutil.copy(src / "prices" / "159928.csv.gz", tmp_path / "prices")
    splits = pd.read_csv(src / "meta" / "platform_splits.csv", dtype=str)
    splits = splits.loc[splits["code"] == "159928"].assign(split_date="2021-06-26")
    splits.to_csv(tmp_path / "meta" / "platform_splits.csv", index=False)
    pd.read_csv(src / "symbols.csv", dtype=str).query("code == '159928'").to_csv(
        tmp_path / "symbols.csv", index=False)
    spec = load_dataset_spec(DATASET_CONFIG_DIR / "cn_etf_morphkyan_raw.yaml")
    bars = FileMarketSource(tmp_path, spec).load("2021-06-23", "2021-06-30").bars
    factor = bars.set_index("date")["adj_factor"]
    assert factor[:"2021-06-25"].eq(1.0).all()
    assert factor["2021-06-28":].eq(4.0).all()
