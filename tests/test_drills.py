"""Drills for the bad day, on the real PostgreSQL server and the real market data.

1. Backup and restore. The ledger of a real execution (approved signal → sensor → execution_job
   → fills at the next open; the paper venue's book, the audit log) and the Dagster storage
   holding its runs are dumped with pg_dump, destroyed (DROP DATABASE) and restored with
   pg_restore into fresh databases of the same names: every row, sequence, owner, grant and
   trigger, every run with its status and events are as before, the ledger still refuses to
   rewrite its history, and replaying the execution sends nothing twice.
2. Every Alembic migration of the ledger, down to base and back up one revision at a time, on a
   copy of that ledger: each step succeeds, the rows of every table a step keeps are unchanged,
   and the rows put back after the downgrades come up to head unchanged, with the owners and
   grants of head.
3. Rolling the code location back to the previous image tag: only the tag changes in the Helm
   values and the instance the chart renders (storage, launcher, limits) is the same, so the
   runs stay where they are; runs stored through one code version are all there after the
   instance is re-opened and the location reloaded with the previous version, which then adds
   its own. `helm` itself (the chart's rendering) is checked only where it is installed.

The commands are those of deploy/helm/README.md ("Backup, restore and rollback drills").
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import psycopg
import pytest
import test_deploy as deploy
import test_execution_pipeline as pipeline
import yaml
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from conftest import PG_SERVER, ExecutionMarket, drop_database, new_database, scratch_database
from dagster._core.workspace.context import WorkspaceProcessContext
from dagster._core.workspace.load_target import WorkspaceFileTarget
from psycopg import sql

from orchestration.dagster_storage import postgres_storage
from orchestration.definitions import build_definitions
from trading.ledger import MIGRATIONS_DIR, VERSION_TABLE, Ledger, migrate

pytestmark = pytest.mark.timeout(1800)

BIN = Path(sys.executable).parent
HOST = PG_SERVER.rpartition("@")[2].partition(":")[0]
WRITER = "etf_ledger_writer"
# Parents before children: the order rows are put back in after a downgrade dropped them.
LEDGER_TABLES = ("accounts", "signals", "executions", "orders", "fills", "positions", "cash",
                 "valuations", "audit_log", "paper_accounts", "paper_positions", "paper_orders",
                 "paper_fills", "order_sends", "signal_parts", "fill_attributions",
                 "strategy_crossings", "strategy_positions")


def dsn(database: str) -> str:
    return f"postgresql://{PG_SERVER}/{database}"


def sa_url(database: str) -> str:
    return f"postgresql+psycopg://{PG_SERVER}/{database}"


# -- pg_dump / pg_restore -------------------------------------------------------------------


def pg_tool(*argv: str) -> None:
    tool = shutil.which(argv[0])
    if tool is None:
        pytest.fail(f"{argv[0]} is not installed (PostgreSQL client tools)")
    done = subprocess.run([tool, *argv[1:]], capture_output=True, text=True, timeout=600,
                          check=False)
    assert done.returncode == 0, f"{' '.join(argv)}\n{done.stderr}"


def backup(database: str, path: Path) -> None:
    pg_tool("pg_dump", "--format=custom", f"--file={path}", f"--dbname={dsn(database)}")


def restore(path: Path, database: str) -> None:
    """Into a fresh, empty database; all or nothing."""
    pg_tool("pg_restore", "--exit-on-error", "--single-transaction", f"--dbname={dsn(database)}",
            str(path))


def create_database(name: str) -> None:
    with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))


def database_exists(name: str) -> bool:
    with psycopg.connect(dsn("postgres"), autocommit=True) as conn:
        return conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                            (name,)).fetchone() is not None


def copy_database(source: str, target: str, work: Path) -> None:
    dump = work / f"{source}.dump"
    backup(source, dump)
    restore(dump, target)
    dump.unlink()


# -- what a database holds ------------------------------------------------------------------

# Row digests are order-independent (sorted per table) and the whole row, every column.
ROWS = "SELECT count(*), md5(coalesce(string_agg(md5(t::text), '' ORDER BY md5(t::text)), '')) "
SCHEMA_QUERIES = {
    "relations": "SELECT c.relname, c.relkind, pg_get_userbyid(c.relowner), "
                 "coalesce(c.relacl::text, '') FROM pg_class c "
                 "WHERE c.relnamespace = 'public'::regnamespace ORDER BY 1, 2",
    "triggers": "SELECT tgrelid::regclass::text, tgname, tgenabled FROM pg_trigger "
                "WHERE NOT tgisinternal ORDER BY 1, 2",
    "functions": "SELECT p.oid::regprocedure::text, pg_get_userbyid(p.proowner), p.prosecdef, "
                 "coalesce(p.proconfig::text, ''), coalesce(p.proacl::text, ''), md5(p.prosrc) "
                 "FROM pg_proc p WHERE p.pronamespace = 'public'::regnamespace ORDER BY 1",
}


def public_tables(conn: psycopg.Connection[Any]) -> list[str]:
    return [r[0] for r in conn.execute(
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' ORDER BY 1")]


def rows_digest(database: str) -> dict[str, tuple[int, str]]:
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        return {table: conn.execute(sql.SQL(ROWS + "FROM {} t").format(
                    sql.Identifier(table))).fetchone()  # type: ignore[misc]
                for table in public_tables(conn)}


def schema(database: str) -> dict[str, list[tuple[Any, ...]]]:
    """Owners, grants, triggers and functions: the ledger's guarantees live there."""
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        return {name: conn.execute(query).fetchall() for name, query in SCHEMA_QUERIES.items()}


