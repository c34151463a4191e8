"""deploy/compose.yaml's postgres-init, run for real: interpolated as compose does it, run by bash
with the superuser's environment (as the postgres image's entrypoint does) against a scratch
PostgreSQL cluster (initdb, password authentication). Then the deploy's path on what it made:
the application's login on the unmigrated ledger says the migrate step has not run, the migrate
step (``python -m orchestration.migrate_ledger`` with the owner's login) migrates, and each login
reaches exactly its own database with its own password.

Needs the PostgreSQL server binaries (initdb, pg_ctl); as root it runs them as the ``postgres``
user (initdb refuses root)."""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import socket
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg
import pytest
import yaml
from test_deploy import COMPOSE, env_example, interpolate

from trading.ledger import Ledger, LedgerError

ROOT = Path(__file__).resolve().parents[1]
SUPERUSER, SUPERUSER_PASSWORD = "etf", "pg-super-7f3a"
PASSWORDS = {
    "POSTGRES_PASSWORD": SUPERUSER_PASSWORD,
    "DAGSTER_DB_PASSWORD": "dagster-9b1c",
    "MLFLOW_DB_PASSWORD": "mlflow-2d4e",
    "LEDGER_OWNER_PASSWORD": "owner-5f6a",
    "LEDGER_WRITER_PASSWORD": "writer-8c0d",
    "LEDGER_API_PASSWORD": "api-6a1e",
    "LEDGER_READER_PASSWORD": "reader-3e7b",
}
LOGINS = {"dagster": "DAGSTER_DB_PASSWORD", "mlflow": "MLFLOW_DB_PASSWORD",
          "etf_ledger_migrator": "LEDGER_OWNER_PASSWORD", "etf_app": "LEDGER_WRITER_PASSWORD",
          "etf_api": "LEDGER_API_PASSWORD", "etf_reader": "LEDGER_READER_PASSWORD"}


def server_binaries() -> Path | None:
    found = shutil.which("pg_ctl")
    if found:
        return Path(found).parent
    versions = sorted(glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
                      key=lambda p: int(Path(p).parts[-3]))
    return Path(versions[-1]).parent if versions else None


