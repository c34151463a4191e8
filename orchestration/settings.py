"""Platform settings: environment variables (``ETF_…``, nested with ``__``) over an optional YAML
file (``ETF_CONFIG_FILE``) over defaults. Validated on load; an invalid value raises
:class:`SettingsError` naming the setting, the value and why.

Profiles: ``local`` (embedded: SQLite Dagster instance, local Parquet and MLflow under ``home``)
and ``prod`` (PostgreSQL instance, Redis, an MLflow server). The profile only changes resource
wiring in :mod:`orchestration.definitions`.
"""

from __future__ import annotations

import datetime as dt
import difflib
import json
import os
import re
import types
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, Union, get_args, get_origin
from urllib.parse import unquote, urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic.dataclasses import is_pydantic_dataclass
from pydantic.fields import FieldInfo
from pydantic_core import PydanticCustomError
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    YamlConfigSettingsSource,
)

from rotation.config_paths import DATASET_CONFIG_DIR, PROJECT_ROOT
from rotation.cross_section import CrossSectionConfig
from rotation.market import DEFAULT_MARKET, load_market
from rotation.quality import QualityConfig
from rotation.risk import RiskLimits
from rotation.yaml_config import parse_yaml
from trading.account import Allocation, stage_of
from trading.conduct import ConductRules
from trading.volume_profile import DEFAULT_CURVE, profile_from_curve

# The UIs `make dev` starts by default (DAGSTER_PORT and MLFLOW_PORT in the Makefile move them
# and set ETF_DAGSTER_WEBSERVER_URL / ETF_MLFLOW_UI_URL to match).
LOCAL_DAGSTER_UI = "http://127.0.0.1:3000"
LOCAL_MLFLOW_UI = "http://127.0.0.1:5000"


class SettingsError(ValueError):
    """A setting is missing or invalid; the message names it and says why."""


_ISO_DATE = re.compile(r"\d{4}-\d{2}-\d{2}")


def _yaml_date_as_text(value: object) -> object:
    # YAML reads an unquoted 2024-01-02 as a date; the setting is its ISO text.
    return value.isoformat() if type(value) is dt.date else value


def _calendar_date(value: str) -> str:
    """A real calendar date in YYYY-MM-DD form, refused on load rather than mid-run."""
    if not _ISO_DATE.fullmatch(value):
        raise PydanticCustomError("calendar_date", "not a date in YYYY-MM-DD form")
    try:
        dt.date.fromisoformat(value)
    except ValueError as exc:
        raise PydanticCustomError("calendar_date", "not a real calendar date: {why}",
                                  {"why": str(exc)}) from None
    return value


def _empty_is_unset(value: object) -> object:
    # An empty variable (compose's ``${X:-}``) means "not set", as the consumers always read it.
    return None if value == "" else value


# Every date setting: its own error type, so the message names the env var and the value.
CalendarDate = Annotated[str, BeforeValidator(_yaml_date_as_text), AfterValidator(_calendar_date)]
OptionalCalendarDate = Annotated[CalendarDate | None, BeforeValidator(_empty_is_unset)]


class MarketDataSettings(BaseModel):
    model_config = ConfigDict(extra="forbid")

    source: Literal["sample", "files", "akshare"] = "sample"
    # files: a dataset config name in config/datasets (or a path to one) and the data folder.
    dataset: str | None = None
    files_root: Path | None = None
    # akshare: the funds to fetch, the price adjustment asked of the vendor and the history start.
    akshare_symbols: list[str] = Field(default_factory=list)
    akshare_adjust: Literal["", "qfq", "hfq"] = ""
    akshare_start: CalendarDate = "2020-01-02"
    akshare_retries: int = Field(4, ge=0)
    # sample: the built-in generated market.
    sample_seed: int = 20240601
    sample_funds: int = Field(20, ge=4, le=60)
    sample_start: CalendarDate = "2019-01-02"
    sample_end: CalendarDate = "2025-12-31"

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


class AccountSettings(BaseModel):
    """A further account of the deployment (``execution.accounts``): its own id, cash, venue,
    risk limits, conduct rules and strategies. The kill switch, TWAP slices, lock timeout,
    clock and parity tolerance are the execution stage's, shared by every account."""

    model_config = ConfigDict(extra="forbid")

    # Also the prefix of its Dagster assets, jobs and sensors (``paper-two`` → ``paper_two``).
    account_id: str = Field(min_length=1, max_length=60, pattern=r"^[A-Za-z][A-Za-z0-9_-]*$")
    initial_cash: float = Field(1_000_000.0, gt=0)
    venue: Literal["paper"] = "paper"
    risk: RiskLimits = Field(default_factory=RiskLimits)
    conduct: ConductRules = Field(default_factory=ConductRules)
    # Required: which of the deployment's strategies it trades (one as is, several netted).
    allocation: Allocation

    @model_validator(mode="after")
    def _trades_something(self) -> AccountSettings:
        if not self.allocation.strategies:
            raise ValueError(f"account {self.account_id}: allocation.strategies is empty (name "
                             "the strategies of the deployment it trades)")
        return self


