"""The deployment files, checked by the tools that consume them wherever those run here.

- deploy/dagster.prod.yaml: Dagster's own instance-config validation, then a real instance on a
  fresh PostgreSQL database (storage, queue, pools, monitoring, retries, retention).
- deploy/workspace.yaml: Dagster's workspace loader; the Dockerfile's CMD and HEALTHCHECK are
  run as they are (gRPC server on the real code location, health check against it).
- deploy/compose.yaml: structure and cross-references; the compose-spec JSON schema when
  check-jsonschema (which vendors it) is installed; `docker compose config` when the compose
  plugin is.
- Grafana: every PromQL expression may only use the exporter's series.
- deploy/helm/values.yaml: the keys of the Dagster chart's values.schema.json (1.13) that the
  file uses; the instance the chart would render goes through Dagster's validation; `helm
  template` with the real chart when `helm` and ETF_HELM_CHART are available.
- .github/workflows/ci.yml: the five jobs, the test job's services, pinned actions; the
  GitHub-workflow schema when check-jsonschema is installed.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator
from fnmatch import fnmatch
from importlib import resources
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import dagster as dg
import jsonschema
import pytest
import yaml
from conftest import PG_SERVER, drop_database, new_database
from dagster._core.definitions.run_request import InstigatorType
from dagster._core.instance.config import dagster_instance_config
from dagster._core.launcher import DefaultRunLauncher
from dagster._core.remote_origin import GrpcServerCodeLocationOrigin
from dagster._core.run_coordinator import QueuedRunCoordinator
from dagster._core.scheduler.instigation import TickStatus
from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load import location_origins_from_yaml_paths
from dagster._core.workspace.load_target import WorkspaceFileTarget

from api.schemas import USERNAME_PATTERN
from orchestration.dagster_storage import PooledPostgresStorage, postgres_storage
from orchestration.settings import SettingsError, load_settings

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
PROD_INSTANCE = DEPLOY / "dagster.prod.yaml"
WORKSPACE = DEPLOY / "workspace.yaml"
RESEARCH_WORKSPACE = DEPLOY / "workspace.research.yaml"
PROXY_TEMPLATE = DEPLOY / "proxy" / "etf.conf.template"
HELM_DESK = DEPLOY / "helm" / "desk.yaml"
COMPOSE = DEPLOY / "compose.yaml"
ENV_EXAMPLE = DEPLOY / ".env.example"
PROMETHEUS = DEPLOY / "prometheus.yml"
GRAFANA = DEPLOY / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "etf_rotation.json"
HELM_VALUES = DEPLOY / "helm" / "values.yaml"
HELM_VNPY = DEPLOY / "helm" / "vnpy.yaml"
WORKFLOW = ROOT / ".github" / "workflows" / "ci.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
BIN = Path(sys.executable).parent

GRPC_PORT = 4000
EXECUTION_GRPC_PORT = 4001
EXPORTER_PORT = 9464
LOCATION_NAME = "etf_rotation"
EXECUTION_LOCATION_NAME = "etf_execution"
WEBSERVERS = ("dagster-desk", "dagster-research", "dagster-viewer")
JOBS_ALWAYS_DEFINED = {"market_data_job", "research_job"}

# The series of `python -m observability.exporter`: the only names a dashboard may query.
EXPORTER_METRICS = {
    "etf_asset_last_materialization_timestamp_seconds",
    "etf_asset_freshness_seconds",
    "etf_asset_check_failed",
    "etf_asset_check_failures_total",
    "etf_run_duration_seconds",
    "etf_runs_total",
    "etf_signals_total",
    "etf_orders_total",
    "etf_fills_total",
    "etf_fill_notional_cny_total",
    "etf_ledger_cash_cny",
    "etf_ledger_positions_value_cny",
    "etf_ledger_equity_cny",
    "etf_ledger_gross_exposure_ratio",
    "etf_kill_switch_engaged",
}
HISTOGRAMS = {"etf_run_duration_seconds"}
QUERYABLE_SERIES = EXPORTER_METRICS | {
    f"{name}_{suffix}" for name in HISTOGRAMS for suffix in ("bucket", "sum", "count")
}


def load_yaml(path: Path) -> Any:
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def vendored_schema(name: str) -> dict[str, Any]:
    """A JSON schema vendored by check-jsonschema (compose-spec, github-workflows)."""
    pytest.importorskip(
        "check_jsonschema",
        reason="check-jsonschema is not installed (pip install 'check-jsonschema>=0.33'); it "
        "ships the official compose-spec and GitHub-workflow JSON schemas",
    )
    vendor = resources.files("check_jsonschema.builtin_schemas.vendor")
    return json.loads((vendor / f"{name}.json").read_text(encoding="utf-8"))


def schema_errors(schema: dict[str, Any], instance: Any) -> list[str]:
    validator_class = jsonschema.validators.validator_for(schema)
    validator = validator_class(schema, format_checker=validator_class.FORMAT_CHECKER)
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(instance), key=lambda e: e.path)]


# --------------------------------------------------------------------------------------------
# Dagster instance
# --------------------------------------------------------------------------------------------


def prod_instance_home(tmp_path: Path) -> Path:
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copy(PROD_INSTANCE, home / "dagster.yaml")
    return home


@pytest.fixture
def fresh_pg_url() -> Iterator[str]:
    """A psycopg2 URL of a new, empty database (dropped afterwards)."""
    name = new_database("etf_deploy")
    yield f"postgresql+psycopg2://{PG_SERVER}/{name}"
    drop_database(name)


def test_prod_instance_takes_its_secrets_from_the_environment() -> None:
    raw = load_yaml(PROD_INSTANCE)
    assert raw["storage"] == postgres_storage({"env": "DAGSTER_PG_URL"})
    assert raw["telemetry"] == {"enabled": False}


def test_prod_instance_passes_dagsters_config_validation(tmp_path: Path) -> None:
    config, custom_instance_class = dagster_instance_config(str(prod_instance_home(tmp_path)))
    assert custom_instance_class is None
    # Run limits next to the pools (Dagster rejects them in the run coordinator then).
    assert config["run_coordinator"]["class"] == "QueuedRunCoordinator"
    assert "max_concurrent_runs" not in config["run_coordinator"]["config"]
    assert config["concurrency"]["pools"]["default_limit"] >= 1
    limits = config["concurrency"]["runs"]["tag_concurrency_limits"]
    assert {"key": "etf/account", "value": {"applyLimitPerUniqueValue": True},
            "limit": 1} in limits
    assert config["run_retries"] == {"enabled": True, "max_retries": 2,
                                     "retry_on_asset_or_op_failure": False}
    assert config["run_monitoring"]["enabled"] is True
    assert {"schedule", "sensor"} <= set(config["retention"])


def test_prod_instance_runs_on_postgresql(tmp_path: Path, fresh_pg_url: str,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    """The file as deployed: storage on a fresh database through the psycopg2 URL form, and
    every configured class instantiated by Dagster."""
    monkeypatch.setenv("DAGSTER_PG_URL", fresh_pg_url)
    with dg.DagsterInstance.from_config(str(prod_instance_home(tmp_path))) as instance:
        assert instance.get_runs_count() == 0   # the schema was created and is queryable
        assert isinstance(instance.get_ref().storage, PooledPostgresStorage)
        assert isinstance(instance.run_coordinator, QueuedRunCoordinator)
        assert isinstance(instance.run_launcher, DefaultRunLauncher)
        assert isinstance(instance.compute_log_manager, LocalComputeLogManager)
        assert not instance.telemetry_enabled

        concurrency = instance.get_concurrency_config()
        assert concurrency.pool_config.default_pool_limit == 1
        queue = concurrency.run_queue_config
        assert queue is not None
        assert queue.max_concurrent_runs == 6
        assert {t["key"] for t in queue.tag_concurrency_limits} == {"etf/account",
                                                                    "dagster/backfill"}

        assert instance.run_monitoring_enabled
        assert instance.run_monitoring_start_timeout_seconds == 300
        # DefaultRunLauncher cannot resume runs; Dagster refuses a non-zero value with it.
        assert instance.run_monitoring_max_resume_run_attempts == 0
        assert not instance.run_launcher.supports_resume_run
        # Nor health-check its workers: a run whose worker and code server died together ends
        # only at the maximum runtime (tests/test_run_monitoring.py shows both).
        assert not instance.run_launcher.supports_check_run_worker_health
        assert instance.run_monitoring_max_runtime_seconds == 4 * 3600
        assert instance.run_monitoring_settings["free_slots_after_run_end_seconds"] > 0

        assert instance.run_retries_enabled
        assert instance.run_retries_max_retries == 2
        assert not instance.run_retries_retry_on_asset_or_op_failure

        schedule_retention = instance.get_tick_retention_settings(InstigatorType.SCHEDULE)
        assert set(schedule_retention.values()) == {90}
        sensor_retention = instance.get_tick_retention_settings(InstigatorType.SENSOR)
        assert sensor_retention[TickStatus.SKIPPED] == 7


# --------------------------------------------------------------------------------------------
# Workspace, Dockerfile and the code server it starts
# --------------------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    logical: list[str] = []
    pending = ""
    for line in DOCKERFILE.read_text(encoding="utf-8").splitlines():
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        if stripped.endswith("\\"):
            pending += stripped[:-1] + " "
            continue
        logical.append(pending + stripped)
        pending = ""
    assert not pending, "Dockerfile ends inside a continuation line"
    out = []
    for entry in logical:
        keyword, _, rest = entry.partition(" ")
        out.append((keyword.upper(), rest.strip()))
    return out


def dockerfile_exec_form(instruction: str) -> list[str]:
    """The JSON (exec) form of the last CMD, or of the HEALTHCHECK's CMD."""
    args = [rest for keyword, rest in dockerfile_instructions() if keyword == instruction][-1]
    if instruction == "HEALTHCHECK":
        args = args[args.index("CMD ") + len("CMD "):]
    command = json.loads(args)
    assert isinstance(command, list), f"{instruction} must use the exec (JSON) form"
    return command


