"""Platform settings: environment variables (``ETF_…``, nested with ``__``) over an optional YAML
file (``ETF_CONFIG_FILE``) over defaults. Validated on load; an invalid value raises
:class:`SettingsError` naming the setting, the value and why.

Profiles: ``local`` (embedded: SQLite Dagster instance, local Parquet and MLflow under ``home``)
and ``prod`` (PostgreSQL instance, Redis, an MLflow server). The profile only changes resource
wiring in :mod:`orchestration.definitions`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from rotation.config_paths import DATASET_CONFIG_DIR, PROJECT_ROOT
from rotation.cross_section import CrossSectionConfig
from rotation.quality import QualityConfig
from rotation.risk import RiskLimits


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it and says why."""


class MarketDataSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["sample", "files", "akshare"] = "sample"
    # files: a dataset config name in config/datasets (or a path to one) and the data folder.
    dataset: str | None = None
    files_root: Path | None = None
    # akshare: the funds to fetch, the price adjustment asked of the vendor and the history start.
    akshare_symbols: list[str] = Field(default_factory=list)
    akshare_adjust: Literal["", "qfq", "hfq"] = ""
    akshare_start: str = "2020-01-02"
    akshare_retries: int = Field(4, ge=0)
    # sample: the built-in generated market.
    sample_seed: int = 20240601
    sample_funds: int = Field(20, ge=4, le=60)
    sample_start: str = "2019-01-02"
    sample_end: str = "2025-12-31"

    @model_validator(mode="after")
    def _complete(self) -> MarketDataSettings:
        if self.source == "files":
            if not self.dataset:
                raise ValueError(
                    "market_data.dataset [env ETF_MARKET_DATA__DATASET] is required when "
                    "market_data.source=files"
                )
            if self.files_root is None:
                raise ValueError(
                    "market_data.files_root [env ETF_MARKET_DATA__FILES_ROOT] is required when "
                    "market_data.source=files (the folder holding the dataset, e.g. "
                    "../shared/data/cn_etf_morphkyan_raw)"
                )
            if not self.files_root.is_dir():
                raise ValueError(
                    f"market_data.files_root [env ETF_MARKET_DATA__FILES_ROOT]="
                    f"{str(self.files_root)!r} is not a directory"
                )
            self.dataset_config_path()
        if self.source == "akshare" and not self.akshare_symbols:
            raise ValueError(
                "market_data.akshare_symbols [env ETF_MARKET_DATA__AKSHARE_SYMBOLS] is required "
                "when market_data.source=akshare"
            )
        return self

    def dataset_config_path(self) -> Path:
        assert self.dataset is not None
        candidate = Path(self.dataset)
        if candidate.suffix in {".yaml", ".yml"}:
            path = candidate
        else:
            path = DATASET_CONFIG_DIR / f"{self.dataset}.yaml"
        if not path.is_file():
            known = sorted(p.stem for p in DATASET_CONFIG_DIR.glob("*.yaml"))
            raise ValueError(
                f"market_data.dataset [env ETF_MARKET_DATA__DATASET]={self.dataset!r}: no "
                f"dataset config at {path} (known: {known})"
            )
        return path


class ExecutionSettings(BaseModel):
    """The execution stage (SPEC §9): paper account, venue, risk limits, kill switch."""

    model_config = ConfigDict(extra="forbid")

    account_id: str = Field("paper-main", min_length=1)
    initial_cash: float = Field(1_000_000.0, gt=0)
    venue: Literal["paper"] = "paper"   # live adapters (QMT, CTP) plug in as venues
    # TWAP: child orders per parent across the session (1 = one market order at the open).
    twap_slices: int = Field(1, ge=1, le=48)
    # Engaged by environment (ETF_EXECUTION__KILL_SWITCH=true): no submission at all.
    kill_switch: bool = False
    lock_timeout_seconds: float = Field(60.0, gt=0)
    # The clock that decides whether a signal is fresh: unset = now; a date pins it (replays,
    # the demo on a historical sample).
    as_of: str | None = None
    # Paper-versus-backtest parity: max relative equity difference.
    parity_tolerance: float = Field(0.01, gt=0)
    risk: RiskLimits = Field(default_factory=RiskLimits)


