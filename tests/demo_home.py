"""`make demo` once per test session on a fresh home whose UI links point at two free ports:
the Dagster and MLflow pages (tests/test_researcher_view.py) and the desk API's research
endpoints (tests/test_api_research.py) read what one real run of the chain stored."""

from __future__ import annotations

import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from test_demo import demo_env, server_processes

from orchestration.settings import load_settings

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Demo:
    home: Path
    out: str
    dagster: str
    mlflow: str

    @property
    def env(self) -> dict[str, str]:
        return {**demo_env(self.home), "ETF_DAGSTER_WEBSERVER_URL": self.dagster,
                "ETF_MLFLOW_UI_URL": self.mlflow}

    def settings(self, **overrides: Any):
        return load_settings(home=self.home, dagster_webserver_url=self.dagster,
                             mlflow_ui_url=self.mlflow, **overrides)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.settings().dagster_home))


@pytest.fixture(scope="session")
def demo() -> Iterator[Demo]:
    """`make demo` on a fresh home whose links point at two free ports."""
    base = Path(tempfile.mkdtemp(prefix="etf_view_test_"))
    base.chmod(0o755)       # the embedded server's unprivileged user enters it (tests/test_demo)
    made = Demo(base / "etf_home", "", f"http://127.0.0.1:{free_port()}",
                f"http://127.0.0.1:{free_port()}")
    done = subprocess.run([sys.executable, "-m", "orchestration.demo"], cwd=ROOT, env=made.env,
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-6000:]
    # Quiet: no beta-warning noise from Dagster in what the newcomer reads.
    assert "BetaWarning" not in done.stderr, done.stderr[-3000:]
    made.out = done.stdout
    yield made
    for process in server_processes(base):
        process.kill()
    shutil.rmtree(base, ignore_errors=True)


