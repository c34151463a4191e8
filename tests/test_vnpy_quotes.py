"""Real-time quotes through the vn.py venue process (issue 18 item 3).

The quote path on real services: the test venue process (``python -m trading.vnpy_process``
with :class:`trading.vnpy_replay_ticks.TickReplayGateway` and vn.py's paper account, on free
loopback ports) replays real raw daily bars of ``shared/data/cn_etf_morphkyan_raw`` as
intraday ticks on the replay clock; the quote relay (``python -m trading.quotes``) runs as a
subprocess; the ticks reach real Redis streams and a WebSocket client of the real desk API
(``python -m api`` over a scratch ledger); 1-minute bars close on the replayed minutes; a relay
killed with SIGKILL and restarted writes no bar twice. Then pre-trade risk's price band at the
reference price now (a fresh live price, else the last close) and the intraday P&L.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
import redis
from api_desk import REDIS_URL, desk
from conftest import PG_SERVER
from test_api_events import sign_in, stream_url, subscribe
from test_api_live import Live, api_env, free_port, serve_api
from test_vnpy_venue import stop_processes
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection, connect

from api.events import CHANNEL
from api.permissions import Role
from api.schemas import EventOut
from rotation.costs import CostModel
from rotation.risk import OrderCheck, RiskLimits, check_orders
from rotation.sources.files import FileMarketSource, load_dataset_spec
from trading.intraday import LastPrice
from trading.live_prices import (
    EVENT_CHANNEL,
    bar_marks_key,
    bars_key,
    checks_at_reference,
    intraday_pnl,
    last_key,
    reference_price,
    ticks_key,
)
from trading.paper import SHANGHAI
from trading.vnpy_replay_ticks import price_path

ROOT = Path(__file__).resolve().parents[1]
DATASET = ROOT / "config" / "datasets" / "cn_etf_morphkyan_raw.yaml"
SYMBOLS = ("510300", "510500")
SESSION = dt.date(2025, 6, 11)
V1 = "/api/v1"
WAIT = 30.0
MARKET = "cn_etf_morphkyan_raw"


# -- the services --------------------------------------------------------------------------------

@dataclass
class Venue:
    rep: str
    pub: str
    proc: subprocess.Popen[bytes]
    log: Path

    def call(self, name: str, *args: Any) -> Any:
        from trading.vnpy_api import RpcClient, start_client

        client = RpcClient()
        client.callback = lambda topic, data: None
        start_client(client, self.rep, self.pub)
        try:
            return getattr(client, name)(*args, timeout=10_000)
        finally:
            client.stop()


def _wait_in_log(log: Path, text: str, proc: subprocess.Popen[bytes], offset: int = 0) -> None:
    deadline = time.monotonic() + 60
    while text not in log.read_bytes()[offset:].decode(errors="replace"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"{text!r} not in {log} (exit {proc.poll()}):\n"
                                 f"{log.read_text()[-3000:]}")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def venue_setting(shared_data: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The replay gateway's setting over the real raw bars of two funds (a temporary copy)."""
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(DATASET))
    bars = source.load(dt.date(2025, 6, 1), SESSION).bars
    bars = bars.assign(symbol=bars["symbol"].astype(str))
    bars = bars.loc[bars["symbol"].isin(SYMBOLS)].reset_index(drop=True)
    assert {(s, SESSION) for s in SYMBOLS} <= {(str(s), d.date()) for s, d in
                                                zip(bars["symbol"], bars["date"], strict=True)}
    folder = tmp_path_factory.mktemp("quote_market")
    bars[["date", "symbol", "open", "high", "low", "close", "volume"]].to_parquet(
        folder / "bars.parquet")
    instruments = {i.symbol: {"exchange": i.exchange, "price_limit": i.price_limit}
                   for i in source.instruments() if i.symbol in SYMBOLS}
    (folder / "gateway.json").write_text(json.dumps(
        {"bars": str(folder / "bars.parquet"), "instruments": instruments, "account": "quotes",
         "cash": 1_000_000.0}))
    return folder / "gateway.json"


