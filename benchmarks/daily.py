"""The daily path as the daemon runs it: a new session → orders in the ledger. Target ≤ 8 s.

Set-up (not timed): cn_etf_morphkyan_raw stored up to the session before the signal day and
researched through ``target_portfolio`` on a PostgreSQL-backed instance, a fresh ledger
migrated to head (as the deployment's migrate step leaves it before the first evening).

Timed, the way the daemon runs it in the deployment: our code server
(``python -m orchestration.code_server``, as deploy/compose.yaml and the Dockerfile run it) is
started for the evening's settings and is ready before the clock starts (not timed: in the
deployment it runs all day, and the daemon's workspace has loaded its snapshot). ``daily_job``
for the new session is launched through the instance's run launcher on that server (a run
worker forked from its preloaded forkserver), one tick of ``approved_signal_sensor``, and
``execution_job`` for the signal it requests, launched the same way; each run is waited for
until it has finished, then the orders are read back from the ledger. One server serves both
jobs (the deployment splits them over two locations, each with its own preloaded server).

The same path with fresh spawned processes (each job run by ``python -m benchmarks.daily
worker``: a new interpreter imports everything and builds the code location, as Dagster's
``dagster api grpc`` spawns its run workers) is timed too, on its own fresh ledger, so the two
compare. Each path starts from an empty Redis cache, so ``raw_bars`` fetches the new session
from the files and the execution reads those bars back from the cache. The target applies to
the deployment's path.

The baseline, in this process, is the same two jobs executed in process on a warm interpreter
against another fresh ledger: the ratio is the price of process isolation.

    python -m benchmarks.daily
    python -m benchmarks.daily --profile DIR   # where the children's time goes

With ``--profile`` each child runs under ``-X importtime`` and cProfile: ``DIR/<job>.imports``
(the import table, slowest first), ``DIR/<job>.prof`` (pstats) and ``DIR/<job>.modules`` (every
module the worker ended with). The wall times then include the profilers' overhead.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import yaml

from benchmarks.scratch import PG_SERVER, scratch_database, scratch_postgres_home
from orchestration.dagster_private import grpc_workspace
from orchestration.embedded_pg import free_port
from orchestration.instance import DAGSTER_EVENT_SETTINGS
from orchestration.runs import PARTITION_TAG

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
START, SIGNAL_DAY, PREVIOUS_DAY = "2021-01-04", "2023-12-29", "2023-12-28"
TARGET_SECONDS = 8.0
REDIS_URL = "redis://127.0.0.1:6379/4"  # this benchmark's own database, emptied at the start
# Signs this run's cache entries (the database is emptied anyway); the children get it by env.
CACHE_SECRET = os.environ.get("ETF_CACHE_SECRET") or secrets.token_hex(32)
QUIET = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}


def _environment(root: Path, dagster_home: Path, ledger: str, last: str) -> dict[str, str]:
    """Settings of the code location on the evening of ``last`` (its newest partition)."""
    config = yaml.safe_load((ROOT / "config/datasets/cn_etf_morphkyan_raw.yaml").read_text())
    config["history_end"] = last
    dataset = root / f"dataset_{last}.yaml"
    dataset.write_text(yaml.safe_dump(config), encoding="utf-8")
    return {"DAGSTER_HOME": str(dagster_home), "ETF_HOME": str(root / "etf_home"),
            "ETF_PARTITIONS_START": START,
            "ETF_POSTGRES_URL": f"postgresql+psycopg://{PG_SERVER}/{ledger}",
            "ETF_REDIS_URL": REDIS_URL, "ETF_CACHE_SECRET": CACHE_SECRET,
            "ETF_EXECUTION__AS_OF": SIGNAL_DAY, "ETF_MARKET_DATA__SOURCE": "files",
            "ETF_MARKET_DATA__DATASET": str(dataset),
            "ETF_MARKET_DATA__FILES_ROOT": str(SHARED / "cn_etf_morphkyan_raw"),
            "GX_ANALYTICS_ENABLED": "false",
            # The deployment's event settings (Dockerfile, deploy/), as the daemon's workers run.
            **DAGSTER_EVENT_SETTINGS}


def _worker(job: str, partition: str | None, run_config: str | None) -> int:
    """What the run worker does in its own process: load the code location and run."""
    import dagster as dg

    from orchestration.definitions import build_definitions
    from orchestration.settings import load_settings

    tags = {PARTITION_TAG: partition} if partition else {}
    config = {**QUIET, **(json.loads(run_config) if run_config else {})}
    with dg.DagsterInstance.get() as instance:
        result = build_definitions(load_settings()).resolve_job_def(job).execute_in_process(
            instance=instance, run_config=config, tags=tags)
    return 0 if result.success else 1


def _profiled_worker(folder: Path, job: str, partition: str | None, run_config: str | None
                     ) -> int:
    """:func:`_worker` under cProfile, with the modules it ended with."""
    import cProfile

    profile = cProfile.Profile()
    code = profile.runcall(_worker, job, partition, run_config)
    profile.dump_stats(folder / f"{job}.prof")
    (folder / f"{job}.modules").write_text("\n".join(sorted(sys.modules)) + "\n",
                                          encoding="utf-8")
    return int(code)


def import_table(stderr: str, top: int = 25) -> list[tuple[int, int, str]]:
    """The ``-X importtime`` lines of ``stderr`` as (self µs, cumulative µs, module), the
    slowest cumulative first (nested modules count in their importer's cumulative)."""
    rows = []
    for line in stderr.splitlines():
        if not line.startswith("import time:") or "imported package" in line:
            continue
        own, cumulative, name = (part.strip() for part in line[12:].split("|", 2))
        if own.isdigit():
            rows.append((int(own), int(cumulative), name))
    return sorted(rows, key=lambda r: -r[1])[:top]


def _in_child(env: dict[str, str], *args: str, profile: Path | None = None) -> float:
    command = [sys.executable, "-m", "benchmarks.daily", "worker", *args]
    if profile is not None:
        command = [sys.executable, "-X", "importtime", "-m", "benchmarks.daily",
                   "profiled-worker", str(profile), *args]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env={**os.environ, **env}, check=True,
                          stderr=subprocess.PIPE if profile else None, text=True)
    elapsed = time.perf_counter() - started
    if profile is not None:
        rows = import_table(done.stderr, top=60)
        total = sum(own for own, _, _ in import_table(done.stderr, top=10**6))
        (profile / f"{args[0]}.imports").write_text(
            f"# {total / 1e6:.2f} s importing, {elapsed:.1f} s wall\n"
            + "".join(f"{own / 1e3:9.1f} ms {cum / 1e3:9.1f} ms  {name}\n"
                      for own, cum, name in rows), encoding="utf-8")
    return elapsed


