"""`make demo` for real, with no PostgreSQL server given: its entry point in a subprocess on a
fresh home, the embedded PostgreSQL it starts and stops (orchestration/embedded_pg.py), and what
is left in the ledger afterwards (what `make dev` sees when it starts the same server again)."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
import psycopg
import pytest

from orchestration.demo import demo_days
from orchestration.embedded_pg import SERVICE_USER, EmbeddedPostgres, embedded_ledger
from orchestration.settings import SettingsError
from resources.market_data import SampleMarketData
from trading.ledger import Ledger
from trading.models import OrderStatus, SignalStatus

ROOT = Path(__file__).resolve().parents[1]
# "A few minutes at most" for the newcomer's first command (about 2.5 minutes on 2 idle cores).
DEMO_BUDGET_SECONDS = 480


@pytest.fixture
def home() -> Iterator[Path]:
    """A fresh ETF_HOME. Not pytest's tmp_path: that lies under a 0700 folder, which the
    unprivileged user the embedded server runs as under root could not enter."""
    base = Path(tempfile.mkdtemp(prefix="etf_demo_test_"))
    base.chmod(0o755)
    yield base / "etf_home"
    for process in server_processes(base):      # a failed test must not leave a server behind
        process.kill()
    shutil.rmtree(base, ignore_errors=True)


def server_processes(under: Path) -> list[psutil.Process]:
    """Live postgres processes started on a data directory below ``under`` (the postmaster
    names its data directory on its command line; its workers end with it)."""
    found = []
    for process in psutil.process_iter(["cmdline", "status"]):
        cmdline = process.info["cmdline"] or []
        if process.info["status"] == psutil.STATUS_ZOMBIE or not cmdline:
            continue
        if Path(cmdline[0]).name == "postgres" and any(str(under) in c for c in cmdline):
            found.append(process)
    return found


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(1)
        return s.connect_ex(("127.0.0.1", port)) == 0


def demo_env(home: Path) -> dict[str, str]:
    """This environment without any ETF_ setting (no ETF_POSTGRES_URL, no Redis), home set."""
    env = {k: v for k, v in os.environ.items() if not k.upper().startswith("ETF_")}
    return {**env, "ETF_HOME": str(home), "GX_ANALYTICS_ENABLED": "false"}


def test_make_demo_runs_the_whole_chain_on_an_embedded_server(home: Path) -> None:
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "orchestration.demo"], cwd=ROOT,
                          env=demo_env(home), capture_output=True, text=True, timeout=900,
                          check=False)
    elapsed = time.perf_counter() - started
    out = done.stdout
    assert done.returncode == 0, out[-6000:] + done.stderr[-6000:]
    print(f"make demo's entry point: {elapsed:.0f}s")
    assert elapsed < DEMO_BUDGET_SECONDS, f"the demo took {elapsed:.0f}s"

    url = re.search(r"ledger +: embedded PostgreSQL postgresql\+psycopg://etf:\*\*\*@"
                    r"127\.0\.0\.1:(\d+)/etf_ledger", out)
    assert url, out[:2000]
    port = int(url.group(1))
    assert port != 5432
    # The sample ends on 2025-12-31: D is the session before, its orders fill on the last.
    signal_line = re.search(r"signal +: (etf_rotation_sample:paper-main:2025-12-30:\w+) "
                            r"APPROVED", out)
    assert signal_line, out[-4000:]
    signal_id = signal_line.group(1)
    orders, fills = (re.search(rf"{name} +: (\d+) ", out) for name in ("orders", "fills"))
    assert orders and fills, out[-4000:]
    assert int(orders.group(1)) > 0 and int(fills.group(1)) == int(orders.group(1))
    placed = re.findall(r"^  buy  \d{6} .* for 2025-12-31 submitted$", out, re.M)
    assert len(placed) == int(orders.group(1))
    parity = re.search(r"parity +: paper vs backtest max relative difference ([\d.]+)% .*"
                       r"tolerance 1\.00%: passed", out)
    assert parity and float(parity.group(1)) < 1.0, out[-3000:]
    assert "make dev" in out and "embedded PostgreSQL stopped" in out

    # Stopped: no server process on the home's data directory, nothing on its port.
    assert server_processes(home) == []
    assert not port_open(port)
    # The sample's results (and its ledger) live in its own folder of the home.
    assert not (home / "sample" / "postgres" / "data" / "postmaster.pid").exists()
    assert_ledger_kept(home / "sample", signal_id, int(orders.group(1)))


def assert_ledger_kept(home: Path, signal_id: str, orders: int) -> None:
    """The ledger outlives the demo: the same server started again (as `make dev` does) holds
    the approved signal, its filled orders and the positions."""
    with embedded_ledger(home) as server:
        ledger = Ledger(server.url())
        try:
            signal = ledger.signal(signal_id)
            assert signal is not None and signal.status is SignalStatus.APPROVED
            placed = ledger.orders(signal_id=signal_id)
            assert len(placed) == orders
            assert all(o.status is OrderStatus.FILLED for o in placed)
            held = ledger.positions("paper-main")
            assert {s: p.quantity for s, p in held.items()} == {o.symbol: o.quantity
                                                                 for o in placed}
        finally:
            ledger.dispose()
    assert server_processes(home) == []


def test_embedded_server_is_loopback_only_unprivileged_and_stopped(home: Path) -> None:
    home.mkdir()
    with embedded_ledger(home) as server:
        assert server.port is not None and server.port != 5432
        with psycopg.connect(server.url(driver="postgresql")) as conn:
            listen = conn.execute("SHOW listen_addresses").fetchone()
            sockets = conn.execute("SHOW unix_socket_directories").fetchone()
            database = conn.execute("SELECT current_database()").fetchone()
        assert listen == ("127.0.0.1",) and sockets == ("",)
        assert database == ("etf_ledger",)
        [postmaster] = server_processes(home)
        expected = SERVICE_USER if os.geteuid() == 0 else psutil.Process().username()
        assert postmaster.username() == expected
        with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
            psycopg.connect(f"postgresql://etf:wrong@127.0.0.1:{server.port}/etf_ledger",
                            connect_timeout=5).close()
        port = server.port
    assert server_processes(home) == [] and not port_open(port)


OWNER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from orchestration.embedded_pg import EmbeddedPostgres, embedded_ledger
    if sys.argv[2] == "managed":
        with embedded_ledger(Path(sys.argv[1])) as server:
            print(server.port, flush=True)
            time.sleep(600)
    else:       # started and never stopped: what a killed demo leaves
        server = EmbeddedPostgres(Path(sys.argv[1]))
        server.start()
        print(server.port, flush=True)
        time.sleep(600)
""")