def launch_venue(setting: Path, state: Path, rep_port: int, pub_port: int) -> Venue:
    """The test venue process with intraday ticks; returns once its RPC service is up."""
    state.mkdir(parents=True, exist_ok=True)
    log = state / "venue.log"
    offset = log.stat().st_size if log.exists() else 0
    with log.open("ab") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "trading.vnpy_process",
             "--gateway", "trading.vnpy_replay_ticks:TickReplayGateway", "--paper",
             "--setting-file", str(setting), "--rep-port", str(rep_port),
             "--pub-port", str(pub_port), "--state-dir", str(state)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT)})
    venue = Venue(f"tcp://127.0.0.1:{rep_port}", f"tcp://127.0.0.1:{pub_port}", proc, log)
    try:
        _wait_in_log(log, "vnpy venue ready", proc, offset)
    except AssertionError:
        stop_processes([proc])
        raise
    return venue


@pytest.fixture(scope="module")
def venue(venue_setting: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Venue]:
    v = launch_venue(venue_setting, tmp_path_factory.mktemp("quote_venue"), free_port(),
                     free_port())
    yield v
    stop_processes([v.proc])


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """``python -m api`` over a scratch ledger (the quote relay notifies its event channel)."""
    with desk(tmp_path_factory.mktemp("quotes_api_home"), login_attempts=1000) as d:
        log = tmp_path_factory.mktemp("quotes_api_log") / "server.log"
        with serve_api(api_env(d, API_PORT=str(free_port())), log) as url:
            yield Live(url, d, log)


@pytest.fixture
def namespace() -> Iterator[str]:
    ns = f"test-quotes-{uuid.uuid4().hex[:10]}"
    yield ns
    client = redis.Redis.from_url(REDIS_URL)
    for key in client.scan_iter(f"{ns}:*"):
        client.delete(key)


class Relay:
    """``python -m trading.quotes`` as a subprocess, restartable."""

    def __init__(self, venue: Venue, namespace: str, postgres: str, log: Path) -> None:
        self.cmd = [sys.executable, "-m", "trading.quotes", "--rep", venue.rep, "--pub",
                    venue.pub, "--market", MARKET, "--namespace", namespace,
                    "--redis-url", REDIS_URL, "--postgres-url", postgres,
                    "--probe-seconds", "1"]
        self.log = log
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        offset = self.log.stat().st_size if self.log.exists() else 0
        with self.log.open("ab") as out:
            self.proc = subprocess.Popen(self.cmd, cwd=ROOT, stdout=out,
                                         stderr=subprocess.STDOUT,
                                         env={**os.environ, "PYTHONPATH": str(ROOT)})
        _wait_in_log(self.log, "quote relay ready: 2 funds subscribed", self.proc, offset)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None:
            stop_processes([self.proc])


@pytest.fixture
def relay(venue: Venue, api: Live, namespace: str, tmp_path: Path) -> Iterator[Relay]:
    assert api.desk.settings.postgres_url is not None
    r = Relay(venue, namespace, api.desk.settings.postgres_url, tmp_path / "relay.log")
    r.start()
    yield r
    r.stop()
    print(f"relay log:\n{r.log.read_text()[-3000:]}\nvenue log:\n"
          f"{venue.log.read_text()[-3000:]}")


def _stream(client: redis.Redis, key: str) -> list[dict[str, str]]:
    return [{k.decode(): v.decode() for k, v in fields.items()}
            for _, fields in client.xrange(key)]


def _wait_len(client: redis.Redis, key: str, n: int) -> list[dict[str, str]]:
    deadline = time.monotonic() + WAIT
    while client.xlen(key) < n:
        assert time.monotonic() < deadline, f"{key}: {client.xlen(key)} entries, want {n}"
        time.sleep(0.05)
    return _stream(client, key)


def _events(ws: ClientConnection, want: dict[str, int]) -> dict[str, list[EventOut]]:
    got: dict[str, list[EventOut]] = {k: [] for k in want}
    deadline = time.monotonic() + WAIT
    while any(len(got[k]) < n for k, n in want.items()):
        left = deadline - time.monotonic()
        assert left > 0, {k: len(v) for k, v in got.items()}
        event = EventOut.model_validate_json(ws.recv(timeout=left))
        if event.type in got:
            got[event.type].append(event)
    return got