class VwapSettings(BaseModel):
    """The intraday volume profile VWAP slicing follows (trading/volume_profile.py,
    ``ETF_EXECUTION__VWAP__...``): a configured curve, or learned from the quote relay's
    1-minute bars in Redis."""

    model_config = ConfigDict(extra="forbid")

    # curve: ``curve`` below; bars: the relay's stream <quotes_namespace>:quotes:bars in Redis
    # (redis_url), the average minute share over the newest ``sessions`` sessions.
    source: Literal["curve", "bars"] = "curve"
    # Weights over equal parts of the session (1..240 buckets; normalised). Default: a
    # typical A-share U shape over the eight half hours (illustrative, not measured).
    curve: list[float] = Field(default_factory=lambda: list(DEFAULT_CURVE), min_length=1,
                               max_length=240)
    sessions: int = Field(20, ge=1)
    # Fewer usable sessions in the stream: the execution fails, naming the stream and count.
    min_sessions: int = Field(5, ge=1)
    # A (fund, session) counts when its bars cover at least this share of the 240 minutes.
    min_coverage: float = Field(0.9, gt=0, le=1)
    # The relay's --namespace.
    quotes_namespace: str = Field("etf", min_length=1)

    @field_validator("curve")
    @classmethod
    def _curve_normalisable(cls, curve: list[float]) -> list[float]:
        profile_from_curve(curve)   # raises ProfileError (a ValueError) naming the bad weight
        return curve


class VnpySettings(BaseModel):
    """The vn.py venue (issue 18): the venue process (``python -m orchestration.vnpy_venue``,
    trading/vnpy_process.py: vn.py's MainEngine, the gateway and its RPC service) and how
    trading.vnpy_venue.VnpyVenue reaches it (``ETF_EXECUTION__VNPY__...``)."""

    model_config = ConfigDict(extra="forbid")

    # The vn.py gateway class, module:Class: vnpy_ctp:CtpGateway, vnpy_xtp:XtpGateway, ...
    # installed in the venue host's environment, or our test venue
    # trading.vnpy_replay:ReplayGateway (with paper). Unset: no venue process can start.
    gateway: str | None = Field(None, pattern=r"^[A-Za-z_][\w.]*:[A-Za-z_]\w*$")
    # The gateway's vn.py setting as JSON: broker id, front addresses, account, password.
    # A secret (ETF_EXECUTION__VNPY__GATEWAY_SETTING from the deployment's secrets).
    gateway_setting: SecretStr = SecretStr("{}")
    # vn.py's paper account (vnpy_paperaccount) takes the orders instead of the gateway.
    paper: bool = False
    # Where the client reaches the process, loopback by default: vn.py's RPC service has no
    # authentication of its own. bind_host: the address the process listens on (unset: host;
    # deploy/compose.yaml: 0.0.0.0 inside the compose network, no published port).
    host: str = "127.0.0.1"
    bind_host: str | None = None
    rep_port: int = Field(2014, ge=1, le=65535)
    pub_port: int = Field(4102, ge=1, le=65535)
    # vn.py's working folder and the venue's order journal; unset: <home>/vnpy_venue.
    state_dir: Path | None = None
    # The gateway's account id when it is not the execution account's id.
    broker_account: str | None = None
    rpc_timeout_seconds: float = Field(5.0, gt=0)
    ack_timeout_seconds: float = Field(5.0, gt=0)
    # The venue process is the test venue (trading.vnpy_replay), whose market moves only when
    # asked: the client opens session D when it asks for the fills through D. A broker: unset.
    replay_clock: bool = False

    @model_validator(mode="after")
    def _setting_is_a_json_object(self) -> VnpySettings:
        try:
            setting = json.loads(self.gateway_setting.get_secret_value())
        except json.JSONDecodeError as exc:
            raise ValueError(f"execution.vnpy.gateway_setting is not JSON ({exc.msg} at "
                             f"character {exc.pos}); the value is secret and not shown"
                             ) from None
        if not isinstance(setting, dict):
            raise ValueError("execution.vnpy.gateway_setting must be a JSON object (the "
                             "gateway's vn.py setting)")
        if self.rep_port == self.pub_port:
            raise ValueError(f"execution.vnpy: rep_port and pub_port are both {self.rep_port}")
        return self


