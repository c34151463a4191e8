"""The deployment's code server (``python -m orchestration.code_server``): runs are forked from a
preloaded forkserver, terminating a run still reaches its worker, and a preload that does not
import stops the server. (A killed worker failed by the code server, and a killed code server:
tests/test_run_monitoring.py, on the same server.)

The stack of tests/test_run_monitoring.py: deploy/dagster.prod.yaml on a scratch PostgreSQL
database, a real `dagster-daemon run` and our code server serving tests/monitoring_location.py.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest
import test_run_monitoring
from test_run_monitoring import (
    ROOT,
    Stack,
    code_server_argv,
    free_port,
    is_running,
    parent_of,
    release,
    running_stack,
    wait_for,
)

markers = test_run_monitoring.markers


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """The stack with the deployment's preload."""
    with running_stack(tmp_path_factory.mktemp("code_server_home"), "etf_code_server") as stack:
        yield stack


def forkserver_of(stack: Stack) -> int:
    """The pid of the code server's forkserver (its child running forkserver.main)."""
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and parent_of(int(entry.name)) == stack.code_server.pid:
            cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ")
            if b"multiprocessing.forkserver import main" in cmdline:
                return int(entry.name)
    pytest.fail("the code server has no forkserver")


def tcp_inodes() -> set[str]:
    inodes = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        lines = Path(table).read_text(encoding="utf-8").splitlines()[1:]
        inodes |= {line.split()[9] for line in lines}
    return inodes


def threads(pid: int) -> int:
    return len(list(Path(f"/proc/{pid}/task").iterdir()))


def test_forkserver_is_fork_safe(stack: Stack) -> None:
    """What every run is forked from: no thread beyond the idle workers that loading numpy,
    pyarrow and scipy's BLAS starts in any process (no Python thread, no numba threading
    layer: orchestration/run_worker_preload.py refuses those) and no TCP connection
    (PostgreSQL, Redis, gRPC), with the preload loaded."""
    forkserver = forkserver_of(stack)
    libraries = subprocess.run(
        [sys.executable, "-c", "import os, numpy, pandas, pyarrow, scipy.linalg; "
         "print(len(os.listdir('/proc/self/task')))"],
        check=True, capture_output=True, text=True, env=stack.code_server.env)
    assert threads(forkserver) <= int(libraries.stdout)
    sockets = {os.readlink(fd)[len("socket:["):-1] for fd in Path(f"/proc/{forkserver}/fd")
               .iterdir() if os.readlink(fd).startswith("socket:[")}
    assert not sockets & tcp_inodes()
    maps = Path(f"/proc/{forkserver}/maps").read_text(encoding="utf-8")
    assert "libarrow" in maps and "llvmlite" in maps       # pyarrow and numba's LLVM loaded


def test_run_is_forked_from_the_preloaded_server(stack: Stack, markers: Path) -> None:
    run_id = stack.submit("account_job", "acct-forked", markers)
    worker = stack.wait_worker(run_id, markers)
    # The run's own new process, a child of the forkserver, itself a child of the code server.
    forkserver = forkserver_of(stack)
    assert parent_of(worker) == forkserver != worker
    assert parent_of(forkserver) == stack.code_server.pid
    # The location file never imports the preload: the worker started with it in memory.
    assert (markers / f"{run_id}.preloaded").read_text(encoding="utf-8") == "True"
    release(markers)
    stack.wait_status(run_id, {dg.DagsterRunStatus.SUCCESS}, 60)
    assert (markers / f"{run_id}.done").exists()
    assert not is_running(worker)


def test_termination_reaches_the_forked_worker(stack: Stack, markers: Path) -> None:
    """Terminating a run sets its termination event (a multiprocessing Event of the forkserver
    context) and the worker interrupts its op and exits."""
    run_id = stack.submit("account_job", "acct-terminated", markers)
    worker = stack.wait_worker(run_id, markers)
    assert stack.instance.run_launcher.terminate(run_id)
    stack.wait_status(run_id, {dg.DagsterRunStatus.CANCELED}, 30)
    wait_for("the terminated worker to exit", lambda: not is_running(worker), 20,
             stack.diagnostics)
    assert not (markers / f"{run_id}.done").exists()
    release(markers)


@pytest.mark.parametrize(("module", "error"), [
    ("etf_no_such_module", "ModuleNotFoundError: No module named 'etf_no_such_module'"),
    ("broken_preload", "exited while preloading"),
])
def test_failing_preload_stops_the_server(tmp_path: Path, module: str, error: str) -> None:
    """Python's forkserver skips a preload that raises ImportError silently (and dies on any
    other error): the code server exits with the module and why instead of serving."""
    env = {**os.environ, "DAGSTER_HOME": str(tmp_path),
           "PYTHONPATH": os.pathsep.join([str(Path(__file__).parent), str(ROOT)])}
    (tmp_path / "dagster.yaml").write_text("", encoding="utf-8")
    done = subprocess.run(code_server_argv(free_port(), module), cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 1, done.stderr
    assert "orchestration.code_server" in done.stderr and module in done.stderr
    assert error in done.stderr, done.stderr
    assert "Started Dagster code server" not in done.stderr + done.stdout


def test_a_run_outlives_its_forkserver(stack: Stack, markers: Path) -> None:
    """The forkserver killed (the OOM killer, a stray kill) while a run works: the server does
    not fail the run, whose worker still runs (a failed run would be retried beside it), and
    the run finishes. Last in this module: the next run would start a new forkserver."""
    run_id = stack.submit("account_job", "acct-orphaned", markers)
    worker = stack.wait_worker(run_id, markers)
    os.kill(forkserver_of(stack), signal.SIGKILL)
    time.sleep(3)                                   # the server looks every 0.5 s
    run = stack.instance.get_run_by_id(run_id)
    assert run is not None and run.status == dg.DagsterRunStatus.STARTED, stack.diagnostics()
    assert is_running(worker)
    release(markers)
    stack.wait_status(run_id, {dg.DagsterRunStatus.SUCCESS}, 60)
    assert (markers / f"{run_id}.done").exists()