# -- the quote path ------------------------------------------------------------------------------

def test_the_relay_uses_the_api_event_channel() -> None:
    assert EVENT_CHANNEL == CHANNEL


def test_ticks_reach_redis_and_the_websocket_and_bars_close_each_minute(
        venue: Venue, api: Live, relay: Relay, namespace: str, shared_data: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    token = sign_in(api, Role.VIEWER)
    with subscribe(api, token) as ws, \
            connect(stream_url(api, token) + "&types=bar", open_timeout=WAIT) as bars_only:
        assert EventOut.model_validate_json(bars_only.recv(timeout=WAIT)).type == "notice"
        assert sorted(venue.call("subscribed_symbols")) == list(SYMBOLS)
        # 3 replayed minutes of 4 ticks: 2 minutes close (the third has no later tick yet).
        count = venue.call("replay_ticks", SESSION.isoformat(), 3, 4, 0.02)
        assert count == 3 * 4 * len(SYMBOLS)
        ticks = _wait_len(client, ticks_key(namespace), count)
        bars = _wait_len(client, bars_key(namespace), 2 * len(SYMBOLS))
        events = _events(ws, {"quote": count, "bar": 2 * len(SYMBOLS)})
        # A client that asked for bars only gets the bars, no tick.
        only = [EventOut.model_validate_json(bars_only.recv(timeout=WAIT))
                for _ in range(2 * len(SYMBOLS))]
        assert [e.type for e in only] == ["bar"] * 2 * len(SYMBOLS)
        with pytest.raises(TimeoutError):
            bars_only.recv(timeout=0.5)

    quotes = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(DATASET))
    daily = quotes.load(SESSION, SESSION).bars
    for symbol in SYMBOLS:
        row = daily.loc[daily["symbol"].astype(str) == symbol].iloc[0]
        path = price_path(row["open"], row["high"], row["low"], row["close"], 12)
        mine = [t for t in ticks if t["symbol"] == symbol]
        assert [float(t["price"]) for t in mine] == path
        assert [dt.datetime.fromisoformat(t["venue_time"]) for t in mine] == [
            dt.datetime.combine(SESSION, dt.time(9, 30), SHANGHAI) + dt.timedelta(seconds=15 * i)
            for i in range(12)]
        for t in mine:
            assert float(t["bid"]) < float(t["price"]) < float(t["ask"])
            assert dt.datetime.fromisoformat(t["sent_at"]) <= \
                dt.datetime.fromisoformat(t["received_at"])
        # Each bar is its minute's ticks.
        my_bars = [b for b in bars if b["symbol"] == symbol]
        assert [b["minute"] for b in my_bars] == [
            dt.datetime.combine(SESSION, dt.time(9, m), SHANGHAI).isoformat() for m in (30, 31)]
        for b, minute in zip(my_bars, (path[0:4], path[4:8]), strict=True):
            assert (float(b["open"]), float(b["high"]), float(b["low"]), float(b["close"])) == \
                (minute[0], max(minute), min(minute), minute[-1])
        # The live last price the intraday monitor and pre-trade risk read.
        last = json.loads(client.hget(last_key(namespace, MARKET), symbol) or b"{}")
        assert last == {"price": path[-1], "at": mine[-1]["venue_time"]}
        # The WebSocket client saw every tick and bar, in order.
        seen = [e for e in events["quote"] if e.id == symbol]
        assert [e.payload["price"] for e in seen] == path
        assert all(e.entity == "quotes" and e.payload["symbol"] == symbol for e in seen)
        assert [e.payload["minute"] for e in events["bar"] if e.id == symbol] == \
            [b["minute"] for b in my_bars]


