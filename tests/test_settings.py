"""``orchestration.settings.load_settings``: defaults, ``ETF_`` environment variables (nested with
``__``), an optional YAML file named by ``ETF_CONFIG_FILE`` and the validation errors.

Every test starts from an environment without any ``ETF_*`` variable, so a developer's shell (or
another test) cannot leak settings in.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from orchestration.settings import (
    DATASET_CONFIG_DIR,
    NON_SETTING_ENV,
    PROJECT_ROOT,
    Settings,
    SettingsError,
    load_settings,
    setting_env_names,
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
    # Derived locations of the embedded profile all live under the dataset's folder of home.
    assert s.home == PROJECT_ROOT / ".etf_home"
    assert s.data_home == s.home / "sample"
    assert s.resolved_storage_root == s.data_home / "storage"
    assert s.dagster_home == s.data_home / "dagster"
    assert s.resolved_mlflow_uri == f"sqlite:///{(s.data_home / 'mlflow.db').as_posix()}"


def test_explicit_storage_root_and_mlflow_uri_win_over_derived(tmp_path: Path) -> None:
    s = load_settings(home=tmp_path / "h", storage_root=tmp_path / "st",
                      mlflow_tracking_uri="http://mlflow:5000")
    assert s.resolved_storage_root == tmp_path / "st"
    assert s.resolved_mlflow_uri == "http://mlflow:5000"
    assert s.dagster_home == tmp_path / "h" / "sample" / "dagster"


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
    assert s.resolved_storage_root == tmp_path / s.dataset_key / "storage"


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
    assert ("environment variable ETF_QUALITY__MAX_STALE_DAY names no setting; did you mean "
            "ETF_QUALITY__MAX_STALE_DAYS (setting quality.max_stale_days)?") in msg


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
    assert KNOWN_DATASETS == ["cn_etf_akshare_qfq_2020", "cn_etf_morphkyan_raw",
                              "us_etf_phainia_yf_adjusted", "us_etf_taa_dashboard_yf"]
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
    # With redis_url, the cache's signing key (tests/test_cache_safety.py has its rules).
    "ETF_CACHE_SECRET": "s" * 32,
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


# -- settings that are refused (issue 11) -------------------------------------------------------
SCANNED = ("Dockerfile", "Makefile", "README.md", "pyproject.toml", "workspace.yaml",
           "tests/conftest.py")
SCANNED_DIRS = ("deploy", ".github", "benchmarks", "orchestration", "resources", "observability",
                "sensors", "jobs", "assets", "trading", "rotation", "docs", "config")
# ETF_NAME, not part of a longer word, not a `secrets.ETF_…` reference (CI secrets are no env
# vars) and not a prefix such as ETF_WALK_FORWARD__STEP_*.
ENV_NAME = re.compile(r"(?<![\w.])ETF_[A-Z0-9_]*[A-Z0-9](?![\w*])")


def _repository_env_names() -> dict[str, str]:
    """Every ETF_ name the repository (outside the tests' deliberate typos) mentions -> a file
    that mentions it."""
    files = [PROJECT_ROOT / f for f in SCANNED]
    for folder in SCANNED_DIRS:
        files += [p for p in (PROJECT_ROOT / folder).rglob("*")
                  if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc"]
    found: dict[str, str] = {}
    for path in files:
        if path == PROJECT_ROOT / "orchestration" / "settings.py" or not path.is_file():
            continue
        for name in ENV_NAME.findall(path.read_text(encoding="utf-8", errors="replace")):
            found.setdefault(name, str(path.relative_to(PROJECT_ROOT)))
    return found


def test_every_etf_name_in_the_repository_is_known() -> None:
    known = set(setting_env_names()) | set(NON_SETTING_ENV)
    found = _repository_env_names()
    assert {"ETF_POSTGRES_URL", "ETF_SHARED_DATA", "ETF_EXPORTER_PORT"} <= set(found)
    unknown = {name: where for name, where in found.items() if name not in known}
    assert unknown == {}, "name each in NON_SETTING_ENV (with why) or fix it"


@pytest.mark.parametrize(
    ("name", "suggestion"),
    [
        ("ETF_EXECUTION_KILL_SWITCH", "ETF_EXECUTION__KILL_SWITCH (setting execution.kill_switch)"),
        ("ETF_KILL_SWITCH", "ETF_EXECUTION__KILL_SWITCH (setting execution.kill_switch)"),
        ("etf_execution_kill_switch", "ETF_EXECUTION__KILL_SWITCH"),
        ("ETF_EXECUTION__RISK__MAX_ORDER_NOTIONALS",
         "ETF_EXECUTION__RISK__MAX_ORDER_NOTIONAL (setting execution.risk.max_order_notional)"),
        ("ETF_SHARED_DAT", "ETF_SHARED_DATA?"),
    ],
)
def test_env_var_that_names_no_setting_is_refused(clean_env: pytest.MonkeyPatch, name: str,
                                                  suggestion: str) -> None:
    msg = _error(clean_env, {name: "value-42"})
    assert f"environment variable {name} names no setting; did you mean {suggestion}" in msg
    assert "value-42" not in msg          # a mistyped secret must not end up in a log


def test_every_unknown_env_var_is_reported_at_once(clean_env: pytest.MonkeyPatch) -> None:
    msg = _error(clean_env, {"ETF_KILL_SWITCH": "true", "ETF_EXECUTION__AS_OFF": "2024-01-02",
                             "ETF_ZZZZZZZZZZZZ": "1"})
    assert "ETF_EXECUTION__AS_OFF names no setting; did you mean ETF_EXECUTION__AS_OF" in msg
    assert "ETF_KILL_SWITCH names no setting" in msg
    assert "ETF_ZZZZZZZZZZZZ names no setting\n" in msg + "\n"      # no suggestion


def test_known_env_vars_are_accepted(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Settings in any case (pydantic-settings is case-insensitive), the project's own
    variables and Kubernetes service links (the Helm chart's etf-rotation service)."""
    config = _write_yaml(tmp_path / "p.yaml", "calendar: XSHG\n")
    env = {name: "x" for name in NON_SETTING_ENV} | {
        "ETF_CONFIG_FILE": str(config), "etf_execution__kill_switch": "true",
        "ETF_ROTATION_SERVICE_HOST": "10.96.3.7", "ETF_ROTATION_SERVICE_PORT": "4000",
        "ETF_ROTATION_SERVICE_PORT_GRPC": "4000", "ETF_ROTATION_PORT": "tcp://10.96.3.7:4000",
        "ETF_ROTATION_PORT_4000_TCP": "tcp://10.96.3.7:4000",
        "ETF_ROTATION_PORT_4000_TCP_PROTO": "tcp", "ETF_ROTATION_PORT_4000_TCP_PORT": "4000",
        "ETF_ROTATION_PORT_4000_TCP_ADDR": "10.96.3.7"}
    for key, value in env.items():
        clean_env.setenv(key, value)
    assert load_settings().execution.kill_switch is True


def test_a_port_variable_that_is_no_service_link_is_refused(clean_env: pytest.MonkeyPatch
                                                            ) -> None:
    msg = _error(clean_env, {"ETF_REDIS_PORT": "6379"})
    assert "environment variable ETF_REDIS_PORT names no setting" in msg


def test_unknown_yaml_keys_are_refused(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    config = _write_yaml(tmp_path / "p.yaml",
                         "kill_switch: true\nexecution:\n  kill_swich: true\n  risk:\n"
                         "    lot_sise: 100\nquality:\n  max_stale_days: 3\n")
    msg = _error(clean_env, {"ETF_CONFIG_FILE": str(config)})
    prefix = f"ETF_CONFIG_FILE={config}: key"
    assert f"{prefix} kill_switch names no setting; did you mean execution.kill_switch?" in msg
    assert f"{prefix} execution.kill_swich names no setting; did you mean " \
           "execution.kill_switch?" in msg
    assert f"{prefix} execution.risk.lot_sise names no setting; did you mean " \
           "execution.risk.lot_size?" in msg
    assert "quality.max_stale_days names" not in msg


@pytest.mark.parametrize("value", ["2024-13-45", "2023-02-29", "2024-02-30", "20240105",
                                   "2024-1-5", "yesterday", "2024-01-05T00:00"])
def test_as_of_must_be_a_calendar_date(clean_env: pytest.MonkeyPatch, value: str) -> None:
    msg = _error(clean_env, {"ETF_EXECUTION__AS_OF": value})
    assert "setting execution.as_of [env ETF_EXECUTION__AS_OF]: not a" in msg
    assert "YYYY-MM-DD" in msg or "not a real calendar date" in msg
    assert f"(got {value!r})" in msg


@pytest.mark.parametrize(
    ("env", "setting"),
    [
        ("ETF_PARTITIONS_START", "partitions_start"),
        ("ETF_CALENDAR_START", "calendar_start"),
        ("ETF_MARKET_DATA__SAMPLE_START", "market_data.sample_start"),
        ("ETF_MARKET_DATA__SAMPLE_END", "market_data.sample_end"),
        ("ETF_MARKET_DATA__AKSHARE_START", "market_data.akshare_start"),
    ],
)
def test_every_date_setting_is_validated(clean_env: pytest.MonkeyPatch, env: str,
                                         setting: str) -> None:
    msg = _error(clean_env, {env: "2021-02-29"})
    assert f"setting {setting} [env {env}]: not a real calendar date" in msg
    assert "(got '2021-02-29')" in msg


def test_valid_dates(clean_env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    clean_env.setenv("ETF_EXECUTION__AS_OF", "2024-02-29")
    assert load_settings().execution.as_of == "2024-02-29"
    # Empty means unset (compose's ${X:-}), as the clock and the partitions always read it.
    clean_env.setenv("ETF_EXECUTION__AS_OF", "")
    clean_env.setenv("ETF_PARTITIONS_START", "")
    s = load_settings()
    assert (s.execution.as_of, s.partitions_start) == (None, None)
    # YAML reads an unquoted date as a date: it is taken as its ISO text.
    clean_env.delenv("ETF_EXECUTION__AS_OF")
    clean_env.delenv("ETF_PARTITIONS_START")
    config = _write_yaml(tmp_path / "p.yaml", "partitions_start: 2021-01-04\n"
                                              "execution:\n  as_of: 2023-12-29\n")
    clean_env.setenv("ETF_CONFIG_FILE", str(config))
    s = load_settings()
    assert (s.partitions_start, s.execution.as_of) == ("2021-01-04", "2023-12-29")


@pytest.mark.parametrize(
    ("field", "value", "why"),
    [
        ("max_order_notional", "inf", "finite number"),
        ("max_order_notional", "1e18", "less than or equal to 100000000000"),
        ("max_daily_notional", "Infinity", "finite number"),
        ("max_daily_notional", "2e11", "less than or equal to 100000000000"),
        ("max_weight", "nan", "finite number"),
        ("drawdown_stop", "-inf", "finite number"),
        ("price_band", "nan", "finite number"),
        ("weight_tolerance", "inf", "finite number"),
        ("max_signal_age_sessions", "1000", "less than or equal to 20"),
        ("lot_size", "10000000", "less than or equal to 1000000"),
    ],
)
def test_risk_limits_are_finite_and_bounded(clean_env: pytest.MonkeyPatch, field: str,
                                            value: str, why: str) -> None:
    env = f"ETF_EXECUTION__RISK__{field.upper()}"
    msg = _error(clean_env, {env: value})
    assert f"setting execution.risk.{field} [env {env}]: " in msg
    assert why in msg
    assert f"(got {value!r})" in msg


def test_risk_limits_keep_their_defaults_and_accept_the_bounds(clean_env: pytest.MonkeyPatch
                                                               ) -> None:
    from rotation.risk import RiskLimits

    assert load_settings().execution.risk == RiskLimits()
    clean_env.setenv("ETF_EXECUTION__RISK__MAX_DAILY_NOTIONAL", "1e11")
    clean_env.setenv("ETF_EXECUTION__RISK__MAX_SIGNAL_AGE_SESSIONS", "20")
    risk = load_settings().execution.risk
    assert (risk.max_daily_notional, risk.max_signal_age_sessions) == (1e11, 20)


PROD_WITH_CACHE_SECRET = {**PROD_URLS, "ETF_PROFILE": "prod", "ETF_CACHE_SECRET": "k" * 64}


@pytest.mark.parametrize(
    ("env", "url", "password"),
    [
        ("ETF_POSTGRES_URL", "postgresql+psycopg://ledger_user:change-me@db:5432/ledger",
         "change-me"),
        ("ETF_POSTGRES_URL", "postgresql+psycopg://ledger_user:CHANGEME@db:5432/ledger",
         "CHANGEME"),
        ("ETF_POSTGRES_URL", "postgresql+psycopg://ledger_user:change%2Dme@db:5432/ledger",
         "change%2Dme"),
        ("ETF_POSTGRES_URL", "postgresql+psycopg://ledger_user:@db:5432/ledger", ""),
        ("ETF_POSTGRES_URL", "postgresql+psycopg://postgres:postgres@db:5432/ledger",
         "postgres"),
        ("ETF_REDIS_URL", "redis://:password@cache:6379/0", "password"),
        ("ETF_REDIS_URL", "redis://default:Secret@cache:6379/0", "Secret"),
        ("ETF_MLFLOW_TRACKING_URI", "http://admin:admin@mlflow:5000", "admin"),
        ("ETF_MLFLOW_TRACKING_URI", "postgresql://ml:etf@db/mlflow", "etf"),
    ],
)
def test_prod_refuses_default_passwords(clean_env: pytest.MonkeyPatch, env: str, url: str,
                                        password: str) -> None:
    msg = _error(clean_env, {**PROD_WITH_CACHE_SECRET, env: url})
    setting = env.removeprefix("ETF_").lower()
    assert f"profile=prod refuses {setting} [env {env}]: its password is empty or a " \
           "well-known default" in msg
    assert url not in msg and f":{password}@" not in msg


def test_prod_accepts_real_or_no_passwords(clean_env: pytest.MonkeyPatch) -> None:
    for key, value in PROD_WITH_CACHE_SECRET.items():
        clean_env.setenv(key, value)
    clean_env.setenv("ETF_POSTGRES_URL", "postgresql+psycopg://etf:q8Vt-3nX_p1@db:5432/ledger")
    clean_env.setenv("ETF_REDIS_URL", "redis://cache:6379/0")        # no password: no auth
    assert load_settings().postgres_url.endswith(":q8Vt-3nX_p1@db:5432/ledger")  # type: ignore[union-attr]
    # The local profile is for laptops and tests: their throwaway passwords are fine.
    clean_env.setenv("ETF_PROFILE", "local")
    clean_env.setenv("ETF_POSTGRES_URL", "postgresql+psycopg://etf:change-me@db:5432/ledger")
    assert load_settings().profile == "local"


def _compose_app_env(name: str) -> str:
    """``name`` as deploy/compose.yaml gives it to the code server (its first occurrence: the
    x-etf-env anchor), with deploy/.env.example's values substituted as compose does."""
    example = dict(line.split("=", 1) for line in
                   (PROJECT_ROOT / "deploy" / ".env.example").read_text().splitlines()
                   if line.strip() and not line.startswith("#"))
    compose = (PROJECT_ROOT / "deploy" / "compose.yaml").read_text()
    found = re.search(rf"^\s+{name}: (.+)$", compose, re.MULTILINE)
    assert found is not None, f"deploy/compose.yaml no longer sets {name}"
    return re.sub(r"\$\{(\w+)[^}]*\}", lambda m: example[m.group(1)], found.group(1))


@pytest.mark.parametrize("env", ["ETF_POSTGRES_URL", "ETF_REDIS_URL"])
def test_the_env_example_placeholders_are_refused_as_compose_passes_them(
        clean_env: pytest.MonkeyPatch, env: str) -> None:
    """deploy/.env.example's placeholders, in the URLs deploy/compose.yaml builds from them,
    stop the prod code server: an unedited example cannot be deployed by mistake."""
    url = _compose_app_env(env)
    assert ":change-me@" in url
    msg = _error(clean_env, {**PROD_WITH_CACHE_SECRET, env: url})
    setting = env.removeprefix("ETF_").lower()
    assert f"profile=prod refuses {setting} [env {env}]" in msg


def test_wrong_driver_error_hides_the_password(clean_env: pytest.MonkeyPatch) -> None:
    msg = _error(clean_env, {"ETF_POSTGRES_URL": "postgresql://etf:hunter2@db/etf"})
    assert "'postgresql://etf:***@db/etf' must use the psycopg 3 driver" in msg
    assert "hunter2" not in msg