def with_option(command: list[str], option: str, value: str) -> list[str]:
    out = list(command)
    out[out.index(option) + 1] = value
    return out


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def code_server_command(port: int) -> list[str]:
    """The code location's server as the deployment runs it: Dagster's gRPC server with run
    workers forked from a preloaded process (orchestration/code_server.py)."""
    return ["python", "-m", "orchestration.code_server", "-h", "0.0.0.0", "-p", str(port),
            "-m", "orchestration.definitions", "-a", "defs"]


def test_deploy_workspace_points_at_the_code_servers() -> None:
    origins = location_origins_from_yaml_paths([str(WORKSPACE)])
    assert all(isinstance(o, GrpcServerCodeLocationOrigin) for o in origins)
    assert {(o.host, o.port, o.location_name) for o in origins} == {  # type: ignore[attr-defined]
        ("code", GRPC_PORT, LOCATION_NAME),
        ("code-execution", EXECUTION_GRPC_PORT, EXECUTION_LOCATION_NAME)}
    # The researchers' webserver: the research location alone.
    (research,) = location_origins_from_yaml_paths([str(RESEARCH_WORKSPACE)])
    assert (research.host, research.port, research.location_name) == (  # type: ignore[attr-defined]
        "code", GRPC_PORT, LOCATION_NAME)
    compose = compose_config()
    assert {"code", "code-execution"} <= set(compose["services"])
    command = dockerfile_exec_form("CMD")
    assert command[command.index("-p") + 1] == str(GRPC_PORT)
    # Both code servers are ours (the research one by the image's CMD), health-checked as before.
    assert "command" not in compose["services"]["code"]
    assert compose["services"]["code-execution"]["command"] == code_server_command(
        EXECUTION_GRPC_PORT)
    for name, port in (("code", GRPC_PORT), ("code-execution", EXECUTION_GRPC_PORT)):
        assert compose["services"][name]["healthcheck"]["test"] == [
            "CMD", "dagster", "api", "grpc-health-check", "-p", str(port)]


def test_dockerfile() -> None:
    instructions = dockerfile_instructions()
    assert instructions[0] == ("FROM", "python:3.11-slim")
    env = " ".join(rest for keyword, rest in instructions if keyword == "ENV")
    assert "DAGSTER_HOME=/opt/dagster/home" in env
    assert "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS=true" in env
    assert ("COPY", "deploy/dagster.prod.yaml ${DAGSTER_HOME}/dagster.yaml") in instructions
    users = [rest for keyword, rest in instructions if keyword == "USER"]
    assert users and users[-1] not in {"root", "0"}, "the image must not run as root"
    assert dockerfile_exec_form("CMD") == code_server_command(GRPC_PORT)
    assert dockerfile_exec_form("HEALTHCHECK") == [
        "dagster", "api", "grpc-health-check", "-p", str(GRPC_PORT)]

    ignored = [line.strip() for line in DOCKERIGNORE.read_text(encoding="utf-8").splitlines()
               if line.strip() and not line.startswith("#")]
    for required in (".venv", ".etf_home", ".git", "**/__pycache__", ".env", "deploy/.env"):
        assert required in ignored, f".dockerignore must exclude {required}"
    for keyword, rest in instructions:
        if keyword != "COPY":
            continue
        *sources, _ = rest.split()
        for source in sources:
            if source == ".":
                continue
            assert (ROOT / source).exists(), f"COPY {source}: no such file"
            assert not any(fnmatch(source, pattern) for pattern in ignored), \
                f"COPY {source} is excluded by .dockerignore"


@pytest.mark.timeout(300)
def test_image_command_serves_the_code_location(tmp_path: Path) -> None:
    """The Dockerfile's CMD and HEALTHCHECK, run as they are (loopback host and a free port
    instead of 0.0.0.0:4000), on the local profile; then the deploy workspace (with the same
    substitution) loads the location with its jobs."""
    port = free_port()
    server = with_option(with_option(dockerfile_exec_form("CMD"), "-h", "127.0.0.1"),
                         "-p", str(port))
    health = with_option(dockerfile_exec_form("HEALTHCHECK"), "-p", str(port))
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n", encoding="utf-8")
    env = {k: v for k, v in os.environ.items() if not k.startswith("ETF_")}
    env.update(DAGSTER_HOME=str(home), ETF_HOME=str(tmp_path / "etf_home"),
               GX_ANALYTICS_ENABLED="false")
    log = (tmp_path / "grpc.log").open("w", encoding="utf-8")
    process = subprocess.Popen([str(BIN / server[0]), *server[1:]], cwd=ROOT, env=env,
                               stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 240
        while True:
            check = subprocess.run([str(BIN / health[0]), *health[1:]], env=env,
                                   capture_output=True, text=True, check=False)
            if check.returncode == 0:
                break
            assert process.poll() is None, \
                "the code server exited:\n" + (tmp_path / "grpc.log").read_text()
            assert time.monotonic() < deadline, "the health check never passed"
            time.sleep(2)

        workspace = load_yaml(WORKSPACE)
        workspace["load_from"] = workspace["load_from"][:1]     # the research location
        workspace["load_from"][0]["grpc_server"].update(host="127.0.0.1", port=port)
        local_workspace = tmp_path / "workspace.yaml"
        local_workspace.write_text(yaml.safe_dump(workspace), encoding="utf-8")
        with dg.instance_for_test() as instance, WorkspaceProcessContext(
                instance, WorkspaceFileTarget(paths=[str(local_workspace)])) as context:
            request = context.create_request_context()
            assert not request.has_code_location_error(LOCATION_NAME), \
                request.get_code_location_error(LOCATION_NAME)
            location = request.get_code_location(LOCATION_NAME)
            jobs = {job.name for repo in location.get_repositories().values()
                    for job in repo.get_all_jobs()}
            assert jobs >= JOBS_ALWAYS_DEFINED
    finally:
        process.terminate()
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        log.close()


# --------------------------------------------------------------------------------------------
# Docker Compose
# --------------------------------------------------------------------------------------------

_INTERPOLATION = re.compile(
    r"\$\$|\$\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?:(?P<op>:?[-?])(?P<arg>[^}]*))?\}"
    r"|\$(?P<bare>[A-Za-z_][A-Za-z0-9_]*)")


def env_example() -> dict[str, str]:
    values = {}
    for line in ENV_EXAMPLE.read_text(encoding="utf-8").splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            values[name.strip()] = value.strip()
    return values


def interpolate(text: str, variables: dict[str, str]) -> str:
    """Compose's variable interpolation (${X}, ${X:-d}, ${X-d}, ${X:?e}, ${X?e}, $$)."""

    def replace(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name = match.group("braced") or match.group("bare")
        op, arg = match.group("op"), match.group("arg") or ""
        value = variables.get(name)
        if op in (":-", "-"):
            if value is None or (op == ":-" and value == ""):
                return arg
        elif op in (":?", "?") and (value is None or (op == ":?" and value == "")):
            raise AssertionError(f"compose requires {name}: {arg}")
        return value or ""

    return _INTERPOLATION.sub(replace, text)


def compose_variables() -> set[tuple[str, str | None]]:
    """(name, operator) of every variable the compose file interpolates."""
    text = COMPOSE.read_text(encoding="utf-8")
    return {(m.group("braced") or m.group("bare"), m.group("op"))
            for m in _INTERPOLATION.finditer(text) if m.group(0) != "$$"}


def compose_config() -> dict[str, Any]:
    """compose.yaml as `docker compose` sees it with deploy/.env.example as its .env."""
    text = interpolate(COMPOSE.read_text(encoding="utf-8"), env_example())
    config = yaml.safe_load(text)
    assert isinstance(config, dict)
    return config


def service_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.partition("=")[::2] for item in env)
    return {k: "" if v is None else str(v) for k, v in env.items()}


SERVICES = {"postgres", "redis", "mlflow", "code", "code-execution", *WEBSERVERS, "daemon",
            "exporter", "prometheus", "grafana", "ledger-migrate", "api", "proxy", "vnpy-venue",
            "quote-relay"}
# Run once and exit: no healthcheck; who depends on them waits for a successful exit.
ONE_SHOT = {"ledger-migrate"}


def test_compose_services_have_healthchecks_and_wait_for_healthy_dependencies() -> None:
    services = compose_config()["services"]
    assert set(services) == SERVICES
    for name, service in services.items():
        if name in ONE_SHOT:
            assert service["restart"] == "no", f"{name} runs once"
        else:
            test = (service.get("healthcheck") or {}).get("test")
            assert test and not (service["healthcheck"].get("disable")), \
                f"{name}: no healthcheck"
        for dependency, condition in (service.get("depends_on") or {}).items():
            assert dependency in services, f"{name} depends on unknown service {dependency}"
            wanted = ("service_completed_successfully" if dependency in ONE_SHOT
                      else "service_healthy")
            assert condition == {"condition": wanted}, (name, dependency)
    expected = {
        "mlflow": {"postgres"},
        "ledger-migrate": {"postgres"},
        "code": {"postgres", "ledger-migrate", "redis", "mlflow"},
        "code-execution": {"postgres", "ledger-migrate", "redis", "mlflow"},
        "dagster-desk": {"postgres", "code", "code-execution"},
        "dagster-research": {"postgres", "code"},
        "dagster-viewer": {"postgres", "code", "code-execution"},
        "daemon": {"postgres", "code", "code-execution"},
        "api": {"postgres", "ledger-migrate", "redis", "mlflow"},
        "proxy": {"api", *WEBSERVERS, "mlflow", "grafana", "exporter"},
        "exporter": {"postgres", "ledger-migrate"},
        "prometheus": {"exporter"},
        "grafana": {"prometheus"},
    }
    for name, dependencies in expected.items():
        assert set(services[name]["depends_on"]) >= dependencies, name


def test_compose_quote_relay_follows_the_venue_process() -> None:
    """The quote relay (orchestration.quotes) runs beside the venue process in the vnpy
    profile, reaches it on its RPC ports on the compose network, and gets the deployment's
    Redis and ledger URLs in its environment (never on its command line)."""
    services = compose_config()["services"]
    relay, venue = services["quote-relay"], services["vnpy-venue"]
    assert relay["profiles"] == venue["profiles"] == ["vnpy"]
    assert relay["command"] == ["python", "-m", "orchestration.quotes"]
    assert relay["build"]["args"]["EXTRAS"] == "vnpy"
    env, venue_env = service_env(relay), service_env(venue)
    assert env["ETF_EXECUTION__VNPY__HOST"] == "vnpy-venue"
    for port in ("REP_PORT", "PUB_PORT"):
        assert env[f"ETF_EXECUTION__VNPY__{port}"] == venue_env[f"ETF_EXECUTION__VNPY__{port}"]
        assert venue_env[f"ETF_EXECUTION__VNPY__{port}"] in {str(p) for p in venue["expose"]}
    assert re.fullmatch(r"redis://:[^@/]+@redis:6379/\d+", env["ETF_REDIS_URL"])
    assert env["ETF_POSTGRES_URL"].startswith("postgresql+psycopg://")
    assert not any("://" in str(a) for a in relay["command"])
    assert set(relay["depends_on"]) >= {"vnpy-venue", "redis", "postgres"}
    assert "ETF_EXECUTION__VNPY__GATEWAY_SETTING" not in env   # the broker's secret stays put
    # Profile prod as the other services that load the settings, with the URLs it needs.
    assert env["ETF_PROFILE"] == service_env(services["code"])["ETF_PROFILE"] == "prod"
    assert all(env[f"ETF_{name}"] for name in ("POSTGRES_URL", "REDIS_URL",
                                                "MLFLOW_TRACKING_URI"))
    health = " ".join(relay["healthcheck"]["test"])
    assert f"('vnpy-venue', {venue_env['ETF_EXECUTION__VNPY__REP_PORT']})" in health


def test_helm_vnpy_venue_and_quote_relay() -> None:
    """deploy/helm/vnpy.yaml: the venue process (one, its gateway setting from a secret, its
    journal on etf-state) behind a cluster-internal Service, and the quote relay reaching it
    there on the same ports with the platform's settings from etf-rotation-env, as compose."""
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(HELM_VNPY.read_text(encoding="utf-8"))}
    assert set(docs) == {("Deployment", "etf-vnpy-venue"), ("Service", "etf-vnpy-venue"),
                         ("Deployment", "etf-quote-relay"), ("NetworkPolicy", "etf-vnpy-venue")}

    def container(name: str) -> dict[str, Any]:
        (only,) = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        return dict(only)

    venue, relay = container("etf-vnpy-venue"), container("etf-quote-relay")
    venue_deployment = docs[("Deployment", "etf-vnpy-venue")]["spec"]
    assert venue_deployment["replicas"] == 1
    assert venue_deployment["strategy"]["type"] == "Recreate"   # one broker login at a time
    assert venue["command"] == ["python", "-m", "orchestration.vnpy_venue"]
    assert relay["command"] == ["python", "-m", "orchestration.quotes"]
    assert [e["secretRef"]["name"] for e in venue["envFrom"]] == ["etf-vnpy-env"]
    assert [e["secretRef"]["name"] for e in relay["envFrom"]] == ["etf-rotation-env"]
    venue_env = {e["name"]: e["value"] for e in venue["env"]}
    relay_env = {e["name"]: e["value"] for e in relay["env"]}
    assert "ETF_EXECUTION__VNPY__GATEWAY_SETTING" not in venue_env   # only from the secret
    service = docs[("Service", "etf-vnpy-venue")]["spec"]
    assert service.get("type", "ClusterIP") == "ClusterIP"
    ports = {p["name"]: p["port"] for p in service["ports"]}
    assert relay_env["ETF_EXECUTION__VNPY__HOST"] == "etf-vnpy-venue"
    assert relay_env["ETF_PROFILE"] == "prod"     # its URLs come from etf-rotation-env
    for name, port in (("rep", "REP_PORT"), ("pub", "PUB_PORT")):
        assert str(ports[name]) == venue_env[f"ETF_EXECUTION__VNPY__{port}"] == \
            relay_env[f"ETF_EXECUTION__VNPY__{port}"]
    assert service["selector"] == \
        docs[("Deployment", "etf-vnpy-venue")]["spec"]["selector"]["matchLabels"]
    compose = service_env(compose_config()["services"]["vnpy-venue"])
    assert {venue_env[k] for k in ("ETF_EXECUTION__VNPY__REP_PORT",
                                   "ETF_EXECUTION__VNPY__PUB_PORT")} == \
        {compose["ETF_EXECUTION__VNPY__REP_PORT"], compose["ETF_EXECUTION__VNPY__PUB_PORT"]}
    assert venue_env["ETF_EXECUTION__VNPY__STATE_DIR"].startswith(
        next(m["mountPath"] for m in venue["volumeMounts"] if m["name"] == "etf-state"))
    policy = docs[("NetworkPolicy", "etf-vnpy-venue")]["spec"]
    assert policy["podSelector"]["matchLabels"] == service["selector"]
    assert {p["port"] for rule in policy["ingress"] for p in rule["ports"]} == set(ports.values())
    readme = (DEPLOY / "helm" / "README.md").read_text(encoding="utf-8")
    assert "apply -f deploy/helm/vnpy.yaml" in readme


