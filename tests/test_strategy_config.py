"""Strategy configuration (SPEC §4–§8): the default YAML loads; invalid files name the field."""

from __future__ import annotations

import copy
import dataclasses
import warnings
from pathlib import Path
from typing import Any

import pydantic
import pytest
import yaml

import rotation.strategy
from rotation.backtest import BacktestConfig
from rotation.costs import CostModel
from rotation.factors import DEFAULT_FACTORS, get_factor
from rotation.portfolio import PortfolioConfig
from rotation.strategy import (
    PORTFOLIO_FIELDS_ELSEWHERE,
    PORTFOLIO_KEYS,
    STRATEGY_CONFIG_DIR,
    StrategyConfig,
    StrategyConfigError,
    StrategyWarning,
    load_strategy,
    portfolio_from_nested,
    portfolio_to_nested,
    strategy_from_dict,
)
from rotation.wfo import WfoConfig

DEFAULT_PATH = STRATEGY_CONFIG_DIR / "etf_rotation_default.yaml"

# What StrategyConfig.portfolio_config() returned for the default file before the portfolio rules
# were folded into rotation.portfolio.PortfolioConfig (hard-coded: the fold must not change it).
DEFAULT_PORTFOLIO = PortfolioConfig(
    top_n=3, buffer=2, min_hold_days=5, rebalance_every=5, weighting="equal", max_weight=0.5,
    vol_window=20, regime_window=20, regime_lookback=252, regime_min_periods=60,
    regime_levels=((0.8, 0.6), (0.95, 0.3)), abs_mom_window=60, abs_mom_threshold=0.0,
    defensive_symbol="511260", defensive_max_weight=None)


@pytest.fixture(scope="module")
def default_data() -> dict[str, Any]:
    return yaml.safe_load(DEFAULT_PATH.read_text(encoding="utf-8"))


