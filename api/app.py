"""The app factory: ``create_app(settings)`` builds the desk API, versioned under /api/v1,
with its OpenAPI document at /api/v1/openapi.json and the docs at /api/v1/docs."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any

import redis
import sqlalchemy as sa
from fastapi import FastAPI, Request, status
from fastapi.dependencies.models import Dependant
from fastapi.responses import JSONResponse
from fastapi.routing import APIRoute, APIWebSocketRoute
from fastapi_offline import FastAPIOffline

from api import security
from api.dagster_checks import DagsterChecks
from api.dagster_runs import DagsterRefused, DagsterRuns, DagsterUnavailable, watch_runs
from api.deps import ApiState, authorize, authorize_websocket
from api.events import EventHub, libpq_url, listen
from api.experiments import Tracking, TrackingUnavailableError
from api.permissions import PUBLIC, V1, WEBSOCKET, permission_of
from api.ratelimit import LoginLimiter, MemoryLoginLimiter, RedisLoginLimiter
from api.routers import (
    accounts,
    audit,
    auth,
    browser,
    console,
    events,
    experiments,
    health,
    orders,
    quality,
    runs,
    signals,
    strategies,
    users,
)
from api.store import UserStore
from orchestration.settings import Settings, load_settings
from trading.ledger import Ledger, LedgerError

log = logging.getLogger(__name__)

DOCS_STATIC = f"{V1}/docs-static"
# A request waits this long for a lost database connection to come back, then answers 503.
LEDGER_RETRY_SECONDS = 5.0
# Connections per worker: requests run on up to 40 threads; beyond 2 x 10 they wait rather
# than open and close a connection each.
LEDGER_POOL_SIZE = 10
# Expired refresh tokens and access-token revocations are deleted this often.
TOKEN_PURGE_SECONDS = 3600.0
# Each router carries its full path (/api/v1/...): the permission table is keyed by it.
ROUTERS = (health.router, auth.router, browser.router, console.router, strategies.router,
           signals.router, orders.router, accounts.router, quality.router, runs.router,
           audit.router, users.router, events.router, experiments.router)


class ApiConfigError(RuntimeError):
    """The settings cannot serve the API (no ledger URL, no signing key in prod)."""


# A WebSocket client sends its access token in the query (browsers cannot set a header);
# uvicorn logs the path with its query, so the token is cut out of its log lines.
_TOKEN_IN_QUERY = re.compile(r"([?&]token=)[^&\s\"]+")


class RedactTokens(logging.Filter):
    """Replace ``token=<value>`` in a server log line's arguments by ``token=<redacted>``."""

    def filter(self, record: logging.LogRecord) -> bool:
        if isinstance(record.args, tuple):
            record.args = tuple(_TOKEN_IN_QUERY.sub(r"\1<redacted>", a) if isinstance(a, str)
                                else a for a in record.args)
        return True


def _redact_server_logs() -> None:
    for name in ("uvicorn.error", "uvicorn.access"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, RedactTokens) for f in logger.filters):
            logger.addFilter(RedactTokens())


def create_app(settings: Settings) -> FastAPI:
    if not settings.postgres_url:
        raise ApiConfigError("the desk API needs the ledger: set ETF_POSTGRES_URL "
                             "(python -m api starts the embedded one in the local profile)")
    key = security.signing_key(settings)
    # The docs page's Swagger UI is served by the API itself (fastapi-offline's copy), not
    # from a CDN: a desk network without internet access still reads its API's docs.
    app = FastAPIOffline(title="ETF rotation desk API", version="1",
                         lifespan=_lifespan(settings, key), openapi_url=f"{V1}/openapi.json",
                         docs_url=f"{V1}/docs", redoc_url=None, static_url=DOCS_STATIC)
    for router in ROUTERS:
        app.include_router(router)
    _check_every_route_has_a_rule()
    _add_error_handlers(app)
    _redact_server_logs()
    return app


def app_from_environment() -> FastAPI:
    """The app of one worker process of ``python -m api`` (ETF_API__WORKERS > 1)."""
    return create_app(load_settings())


