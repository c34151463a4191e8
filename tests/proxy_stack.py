"""A deployment's front door on this machine: Debian's nginx with deploy/proxy's configuration,
in front of the desk API, three Dagster webservers over the two code locations (research and
execution, ``ETF_CODE_LOCATION``), the MLflow UI and the metrics exporter, all real processes
on a copy of one `make demo` home (tests/demo_home.py) and its embedded PostgreSQL.

Loopback ports are free ones; the webservers and MLflow serve under the prefixes the proxy
routes (/dagster, /mlflow), as in deploy/compose.yaml."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import yaml
from api_desk import JWT_SECRET, PASSWORD
from demo_home import Demo, free_port

from api import security
from api.permissions import Role
from api.store import Audit, UserStore
from orchestration.dev import MLFLOW_ENV
from orchestration.embedded_pg import embedded_ledger
from trading.ledger import Ledger

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "deploy" / "proxy" / "etf.conf.template"
NGINX = os.environ.get("ETF_TEST_NGINX", "/usr/sbin/nginx")
BIN = Path(sys.executable).parent
RESEARCH, EXECUTION = "etf_rotation", "etf_execution"
START_SECONDS = 240
# One user per role the tests sign in as.
USERS = {"viewer": Role.VIEWER, "researcher": Role.RESEARCHER, "trader": Role.TRADER,
         "risk": Role.RISK}


def render(template: str, values: dict[str, str]) -> str:
    """envsubst as the nginx image's entrypoint runs it: only these variables are replaced."""
    for name, value in values.items():
        template = template.replace("${" + name + "}", value)
    assert "${" not in template, "a variable of the template has no value"
    return template


def nginx_config(work: Path, server_block: str) -> Path:
    """The image's nginx.conf in short: the rendered file included inside http {}."""
    for sub in ("body", "proxy", "fastcgi", "uwsgi", "scgi", "logs"):
        (work / sub).mkdir(parents=True, exist_ok=True)
    (work / "etf.conf").write_text(server_block, encoding="utf-8")
    conf = work / "nginx.conf"
    user = "user root root;\n" if os.geteuid() == 0 else ""
    conf.write_text(f"""{user}daemon off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/logs/error.log warn;
events {{ worker_connections 512; }}
http {{
    access_log {work}/logs/access.log;
    client_body_temp_path {work}/body;
    proxy_temp_path {work}/proxy;
    fastcgi_temp_path {work}/fastcgi;
    uwsgi_temp_path {work}/uwsgi;
    scgi_temp_path {work}/scgi;
    include {work}/etf.conf;
}}
""", encoding="utf-8")
    return conf


def workspace(path: Path, locations: dict[str, int]) -> Path:
    path.write_text(yaml.safe_dump({"load_from": [
        {"grpc_server": {"host": "127.0.0.1", "port": port, "location_name": name}}
        for name, port in locations.items()]}), encoding="utf-8")
    return path


@dataclass
class Stack:
    url: str
    home: Path
    dagster_home: Path
    ledger_url: str
    ports: dict[str, int]
    logs: Path
    processes: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    def client(self, **kwargs: object) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=60, **kwargs)  # type: ignore[arg-type]

    @contextlib.contextmanager
    def signed_in(self, username: str) -> Iterator[httpx.Client]:
        """A browser-like client signed in through the proxy's sign-in page."""
        with self.client() as client:
            answer = client.post("/signin", data={"username": username, "password": PASSWORD,
                                                  "next": "/dagster/"})
            assert answer.status_code == 303, answer.text
            assert answer.headers["location"] == "/dagster/"
            yield client

    def log(self, name: str) -> str:
        path = self.logs / f"{name}.log"
        return path.read_text(encoding="utf-8", errors="replace")[-4000:] if path.exists() \
            else ""


def _start(stack: Stack, name: str, command: list[str], env: dict[str, str]) -> None:
    out = (stack.logs / f"{name}.log").open("wb")
    stack.processes[name] = subprocess.Popen(command, cwd=ROOT, env=env, stdout=out,
                                             stderr=subprocess.STDOUT,
                                             start_new_session=True)


def _wait(stack: Stack, name: str, url: str, deadline: float) -> None:
    while time.monotonic() < deadline:
        process = stack.processes[name]
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{stack.log(name)}")
        with contextlib.suppress(httpx.HTTPError):
            if httpx.get(url, timeout=5).status_code < 500:
                return
        time.sleep(0.5)
    raise AssertionError(f"{name} did not answer {url} in {START_SECONDS} s:\n{stack.log(name)}")


def _wait_grpc(stack: Stack, name: str, port: int, deadline: float) -> None:
    while time.monotonic() < deadline:
        process = stack.processes[name]
        if process.poll() is not None:
            raise AssertionError(f"{name} exited with {process.returncode}:\n{stack.log(name)}")
        check = subprocess.run([str(BIN / "dagster"), "api", "grpc-health-check", "-p",
                                str(port)], capture_output=True, check=False)
        if check.returncode == 0:
            return
        time.sleep(1)
    raise AssertionError(f"{name} did not serve in {START_SECONDS} s:\n{stack.log(name)}")


def _create_users(ledger_url: str) -> None:
    ledger = Ledger(ledger_url)
    try:
        users = UserStore(ledger)
        for username, role in USERS.items():
            if users.user(username) is None:
                users.create_user(username, security.hash_password(PASSWORD), role, Audit(
                    actor="test", action="user_created", entity="api_user",
                    entity_id=username, reason="proxy tests", details={}))
    finally:
        ledger.dispose()