class ExecutionSettings(BaseModel):
    """The execution stage (SPEC §9): paper account, venue, risk limits, kill switch."""

    model_config = ConfigDict(extra="forbid")

    account_id: str = Field("paper-main", min_length=1)
    initial_cash: float = Field(1_000_000.0, gt=0)
    # paper: the paper broker on PostgreSQL; vnpy: the vn.py venue process of execution.vnpy
    # (one broker login: the execution account alone, no further accounts).
    venue: Literal["paper", "vnpy"] = "paper"
    # Slices per parent order across the session (1 = one market order at the open), sized
    # evenly (algorithm twap) or by the intraday volume profile of ``vwap`` (algorithm vwap).
    twap_slices: int = Field(1, ge=1, le=48)
    algorithm: Literal["twap", "vwap"] = "twap"
    vwap: VwapSettings = Field(default_factory=VwapSettings)
    # Engaged by environment (ETF_EXECUTION__KILL_SWITCH=true): no submission at all.
    kill_switch: bool = False
    lock_timeout_seconds: float = Field(60.0, gt=0)
    # The clock that decides whether a signal is fresh: unset = now; a date pins it (replays,
    # the demo on a historical sample).
    as_of: OptionalCalendarDate = None
    # Paper-versus-backtest parity: max relative equity difference.
    parity_tolerance: float = Field(0.01, gt=0)
    risk: RiskLimits = Field(default_factory=RiskLimits)
    # end_of_day_job (positions, risk, the compliance report), on sessions, in the schedule's
    # timezone: after the after-close daily path has decided and executed the day's signal.
    end_of_day_cron: str = "0 20 * * 1-5"
    # Trading-conduct rules (order rate, cancel ratio, restricted list, self-trade, holdings).
    conduct: ConductRules = Field(default_factory=ConductRules)
    # The strategies the account trades (strategies the deployment runs) and how its capital
    # is split among them; unset: the deployment's strategy alone. Several: their targets are
    # netted into one before approval, and every order, fill and P&L is attributed to them.
    allocation: Allocation = Field(default_factory=Allocation)
    # Further accounts beside the one above, each its own gate, execution job and sensors
    # (ETF_EXECUTION__ACCOUNTS='[{"account_id": "paper-two", "allocation": {...}}]').
    accounts: list[AccountSettings] = Field(default_factory=list)
    # The vn.py venue process and its RPC link (issue 18).
    vnpy: VnpySettings = Field(default_factory=VnpySettings)

    @model_validator(mode="after")
    def _distinct_accounts(self) -> ExecutionSettings:
        ids = [self.account_id, *(a.account_id for a in self.accounts)]
        stages = [stage_of(i).lower() for i in ids]
        if len(set(stages)) != len(stages):
            raise ValueError(f"execution.accounts: account ids {ids} repeat (ids differing only "
                             "in case or - against _ name the same Dagster stage)")
        return self

    @model_validator(mode="after")
    def _vnpy_venue_is_reachable(self) -> ExecutionSettings:
        if self.venue != "vnpy":
            return self
        unset = [f"execution.vnpy.{name} [env ETF_EXECUTION__VNPY__{name.upper()}]"
                 for name in ("rep_port", "pub_port") if name not in self.vnpy.model_fields_set]
        if unset:
            raise ValueError(f"execution.venue is 'vnpy' but {' and '.join(unset)} "
                             f"{'is' if len(unset) == 1 else 'are'} not set: the venue "
                             f"process's RPC ports (on execution.vnpy.host, "
                             f"{self.vnpy.host}), as its command was given them")
        if self.accounts:
            raise ValueError(f"execution.venue is 'vnpy' but execution.accounts lists "
                             f"{[a.account_id for a in self.accounts]}: a vn.py venue process "
                             f"is one broker login, the execution account "
                             f"{self.account_id!r} alone; further accounts trade on the paper "
                             "venue of a deployment of their own")
        return self


