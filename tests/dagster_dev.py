"""`dagster dev` (webserver and daemon) as a user starts it, for the end-to-end tests that drive
it through the webserver's GraphQL API (tests/test_operations_e2e.py, tests/test_hot_reload.py)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from dagster_graphql import DagsterGraphQLClient

from orchestration.dev import default_stop_signals

ROOT = Path(__file__).resolve().parents[1]
LOCATION = """
query { workspaceOrError { ... on Workspace { locationEntries {
  name loadStatus locationOrLoadError { __typename ... on PythonError { message } } } } } }"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for(what: str, probe: Callable[[], Any], timeout: float, every: float = 2.0) -> Any:
    deadline = time.monotonic() + timeout
    last: Any = None
    while time.monotonic() < deadline:
        try:
            last = probe()
        except Exception as exc:  # the server may not answer yet
            last = exc
        else:
            if last:
                return last
        time.sleep(every)
    pytest.fail(f"timed out after {timeout:.0f}s waiting for {what} (last: {last!r})")


def location_loaded(client: DagsterGraphQLClient) -> bool:
    """Every code location LOADED; a PythonError fails at once with its message."""
    entries = client._execute(LOCATION)["workspaceOrError"]["locationEntries"]
    errors = [e for e in entries if e["locationOrLoadError"]["__typename"] == "PythonError"]
    assert not errors, errors[0]["locationOrLoadError"]["message"]
    return bool(entries) and all(e["loadStatus"] == "LOADED" for e in entries)


@dataclass(frozen=True)
class DagsterDev:
    client: DagsterGraphQLClient
    process: subprocess.Popen[bytes]
    port: int


@contextmanager
def dagster_dev(env: dict[str, str], log_path: Path, timeout: float = 60
                ) -> Iterator[DagsterDev]:
    """`dagster dev -w workspace.yaml` on a free loopback port, once its code location loaded;
    stopped with SIGTERM (as Ctrl-C) at the end, which must end it within 90 s."""
    port = free_port()
    with log_path.open("w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster"), "dev", "-w",
             str(ROOT / "workspace.yaml"), "-h", "127.0.0.1", "-p", str(port)],
            cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            # A suite started in the background inherits SIGINT ignored, and `dagster dev`
            # handles SIGTERM as SIGINT: without the defaults it would ignore the stop.
            preexec_fn=default_stop_signals)
        try:
            wait_for("the webserver", lambda: urllib.request.urlopen(
                f"http://127.0.0.1:{port}/server_info", timeout=5).status == 200, 180)
            client = DagsterGraphQLClient("127.0.0.1", port_number=port, timeout=timeout)
            wait_for("the code location", lambda: location_loaded(client), 240)
            yield DagsterDev(client, proc, port)
        finally:
            if not stop_group(proc):
                pytest.fail("dagster dev did not shut down within 90 s of SIGTERM")


def stop_group(proc: subprocess.Popen[bytes]) -> bool:
    """SIGTERM to the process group ``proc`` leads (webserver, daemon, run workers); SIGKILL
    after 90 s. Whether it stopped on SIGTERM."""
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
        return False
    return True