def sequences(database: str) -> list[tuple[Any, ...]]:
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        return conn.execute("SELECT sequencename, last_value FROM pg_sequences "
                            "WHERE schemaname = 'public' ORDER BY 1").fetchall()


def fingerprint(database: str) -> dict[str, Any]:
    return {"rows": rows_digest(database), "sequences": sequences(database), **schema(database)}


# -- a real execution -----------------------------------------------------------------------


@dataclass
class Executed:
    """A ledger and a Dagster storage (a copy of the execution market's, so the gate finds the
    checks of the signal day) after a signal was approved, executed and filled."""

    market: ExecutionMarket
    dagster_home: Path
    dagster_db: str
    ledger_db: str
    account: str
    signal_id: str
    request: dg.RunRequest
    cursor: str | None
    execution_run_id: str

    @property
    def ledger_url(self) -> str:
        return sa_url(self.ledger_db)

    def instance(self) -> dg.DagsterInstance:
        return dg.DagsterInstance.from_config(str(self.dagster_home))

    def next_day(self) -> dg.Definitions:
        return build_definitions(self.market.settings(self.ledger_url,
                                                      as_of=self.market.fill_day))


def dagster_database_of(market: ExecutionMarket) -> str:
    config = yaml.safe_load((market.home / "dagster" / "dagster.yaml").read_text())
    return str(config["storage"]["custom"]["config"]["postgres_url"]).rsplit("/", 1)[1]


def instance_home(path: Path, database: str, **settings: Any) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    (path / "dagster.yaml").write_text(yaml.safe_dump({
        "storage": postgres_storage(f"postgresql+psycopg2://{PG_SERVER}/{database}"),
        "telemetry": {"enabled": False}, **settings}), encoding="utf-8")
    return path


def execute_signal(market: ExecutionMarket, instance: dg.DagsterInstance, ledger_url: str
                   ) -> tuple[str, dg.RunRequest, str | None, str]:
    """approved_signal → approved_signal_sensor → execution_job → positions_report the next
    day (the paper venue fills at the open): (signal id, run request, cursor, run id)."""
    defs = build_definitions(market.settings(ledger_url))
    start = pipeline.evaluate_sensor(defs, instance, None).cursor
    approved = pipeline.materialize(defs, instance, "approved_signal")
    assert approved.success
    meta = pipeline.materialization(approved, "approved_signal")
    assert meta["status"] == "approved", meta["reasons"]
    found = pipeline.evaluate_sensor(defs, instance, start)
    (request,) = found.run_requests
    run = pipeline.run_request(defs, instance, request)
    assert run.success and pipeline.step_metadata(run)["status"] == "completed"
    next_day = build_definitions(market.settings(ledger_url, as_of=market.fill_day))
    assert pipeline.materialize(next_day, instance, "positions_report").success
    return str(meta["signal_id"]), request, found.cursor, run.run_id