class WalkForwardSettings(BaseModel):
    """Where the walk-forward windows run.

    ``in_process``: a rebuild runs every window in one run and one process, the panels
    prepared once (local, compose). ``k8s``: one run per window (a pod each under the Helm
    chart's K8sRunLauncher) with ``k8s_job_executor``, so each step of a window (its screen,
    then its search, vectorbt check and out-of-sample result) is a pod with the resources
    below; needs the ``k8s`` extra (dagster-k8s).

    ``workers`` (``in_process``): the windows of a run are searched in this many local
    processes that share the prepared panels (forked; each takes its share of numba's threads);
    1 searches them in the run's process. The combination search already spreads one window
    over the cores, so more processes pay where the cores outnumber what it keeps busy."""

    model_config = ConfigDict(extra="forbid")

    executor: Literal["in_process", "k8s"] = "in_process"
    workers: int = Field(default=1, ge=1)
    step_cpu: str = "2"
    step_memory: str = "6Gi"
    step_memory_limit: str = "8Gi"


class ApiSettings(BaseModel):
    """The desk API (``python -m api``): token signing, lifetimes and the login rate limit.
    The port is ``API_PORT`` (a deployment convention, not an ETF_ setting)."""

    model_config = ConfigDict(extra="forbid")

    # HS256 key of the access tokens (ETF_API__JWT_SECRET, at least 32 characters: openssl
    # rand -hex 32). Unset: prod refuses to start; local generates one into
    # <home>/api/jwt_secret (mode 0600). SecretStr: never printed.
    jwt_secret: SecretStr | None = None
    access_token_minutes: int = Field(15, ge=1, le=24 * 60)
    refresh_token_hours: int = Field(12, ge=1, le=30 * 24)
    # Login attempts per username and client address within the window (Redis when
    # redis_url is set, else counted in the process).
    login_attempts: int = Field(5, ge=1, le=1000)
    login_window_seconds: int = Field(300, ge=1, le=24 * 3600)
    # The browser session cookies of the proxied surfaces (api/signin.py) carry Secure: sent
    # over HTTPS only. Unset: in prod (TLS ends in front of the proxy), not in local.
    secure_cookies: bool | None = None
    # Server processes (uvicorn workers) of `python -m api`: one per core the API may use.
    workers: int = Field(1, ge=1, le=64)
    # The Dagster webserver's GraphQL endpoint the API launches runs through and reads them
    # from (e.g. http://dagster-desk:3000/dagster/graphql). Unset: no launches (503) and no run
    # events in the stream. Not dagster_webserver_url: that is the UI's public address for
    # links, which a reverse proxy may put elsewhere.
    dagster_graphql_url: Annotated[str | None, BeforeValidator(_empty_is_unset)] = Field(
        None, pattern=r"^https?://\S+$")
    # The code location and repository of the research jobs (workspace.yaml's location_name)
    # and of the approval gate (approved_signal); unset: the research location (one location
    # holding everything); a deployment with ETF_CODE_LOCATION split sets etf_execution.
    dagster_location: str = Field("etf_rotation", min_length=1, max_length=200)
    dagster_execution_location: str | None = Field(None, min_length=1, max_length=200)
    dagster_repository: str = Field("__repository__", min_length=1, max_length=200)
    # A GraphQL call waits this long before the API answers 503.
    dagster_timeout_seconds: float = Field(10.0, gt=0, le=300)
    # How often the event stream asks Dagster for runs whose status changed.
    run_events_poll_seconds: float = Field(1.0, ge=0.1, le=60)

    @model_validator(mode="after")
    def _strong_secret(self) -> ApiSettings:
        if self.jwt_secret is not None and len(self.jwt_secret.get_secret_value()) < 32:
            raise ValueError("api.jwt_secret [env ETF_API__JWT_SECRET] must be at least 32 "
                             "characters (generate one: openssl rand -hex 32; the value is "
                             "not shown)")
        return self

    @property
    def resolved_execution_location(self) -> str:
        return self.dagster_execution_location or self.dagster_location


# Passwords of examples and quick starts (deploy/.env.example's placeholder among them); in a prod
# URL they mean the example was never edited. Compared case-insensitively; "" is an explicitly
# empty password (user:@host). A URL without a password is accepted: trust or certificate
# authentication, a .pgpass file or a Redis on a private network need none.
DEFAULT_PASSWORDS = frozenset(
    {"", "change-me", "changeme", "change_me", "password", "postgres", "etf", "admin", "secret"})
SERVICE_URL_SETTINGS = ("postgres_url", "redis_url", "mlflow_tracking_uri")


def _default_password_settings(settings: Settings) -> list[str]:
    """The service URL settings whose password is empty or a well-known default."""
    weak = []
    for name in SERVICE_URL_SETTINGS:
        url = getattr(settings, name)
        password = urlsplit(url).password if url else None
        if password is not None and unquote(password).strip().lower() in DEFAULT_PASSWORDS:
            weak.append(name)
    return weak