def test_a_killed_relay_restarted_duplicates_no_bar(
        venue: Venue, relay: Relay, namespace: str) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    venue.call("replay_ticks", SESSION.isoformat(), 3, 4, 0.0)
    _wait_len(client, bars_key(namespace), 2 * len(SYMBOLS))
    _wait_len(client, ticks_key(namespace), 12 * len(SYMBOLS))
    relay.kill()
    relay.start()
    # The same session replayed again, one minute further: minutes 09:30 and 09:31 are in the
    # stream already; only 09:32 is new.
    venue.call("replay_ticks", SESSION.isoformat(), 4, 4, 0.0)
    _wait_len(client, ticks_key(namespace), 12 * len(SYMBOLS) + 16 * len(SYMBOLS))
    bars = _wait_len(client, bars_key(namespace), 3 * len(SYMBOLS))
    time.sleep(0.5)   # nothing more arrives
    bars = _stream(client, bars_key(namespace))
    keys = [(b["symbol"], b["minute"]) for b in bars]
    assert len(keys) == len(set(keys)) == 3 * len(SYMBOLS), keys
    assert {m for _, m in keys} == {
        dt.datetime.combine(SESSION, dt.time(9, m), SHANGHAI).isoformat() for m in (30, 31, 32)}
    marks = {k.decode(): v.decode() for k, v in
             client.hgetall(bar_marks_key(namespace)).items()}
    assert marks == {s: dt.datetime.combine(SESSION, dt.time(9, 32), SHANGHAI).isoformat()
                     for s in SYMBOLS}


def test_the_relay_subscribes_again_at_a_venue_process_restarted(
        venue_setting: Path, api: Live, namespace: str, tmp_path: Path) -> None:
    client = redis.Redis.from_url(REDIS_URL)
    rep_port, pub_port = free_port(), free_port()
    first = launch_venue(venue_setting, tmp_path / "venue", rep_port, pub_port)
    assert api.desk.settings.postgres_url is not None
    relay = Relay(first, namespace, api.desk.settings.postgres_url, tmp_path / "relay.log")
    second: Venue | None = None
    try:
        relay.start()
        first.call("replay_ticks", SESSION.isoformat(), 1, 4, 0.0)
        _wait_len(client, ticks_key(namespace), 4 * len(SYMBOLS))
        first.proc.send_signal(signal.SIGKILL)
        first.proc.wait(10)
        second = launch_venue(venue_setting, tmp_path / "venue", rep_port, pub_port)
        # The relay's probe (every second) finds the feed quiet and subscribes again.
        deadline = time.monotonic() + WAIT
        while sorted(second.call("subscribed_symbols")) != list(SYMBOLS):
            assert time.monotonic() < deadline, relay.log.read_text()[-3000:]
            time.sleep(0.2)
        second.call("replay_ticks", SESSION.isoformat(), 1, 4, 0.0)
        ticks = _wait_len(client, ticks_key(namespace), 8 * len(SYMBOLS))
        assert relay.proc is not None and relay.proc.poll() is None
        assert len(ticks) == 8 * len(SYMBOLS)
    finally:
        relay.stop()
        if second is not None:
            stop_processes([second.proc])


def test_without_the_ledger_the_ticks_still_reach_redis(
        venue: Venue, namespace: str, tmp_path: Path) -> None:
    """Redis is the record: a PostgreSQL that refuses costs the event stream only, named in the
    log once per retry period, not once per tick."""
    client = redis.Redis.from_url(REDIS_URL)
    missing = f"postgresql+psycopg://{PG_SERVER}/no_such_ledger_{uuid.uuid4().hex[:8]}"
    relay = Relay(venue, namespace, missing, tmp_path / "relay.log")
    try:
        relay.start()
        venue.call("replay_ticks", SESSION.isoformat(), 2, 4, 0.0)
        _wait_len(client, ticks_key(namespace), 8 * len(SYMBOLS))
        _wait_len(client, bars_key(namespace), len(SYMBOLS))
        assert relay.proc is not None and relay.proc.poll() is None
    finally:
        relay.stop()
    warnings = [line for line in relay.log.read_text().splitlines()
                if "not sent to the API's event stream" in line]
    assert len(warnings) == 1, warnings
    assert "no_such_ledger_" in warnings[0] and "retrying in 5 s" in warnings[0]