def test_compose_wiring() -> None:
    config = compose_config()
    services = config["services"]
    for name in ("code", "code-execution", "exporter", "api"):
        env = service_env(services[name])
        assert env["ETF_PROFILE"] == "prod"
        assert re.fullmatch(r"postgresql\+psycopg://[^@/]+@postgres:5432/ledger",
                            env["ETF_POSTGRES_URL"]), env["ETF_POSTGRES_URL"]
        assert re.fullmatch(r"redis://:[^@/]+@redis:6379/\d+", env["ETF_REDIS_URL"]), (
            "ETF_REDIS_URL must carry the Redis password")
        # MLflow serves under /mlflow (behind the proxy), its REST API too.
        assert env["ETF_MLFLOW_TRACKING_URI"] == "http://mlflow:5000/mlflow"
        assert "ETF_ALERT_WEBHOOK_URL" in env
    assert service_env(services["code"])["ETF_CODE_LOCATION"] == "research"
    assert service_env(services["code-execution"])["ETF_CODE_LOCATION"] == "execution"
    for name in ("code", "code-execution", *WEBSERVERS, "daemon", "exporter", "api"):
        url = service_env(services[name])["DAGSTER_PG_URL"]
        assert re.fullmatch(r"postgresql\+psycopg2://[^@/]+@postgres:5432/dagster", url), url
    mlflow = services["mlflow"]
    assert re.fullmatch(r"ghcr\.io/mlflow/mlflow:v3\.\d+\.\d+(-full)?", mlflow["image"])
    assert service_env(mlflow)["MLFLOW_BACKEND_STORE_URI"].startswith(
        "postgresql+psycopg2://")
    assert "mlflow:5000" in service_env(mlflow)["MLFLOW_SERVER_ALLOWED_HOSTS"].split(",")

    init_sql = config["configs"]["postgres-init"]["content"]
    for database, owner in (("dagster", "dagster"), ("ledger", "etf_ledger_owner"),
                            ("mlflow", "mlflow")):
        assert f"CREATE DATABASE {database} OWNER {owner};" in init_sql
    (init,) = services["postgres"]["configs"]
    assert init["target"].startswith("/docker-entrypoint-initdb.d/")

    # The same image (built from the repository root) for every Dagster process.
    app = ("code", "code-execution", *WEBSERVERS, "daemon", "exporter", "api")
    images = {services[n]["image"] for n in app}
    assert len(images) == 1
    for name in app:
        build = services[name]["build"]
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE
    for name, file in (("dagster-desk", WORKSPACE), ("dagster-viewer", WORKSPACE),
                       ("dagster-research", RESEARCH_WORKSPACE), ("daemon", WORKSPACE)):
        command = services[name]["command"]
        workspace = command[command.index("-w") + 1]
        assert workspace.startswith("/opt/dagster/app/deploy/")         # WORKDIR + the file
        assert (ROOT / Path(workspace).relative_to("/opt/dagster/app")) == file, name
    for name in WEBSERVERS:
        assert services[name]["command"][0] == "dagster-webserver"
    assert services["daemon"]["command"][:2] == ["dagster-daemon", "run"]
    assert services["exporter"]["command"] == ["python", "-m", "observability.exporter"]
    assert str(EXPORTER_PORT) in json.dumps(services["exporter"]["healthcheck"]["test"])

    # The market data, read-only, by default from ../shared/data beside the repository.
    data = [v for v in services["code"]["volumes"] if v.split(":")[1] == "/data"]
    assert len(data) == 1 and data[0].endswith(":ro"), data
    default_source = re.search(r"\$\{ETF_DATA_DIR:-([^}]+)\}",
                               COMPOSE.read_text(encoding="utf-8"))
    assert default_source is not None
    # Lexically: ../shared may be a symbolic link beside the checkout.
    assert os.path.normpath(DEPLOY / default_source.group(1)) == os.path.normpath(
        ROOT.parent / "shared" / "data")

    # Every file bind-mounted from the repository exists.
    for name, service in services.items():
        for volume in service.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("./"):
                assert (DEPLOY / source).exists(), f"{name}: {source} does not exist"


def template_variables() -> set[str]:
    """The variables of deploy/proxy's template (the nginx image's envsubst fills them)."""
    return set(re.findall(r"\$\{(\w+)\}", PROXY_TEMPLATE.read_text(encoding="utf-8")))