@pytest.fixture(scope="module")
def executed(execution_market: ExecutionMarket, tmp_path_factory: pytest.TempPathFactory
             ) -> Iterator[Executed]:
    work = tmp_path_factory.mktemp("drills")
    dagster_db, ledger_db = new_database("etf_drill_dagster"), new_database("etf_drill_ledger")
    try:
        copy_database(dagster_database_of(execution_market), dagster_db, work)
        home = instance_home(work / "dagster", dagster_db)
        with dg.DagsterInstance.from_config(str(home)) as instance:
            signal_id, request, cursor, run_id = execute_signal(execution_market, instance,
                                                                sa_url(ledger_db))
        settings = execution_market.settings(sa_url(ledger_db))
        yield Executed(execution_market, home, dagster_db, ledger_db,
                       settings.execution.account_id, signal_id, request, cursor, run_id)
    finally:
        drop_database(dagster_db)
        drop_database(ledger_db)


def ledger_books(executed: Executed) -> dict[str, Any]:
    ledger = Ledger(executed.ledger_url)
    try:
        return {"orders": ledger.orders(account_id=executed.account),
                "fills": ledger.fills(executed.account),
                "positions": ledger.positions(executed.account),
                "cash": ledger.cash(executed.account),
                "execution": ledger.execution(executed.signal_id),
                "signal": ledger.signal(executed.signal_id),
                "audit": ledger.audit_log()}
    finally:
        ledger.dispose()


def dagster_runs(instance: dg.DagsterInstance) -> dict[str, Any]:
    runs = instance.get_runs()
    latest = {key: instance.get_latest_materialization_event(dg.AssetKey(key))
              for key in ("approved_signal", "positions_report")}
    return {"runs": {r.run_id: (r.job_name, r.status, dict(r.tags)) for r in runs},
            "latest": {k: (e.run_id, e.timestamp) if e else None for k, e in latest.items()}}


# -- 2. every migration, down and up, with data (on a copy of the executed ledger) -----------


def alembic_config(database: str) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    config.set_main_option("sqlalchemy.url", sa_url(database))
    return config


def revision_chain() -> list[str]:
    """Base to head, one revision at a time (the ledger's history has no branches)."""
    script = ScriptDirectory.from_config(alembic_config("unused"))
    assert len(script.get_heads()) == 1
    return [r.revision for r in reversed(list(script.walk_revisions()))]


def current_revision(database: str) -> str | None:
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        row = conn.execute(sql.SQL("SELECT version_num FROM {}").format(
            sql.Identifier(VERSION_TABLE))).fetchone()
    return None if row is None else str(row[0])


def contents(database: str) -> dict[str, str]:
    """Every row of every ledger table present, as one canonical JSON text per table."""
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        present = set(public_tables(conn))
        return {table: str(conn.execute(sql.SQL(
                    "SELECT coalesce(jsonb_agg(to_jsonb(t) ORDER BY to_jsonb(t)::text), "
                    "'[]'::jsonb)::text FROM {} t").format(sql.Identifier(table))).fetchone()[0])  # type: ignore[index]
                for table in LEDGER_TABLES if table in present}


def table_rows(table: str, like: str | None = None) -> list[str]:
    """The rows of a table's contents, each as canonical JSON, sorted; with ``like``: only the
    columns ``like``'s rows have (a downgrade that drops a column keeps the rest of each row)."""
    found = json.loads(table)
    shape = json.loads(like) if like is not None else found
    if shape:
        columns = set(shape[0])
        found = [{k: v for k, v in row.items() if k in columns} for row in found]
    return sorted(json.dumps(row, sort_keys=True) for row in found)