def test_the_relay_names_a_fund_the_venue_does_not_know(
        venue: Venue, namespace: str, tmp_path: Path) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "trading.quotes", "--rep", venue.rep, "--pub", venue.pub,
         "--market", MARKET, "--namespace", namespace, "--redis-url", REDIS_URL,
         "--symbols", "510300,999999"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
        env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.returncode != 0
    assert "knows no fund ['999999']" in done.stderr, done.stderr


def test_an_unknown_event_type_closes_the_stream_naming_it(api: Live) -> None:
    url = stream_url(api, sign_in(api, Role.VIEWER)) + "&types=bar,tick"
    with connect(url, open_timeout=WAIT) as ws, pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=WAIT)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4400
    assert "unknown event types ['tick']" in closed.value.rcvd.reason


# -- pre-trade risk at the reference price now ---------------------------------------------------

NOW = dt.datetime(2025, 6, 11, 10, 0, tzinfo=SHANGHAI)
CLOSE = {"510300": 4.0}
LIMITS = RiskLimits()


def _check(checks: list[OrderCheck]) -> tuple[list[OrderCheck],
                                               list[tuple[OrderCheck, Any]]]:
    return check_orders(checks, last_close=CLOSE, limit_up_close=[], limit_down_close=[],
                        halted=[], committed_notional=0.0, equity=10_000_000.0,
                        positions_value_after=4_000.0, limits=LIMITS)


def _buy() -> OrderCheck:
    return OrderCheck(order_id="o1", symbol="510300", side="buy", quantity=1000,
                      reference_price=4.0, closes_position=False, held_before=0)


def test_a_fresh_tick_outside_the_band_rejects_what_the_close_passes() -> None:
    band = LIMITS.price_band
    far = round(4.0 * (1 + band + 0.02), 3)
    fresh = {"510300": LastPrice(far, NOW - dt.timedelta(seconds=5))}
    accepted, _ = _check(checks_at_reference([_buy()], now=NOW, last_close=CLOSE, live={}))
    assert [c.order_id for c in accepted] == ["o1"]
    checks = checks_at_reference([_buy()], now=NOW, last_close=CLOSE, live=fresh)
    accepted, rejected = _check(checks)
    assert accepted == []
    assert [v.rule for _, v in rejected] == ["price_band"]
    message = rejected[0][1].message
    assert f"reference price {far:.3f} (live last price {far:.3f} at " \
           f"{(NOW - dt.timedelta(seconds=5)).isoformat()})" in message, message
    assert "from the last close 4.000" in message


def test_a_stale_tick_outside_the_band_falls_back_to_the_close() -> None:
    far = round(4.0 * (1 + LIMITS.price_band + 0.02), 3)
    stale = {"510300": LastPrice(far, NOW - dt.timedelta(seconds=31))}
    accepted, rejected = _check(checks_at_reference(
        [_buy()], now=NOW, last_close=CLOSE, live=stale, max_age=dt.timedelta(seconds=30)))
    assert [c.order_id for c in accepted] == ["o1"] and rejected == []
    assert accepted[0].reference_source == "last close 4.000"
    # And the reverse: a fresh tick inside the band passes an order whose close-based price
    # would not (the close moved out of the band, the live price is back inside it).
    wide = OrderCheck(order_id="o2", symbol="510300", side="buy", quantity=1000,
                      reference_price=4.6, closes_position=False, held_before=0)
    _, rejected = _check([wide])
    assert [v.rule for _, v in rejected] == ["price_band"]
    near = {"510300": LastPrice(4.05, NOW - dt.timedelta(seconds=1))}
    accepted, rejected = _check(checks_at_reference([wide], now=NOW, last_close=CLOSE,
                                                    live=near))
    assert [c.reference_price for c in accepted] == [4.05] and rejected == []


def test_the_reference_price_needs_a_time_with_offset_and_ignores_future_ticks() -> None:
    with pytest.raises(ValueError, match="needs its offset"):
        reference_price("510300", now=NOW.replace(tzinfo=None), last_close=CLOSE, live={})
    ahead = {"510300": LastPrice(4.2, NOW + dt.timedelta(seconds=5))}
    ref = reference_price("510300", now=NOW, last_close=CLOSE, live=ahead)
    assert ref is not None and (ref.source, ref.price) == ("close", 4.0)
    assert reference_price("510500", now=NOW, last_close=CLOSE, live={}) is None


