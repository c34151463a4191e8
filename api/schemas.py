"""Every request and response payload of the API."""

from __future__ import annotations

import datetime as dt
from typing import Any, Generic, Literal, TypeVar

from fastapi import Query
from pydantic import BaseModel, ConfigDict, Field, model_validator

from api.permissions import Role

T = TypeVar("T")

USERNAME_PATTERN = r"^[a-z0-9][a-z0-9_.-]{1,63}$"
# Any text that reaches PostgreSQL: its text type holds every character but NUL, which would
# otherwise fail in the database (a 5xx) instead of as the field's own 422.
PLAIN_TEXT = r"^[^\x00]*$"


def text_filter(max_length: int) -> Any:
    """A text query parameter (a filter): bounded, and holding no NUL."""
    return Query(pattern=PLAIN_TEXT, max_length=max_length)


# Why a change was made: required on every mutating call, written to the audit log.
Reason = Field(min_length=3, max_length=500, pattern=PLAIN_TEXT,
               description="Why: written to the audit log")


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Page(Model, Generic[T]):
    items: list[T]
    total: int = Field(description="Items matching the filters, over all pages")
    limit: int
    offset: int


class Problem(Model):
    detail: str


# Documented on every route behind sign-in.
SIGNED_IN_RESPONSES: dict[int | str, dict[str, Any]] = {
    401: {"model": Problem, "description": "Not signed in, or the token is invalid, expired "
          "or revoked"},
    403: {"model": Problem, "description": "The caller's role lacks the route's permission "
          "(audited)"},
}


# ------------------------------------------------------------------ auth


class TokenPair(Model):
    access_token: str
    token_type: Literal["bearer"] = "bearer"
    expires_in: int = Field(description="Seconds the access token is valid")
    refresh_token: str
    refresh_expires_in: int


class RefreshRequest(Model):
    refresh_token: str = Field(min_length=1, max_length=200)


class LogoutRequest(Model):
    refresh_token: str | None = Field(None, min_length=1, max_length=200,
                                      description="Revoked with the access token")


class UserOut(Model):
    username: str
    role: Role
    disabled: bool
    created_by: str
    created_at: dt.datetime
    updated_at: dt.datetime


class UserCreate(Model):
    username: str = Field(pattern=USERNAME_PATTERN)
    password: str = Field(min_length=12, max_length=256)
    role: Role
    reason: str = Reason


class UserUpdate(Model):
    role: Role | None = None
    disabled: bool | None = None
    reason: str = Reason

    @model_validator(mode="after")
    def _changes_something(self) -> UserUpdate:
        if self.role is None and self.disabled is None:
            raise ValueError("give role, disabled or both")
        return self


# ------------------------------------------------------------------ research


class TargetWeight(Model):
    symbol: str
    weight: float
    rank: float | None
    reason: str


class TargetPortfolio(Model):
    as_of: dt.date
    window: str
    weights: list[TargetWeight]


class StrategySummary(Model):
    name: str
    market: str
    dataset: str | None
    description: str | None


class RefusedStrategyFile(Model):
    file: str = Field(description="The strategy file's name in the strategy folder")
    dataset: str | None = Field(description="The data the file names, as far as it reads")
    why: str = Field(description="The file, the field and why it does not validate")
    running: str | None = Field(description="The strategy that keeps running its last valid "
                                "version of this file (null: the file is not loaded)")
    fingerprint: str | None = Field(description="That last valid version's fingerprint")


class StrategyDetail(StrategySummary):
    config: dict[str, Any] = Field(description="The validated strategy configuration")
    target_portfolio: TargetPortfolio | None = Field(
        description="The latest stored target of this strategy with the reason each fund is "
        "in or out (null: none stored for it)")


Metrics = dict[str, float | None]


class CurvePoint(Model):
    date: dt.date
    equity: float
    drawdown: float
    benchmarks: dict[str, float | None] = Field(
        description="Each benchmark's growth of 1 over the same sessions")