@contextmanager
def _code_server(env: dict[str, str], log: Path) -> Iterator[int]:
    """The deployment's code server for ``env``'s settings, answering its health check; its
    port. Started before the clock: in the deployment it runs all day."""
    port = free_port()
    argv = [sys.executable, "-m", "orchestration.code_server", "-h", "127.0.0.1", "-p",
            str(port), "-m", "orchestration.definitions", "-a", "defs"]
    health = [str(Path(sys.executable).parent / "dagster"), "api", "grpc-health-check", "-p",
              str(port)]
    with log.open("wb") as out:
        server = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=out,
                                  stderr=subprocess.STDOUT)
    try:
        started, deadline = time.perf_counter(), time.monotonic() + 600
        while subprocess.run(health, capture_output=True).returncode != 0:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"the code server did not come up:\n{log.read_text()}")
            time.sleep(0.5)
        print(f"code server ready in {time.perf_counter() - started:.1f} s (not timed)")
        yield port
    finally:
        server.terminate()
        server.wait(60)


def _launched(instance: Any, workspace: Any, job: str, run_config: Mapping[str, Any],
              tags: Mapping[str, str]) -> float:
    """Seconds from launching ``job`` on the code server until its run has finished."""
    import dagster as dg

    from orchestration.dagster_private import launch_on_grpc_server

    started = time.perf_counter()
    run_id = launch_on_grpc_server(instance, workspace, job, {**QUIET, **run_config}, tags)
    while not (run := instance.get_run_by_id(run_id)).is_finished:
        time.sleep(0.05)
    elapsed = time.perf_counter() - started
    assert run.status == dg.DagsterRunStatus.SUCCESS, f"{job} run {run_id}: {run.status}"
    return elapsed


def _tick(instance: Any, defs: Any, cursor: str | None) -> tuple[Any, float, str | None]:
    """One tick of ``approved_signal_sensor`` in this process from ``cursor`` (the previous
    tick's, as the daemon keeps it): its one run request, seconds, its new cursor."""
    import dagster as dg

    started = time.perf_counter()
    sensor = defs.resolve_sensor_def("approved_signal_sensor")
    with dg.build_sensor_context(
            instance=instance, cursor=cursor, definitions=defs,
            resources={"ledger": defs.resources["ledger"]}) as context:
        result = sensor(context)
    requests = result.run_requests
    assert len(requests) == 1, "no approved signal: see the approved_signal metadata"
    return requests[0], time.perf_counter() - started, result.cursor


def _orders(env: Mapping[str, str], signal_id: str | None) -> int:
    from trading.ledger import Ledger

    ledger = Ledger(env["ETF_POSTGRES_URL"])
    orders = ledger.orders(signal_id=signal_id)
    ledger.dispose()
    assert orders, "the execution run left no order in the ledger"
    return len(orders)