def put_back(database: str, rows: dict[str, str]) -> None:
    """Rows saved before a downgrade, into the tables an upgrade re-created (what an operator
    does from a data-only dump); sequences and identities continue after the highest id."""
    with psycopg.connect(dsn(database)) as conn:
        for table in (t for t in LEDGER_TABLES if t in rows):
            name = sql.Identifier(table)
            conn.execute(sql.SQL("INSERT INTO {} OVERRIDING SYSTEM VALUE SELECT * FROM "
                                 "jsonb_populate_recordset(NULL::{}, %s::jsonb)").format(
                                     name, name), (rows[table],))
            for (column,) in conn.execute(
                    "SELECT attname FROM pg_attribute WHERE attrelid = %s::regclass "
                    "AND attnum > 0 AND NOT attisdropped AND pg_get_serial_sequence(%s, attname)"
                    " IS NOT NULL", (table, table)).fetchall():
                conn.execute(sql.SQL(
                    "SELECT setval(pg_get_serial_sequence(%s, %s), max({}), true) FROM {} "
                    "HAVING max({}) IS NOT NULL").format(
                        sql.Identifier(column), name, sql.Identifier(column)), (table, column))


def writer_may_insert_orders(database: str) -> bool:
    with psycopg.connect(dsn(database), autocommit=True) as conn:
        return bool(conn.execute("SELECT has_table_privilege(%s, 'orders', 'INSERT')",
                                 (WRITER,)).fetchone()[0])  # type: ignore[index]


def test_every_migration_down_to_base_and_up_again_with_data(executed: Executed,
                                                             tmp_path: Path) -> None:
    chain = revision_chain()
    assert chain[0] == "0001_ledger" and len(chain) >= 3, chain
    with scratch_database("etf_drill_migrations") as database:
        copy_database(executed.ledger_db, database, tmp_path)
        assert current_revision(database) == chain[-1]
        original, head_schema = contents(database), schema(database)
        assert all(original[t] != "[]" for t in ("orders", "fills", "positions", "audit_log",
                                                 "paper_orders", "paper_fills")), original
        assert writer_may_insert_orders(database)
        config = alembic_config(database)

        # Down, one revision at a time: what a step keeps is unchanged, what it drops is gone.
        for target in [*reversed(chain[:-1]), None]:
            kept = contents(database)
            command.downgrade(config, target or "base")
            assert current_revision(database) == target
            now = contents(database)
            assert set(now) <= set(kept)
            assert {t: table_rows(now[t]) for t in now} == {
                t: table_rows(original[t], like=now[t]) for t in now}
            if target == "0002_paper_broker":
                # Below 0003: no decision functions, the application's grants are revoked.
                assert not writer_may_insert_orders(database)
        assert contents(database) == {}

        # Up, one revision at a time, putting back the rows each downgrade dropped.
        for target in chain:
            before = contents(database)
            command.upgrade(config, target)
            assert current_revision(database) == target
            now = contents(database)
            # A column an upgrade adds is new in every row; the rest of each row is unchanged.
            assert {t: table_rows(now[t], like=before[t]) for t in before} == {
                t: table_rows(before[t]) for t in before}, f"upgrade to {target} changed rows"
            put_back(database, {t: original[t] for t in now if t not in before})
            now = contents(database)
            assert {t: table_rows(now[t]) for t in now} == {
                t: table_rows(original[t], like=now[t]) for t in now}

        assert contents(database) == original
        assert schema(database) == head_schema
        assert writer_may_insert_orders(database)
        operational_after_migrations(database, original)


