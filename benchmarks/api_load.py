"""The desk API's read endpoints under load: 200 concurrent users (locust, headless). Target:
p95 ≤ 100 ms and no error on every endpoint.

Set-up (not timed): a scratch ledger on the local PostgreSQL holding a year of a paper account
driven by real prices (cn_etf_akshare_qfq_2020, 2024: each session a signal for the five
funds with the best 20-session momentum, its orders and their fills at the next open), a
viewer, and the API (`python -m api`, one worker process per core) in its own process on a
free port.

Timed: locust with 200 users (spawned at 50/s) for ``ETF_BENCH_API_SECONDS`` (default 60 s),
each user a signed-in desk client reading the lists a console polls (signals, orders, fills,
positions, cash, strategies, one signal, the kill switch) with 0.5–1.5 s between requests.
The figures are the steady state with all 200 users connected: locust's statistics restart
once every user is spawned (``--reset-stats``), so the ramp-up, where each new client's first
request opens its connection, is not counted. The baseline in the same run is ``/health`` (no
database, no token): an endpoint's p95 over the baseline's is what the endpoint itself costs
above the server under the same load.

    python -m benchmarks.api_load
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import json
import os
import secrets
import socket
import subprocess
import sys
import tempfile
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pandas as pd

from benchmarks.scratch import PG_SERVER, scratch_database

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASET = SHARED / "cn_etf_akshare_qfq_2020"
YEAR = "2024"
USERS, SPAWN_RATE = 200, 50
# API server processes: one per core of this machine (the load generator shares them).
WORKERS = os.cpu_count() or 1
SECONDS = int(os.environ.get("ETF_BENCH_API_SECONDS", "60"))
TARGET_P95_MS = 100.0
ACCOUNT, STRATEGY = "paper-bench", "etf_rotation_akshare"
JWT_SECRET = "api-load-benchmark-" + "0" * 32       # this run's own key, never deployed
PASSWORD = "benchmark viewer password"
LOCUSTFILE = Path(__file__).with_name("api_locustfile.py")


def closes_and_opens() -> tuple[pd.DataFrame, pd.DataFrame]:
    """Daily closes and opens (date × fund) of the dataset's funds in the benchmark year and
    the sessions before it that the momentum needs."""
    frames = [pd.read_parquet(p).assign(symbol=p.stem) for p in sorted((DATASET / "parquet")
                                                                    .glob("*.parquet"))]
    bars = pd.concat(frames, ignore_index=True)
    bars["date"] = pd.to_datetime(bars["date"])
    bars = bars.loc[(bars["date"] >= f"{int(YEAR) - 1}-10-01") & (bars["date"] <= f"{YEAR}-12-31")]
    return (bars.pivot(index="date", columns="symbol", values="close"),
            bars.pivot(index="date", columns="symbol", values="open"))


def seed(url: str) -> int:
    """A year of the paper account in the ledger; the number of fills booked."""
    from trading.ledger import Ledger, OrderRecord, SignalRecord
    from trading.models import (
        Fill,
        OrderStatus,
        Side,
        SignalStatus,
        order_id_of,
        signal_id_of,
        weights_hash,
    )

    close, open_ = closes_and_opens()
    momentum = close / close.shift(20) - 1
    days = [d for d in close.index if str(d.year) == YEAR]
    ledger = Ledger(url)
    ledger.migrate()
    ledger.open_account(ACCOUNT, 1_000_000.0, actor="benchmark")
    held: dict[str, int] = {}
    fills = 0
    for day, session in itertools.pairwise(days):
        top = momentum.loc[day].dropna().nlargest(5).index
        weights = {str(s): 0.2 for s in top}
        signal = ledger.record_signal(SignalRecord(
            signal_id=signal_id_of(STRATEGY, ACCOUNT, day.date(), weights), account_id=ACCOUNT,
            strategy=STRATEGY, as_of=day.date(), weights=weights,
            weights_hash=weights_hash(weights), status=SignalStatus.APPROVED, reasons=[],
            data_version="benchmark", dagster_run_id="benchmark"), actor="benchmark")
        wanted = {s: int(200_000 / close.at[day, s] // 100 * 100) for s in weights}
        trades = {s: wanted.get(s, 0) - held.get(s, 0) for s in set(wanted) | set(held)}
        orders = [OrderRecord(
            order_id=order_id_of(signal.signal_id, s, Side.BUY if q > 0 else Side.SELL),
            signal_id=signal.signal_id, account_id=ACCOUNT, symbol=s,
            side=Side.BUY if q > 0 else Side.SELL, quantity=abs(q),
            reference_price=float(close.at[day, s]), session=session.date())
            for s, q in sorted(trades.items()) if q and pd.notna(open_.at[session, s])]
        for order in ledger.record_orders(orders, actor="benchmark"):
            ledger.update_order(order.order_id, status=OrderStatus.SUBMITTED, actor="benchmark",
                                venue_order_id=f"v-{order.order_id}")
            price = float(open_.at[session, order.symbol])
            ledger.record_fill(Fill(
                fill_id=f"f-{order.order_id}", client_order_id=order.order_id,
                account_id=ACCOUNT, symbol=order.symbol, side=order.side,
                quantity=order.quantity, price=price,
                commission=max(5.0, order.quantity * price * 2e-4), session=session.date(),
                filled_at=dt.datetime.combine(session.date(), dt.time(1, 30), dt.UTC)),
                actor="benchmark")
            held[order.symbol] = held.get(order.symbol, 0) + (
                order.quantity if order.side == Side.BUY else -order.quantity)
            fills += 1
        held = {s: q for s, q in held.items() if q}
    ledger.dispose()
    return fills


def add_viewer(url: str) -> None:
    from api import security
    from api.permissions import Role
    from api.store import Audit, UserStore
    from trading.ledger import Ledger

    ledger = Ledger(url)
    UserStore(ledger).create_user("bench-viewer", security.hash_password(PASSWORD), Role.VIEWER,
                                  Audit(actor="benchmark", action="user_created",
                                        entity="api_user", entity_id="bench-viewer",
                                        reason="load benchmark", details={}))
    ledger.dispose()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_until_up(base: str, api: subprocess.Popen[bytes], seconds: float = 120.0) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if api.poll() is not None:
            raise RuntimeError(f"the API stopped (exit {api.returncode})")
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2):
                return
        except OSError:
            time.sleep(0.5)
    raise RuntimeError(f"the API did not answer at {base} within {seconds:.0f} s")


def sign_in(base: str) -> str:
    form = urllib.parse.urlencode({"username": "bench-viewer", "password": PASSWORD}).encode()
    with urllib.request.urlopen(f"{base}/api/v1/auth/token", data=form, timeout=10) as answer:
        return str(json.loads(answer.read())["access_token"])


def newest_signal(url: str) -> str:
    """The id the clients read as "one signal" (given to them: no request during ramp-up)."""
    from trading.ledger import Ledger

    ledger = Ledger(url)
    try:
        return ledger.signals_page(account_id=ACCOUNT, limit=1)[0][0].signal_id
    finally:
        ledger.dispose()


def load(base: str, token: str, signal_id: str, out: Path) -> list[dict[str, str]]:
    """Locust, headless, in its own process (gevent patches the process it runs in)."""
    locust = Path(sys.executable).with_name("locust")
    env = {**os.environ, "BENCH_API_TOKEN": token, "BENCH_API_ACCOUNT": ACCOUNT,
           "BENCH_API_STRATEGY": STRATEGY, "BENCH_API_SIGNAL": signal_id}
    subprocess.run([str(locust), "-f", str(LOCUSTFILE), "--headless", "--host", base,
                    "-u", str(USERS), "-r", str(SPAWN_RATE), "-t", f"{SECONDS}s",
                    "--csv", str(out / "load"), "--reset-stats", "--only-summary",
                    "--loglevel", "WARNING"],
                   env=env, check=False, capture_output=True, timeout=SECONDS + 180)
    with (out / "load_stats.csv").open(encoding="utf-8") as stats:
        return list(csv.DictReader(stats))


def report(rows: list[dict[str, str]]) -> bool:
    by_name = {r["Name"]: r for r in rows}
    baseline = float(by_name["/health"]["95%"])
    print(f"{'endpoint':<44}{'requests':>9}{'errors':>8}{'p50 ms':>8}{'p95 ms':>8}"
          f"{'p99 ms':>8}{'p95/health':>11}")
    ok = True
    for row in rows:
        if row["Request Count"] == "0":     # only called while the users were spawning
            continue
        p95, errors = float(row["95%"]), int(row["Failure Count"])
        if row["Name"] != "Aggregated":
            ok &= errors == 0 and p95 <= TARGET_P95_MS
        print(f"{row['Name']:<44}{row['Request Count']:>9}{errors:>8}{row['50%']:>8}"
              f"{row['95%']:>8}{row['99%']:>8}{p95 / baseline:>11.1f}")
    print(f"target: p95 <= {TARGET_P95_MS:.0f} ms and no error on every endpoint: "
          f"{'met' if ok else 'NOT met'} ({USERS} users, {SECONDS} s, {WORKERS} API workers, "
          f"{os.cpu_count()} cores)")
    return ok


def main() -> int:
    with scratch_database("etf_bench_api") as database, \
            tempfile.TemporaryDirectory() as tmp:
        url = f"postgresql+psycopg://{PG_SERVER}/{database}"
        began = time.perf_counter()
        fills = seed(url)
        add_viewer(url)
        print(f"set-up: {fills} fills of {YEAR} in the ledger "
              f"({time.perf_counter() - began:.0f} s)")
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        env = {**os.environ, "ETF_POSTGRES_URL": url, "ETF_HOME": tmp, "API_PORT": str(port),
               "ETF_API__JWT_SECRET": JWT_SECRET, "ETF_API__WORKERS": str(WORKERS),
               "ETF_REDIS_URL": "redis://127.0.0.1:6379/4",
               "ETF_CACHE_SECRET": secrets.token_hex(32)}
        log = Path(tmp) / "api.log"
        with log.open("wb") as out:
            api = subprocess.Popen([sys.executable, "-m", "api"], cwd=ROOT, env=env,
                                   stdout=out, stderr=subprocess.STDOUT)
        try:
            try:
                wait_until_up(base, api)
            except RuntimeError:
                print(log.read_text(encoding="utf-8")[-3000:], file=sys.stderr)
                raise
            ok = report(load(base, sign_in(base), newest_signal(url), Path(tmp)))
        finally:
            api.terminate()
            api.wait(timeout=60)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