class StrategyPerformance(Model):
    strategy: str
    start: dt.date
    end: dt.date
    sessions: int
    metrics: Metrics = Field(description="Of the stitched out-of-sample equity over "
                             "start..end (every session, not only the points returned)")
    benchmark_metrics: dict[str, Metrics]
    curve: list[CurvePoint] = Field(description="At most max_points sessions, evenly spaced, "
                                    "first and last kept")


class StrategyComparison(Model):
    strategies: list[str]
    start: dt.date | None = Field(description="First session every strategy has (null: none)")
    end: dt.date | None
    metrics: dict[str, Metrics] = Field(description="Per strategy, over the common sessions")
    dates: list[dt.date]
    growth: dict[str, list[float]] = Field(description="Per strategy, growth of 1 on dates")
    correlation: dict[str, dict[str, float | None]] = Field(
        description="Correlation of daily returns over the common sessions")


class Link(Model):
    """A link to where a number comes from, or why there is none."""

    url: str | None
    missing: str | None = Field(description="Why there is no link (null: there is one)")


class ResultLinks(Model):
    dagster_asset: Link = Field(description="The asset (and partition) in the Dagster UI")
    mlflow_run: Link = Field(description="The run in the MLflow UI")


class WindowWinner(Model):
    window: str = Field(description="The walk-forward window (its partition key)")
    is_start: dt.date | None
    is_end: dt.date | None
    oos_start: dt.date
    oos_end: dt.date
    sessions: int = Field(description="Its sessions in the stitched out-of-sample backtest")
    no_trade: bool | None = Field(description="No candidate qualified: the window holds cash "
                                  "(null: wfo_results not stored)")
    no_trade_reason: str | None
    factors: list[str] = Field(description="The frozen winner's factors")
    top_n: int | None
    rebalance_every: int | None
    weighting: str | None
    oos_metrics: Metrics = Field(description="The window's own out-of-sample figures "
                                 "(total_return, cagr, sharpe, max_drawdown)")
    mlflow_run_id: str | None = Field(description="The window's MLflow run, as wfo_results "
                                      "stored it")
    links: ResultLinks


class StrategyWindows(Model):
    strategy: str
    asset_key: str = Field(description="Of the strategy's oos_backtest (key path joined by /)")
    oos_backtest: ResultLinks = Field(description="The stitched out-of-sample backtest: its "
                                      "asset and the newest 'oos backtest' MLflow run")
    winners_stored: bool = Field(description="False: wfo_results is not stored, the windows "
                                 "come from the backtest's sessions without their winners")
    windows: list[WindowWinner]


class PnlSession(Model):
    date: dt.date
    cash: float
    positions_value: float
    equity: float
    pnl: float = Field(description="Equity less the account's initial cash")
    backtest_equity: float | None = Field(description="The backtest engine's equity for the "
                                          "same approved signals (null: not computed)")
    difference: float | None = Field(description="equity / backtest_equity - 1")


class AccountPnl(Model):
    account_id: str
    initial_cash: float
    parity_tolerance: float
    max_abs_difference: float | None = Field(description="Over the sessions with a backtest "
                                             "figure (null: none)")
    within_tolerance: bool | None
    sessions: list[PnlSession]


LimitUnit = Literal["percent", "money", "sessions", "rejections"]


class LimitUseOut(Model):
    limit: str = Field(description="The RiskLimits field")
    applies_to: str = Field(description="book, target, orders sent, or how a per-order / "
                            "per-signal limit is checked")
    value: float | None = Field(description="The figure (null: not measured); for unit "
                                "rejections the day's rejections under the limit's rule")
    bound: float | None = Field(description="The configured limit (null: not limited)")
    unit: LimitUnit = Field(description="percent: a fraction; rejections: bound is the "
                            "limit's setting, not comparable with value")
    utilisation: float | None = Field(description="value / bound (1 = at the limit)")
    status: str = Field(description="ok, breach, not limited, or why it was not measured")
    shown_value: str = Field(description="value as the report prints it")
    shown_bound: str = Field(description="bound as the report prints it")