def test_compose_front_door() -> None:
    """One published port, the proxy's; every surface behind it, as deploy/proxy routes."""
    services = compose_config()["services"]
    published = {name for name, service in services.items() if service.get("ports")}
    assert published == {"proxy"}
    proxy = services["proxy"]
    assert proxy["ports"] == ["127.0.0.1:8080:8080"]
    assert proxy["image"].startswith("nginx:")
    assert proxy["volumes"] == [
        "./proxy/etf.conf.template:/etc/nginx/templates/default.conf.template:ro"]
    env = service_env(proxy)
    assert template_variables() <= set(env), "the template needs a value for each variable"
    assert env["PROXY_LISTEN"] == "8080"
    # Each upstream is a service of the stack on the port it listens on.
    for variable, (service, port) in {
            "API_UPSTREAM": ("api", 8000), "DAGSTER_DESK_UPSTREAM": ("dagster-desk", 3000),
            "DAGSTER_RESEARCH_UPSTREAM": ("dagster-research", 3000),
            "DAGSTER_VIEWER_UPSTREAM": ("dagster-viewer", 3000),
            "MLFLOW_UPSTREAM": ("mlflow", 5000), "GRAFANA_UPSTREAM": ("grafana", 3000),
            "EXPORTER_UPSTREAM": ("exporter", EXPORTER_PORT)}.items():
        assert env[variable] == f"{service}:{port}" and service in services, variable

    for name in WEBSERVERS:
        command = services[name]["command"]
        assert command[command.index("--path-prefix") + 1] == "/dagster", name
        assert ("--read-only" in command) == (name == "dagster-viewer"), name
        assert "/dagster/server_info" in json.dumps(services[name]["healthcheck"]["test"])
    mlflow = services["mlflow"]["command"]
    assert mlflow[mlflow.index("--static-prefix") + 1] == "/mlflow"

    api = services["api"]
    assert api["command"] == ["python", "-m", "api"]
    api_env = service_env(api)
    assert api_env["API_HOST"] == "0.0.0.0" and api_env["API_PORT"] == "8000"
    assert api_env["ETF_API__DAGSTER_GRAPHQL_URL"] == "http://dagster-desk:3000/dagster/graphql"
    assert api_env["ETF_API__DAGSTER_EXECUTION_LOCATION"] == EXECUTION_LOCATION_NAME
    assert ("ETF_API__JWT_SECRET", ":?") in compose_variables()
    with pytest.raises(SettingsError, match="ETF_API__JWT_SECRET"):    # the placeholder
        load_settings(api={"jwt_secret": env_example()["ETF_API__JWT_SECRET"]})

    grafana = service_env(services["grafana"])
    # No desk user can be named like Grafana's admin (the auth proxy signs in by name).
    assert re.fullmatch(USERNAME_PATTERN, grafana["GF_SECURITY_ADMIN_USER"]) is None
    assert grafana["GF_AUTH_PROXY_ENABLED"] == "true"
    assert grafana["GF_AUTH_PROXY_HEADER_NAME"] == "X-Etf-User"
    assert "proxy_set_header X-Etf-User $etf_user;" in PROXY_TEMPLATE.read_text(encoding="utf-8")
    assert grafana["GF_AUTH_DISABLE_LOGIN_FORM"] == "true"
    assert grafana["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    assert grafana["GF_SERVER_SERVE_FROM_SUB_PATH"] == "true"
    assert grafana["GF_SERVER_ROOT_URL"].endswith("/grafana/")
    # Links in metadata and alerts lead to the pages behind the proxy.
    code = service_env(services["code"])
    assert code["ETF_DAGSTER_WEBSERVER_URL"] == "http://127.0.0.1:8080/dagster"
    assert code["ETF_MLFLOW_UI_URL"] == "http://127.0.0.1:8080/mlflow"


def test_helm_front_door() -> None:
    values = helm_values()
    webserver = values["dagsterWebserver"]
    assert webserver["pathPrefix"] == "/dagster" and webserver["enableReadOnly"] is True
    # The chart probes the path as given: under the prefix.
    assert webserver["readinessProbe"]["httpGet"]["path"] == "/dagster/server_info"
    research, execution = values["dagster-user-deployments"]["deployments"]
    docs = {(d["kind"], d["metadata"]["name"]): d
            for d in yaml.safe_load_all(HELM_DESK.read_text(encoding="utf-8"))}
    (ingress,) = [d for (kind, _), d in docs.items() if kind == "Ingress"]
    backends = {p["backend"]["service"]["name"] for rule in ingress["spec"]["rules"]
                for p in rule["http"]["paths"]}
    assert backends == {"etf-proxy"}

    def container(name: str) -> dict[str, Any]:
        (only,) = docs[("Deployment", name)]["spec"]["template"]["spec"]["containers"]
        return dict(only)

    proxy = container("etf-proxy")
    env = {e["name"]: e["value"] for e in proxy["env"]}
    assert template_variables() <= set(env)
    assert env["API_UPSTREAM"] == "etf-api:8000"
    # Every upstream of this file is a Service of this file or of the chart (nginx resolves
    # them at start); MLflow and Grafana are outside, as the README says.
    services = {name for (kind, name) in docs if kind == "Service"} | {
        "etf-dagster-webserver", "etf-dagster-webserver-read-only"}
    for variable, value in env.items():
        if variable.endswith("_UPSTREAM") and variable not in {"MLFLOW_UPSTREAM",
                                                              "GRAFANA_UPSTREAM"}:
            assert value.split(":")[0] in services, variable
    assert env["DAGSTER_RESEARCH_UPSTREAM"] == "etf-dagster-research:80"
    assert env["DAGSTER_VIEWER_UPSTREAM"].startswith("etf-dagster-webserver-read-only:")

    workspace = yaml.safe_load(docs[("ConfigMap", "etf-research-workspace")]["data"][
        "workspace.yaml"])
    (location,) = workspace["load_from"]
    assert location["grpc_server"]["location_name"] == research["name"]
    assert location["grpc_server"]["port"] == research["port"]
    command = container("etf-dagster-research")["command"]
    assert command[command.index("--path-prefix") + 1] == "/dagster"
    assert "--read-only" not in command

    api = container("etf-api")
    assert api["command"] == ["python", "-m", "api"]
    assert api["envFrom"] == [{"secretRef": {"name": "etf-rotation-env"}},
                              {"secretRef": {"name": "etf-api-env"}}]
    api_env = {e["name"]: e["value"] for e in api["env"]}
    assert api_env["ETF_API__DAGSTER_LOCATION"] == research["name"]
    assert api_env["ETF_API__DAGSTER_EXECUTION_LOCATION"] == execution["name"]
    assert not {"ETF_API__JWT_SECRET", "ETF_POSTGRES_URL"} & set(api_env)   # secrets only
    image = research["image"]
    assert api["image"] == f"{image['repository']}:{image['tag']}"

    # Only the proxy reaches the API and the webservers (the API also the desk's GraphQL).
    policies = {name: d for (kind, name), d in docs.items() if kind == "NetworkPolicy"}
    sources = {name: [f["podSelector"]["matchLabels"]["app.kubernetes.io/component"]
                      for rule in p["spec"]["ingress"] for f in rule["from"]]
               for name, p in policies.items()}
    assert sources == {"etf-api-from-proxy": ["proxy"],
                       "etf-research-webserver-from-proxy": ["proxy"],
                       "etf-dagster-webservers-from-proxy": ["proxy", "api"]}
    chart = policies["etf-dagster-webservers-from-proxy"]["spec"]["podSelector"]
    assert chart["matchExpressions"][0]["values"] == ["dagster-webserver",
                                                      "dagster-webserver-read-only"]

    readme = (DEPLOY / "helm" / "README.md").read_text(encoding="utf-8")
    made = re.search(r"create secret generic etf-api-env(?:[^\n]*\\\n)*[^\n]*", readme)
    assert made is not None
    literals = dict(re.findall(r"--from-literal=(\w+)='([^']*)'", made.group(0)))
    assert urlsplit(literals["ETF_POSTGRES_URL"]).username == "etf_api"
    assert "apply -f deploy/helm/desk.yaml" in readme
    assert "--from-file=default.conf.template=deploy/proxy/etf.conf.template" in readme


def test_compose_variables_and_env_example() -> None:
    example = env_example()
    for name, op in compose_variables():
        if op not in (":-", "-"):
            assert name in example, f"compose needs ${{{name}}}: add it to deploy/.env.example"
    for name, value in example.items():
        if "PASSWORD" in name or "SECRET" in name or "TOKEN" in name:
            assert value == "change-me", f"{name} in .env.example must be a placeholder"


# PostgreSQL: one login role per consumer (password variable -> login role), created by
# configs.postgres-init; only the postgres service knows the superuser.
PG_LOGINS = {
    "DAGSTER_DB_PASSWORD": "dagster",
    "MLFLOW_DB_PASSWORD": "mlflow",
    "LEDGER_OWNER_PASSWORD": "etf_ledger_migrator",
    "LEDGER_WRITER_PASSWORD": "etf_app",
    "LEDGER_API_PASSWORD": "etf_api",
    "LEDGER_READER_PASSWORD": "etf_reader",
}
PG_PASSWORDS = (*PG_LOGINS, "POSTGRES_PASSWORD")
# Which PostgreSQL passwords each service may see (in its environment, command or URLs).
PG_PASSWORDS_SEEN = {
    "postgres": set(PG_PASSWORDS),
    "code": {"DAGSTER_DB_PASSWORD", "LEDGER_WRITER_PASSWORD"},
    "code-execution": {"DAGSTER_DB_PASSWORD", "LEDGER_WRITER_PASSWORD"},
    "api": {"DAGSTER_DB_PASSWORD", "LEDGER_API_PASSWORD"},
    "exporter": {"DAGSTER_DB_PASSWORD", "LEDGER_READER_PASSWORD"},
    **{name: {"DAGSTER_DB_PASSWORD"} for name in WEBSERVERS},
    "daemon": {"DAGSTER_DB_PASSWORD"},
    "quote-relay": {"LEDGER_READER_PASSWORD"},
    "mlflow": {"MLFLOW_DB_PASSWORD"},
    "ledger-migrate": {"LEDGER_OWNER_PASSWORD"},
}


def distinct_pg_passwords() -> dict[str, str]:
    """.env.example with a different password per PostgreSQL variable, so that a URL shows
    which variable it took its password from."""
    return {**env_example(), **{name: f"pw-{name.lower().replace('_', '-')}"
                                for name in PG_PASSWORDS}}


def postgres_init_script(config: dict[str, Any]) -> str:
    return str(config["configs"]["postgres-init"]["content"])


def init_sql_statements(script: str) -> list[str]:
    """The SQL the init script hands to psql (its heredoc), one statement per entry."""
    body = script.split("<<'SQL'\n", 1)[1].rsplit("\nSQL", 1)[0]
    return [line.strip() for line in body.splitlines() if line.strip()]


def test_compose_postgres_has_one_login_per_consumer() -> None:
    variables = distinct_pg_passwords()
    config = yaml.safe_load(interpolate(COMPOSE.read_text(encoding="utf-8"), variables))
    services = config["services"]

    def login(url: str) -> tuple[str | None, str | None, str]:
        parts = urlsplit(url)
        return parts.username, parts.password, parts.path.lstrip("/")

    expected = {
        ("code", "ETF_POSTGRES_URL"): ("etf_app", "LEDGER_WRITER_PASSWORD", "ledger"),
        ("code-execution", "ETF_POSTGRES_URL"): ("etf_app", "LEDGER_WRITER_PASSWORD", "ledger"),
        ("api", "ETF_POSTGRES_URL"): ("etf_api", "LEDGER_API_PASSWORD", "ledger"),
        ("exporter", "ETF_POSTGRES_URL"): ("etf_reader", "LEDGER_READER_PASSWORD", "ledger"),
        ("quote-relay", "ETF_POSTGRES_URL"): ("etf_reader", "LEDGER_READER_PASSWORD", "ledger"),
        ("ledger-migrate", "ETF_LEDGER_ADMIN_URL"): (
            "etf_ledger_migrator", "LEDGER_OWNER_PASSWORD", "ledger"),
        ("mlflow", "MLFLOW_BACKEND_STORE_URI"): ("mlflow", "MLFLOW_DB_PASSWORD", "mlflow"),
        **{(name, "DAGSTER_PG_URL"): ("dagster", "DAGSTER_DB_PASSWORD", "dagster")
           for name in ("code", "code-execution", *WEBSERVERS, "daemon", "exporter", "api")},
    }
    for (service, variable), (user, password, database) in expected.items():
        assert login(service_env(services[service])[variable]) == (
            user, variables[password], database), (service, variable)
    for name, service in services.items():
        text = json.dumps(service)
        seen = {v for v in PG_PASSWORDS if variables[v] in text}
        assert seen == PG_PASSWORDS_SEEN.get(name, set()), name
        if name != "ledger-migrate":
            assert "ETF_LEDGER_ADMIN_URL" not in service_env(service), name
    postgres_env = service_env(services["postgres"])
    for name in PG_PASSWORDS:
        assert postgres_env[name] == variables[name]

    # Every PostgreSQL password is required: no default, compose refuses to start without it.
    text = COMPOSE.read_text(encoding="utf-8")
    operators: dict[str, set[str | None]] = {}
    for name, op in compose_variables():
        if name in PG_PASSWORDS:
            operators.setdefault(name, set()).add(op)
    assert operators == {name: {":?"} for name in PG_PASSWORDS}
    for name in PG_PASSWORDS:
        with pytest.raises(AssertionError, match=f"compose requires {name}"):
            interpolate(text, {k: v for k, v in variables.items() if k != name})

    # The migrate step runs the module that exists, with a URL the settings accept.
    migrate_step = services["ledger-migrate"]
    assert migrate_step["command"] == ["python", "-m", "orchestration.migrate_ledger"]
    assert (ROOT / "orchestration" / "migrate_ledger.py").is_file()
    assert set(service_env(migrate_step)) == {"ETF_LEDGER_ADMIN_URL"}
    admin_url = service_env(migrate_step)["ETF_LEDGER_ADMIN_URL"]
    assert load_settings(ledger_admin_url=admin_url).ledger_admin_url == admin_url
    with pytest.raises(SettingsError, match="ETF_LEDGER_ADMIN_URL"):
        load_settings(ledger_admin_url=admin_url.replace(variables["LEDGER_OWNER_PASSWORD"],
                                                         "change-me"))


def test_compose_postgres_init_creates_the_roles_and_refuses_placeholders() -> None:
    config = compose_config()
    (init,) = config["services"]["postgres"]["configs"]
    assert init["target"].endswith(".sh")     # sourced by the image's entrypoint
    script = postgres_init_script(config)
    statements = init_sql_statements(script)
    psql_variables = dict(re.findall(r'-v (\w+)="\$(\w+)"', script))
    for variable, role in PG_LOGINS.items():
        (psql_variable,) = [p for p, v in psql_variables.items() if v == variable]
        assert any(re.fullmatch(rf"CREATE ROLE {role} LOGIN PASSWORD :'{psql_variable}'"
                                rf"( IN ROLE \w+)?;", s) for s in statements), role
    for group in ("etf_ledger_owner", "etf_ledger_writer", "etf_ledger_reader"):
        assert f"CREATE ROLE {group} NOLOGIN;" in statements
    for login, group in (("etf_ledger_migrator", "etf_ledger_owner"),
                         ("etf_app", "etf_ledger_writer"), ("etf_api", "etf_ledger_writer"),
                         ("etf_reader", "etf_ledger_reader")):
        assert any(s.startswith(f"CREATE ROLE {login} ") and s.endswith(f" IN ROLE {group};")
                   for s in statements), login
    assert not any("SUPERUSER" in s or "CREATEROLE" in s for s in statements)
    # The placeholder check covers every PostgreSQL password, change-me among the refused.
    checked = re.search(r"for name in ([\w \\\n]+?); do", script)
    assert checked is not None
    assert set(checked.group(1).replace("\\", " ").split()) == set(PG_PASSWORDS)
    refused = re.search(r'^\s*""\|([\w|-]+)\)$', script, re.M)
    assert refused is not None
    assert {"change-me", "password", "postgres"} <= set(refused.group(1).split("|"))


def test_compose_redis_requires_a_password_and_the_app_gets_the_cache_secret() -> None:
    # Both are required variables: compose refuses to start without them, no default exists.
    required = {name: op for name, op in compose_variables()
                if name in {"REDIS_PASSWORD", "ETF_CACHE_SECRET"}}
    assert required == {"REDIS_PASSWORD": ":?", "ETF_CACHE_SECRET": ":?"}
    example = env_example()
    text = COMPOSE.read_text(encoding="utf-8")
    for name in required:
        with pytest.raises(AssertionError, match=f"compose requires {name}"):
            interpolate(text, {k: v for k, v in example.items() if k != name})

    services = compose_config()["services"]
    redis = services["redis"]
    password = example["REDIS_PASSWORD"]
    command = redis["command"]
    assert command[command.index("--requirepass") + 1] == password
    # The healthcheck's redis-cli authenticates (REDISCLI_AUTH), or PING would answer NOAUTH.
    assert service_env(redis)["REDISCLI_AUTH"] == password
    assert "redis-cli ping" in " ".join(redis["healthcheck"]["test"])
    assert "PONG" in " ".join(redis["healthcheck"]["test"])
    for name in ("code", "code-execution", "exporter", "api"):
        env = service_env(services[name])
        url = urlsplit(env["ETF_REDIS_URL"])
        assert (url.hostname, url.password) == ("redis", password)
        assert env["ETF_CACHE_SECRET"] == example["ETF_CACHE_SECRET"]
    for name in (*WEBSERVERS, "daemon"):   # they run no asset code: no cache secret
        assert "ETF_CACHE_SECRET" not in service_env(services[name])

    # The placeholder is no working secret: the app refuses it at start-up.
    with pytest.raises(SettingsError, match="ETF_CACHE_SECRET"):
        load_settings(redis_url="redis://:x@redis:6379/0",
                      cache_secret=example["ETF_CACHE_SECRET"])


def test_compose_matches_the_compose_spec_schema() -> None:
    schema = vendored_schema("compose-spec")
    errors = schema_errors(schema, compose_config())
    assert not errors, "\n".join(errors)


def test_docker_compose_config() -> None:
    docker = shutil.which("docker")
    probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True,
                           check=False) if docker else None
    if probe is None or probe.returncode != 0:
        pytest.skip("the Docker Compose v2 plugin is not installed (`docker compose version` "
                    "fails); the compose-spec schema test covers the file here")
    result = subprocess.run(
        [docker, "compose", "--project-directory", str(DEPLOY), "-f", str(COMPOSE),
         "--env-file", str(ENV_EXAMPLE), "config", "--quiet"],
        capture_output=True, text=True, check=False)
    assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_the_exporter() -> None:
    config = load_yaml(PROMETHEUS)
    (scrape,) = config["scrape_configs"]
    assert scrape["honor_labels"] is True   # the run series carry their own `job` label
    targets = [t for group in scrape["static_configs"] for t in group["targets"]]
    assert targets == [f"exporter:{EXPORTER_PORT}"]
    prometheus = compose_config()["services"]["prometheus"]
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prometheus["volumes"]