@dataclass(frozen=True)
class Cluster:
    bin: Path
    socket_dir: str
    port: int
    base: Path

    def connect(self, user: str, password: str, database: str) -> psycopg.Connection[Any]:
        return psycopg.connect(host=self.socket_dir, port=self.port, user=user,
                               password=password, dbname=database, autocommit=True)

    def url(self, user: str, password: str, database: str) -> str:
        return (f"postgresql+psycopg://{user}:{password}@/{database}"
                f"?host={self.socket_dir}&port={self.port}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    binaries = server_binaries()
    if binaries is None or not (binaries / "initdb").exists():
        pytest.skip("the PostgreSQL server binaries (initdb, pg_ctl) are not installed")
    as_user: list[str] = []
    base = Path(tempfile.mkdtemp(prefix="etf_pginit_"))
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")
        except KeyError:
            pytest.skip("running as root and there is no `postgres` user to run initdb as")
        as_user = ["runuser", "-u", "postgres", "--"]
        os.chown(base, owner.pw_uid, owner.pw_gid)
    password_file = base / "superuser_password"
    password_file.write_text(SUPERUSER_PASSWORD + "\n", encoding="utf-8")
    if as_user:
        os.chown(password_file, pwd.getpwnam("postgres").pw_uid, -1)
    port = free_port()

    def run(*command: str) -> None:
        subprocess.run([*as_user, *command], check=True, capture_output=True, text=True,
                       timeout=120)

    data = base / "data"
    run(str(binaries / "initdb"), "-D", str(data), "-U", SUPERUSER, "--auth=scram-sha-256",
        f"--pwfile={password_file}", "-E", "UTF8", "--no-sync")
    run(str(binaries / "pg_ctl"), "-D", str(data), "-l", str(base / "server.log"), "-w",
        "-o", f"-p {port} -k {base} -c listen_addresses=''", "start")
    try:
        yield Cluster(binaries, str(base), port, base)
    finally:
        subprocess.run([*as_user, str(binaries / "pg_ctl"), "-D", str(data), "-m", "immediate",
                        "stop"], capture_output=True, timeout=60, check=False)
        shutil.rmtree(base, ignore_errors=True)


def init_script(variables: dict[str, str]) -> str:
    config = yaml.safe_load(interpolate(COMPOSE.read_text(encoding="utf-8"), variables))
    return str(config["configs"]["postgres-init"]["content"])


def run_init(cluster: Cluster, passwords: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """The script as the image's entrypoint runs it: bash, the superuser's environment, psql on
    the server's socket."""
    variables = {**env_example(), **passwords}
    script = cluster.base / "init.sh"
    script.write_text(init_script(variables), encoding="utf-8")
    env = {"PATH": f"{cluster.bin}{os.pathsep}{os.environ.get('PATH', '')}",
           "POSTGRES_USER": SUPERUSER, "PGHOST": cluster.socket_dir,
           "PGPORT": str(cluster.port), "PGPASSWORD": SUPERUSER_PASSWORD, **passwords}
    return subprocess.run(["bash", str(script)], env=env, capture_output=True, text=True,
                          timeout=120, check=False)


def roles(cluster: Cluster) -> set[str]:
    with cluster.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres") as conn:
        return {r[0] for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'")}


@pytest.fixture(scope="module")
def initialised(cluster: Cluster) -> Cluster:
    """The placeholder is refused before anything is created; then the real run."""
    refused = run_init(cluster, {**PASSWORDS, "LEDGER_READER_PASSWORD": "change-me"})
    assert refused.returncode != 0
    assert "LEDGER_READER_PASSWORD is unset or a placeholder" in refused.stderr
    assert roles(cluster) == {SUPERUSER}
    done = run_init(cluster, PASSWORDS)
    assert done.returncode == 0, done.stderr
    return cluster


def test_each_login_reaches_only_its_own_database(initialised: Cluster) -> None:
    cluster = initialised
    with cluster.connect(SUPERUSER, SUPERUSER_PASSWORD, "postgres") as conn:
        owners = dict(conn.execute(
            "SELECT datname, pg_get_userbyid(datdba) FROM pg_database "
            "WHERE datname IN ('dagster', 'mlflow', 'ledger')").fetchall())
        flags = {r[0]: r[1:] for r in conn.execute(
            "SELECT rolname, rolcanlogin, rolsuper, rolcreaterole, rolcreatedb FROM pg_roles "
            "WHERE rolname LIKE 'etf\\_%' OR rolname IN ('dagster', 'mlflow')")}
    assert owners == {"dagster": "dagster", "mlflow": "mlflow", "ledger": "etf_ledger_owner"}
    for login in LOGINS:
        assert flags[login] == (True, False, False, False), login
    for group in ("etf_ledger_owner", "etf_ledger_writer", "etf_ledger_reader"):
        assert flags[group][0] is False, group

    reach = {"dagster": {"dagster"}, "mlflow": {"mlflow"},
             "etf_ledger_migrator": {"ledger"}, "etf_app": {"ledger"},
             "etf_api": {"ledger"}, "etf_reader": {"ledger"}}
    for login, variable in LOGINS.items():
        for database in ("dagster", "mlflow", "ledger"):
            if database in reach[login]:
                cluster.connect(login, PASSWORDS[variable], database).close()
            else:
                with pytest.raises(psycopg.OperationalError, match="permission denied"):
                    cluster.connect(login, PASSWORDS[variable], database)
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            cluster.connect(login, "change-me", next(iter(reach[login])))
    # Dagster and MLflow own their databases: they create their own schema.
    with cluster.connect("dagster", PASSWORDS["DAGSTER_DB_PASSWORD"], "dagster") as conn:
        conn.execute("CREATE TABLE probe (x int)")


def test_the_deploys_migrate_step_then_the_application(initialised: Cluster,
                                                       tmp_path: Path) -> None:
    cluster = initialised
    writer_url = cluster.url("etf_app", PASSWORDS["LEDGER_WRITER_PASSWORD"], "ledger")
    app = Ledger(writer_url, retry_seconds=5)
    try:
        with pytest.raises(LedgerError, match="the migrate step has not run"):
            app.migrate()

        env = {k: v for k, v in os.environ.items() if not k.startswith("ETF_")}
        env.update(ETF_HOME=str(tmp_path / "etf_home"), ETF_LEDGER_ADMIN_URL=cluster.url(
            "etf_ledger_migrator", PASSWORDS["LEDGER_OWNER_PASSWORD"], "ledger"))
        step = subprocess.run([sys.executable, "-m", "orchestration.migrate_ledger"], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=300, check=False)
        assert step.returncode == 0, step.stderr
        assert "at head" in step.stdout

        app.migrate()                                  # at head: a check only
        app.open_account("paper-main", 1_000_000.0, actor="test")
        assert app.cash("paper-main") == 1_000_000.0
    finally:
        app.dispose()

    with cluster.connect(SUPERUSER, SUPERUSER_PASSWORD, "ledger") as conn:
        owners = {r[0] for r in conn.execute(
            "SELECT pg_get_userbyid(relowner) FROM pg_class "
            "WHERE relnamespace = 'public'::regnamespace")}
    assert owners == {"etf_ledger_owner"}
    with cluster.connect("etf_app", PASSWORDS["LEDGER_WRITER_PASSWORD"], "ledger") as conn:
        for statement in ("UPDATE signals SET status = 'approved'", "DELETE FROM audit_log",
                          "ALTER TABLE signals DISABLE TRIGGER signals_immutable",
                          "CREATE TABLE shadow (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]  (fixed test SQL)
    # The desk API's login: the writer's rights on its own tables (users, tokens), no more.
    with cluster.connect("etf_api", PASSWORDS["LEDGER_API_PASSWORD"], "ledger") as conn:
        assert conn.execute("SELECT count(*) FROM api_users").fetchone() == (0,)
        for statement in ("DELETE FROM api_users", "DELETE FROM audit_log",
                          "CREATE TABLE shadow (x int)"):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement)  # type: ignore[arg-type]  (fixed test SQL)
    with cluster.connect("etf_reader", PASSWORDS["LEDGER_READER_PASSWORD"], "ledger") as conn:
        assert conn.execute("SELECT count(*) FROM accounts").fetchone() == (1,)
        with pytest.raises(psycopg.errors.InsufficientPrivilege):
            conn.execute("UPDATE cash SET balance = 0")