def _without_password(url: str) -> str:
    """``url`` for an error message: its password, if any, replaced by ***."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.replace(f":{parts.password}@", ":***@", 1)
    return parts._replace(netloc=netloc).geturl()


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
    calendar_start: CalendarDate = "2005-01-01"
    # First session of the session partitions; default: the start of the configured source.
    partitions_start: OptionalCalendarDate = None
    # Unset: the timezone of the market data's market profile (config/markets).
    schedule_timezone: str = "Asia/Shanghai"
    # Unset: the market profile's after-close time, Monday to Friday, in the schedule's timezone
    # (16:30 Shanghai after the 15:00 close; 17:00 New York after the 16:00 close);
    # non-sessions are skipped by calendar.
    schedule_cron: str = "30 16 * * 1-5"
    # The weekly full research rebuild (Saturday morning, before the next week's sessions).
    research_cron: str = "0 6 * * 6"
    market_data: MarketDataSettings = Field(default_factory=MarketDataSettings)
    quality: QualityConfig = Field(default_factory=QualityConfig)
    cross_section: CrossSectionConfig = Field(default_factory=CrossSectionConfig)
    # The strategy YAML (a name in config/strategies or a path); its universe must name the
    # configured market data. Unset: the strategy in config/strategies that trades that data.
    strategy: str | None = None
    # The other strategies run side by side with it (file names in strategy_dir; each its own
    # asset group, jobs, weekly rebuild and MLflow experiment). Unset: every valid strategy
    # file that trades the configured data; [] (ETF_STRATEGIES='[]'): none.
    strategies: list[str] | None = None
    # The folder of strategy files, read again on each code-location reload (hot reload: a new
    # or changed file takes effect on reload; a broken one is refused and the others run).
    strategy_dir: Path | None = None
    # Which part of the pipeline this code location serves: everything (local development,
    # `make dev`, the demo), or in a deployment the research location (etf_rotation: data,
    # research, daily_job up to the target portfolio) and the execution location (etf_execution:
    # the approval gate, orders, the kill switch), so that a webserver can serve research
    # without anything that sends an order or changes a control (deploy/README: the proxy).
    code_location: Literal["all", "research", "execution"] = "all"
    execution: ExecutionSettings = Field(default_factory=ExecutionSettings)
    walk_forward: WalkForwardSettings = Field(default_factory=WalkForwardSettings)
    api: ApiSettings = Field(default_factory=ApiSettings)
    mlflow_tracking_uri: str | None = None
    # The MLflow UI that asset metadata links to and embeds plots from (unset: the tracking
    # server; with the local SQLite store, the UI `make dev` starts: http://127.0.0.1:5000,
    # MLFLOW_PORT in the Makefile).
    mlflow_ui_url: str | None = None
    # The ledger (and the paper broker's book); unset: no execution stage is defined.
    postgres_url: str | None = None
    # The ledger owner's login (member of etf_ledger_owner), used only by the migrate step
    # (`python -m orchestration.migrate_ledger`: compose's ledger-migrate service, the Helm
    # init container) when postgres_url is the application's role, which may not migrate.
    # Unset: postgres_url migrates on first use (one all-powerful URL: tests, make demo).
    ledger_admin_url: str | None = None
    redis_url: str | None = None
    # Signs every Redis cache entry (HMAC-SHA256, resources/cache.py): required with redis_url,
    # at least 32 characters (openssl rand -hex 32). SecretStr: never printed.
    cache_secret: SecretStr | None = None
    # Run-failure alerts: a webhook that receives a JSON post per failed run (empty: log only).
    alert_webhook_url: str | None = None
    alert_webhook_timeout_seconds: float = Field(5.0, gt=0)
    # The webserver's public URL, for run links in alerts.
    dagster_webserver_url: str | None = None

    @model_validator(mode="after")
    def _market_schedule(self) -> Settings:
        """The schedule runs in the market's timezone, at its after-close time, unless a
        timezone or a cron is set (the sample and AKShare sources are A-share funds)."""
        unset = {"schedule_timezone", "schedule_cron"} - self.model_fields_set
        if not unset:
            return self
        md = self.market_data
        name: object = DEFAULT_MARKET
        if md.source == "files" and md.dataset:
            # Only the market's name: the dataset config itself is checked where it is read.
            try:
                spec = parse_yaml(md.dataset_config_path().read_text(encoding="utf-8"))
            except (OSError, ValueError, yaml.YAMLError):
                return self
            name = spec.get("market", DEFAULT_MARKET) if isinstance(spec, dict) else None
        if not isinstance(name, str):
            return self
        market = load_market(name)
        if "schedule_timezone" in unset:
            self.schedule_timezone = market.timezone
        if "schedule_cron" in unset:
            self.schedule_cron = market.after_close_cron
        return self

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
            weak = _default_password_settings(self)
            if weak:
                raise ValueError("; ".join(
                    f"profile=prod refuses {name} [env ETF_{name.upper()}]: its password is "
                    "empty or a well-known default (such as the placeholder of "
                    "deploy/.env.example); set a real one (the value is not shown)"
                    for name in weak))
        if self.postgres_url and not self.postgres_url.startswith("postgresql+psycopg://"):
            raise ValueError(
                f"postgres_url [env ETF_POSTGRES_URL]={_without_password(self.postgres_url)!r} "
                "must use the psycopg 3 driver: postgresql+psycopg://user@host/db"
            )
        return self

    @model_validator(mode="after")
    def _ledger_admin_url(self) -> Settings:
        # The owner's URL can alter or drop the ledger: a default password is refused in every
        # profile (the migrate step runs without profile prod).
        url = self.ledger_admin_url
        if url is None:
            return self
        if not url.startswith("postgresql+psycopg://"):
            raise ValueError(
                f"ledger_admin_url [env ETF_LEDGER_ADMIN_URL]={_without_password(url)!r} must "
                "use the psycopg 3 driver: postgresql+psycopg://owner@host/db")
        password = urlsplit(url).password
        if password is not None and unquote(password).strip().lower() in DEFAULT_PASSWORDS:
            raise ValueError(
                "ledger_admin_url [env ETF_LEDGER_ADMIN_URL]: its password is empty or a "
                "well-known default (such as the placeholder of deploy/.env.example); set a "
                "real one (the value is not shown)")
        return self

    @model_validator(mode="after")
    def _cache_secret(self) -> Settings:
        # Without a secret no cache entry can be verified, and an unverified cache is code
        # execution for whoever reaches Redis: refused in every profile, never defaulted.
        if self.redis_url and self.cache_secret is None:
            need = "profile=prod needs" if self.profile == "prod" else "redis_url needs"
            raise ValueError(f"{need} cache_secret (set ETF_CACHE_SECRET): every Redis cache "
                             "entry is signed with it (generate one: openssl rand -hex 32)")
        if self.cache_secret is not None and len(self.cache_secret.get_secret_value()) < 32:
            raise ValueError("cache_secret [env ETF_CACHE_SECRET] must be at least 32 characters "
                             "(generate one: openssl rand -hex 32; the value is not shown)")
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
    # One folder per dataset under ``home``: the Dagster instance, the Parquet storage, the
    # MLflow store and the embedded ledger of one dataset never show another's results (a
    # switch of ETF_MARKET_DATA__DATASET in the same ETF_HOME starts from a home of its own,
    # and switching back finds the earlier dataset's results as they were).
    @property
    def dataset_key(self) -> str:
        """The folder name of the configured market data: ``sample``, ``akshare`` or the
        dataset's ``name:`` (else its file name without ``.yaml``)."""
        md = self.market_data
        if md.source != "files" or not md.dataset:
            return md.source
        name: object = Path(md.dataset).name.removesuffix(".yaml").removesuffix(".yml")
        # The dataset's own ``name:`` wins: the same dataset read through another file (a
        # copy with a later history_end) keeps its home.
        try:
            spec = parse_yaml(md.dataset_config_path().read_text(encoding="utf-8"))
        except (OSError, ValueError, yaml.YAMLError):
            spec = None
        if isinstance(spec, dict) and isinstance(spec.get("name"), str) and spec["name"]:
            name = spec["name"]
        return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(name)).strip("._") or "files"

    @property
    def data_home(self) -> Path:
        """The configured dataset's home: ``<home>/<dataset_key>``."""
        return self.home / self.dataset_key

    @property
    def resolved_storage_root(self) -> Path:
        return self.storage_root or self.data_home / "storage"

    @property
    def resolved_mlflow_uri(self) -> str:
        return self.mlflow_tracking_uri or \
            f"sqlite:///{(self.data_home / 'mlflow.db').as_posix()}"

    @property
    def dagster_home(self) -> Path:
        return self.data_home / "dagster"

    @property
    def resolved_mlflow_ui_url(self) -> str | None:
        """Where the MLflow UI is: the setting, the tracking server, or locally `make dev`'s."""
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        uri = self.resolved_mlflow_uri
        if uri.startswith(("http://", "https://")):
            return uri.rstrip("/")
        return LOCAL_MLFLOW_UI if self.profile == "local" else None

    @property
    def resolved_dagster_url(self) -> str | None:
        """Where the Dagster UI is: the setting, or locally `make dev`'s."""
        if self.dagster_webserver_url:
            return self.dagster_webserver_url.rstrip("/")
        return LOCAL_DAGSTER_UI if self.profile == "local" else None