def main(profile: Path | None = None) -> int:
    import dagster as dg
    import redis

    from orchestration.definitions import build_definitions
    from orchestration.runs import rebuild_research, run_range, window_keys
    from orchestration.settings import load_settings
    from trading.ledger import Ledger

    # An earlier run's cache would serve raw_bars the new session's fetch; the daemon's evening
    # has only what the set-up put there (the execution then reads what raw_bars cached).
    redis.Redis.from_url(REDIS_URL).flushdb()
    with scratch_database("etf_bench_ledger") as first_ledger, \
            scratch_database("etf_bench_ledger") as second_ledger, \
            scratch_database("etf_bench_ledger") as third_ledger, \
            scratch_postgres_home() as scratch:
        os.environ.update(_environment(scratch.root, scratch.dagster_home, first_ledger,
                                       PREVIOUS_DAY))
        defs = build_definitions(load_settings())
        instance = dg.DagsterInstance.get()
        for ledger_name in (first_ledger, second_ledger, third_ledger):
            migrated = Ledger(f"postgresql+psycopg://{PG_SERVER}/{ledger_name}")
            migrated.migrate()
            migrated.dispose()
        print("set-up: market data, research and walk-forward up to "
              f"{PREVIOUS_DAY} (not timed)")
        assert run_range(defs, instance, START, PREVIOUS_DAY, log_level="WARNING").success
        assert all(r.success for r in rebuild_research(defs, instance))
        keys = window_keys(defs)

        # The next evening: the code location knows the new session.
        env = _environment(scratch.root, scratch.dagster_home, first_ledger, SIGNAL_DAY)
        os.environ.update(env)
        defs = build_definitions(load_settings())
        assert keys == window_keys(defs)
        # Fresh spawned processes, timed.
        started = time.perf_counter()
        daily = _in_child(env, "daily_job", SIGNAL_DAY, profile=profile)
        request, tick, cursor = _tick(instance, defs, None)
        execution = _in_child(env, "execution_job", "", json.dumps(request.run_config),
                              profile=profile)
        orders = _orders(env, request.run_key)
        wall = time.perf_counter() - started

        # The deployment's path, timed, on a third fresh ledger from an empty cache.
        redis.Redis.from_url(REDIS_URL).flushdb()
        served_env = {**env, "ETF_POSTGRES_URL": f"postgresql+psycopg://{PG_SERVER}/{third_ledger}"}
        os.environ.update(served_env)
        served_defs = build_definitions(load_settings())
        with _code_server(served_env, scratch.root / "code_server.log") as port, \
                grpc_workspace(instance, "127.0.0.1", port) as workspace:
            started = time.perf_counter()
            served_daily = _launched(instance, workspace, "daily_job", {},
                                     {PARTITION_TAG: SIGNAL_DAY})
            served_request, served_tick, _ = _tick(instance, served_defs, cursor)
            served_execution = _launched(instance, workspace, "execution_job",
                                         served_request.run_config, served_request.tags)
            served_orders = _orders(served_env, served_request.run_key)
            served = time.perf_counter() - started

        # Baseline: the same two jobs in this (warm) process on a second fresh ledger, from the
        # same empty cache.
        redis.Redis.from_url(REDIS_URL).flushdb()
        os.environ["ETF_POSTGRES_URL"] = f"postgresql+psycopg://{PG_SERVER}/{second_ledger}"
        warm = build_definitions(load_settings())
        base_started = time.perf_counter()
        assert warm.resolve_job_def("daily_job").execute_in_process(
            instance=instance, run_config=QUIET,
            tags={PARTITION_TAG: SIGNAL_DAY}).success
        assert warm.resolve_job_def("execution_job").execute_in_process(
            instance=instance, run_config={**QUIET, **request.run_config}).success
        baseline = time.perf_counter() - base_started
    print(f"daily path, the deployment's code server (runs forked from its preloaded "
          f"forkserver): {served:.1f} s wall — daily_job {served_daily:.1f} s, sensor tick "
          f"{served_tick:.2f} s, execution_job {served_execution:.1f} s; {served_orders} orders")
    print(f"daily path, fresh spawned processes: {wall:.1f} s wall — daily_job {daily:.1f} s, "
          f"sensor tick {tick:.2f} s, execution_job {execution:.1f} s; {orders} orders")
    print(f"baseline (same jobs in this warm process): {baseline:.1f} s; ratio "
          f"{served / baseline:.2f}x (deployment), {wall / baseline:.2f}x (fresh processes)")
    met = served <= TARGET_SECONDS
    print(f"target ≤ {TARGET_SECONDS:.0f} s (the deployment's path): "
          f"{'met' if met else 'MISSED'}")
    return 0 if met else 1


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "worker":
        sys.exit(_worker(sys.argv[2], sys.argv[3] or None,
                         sys.argv[4] if len(sys.argv) > 4 else None))
    if len(sys.argv) > 1 and sys.argv[1] == "profiled-worker":
        sys.exit(_profiled_worker(Path(sys.argv[2]), sys.argv[3], sys.argv[4] or None,
                                  sys.argv[5] if len(sys.argv) > 5 else None))
    if len(sys.argv) == 3 and sys.argv[1] == "--profile":
        folder = Path(sys.argv[2]).resolve()
        folder.mkdir(parents=True, exist_ok=True)
        sys.exit(main(folder))
    sys.exit(main())
