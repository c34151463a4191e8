"""Runs that die are failed and retried, and their account's queue moves on (issue 11).

The instance is deploy/dagster.prod.yaml itself on a scratch PostgreSQL database, with only the
storage, the compute-log directory and the intervals shortened (``test_config_is_the_prod_file``
pins exactly what differs). A real `dagster-daemon run` and a real code server as the deployment
runs it (``python -m orchestration.code_server``, Dagster's gRPC server whose run workers fork
from its forkserver; DefaultRunLauncher: every run worker is a process of the code server's)
serve tests/monitoring_location.py, whose jobs carry ``etf/account`` like ``execution_job`` and
hold until the test drops a release file.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import dagster as dg
import pytest
import yaml
from conftest import PG_SERVER, scratch_database
from dagster._core.events import DagsterEventType
from dagster._core.storage.tags import (
    MAX_RUNTIME_SECONDS_TAG,
    PARENT_RUN_ID_TAG,
    RETRY_NUMBER_TAG,
)
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from dagster._grpc.client import DagsterGrpcClient
from monitoring_location import ACCOUNT_TAG, HOLD_OP, POOL, RELEASE_FILE

ROOT = Path(__file__).resolve().parents[1]
PROD_INSTANCE = ROOT / "deploy" / "dagster.prod.yaml"
LOCATION_FILE = Path(__file__).with_name("monitoring_location.py")
LOCATION_NAME = "run_monitoring_test"
BIN = Path(sys.executable).parent
HOST = "127.0.0.1"

# The test's copy of the file: intervals of a second so a dead run is found in seconds, and a
# global maximum runtime the code-server case can wait out.
TEST_MAX_RUNTIME = 12
TEST_OVERRIDES = {
    ("run_coordinator", "config", "dequeue_interval_seconds"): 1,
    ("run_monitoring", "poll_interval_seconds"): 1,
    ("run_monitoring", "max_runtime_seconds"): TEST_MAX_RUNTIME,
    ("run_monitoring", "free_slots_after_run_end_seconds"): 2,
}
# The retry daemon (EventLogConsumerDaemon) polls every 5 s unless told otherwise.
DAEMON_ENV = {"DAGSTER_EVENT_LOG_CONSUMER_DAEMON_INTERVAL_SECONDS": "1"}

log = logging.getLogger(__name__)
T = TypeVar("T")


# -- instance config ----------------------------------------------------------------------------


def prod_config() -> dict[str, Any]:
    config = yaml.safe_load(PROD_INSTANCE.read_text(encoding="utf-8"))
    assert isinstance(config, dict)
    return config


def monitoring_instance_config(database: str, compute_logs: Path) -> dict[str, Any]:
    config = prod_config()
    config["storage"]["custom"]["config"]["postgres_url"] = \
        f"postgresql+psycopg2://{PG_SERVER}/{database}"
    config["compute_logs"]["config"]["base_dir"] = str(compute_logs)
    for path, value in TEST_OVERRIDES.items():
        section = config
        for key in path[:-1]:
            section = section[key]
        section[path[-1]] = value
    return config


def leaves(tree: Any, prefix: tuple[str, ...] = ()) -> dict[tuple[str, ...], Any]:
    if isinstance(tree, dict):
        out: dict[tuple[str, ...], Any] = {}
        for key, value in tree.items():
            out.update(leaves(value, (*prefix, str(key))))
        return out
    return {prefix: tree}


def test_config_is_the_prod_file(tmp_path: Path) -> None:
    """Only storage, the log directory and the intervals differ from deploy/dagster.prod.yaml:
    coordinator, launcher, run limits, monitoring switches and retries are the file's."""
    prod = leaves(prod_config())
    copy = leaves(monitoring_instance_config("scratch", tmp_path))
    changed = {k for k in prod.keys() | copy.keys() if prod.get(k) != copy.get(k)}
    assert changed == {("storage", "custom", "config", "postgres_url", "env"),
                       ("storage", "custom", "config", "postgres_url"),
                       ("compute_logs", "config", "base_dir"), *TEST_OVERRIDES}
    # The prod values the shortened ones stand for must be set in the file to begin with.
    for path in TEST_OVERRIDES:
        assert path in prod, f"{'.'.join(path)} is not set in {PROD_INSTANCE.name}"
    assert prod[("run_launcher", "class")] == "DefaultRunLauncher"
    assert prod[("run_retries", "enabled")] is True
    assert prod[("run_retries", "max_retries")] >= 1


