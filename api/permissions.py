"""The one permission table: every route of the API names a permission here, and every
permission names the roles allowed. :func:`api.app.create_app` refuses to build an app with a
route missing from :data:`ROUTES`, and the role-matrix test is generated from these two tables.

Anything that can send an order or change a control is limited to ``trader``, ``risk`` and
``admin``; releasing the kill switch lets orders flow again, so it is ``risk`` and ``admin``
only; users are ``admin`` only; the audit log shows every user's actions, so it is for the
roles who answer for them."""

from __future__ import annotations

import enum
import re


class Role(enum.StrEnum):
    VIEWER = "viewer"
    RESEARCHER = "researcher"
    TRADER = "trader"
    RISK = "risk"
    ADMIN = "admin"


ROLES: tuple[Role, ...] = tuple(Role)
EVERYONE = frozenset(Role)
# Routes reachable without a token (sign-in itself, the liveness probe, the docs).
PUBLIC = "public"

PERMISSIONS: dict[str, frozenset[Role]] = {
    "session.read": EVERYONE,                       # who am I, sign out
    "strategies.read": EVERYONE,
    "experiments.read": EVERYONE,                   # MLflow experiments, runs and lineage
    "signals.read": EVERYONE,
    "orders.read": EVERYONE,
    "quality.read": EVERYONE,
    "accounts.read": EVERYONE,                      # fills, positions, cash, kill switch, limit use
    "events.read": EVERYONE,                        # the live stream of signals, orders, fills
    "runs.read": EVERYONE,                          # Dagster runs and their status
    "audit.read": frozenset({Role.RISK, Role.ADMIN}),
    # Launching research work costs compute, never an order.
    "research.launch": frozenset({Role.RESEARCHER, Role.ADMIN}),
    # The gate decides again by its own rules (no override): an approval can lead to orders.
    "signals.redecide": frozenset({Role.TRADER, Role.RISK, Role.ADMIN}),
    "kill_switch.engage": frozenset({Role.TRADER, Role.RISK, Role.ADMIN}),
    "kill_switch.release": frozenset({Role.RISK, Role.ADMIN}),
    "users.read": frozenset({Role.ADMIN}),
    "users.manage": frozenset({Role.ADMIN}),
    # The deployment's other web surfaces, behind the reverse proxy (GET /api/v1/auth/forward).
    # Every role reaches a Dagster webserver: which one is DAGSTER_WEBSERVER's to say.
    "surface.dagster": EVERYONE,
    "surface.mlflow.read": EVERYONE,
    # Creating, renaming, tagging or deleting experiments and runs in the MLflow UI.
    "surface.mlflow.write": frozenset({Role.RESEARCHER, Role.ADMIN}),
    "surface.grafana": EVERYONE,                    # dashboards (Grafana's Viewer role)
    "surface.metrics": EVERYONE,                    # the exporter's /metrics, read-only
}

# What each permission lets a role do, in the desk's words (the console's Administration page).
PERMISSION_TEXT: dict[str, str] = {
    "session.read": "see who is signed in; sign out",
    "strategies.read": "read strategies, their performance and comparisons",
    "experiments.read": "read MLflow experiments, backtests and their lineage",
    "signals.read": "read signals and their approval decisions",
    "orders.read": "read orders",
    "quality.read": "read the data quality checks of a session",
    "accounts.read": "read fills, positions, cash, P&L, the kill switch and limit use",
    "events.read": "follow the live stream of signals, orders and fills",
    "runs.read": "read Dagster runs and their status",
    "audit.read": "read the audit log (every user's actions)",
    "research.launch": "launch research rebuilds and backtests (compute, never an order)",
    "signals.redecide": "have the gate decide a signal again, by its own rules",
    "kill_switch.engage": "engage an account's kill switch: orders stop",
    "kill_switch.release": "release the kill switch: orders flow again",
    "users.read": "list users and their roles",
    "users.manage": "create users, change roles, disable and enable users",
    "surface.dagster": "open a Dagster UI (viewer: read-only; researcher: research only)",
    "surface.mlflow.read": "browse the MLflow UI",
    "surface.mlflow.write": "create, rename, tag or delete MLflow experiments and runs",
    "surface.grafana": "view the Grafana dashboards",
    "surface.metrics": "read the metrics exporter",
}

# Which Dagster webserver the proxy sends a role to. Dagster OSS has no roles: what a role may
# do there is what that webserver serves. ``viewer``: read-only (dagster-webserver
# --read-only); ``research``: writable, with only the research code location (etf_rotation),
# so nothing that sends an order or changes a control is in it; ``desk``: writable, with the
# execution location (etf_execution: approval gate, execution_job, kill_switch_job).
DAGSTER_WEBSERVER: dict[Role, str] = {
    Role.VIEWER: "viewer",
    Role.RESEARCHER: "research",
    Role.TRADER: "desk",
    Role.RISK: "desk",
    Role.ADMIN: "desk",
}


class Surface(enum.StrEnum):
    DAGSTER = "dagster"
    MLFLOW = "mlflow"
    GRAFANA = "grafana"
    METRICS = "metrics"


# MLflow's calls that only read although they are POSTs (its searches, and its GraphQL,
# whose one mutation is a no-op test), by their last path segment; every other POST, PUT,
# PATCH or DELETE writes.
_MLFLOW_READ_POSTS = frozenset({"search", "search-datasets", "get-latest-versions",
                                "batchGetInfos", "graphql"})