# --------------------------------------------------------------------------------------------
# Grafana
# --------------------------------------------------------------------------------------------

PROMQL_WORDS = {
    # aggregation operators and keywords
    "sum", "min", "max", "avg", "group", "stddev", "stdvar", "count", "count_values",
    "bottomk", "topk", "quantile", "limitk", "limit_ratio", "by", "without", "on", "ignoring",
    "group_left", "group_right", "and", "or", "unless", "bool", "offset", "atan2", "inf", "nan",
}
PROMQL_FUNCTIONS = {
    "abs", "absent", "absent_over_time", "ceil", "changes", "clamp", "clamp_max", "clamp_min",
    "day_of_month", "day_of_week", "days_in_month", "delta", "deriv", "exp", "floor",
    "histogram_quantile", "holt_winters", "hour", "idelta", "increase", "irate", "label_join",
    "label_replace", "ln", "log2", "log10", "minute", "month", "predict_linear", "rate",
    "resets", "round", "scalar", "sgn", "sort", "sort_desc", "sqrt", "time", "timestamp",
    "vector", "year", "avg_over_time", "min_over_time", "max_over_time", "sum_over_time",
    "count_over_time", "quantile_over_time", "stddev_over_time", "last_over_time",
    "present_over_time",
}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values() query) selects."""
    label_values = re.fullmatch(r"\s*label_values\(\s*([^,)]*?)\s*(?:,\s*\w+\s*)?\)\s*", expr)
    if label_values:
        expr = label_values.group(1)
    text = re.sub(r'"(?:\\.|[^"\\])*"|\'(?:\\.|[^\'\\])*\'', " ", expr)   # strings
    text = re.sub(r"\$\{[^}]*\}|\$\w+", " ", text)                          # Grafana variables
    text = re.sub(r"\{[^}]*\}", " ", text)                                  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)                                 # ranges
    text = re.sub(r"\b(by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)
    names = set()
    for match in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = match.group(0)
        if match.start() > 0 and (text[match.start() - 1].isdigit()
                                  or text[match.start() - 1] == "."):
            continue   # the exponent / unit of a number literal
        followed_by_call = re.match(r"\s*\(", text[match.end():]) is not None
        if word in PROMQL_WORDS or (followed_by_call and word in PROMQL_FUNCTIONS):
            continue
        names.add(word)
    return names


def test_promql_metric_name_extraction() -> None:
    assert promql_metric_names(
        'histogram_quantile(0.95, sum by (le, job) (rate(etf_run_duration_seconds_bucket'
        '{job=~"$job"}[$__rate_interval])))') == {"etf_run_duration_seconds_bucket"}
    assert promql_metric_names("sum(up) or vector(0)") == {"up"}
    assert promql_metric_names("label_values(etf_ledger_equity_cny, account)") \
        == {"etf_ledger_equity_cny"}
    assert promql_metric_names("etf_asset_check_failed == 1") == {"etf_asset_check_failed"}


def dashboard_panels(dashboard: dict[str, Any]) -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))   # collapsed rows
    return panels


def test_grafana_dashboard_queries_only_the_exporters_series() -> None:
    dashboard = json.loads(DASHBOARD.read_text(encoding="utf-8"))
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    (datasource,) = datasources["datasources"]
    assert 36 <= dashboard["schemaVersion"] <= 41
    panels = [p for p in dashboard_panels(dashboard) if p["type"] != "row"]
    assert len({p["id"] for p in panels}) == len(panels), "panel ids must be unique"

    used: set[str] = set()
    expressions = []
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["datasource"]["uid"] == datasource["uid"], panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            expressions.append((panel["title"], target["expr"]))
    for variable in dashboard["templating"]["list"]:
        query = variable["query"]
        expressions.append((f"${variable['name']}",
                            query["query"] if isinstance(query, dict) else query))
    for title, expr in expressions:
        names = promql_metric_names(expr)
        assert names, f"{title}: {expr!r} selects no metric"
        unknown = names - QUERYABLE_SERIES
        assert not unknown, f"{title}: {expr!r} uses {sorted(unknown)}"
        used |= {name for name in QUERYABLE_SERIES if name in names}
    used_bases = {re.sub(r"_(bucket|sum|count)$", "", n) if n.startswith(tuple(HISTOGRAMS))
                  else n for n in used}
    assert used_bases == EXPORTER_METRICS, f"not on the dashboard: {EXPORTER_METRICS - used_bases}"

    exposure = [p for p in panels if p["title"] == "Gross exposure ratio"]
    assert len(exposure) == 1
    defaults = exposure[0]["fieldConfig"]["defaults"]
    assert 1.0 in [step["value"] for step in defaults["thresholds"]["steps"]]
    assert defaults["custom"]["thresholdsStyle"]["mode"] != "off"


def test_grafana_provisioning_matches_compose() -> None:
    grafana = compose_config()["services"]["grafana"]
    mounts = dict(v.rsplit(":", 1)[0].split(":", 1) for v in grafana["volumes"]
                  if v.startswith("./"))
    datasources = load_yaml(GRAFANA / "provisioning" / "datasources" / "prometheus.yaml")
    (datasource,) = datasources["datasources"]
    assert datasource["type"] == "prometheus"
    assert datasource["url"] == "http://prometheus:9090"
    providers = load_yaml(GRAFANA / "provisioning" / "dashboards" / "dashboards.yaml")
    (provider,) = providers["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert mounts["./grafana/provisioning/datasources"] == \
        "/etc/grafana/provisioning/datasources"
    assert mounts["./grafana/provisioning/dashboards"] == "/etc/grafana/provisioning/dashboards"


# --------------------------------------------------------------------------------------------
# Helm
# --------------------------------------------------------------------------------------------

# The part of the `dagster/dagster` chart's values.schema.json (1.13 line, generated from
# helm/dagster/schema/schema/charts in dagster-io/dagster) that deploy/helm/values.yaml uses.
# Sections the chart declares with additionalProperties=false are closed here as well; the
# others are closed too (stricter than the chart, which accepts and ignores unknown keys
# there), so a misspelt key fails here instead of being silently ignored.
_ENV = {"anyOf": [{"type": "object", "additionalProperties": {"type": "string"}},
                  {"type": "array", "items": {"type": "object",
                                              "required": ["name"]}}]}
_SECRET_REFS = {"type": "array", "items": {"type": "object", "required": ["name"]}}
_OBJECT = {"type": "object"}
_IMAGE = {"type": "object", "additionalProperties": False, "required": ["repository", "pullPolicy"],
          "properties": {"repository": {"type": "string"},
                         "tag": {"type": ["string", "integer", "null"]},
                         "pullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]}}}
_TAG_LIMIT = {"type": "object", "additionalProperties": False, "required": ["key", "limit"],
              "properties": {"key": {"type": "string"}, "limit": {"type": "integer"},
                             "value": {"anyOf": [
                                 {"type": "string"}, {"type": "null"},
                                 {"type": "object", "additionalProperties": False,
                                  "required": ["applyLimitPerUniqueValue"],
                                  "properties": {"applyLimitPerUniqueValue": {
                                      "type": "boolean"}}}]}}}
_TICK_RETENTION = {
    "type": "object", "additionalProperties": False, "required": ["purgeAfterDays"],
    "properties": {"purgeAfterDays": {"anyOf": [
        {"type": "integer"},
        {"type": "object", "additionalProperties": False,
         "required": ["skipped", "success", "failure", "started"],
         "properties": {k: {"type": "integer"}
                        for k in ("skipped", "success", "failure", "started")}}]}}}


def _closed(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {"type": "object", "additionalProperties": False, "properties": properties,
            "required": list(required)}


HELM_SCHEMA: dict[str, Any] = _closed({
    "global": {"type": "object", "properties": {
        "postgresqlSecretName": {"type": "string"}, "dagsterHome": {"type": "string"},
        "serviceAccountName": {"type": "string"}, "celeryConfigSecretName": {"type": "string"}}},
    "dagsterWebserver": _closed({k: {} for k in (
        "replicaCount", "image", "nameOverride", "pathPrefix", "service", "workspace",
        "envConfigMaps", "envSecrets", "deploymentLabels", "labels", "nodeSelector",
        "affinity", "tolerations", "podSecurityContext", "securityContext", "resources",
        "readinessProbe", "livenessProbe", "startupProbe", "annotations", "enableReadOnly",
        "dbStatementTimeout", "dbPoolRecycle", "logLevel", "schedulerName", "volumeMounts",
        "volumes", "initContainerResources")} | {"env": _ENV}),
    "dagster-user-deployments": _closed({
        "enabled": {"type": "boolean"}, "enableSubchart": {"type": "boolean"},
        "imagePullSecrets": _SECRET_REFS,
        "deployments": {"type": "array", "minItems": 1, "items": _closed({
            "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
            "image": _IMAGE,
            "dagsterApiGrpcArgs": {"type": "array", "items": {"type": "string"}},
            "codeServerArgs": {"type": "array", "items": {"type": "string"}},
            "includeConfigInLaunchedRuns": _closed({"enabled": {"type": "boolean"}},
                                                   ("enabled",)),
            "deploymentNamespace": {"type": "string"},
            "port": {"type": "integer"},
            "replicaCount": {"type": "integer", "exclusiveMinimum": 0},
            "env": _ENV, "envConfigMaps": _SECRET_REFS, "envSecrets": _SECRET_REFS,
            "annotations": _OBJECT, "nodeSelector": _OBJECT, "affinity": _OBJECT,
            "tolerations": {"type": "array"}, "podSecurityContext": _OBJECT,
            "securityContext": _OBJECT, "resources": _OBJECT, "livenessProbe": _OBJECT,
            "readinessProbe": _OBJECT, "startupProbe": _OBJECT, "labels": _OBJECT,
            "volumeMounts": {"type": "array"}, "volumes": {"type": "array"},
            "schedulerName": {"type": "string"}, "initContainers": {"type": "array"},
            "sidecarContainers": {"type": "array"}, "deploymentStrategy": _OBJECT,
        }, ("name", "image", "port"))}}),
    "postgresql": _closed({
        "image": _OBJECT, "enabled": {"type": "boolean"},
        "postgresqlHost": {"type": "string"}, "postgresqlUsername": {"type": "string"},
        "postgresqlPassword": {"type": "string"}, "postgresqlDatabase": {"type": "string"},
        "postgresqlParams": _OBJECT, "postgresqlScheme": {"type": "string"},
        "service": _closed({"port": {"type": "integer"}}, ("port",)), "pool": _OBJECT}),
    "generatePostgresqlPasswordSecret": {"type": "boolean"},
    "generateCeleryConfigSecret": {"type": "boolean"},
    "rabbitmq": {"type": "object", "properties": {"enabled": {"type": "boolean"}}},
    "redis": {"type": "object", "properties": {"enabled": {"type": "boolean"}}},
    "runLauncher": _closed({
        "type": {"enum": ["CeleryK8sRunLauncher", "K8sRunLauncher", "CustomRunLauncher"]},
        "config": _closed({"k8sRunLauncher": _closed({
            "image": {"anyOf": [_IMAGE, {"type": "null"}]},
            "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
            "jobNamespace": {"type": ["string", "null"]},
            "loadInclusterConfig": {"type": "boolean"},
            "kubeconfigFile": {"type": ["string", "null"]},
            "envConfigMaps": _SECRET_REFS, "envSecrets": _SECRET_REFS,
            "envVars": {"type": "array", "items": {"type": "string"}},
            "volumeMounts": {"type": "array"}, "volumes": {"type": "array"},
            "labels": {"type": ["object", "null"], "additionalProperties": {"type": "string"}},
            "failPodOnRunFailure": {"type": ["boolean", "null"]},
            "resources": {"type": ["object", "null"]},
            "schedulerName": {"type": ["string", "null"]},
            "securityContext": {"type": ["object", "null"]},
            "runK8sConfig": _closed({k: _OBJECT for k in (
                "containerConfig", "podSpecConfig", "podTemplateSpecMetadata",
                "jobSpecConfig", "jobMetadata")}),
        })}),
    }, ("type", "config")),
    "dagsterDaemon": _closed({
        "enabled": {"type": "boolean"}, "image": _IMAGE,
        "runCoordinator": _closed({
            "enabled": {"type": "boolean"},
            "type": {"enum": ["QueuedRunCoordinator", "CustomRunCoordinator"]},
            "config": _closed({"queuedRunCoordinator": _closed({
                "maxConcurrentRuns": {"type": ["integer", "null"]},
                "tagConcurrencyLimits": {"type": ["array", "null"], "items": _TAG_LIMIT},
                "dequeueIntervalSeconds": {"type": ["integer", "null"]},
                "dequeueNumWorkers": {"type": ["integer", "null"]},
                "dequeueUseThreads": {"type": ["boolean", "null"]},
                "blockOpConcurrencyLimitedRuns": _OBJECT})}),
        }),
        "heartbeatTolerance": {"type": "integer"}, "env": _ENV,
        "envConfigMaps": _SECRET_REFS, "envSecrets": _SECRET_REFS,
        "deploymentLabels": _OBJECT, "labels": _OBJECT, "nodeSelector": _OBJECT,
        "affinity": _OBJECT, "tolerations": {"type": "array"}, "podSecurityContext": _OBJECT,
        "securityContext": _OBJECT, "resources": _OBJECT, "livenessProbe": _OBJECT,
        "readinessProbe": _OBJECT, "startupProbe": _OBJECT, "annotations": _OBJECT,
        # keys read by the chart's configmap-instance template
        "runMonitoring": _closed({"enabled": {"type": "boolean"},
                                  "startTimeoutSeconds": {"type": "integer"},
                                  "cancelTimeoutSeconds": {"type": "integer"},
                                  "maxRuntimeSeconds": {"type": "integer"},
                                  "maxResumeRunAttempts": {"type": "integer"},
                                  "pollIntervalSeconds": {"type": "integer"},
                                  "freeSlotsAfterRunEndSeconds": {"type": "integer"}}),
        "runRetries": _closed({"enabled": {"type": "boolean"},
                               "maxRetries": {"type": "integer"},
                               "retryOnAssetOrOpFailure": {"type": "boolean"}}, ("enabled",)),
        "sensors": _OBJECT, "schedules": _OBJECT, "backfills": _OBJECT,
        "schedulerName": {"type": ["string", "null"]},
    }),
    "concurrency": _closed({
        "enabled": {"type": "boolean"},
        "pools": _closed({"defaultLimit": {"type": ["integer", "null"]},
                          "granularity": {"enum": ["run", "op", None]},
                          "opGranularityRunBuffer": {"type": ["integer", "null"]}}),
        "runs": _closed({"maxConcurrentRuns": {"type": ["integer", "null"]},
                         "tagConcurrencyLimits": {"type": "array", "items": _TAG_LIMIT}}),
    }),
    "computeLogManager": _closed({
        "type": {"enum": ["NoOpComputeLogManager", "AzureBlobComputeLogManager",
                          "GCSComputeLogManager", "S3ComputeLogManager",
                          "CustomComputeLogManager"]},
        "config": _closed({k: {"type": ["object", "null"]} for k in (
            "azureBlobComputeLogManager", "gcsComputeLogManager", "s3ComputeLogManager",
            "customComputeLogManager")}),
    }, ("type", "config")),
    "retention": _closed({"enabled": {"type": "boolean"}, "sensor": _TICK_RETENTION,
                          "schedule": _TICK_RETENTION, "autoMaterialize": _TICK_RETENTION}),
    "telemetry": _closed({"enabled": {"type": "boolean"}}, ("enabled",)),
    "pythonLogs": _OBJECT, "ingress": _OBJECT, "flower": _OBJECT, "scheduler": _OBJECT,
    "busybox": _OBJECT, "migrate": _OBJECT, "serviceAccount": _OBJECT,
    "imagePullSecrets": _SECRET_REFS, "additionalInstanceConfig": _OBJECT,
})


def helm_values() -> dict[str, Any]:
    values = load_yaml(HELM_VALUES)
    assert isinstance(values, dict)
    return values


def instance_rendered_by_the_chart(values: dict[str, Any]) -> dict[str, Any]:
    """The instance sections the chart's configmap-instance template writes from these values
    (run launcher omitted: dagster-k8s is not a dependency here)."""
    pg = values["postgresql"]
    daemon = values["dagsterDaemon"]
    queued = daemon["runCoordinator"]["config"]["queuedRunCoordinator"]
    snake = {"maxConcurrentRuns": "max_concurrent_runs",
             "tagConcurrencyLimits": "tag_concurrency_limits",
             "dequeueIntervalSeconds": "dequeue_interval_seconds"}
    coordinator: dict[str, Any] = {"module": "dagster.core.run_coordinator",
                                   "class": "QueuedRunCoordinator"}
    if any(v not in (None, [], {}) for v in queued.values()):
        coordinator["config"] = {snake[k]: v for k, v in queued.items() if v is not None}
    concurrency = values["concurrency"]
    monitoring = daemon["runMonitoring"]
    retries = daemon["runRetries"]
    retention = values["retention"]
    return {
        "storage": {"postgres": {"postgres_db": {
            "username": pg["postgresqlUsername"], "password": {"env": "DAGSTER_PG_PASSWORD"},
            "hostname": pg["postgresqlHost"], "db_name": pg["postgresqlDatabase"],
            "port": pg["service"]["port"], "params": pg["postgresqlParams"],
            "scheme": pg["postgresqlScheme"]}}},
        "run_coordinator": coordinator,
        "concurrency": {
            "pools": {"default_limit": concurrency["pools"]["defaultLimit"]},
            "runs": {"max_concurrent_runs": concurrency["runs"]["maxConcurrentRuns"],
                     "tag_concurrency_limits": concurrency["runs"]["tagConcurrencyLimits"]}},
        "run_monitoring": {"enabled": monitoring["enabled"],
                           "start_timeout_seconds": monitoring["startTimeoutSeconds"],
                           "cancel_timeout_seconds": monitoring["cancelTimeoutSeconds"],
                           "max_runtime_seconds": monitoring["maxRuntimeSeconds"],
                           "max_resume_run_attempts": monitoring["maxResumeRunAttempts"],
                           "poll_interval_seconds": monitoring["pollIntervalSeconds"],
                           "free_slots_after_run_end_seconds":
                               monitoring["freeSlotsAfterRunEndSeconds"]},
        "run_retries": {"enabled": retries["enabled"], "max_retries": retries["maxRetries"],
                        "retry_on_asset_or_op_failure": retries["retryOnAssetOrOpFailure"]},
        "retention": {k: {"purge_after_days": retention[k]["purgeAfterDays"]}
                      for k in ("schedule", "sensor")},
        "telemetry": {"enabled": values["telemetry"]["enabled"]},
    }


def test_helm_values_use_the_charts_keys() -> None:
    errors = schema_errors(HELM_SCHEMA, helm_values())
    assert not errors, "\n".join(errors)


def test_helm_values_wiring(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    values = helm_values()
    deployment, execution = values["dagster-user-deployments"]["deployments"]
    assert values["dagster-user-deployments"]["enabled"] is True
    assert (deployment["name"], execution["name"]) == ("etf-rotation", "etf-execution")
    for location, port, part in ((deployment, GRPC_PORT, "research"),
                                 (execution, EXECUTION_GRPC_PORT, "execution")):
        assert location["dagsterApiGrpcArgs"] == ["-m", "orchestration.definitions", "-a",
                                                  "defs"]
        assert location["port"] == port
        assert {"name": "etf-rotation-env"} in location["envSecrets"]
        env = {e["name"]: e["value"] for e in location["env"]}
        assert env["ETF_CODE_LOCATION"] == part
        assert env["ETF_PROFILE"] == "prod"
        assert location["volumeMounts"] == deployment["volumeMounts"]
    assert values["runLauncher"]["type"] == "K8sRunLauncher"
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    assert {"name": "etf-rotation-env"} in launcher["envSecrets"]
    assert values["postgresql"]["enabled"] is False
    assert values["postgresql"]["postgresqlPassword"] == ""   # from the secret, never here
    assert values["postgresql"]["postgresqlScheme"] == "postgresql+psycopg2"
    assert values["generatePostgresqlPasswordSecret"] is False
    assert values["dagsterDaemon"]["runCoordinator"]["type"] == "QueuedRunCoordinator"
    assert values["concurrency"]["enabled"] is True

    home = tmp_path / "rendered"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        yaml.safe_dump(instance_rendered_by_the_chart(values)), encoding="utf-8")
    config, _ = dagster_instance_config(str(home))
    assert config["concurrency"]["runs"]["max_concurrent_runs"] == 6
    # The same run-monitoring limits as the compose instance, except resuming (K8s can).
    prod_monitoring = load_yaml(PROD_INSTANCE)["run_monitoring"]
    assert {k: v for k, v in config["run_monitoring"].items() if k != "max_resume_run_attempts"} \
        == {k: v for k, v in prod_monitoring.items() if k != "max_resume_run_attempts"}
    readme = (DEPLOY / "helm" / "README.md").read_text(encoding="utf-8")
    assert "k8s_job_executor" in readme

    # The code location fans the walk-forward windows out on Kubernetes: its walk-forward env,
    # read by the platform's own settings loader, selects the k8s executor.
    env = {e["name"]: e["value"] for e in deployment["env"]}
    assert env["ETF_WALK_FORWARD__EXECUTOR"] == "k8s"
    for name, value in env.items():
        if name.startswith("ETF_WALK_FORWARD__"):
            monkeypatch.setenv(name, value)
    settings = load_settings(home=tmp_path / "etf_home")
    assert settings.walk_forward.executor == "k8s"
    assert settings.walk_forward.step_memory == "6Gi"


def test_helm_redis_password_and_cache_secret_come_from_the_secret() -> None:
    values = helm_values()
    deployments = values["dagster-user-deployments"]["deployments"]
    launcher = values["runLauncher"]["config"]["k8sRunLauncher"]
    # Never as plain values: the code servers and every run pod get them from etf-rotation-env.
    plain = {e["name"] for d in deployments for e in d["env"]} | {
        v.partition("=")[0] for v in launcher["envVars"]}
    assert not plain & {"ETF_REDIS_URL", "ETF_CACHE_SECRET"}
    assert all({"name": "etf-rotation-env"} in d["envSecrets"] for d in deployments)
    assert {"name": "etf-rotation-env"} in launcher["envSecrets"]
    readme = (DEPLOY / "helm" / "README.md").read_text(encoding="utf-8")
    command = re.search(r"create secret generic etf-rotation-env(?:[^\n]*\\\n)+[^\n]*", readme)
    assert command is not None, "deploy/helm/README.md must show how etf-rotation-env is made"
    literals = dict(re.findall(r"--from-literal=(\w+)=(?:'([^']*)'|\"[^\"]*\")", command.group(0)))
    assert "ETF_CACHE_SECRET" in literals
    assert urlsplit(literals["ETF_REDIS_URL"]).password, "ETF_REDIS_URL needs the password"


def test_helm_ledger_roles_and_the_migrate_job() -> None:
    """Kubernetes mirrors compose: the code location (and so every run pod) gets the
    application's login only; the owner's login is the migrate Job's alone."""
    values = helm_values()
    deployment, execution = values["dagster-user-deployments"]["deployments"]
    assert values["postgresql"]["postgresqlUsername"] == "dagster"
    # The chart copies a deployment's initContainers into run pods: no migrate step there.
    assert "initContainers" not in deployment and "initContainers" not in execution
    assert "etf-ledger-admin" not in yaml.safe_dump(values)

    job = load_yaml(DEPLOY / "helm" / "ledger-migrate-job.yaml")
    assert (job["apiVersion"], job["kind"]) == ("batch/v1", "Job")
    pod = job["spec"]["template"]["spec"]
    assert pod["restartPolicy"] == "Never" and pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    assert container["command"] == ["python", "-m", "orchestration.migrate_ledger"]
    image = deployment["image"]
    assert container["image"] == f"{image['repository']}:{image['tag']}"
    assert container["envFrom"] == [{"secretRef": {"name": "etf-ledger-admin"}}]

    readme = (DEPLOY / "helm" / "README.md").read_text(encoding="utf-8")
    secrets = {}
    for name in ("etf-rotation-env", "etf-ledger-admin"):
        command = re.search(rf"create secret generic {name}(?:[^\n]*\\\n)*[^\n]*", readme)
        assert command is not None, name
        secrets[name] = dict(re.findall(r"--from-literal=(\w+)='([^']*)'", command.group(0)))
    assert urlsplit(secrets["etf-rotation-env"]["ETF_POSTGRES_URL"]).username == "etf_app"
    assert urlsplit(secrets["etf-ledger-admin"]["ETF_LEDGER_ADMIN_URL"]).username == \
        "etf_ledger_migrator"
    assert "apply -f deploy/helm/ledger-migrate-job.yaml" in readme
    # The README's role SQL is compose's, statement for statement.
    block = re.search(r"```sql\n(.*?)```", readme, re.S)
    assert block is not None
    readme_sql = [line.split("--", 1)[0].strip() for line in block.group(1).splitlines()]
    assert [s for s in readme_sql if s] == init_sql_statements(
        postgres_init_script(compose_config()))


