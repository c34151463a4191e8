"""MLflow experiments (one per strategy) and their backtest, walk-forward window and factor
screening runs with the lineage that ties each number to its inputs."""

from __future__ import annotations

import math
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status
from fastapi.concurrency import run_in_threadpool

from api.deps import PageParams, State, authorize
from api.experiments import Kind, RunSummary, Tracking, kind_of, lineage_of, links_of, timestamp
from api.paging import page_of
from api.permissions import V1
from api.schemas import (
    PLAIN_TEXT,
    SIGNED_IN_RESPONSES,
    BacktestRunDetail,
    BacktestRunOut,
    ExperimentOut,
    Lineage,
    Page,
    RunLinks,
    text_filter,
)

router = APIRouter(prefix=V1, tags=["experiments"], dependencies=[Depends(authorize)],
                   responses={**SIGNED_IN_RESPONSES, 503: {
                       "description": "The MLflow tracking store cannot be read"}})


def _finite(value: float) -> float | None:
    return value if math.isfinite(value) else None


def _summary(tracking: Tracking, found: RunSummary) -> dict[str, Any]:
    run = found.run
    return {"run_id": run.info.run_id, "experiment": found.experiment,
            "run_name": run.info.run_name, "kind": kind_of(run.info.run_name),
            "status": run.info.status, "start_time": timestamp(run.info.start_time),
            "end_time": timestamp(run.info.end_time),
            "metrics": {k: _finite(v) for k, v in sorted(run.data.metrics.items())},
            "lineage": Lineage(**lineage_of(run)), "links": RunLinks(**links_of(tracking, run))}


@router.get("/experiments", summary="MLflow experiments, one per strategy")
async def list_experiments(state: State, paging: PageParams) -> Page[ExperimentOut]:
    tracking = state.tracking
    found = await run_in_threadpool(tracking.experiments)
    return page_of(found, paging, lambda e: ExperimentOut(
        experiment_id=e.experiment_id, name=e.name, lifecycle_stage=e.lifecycle_stage,
        runs_url=tracking.resource.experiment_url(e.experiment_id)))


@router.get("/backtests", summary="Backtest, walk-forward window and factor screening runs "
            "with their metrics and lineage, newest first")
async def list_backtests(state: State, paging: PageParams,
                         strategy: Annotated[str | None, text_filter(200)] = None,
                         kind: Annotated[Kind | None, Query()] = None
                         ) -> Page[BacktestRunOut]:
    tracking = state.tracking
    found = await run_in_threadpool(tracking.runs, strategy=strategy, kind=kind)
    return page_of(found, paging, lambda r: BacktestRunOut(**_summary(tracking, r)))


@router.get("/backtests/{run_id}", summary="One run with its parameters, metrics, tags and "
            "lineage", responses={404: {"description": "No such run"}})
async def get_backtest(run_id: Annotated[str, Path(max_length=64, pattern=PLAIN_TEXT)],
                       state: State) -> BacktestRunDetail:
    tracking = state.tracking
    found = await run_in_threadpool(tracking.run, run_id)
    if found is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no MLflow run {run_id!r}")
    data = found.run.data
    return BacktestRunDetail(
        **_summary(tracking, found), params=dict(sorted(data.params.items())),
        tags={k: v for k, v in sorted(data.tags.items()) if not k.startswith("mlflow.")})