def _write(tmp_path: Path, data: Any, name: str = "strategy.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(data, sort_keys=False, allow_unicode=True), encoding="utf-8")
    return path


# -- the default ----------------------------------------------------------------------------------

def test_default_strategy_loads():
    cfg = load_strategy("etf_rotation_default")
    assert cfg == load_strategy(DEFAULT_PATH)
    assert cfg.name == cfg.experiment_name == "etf_rotation_default"
    assert cfg.universe.dataset == "cn_etf_morphkyan_raw"
    assert cfg.universe.benchmark == "510300"
    assert cfg.universe.defensive == "511260"
    assert "511260" in cfg.universe.not_ranked and "160520" in cfg.universe.not_ranked
    assert cfg.horizons == (1, 5, 10, 20)
    # Named factors are the reference-set specs; the extra entry is built from its kernel.
    assert cfg.factor_specs[0] == get_factor("momentum_20")
    assert len(set(cfg.factor_names)) == len(cfg.factors) == 25
    assert cfg.factors[-1].name == "momentum_250" and cfg.factors[-1].params == {"window": 250}
    assert cfg.wfo_config == WfoConfig(in_sample=252, out_of_sample=60, step=60, mode="rolling",
                                       horizon=20, embargo=0)
    assert cfg.wfo_config.purge == 21
    assert cfg.screening_horizon == 5
    assert cfg.select_kwargs() == {"min_abs_ic": 0.02, "min_positive_rate": 0.55,
                                   "alpha": 0.05, "max_corr": 0.7}
    s = cfg.search
    assert (s.min_factors, s.max_factors) == (2, 3)
    assert s.score_weights.model_dump() == {"annual_return": 0.4, "sharpe": 0.3,
                                            "max_drawdown": 0.3}
    assert s.n_candidates(8) == (28 + 56) * 4 * 3 * 2
    assert cfg.universe.market == "cn_funds" and cfg.market.currency == "CNY"
    f = cfg.fees
    assert (f.commission_bps, f.min_commission, f.sell_rate) == (2, 5, 0)
    assert cfg.market.lot_size == 100 and cfg.costs.lot_size is None
    assert cfg.execution.model == "T1_OPEN" and not cfg.comparison_only
    assert cfg.tracking_tags()["comparison_only"] == "false"


def test_default_strategy_feeds_the_engines():
    cfg = load_strategy("etf_rotation_default")
    pc = cfg.portfolio_config()
    assert isinstance(pc, PortfolioConfig)
    assert (pc.top_n, pc.buffer, pc.min_hold_days, pc.max_weight) == (3, 2, 5, 0.5)
    assert pc.regime_levels == ((0.8, 0.6), (0.95, 0.3))
    assert pc.abs_mom_window == 60 and pc.defensive_symbol == "511260"
    candidate = cfg.portfolio_config(top_n=4, rebalance_every=20, weighting="inverse_vol")
    assert (candidate.top_n, candidate.rebalance_every, candidate.weighting) == (
        4, 20, "inverse_vol")


def test_default_portfolio_config_is_unchanged_by_the_fold():
    cfg = load_strategy("etf_rotation_default")
    assert cfg.portfolio_config() == DEFAULT_PORTFOLIO
    # The section *is* the engine config; defensive_symbol comes from universe.defensive.
    assert cfg.portfolio == DEFAULT_PORTFOLIO and isinstance(cfg.portfolio, PortfolioConfig)
    assert cfg.portfolio_config(top_n=4, rebalance_every=20, weighting="inverse_vol") == (
        dataclasses.replace(DEFAULT_PORTFOLIO, top_n=4, rebalance_every=20,
                            weighting="inverse_vol"))
    assert cfg.portfolio_config(top_n=5) == dataclasses.replace(DEFAULT_PORTFOLIO, top_n=5)
    with pytest.raises(pydantic.ValidationError, match="top_n"):
        cfg.portfolio_config(top_n=0)  # a candidate is validated like the file


def test_portfolio_rules_are_defined_once():
    # The removed re-declarations stay removed: PortfolioConfig is the only definition.
    for name in ("PortfolioRules", "RegimeConfig", "RegimeLevel", "AbsMomentumConfig"):
        assert not hasattr(rotation.strategy, name), name
    fields = {f.name for f in dataclasses.fields(PortfolioConfig)}
    mapped = set(PORTFOLIO_KEYS.values())
    # Every PortfolioConfig field is either a key of the nested section or set elsewhere.
    assert mapped | set(PORTFOLIO_FIELDS_ELSEWHERE) == fields
    assert not mapped & set(PORTFOLIO_FIELDS_ELSEWHERE)
    assert len(mapped) == len(PORTFOLIO_KEYS)


def test_missing_portfolio_keys_take_portfolio_config_defaults():
    cfg = strategy_from_dict({"name": "minimal", "universe": {"dataset": "sample"},
                              "factors": ["momentum_20", "sharpe_20"]})
    assert cfg.portfolio == cfg.portfolio_config() == PortfolioConfig()
    cfg = strategy_from_dict({"name": "minimal", "universe": {"dataset": "sample"},
                              "factors": ["momentum_20", "sharpe_20"],
                              "portfolio": {"top_n": 4, "regime": {"window": 10}}})
    assert cfg.portfolio == PortfolioConfig(top_n=4, regime_window=10)


def test_nested_form_round_trips(default_data):
    cfg = load_strategy("etf_rotation_default")
    nested = portfolio_to_nested(cfg.portfolio)
    expected = {k: v for k, v in default_data["portfolio"].items() if k != "initial_cash"}
    assert nested == expected  # the file's form, key for key
    assert portfolio_from_nested(nested) == dataclasses.replace(DEFAULT_PORTFOLIO,
                                                                defensive_symbol=None)
    assert portfolio_from_nested(DEFAULT_PORTFOLIO) is DEFAULT_PORTFOLIO
    data = cfg.to_dict()
    assert data["portfolio"] == expected and data["costs"]["initial_cash"] == 1_000_000
    assert strategy_from_dict(data) == cfg


def test_nested_errors_are_located_in_the_nested_form():
    with pytest.raises(pydantic.ValidationError) as info:
        portfolio_from_nested({"top_n": 0, "regime": {"levels": [
            {"percentile": 0.8, "exposure": 0.6}, {"percentile": 0.9, "exposure": 1.5}]},
            "abs_momentum": {"windw": 5}})
    locs = {tuple(e["loc"]) for e in info.value.errors()}
    assert locs == {("top_n",), ("regime", "levels", 1, "exposure"),
                    ("abs_momentum", "windw")}


def test_initial_cash_is_a_backtest_setting(default_data):
    # The default file still gives it as portfolio.initial_cash (the former place): read into
    # costs, where it belongs.
    cfg = load_strategy("etf_rotation_default")
    assert cfg.costs.initial_cash == 1_000_000
    assert not hasattr(cfg.portfolio, "initial_cash")
    params = cfg.tracking_params()
    assert params["costs"]["initial_cash"] == 1_000_000
    assert "initial_cash" not in params["portfolio"]
    moved = copy.deepcopy(default_data)
    moved["costs"]["initial_cash"] = moved["portfolio"].pop("initial_cash")
    assert strategy_from_dict(moved) == cfg
    both = copy.deepcopy(default_data)
    both["costs"]["initial_cash"] = 1_000_000  # both places, same value: fine
    assert strategy_from_dict(both) == cfg
    other = copy.deepcopy(default_data)
    del other["portfolio"]["initial_cash"]
    other["costs"]["initial_cash"] = 250_000
    assert strategy_from_dict(other).costs.initial_cash == 250_000


def test_backtest_config_maps_the_costs(default_data):
    cfg = load_strategy("etf_rotation_default")
    assert cfg.backtest_config() == BacktestConfig(
        costs=CostModel(commission_bps=2.0, min_commission=5.0, slippage_bps=5.0, lot_size=100),
        initial_cash=1_000_000.0)
    data = copy.deepcopy(default_data)
    data["costs"] = {"commission_bps": 1.5, "min_commission": 0.1, "slippage_bps": 8,
                     "initial_cash": 50_000}
    del data["portfolio"]["initial_cash"]
    bt = strategy_from_dict(data).backtest_config()
    # A broker's rate overrides the market's commission; lots and duties stay the market's.
    assert bt == BacktestConfig(
        costs=CostModel(commission_bps=1.5, min_commission=0.1, slippage_bps=8, lot_size=100),
        initial_cash=50_000.0)
    assert bt.execution == "T1_OPEN"
    for field, value, why in (("lot_size", 10, "lots come from the market profile"),
                              ("stamp_duty_bps", 5, "stamp_duty_bps")):
        bad = copy.deepcopy(data)
        bad["costs"][field] = value
        with pytest.raises(StrategyConfigError, match=why):
            strategy_from_dict(bad)


def test_backtest_config_refuses_the_close_model(default_data):
    data = copy.deepcopy(default_data)
    data["execution"]["model"] = "CLOSE"
    cfg = strategy_from_dict(data)
    with pytest.raises(ValueError, match="T1_OPEN only"):
        cfg.backtest_config()


def test_tracking_params_are_loggable():
    from resources.tracking import flatten_params, prepare_params

    cfg = load_strategy("etf_rotation_default")
    flat = flatten_params(cfg.tracking_params())
    assert flat["costs.commission_bps"] == "2.0"
    assert flat["factors.momentum_250.params.window"] == "250"
    assert flat["wfo.purge"] == "21"
    assert prepare_params(cfg.tracking_params()) == flat  # nothing renamed or clipped


def test_fingerprint_tracks_content(default_data):
    a = strategy_from_dict(default_data)
    b = strategy_from_dict(copy.deepcopy(default_data))
    assert a.fingerprint == b.fingerprint
    changed = copy.deepcopy(default_data)
    changed["costs"]["slippage_bps"] = 6
    assert strategy_from_dict(changed).fingerprint != a.fingerprint


def test_config_is_frozen():
    cfg = load_strategy("etf_rotation_default")
    with pytest.raises(pydantic.ValidationError):
        cfg.costs.commission_bps = 3  # type: ignore[misc]


def test_minimal_config_gets_spec_defaults():
    cfg = strategy_from_dict({"name": "minimal", "universe": {"dataset": "sample"},
                              "factors": ["momentum_20", "sharpe_20", "rsi_14"]})
    assert cfg.horizons == (1, 5, 10, 20)
    assert (cfg.screening.fdr_alpha, cfg.screening.max_corr) == (0.05, 0.7)
    assert cfg.screening_horizon == 20
    assert (cfg.wfo.in_sample, cfg.wfo.out_of_sample, cfg.wfo.step) == (252, 60, 60)
    assert cfg.wfo_config.horizon == 20
    assert (cfg.fees.commission_bps, cfg.fees.min_commission) == (2.0, 5.0)
    assert (cfg.fees.sell_rate, cfg.market.lot_size) == (0.0, 100)
    assert cfg.search.score_weights.annual_return == 0.4
    assert cfg.execution.model == "T1_OPEN"


def test_explicit_symbols_are_normalised():
    cfg = strategy_from_dict({
        "name": "explicit", "factors": ["momentum_20", "sharpe_20"],
        "universe": {"symbols": [510300, "159915.SZ", "512880.sh", "518880", 513100, "512480",
                                 "510500", "511260"],
                     "benchmark": 510300, "defensive": "511260.SH"},
    })
    assert cfg.universe.symbols == ("510300", "159915", "512880", "518880", "513100", "512480",
                                    "510500", "511260")
    assert cfg.universe.benchmark == "510300" and cfg.universe.defensive == "511260"


def test_all_reference_factors_by_name():
    cfg = strategy_from_dict({"name": "all", "universe": {"dataset": "sample"},
                              "factors": [s.name for s in DEFAULT_FACTORS]})
    assert cfg.factors == DEFAULT_FACTORS


# -- execution model ----------------------------------------------------------------------------

def test_close_model_is_accepted_but_comparison_only(tmp_path, default_data):
    data = copy.deepcopy(default_data)
    data["execution"]["model"] = "CLOSE"
    path = _write(tmp_path, data)
    with pytest.warns(StrategyWarning, match="comparison only"):
        cfg = load_strategy(path)
    assert cfg.execution.model == "CLOSE"
    assert cfg.comparison_only and cfg.execution.comparison_only
    assert cfg.tracking_tags()["comparison_only"] == "true"
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert load_strategy(path, warn=False).comparison_only


# -- invalid files name the file, the field and why ------------------------------------------

def _set(*keys: str | int, value: Any):
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in keys[:-1]:
            target = target[key]
        target[keys[-1]] = value
    return mutate


def _drop(*keys: str | int):
    def mutate(data: dict[str, Any]) -> None:
        target: Any = data
        for key in keys[:-1]:
            target = target[key]
        del target[keys[-1]]
    return mutate


def _append_factor(entry: Any):
    def mutate(data: dict[str, Any]) -> None:
        data["factors"].append(entry)
    return mutate


def _symbols(symbols: list[Any], **more: Any):
    def mutate(data: dict[str, Any]) -> None:
        data["universe"] = {"symbols": symbols, "benchmark": "510300", **more}
    return mutate


INVALID = [
    ("commission_too_high", _set("costs", "commission_bps", value=50),
     "costs.commission_bps", "basis points"),
    ("commission_negative", _set("costs", "commission_bps", value=-1),
     "costs.commission_bps", "greater than or equal to 0"),
    ("commission_not_a_number", _set("costs", "commission_bps", value="2bp"),
     "costs.commission_bps", "valid number"),
    ("min_commission_negative", _set("costs", "min_commission", value=-5),
     "costs.min_commission", "greater than or equal to 0"),
    ("lot_size_zero", _set("costs", "lot_size", value=0), "costs.lot_size",
     "greater than or equal to 1"),
    ("unknown_top_level_key", _set("costs_model", value={}), "costs_model", "unknown key"),
    ("unknown_nested_key", _set("costs", "comission_bps", value=2),
     "costs.comission_bps", "did you mean 'commission_bps'"),
    ("unknown_regime_key", _set("portfolio", "regime", "levles", value=[]),
     "portfolio.regime.levles", "did you mean 'levels'"),
    ("empty_factors", _set("factors", value=[]), "factors", "at least one factor"),
    ("factors_not_a_list", _set("factors", value="momentum_20"), "factors", "list"),
    ("unknown_factor_kernel",
     _append_factor({"name": "mom_x", "kernel": "momentom", "unit": "return",
                     "direction": 1}), "factors[25].kernel", "unknown kernel 'momentom'"),
    ("unknown_factor_name", _append_factor("momentum_21"), "factors[25]",
     "not a factor of the reference set"),
    ("bad_factor_param", _append_factor({"name": "mom_x", "kernel": "momentum",
                                         "unit": "return", "direction": 1,
                                         "params": {"windw": 5}}),
     "factors[25].params.windw", "unknown parameter"),
    ("bad_factor_direction", _append_factor({"name": "mom_x", "kernel": "momentum",
                                             "unit": "return", "direction": 0}),
     "factors[25].direction", "+1 or -1"),
    ("duplicate_factor", _append_factor("momentum_20"), "factors[25].name", "duplicate"),
    ("in_sample_too_short", _set("wfo", "in_sample", value=40), "wfo.in_sample",
     "greater than or equal to 60"),
    ("in_sample_short_for_horizon", _set("horizons", value=[1, 5, 120]), "wfo.in_sample",
     "too short for the 120-session horizon"),
    ("wfo_step_leaves_gaps", _set("wfo", "step", value=90), "wfo.step", "out_of_sample"),
    ("wfo_bad_mode", _set("wfo", "mode", value="expanding"), "wfo.mode", "rolling"),
    ("empty_horizons", _set("horizons", value=[]), "horizons", "at least one"),
    ("zero_horizon", _set("horizons", value=[0, 5]), "horizons", ">= 1"),
    ("screening_horizon_not_tested", _set("screening", "horizon", value=3),
     "screening.horizon", "not one of the horizons"),
    ("fdr_alpha_out_of_range", _set("screening", "fdr_alpha", value=1.5),
     "screening.fdr_alpha", "less than 1"),
    ("score_weights_sum", _set("search", "score_weights", "sharpe", value=0.5),
     "search.score_weights", "sum to 1"),
    ("combination_sizes", _set("search", "max_factors", value=1), "search.max_factors",
     ">= min_factors"),
    ("unknown_weighting", _set("search", "weightings", value=["equal", "risk_parity"]),
     "search.weightings[1]", "inverse_vol"),
    ("max_weight_too_small", _set("portfolio", "max_weight", value=0.2), "portfolio.top_n",
     "never be fully invested"),
    ("regime_levels_unordered", _set("portfolio", "regime", "levels",
                                     value=[{"percentile": 0.9, "exposure": 0.5},
                                            {"percentile": 0.8, "exposure": 0.3}]),
     "portfolio.regime.levels", "strictly increasing"),
    ("regime_exposure_range", _set("portfolio", "regime", "levels",
                                   value=[{"percentile": 0.9, "exposure": 1.5}]),
     "portfolio.regime.levels[0].exposure", "less than or equal to 1"),
    ("regime_second_exposure", _set("portfolio", "regime", "levels", 1, "exposure", value=1.5),
     "portfolio.regime.levels[1].exposure", "less than or equal to 1"),
    ("regime_exposure_rises", _set("portfolio", "regime", "levels", 1, "exposure", value=0.9),
     "portfolio.regime.levels", "must not increase"),
    ("regime_level_missing_key", _drop("portfolio", "regime", "levels", 0, "exposure"),
     "portfolio.regime.levels[0].exposure", "Field required"),
    ("regime_level_unknown_key", _set("portfolio", "regime", "levels", 0, "exposre", value=1),
     "portfolio.regime.levels[0].exposre", "did you mean 'exposure'"),
    ("regime_level_not_a_mapping", _set("portfolio", "regime", "levels", value=[[0.8, 0.6]]),
     "portfolio.regime.levels[0]", "valid dictionary"),
    ("regime_not_a_mapping", _set("portfolio", "regime", value=[0.8, 0.6]),
     "portfolio.regime", "valid dictionary"),
    ("regime_min_periods", _set("portfolio", "regime", "min_periods", value=300),
     "portfolio.regime.min_periods", "<= the regime lookback (252)"),
    ("regime_window", _set("portfolio", "regime", "window", value=1),
     "portfolio.regime.window", "greater than or equal to 2"),
    ("unknown_abs_momentum_key", _set("portfolio", "abs_momentum", "treshold", value=0),
     "portfolio.abs_momentum.treshold", "did you mean 'threshold'"),
    ("abs_momentum_threshold", _set("portfolio", "abs_momentum", "threshold", value=-2),
     "portfolio.abs_momentum.threshold", "greater than or equal to -1"),
    ("unknown_portfolio_key", _set("portfolio", "topn", value=3), "portfolio.topn",
     "did you mean 'top_n'"),
    ("portfolio_weighting", _set("portfolio", "weighting", value="vol"),
     "portfolio.weighting", "inverse_vol"),
    ("defensive_in_portfolio", _set("portfolio", "defensive_symbol", value="511260"),
     "portfolio.defensive_symbol", "unknown key"),
    ("initial_cash_negative", _set("portfolio", "initial_cash", value=-1),
     "portfolio.initial_cash", "greater than 0"),
    ("initial_cash_twice", _set("costs", "initial_cash", value=5_000),
     "portfolio.initial_cash", "costs.initial_cash"),
    ("costs_initial_cash_negative", _set("costs", "initial_cash", value=0),
     "costs.initial_cash", "greater than 0"),
    ("execution_model", _set("execution", "model", value="OPEN"), "execution.model",
     "T1_OPEN"),
    ("bad_name", _set("name", value="My Strategy"), "name", "lower-case"),
    ("missing_universe", _drop("universe"), "universe", "Field required"),
    ("unknown_dataset", _set("universe", "dataset", value="cn_etf_nope"), "universe.dataset",
     "unknown dataset"),
    ("bad_benchmark", _set("universe", "benchmark", value="51030"), "universe.benchmark",
     "not a fund code"),
    ("defensive_is_benchmark", _set("universe", "defensive", value="510300"),
     "universe.defensive", "benchmark"),
    ("dataset_and_symbols", _set("universe", "symbols", value=["510300", "159915"]),
     "universe.dataset/universe.symbols", "exactly one"),
    ("wrong_exchange_suffix", _symbols(["510300", "159915.SH", "512880"]),
     "universe.symbols[1]", "exchange suffix"),
    ("exclude_not_in_symbols", _symbols(["510300", "159915", "512880"], exclude=["518880"]),
     "universe.exclude", "not in symbols"),
    ("top_n_exceeds_universe", _symbols(["510300", "159915", "512880", "518880"]),
     "portfolio.top_n/search.top_n", "not a rotation"),
]


@pytest.mark.parametrize(("mutate", "field", "why"),
                         [case[1:] for case in INVALID], ids=[case[0] for case in INVALID])
def test_invalid_config_names_file_field_and_reason(tmp_path, default_data, mutate, field, why):
    data = copy.deepcopy(default_data)
    mutate(data)
    path = _write(tmp_path, data)
    with pytest.raises(StrategyConfigError) as info:
        load_strategy(path)
    err = info.value
    assert err.path == str(path) and str(path) in str(err)
    fields = [loc for loc, _ in err.problems]
    assert field in fields, f"{field!r} not in {err.problems}"
    reason = next(msg for loc, msg in err.problems if loc == field)
    assert why in reason, err.problems
    assert f"{field}: " in str(err)


def test_missing_file_and_bad_yaml(tmp_path):
    with pytest.raises(StrategyConfigError, match="no such file") as info:
        load_strategy(tmp_path / "nope.yaml")
    assert "nope.yaml" in str(info.value)
    with pytest.raises(StrategyConfigError, match="etf_rotation_default"):
        load_strategy("no_such_strategy")  # lists the known strategies
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\nuniverse: [unclosed\n", encoding="utf-8")
    with pytest.raises(StrategyConfigError, match="not valid YAML") as info:
        load_strategy(bad)
    assert "bad.yaml" in str(info.value)
    listed = _write(tmp_path, ["a", "b"], "list.yaml")
    with pytest.raises(StrategyConfigError, match="expected a mapping"):
        load_strategy(listed)


def test_several_problems_are_reported_together(tmp_path, default_data):
    data = copy.deepcopy(default_data)
    data["costs"]["commission_bps"] = 50
    data["wfo"]["in_sample"] = 10
    data["execution"]["modle"] = "CLOSE"
    with pytest.raises(StrategyConfigError) as info:
        load_strategy(_write(tmp_path, data))
    fields = {loc for loc, _ in info.value.problems}
    assert {"costs.commission_bps", "wfo.in_sample", "execution.modle"} <= fields


def test_strategy_config_is_a_pydantic_model():
    assert issubclass(StrategyConfig, pydantic.BaseModel)
    assert StrategyConfig.model_config["extra"] == "forbid"