@contextlib.contextmanager
def proxy_stack(demo: Demo) -> Iterator[Stack]:
    """Everything started on a copy of the demo's home (the tests launch runs and backfills
    that must not reach the shared demo), stopped and removed afterwards."""
    base = Path(tempfile.mkdtemp(prefix="etf_proxy_test_"))
    base.chmod(0o755)       # the embedded server's unprivileged user enters it (demo_home)
    home = base / "etf_home"
    # cp -a: the server's data directory keeps its owner and mode.
    subprocess.run(["cp", "-a", str(demo.home), str(home)], check=True)
    try:
        yield from _serve(demo, base, home)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _serve(demo: Demo, base: Path, home: Path) -> Iterator[Stack]:
    ports = {name: free_port() for name in (
        "proxy", "api", "research_grpc", "execution_grpc", "dagster_desk",
        "dagster_research", "dagster_viewer", "mlflow", "exporter")}
    proxy_url = f"http://127.0.0.1:{ports['proxy']}"
    settings = demo.settings()
    data_home = settings.data_home
    relocated = home / data_home.relative_to(demo.home)
    logs = base / "logs"
    logs.mkdir()
    with embedded_ledger(relocated) as server:
        ledger_url = server.url()
        _create_users(ledger_url)
        dagster_home = home / settings.dagster_home.relative_to(demo.home)
        stack = Stack(proxy_url, home, dagster_home, ledger_url, ports, logs)
        env = {**demo.env, "ETF_HOME": str(home), "ETF_POSTGRES_URL": ledger_url,
               "DAGSTER_HOME": str(dagster_home),
               "ETF_DAGSTER_WEBSERVER_URL": f"{proxy_url}/dagster",
               "ETF_MLFLOW_UI_URL": f"{proxy_url}/mlflow"}
        try:
            _start_all(stack, env, relocated)
            yield stack
        finally:
            for process in stack.processes.values():
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(process.pid, signal.SIGTERM)
            for process in stack.processes.values():
                try:
                    process.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()


def _start_all(stack: Stack, env: dict[str, str], data_home: Path) -> None:
    ports, base = stack.ports, stack.logs.parent
    deadline = time.monotonic() + START_SECONDS
    for part, name in (("research", "research_grpc"), ("execution", "execution_grpc")):
        _start(stack, name, [str(BIN / "dagster"), "api", "grpc", "-h", "127.0.0.1", "-p",
                             str(ports[name]), "-m", "orchestration.definitions", "-a", "defs"],
               {**env, "ETF_CODE_LOCATION": part})
    both = workspace(base / "workspace.yaml", {RESEARCH: ports["research_grpc"],
                                                EXECUTION: ports["execution_grpc"]})
    research_only = workspace(base / "workspace.research.yaml",
                              {RESEARCH: ports["research_grpc"]})
    mlflow_db = data_home / "mlflow.db"
    _start(stack, "mlflow", [str(BIN / "mlflow"), "server", "--backend-store-uri",
                             f"sqlite:///{mlflow_db}", "--host", "127.0.0.1", "--port",
                             str(ports["mlflow"]), "--workers", "1", "--static-prefix",
                             "/mlflow"], {**env, **MLFLOW_ENV})
    _start(stack, "api", [sys.executable, "-m", "api"], {
        **env, "API_PORT": str(ports["api"]), "ETF_API__JWT_SECRET": JWT_SECRET,
        "ETF_API__DAGSTER_GRAPHQL_URL":
            f"http://127.0.0.1:{ports['dagster_desk']}/dagster/graphql",
        "ETF_API__DAGSTER_EXECUTION_LOCATION": EXECUTION})
    _start(stack, "exporter", [sys.executable, "-m", "observability.exporter", "--address",
                               "127.0.0.1", "--port", str(ports["exporter"]), "--ledger-url",
                               stack.ledger_url], env)
    for name in ("research_grpc", "execution_grpc"):
        _wait_grpc(stack, name, ports[name], deadline)
    for name, where, extra in (("dagster_desk", both, []),
                               ("dagster_research", research_only, []),
                               ("dagster_viewer", both, ["--read-only"])):
        _start(stack, name, [str(BIN / "dagster-webserver"), "-h", "127.0.0.1", "-p",
                             str(ports[name]), "-w", str(where), "--path-prefix", "/dagster",
                             *extra], env)
    conf = nginx_config(base / "nginx", render(TEMPLATE.read_text(encoding="utf-8"), {
        "PROXY_LISTEN": f"127.0.0.1:{ports['proxy']}",
        "API_UPSTREAM": f"127.0.0.1:{ports['api']}",
        "DAGSTER_DESK_UPSTREAM": f"127.0.0.1:{ports['dagster_desk']}",
        "DAGSTER_RESEARCH_UPSTREAM": f"127.0.0.1:{ports['dagster_research']}",
        "DAGSTER_VIEWER_UPSTREAM": f"127.0.0.1:{ports['dagster_viewer']}",
        "MLFLOW_UPSTREAM": f"127.0.0.1:{ports['mlflow']}",
        "GRAFANA_UPSTREAM": f"127.0.0.1:{free_port()}",
        "EXPORTER_UPSTREAM": f"127.0.0.1:{ports['exporter']}"}))
    _start(stack, "nginx", [NGINX, "-c", str(conf), "-p", str(conf.parent), "-e",
                            str(conf.parent / "logs" / "error.log")], env)
    _wait(stack, "api", f"http://127.0.0.1:{ports['api']}/health", deadline)
    _wait(stack, "mlflow", f"http://127.0.0.1:{ports['mlflow']}/mlflow/health", deadline)
    _wait(stack, "exporter", f"http://127.0.0.1:{ports['exporter']}/metrics", deadline)
    for name in ("dagster_desk", "dagster_research", "dagster_viewer"):
        _wait(stack, name, f"http://127.0.0.1:{ports[name]}/dagster/server_info", deadline)
    _wait(stack, "nginx", f"{stack.url}/signin", deadline)