@pytest.fixture
def start_owner(home: Path) -> Iterator[Callable[[str], tuple[subprocess.Popen[str], int]]]:
    """Start a process that starts the server on ``home`` ("managed": stops it on the way out;
    "leak": never does) and wait for its port; the processes are ended after the test."""
    owners: list[subprocess.Popen[str]] = []

    def start(mode: str) -> tuple[subprocess.Popen[str], int]:
        owner = subprocess.Popen([sys.executable, "-c", OWNER, str(home), mode], cwd=ROOT,
                                 stdout=subprocess.PIPE, text=True)
        owners.append(owner)
        assert owner.stdout is not None
        line = owner.stdout.readline()
        assert line.strip().isdigit(), f"the owner did not start the server: {line!r}"
        return owner, int(line)

    yield start
    for owner in owners:
        if owner.poll() is None:
            owner.kill()
            owner.wait()


def gone(process: psutil.Process) -> bool:
    try:
        return process.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def test_server_stops_when_its_owner_gets_sigterm(home: Path, start_owner) -> None:
    home.mkdir()
    owner, port = start_owner("managed")
    [postmaster] = server_processes(home)
    assert port_open(port)
    owner.send_signal(signal.SIGTERM)
    assert owner.wait(timeout=60) == 128 + signal.SIGTERM
    assert gone(postmaster) and server_processes(home) == [] and not port_open(port)


def test_server_left_by_a_killed_process_is_stopped_at_the_next_start(home: Path,
                                                                      start_owner) -> None:
    home.mkdir()
    owner, port = start_owner("leak")
    owner.kill()
    owner.wait(timeout=30)
    [orphan] = server_processes(home)
    assert port_open(port)
    server = EmbeddedPostgres(home)
    server.start()
    try:
        assert server.owned and gone(orphan)
        assert [p.pid for p in server_processes(home)] != [orphan.pid]
        assert len(server_processes(home)) == 1
    finally:
        server.stop()
    assert server_processes(home) == []


def test_demo_days_need_a_bar_after_the_signal_day() -> None:
    market = SampleMarketData()
    history = (market.history_start, market.history_end)
    days = demo_days(market, history, None)
    assert (days.signal, days.fill) == ("2025-12-30", "2025-12-31")
    # New Year: the session after 2024-12-31 is 2025-01-02.
    assert demo_days(market, history, "2024-12-31").fill == "2025-01-02"
    for too_late in ("2025-12-31", "2026-01-05"):
        with pytest.raises(SettingsError, match="ETF_EXECUTION__AS_OF"):
            demo_days(market, history, too_late)
    with pytest.raises(SettingsError, match="must be a session"):
        demo_days(market, history, "2025-12-27")      # a Saturday