def test_image_requirements_include_the_asked_extras() -> None:
    script = DEPLOY / "requirements.py"
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]

    def run(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, str(script), *args, str(ROOT / "pyproject.toml")],
                              capture_output=True, text=True, timeout=60)

    plain = run("").stdout.splitlines()
    assert plain == project["dependencies"]
    with_k8s = run("k8s").stdout.splitlines()
    assert with_k8s == [*project["dependencies"], *project["optional-dependencies"]["k8s"]]
    assert any(r.startswith("dagster-k8s") for r in with_k8s)
    wrong = run("kubernetes")
    assert wrong.returncode != 0 and "unknown extra(s) ['kubernetes']" in wrong.stderr
    runs = [" ".join(rest.split()) for keyword, rest in dockerfile_instructions()
            if keyword == "RUN"]
    assert ('python requirements.py "${EXTRAS}" pyproject.toml > /tmp/requirements.txt '
            "&& pip install -r /tmp/requirements.txt && rm /tmp/requirements.txt "
            "requirements.py") in runs


def test_helm_template_with_the_chart(tmp_path: Path) -> None:
    """`helm template` validates the values against the chart's own values.schema.json; the
    dagster.yaml it renders then goes through Dagster's validation."""
    helm = shutil.which("helm")
    chart = os.environ.get("ETF_HELM_CHART")
    if not helm or not chart:
        pytest.skip("needs `helm` and ETF_HELM_CHART (the dagster/dagster chart of the installed "
                    "dagster version, e.g. `helm pull dagster/dagster --version "
                    f"{dg.__version__} --untar`); CI sets both")
    rendered = subprocess.run(
        [helm, "template", "etf", chart, "--namespace", "etf", "-f", str(HELM_VALUES)],
        capture_output=True, text=True, check=False)
    assert rendered.returncode == 0, rendered.stderr
    documents = [d for d in yaml.safe_load_all(rendered.stdout) if d]
    instance_maps = [d for d in documents if d.get("kind") == "ConfigMap"
                     and d["metadata"]["name"].endswith("-instance")
                     and "dagster.yaml" in (d.get("data") or {})]
    assert len(instance_maps) == 1
    instance_yaml = instance_maps[0]["data"]["dagster.yaml"]
    home = tmp_path / "helm_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(instance_yaml, encoding="utf-8")
    config, _ = dagster_instance_config(str(home))
    assert config["concurrency"]["pools"]["default_limit"] == 1
    assert config["run_launcher"]["class"] == "K8sRunLauncher"
    # The chart renders the monitoring limits we set (it ignores keys it does not know).
    monitoring = helm_values()["dagsterDaemon"]["runMonitoring"]
    assert config["run_monitoring"]["max_runtime_seconds"] == monitoring["maxRuntimeSeconds"]
    assert config["run_monitoring"]["free_slots_after_run_end_seconds"] == \
        monitoring["freeSlotsAfterRunEndSeconds"]
    assert "postgresql+psycopg2" in instance_yaml
    grpc_args = " ".join(str(d) for d in documents if d.get("kind") == "Deployment")
    assert "orchestration.definitions" in grpc_args


