"""The ``classic:`` section of a strategy file (issue 15 item 2): validated against the
generator's config class, errors naming the file and the field."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from rotation.catalogue import read_catalogue
from rotation.factors import DEFAULT_FACTORS
from rotation.strategy import StrategyConfigError, load_strategy

CLASSIC_FILES = ("ma_cross_akshare", "macd_akshare", "bollinger_akshare", "rsi_akshare")


def _write(tmp_path: Path, classic: Any, **extra: Any) -> Path:
    data = {"name": "classic_test",
            "universe": {"dataset": "cn_etf_akshare_qfq_2020", "benchmark": "510300"},
            "classic": classic, **extra}
    path = tmp_path / "classic_test.yaml"
    path.write_text(yaml.safe_dump(data), encoding="utf-8")
    return path


def _error(path: Path) -> str:
    with pytest.raises(StrategyConfigError) as caught:
        load_strategy(path)
    text = str(caught.value)
    assert str(path) in text
    return text


def test_unknown_generator_names_the_file_and_field(tmp_path: Path) -> None:
    text = _error(_write(tmp_path, {"generator": "turtle", "params": {"fast": [5]}}))
    assert "classic.generator" in text and "turtle" in text and "ma_cross" in text


def test_unknown_parameter_names_it_and_the_known_ones(tmp_path: Path) -> None:
    text = _error(_write(tmp_path, {"generator": "ma_cross", "params": {"fastt": [5]}}))
    assert "classic.params" in text
    assert "fastt: not a parameter of MACrossConfig" in text and "'slow'" in text


def test_value_out_of_the_config_class_bounds(tmp_path: Path) -> None:
    text = _error(_write(tmp_path, {"generator": "rsi", "params": {"low": [20, 120]}}))
    assert "classic.params" in text and "low: 120" in text and "100" in text


def test_no_valid_combination_is_refused(tmp_path: Path) -> None:
    text = _error(_write(tmp_path, {"generator": "ma_cross",
                                    "params": {"fast": [30], "slow": [10, 20]}}))
    assert "classic.params" in text and "no combination" in text


def test_duplicate_candidate_values(tmp_path: Path) -> None:
    text = _error(_write(tmp_path, {"generator": "macd", "params": {"signal": [9, 9]}}))
    assert "classic.params" in text and "duplicate" in text


def test_bad_search_method(tmp_path: Path) -> None:
    text = _error(_write(tmp_path, {"generator": "grid", "search": "random"}))
    assert "classic.search" in text and "random" in text


def test_a_classic_strategy_has_no_combination_search(tmp_path: Path) -> None:
    text = _error(_write(tmp_path, {"generator": "ma_cross"}, search={"top_n": [3]}))
    assert "search: a classic strategy has no factor combination search" in text


def test_section_resolves_grid_and_auto(tmp_path: Path) -> None:
    strategy = load_strategy(_write(tmp_path, {
        "generator": "ma_cross", "params": {"fast": [5, 10, 30], "slow": [20, 40]},
        "max_grid": 4}))
    section = strategy.classic
    assert section is not None
    # fast 30 >= slow 20 is left out: 5 of the 6 combinations
    assert section.candidates() == [{"fast": 5, "slow": 20}, {"fast": 5, "slow": 40},
                                    {"fast": 10, "slow": 20}, {"fast": 10, "slow": 40},
                                    {"fast": 30, "slow": 40}]
    assert section.method == "optuna"  # 5 > max_grid 4
    assert isinstance(section.candidates()[0]["fast"], int)
    # no factors given: the shared factor research runs on the reference set
    assert strategy.factor_names == tuple(s.name for s in DEFAULT_FACTORS)


def test_the_shipped_classic_files_load_and_the_catalogue_reads_them() -> None:
    catalogue = read_catalogue()
    for name in CLASSIC_FILES:
        strategy = load_strategy(name)
        assert strategy.classic is not None
        assert strategy.universe.dataset == "cn_etf_akshare_qfq_2020"
        assert catalogue.files[name].fingerprint == strategy.fingerprint
    assert load_strategy("ma_cross_akshare").classic.method == "grid"  # type: ignore[union-attr]
    assert load_strategy("macd_akshare").classic.method == "optuna"  # type: ignore[union-attr]


def test_a_rotation_strategy_text_is_unchanged() -> None:
    rotation = load_strategy("etf_rotation_akshare")
    assert rotation.classic is None
    assert "classic" not in rotation.to_dict()


def test_a_classic_strategy_round_trips_through_its_dict() -> None:
    from rotation.strategy import strategy_from_dict

    for name in CLASSIC_FILES:
        strategy = load_strategy(name)
        data = strategy.to_dict()
        assert "search" not in data and data["classic"]["generator"]
        again = strategy_from_dict(data)
        assert again == strategy and again.fingerprint == strategy.fingerprint