# -- names that are not settings ----------------------------------------------------------------

ENV_PREFIX = "ETF_"
# The project's ETF_ variables that are not settings, and why each exists. Any other ETF_
# variable that names no setting stops start-up: pydantic-settings would ignore it silently
# (ETF_EXECUTION_KILL_SWITCH=true with one underscore used to let orders go out).
NON_SETTING_ENV: dict[str, str] = {
    "ETF_CONFIG_FILE": "the YAML settings file (this module)",
    "ETF_SHARED_DATA": "tests, benchmarks: the shared market data folder (CI sets it)",
    "ETF_SHARED_DATA_URL": ".github/workflows/ci.yml: the secret with that folder's archive URL "
                           "(exported by whoever fetches the data as CI does)",
    "ETF_TEST_PG_SERVER": "tests, benchmarks: user@host:port of the scratch PostgreSQL server",
    "ETF_TEST_REDIS_URL": "tests: the Redis of the execution tests",
    "ETF_TEST_CACHE_SECRET": "tests: the cache_secret of the test settings (conftest.py)",
    "ETF_TEST_PG_HOST": "deploy/ensure-services.sh (make services): PostgreSQL host to check",
    "ETF_TEST_PG_PORT": "deploy/ensure-services.sh (make services): PostgreSQL port to check",
    "ETF_TEST_REDIS_PORT": "deploy/ensure-services.sh (make services): Redis port to check",
    "ETF_TEST_CHROMIUM": "deploy/ensure-browser.sh, tests/test_researcher_view.py: the Chromium "
                         "binary the browser tests drive (default /usr/bin/chromium)",
    "ETF_BENCH_API_SECONDS": "benchmarks/api_load.py: how long the load runs (default 60 s)",
    "ETF_BENCH_QUOTE_MINUTES": "benchmarks/quotes.py: replayed minutes of ticks (default 20)",
    "ETF_HELM_CHART": "tests/test_deploy.py: the unpacked dagster chart for `helm template`",
    "ETF_DATA_DIR": "deploy/compose.yaml (from deploy/.env): host folder mounted at /data",
    "ETF_IMAGE_TAG": "deploy/compose.yaml (from deploy/.env): the image tag",
    "ETF_PUBLIC_URL": "deploy/compose.yaml (from deploy/.env): the proxy's address in links",
    "ETF_PUBLIC_HOST": "deploy/compose.yaml (from deploy/.env): the Host MLflow accepts",
    "ETF_TEST_NGINX": "deploy/ensure-proxy.sh, tests/proxy_stack.py: the nginx binary the "
                      "front-door tests run (default /usr/sbin/nginx)",
    "ETF_EXPORTER_PORT": "observability/exporter.py: the metrics port",
    "ETF_EXPORTER_ADDRESS": "observability/exporter.py: the listen address",
    "ETF_EXPORTER_LOG_LEVEL": "observability/exporter.py: its log level",
}
# Kubernetes service links: every pod gets <SERVICE>_SERVICE_HOST, <SERVICE>_PORT=tcp://… and
# so on for each service of its namespace, so the Helm chart's `etf-rotation` service yields
# ETF_ROTATION_… variables. Exempt when both the name and the value have that shape (so that
# ETF_REDIS_PORT=6379, say, is still refused: Kubernetes' bare _PORT is tcp://host:port).
_K8S_LINK_PORT = r"_PORT_\d+_(TCP|UDP|SCTP)"
_K8S_SERVICE_LINKS = tuple((re.compile(name), re.compile(value)) for name, value in (
    (rf"ETF_\w+?(_SERVICE_HOST|{_K8S_LINK_PORT}_ADDR)", r"[0-9A-Fa-f.:]+"),
    (rf"ETF_\w+?(_SERVICE_PORT(_\w+)?|{_K8S_LINK_PORT}_PORT)", r"\d+"),
    (rf"ETF_\w+?(_PORT|{_K8S_LINK_PORT})", r"(tcp|udp|sctp)://\S+:\d+"),
    (rf"ETF_\w+?{_K8S_LINK_PORT}_PROTO", r"tcp|udp|sctp"),
))