# -- processes ------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tail(path: Path, lines: int = 40) -> str:
    if not path.exists():
        return f"({path.name}: nothing written)"
    return f"--- {path.name} ---\n" + "\n".join(
        path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])


@dataclass
class Service:
    """A process started in its own process group (session): killing the group is what a
    container runtime or a supervisor does to the process and every child it left."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    groups: list[int] = field(default_factory=list)

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            self.process = subprocess.Popen(self.argv, cwd=ROOT, env=self.env, stdout=out,
                                            stderr=subprocess.STDOUT, start_new_session=True)
        self.groups.append(self.process.pid)

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def wait_exit(self) -> None:
        assert self.process is not None
        self.process.wait(timeout=10)

    def kill_all(self) -> None:
        """Teardown: every process group this service ever had (stray workers included)."""
        for group in self.groups:
            kill_group(group)
        if self.process is not None and self.process.poll() is None:
            self.process.wait(timeout=10)


def kill_group(pgid: int) -> None:
    with contextlib.suppress(ProcessLookupError):   # the whole group already exited
        os.killpg(pgid, signal.SIGKILL)


def proc_stat(pid: int) -> tuple[str, int] | None:
    """(state, parent pid) from /proc, or None once the process is gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()
    return fields[0], int(fields[1])


def parent_of(pid: int) -> int | None:
    stat = proc_stat(pid)
    return None if stat is None else stat[1]


def is_running(pid: int) -> bool:
    stat = proc_stat(pid)
    return stat is not None and stat[0] != "Z"


def wait_for(what: str, probe: Callable[[], T | None], timeout: float,
             diagnostics: Callable[[], str] = lambda: "", interval: float = 0.2) -> T:
    """Poll ``probe`` until it returns something truthy; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = probe()
        if value:
            return value
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}\n{diagnostics()}")
        time.sleep(interval)


# -- the stack ------------------------------------------------------------------------------------


def code_server_argv(port: int, *preload: str) -> list[str]:
    """The deployment's code server (the Dockerfile's CMD) serving the test location."""
    return [sys.executable, "-m", "orchestration.code_server",
            *(a for module in preload for a in ("--preload", module)),
            "-h", HOST, "-p", str(port), "-f", str(LOCATION_FILE), "-d", str(ROOT)]


def worker_server(worker: int) -> int | None:
    """The code server a run worker belongs to: its parent is the server's forkserver."""
    forkserver = parent_of(worker)
    return None if forkserver is None else parent_of(forkserver)