# A path the MLflow server routes as written: no fragment, no percent-encoding, no dot or
# empty segment that a server might resolve differently from this check. (Segments are
# separated by a required "/": linear matching, no backtracking blow-up.)
_SEGMENT = r"[A-Za-z0-9_-][A-Za-z0-9_.-]*"
_PLAIN_PATH = re.compile(rf"(?:/{_SEGMENT})+/?")


def surface_permission(surface: Surface, method: str, uri: str) -> str:
    """The permission a request to ``surface`` needs (``uri`` as the client sent it). An MLflow
    POST reads only when its path is plain and ends in a read endpoint; anything else
    (including a ``#``, which the proxy passes on and MLflow cuts off) counts as a write."""
    if surface is not Surface.MLFLOW:
        return f"surface.{surface.value}"
    if method in ("GET", "HEAD", "OPTIONS"):
        return "surface.mlflow.read"
    path = uri.split("?", 1)[0]
    reads = (method == "POST" and _PLAIN_PATH.fullmatch(path) is not None
             and ".." not in path and path.rstrip("/").rsplit("/", 1)[-1] in _MLFLOW_READ_POSTS)
    return "surface.mlflow.read" if reads else "surface.mlflow.write"

V1 = "/api/v1"
# The method name of WebSocket routes in ROUTES.
WEBSOCKET = "WEBSOCKET"

# (method, path template) -> permission name, or PUBLIC.
ROUTES: dict[tuple[str, str], str] = {
    ("GET", "/health"): PUBLIC,
    ("POST", f"{V1}/auth/token"): PUBLIC,
    ("POST", f"{V1}/auth/refresh"): PUBLIC,
    ("POST", f"{V1}/auth/logout"): "session.read",
    # The reverse proxy's question; it answers by the surface rules above, 401 or 403.
    ("GET", f"{V1}/auth/forward"): PUBLIC,
    # Browser sign-in for the proxied surfaces (cookies; HTML pages).
    ("GET", "/signin"): PUBLIC,
    ("POST", "/signin"): PUBLIC,
    ("POST", "/signout"): PUBLIC,
    # The desk console's pages (api/routers/console.py): each reads the browser session itself
    # (to send a browser without one to /signin) and shows only what the role may do; the data
    # comes from the JSON routes below, which the table guards as for any client.
    ("GET", "/console"): PUBLIC,
    ("GET", "/console/static/{name}"): PUBLIC,
    ("GET", "/console/{page}"): PUBLIC,
    ("GET", f"{V1}/auth/me"): "session.read",
    ("GET", f"{V1}/strategies"): "strategies.read",
    ("GET", f"{V1}/strategies/compare"): "strategies.read",
    ("GET", f"{V1}/strategies/refused"): "strategies.read",
    ("GET", f"{V1}/strategies/{{name}}"): "strategies.read",
    ("GET", f"{V1}/strategies/{{name}}/performance"): "strategies.read",
    ("GET", f"{V1}/strategies/{{name}}/windows"): "strategies.read",
    ("GET", f"{V1}/experiments"): "experiments.read",
    ("GET", f"{V1}/backtests"): "experiments.read",
    ("GET", f"{V1}/backtests/{{run_id}}"): "experiments.read",
    ("GET", f"{V1}/signals"): "signals.read",
    ("GET", f"{V1}/signals/{{signal_id}}"): "signals.read",
    ("POST", f"{V1}/signals/{{signal_id}}/redecide"): "signals.redecide",
    ("GET", f"{V1}/runs"): "runs.read",
    ("POST", f"{V1}/runs"): "research.launch",
    ("GET", f"{V1}/runs/{{run_id}}"): "runs.read",
    ("GET", f"{V1}/orders"): "orders.read",
    ("GET", f"{V1}/orders/{{order_id}}"): "orders.read",
    ("GET", f"{V1}/accounts/{{account_id}}/fills"): "accounts.read",
    ("GET", f"{V1}/accounts/{{account_id}}/positions"): "accounts.read",
    ("GET", f"{V1}/accounts/{{account_id}}/cash"): "accounts.read",
    ("GET", f"{V1}/accounts/{{account_id}}/kill-switch"): "accounts.read",
    ("GET", f"{V1}/accounts/{{account_id}}/pnl"): "accounts.read",
    ("GET", f"{V1}/accounts/{{account_id}}/intraday"): "accounts.read",
    ("GET", f"{V1}/accounts/{{account_id}}/limits"): "accounts.read",
    ("POST", f"{V1}/accounts/{{account_id}}/kill-switch/engage"): "kill_switch.engage",
    ("POST", f"{V1}/accounts/{{account_id}}/kill-switch/release"): "kill_switch.release",
    ("GET", f"{V1}/quality/sessions/{{session}}"): "quality.read",
    ("GET", f"{V1}/audit"): "audit.read",
    ("GET", f"{V1}/users"): "users.read",
    ("POST", f"{V1}/users"): "users.manage",
    ("PATCH", f"{V1}/users/{{username}}"): "users.manage",
    (WEBSOCKET, f"{V1}/events"): "events.read",
}


class UnmappedRouteError(RuntimeError):
    """A route of the app has no entry in :data:`ROUTES`."""


def permission_of(method: str, path: str) -> str:
    try:
        return ROUTES[(method, path)]
    except KeyError:
        raise UnmappedRouteError(
            f"route {method} {path} has no rule in api/permissions.py ROUTES: add it with the "
            "permission it needs (or PUBLIC)") from None


def allowed(role: Role, permission: str) -> bool:
    return permission == PUBLIC or role in PERMISSIONS[permission]