# --------------------------------------------------------------------------------------------
# GitHub Actions
# --------------------------------------------------------------------------------------------


def workflow() -> dict[str, Any]:
    data = load_yaml(WORKFLOW)
    if True in data:   # YAML 1.1 reads the key `on` as a boolean
        data["on"] = data.pop(True)
    return data


def workflow_runs(job: dict[str, Any]) -> str:
    return "\n".join(step.get("run", "") for step in job["steps"])


def test_ci_workflow_jobs() -> None:
    jobs = workflow()["jobs"]
    assert {"lint", "typecheck", "test", "audit", "secrets"} <= set(jobs)
    assert "ruff check ." in workflow_runs(jobs["lint"])
    assert "mypy" in workflow_runs(jobs["typecheck"])
    mypy_config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["mypy"]
    assert set(mypy_config["files"]) == {"rotation", "trading", "api"}
    assert "make test" in workflow_runs(jobs["test"])
    assert "pip-audit" in workflow_runs(jobs["audit"])
    assert any(step.get("uses", "").startswith(("gitleaks/gitleaks-action@",
                                                "trufflesecurity/trufflehog@"))
               for step in jobs["secrets"]["steps"])

    services = jobs["test"]["services"]
    assert services["postgres"]["image"] == "postgres:16"
    assert services["postgres"]["env"]["POSTGRES_HOST_AUTH_METHOD"] == "trust"
    assert "5432:5432" in services["postgres"]["ports"]
    assert services["redis"]["image"].startswith("redis:7")
    assert "6379:6379" in services["redis"]["ports"]

    for name, job in jobs.items():
        for step in job["steps"]:
            uses = step.get("uses")
            if uses:
                assert re.fullmatch(r"[\w.-]+/[\w.-]+@v\d+", uses), f"{name}: pin {uses}"
            if uses and uses.startswith("actions/setup-python@"):
                assert str(step["with"]["python-version"]) in ("3.11",
                                                               "${{ env.PYTHON_VERSION }}")
                assert step["with"]["cache"] == "pip"
    assert workflow()["env"]["PYTHON_VERSION"] == "3.11"


def test_ci_workflow_matches_the_github_workflow_schema() -> None:
    schema = vendored_schema("github-workflows")
    errors = schema_errors(schema, workflow())
    assert not errors, "\n".join(errors)


def test_shell_steps_parse() -> None:
    """Every `run:` block of the workflow is valid bash (bash -n)."""
    bash = shutil.which("bash")
    if not bash:
        pytest.skip("bash is not installed")
    for name, job in workflow()["jobs"].items():
        for step in job["steps"]:
            if "run" in step:
                check = subprocess.run([bash, "-n", "-c", step["run"]], capture_output=True,
                                       text=True, check=False)
                assert check.returncode == 0, f"{name}: {shlex.quote(step['run'])}\n{check.stderr}"