def _lifespan(settings: Settings, key: str
              ) -> Callable[[FastAPI], Any]:
    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        assert settings.postgres_url is not None
        ledger = Ledger(settings.postgres_url, retry_seconds=LEDGER_RETRY_SECONDS,
                        pool_size=LEDGER_POOL_SIZE)
        ledger.migrate()
        limiter = _limiter(settings)
        checks = DagsterChecks(settings)
        hub = EventHub()
        dagster = DagsterRuns(settings)
        app.state.api = ApiState(settings=settings, ledger=ledger, users=UserStore(ledger),
                                 limiter=limiter, signing_key=key, checks=checks, events=hub,
                                 dagster=dagster, tracking=Tracking(settings))
        # One LISTEN connection per app, whatever the number of clients.
        tasks = [asyncio.create_task(listen(libpq_url(settings.postgres_url), hub)),
                 asyncio.create_task(purge_tokens(app.state.api.users))]
        if dagster.configured:      # one poller per app for the run events
            tasks.append(asyncio.create_task(watch_runs(
                dagster, hub, settings.api.run_events_poll_seconds,
                settings.resolved_dagster_url)))
        try:
            yield
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
            dagster.close()
            checks.close()
            limiter.close()
            ledger.dispose()

    return lifespan


async def purge_tokens(users: UserStore, every_seconds: float = TOKEN_PURGE_SECONDS) -> None:
    """Expired sign-in records deleted at start and then every ``every_seconds``; a failure
    is logged and tried again at the next turn (the tables only grow meanwhile)."""
    while True:
        try:
            refresh, access = await asyncio.to_thread(users.purge_expired_tokens)
            if refresh or access:
                log.info("purged %d expired refresh tokens and %d expired access-token "
                         "revocations", refresh, access)
        except (sa.exc.SQLAlchemyError, LedgerError) as exc:
            log.warning("purging expired tokens failed: %s", exc)
        await asyncio.sleep(every_seconds)


def _limiter(settings: Settings) -> LoginLimiter:
    api = settings.api
    if settings.redis_url:
        return RedisLoginLimiter(settings.redis_url, api.login_attempts, api.login_window_seconds)
    log.warning("no redis_url: login attempts are counted per API process")
    return MemoryLoginLimiter(api.login_attempts, api.login_window_seconds)


def api_routes() -> Iterator[tuple[str, str, APIRoute | APIWebSocketRoute]]:
    """(method, path template, route) of every API route (not the docs); WebSocket routes
    with the method :data:`api.permissions.WEBSOCKET`."""
    for router in ROUTERS:
        for route in router.routes:
            if isinstance(route, APIRoute):
                for method in sorted(route.methods or ()):
                    yield method, route.path, route
            elif isinstance(route, APIWebSocketRoute):
                yield WEBSOCKET, route.path, route


def _calls(dependant: Dependant) -> Iterator[Any]:
    for dependency in dependant.dependencies:
        yield dependency.call
        yield from _calls(dependency)


def _check_every_route_has_a_rule() -> None:
    """Every route has a rule in the permission table, and every non-public one enforces it."""
    for method, path, route in api_routes():
        permission = permission_of(method, path)
        guard = authorize_websocket if method == WEBSOCKET else authorize
        if permission != PUBLIC and guard not in set(_calls(route.dependant)):
            raise RuntimeError(f"route {method} {path} needs {permission} but does not "
                               f"depend on api.deps.{guard.__name__}")


def _add_error_handlers(app: FastAPI) -> None:
    async def ledger_refused(request: Request, exc: Exception) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=status.HTTP_409_CONFLICT)

    async def unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: %s unavailable: %s", request.method, request.url.path,
                  type(exc).__module__.split(".")[0], exc)
        return JSONResponse({"detail": "a backing service is unavailable; retry later"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "5"})

    async def dagster_failed(request: Request, exc: Exception) -> JSONResponse:
        # The message names the call and Dagster's answer; never a traceback.
        log.error("%s %s: %s", request.method, request.url.path, exc)
        code = status.HTTP_503_SERVICE_UNAVAILABLE if isinstance(exc, DagsterUnavailable) \
            else status.HTTP_502_BAD_GATEWAY
        return JSONResponse({"detail": str(exc)}, status_code=code)

    async def tracking_unavailable(request: Request, exc: Exception) -> JSONResponse:
        log.error("%s %s: %s", request.method, request.url.path, exc)
        return JSONResponse({"detail": "the MLflow tracking store cannot be read; retry later"},
                            status_code=status.HTTP_503_SERVICE_UNAVAILABLE,
                            headers={"Retry-After": "5"})

    app.add_exception_handler(LedgerError, ledger_refused)
    app.add_exception_handler(DagsterUnavailable, dagster_failed)
    app.add_exception_handler(DagsterRefused, dagster_failed)
    app.add_exception_handler(TrackingUnavailableError, tracking_unavailable)
    app.add_exception_handler(sa.exc.OperationalError, unavailable)
    app.add_exception_handler(redis.RedisError, unavailable)