class Stack:
    """Instance, daemon and code server of one test module."""

    def __init__(self, home: Path, port: int, preload: tuple[str, ...] = ()) -> None:
        self.home, self.port = home, port
        self.workspace = home / "workspace.yaml"
        self.workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
            "host": HOST, "port": port, "location_name": LOCATION_NAME}}]}), encoding="utf-8")
        env = {**os.environ, "DAGSTER_HOME": str(home), **DAEMON_ENV}
        self.code_server = Service(code_server_argv(port, *preload), env,
                                   home / "code_server.log")
        self.daemon = Service([str(BIN / "dagster-daemon"), "run", "-w", str(self.workspace)],
                              env, home / "daemon.log")
        self.instance = dg.DagsterInstance.from_config(str(home))

    def diagnostics(self) -> str:
        runs = [f"{r.run_id[:8]} {r.status.value} {dict(r.tags)}"
                for r in self.instance.get_runs(limit=20)]
        return "\n".join(["runs:", *runs, tail(self.daemon.log_path),
                          tail(self.code_server.log_path)])

    def start_code_server(self) -> None:
        self.code_server.start()
        wait_for("the code server to answer", self.code_server_answers, 120,
                 lambda: tail(self.code_server.log_path))

    def code_server_answers(self) -> bool:
        assert self.code_server.process is not None
        assert self.code_server.process.poll() is None, tail(self.code_server.log_path)
        try:
            DagsterGrpcClient(port=self.port, host=HOST).ping("up")
        except Exception:
            return False
        return True

    def submit(self, job: str, account: str, markers: Path, **tags: str) -> str:
        """A run of ``job`` created from the code server's snapshot and submitted to the
        instance's run coordinator (the queue), as the UI or a sensor would."""
        run_config = {"ops": {HOLD_OP[job]: {"config": {"markers": str(markers)}}}}
        with WorkspaceProcessContext(self.instance,
                                     WorkspaceFileTarget(paths=[str(self.workspace)])) as context:
            request = context.create_request_context()
            location = request.get_code_location(LOCATION_NAME)
            (repository,) = location.get_repositories().values()
            remote_job = repository.get_full_job(job)
            plan = location.get_execution_plan(remote_job, run_config, step_keys_to_execute=None,
                                               known_state=None, instance=self.instance)
            run = self.instance.create_run(
                job_name=job, run_id=None, run_config=run_config, status=None,
                tags={**remote_job.tags, ACCOUNT_TAG: account, **tags},
                root_run_id=None, parent_run_id=None,
                step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
                execution_plan_snapshot=plan.execution_plan_snapshot,
                job_snapshot=remote_job.job_snapshot,
                parent_job_snapshot=remote_job.parent_job_snapshot,
                asset_selection=None, asset_check_selection=None,
                resolved_op_selection=None, op_selection=None,
                remote_job_origin=remote_job.get_remote_origin(),
                job_code_origin=remote_job.get_python_origin(),
                asset_graph=repository.asset_graph)
            self.instance.submit_run(run.run_id, request)
        return run.run_id

    def run(self, run_id: str) -> dg.DagsterRun:
        run = self.instance.get_run_by_id(run_id)
        assert run is not None
        return run

    def wait_status(self, run_id: str, statuses: set[dg.DagsterRunStatus], timeout: float
                    ) -> dg.DagsterRun:
        return wait_for(f"run {run_id[:8]} to reach {sorted(s.value for s in statuses)}",
                        lambda: (run if (run := self.run(run_id)).status in statuses else None),
                        timeout, self.diagnostics)

    def wait_worker(self, run_id: str, markers: Path, timeout: float = 60) -> int:
        """The pid of the run's worker once its op is running (from the op's marker), checked
        against the worker's own "Started process for run (pid: …)" engine event."""
        marker = markers / f"{run_id}.started"
        pid = int(wait_for(f"the worker of {run_id[:8]} to start", lambda: marker.exists()
                           and marker.read_text(encoding="utf-8"), timeout, self.diagnostics))
        started = [m for m in self.messages(run_id, DagsterEventType.ENGINE_EVENT)
                   if m.startswith("Started process for run")]
        assert started == [f"Started process for run (pid: {pid})."]
        assert self.run(run_id).status == dg.DagsterRunStatus.STARTED
        return pid

    def messages(self, run_id: str, event_type: DagsterEventType) -> list[str]:
        return [e.message for e in self.instance.all_logs(run_id, of_type=event_type)]

    def retry_of(self, run_id: str, timeout: float) -> dg.DagsterRun:
        """The automatic retry run_retries launched for a failed run."""
        def probe() -> dg.DagsterRun | None:
            children = self.instance.get_runs(dg.RunsFilter(tags={PARENT_RUN_ID_TAG: run_id}))
            return children[0] if children else None

        retry = wait_for(f"a retry of {run_id[:8]}", probe, timeout, self.diagnostics)
        assert retry.tags.get(RETRY_NUMBER_TAG) == "1"
        return retry

    def pool_holders(self) -> set[str]:
        """Runs holding a slot of the test op's pool."""
        return self.instance.event_log_storage.get_concurrency_info(POOL).active_run_ids

    def wait_slot_freed(self, run_id: str) -> None:
        """free_slots_after_run_end_seconds: the daemon frees the slot a dead run held."""
        wait_for(f"the pool slot of {run_id[:8]} to be freed",
                 lambda: run_id not in self.pool_holders(), 30, self.diagnostics)

    def still_queued(self, run_id: str, seconds: float) -> None:
        """The run stays QUEUED for several dequeue passes (the account's slot is taken)."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            assert self.run(run_id).status == dg.DagsterRunStatus.QUEUED, self.diagnostics()
            time.sleep(0.3)

    def timeline(self, label: str, t0: float, run_ids: dict[str, str]) -> None:
        """Log when each run was created, started and ended, in seconds after ``t0``."""
        for name, run_id in run_ids.items():
            record = self.instance.get_run_record_by_id(run_id)
            assert record is not None
            times = {"created": record.create_timestamp.timestamp(),
                     "started": record.start_time, "ended": record.end_time}
            log.info("%s: %s %s %s", label, name, record.dagster_run.status.value, " ".join(
                f"{k} {v - t0:+.1f}s" for k, v in times.items() if v is not None))

    def close(self) -> None:
        self.daemon.kill_all()
        self.code_server.kill_all()
        self.instance.dispose()


@contextlib.contextmanager
def running_stack(home: Path, database_prefix: str, preload: tuple[str, ...] = ()
                  ) -> Iterator[Stack]:
    """Instance, code server (``preload``: its run workers', the deployment's by default) and
    daemon on a scratch database."""
    with scratch_database(database_prefix) as database:
        config = monitoring_instance_config(database, home / "compute_logs")
        (home / "dagster.yaml").write_text(yaml.safe_dump(config), encoding="utf-8")
        stack = Stack(home, free_port(), preload)
        try:
            stack.start_code_server()
            stack.daemon.start()
            yield stack
        finally:
            stack.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    # Run workers preloaded with Dagster only: the dead-code-server case restarts the server
    # within the shortened maximum runtime, which the deployment's preload (tens of seconds
    # on a loaded machine) would outlast. That preload: tests/test_code_server.py.
    with running_stack(tmp_path_factory.mktemp("monitoring_home"), "etf_monitoring",
                       ("dagster",)) as stack:
        yield stack


@pytest.fixture
def markers(tmp_path: Path) -> Path:
    path = tmp_path / "markers"
    path.mkdir()
    return path


def release(markers: Path) -> None:
    (markers / RELEASE_FILE).write_text("", encoding="utf-8")


def assert_one_at_a_time(stack: Stack, run_ids: list[str]) -> None:
    """The etf/account limit of the file held: no two of these runs were ever running at once."""
    records = stack.instance.get_run_records(dg.RunsFilter(run_ids=run_ids))
    spans = sorted((r.start_time, r.end_time) for r in records)
    assert all(s is not None and e is not None for s, e in spans), spans
    for (_, end), (start, _) in itertools.pairwise(spans):
        assert end <= start, f"runs of one account overlapped: {spans}"


# -- the cases ------------------------------------------------------------------------------------


def test_killed_worker_is_failed_retried_and_the_queue_moves_on(stack: Stack,
                                                                 markers: Path) -> None:
    account = "acct-dead-worker"
    first = stack.submit("account_job", account, markers)
    worker = stack.wait_worker(first, markers)
    # DefaultRunLauncher: the worker is the code server's (forked by its forkserver).
    assert worker_server(worker) == stack.code_server.pid
    # Only the file's etf/account limit holds this one back (account_job uses no pool).
    second = stack.submit("account_job", account, markers)
    stack.still_queued(second, 3)

    killed_at = time.time()
    os.kill(worker, signal.SIGKILL)
    stack.wait_status(first, {dg.DagsterRunStatus.FAILURE}, 30)
    # The code server noticed its child's exit and failed the run (not the 4 h maximum runtime).
    assert any(first in m and "SIGKILL" in m
               for m in stack.messages(first, DagsterEventType.ENGINE_EVENT)), stack.diagnostics()

    retry = stack.retry_of(first, 30)
    assert retry.tags[ACCOUNT_TAG] == account
    release(markers)
    for run_id in (retry.run_id, second):
        stack.wait_status(run_id, {dg.DagsterRunStatus.SUCCESS}, 60)
        assert (markers / f"{run_id}.done").exists()
    assert not (markers / f"{first}.done").exists()
    assert int((markers / f"{retry.run_id}.started").read_text()) != worker
    assert_one_at_a_time(stack, [first, retry.run_id, second])
    stack.timeline("dead worker (t=0: SIGKILL)", killed_at,
                   {"first": first, "retry": retry.run_id, "second": second})


def test_killed_code_server_run_is_failed_by_max_runtime_and_retried(stack: Stack,
                                                                      markers: Path) -> None:
    account = "acct-dead-server"
    first = stack.submit("pooled_account_job", account, markers)
    worker = stack.wait_worker(first, markers)
    server = stack.code_server.pid
    assert worker_server(worker) == server
    assert stack.pool_holders() == {first}
    second = stack.submit("pooled_account_job", account, markers)
    stack.still_queued(second, 2)

    killed_at = time.time()
    os.kill(server, signal.SIGKILL)
    stack.code_server.wait_exit()
    # The worker outlives its code server (whose forkserver exits with it): orphaned
    # (re-parented), still in its op. Nothing reports the run: watch it for two
    # dequeue/monitoring passes.
    wait_for("the worker to be re-parented",
             lambda: is_running(worker) and worker_server(worker) != server, 10)
    time.sleep(2)
    assert is_running(worker)
    assert stack.run(first).status == dg.DagsterRunStatus.STARTED

    # The supervisor (docker restarting the `code` container, systemd the service) takes the
    # rest of the service down with it, then starts a new code server on the same port.
    kill_group(server)
    wait_for("the orphaned worker to die", lambda: not is_running(worker), 10)
    stack.start_code_server()
    log.info("dead code server: new server up %.1f s after SIGKILL", time.time() - killed_at)
    # Nobody knows the run any more: it stays STARTED and the account's queue is blocked ...
    assert stack.run(first).status == dg.DagsterRunStatus.STARTED
    assert stack.run(second).status == dg.DagsterRunStatus.QUEUED

    # ... until the daemon's maximum runtime (the file's global one, shortened) fails it.
    stack.wait_status(first, {dg.DagsterRunStatus.FAILURE}, TEST_MAX_RUNTIME + 20)
    record = stack.instance.get_run_record_by_id(first)
    assert record is not None and record.start_time is not None and record.end_time is not None
    assert TEST_MAX_RUNTIME <= record.end_time - record.start_time < TEST_MAX_RUNTIME + 10
    assert any(f"maximum runtime of {TEST_MAX_RUNTIME} seconds" in m
               for m in stack.messages(first, DagsterEventType.RUN_CANCELING)), stack.diagnostics()
    # The killed worker never gave its pool slot back. Until the daemon frees it the queue
    # holds back every run whose first step is in that pool (Dagster 1.13's default
    # block_op_concurrency_limited_runs), whatever its account.
    assert first in stack.pool_holders()
    stack.wait_slot_freed(first)

    retry = stack.retry_of(first, 30)
    release(markers)
    for run_id in (retry.run_id, second):
        stack.wait_status(run_id, {dg.DagsterRunStatus.SUCCESS}, 60)
    assert_one_at_a_time(stack, [first, retry.run_id, second])
    stack.timeline("dead code server (t=0: SIGKILL)", killed_at,
                   {"first": first, "retry": retry.run_id, "second": second})


def test_run_over_its_max_runtime_tag_is_terminated_and_retried(stack: Stack,
                                                                markers: Path) -> None:
    """A job's own ``dagster/max_runtime`` tag (shorter than the global one) ends a hung run
    whose worker is alive: the daemon terminates it through the code server."""
    limit = 4
    first = stack.submit("account_job", "acct-max-runtime", markers,
                         **{MAX_RUNTIME_SECONDS_TAG: str(limit)})
    worker = stack.wait_worker(first, markers)
    # The daemon marks it CANCELING, asks the code server to terminate the worker and writes
    # RUN_FAILURE; the interrupted worker may write RUN_CANCELED just before or after, so the
    # status ends FAILURE or CANCELED. run_retries retries the first, not the second (seen
    # here under load): either way the account's queue must move on, and for execution_job a
    # canceled run's execution is recovered by stalled_execution_sensor.
    ended = stack.wait_status(first, {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED},
                              limit + 20)
    record = stack.instance.get_run_record_by_id(first)
    assert record is not None and record.start_time is not None and record.end_time is not None
    log.info("max runtime: ended %s", ended.status.value)
    assert limit <= record.end_time - record.start_time < limit + 10
    assert any(f"maximum runtime of {limit} seconds" in m
               for m in stack.messages(first, DagsterEventType.RUN_CANCELING))
    # Terminated, not just relabelled: the worker process is gone.
    wait_for("the terminated worker to exit", lambda: not is_running(worker), 20,
             stack.diagnostics)
    assert any(m == f"Exceeded maximum runtime of {limit} seconds."
               for m in stack.messages(first, DagsterEventType.RUN_FAILURE))
    retry = wait_for(f"the retry decision on {first[:8]}", lambda: _retry_decision(stack, first),
                     30, stack.diagnostics)
    release(markers)
    if isinstance(retry, dg.DagsterRun):
        assert retry.tags[MAX_RUNTIME_SECONDS_TAG] == str(limit)   # the retry keeps the limit
        stack.wait_status(retry.run_id, {dg.DagsterRunStatus.SUCCESS}, 60)
    else:
        assert stack.run(first).status is dg.DagsterRunStatus.CANCELED
    following = stack.submit("account_job", "acct-max-runtime", markers)
    stack.wait_status(following, {dg.DagsterRunStatus.SUCCESS}, 60)
    stack.timeline("max runtime (t=0: first run started)", record.start_time,
                   {"first": first, "following": following})


def _retry_decision(stack: Stack, run_id: str) -> dg.DagsterRun | str | None:
    """The retry run_retries launched, "not retried" once the run says it will not be, or
    None while undecided."""
    children = stack.instance.get_runs(dg.RunsFilter(tags={PARENT_RUN_ID_TAG: run_id}))
    if children:
        return children[0]
    return "not retried" if stack.run(run_id).tags.get("dagster/will_retry") == "false" \
        else None

