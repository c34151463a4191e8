"""Tick-to-client latency of the quote path (issue 18 item 3): the venue's stamp on a tick
(the test venue's ``localtime``, wall clock UTC, when it puts the tick on vn.py's event engine)
→ the WebSocket client of the desk API receiving its ``quote`` event. p50 and p95 over N
ticks.

Set-up (not timed): a scratch ledger with a viewer, the API (``python -m api``, one worker),
the test venue process (``trading.vnpy_replay_ticks:TickReplayGateway`` over the real raw bars
of ``cn_etf_morphkyan_raw``, two funds), the quote relay (``python -m trading.quotes``) and a
WebSocket client signed in as the viewer.

Timed: the venue replays ``ETF_BENCH_QUOTE_MINUTES`` minutes (default 20) of 12 ticks per
fund, one step every 20 ms (100 ticks/s); each tick's path: vn.py RPC publish → the relay
(Redis XADD of the tick and the live price, PostgreSQL NOTIFY) → the API's LISTEN → the
client's socket. The baseline in the same process: a direct Redis ``XADD`` → ``XREAD`` round
trip (the floor of any path through Redis), N times; the path's p50/p95 over the baseline's
is the ratio printed.

    python -m benchmarks.quotes
"""

from __future__ import annotations

import datetime as dt
import json
import os
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

from benchmarks.api_load import add_viewer, free_port, sign_in, wait_until_up
from benchmarks.scratch import PG_SERVER, scratch_database

ROOT = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("ETF_SHARED_DATA", ROOT.parent / "shared" / "data"))
DATASET = ROOT / "config" / "datasets" / "cn_etf_morphkyan_raw.yaml"
SYMBOLS = ("510300", "510500")
SESSION = dt.date(2025, 6, 11)
MINUTES = int(os.environ.get("ETF_BENCH_QUOTE_MINUTES", "20"))
TICKS_PER_MINUTE = 12
STEP_SECONDS = 0.02
REDIS_URL = "redis://127.0.0.1:6379/4"
JWT_SECRET = "quotes-benchmark-" + "0" * 32       # this run's own key, never deployed


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def baseline(n: int) -> list[float]:
    """Seconds of n direct XADD → XREAD round trips on a stream of this run's own."""
    import redis

    writer, reader = redis.Redis.from_url(REDIS_URL), redis.Redis.from_url(REDIS_URL)
    key = f"bench-quotes-{uuid.uuid4().hex[:8]}:baseline"
    out = []
    try:
        last = "0-0"
        for i in range(n):
            began = time.perf_counter()
            writer.xadd(key, {"i": str(i)}, maxlen=1000, approximate=True)
            got = reader.xread({key: last}, count=1, block=1000)
            out.append(time.perf_counter() - began)
            last = got[0][1][-1][0].decode()
    finally:
        writer.delete(key)
    return out


def write_market(tmp: Path) -> Path:
    """The venue's gateway setting over the dataset's raw bars (read-only; a temporary copy of
    two funds' bars, never in the repository)."""
    from rotation.sources.files import FileMarketSource, load_dataset_spec

    source = FileMarketSource(SHARED / "cn_etf_morphkyan_raw", load_dataset_spec(DATASET))
    bars = source.load(dt.date(2025, 6, 1), SESSION).bars
    bars = bars.assign(symbol=bars["symbol"].astype(str))
    bars = bars.loc[bars["symbol"].isin(SYMBOLS)].reset_index(drop=True)
    bars[["date", "symbol", "open", "high", "low", "close", "volume"]].to_parquet(
        tmp / "bars.parquet")
    instruments = {i.symbol: {"exchange": i.exchange, "price_limit": i.price_limit}
                   for i in source.instruments() if i.symbol in SYMBOLS}
    setting = tmp / "gateway.json"
    setting.write_text(json.dumps({"bars": str(tmp / "bars.parquet"),
                                   "instruments": instruments, "account": "bench"}))
    return setting


def start(cmd: list[str], log: Path, ready: str, env: dict[str, str]
          ) -> subprocess.Popen[bytes]:
    with log.open("wb") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, env=env)
    deadline = time.monotonic() + 120
    while ready not in log.read_text(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{cmd[2]} did not start (exit {proc.poll()}):\n"
                               f"{log.read_text()[-3000:]}")
        time.sleep(0.1)
    return proc