# -- intraday P&L --------------------------------------------------------------------------------

def test_intraday_pnl_marks_positions_at_fresh_live_prices() -> None:
    live = {"510300": LastPrice(4.1, NOW - dt.timedelta(seconds=2)),
            "510500": LastPrice(6.0, NOW - dt.timedelta(minutes=5))}
    pnl = intraday_pnl({"510300": 1000, "510500": 200}, {"510300": 4.0, "510500": 5.5}, live,
                       realised=-12.5, now=NOW)
    assert pnl.unrealised == pytest.approx({"510300": 100.0, "510500": 0.0})
    assert pnl.total == pytest.approx(87.5)
    assert pnl.stale == ("510500",)
    with pytest.raises(ValueError, match=r"510500 is held .* no previous close"):
        intraday_pnl({"510500": 100}, {}, {}, 0.0, now=NOW)


# -- the executor checks at the reference price now (a real ledger, the paper broker) ------------

def test_the_executor_rejects_at_a_fresh_tick_and_passes_at_a_stale_one(ledger_url: str) -> None:
    from trading.executor import MarketView, execute_signal
    from trading.ledger import Ledger, SignalRecord
    from trading.models import OrderStatus, Quote, SignalStatus, signal_id_of, weights_hash
    from trading.paper import FrameQuotes, PaperBroker

    day, session = dt.date(2025, 6, 10), SESSION
    weights = {"510300": 0.5}
    costs = CostModel()
    limits = RiskLimits(max_weight=1.0, max_order_notional=2_000_000.0,
                        max_daily_notional=5_000_000.0)
    book = Ledger(ledger_url)
    book.migrate()
    broker = PaperBroker(ledger_url, FrameQuotes(pd.DataFrame(
        columns=["date", "symbol", "open", "high", "low", "close", "volume"])), costs)
    far = round(4.0 * (1 + limits.price_band + 0.02), 3)
    outcome = {}
    try:
        for account, age in (("acct-fresh", 5), ("acct-stale", 120)):
            book.open_account(account, 1_000_000.0, actor="test")
            sid = signal_id_of("quotes", account, day, weights)
            book.record_signal(SignalRecord(
                signal_id=sid, account_id=account, strategy="quotes", as_of=day,
                weights=weights, weights_hash=weights_hash(weights),
                status=SignalStatus.APPROVED, reasons=[], data_version=None,
                dagster_run_id=None), actor="test")
            view = MarketView(
                signal_day=day, order_session=session, closed_through=day,
                quotes={"510300": Quote(symbol="510300", session=day, open=4.0, high=4.0,
                                        low=4.0, close=4.0, volume=1e6, previous_close=4.0,
                                        price_limit=0.10)},
                average_amount={"510300": 5e9}, now=NOW,
                live={"510300": LastPrice(far, NOW - dt.timedelta(seconds=age))})
            execute_signal(ledger=book, venue=broker, signal_id=sid, account_id=account,
                           market=view, limits=limits, costs=costs, actor="test")
            (order,) = book.orders(signal_id=sid)
            outcome[account] = order
    finally:
        book.dispose()
    rejected = outcome["acct-fresh"]
    assert rejected.status is OrderStatus.REJECTED
    assert "price_band" in str(rejected.reason)
    assert f"live last price {far:.3f} at {(NOW - dt.timedelta(seconds=5)).isoformat()}" \
        in str(rejected.reason), rejected.reason
    assert outcome["acct-stale"].status is OrderStatus.SUBMITTED, outcome["acct-stale"].reason


# -- the relay from the settings (python -m orchestration.quotes, the deploy/ service) ----------

# A database of its own: the launcher writes the deployment's namespace (etf), not a test one.
LAUNCHER_REDIS = REDIS_URL.rsplit("/", 1)[0] + "/9"