def _is_k8s_service_link(name: str, value: str) -> bool:
    return any(n.fullmatch(name) and v.fullmatch(value) for n, v in _K8S_SERVICE_LINKS)


def _fields_of(section: object) -> dict[str, FieldInfo]:
    """The fields of a settings section (a pydantic model or dataclass); {} for a value."""
    if not isinstance(section, type) or get_origin(section) is not None:
        return {}
    if issubclass(section, BaseModel):
        return dict(section.model_fields)
    if is_pydantic_dataclass(section):
        return dict(section.__pydantic_fields__)
    return {}


def _section_of(annotation: object) -> object | None:
    """The section type of a field (``X | None`` unwrapped), None for a plain value."""
    union = get_origin(annotation) in (Union, types.UnionType)
    for candidate in get_args(annotation) if union else (annotation,):
        if _fields_of(candidate):
            return candidate
    return None


def _setting_paths(section: object, parent: tuple[str, ...] = ()) -> Iterator[tuple[str, ...]]:
    """Every setting and section, as a path (a section can be given whole, as JSON or YAML)."""
    for name, info in _fields_of(section).items():
        path = (*parent, name)
        yield path
        child = _section_of(info.annotation)
        if child is not None:
            yield from _setting_paths(child, path)


def setting_env_names() -> dict[str, str]:
    """Env var -> setting path of every setting, as pydantic-settings reads them (prefix
    ``ETF_``, sections nested with ``__``)."""
    return {ENV_PREFIX + "__".join(path).upper(): ".".join(path)
            for path in _setting_paths(Settings)}