def main() -> int:
    from websockets.sync.client import connect

    from trading.ledger import migrate
    from trading.vnpy_api import RpcClient, start_client

    expected = MINUTES * TICKS_PER_MINUTE * len(SYMBOLS)
    procs: list[subprocess.Popen[bytes]] = []
    namespace = f"bench-quotes-{uuid.uuid4().hex[:8]}"
    with scratch_database("etf_bench_quotes") as database, \
            tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        url = f"postgresql+psycopg://{PG_SERVER}/{database}"
        migrate(url)
        add_viewer(url)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        port = free_port()
        base = f"http://127.0.0.1:{port}"
        try:
            api = subprocess.Popen(
                [sys.executable, "-m", "api"], cwd=ROOT,
                env={**env, "ETF_POSTGRES_URL": url, "ETF_HOME": str(tmp),
                     "API_PORT": str(port), "ETF_API__JWT_SECRET": JWT_SECRET,
                     "ETF_API__WORKERS": "1", "ETF_REDIS_URL": REDIS_URL,
                     "ETF_CACHE_SECRET": uuid.uuid4().hex * 2},
                stdout=(tmp / "api.log").open("wb"), stderr=subprocess.STDOUT)
            procs.append(api)
            wait_until_up(base, api)
            rep, pub = f"tcp://127.0.0.1:{free_port()}", f"tcp://127.0.0.1:{free_port()}"
            procs.append(start(
                [sys.executable, "-m", "trading.vnpy_process", "--gateway",
                 "trading.vnpy_replay_ticks:TickReplayGateway", "--paper", "--setting-file",
                 str(write_market(tmp)), "--rep-port", rep.rsplit(":", 1)[1], "--pub-port",
                 pub.rsplit(":", 1)[1], "--state-dir", str(tmp / "venue")],
                tmp / "venue.log", "vnpy venue ready", env))
            procs.append(start(
                [sys.executable, "-m", "trading.quotes", "--rep", rep, "--pub", pub,
                 "--market", "cn_etf_morphkyan_raw", "--namespace", namespace,
                 "--redis-url", REDIS_URL, "--postgres-url", url],
                tmp / "relay.log", "quote relay ready", env))
            ws_url = base.replace("http://", "ws://") + f"/api/v1/events?token={sign_in(base)}"
            latencies: list[float] = []
            with connect(ws_url, open_timeout=30) as ws:
                first = json.loads(ws.recv(timeout=30))
                assert first["payload"]["notice"] == "subscribed", first
                client = RpcClient()
                client.callback = lambda topic, data: None
                start_client(client, rep, pub)
                try:
                    client.replay_ticks(SESSION.isoformat(), MINUTES, TICKS_PER_MINUTE,
                                        STEP_SECONDS, timeout=10_000)
                finally:
                    client.stop()
                deadline = time.monotonic() + 60 + MINUTES * TICKS_PER_MINUTE * STEP_SECONDS
                while len(latencies) < expected and time.monotonic() < deadline:
                    raw = ws.recv(timeout=max(deadline - time.monotonic(), 0.1))
                    received = dt.datetime.now(dt.UTC)
                    event = json.loads(raw)
                    if event["type"] == "quote":
                        sent = dt.datetime.fromisoformat(event["payload"]["sent_at"])
                        latencies.append((received - sent).total_seconds())
            if len(latencies) < expected:
                raise RuntimeError(f"{len(latencies)} of {expected} ticks reached the client")
        finally:
            for proc in procs:
                proc.terminate()
            for proc in procs:
                proc.wait(30)
            import redis

            r = redis.Redis.from_url(REDIS_URL)
            for key in r.scan_iter(f"{namespace}:*"):
                r.delete(key)
    base_rt = baseline(len(latencies))
    p50, p95 = percentile(latencies, 0.5), percentile(latencies, 0.95)
    b50, b95 = percentile(base_rt, 0.5), percentile(base_rt, 0.95)
    print(f"tick-to-client latency over {len(latencies)} ticks "
          f"({len(SYMBOLS)} funds, {1 / STEP_SECONDS:.0f} steps/s): "
          f"p50 {p50 * 1e3:.2f} ms, p95 {p95 * 1e3:.2f} ms, max {max(latencies) * 1e3:.2f} ms")
    print(f"baseline Redis XADD→XREAD round trip over {len(base_rt)}: "
          f"p50 {b50 * 1e3:.3f} ms, p95 {b95 * 1e3:.3f} ms")
    print(f"ratio path/baseline: p50 {p50 / b50:.1f}x, p95 {p95 / b95:.1f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