def test_the_relay_launcher_names_a_missing_setting(make_settings: Any) -> None:
    from orchestration.quotes import relay_argv

    with pytest.raises(SystemExit) as ports:
        relay_argv(make_settings(redis_url=REDIS_URL, cache_secret="x" * 32,
                                 execution={"vnpy": {"rep_port": 3014}}))
    assert ("orchestration.quotes: execution.vnpy.pub_port [env ETF_EXECUTION__VNPY__PUB_PORT] "
            "is not set") in str(ports.value)
    with pytest.raises(SystemExit) as no_redis:
        relay_argv(make_settings(execution={"vnpy": {"rep_port": 3014, "pub_port": 3015}}))
    assert "redis_url [env ETF_REDIS_URL] is not set" in str(no_redis.value)


def test_the_relays_streams_keep_what_a_vwap_profile_reads() -> None:
    """The launcher sizes the streams for the VWAP profile's sessions of minute bars of every
    fund (a profile learned from fewer sessions than configured would fail or mislead)."""
    from orchestration.quotes import stream_length
    from trading.quotes import DEFAULT_MAXLEN
    from trading.session_clock import SESSION_MINUTES

    assert SESSION_MINUTES == 240
    assert stream_length(3, 20) == DEFAULT_MAXLEN
    assert stream_length(1000, 20) == 1000 * 240 * 21


def test_the_relay_launcher_feeds_what_execution_reads(
        venue: Venue, shared_data: Path, tmp_path: Path) -> None:
    """``python -m orchestration.quotes`` from settings (environment only, as in deploy/):
    subscribes the strategy's universe at the venue process and sets the live prices in the
    hash the execution job and the intraday monitor read (LiveQuotesResource, the market of
    the deployment's strategy)."""
    from conftest import TEST_CACHE_SECRET

    from orchestration.definitions import strategy_for
    from orchestration.settings import load_settings
    from resources.live_quotes import LiveQuotesResource

    rep_port, pub_port = venue.rep.rsplit(":", 1)[1], venue.pub.rsplit(":", 1)[1]
    env = {"ETF_HOME": str(tmp_path / "home"), "ETF_REDIS_URL": LAUNCHER_REDIS,
           "ETF_CACHE_SECRET": TEST_CACHE_SECRET,
           "ETF_MARKET_DATA__SOURCE": "files", "ETF_MARKET_DATA__DATASET": MARKET,
           "ETF_MARKET_DATA__FILES_ROOT": str(shared_data / MARKET),
           "ETF_EXECUTION__VNPY__REP_PORT": rep_port, "ETF_EXECUTION__VNPY__PUB_PORT": pub_port}
    settings = load_settings(home=tmp_path / "home", redis_url=LAUNCHER_REDIS,
                             cache_secret=TEST_CACHE_SECRET,
                             market_data={"source": "files", "dataset": MARKET,
                                          "files_root": str(shared_data / MARKET)})
    market = strategy_for(settings).market.name
    quotes = LiveQuotesResource(url=LAUNCHER_REDIS)
    client = redis.Redis.from_url(LAUNCHER_REDIS)
    stale = [quotes.key(market), "etf:quotes:ticks", "etf:quotes:bars", "etf:quotes:bar_marks"]
    client.delete(*stale)
    log = tmp_path / "launcher.log"
    with log.open("ab") as out:
        proc = subprocess.Popen([sys.executable, "-m", "orchestration.quotes"], cwd=ROOT,
                                stdout=out, stderr=subprocess.STDOUT,
                                env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    try:
        _wait_in_log(log, "quote relay ready: 2 funds subscribed", proc)
        assert "redis://" not in " ".join(str(a) for a in proc.args)
        venue.call("replay_ticks", SESSION.isoformat(), 1, 4, 0.0)
        ticks = _wait_len(client, "etf:quotes:ticks", 4 * len(SYMBOLS))
        live, problems = quotes.last_prices(market)
        assert problems == [] and sorted(live) == list(SYMBOLS)
        for symbol, price in live.items():
            newest = [t for t in ticks if t["symbol"] == symbol][-1]
            assert (price.price, price.at.isoformat()) == (float(newest["price"]),
                                                           newest["venue_time"])
    finally:
        stop_processes([proc])
        client.delete(*stale)
