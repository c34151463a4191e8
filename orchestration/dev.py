"""`make dev`: the Dagster UI and daemon on the same local instance as `make demo`.

Without ``ETF_POSTGRES_URL`` the ledger is the demo's embedded PostgreSQL: the same server on
the same data directory (``<home>/postgres``) is started for as long as the UI runs, and its URL
handed to the UI as ``ETF_POSTGRES_URL`` (orchestration/embedded_pg.py)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from orchestration.embedded_pg import embedded_ledger
from orchestration.instance import prepare_local_instance
from orchestration.settings import PROJECT_ROOT, load_settings

UI_STOP_SECONDS = 60


def main() -> int:
    settings = load_settings()
    home = prepare_local_instance(settings)
    print(f"DAGSTER_HOME={home}")
    os.chdir(PROJECT_ROOT)
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    command = [dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml")]
    if settings.postgres_url:
        os.execv(dagster, command)
    with embedded_ledger(settings.home) as server:
        print(f"ETF_POSTGRES_URL={server.url(hide_password=True)} (embedded PostgreSQL, data in "
              f"{server.data}; stopped when the UI stops)")
        return _run_until_stopped(command, {**os.environ, "ETF_POSTGRES_URL": server.url()})


def _default_stop_signals() -> None:
    # `dagster dev` maps SIGTERM to its SIGINT handling, which a shell that starts it in the
    # background has set to "ignore": it could then not be stopped, nor the server after it.
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _run_until_stopped(command: list[str], env: dict[str, str]) -> int:
    """Run the UI as a child (not exec: the server must be stopped after it) and wait for it
    to shut down, also after Ctrl-C (which reaches both) or SIGTERM (passed on)."""
    child = subprocess.Popen(command, env=env, preexec_fn=_default_stop_signals)
    try:
        return child.wait()
    except KeyboardInterrupt:
        return child.wait()
    finally:
        if child.poll() is None:
            child.terminate()
            try:
                child.wait(timeout=UI_STOP_SECONDS)
            except subprocess.TimeoutExpired:
                child.kill()
                child.wait()


if __name__ == "__main__":
    sys.exit(main())