class LayerLimits(Model):
    layer: str = Field(description="The risk layer that checks these limits")
    limits: list[LimitUseOut]


class AccountLimits(Model):
    account_id: str
    session: dt.date | None = Field(description="The session of the newest compliance report "
                                    "(null: none written yet)")
    generated_at: dt.datetime | None
    note: str | None = Field(description="Why there is no figure, when there is none")
    breaches: int = Field(description="Limits in breach in that report")
    layers: list[LayerLimits] = Field(description="Every risk layer, in check order")


class ExperimentOut(Model):
    experiment_id: str
    name: str = Field(description="The strategy (one experiment per strategy, SPEC §10)")
    lifecycle_stage: str
    runs_url: str | None = Field(description="The experiment's runs in the MLflow UI")


class Lineage(Model):
    dagster_run_id: str | None
    dagster_job: str | None
    asset_key: str | None
    partition: str | None
    partition_range: str | None
    data_version: str | None
    code_version: str | None
    git_commit: str | None
    window: str | None = Field(description="The walk-forward window (partition) of the run")
    dataset: str | None


class RunLinks(Model):
    mlflow_run: str | None
    dagster_run: str | None
    dagster_asset: str | None


class BacktestRunOut(Model):
    run_id: str
    experiment: str
    run_name: str | None
    kind: Literal["oos_backtest", "wfo_window", "factor_screening"] | None
    status: str
    start_time: dt.datetime | None
    end_time: dt.datetime | None
    metrics: dict[str, float | None]
    lineage: Lineage
    links: RunLinks


class BacktestRunDetail(BacktestRunOut):
    params: dict[str, str]
    tags: dict[str, str] = Field(description="Every tag but MLflow's own (mlflow.*)")


# ------------------------------------------------------------------ ledger


class SignalOut(Model):
    signal_id: str
    account_id: str
    strategy: str
    as_of: dt.date
    status: str
    weights: dict[str, float]
    weights_hash: str
    reasons: list[dict[str, Any]] = Field(description="Why approved or rejected, per rule")
    data_version: str | None
    dagster_run_id: str | None
    decided_at: dt.datetime | None


class OrderOut(Model):
    order_id: str
    signal_id: str
    account_id: str
    symbol: str
    side: str
    quantity: int
    reference_price: float
    session: dt.date
    status: str
    parent_order_id: str | None
    slice_index: int
    slices: int
    venue_order_id: str | None
    filled_quantity: int
    average_price: float | None
    reason: str | None
    # A slice-end replacement: the order whose unfilled remainder it carries on (trading.slice_end).
    replaces: str | None


class FillOut(Model):
    fill_id: str
    order_id: str
    account_id: str
    symbol: str
    side: str
    quantity: int
    price: float
    commission: float
    session: dt.date
    filled_at: dt.datetime


class PositionOut(Model):
    symbol: str
    quantity: int
    cost: float


class IntradayPositionOut(Model):
    symbol: str
    units: int
    previous_close: float = Field(description="The fund's close of the last session before "
                                  "today's (raw)")
    price: float = Field(description="The price the position is marked at now")
    source: Literal["live", "close"] = Field(description="live: the quote relay's last price, "
                                             "fresh (at most max_age_seconds old); close: no "
                                             "fresh live price, marked at the previous close")
    price_at: dt.datetime | None = Field(description="When the live price traded (null: close)")
    age_seconds: float | None = Field(description="now − price_at (null: close)")
    pnl: float = Field(description="units × (price − previous_close)")


class AccountIntraday(Model):
    account_id: str
    at: dt.datetime = Field(description="Now, by the deployment's clock")
    session: dt.date = Field(description="Today's date by that clock: its fills are the "
                             "session's trades")
    market: str = Field(description="The market whose live prices mark the book")
    max_age_seconds: float
    positions: list[IntradayPositionOut]
    unrealised: float = Field(description="Sum of the positions' pnl")
    trades: float = Field(description="The session's fills against the previous close, net of "
                          "commission")
    total: float = Field(description="unrealised + trades: the book's move since the close")
    stale: list[str] = Field(description="Funds held without a fresh live price")


