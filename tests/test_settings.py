"""``orchestration.settings.load_settings``: defaults, ``ETF_`` environment variables (nested with
``__``), an optional YAML file named by ``ETF_CONFIG_FILE`` and the validation errors.

Every test starts from an environment without any ``ETF_*`` variable, so a developer's shell (or
another test) cannot leak settings in.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from orchestration.settings import (
    DATASET_CONFIG_DIR,
    PROJECT_ROOT,
    Settings,
    SettingsError,
    load_settings,
)

KNOWN_DATASETS = sorted(p.stem for p in DATASET_CONFIG_DIR.glob("*.yaml"))


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.upper().startswith("ETF_"):
            monkeypatch.delenv(name)
    return monkeypatch


def _error(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], **overrides: object) -> str:
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as info:
        load_settings(**overrides)
    return str(info.value)


def _write_yaml(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


# -- defaults ---------------------------------------------------------------------------------
def test_defaults_are_local_profile_and_sample_source() -> None:
    s = load_settings()
    assert isinstance(s, Settings)
    assert s.profile == "local"
    assert s.market_data.source == "sample"
    assert s.market_data.dataset is None
    assert s.market_data.files_root is None
    assert s.market_data.akshare_symbols == []
    assert s.market_data.sample_funds == 20
    assert s.market_data.sample_seed == 20240601
    assert (s.market_data.sample_start, s.market_data.sample_end) == ("2019-01-02", "2025-12-31")
    assert s.calendar == "XSHG"
    assert s.schedule_timezone == "Asia/Shanghai"
    assert s.schedule_cron == "30 16 * * 1-5"
    assert s.partitions_start is None
    assert s.postgres_url is None and s.redis_url is None and s.mlflow_tracking_uri is None
    assert s.quality.max_stale_days == 5
    assert s.cross_section.min_history == 60
    assert s.cross_section.winsorize == "quantile"
    assert s.cross_section.standardize == "zscore"
    # Derived locations of the embedded profile all live under ``home``.
    assert s.home == PROJECT_ROOT / ".etf_home"
    assert s.resolved_storage_root == s.home / "storage"
    assert s.dagster_home == s.home / "dagster"
    assert s.resolved_mlflow_uri == f"sqlite:///{(s.home / 'mlflow.db').as_posix()}"


def test_explicit_storage_root_and_mlflow_uri_win_over_derived(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "h", storage_root=tmp_path / "st",
                      mlflow_tracking_uri="http://mlflow:5000")
    assert s.resolved_storage_root == tmp_path / "st"
    assert s.resolved_mlflow_uri == "http://mlflow:5000"
    assert s.dagster_home == tmp_path / "h" / "dagster"


# -- environment --------------------------------------------------------------------------------
def test_env_vars_with_prefix_and_nested_delimiter(clean_env: pytest.MonkeyPatch,
                                                   tmp_path: Path) -> None:
    clean_env.setenv("ETF_MARKET_DATA__SOURCE", "akshare")
    clean_env.setenv("ETF_MARKET_DATA__AKSHARE_SYMBOLS", '["510300", "159915"]')
    clean_env.setenv("ETF_MARKET_DATA__AKSHARE_ADJUST", "qfq")
    clean_env.setenv("ETF_CROSS_SECTION__MIN_HISTORY", "120")
    clean_env.setenv("ETF_CROSS_SECTION__NEUTRALIZE_BETA", "true")
    clean_env.setenv("ETF_QUALITY__LIMIT_SLACK", "0.01")
    clean_env.setenv("ETF_CALENDAR", "XNYS")
    clean_env.setenv("ETF_HOME", str(tmp_path))
    s = load_settings()
    assert s.market_data.source == "akshare"
    assert s.market_data.akshare_symbols == ["510300", "159915"]
    assert s.market_data.akshare_adjust == "qfq"
    assert s.cross_section.min_history == 120
    assert s.cross_section.neutralize_beta is True
    assert s.quality.limit_slack == pytest.approx(0.01)
    # Untouched nested values keep their defaults.
    assert s.cross_section.max_stale_days == 5
    assert s.calendar == "XNYS"
    assert s.home == tmp_path
    assert s.resolved_storage_root == tmp_path / "storage"


def test_files_source_from_env(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ETF_MARKET_DATA__SOURCE", "files")
    clean_env.setenv("ETF_MARKET_DATA__DATASET", "cn_etf_morphkyan_raw")
    clean_env.setenv("ETF_MARKET_DATA__FILES_ROOT", str(tmp_path))
    s = load_settings()
    assert s.market_data.files_root == tmp_path
    assert s.market_data.dataset_config_path() == DATASET_CONFIG_DIR / "cn_etf_morphkyan_raw.yaml"


def test_dataset_given_as_a_yaml_path(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write_yaml(tmp_path / "mine.yaml", "name: mine\n")
    s = load_settings(market_data={"source": "files", "dataset": str(config),
                                   "files_root": str(tmp_path)})
    assert s.market_data.dataset_config_path() == config


def test_keyword_overrides_win_over_env(clean_env: pytest.MonkeyPatch) -> None:
    clean_env.setenv("ETF_CALENDAR", "XNYS")
    clean_env.setenv("ETF_SCHEDULE_TIMEZONE", "America/New_York")
    s = load_settings(calendar="XSHG")
    assert s.calendar == "XSHG"
    assert s.schedule_timezone == "America/New_York"


# -- YAML file --------------------------------------------------------------------------------
def test_yaml_file_from_etf_config_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write_yaml(
        tmp_path / "platform.yaml",
        "calendar: XNYS\n"
        "schedule_timezone: America/New_York\n"
        f"home: {tmp_path / 'home'}\n"
        "quality:\n  max_stale_days: 7\n  lookback_sessions: 12\n"
        "cross_section:\n  winsorize: mad\n  mad_k: 3.5\n"
        f"market_data:\n  source: files\n  dataset: cn_etf_akshare_qfq_2020\n"
        f"  files_root: {tmp_path}\n",
    )
    clean_env.setenv("ETF_CONFIG_FILE", str(config))
    s = load_settings()
    assert s.calendar == "XNYS"
    assert s.schedule_timezone == "America/New_York"
    assert s.home == tmp_path / "home"
    assert (s.quality.max_stale_days, s.quality.lookback_sessions) == (7, 12)
    assert s.cross_section.winsorize == "mad"
    assert s.cross_section.mad_k == pytest.approx(3.5)
    assert s.market_data.source == "files"
    assert s.market_data.dataset == "cn_etf_akshare_qfq_2020"
    assert s.market_data.files_root == tmp_path


def test_env_overrides_yaml_field_by_field(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write_yaml(
        tmp_path / "platform.yaml",
        "calendar: XNYS\nquality:\n  max_stale_days: 7\n  lookback_sessions: 12\n",
    )
    clean_env.setenv("ETF_CONFIG_FILE", str(config))
    clean_env.setenv("ETF_QUALITY__MAX_STALE_DAYS", "9")
    clean_env.setenv("ETF_CALENDAR", "XSHG")
    s = load_settings()
    assert s.calendar == "XSHG"
    assert s.quality.max_stale_days == 9
    # The sibling value from the YAML file survives the env override of its neighbour.
    assert s.quality.lookback_sessions == 12


def test_missing_config_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere" / "platform.yaml"
    msg = _error(clean_env, {"ETF_CONFIG_FILE": str(missing)})
    assert "ETF_CONFIG_FILE" in msg
    assert str(missing) in msg
    assert "no such file" in msg


def test_invalid_value_in_yaml_names_setting_and_value(clean_env: pytest.MonkeyPatch,
                                                       tmp_path: Path) -> None:
    config = _write_yaml(tmp_path / "p.yaml", "cross_section:\n  winsorize: trim\n")
    msg = _error(clean_env, {"ETF_CONFIG_FILE": str(config)})
    assert "cross_section.winsorize" in msg
    assert "'trim'" in msg
    assert "quantile" in msg  # the allowed values are listed


def test_malformed_yaml_raises_settings_error(clean_env: pytest.MonkeyPatch,
                                              tmp_path: Path) -> None:
    config = _write_yaml(tmp_path / "broken.yaml", "cross_section: [1\n")
    msg = _error(clean_env, {"ETF_CONFIG_FILE": str(config)})
    assert str(config) in msg


# -- invalid values ---------------------------------------------------------------------------
@pytest.mark.parametrize(
    ("env", "setting", "value", "hint"),
    [
        ({"ETF_PROFILE": "staging"}, "profile", "'staging'", "'local' or 'prod'"),
        ({"ETF_MARKET_DATA__SOURCE": "csv"}, "market_data.source", "'csv'", "'files'"),
        ({"ETF_CROSS_SECTION__STANDARDIZE": "minmax"}, "cross_section.standardize",
         "'minmax'", "'zscore'"),
        ({"ETF_MARKET_DATA__AKSHARE_ADJUST": "both"}, "market_data.akshare_adjust", "'both'",
         "'qfq'"),
    ],
)
def test_bad_enum(clean_env: pytest.MonkeyPatch, env: dict[str, str], setting: str, value: str,
                  hint: str) -> None:
    msg = _error(clean_env, env)
    env_name = next(iter(env))
    assert f"setting {setting} [env {env_name}]" in msg
    assert f"(got {value})" in msg
    assert hint in msg


@pytest.mark.parametrize(
    ("env", "setting", "value", "why"),
    [
        ({"ETF_QUALITY__MAX_STALE_DAYS": "abc"}, "quality.max_stale_days", "'abc'",
         "valid integer"),
        ({"ETF_CROSS_SECTION__MIN_HISTORY": "2.5"}, "cross_section.min_history", "'2.5'",
         "integer"),
        ({"ETF_MARKET_DATA__SAMPLE_FUNDS": "100"}, "market_data.sample_funds", "'100'",
         "less than or equal to 60"),
        ({"ETF_QUALITY__MAX_STALE_DAYS": "0"}, "quality.max_stale_days", "'0'",
         "greater than or equal to 1"),
        ({"ETF_CROSS_SECTION__LOWER_QUANTILE": "0.6"}, "cross_section.lower_quantile", "'0.6'",
         "less than 0.5"),
    ],
)
def test_bad_number(clean_env: pytest.MonkeyPatch, env: dict[str, str], setting: str, value: str,
                    why: str) -> None:
    msg = _error(clean_env, env)
    env_name = next(iter(env))
    assert f"setting {setting} [env {env_name}]" in msg
    assert f"(got {value})" in msg
    assert why in msg


def test_unknown_nested_setting_is_rejected(clean_env: pytest.MonkeyPatch) -> None:
    msg = _error(clean_env, {"ETF_QUALITY__MAX_STALE_DAY": "3"})
    assert "quality.max_stale_day" in msg
    assert "ETF_QUALITY__MAX_STALE_DAY" in msg
    assert "Unexpected keyword argument" in msg


def test_several_errors_are_all_reported(clean_env: pytest.MonkeyPatch) -> None:
    msg = _error(clean_env, {"ETF_PROFILE": "staging", "ETF_QUALITY__VWAP_SLACK": "x"})
    assert "setting profile [env ETF_PROFILE]" in msg
    assert "setting quality.vwap_slack [env ETF_QUALITY__VWAP_SLACK]" in msg


# -- cross-field rules of the files and akshare sources ---------------------------------------
def test_files_source_without_dataset(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    msg = _error(clean_env, {"ETF_MARKET_DATA__SOURCE": "files",
                             "ETF_MARKET_DATA__FILES_ROOT": str(tmp_path)})
    assert "market_data.dataset [env ETF_MARKET_DATA__DATASET] is required" in msg
    assert "source=files" in msg
    assert "ETF_MARKET_DATA" in msg


def test_files_source_without_files_root(clean_env: pytest.MonkeyPatch) -> None:
    msg = _error(clean_env, {"ETF_MARKET_DATA__SOURCE": "files",
                             "ETF_MARKET_DATA__DATASET": "cn_etf_morphkyan_raw"})
    assert "market_data.files_root [env ETF_MARKET_DATA__FILES_ROOT] is required" in msg
    assert "ETF_MARKET_DATA" in msg


def test_files_source_with_missing_root(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    root = tmp_path / "not-there"
    msg = _error(clean_env, {"ETF_MARKET_DATA__SOURCE": "files",
                             "ETF_MARKET_DATA__DATASET": "cn_etf_morphkyan_raw",
                             "ETF_MARKET_DATA__FILES_ROOT": str(root)})
    assert f"ETF_MARKET_DATA__FILES_ROOT]={str(root)!r} is not a directory" in msg


def test_files_root_that_is_a_file(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    a_file = _write_yaml(tmp_path / "x.txt", "x")
    msg = _error(clean_env, {}, market_data={"source": "files", "dataset": "cn_etf_morphkyan_raw",
                                             "files_root": str(a_file)})
    assert f"ETF_MARKET_DATA__FILES_ROOT]={str(a_file)!r} is not a directory" in msg


def test_unknown_dataset_lists_known_ones(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    msg = _error(clean_env, {"ETF_MARKET_DATA__SOURCE": "files",
                             "ETF_MARKET_DATA__DATASET": "cn_etf_nope",
                             "ETF_MARKET_DATA__FILES_ROOT": str(tmp_path)})
    assert "ETF_MARKET_DATA__DATASET]='cn_etf_nope'" in msg
    assert str(DATASET_CONFIG_DIR / "cn_etf_nope.yaml") in msg
    assert KNOWN_DATASETS == ["cn_etf_akshare_qfq_2020", "cn_etf_morphkyan_raw"]
    assert f"known: {KNOWN_DATASETS}" in msg


def test_dataset_yaml_path_that_does_not_exist(clean_env: pytest.MonkeyPatch,
                                               tmp_path: Path) -> None:
    missing = tmp_path / "ghost.yaml"
    msg = _error(clean_env, {}, market_data={"source": "files", "dataset": str(missing),
                                             "files_root": str(tmp_path)})
    assert f"no dataset config at {missing}" in msg


def test_akshare_without_symbols(clean_env: pytest.MonkeyPatch) -> None:
    msg = _error(clean_env, {"ETF_MARKET_DATA__SOURCE": "akshare"})
    assert "market_data.akshare_symbols [env ETF_MARKET_DATA__AKSHARE_SYMBOLS] is required" in msg
    assert "source=akshare" in msg


@pytest.mark.parametrize(
    ("env", "expected_env"),
    [
        ({"ETF_MARKET_DATA__SOURCE": "files", "ETF_MARKET_DATA__FILES_ROOT": "."},
         "ETF_MARKET_DATA__DATASET"),
        ({"ETF_MARKET_DATA__SOURCE": "files", "ETF_MARKET_DATA__DATASET": "cn_etf_morphkyan_raw"},
         "ETF_MARKET_DATA__FILES_ROOT"),
        ({"ETF_MARKET_DATA__SOURCE": "akshare"}, "ETF_MARKET_DATA__AKSHARE_SYMBOLS"),
    ],
)
def test_cross_field_errors_name_the_field_env_var(clean_env: pytest.MonkeyPatch,
                                                   env: dict[str, str], expected_env: str) -> None:
    msg = _error(clean_env, env)
    assert expected_env in msg


# -- prod profile -----------------------------------------------------------------------------
PROD_URLS = {
    "ETF_POSTGRES_URL": "postgresql+psycopg://etf@db:5432/etf",
    "ETF_REDIS_URL": "redis://cache:6379/0",
    "ETF_MLFLOW_TRACKING_URI": "http://mlflow:5000",
}


def test_prod_profile_with_all_services(clean_env: pytest.MonkeyPatch) -> None:
    for key, value in PROD_URLS.items():
        clean_env.setenv(key, value)
    clean_env.setenv("ETF_PROFILE", "prod")
    s = load_settings()
    assert s.profile == "prod"
    assert s.postgres_url == PROD_URLS["ETF_POSTGRES_URL"]
    assert s.redis_url == PROD_URLS["ETF_REDIS_URL"]
    assert s.resolved_mlflow_uri == PROD_URLS["ETF_MLFLOW_TRACKING_URI"]


@pytest.mark.parametrize("missing", sorted(PROD_URLS))
def test_prod_profile_missing_one_service(clean_env: pytest.MonkeyPatch, missing: str) -> None:
    env = {k: v for k, v in PROD_URLS.items() if k != missing}
    env["ETF_PROFILE"] = "prod"
    msg = _error(clean_env, env)
    setting = missing.removeprefix("ETF_").lower()
    assert f"profile=prod needs {setting} (set {missing})" in msg
    for present in env:
        if present != "ETF_PROFILE":
            assert present not in msg


def test_prod_profile_missing_all_services(clean_env: pytest.MonkeyPatch) -> None:
    msg = _error(clean_env, {"ETF_PROFILE": "prod"})
    assert "postgres_url, redis_url, mlflow_tracking_uri" in msg
    assert "ETF_POSTGRES_URL, ETF_REDIS_URL, ETF_MLFLOW_TRACKING_URI" in msg


@pytest.mark.parametrize("url", ["postgresql://etf@db/etf", "postgresql+psycopg2://etf@db/etf"])
def test_postgres_url_with_wrong_driver(clean_env: pytest.MonkeyPatch, url: str) -> None:
    msg = _error(clean_env, {"ETF_POSTGRES_URL": url})
    assert "must use the psycopg 3 driver" in msg
    assert "postgresql+psycopg://" in msg


def test_postgres_url_error_names_value_and_env(clean_env: pytest.MonkeyPatch) -> None:
    url = "postgresql://etf@db/etf"
    msg = _error(clean_env, {"ETF_POSTGRES_URL": url})
    assert url in msg
    assert "ETF_POSTGRES_URL" in msg