class WalkForwardSettings(BaseModel):
    """Where the walk-forward windows run.

    ``in_process``: a rebuild runs every window in one run and one process, the panels
    prepared once (local, compose). ``k8s``: one run per window (a pod each under the Helm
    chart's K8sRunLauncher) with ``k8s_job_executor``, so each step of a window (its screen,
    then its search, vectorbt check and out-of-sample result) is a pod with the resources
    below; needs the ``k8s`` extra (dagster-k8s)."""

    model_config = ConfigDict(extra="forbid")

    executor: Literal["in_process", "k8s"] = "in_process"
    step_cpu: str = "2"
    step_memory: str = "6Gi"
    step_memory_limit: str = "8Gi"


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix="ETF_",
        env_nested_delimiter="__",
        extra="forbid",
        validate_default=True,
    )

    profile: Literal["local", "prod"] = "local"
    home: Path = PROJECT_ROOT / ".etf_home"
    storage_root: Path | None = None
    calendar: str = "XSHG"
    calendar_start: str = "2005-01-01"
    # First session of the session partitions; default: the start of the configured source.
    partitions_start: str | None = None
    schedule_timezone: str = "Asia/Shanghai"
    # After the close (15:00 Shanghai), Monday to Friday; non-sessions are skipped by calendar.
    schedule_cron: str = "30 16 * * 1-5"
    # The weekly full research rebuild (Saturday morning, before the next week's sessions).
    research_cron: str = "0 6 * * 6"
    market_data: MarketDataSettings = Field(default_factory=MarketDataSettings)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    cross_section: CrossSectionConfig = Field(default_factory=CrossSectionConfig)
    # The strategy YAML (a name in config/strategies or a path); its universe must name the
    # configured market data. Unset: the strategy in config/strategies that trades that data.
    strategy: str | None = None
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    walk_forward: WalkForwardSettings = Field(default_factory=WalkForwardSettings)
    mlflow_tracking_uri: str | None = None
    # The ledger (and the paper broker's book); unset: no execution stage is defined.
    postgres_url: str | None = None
    redis_url: str | None = None
    # Run-failure alerts: a webhook that receives a JSON post per failed run (empty: log only).
    alert_webhook_url: str | None = None
    alert_webhook_timeout_seconds: float = Field(5.0, gt=0)
    # The webserver's public URL, for run links in alerts.
    dagster_webserver_url: str | None = None

    @model_validator(mode="after")
    def _profile(self) -> Settings:
        if self.profile == "prod":
            missing = [
                name
                for name in ("postgres_url", "redis_url", "mlflow_tracking_uri")
                if not getattr(self, name)
            ]
            if missing:
                raise ValueError(
                    f"profile=prod needs {', '.join(missing)} "
                    f"(set {', '.join('ETF_' + m.upper() for m in missing)})"
                )
        if self.postgres_url and not self.postgres_url.startswith("postgresql+psycopg://"):
            raise ValueError(
                f"postgres_url [env ETF_POSTGRES_URL]={self.postgres_url!r} must use the "
                "psycopg 3 driver: postgresql+psycopg://user@host/db"
            )
        return self

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        sources: list[PydanticBaseSettingsSource] = [init_settings, env_settings]
        config_file = os.environ.get("ETF_CONFIG_FILE")
        if config_file:
            sources.append(YamlConfigSettingsSource(settings_cls, yaml_file=config_file))
        return tuple(sources)

    # -- derived locations ------------------------------------------------------------------
    @property
    def resolved_storage_root(self) -> Path:
        return self.storage_root or self.home / "storage"

    @property
    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or f"sqlite:///{(self.home / 'mlflow.db').as_posix()}"

    @property
    def dagster_home(self) -> Path:
        return self.home / "dagster"


def load_settings(**overrides: Any) -> Settings:
    """Settings from overrides, environment and ``ETF_CONFIG_FILE``; clear errors on failure."""
    config_file = os.environ.get("ETF_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise SettingsError(f"ETF_CONFIG_FILE={config_file}: no such file")
    try:
        return Settings(**overrides)
    except ValidationError as exc:
        raise SettingsError(_explain(exc)) from None
    except yaml.YAMLError as exc:
        raise SettingsError(f"ETF_CONFIG_FILE={config_file}: not valid YAML: {exc}") from None


def _explain(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "settings"
        env = "ETF_" + "__".join(str(p) for p in err["loc"]).upper() if err["loc"] else ""
        # Cross-field errors name their own setting and env var in the message.
        cross_field = err["type"] == "value_error"
        given = (f" (got {err['input']!r})"
                 if err["type"] != "missing" and err["loc"] and not cross_field else "")
        source = f" [env {env}]" if env and not cross_field else ""
        lines.append(f"setting {loc}{source}: {err['msg']}{given}")
    return "invalid settings:\n  " + "\n  ".join(lines)