class CashOut(Model):
    account_id: str
    balance: float
    initial_cash: float


class KillSwitchOut(Model):
    account_id: str
    engaged: bool
    reason: str | None
    actor: str | None
    at: dt.datetime | None


class KillSwitchChange(Model):
    reason: str = Reason


class AuditOut(Model):
    id: int
    at: dt.datetime
    actor: str
    action: str
    entity: str
    entity_id: str
    reason: str | None
    details: dict[str, Any]


class CheckResultOut(Model):
    asset: str
    check: str
    passed: bool
    severity: str
    blocking: bool | None
    description: str | None
    run_id: str = Field(description="The Dagster run that materialised the session")
    evaluated_at: dt.datetime


class SessionQuality(Model):
    session: dt.date
    passed: bool = Field(description="Every blocking check of the session passed")
    checks: list[CheckResultOut]


class Health(Model):
    status: Literal["ok"] = "ok"
    version: str


EventType = Literal["signal", "order", "fill", "kill_switch", "run", "notice", "quote", "bar"]


class EventOut(BaseModel):
    """One message of the live event stream (``/api/v1/events``): what changed in the ledger
    (``entity`` is its table, ``id`` its key), a Dagster run's new status (``run``: entity
    ``dagster_runs``, ``id`` the run id, payload ``job``, ``status``, ``url``), or a
    ``notice`` from the stream itself (subscribed, events dropped for a slow client, the
    ledger or Dagster connection lost). Live market data from the quote relay
    (``python -m trading.quotes``): ``quote`` (entity ``quotes``, ``id`` the fund; payload
    ``symbol``, ``exchange``, ``price``, ``volume``, ``bid``, ``ask``, ``venue_time``,
    ``sent_at``, ``received_at``) and ``bar``, a closed 1-minute bar (entity ``bars``; payload
    ``symbol``, ``exchange``, ``minute``, ``open``, ``high``, ``low``, ``close``, ``volume``)."""

    type: EventType
    entity: str
    id: str | None = None
    account: str | None = None
    at: dt.datetime
    payload: dict[str, Any] = Field(default_factory=dict)


# ------------------------------------------------------------------ Dagster runs


RunKind = Literal["research_rebuild", "backtest"]
RunStatus = Literal["QUEUED", "NOT_STARTED", "MANAGED", "STARTING", "STARTED", "SUCCESS",
                    "FAILURE", "CANCELING", "CANCELED"]


class RunLaunch(Model):
    """What to rebuild. ``research_rebuild``: ``research_job`` (factors and IC screening);
    the deployment's sensors then run every walk-forward window and the portfolio.
    ``backtest``: ``walk_forward_job`` over every window as one run (screen, search, frozen
    winners, one MLflow run per window); the deployment's ``walk_forward_to_portfolio``
    sensor then runs the stitched out-of-sample backtest (``portfolio_job``). The strategy is
    the code location's (ETF_STRATEGY of the deployment), not a launch option."""

    kind: RunKind
    reason: str = Reason


class RunLaunched(Model):
    run_id: str = Field(description="The Dagster run launched")
    kind: RunKind
    job: str
    status_url: str = Field(description="This API's status of the run")
    dagster_url: str | None = Field(description="The run in the Dagster UI")
    then: list[str] = Field(description="Jobs the deployment's sensors launch after it "
                            "succeeds (when the Dagster daemon runs)")


class RunOut(Model):
    run_id: str
    job: str
    status: RunStatus
    created_at: dt.datetime
    started_at: dt.datetime | None
    ended_at: dt.datetime | None
    updated_at: dt.datetime | None
    tags: dict[str, str]
    dagster_url: str | None = Field(description="The run in the Dagster UI")


class SignalRedecide(Model):
    reason: str = Reason


class RedecideLaunched(Model):
    signal_id: str
    run_id: str = Field(description="The Dagster run materialising approved_signal")
    status_url: str
    dagster_url: str | None