def operational_after_migrations(database: str, original: dict[str, str]) -> None:
    """The application's own start-up (migrate: nothing to do) and a write that takes the
    next audit id; the audit log still refuses to be rewritten."""
    url = sa_url(database)
    migrate(url)
    highest = max(row["id"] for row in json.loads(original["audit_log"]))
    ledger = Ledger(url)
    try:
        ledger.open_account("drill-after-migrations", 1000.0, actor="drill")
        (entry,) = ledger.audit_log(entity_id="drill-after-migrations")
        assert entry["id"] > highest
    finally:
        ledger.dispose()
    with psycopg.connect(dsn(database), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
        conn.execute("DELETE FROM audit_log")


# -- 1. backup, destroy, restore -----------------------------------------------------------


def test_backup_destroy_restore_finds_every_order_fill_and_run(executed: Executed,
                                                               tmp_path: Path) -> None:
    books = ledger_books(executed)
    assert books["orders"] and books["fills"] and books["positions"] and books["audit"]
    with executed.instance() as instance:
        runs = dagster_runs(instance)
    assert runs["runs"][executed.execution_run_id][1] == dg.DagsterRunStatus.SUCCESS
    databases = (executed.ledger_db, executed.dagster_db)
    before = {db: fingerprint(db) for db in databases}

    dumps = {db: tmp_path / f"{db}.dump" for db in databases}
    for db, path in dumps.items():
        backup(db, path)
    for db in databases:
        drop_database(db)
        assert not database_exists(db)
    for db, path in dumps.items():
        create_database(db)
        restore(path, db)

    assert {db: fingerprint(db) for db in databases} == before
    assert ledger_books(executed) == books
    with executed.instance() as instance:
        assert dagster_runs(instance) == runs
        replay_sends_nothing_twice(executed, instance, books)
    with psycopg.connect(dsn(executed.ledger_db), autocommit=True) as conn, \
            pytest.raises(psycopg.errors.RestrictViolation, match="append-only"):
        conn.execute("DELETE FROM audit_log")


def replay_sends_nothing_twice(executed: Executed, instance: dg.DagsterInstance,
                               books: dict[str, Any]) -> None:
    """The restored cursor asks for nothing; a re-run of the execution finds its orders in the
    restored ledger and the venue's book, and submits none again."""
    defs = executed.next_day()
    assert pipeline.evaluate_sensor(defs, instance, executed.cursor).run_requests == []
    rerun = pipeline.run_request(defs, instance, executed.request)
    assert rerun.success
    assert pipeline.step_metadata(rerun)["submitted"] == 0
    after = ledger_books(executed)
    assert (after["orders"], after["fills"], after["positions"]) == (
        books["orders"], books["fills"], books["positions"])


# -- 3. rolling the code location back -----------------------------------------------------

# An earlier immutable tag built the same way (`--build-arg EXTRAS=k8s`): the values set
# ETF_WALK_FORWARD__EXECUTOR=k8s, which an image without dagster-k8s refuses to load.
PREVIOUS_TAG = "0.0.9-k8s"
LOCATION = "etf-rotation"
DEPLOYMENT_TAG = ("dagster-user-deployments", "deployments", 0, "image", "tag")
# The execution location (deployments[1]) shares the image by a YAML anchor: one `tag:` line
# rolls both locations back together.
DEPLOYMENT_TAGS = {DEPLOYMENT_TAG, ("dagster-user-deployments", "deployments", 1, "image", "tag")}


def leaves(tree: Any, path: tuple[Any, ...] = ()) -> dict[tuple[Any, ...], Any]:
    if isinstance(tree, dict):
        return {k: v for key, value in tree.items() for k, v in leaves(value, (*path, key)).items()}
    if isinstance(tree, list):
        return {k: v for i, value in enumerate(tree) for k, v in leaves(value, (*path, i)).items()}
    return {path: tree}


def rolled_back(text: str, current: str, previous: str) -> str:
    """The runbook's edit: the one `tag:` line of the user deployment, nothing else."""
    line = f'tag: "{current}"'
    assert text.count(line) == 1, f"values.yaml must have exactly one {line!r}"
    return text.replace(line, f'tag: "{previous}"')


def test_rolling_the_image_tag_back_keeps_the_instance_and_its_runs_storage() -> None:
    text = deploy.HELM_VALUES.read_text(encoding="utf-8")
    values = yaml.safe_load(text)
    current = leaves(values)[DEPLOYMENT_TAG]
    assert current.endswith("-k8s") and PREVIOUS_TAG.endswith("-k8s")
    previous = yaml.safe_load(rolled_back(text, current, PREVIOUS_TAG))

    before, after = leaves(values), leaves(previous)
    changed = {k for k in before.keys() | after.keys() if before.get(k) != after.get(k)}
    assert changed == DEPLOYMENT_TAGS
    assert not deploy.schema_errors(deploy.HELM_SCHEMA, previous)
    # The dagster.yaml every pod gets (storage on the same PostgreSQL database, launcher,
    # limits) is the same: the runs stay in the storage both versions use.
    assert deploy.instance_rendered_by_the_chart(previous) == \
        deploy.instance_rendered_by_the_chart(values)
    # Run pods take the image of the code location that launches them (the launcher names
    # none), so runs launched after the rollback use the previous image.
    assert "image" not in previous["runLauncher"]["config"]["k8sRunLauncher"]


def test_rolled_back_values_render_the_same_instance_with_the_chart(tmp_path: Path) -> None:
    helm, chart = shutil.which("helm"), os.environ.get("ETF_HELM_CHART")
    if not helm or not chart:
        pytest.skip("needs `helm` and ETF_HELM_CHART (see test_deploy.py); CI sets both")
    text = deploy.HELM_VALUES.read_text(encoding="utf-8")
    current = leaves(yaml.safe_load(text))[DEPLOYMENT_TAG]
    files = {"current": deploy.HELM_VALUES, "previous": tmp_path / "values.yaml"}
    files["previous"].write_text(rolled_back(text, current, PREVIOUS_TAG), encoding="utf-8")
    rendered = {}
    for name, values in files.items():
        done = subprocess.run([helm, "template", "etf", chart, "--namespace", "etf", "-f",
                               str(values)], capture_output=True, text=True, check=False)
        assert done.returncode == 0, done.stderr
        rendered[name] = [d for d in yaml.safe_load_all(done.stdout) if d]

    def instance_config(documents: list[dict[str, Any]]) -> str:
        (config,) = [d["data"]["dagster.yaml"] for d in documents
                     if d.get("kind") == "ConfigMap" and d["metadata"]["name"].endswith("-instance")
                     and "dagster.yaml" in (d.get("data") or {})]
        return str(config)

    assert instance_config(rendered["current"]) == instance_config(rendered["previous"])
    images = {name: {c["image"] for d in documents if d.get("kind") == "Deployment"
                     for c in d["spec"]["template"]["spec"]["containers"]}
              for name, documents in rendered.items()}
    assert any(i.endswith(f":{PREVIOUS_TAG}") for i in images["previous"])
    assert not any(i.endswith(f":{current}") for i in images["previous"])


# A code location in two versions: the same job, different code and image tag.
LOCATION_CODE = '''
import dagster as dg

IMAGE_TAG = {tag!r}


class WorkConfig(dg.Config):
    fail: bool = False


@dg.op
def work(context: dg.OpExecutionContext, config: WorkConfig) -> str:
    if config.fail:
        raise dg.Failure("failed on purpose (the drill keeps a failed run too)")
    return IMAGE_TAG


@dg.job(tags={{"etf/image-tag": IMAGE_TAG}})
def drill_job() -> None:
    work()


defs = dg.Definitions(jobs=[drill_job])
'''


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class CodeServer:
    """`dagster api grpc` serving one version of the location, as its pod would."""

    home: Path
    port: int
    tag: str
    process: subprocess.Popen[bytes] | None = None

    def env(self) -> dict[str, str]:
        return {**os.environ, "DAGSTER_HOME": str(self.home)}

    def __enter__(self) -> CodeServer:
        source = self.home / f"location_{self.tag.replace('.', '_').replace('-', '_')}.py"
        source.write_text(LOCATION_CODE.format(tag=self.tag), encoding="utf-8")
        log = (self.home / f"{source.stem}.log").open("ab")
        self.process = subprocess.Popen(
            [str(BIN / "dagster"), "api", "grpc", "-h", HOST, "-p", str(self.port), "-f",
             str(source)], env=self.env(), stdout=log, stderr=subprocess.STDOUT)
        log.close()
        wait_until(f"code server {self.tag}", self.answers, 120)
        return self

    def answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, "code server exited"
        health = subprocess.run([str(BIN / "dagster"), "api", "grpc-health-check", "-p",
                                 str(self.port), "-h", HOST], capture_output=True,
                                check=False, timeout=60)
        return health.returncode == 0

    def launch(self, workspace: Path, *, fail: bool = False) -> str:
        """`dagster job launch` through the workspace: the instance's run launcher starts the
        run in this server's version of the code."""
        run_id = str(uuid.uuid4())
        config = {"ops": {"work": {"config": {"fail": fail}}}}
        done = subprocess.run([str(BIN / "dagster"), "job", "launch", "-w", str(workspace),
                               "-j", "drill_job", "--run-id", run_id, "--config-json",
                               json.dumps(config)], env=self.env(), capture_output=True,
                              text=True, check=False, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        return run_id

    def __exit__(self, *exc: object) -> None:
        assert self.process is not None
        self.process.terminate()
        try:
            self.process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


def wait_until(what: str, probe: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not probe():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(1)


def finished(home: Path, run_ids: list[str]) -> dict[str, dg.DagsterRunStatus]:
    """Wait for the runs to end (a fresh instance each poll: the webserver's view)."""
    done = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE}
    statuses: dict[str, dg.DagsterRunStatus] = {}

    def ended() -> bool:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            runs = instance.get_runs(dg.RunsFilter(run_ids=run_ids))
        statuses.update({r.run_id: r.status for r in runs})
        return len(statuses) == len(run_ids) and set(statuses.values()) <= done

    wait_until("the runs to finish", ended, 300)
    return statuses


def loaded_tag(home: Path, workspace: Path) -> str:
    """The image tag of the job the reloaded workspace serves."""
    with dg.DagsterInstance.from_config(str(home)) as instance, \
            WorkspaceProcessContext(instance,
                                    WorkspaceFileTarget(paths=[str(workspace)])) as context:
        request = context.create_request_context()
        assert not request.has_code_location_error(LOCATION), \
            request.get_code_location_error(LOCATION)
        (repository,) = request.get_code_location(LOCATION).get_repositories().values()
        return str(repository.get_full_job("drill_job").tags["etf/image-tag"])


@pytest.mark.timeout(900)
def test_runs_survive_rolling_the_code_location_back(tmp_path: Path) -> None:
    current = leaves(yaml.safe_load(deploy.HELM_VALUES.read_text()))[DEPLOYMENT_TAG]
    port = free_port()
    with scratch_database("etf_drill_rollback") as database:
        # Launched runs start at once (no daemon to dequeue them here; the deployment queues).
        home = instance_home(tmp_path / "dagster", database, run_coordinator={
            "module": "dagster.core.run_coordinator", "class": "DefaultRunCoordinator"})
        workspace = home / "workspace.yaml"
        workspace.write_text(yaml.safe_dump({"load_from": [{"grpc_server": {
            "host": HOST, "port": port, "location_name": LOCATION}}]}), encoding="utf-8")

        with CodeServer(home, port, current) as server:
            assert loaded_tag(home, workspace) == current
            ran = [server.launch(workspace), server.launch(workspace, fail=True)]
            statuses = finished(home, ran)
        assert list(statuses.values()).count(dg.DagsterRunStatus.SUCCESS) == 1

        # The rollback: the previous image serves the location on the same address; the
        # webserver and the daemon re-open the same instance and reload the location.
        with CodeServer(home, port, PREVIOUS_TAG) as server:
            assert loaded_tag(home, workspace) == PREVIOUS_TAG
            with dg.DagsterInstance.from_config(str(home)) as instance:
                kept = {r.run_id: (r.status, r.tags["etf/image-tag"])
                        for r in instance.get_runs(dg.RunsFilter(run_ids=ran))}
                assert kept == {run_id: (status, current) for run_id, status in statuses.items()}
                for run_id in ran:    # the run's events and its job's snapshot are kept too
                    run = instance.get_run_by_id(run_id)
                    assert run is not None and instance.all_logs(run_id)
                    assert instance.get_job_snapshot(run.job_snapshot_id).tags[  # type: ignore[arg-type]
                        "etf/image-tag"] == current
            after = server.launch(workspace)
            assert finished(home, [after]) == {after: dg.DagsterRunStatus.SUCCESS}

        with dg.DagsterInstance.from_config(str(home)) as instance:
            tags = {r.run_id: r.tags["etf/image-tag"] for r in instance.get_runs()}
        assert tags == {ran[0]: current, ran[1]: current, after: PREVIOUS_TAG}
