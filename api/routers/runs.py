"""Dagster runs: launch a research rebuild or a backtest, and follow runs of the deployment,
through the webserver's GraphQL API (:mod:`api.dagster_runs`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any

from fastapi import APIRouter, Depends, HTTPException, Path, Query, status

from api.dagster_runs import (
    RANGE_END_TAG,
    RANGE_START_TAG,
    DagsterError,
    RunInfo,
    RunNotFound,
)
from api.deps import ApiState, CurrentSession, PageParams, Session, State, authorize
from api.permissions import V1
from api.schemas import (
    SIGNED_IN_RESPONSES,
    Page,
    Problem,
    RunKind,
    RunLaunch,
    RunLaunched,
    RunOut,
    RunStatus,
    text_filter,
)
from api.store import Audit

RUNS = f"{V1}/runs"
# Every launch names who asked for it, so the run in the Dagster UI says so too.
REQUESTED_BY_TAG = "etf/requested_by"
KIND_TAG = "etf/launch_kind"
# The job each kind launches, and what the deployment's sensors run after it succeeds.
JOBS: dict[RunKind, tuple[str, list[str]]] = {
    "research_rebuild": ("research_job", ["walk_forward_job", "portfolio_job"]),
    "backtest": ("walk_forward_job", ["portfolio_job"]),
}
# The walk-forward job's partitions are those of its first asset.
WINDOWS_ASSET = "wfo_windows"
DAGSTER_RESPONSES: dict[int | str, dict[str, Any]] = {
    502: {"model": Problem, "description": "Dagster refused the call (the message says why)"},
    503: {"model": Problem, "description": "Dagster is not configured or not reachable"},
}
# The deepest page GET /runs reads (each page reads the runs before it from Dagster).
RUNS_WINDOW = 5000
RunId = Annotated[str, Path(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9-]+$")]

router = APIRouter(prefix=RUNS, tags=["runs"], dependencies=[Depends(authorize)],
                   responses={**SIGNED_IN_RESPONSES, **DAGSTER_RESPONSES})


def dagster_url(state: ApiState, run_id: str) -> str | None:
    ui = state.settings.resolved_dagster_url
    return f"{ui}/runs/{run_id}" if ui else None


def run_out(state: ApiState, run: RunInfo) -> RunOut:
    return RunOut(run_id=run.run_id, job=run.job, status=run.status,
                  created_at=run.created_at, started_at=run.started_at, ended_at=run.ended_at,
                  updated_at=run.updated_at, tags=run.tags,
                  dagster_url=dagster_url(state, run.run_id))


def launch_audited(state: ApiState, session: Session, *, action: str, entity: str,
                   entity_id: str, reason: str, details: dict[str, Any],
                   launch: Callable[[], str]) -> str:
    """Run ``launch()`` (a Dagster launch returning the run id) and audit it: ``action`` with
    the run id once Dagster took it, ``<action>_failed`` with Dagster's message if not (then
    re-raised: the API answers 502/503), never a launch that did not happen."""
    try:
        run_id: str = launch()
    except DagsterError as exc:
        state.users.audit(Audit(actor=session.actor, action=f"{action}_failed", entity=entity,
                                entity_id=entity_id, reason=reason,
                                details={**details, "error": str(exc)[:1000]}))
        raise
    state.users.audit(Audit(actor=session.actor, action=action, entity=entity,
                            entity_id=entity_id, reason=reason,
                            details={**details, "run_id": run_id}))
    return run_id


def _window_range(state: ApiState) -> dict[str, str]:
    keys = state.dagster.partition_keys(WINDOWS_ASSET)
    if not keys:
        raise HTTPException(status.HTTP_409_CONFLICT, detail="the code location defines no "
                            "walk-forward window: nothing to backtest")
    # One run over every window: the panels are prepared once (the weekly rebuild's way).
    return {RANGE_START_TAG: keys[0], RANGE_END_TAG: keys[-1]}


@router.post("", status_code=status.HTTP_202_ACCEPTED, summary="Launch a research rebuild "
             "or a backtest", responses={409: {"model": Problem, "description": "Nothing to "
                                             "launch (no walk-forward window)"}})
def launch_run(body: RunLaunch, session: CurrentSession, state: State) -> RunLaunched:
    job, then = JOBS[body.kind]
    tags = {REQUESTED_BY_TAG: session.actor, KIND_TAG: body.kind}
    if body.kind == "backtest":
        tags |= _window_range(state)
    location = state.dagster.location
    run_id = launch_audited(
        state, session, action="runs.launch", entity="dagster_job", entity_id=job,
        reason=body.reason, details={"kind": body.kind, "location": location, "tags": tags},
        launch=lambda: state.dagster.launch(job, tags=tags))
    return RunLaunched(run_id=run_id, kind=body.kind, job=job, status_url=f"{RUNS}/{run_id}",
                       dagster_url=dagster_url(state, run_id), then=then)


@router.get("", summary="Runs of the deployment, newest first",
            responses={400: {"model": Problem, "description": f"A page past the newest "
                             f"{RUNS_WINDOW} runs"}})
def list_runs(state: State, paging: PageParams,
              status_: Annotated[list[RunStatus] | None, Query(alias="status")] = None,
              job: Annotated[str | None, text_filter(200)] = None) -> Page[RunOut]:
    # GraphQL pages by cursor; the API's pages are offsets: read up to the page's end.
    if paging.offset + paging.limit > RUNS_WINDOW:
        raise HTTPException(status.HTTP_400_BAD_REQUEST, detail=(
            f"offset + limit may not pass the newest {RUNS_WINDOW} runs: filter by status "
            "or job instead"))
    found = state.dagster.runs(statuses=list(status_ or []), job=job,
                               limit=paging.offset + paging.limit)
    window = found.runs[paging.offset:]
    return Page[RunOut](items=[run_out(state, r) for r in window], total=found.total,
                        limit=paging.limit, offset=paging.offset)


@router.get("/{run_id}", summary="One run: status, job, times, tags, its Dagster UI link",
            responses={404: {"model": Problem, "description": "No such run"}})
def get_run(run_id: RunId, state: State) -> RunOut:
    try:
        return run_out(state, state.dagster.run(run_id))
    except RunNotFound as exc:
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=str(exc)) from None

