"""`make dev`: the Dagster UI and daemon on the same local instance as `make demo`, and the MLflow
UI on the same store.

Ports: the Dagster UI listens where ``dagster_webserver_url`` says (default
http://127.0.0.1:3000), the MLflow UI where ``mlflow_ui_url`` says (default
http://127.0.0.1:5000); `make dev DAGSTER_PORT=3100 MLFLOW_PORT=5100` sets both (and the links the
runs of `make demo` / `make dev` write into the asset metadata and the MLflow runs). The MLflow
UI runs with one worker (:data:`MLFLOW_WORKERS`) and without MLflow's GenAI job runner
(:data:`MLFLOW_ENV`): about 0.5 GB instead of 2–3.4 GB; with a tracking server of your own
(``ETF_MLFLOW_TRACKING_URI=http…``) none is started.

Without ``ETF_POSTGRES_URL`` the ledger is the demo's embedded PostgreSQL: the same server on
the same data directory (``<home>/<dataset>/postgres``) is started for as long as the UI runs,
and its URL handed to the UI as ``ETF_POSTGRES_URL`` (orchestration/embedded_pg.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit

from orchestration.embedded_pg import embedded_ledger
from orchestration.instance import prepare_local_instance
from orchestration.settings import (
    LOCAL_DAGSTER_UI,
    LOCAL_MLFLOW_UI,
    PROJECT_ROOT,
    Settings,
    load_settings,
)

UI_STOP_SECONDS = 60
MLFLOW_WORKERS = 1
# MLflow 3's server also starts a job runner for its GenAI features (judges, prompt
# optimisation), none of which a research store uses: measured on the demo's store, one worker
# without it takes about 0.5 GB, the default (four workers and the runner) 2.1 GB.
MLFLOW_ENV = {"MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"}
# Notices from the tools' own start-up that say nothing about this project: `dagster dev`
# suggests the separate `dg` CLI, and MLflow's server imports a Starlette module Starlette
# deprecates. Filtered by message only (PYTHONWARNINGS), every other warning still shows.
QUIET_WARNINGS = ("ignore:Function `dev_command` is superseded",
                  "ignore:starlette.middleware.wsgi is deprecated")


def quiet(env: dict[str, str]) -> dict[str, str]:
    """``env`` with :data:`QUIET_WARNINGS` added to ``PYTHONWARNINGS``."""
    given = [w for w in env.get("PYTHONWARNINGS", "").split(",") if w]
    return {**env, "PYTHONWARNINGS": ",".join([*given, *QUIET_WARNINGS])}


def port_of(url: str | None, default: int) -> int:
    return urlsplit(url).port or default if url else default


def dagster_command(settings: Settings) -> list[str]:
    """`dagster dev` on the settings' Dagster URL (host and port)."""
    url = settings.resolved_dagster_url or LOCAL_DAGSTER_UI
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    return [dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml"),
            "-h", urlsplit(url).hostname or "127.0.0.1", "-p", str(port_of(url, 3000))]


def mlflow_command(settings: Settings) -> list[str] | None:
    """The low-memory MLflow UI on the local store (None with a tracking server of its own):
    one worker, loopback only, the artifacts read where the runs wrote them."""
    uri = settings.resolved_mlflow_uri
    if uri.startswith(("http://", "https://")):
        return None
    url = settings.resolved_mlflow_ui_url or LOCAL_MLFLOW_UI
    mlflow = os.path.join(os.path.dirname(sys.executable), "mlflow")
    return [mlflow, "server", "--backend-store-uri", uri,
            "--host", urlsplit(url).hostname or "127.0.0.1", "--port", str(port_of(url, 5000)),
            "--workers", str(MLFLOW_WORKERS)]


def main() -> int:
    settings = load_settings()
    if "--mlflow-only" in sys.argv[1:]:      # `make mlflow`
        command = mlflow_command(settings)
        if command is None:
            print(f"MLflow: the tracking server {settings.resolved_mlflow_uri} is its own UI")
            return 0
        print(f"MLflow UI   : {settings.resolved_mlflow_ui_url or LOCAL_MLFLOW_UI} "
              f"({' '.join(command[1:])})")
        return _run_until_stopped(command, quiet({**os.environ, **MLFLOW_ENV}))
    home = prepare_local_instance(settings)
    print(f"DAGSTER_HOME={home}")
    os.chdir(PROJECT_ROOT)
    command = dagster_command(settings)
    env = quiet({**os.environ, "DAGSTER_HOME": str(home)})
    print(f"Dagster UI  : {settings.resolved_dagster_url or LOCAL_DAGSTER_UI}")
    with _mlflow_ui(settings, env):
        if settings.postgres_url:
            return _run_until_stopped(command, env)
        with embedded_ledger(settings.data_home) as server:
            print(f"ETF_POSTGRES_URL={server.url(hide_password=True)} (embedded PostgreSQL, data "
                  f"in {server.data}; stopped when the UI stops)")
            return _run_until_stopped(command, {**env, "ETF_POSTGRES_URL": server.url()})


@contextmanager
def _mlflow_ui(settings: Settings, env: dict[str, str]) -> Iterator[None]:
    """The MLflow UI for as long as the Dagster UI runs (nothing with a tracking server)."""
    command = mlflow_command(settings)
    if command is None:
        yield
        return
    print(f"MLflow UI   : {settings.resolved_mlflow_ui_url or LOCAL_MLFLOW_UI} "
          f"({' '.join(command[1:])})")
    child = subprocess.Popen(command, env={**env, **MLFLOW_ENV},
                             preexec_fn=default_stop_signals)
    try:
        yield
    finally:
        _stop(child)


def default_stop_signals() -> None:
    # `dagster dev` maps SIGTERM to its SIGINT handling, which a shell that starts it in the
    # background has set to "ignore": it could then not be stopped, nor the server after it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_until_stopped(command: list[str], env: dict[str, str]) -> int:
    """Run the UI as a child (not exec: the server must be stopped after it) and wait for it
    to shut down, also after Ctrl-C (which reaches both) or SIGTERM (passed on)."""
    child = subprocess.Popen(command, env=env, preexec_fn=default_stop_signals)
    try:
        return child.wait()
    except KeyboardInterrupt:
        return child.wait()
    finally:
        _stop(child)


def _stop(child: subprocess.Popen[bytes]) -> None:
    if child.poll() is None:
        child.terminate()
        try:
            child.wait(timeout=UI_STOP_SECONDS)
        except subprocess.TimeoutExpired:
            child.kill()
            child.wait()


if __name__ == "__main__":
    sys.exit(main())