def _closest(name: str, candidates: Mapping[str, str] | set[str]) -> str | None:
    match = difflib.get_close_matches(name, list(candidates), n=1, cutoff=0.6)
    return match[0] if match else None


def _unknown_env(environ: Mapping[str, str]) -> list[str]:
    """One line per ETF_ variable that is neither a setting nor one of NON_SETTING_ENV
    (case-insensitive, as pydantic-settings matches them); values are never shown."""
    settings = setting_env_names()
    known = set(settings) | set(NON_SETTING_ENV)
    lines = []
    for name in sorted(environ):
        upper = name.upper()
        if not upper.startswith(ENV_PREFIX) or upper in known:
            continue
        if _is_k8s_service_link(upper, environ[name]):
            continue
        guess = _closest(upper, known)
        hint = "" if guess is None else f"; did you mean {guess}" + (
            f" (setting {settings[guess]})?" if guess in settings else "?")
        lines.append(f"environment variable {name} names no setting{hint}")
    return lines


def _unknown_keys(data: Mapping[Any, Any], section: object, parent: str = ""
                  ) -> Iterator[str]:
    """The dotted path of every key of a settings mapping that names no setting."""
    fields = _fields_of(section)
    for key, value in data.items():
        path = f"{parent}{key}"
        info = fields.get(key) if isinstance(key, str) else None
        child = None if info is None else _section_of(info.annotation)
        if info is None:
            yield path
        elif child is not None and isinstance(value, Mapping):
            yield from _unknown_keys(value, child, f"{path}.")


def _unknown_config_keys(config_file: str) -> list[str]:
    """One line per key of the ETF_CONFIG_FILE YAML that names no setting."""
    try:
        data = parse_yaml(Path(config_file).read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise SettingsError(f"ETF_CONFIG_FILE={config_file}: not valid YAML: {exc}") from None
    if not isinstance(data, Mapping):
        return []       # not a mapping: pydantic-settings reports it
    paths = set(setting_env_names().values())
    lines = []
    for key in _unknown_keys(data, Settings):
        guess = _closest(key, paths)
        hint = "" if guess is None else f"; did you mean {guess}?"
        lines.append(f"ETF_CONFIG_FILE={config_file}: key {key} names no setting{hint}")
    return lines


def load_settings(**overrides: Any) -> Settings:
    """Settings from overrides, environment and ``ETF_CONFIG_FILE``; clear errors on failure.
    An ETF_ variable or a YAML key that names no setting is refused, not ignored."""
    config_file = os.environ.get("ETF_CONFIG_FILE")
    if config_file and not Path(config_file).is_file():
        raise SettingsError(f"ETF_CONFIG_FILE={config_file}: no such file")
    unknown = _unknown_env(os.environ)
    if config_file:
        unknown += _unknown_config_keys(config_file)
    if unknown:
        raise SettingsError(
            "unknown settings (they would be ignored or misread; a setting's variable is ETF_ "
            "and its path joined by __, e.g. ETF_EXECUTION__KILL_SWITCH for "
            "execution.kill_switch):\n  " + "\n  ".join(unknown))
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
