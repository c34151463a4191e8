"""The vn.py venue (issue 18) over vn.py's real RPC against the test venue process: the venue
contract (trading.contract); faults, each ending with the venue's book consistent with its
fills and no order sent twice: the venue process killed with SIGKILL between an order's arrival
and its acknowledgement, the RPC link losing the answer to an order and going down, a cancel
racing the fill, and the executor on a real ledger with the venue process killed after its
first order; partial fills (the test venue's participation cap leaves orders partly filled and
open): cancelled with the executor's ledger kept the venue's, a cancel racing the fill of the
remainder, and a process killed in the middle of a session and after it (a closed session
stays closed); and the process and client built from the settings (deploy/'s command).

Every account is a venue process of its own (``python -m trading.vnpy_process`` with the replay
gateway and vn.py's paper account, on free loopback ports, in a temporary state folder), as a
broker login is one account. The replayed bars are the real raw bars of
``shared/data/cn_etf_morphkyan_raw`` that the paper broker's contract test uses (same sessions,
funds and blocked cases: see tests/test_venue_contract.py), written once to a temporary parquet
file the processes read.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as dt
import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from demo_home import free_port

# The paper broker's contract case: the same market, funds, sessions and costs.
from test_venue_contract import (
    CASH,
    COSTS,
    DATASET,
    PREVIOUS,
    SESSION,
    SYMBOLS,
    RealMarket,
    make_env,
    market,  # noqa: F401  (the fixture: the same real market, checked there)
)

from orchestration.settings import load_settings
from orchestration.vnpy_venue import vnpy_venue
from rotation.risk import RiskLimits
from rotation.sources.files import FileMarketSource, load_dataset_spec
from trading.contract import VenueContract, VenueEnv
from trading.executor import MarketView, execute_signal
from trading.ledger import Ledger, SignalRecord
from trading.models import (
    Fill,
    OrderRequest,
    OrderStatus,
    Side,
    SignalStatus,
    VenueOrder,
    signal_id_of,
    weights_hash,
)
from trading.paper import SHANGHAI, FrameQuotes
from trading.venue import VenueError
from trading.vnpy_venue import VnpyEndpoint, VnpyVenue

ROOT = Path(__file__).resolve().parents[1]
READY = "vnpy venue ready"


@dataclass
class ReplayMarket:
    """The contract test's real market (tests/test_venue_contract.py), as the venue processes
    read it: its bars in a parquet file, its funds' instruments in the gateway setting."""

    real: RealMarket
    bars_file: Path
    instruments: dict[str, dict[str, object]]

    def reference_price(self, symbol: str, session: dt.date) -> float:
        return self.real.reference_price(symbol, session)


@pytest.fixture(scope="module")
def replay_market(market: RealMarket, shared_data: Path,  # noqa: F811
                  tmp_path_factory: pytest.TempPathFactory) -> ReplayMarket:
    source = FileMarketSource(shared_data / "cn_etf_morphkyan_raw", load_dataset_spec(DATASET))
    bars = market.bars.assign(symbol=market.bars["symbol"].astype(str))
    path = tmp_path_factory.mktemp("replay") / "bars.parquet"
    bars[["date", "symbol", "open", "high", "low", "close", "volume", "adj_factor"]] \
        .to_parquet(path)
    wanted = set(bars["symbol"])
    instruments: dict[str, dict[str, object]] = {
        i.symbol: {"exchange": i.exchange, "price_limit": i.price_limit,
                   "same_session_sell": i.same_session_sell,
                   "sale_cash_same_day": i.sale_cash_same_day}
        for i in source.instruments() if i.symbol in wanted}
    assert set(instruments) == wanted
    return ReplayMarket(real=market, bars_file=path, instruments=instruments)


@dataclass
class VenueProcess:
    account_id: str
    state_dir: Path
    rep_port: int
    pub_port: int
    proc: subprocess.Popen[bytes] | None

    @property
    def endpoint(self) -> VnpyEndpoint:
        return VnpyEndpoint(self.account_id, f"tcp://127.0.0.1:{self.rep_port}",
                            f"tcp://127.0.0.1:{self.pub_port}")

    @property
    def log(self) -> Path:
        return self.state_dir / "venue.log"


@dataclass
class VenueProcesses:
    """Starts venue processes (the command of trading.vnpy_process) and stops them all."""

    market: ReplayMarket
    root: Path
    started: list[VenueProcess] = field(default_factory=list)

    def setting(self, account_id: str, cash: float, unlisted: frozenset[str] = frozenset(),
                state: Path | None = None, participation: float | None = None
                ) -> dict[str, object]:
        """The replay gateway's setting for an account with ``cash`` (``unlisted``: funds
        the venue does not offer, left out of its bars, written to ``state``;
        ``participation``: the share of a bar's volume an order may take)."""
        bars_file = self.market.bars_file
        if unlisted:
            assert state is not None
            import pandas as pd

            bars = pd.read_parquet(bars_file)
            bars_file = state / "bars.parquet"
            bars.loc[~bars["symbol"].isin(unlisted)].to_parquet(bars_file)
        instruments = {s: i for s, i in self.market.instruments.items() if s not in unlisted}
        return {"bars": str(bars_file), "instruments": instruments,
                "account": account_id, "cash": cash, "costs": dataclasses.asdict(COSTS),
                "participation": participation}

    def start(self, account_id: str, cash: float, *, ack_delay: float = 0.0,
              like: VenueProcess | None = None, unlisted: frozenset[str] = frozenset(),
              participation: float | None = None) -> VenueProcess:
        """A venue process for ``account_id`` (or ``like``'s, restarted on its state folder and
        ports); returns once its RPC service is up."""
        state = like.state_dir if like else self.root / account_id
        state.mkdir(parents=True, exist_ok=True)
        setting = state / "gateway.json"
        setting.write_text(json.dumps(self.setting(account_id, cash, unlisted, state,
                                                   participation)))
        rep, pub = (like.rep_port, like.pub_port) if like else (free_port(), free_port())
        cmd = [sys.executable, "-m", "trading.vnpy_process",
               "--gateway", "trading.vnpy_replay:ReplayGateway", "--paper",
               "--setting-file", str(setting), "--rep-port", str(rep), "--pub-port", str(pub),
               "--state-dir", str(state)]
        if ack_delay:
            cmd += ["--ack-delay", str(ack_delay)]
        return self.launch(VenueProcess(account_id, state, rep, pub, None), cmd, {})

    def launch(self, venue: VenueProcess, cmd: list[str], env: dict[str, str]
               ) -> VenueProcess:
        self.started.append(venue)
        return launch_venue(venue, cmd, env)

    def stop_all(self) -> None:
        stop_venues(self.started)


def launch_venue(venue: VenueProcess, cmd: list[str], env: dict[str, str]) -> VenueProcess:
    """Run ``cmd`` as ``venue``'s process (its log in the state folder); returns once its RPC
    service is up."""
    venue.state_dir.mkdir(parents=True, exist_ok=True)
    offset = venue.log.stat().st_size if venue.log.exists() else 0
    with open(venue.log, "ab") as log:
        venue.proc = subprocess.Popen(
            cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
            env={**os.environ, "PYTHONPATH": str(ROOT), **env})
    deadline = time.monotonic() + 60
    while READY not in venue.log.read_bytes()[offset:].decode(errors="replace"):
        if venue.proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(f"venue process for {venue.account_id} did not start "
                                 f"(exit {venue.proc.poll()}):\n"
                                 f"{venue.log.read_text()[-3000:]}")
        time.sleep(0.05)
    return venue


def stop_venues(venues: list[VenueProcess]) -> None:
    """SIGTERM to every venue process still running, SIGKILL to any not gone in 10 s."""
    stop_processes([v.proc for v in venues if v.proc is not None])


def stop_processes(procs: list[subprocess.Popen[bytes]]) -> None:
    """SIGTERM to every process still running, SIGKILL to any not gone in 10 s."""
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
    for proc in procs:
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


@pytest.fixture(scope="module")
def processes(replay_market: ReplayMarket, tmp_path_factory: pytest.TempPathFactory
              ) -> Iterator[VenueProcesses]:
    procs = VenueProcesses(replay_market, tmp_path_factory.mktemp("venues"))
    yield procs
    procs.stop_all()


@pytest.fixture(scope="module")
def venue() -> Iterator[VnpyVenue]:
    v = VnpyVenue([], COSTS, rpc_timeout=10.0, ack_timeout=5.0, replay_clock=True)
    yield v
    v.close()


class TestVnpyVenueContract(VenueContract):
    @pytest.fixture
    def venue_env(self, venue: VnpyVenue, processes: VenueProcesses,
                  replay_market: ReplayMarket) -> VenueEnv:
        return make_env(venue, replay_market.real, lambda account, cash: venue.add_endpoint(
            processes.start(account, cash).endpoint))


def _orders_with(state_dir: Path, cid: str) -> list[dict[str, object]]:
    state = json.loads((state_dir / "replay_state.json").read_text())
    return [o for o in state["orders"].values() if o["reference"] == cid]


def test_sigkill_before_acknowledgement_then_resubmit_is_not_doubled(
        processes: VenueProcesses, replay_market: ReplayMarket) -> None:
    account = f"kill-{uuid.uuid4().hex[:12]}"
    # The venue holds each acknowledgement 30 s after the order is in its journal: the kill
    # lands after the order reached the venue and before the client read the answer.
    first = processes.start(account, CASH, ack_delay=30.0)
    venue = VnpyVenue([first.endpoint], COSTS, rpc_timeout=4.0, ack_timeout=5.0,
                      replay_clock=True)
    try:
        venue.open_account(account, CASH)
        symbol, qty = SYMBOLS[0], 1000
        req = OrderRequest(client_order_id=f"o-kill-{uuid.uuid4().hex[:16]}",
                           account_id=account, symbol=symbol, side=Side.BUY, quantity=qty,
                           session=SESSION, reference_price=replay_market.reference_price(symbol,
                                                                                   SESSION))
        outcome: dict[str, BaseException | object] = {}

        def send() -> None:
            try:
                outcome["state"] = venue.submit(req)
            except BaseException as exc:   # the test inspects it below
                outcome["error"] = exc

        sender = threading.Thread(target=send)
        sender.start()
        journal = first.state_dir / "order_journal.jsonl"
        deadline = time.monotonic() + 20
        while not (journal.is_file() and req.client_order_id in journal.read_text()):
            assert time.monotonic() < deadline, "the order never reached the venue's journal"
            time.sleep(0.02)
        assert first.proc is not None
        os.kill(first.proc.pid, signal.SIGKILL)
        assert first.proc.wait(10) == -signal.SIGKILL
        sender.join(30)
        assert not sender.is_alive()
        error = outcome.get("error")
        assert isinstance(error, VenueError), outcome
        assert req.client_order_id in str(error)
        assert "state" not in outcome

        # Restarted on its state folder and ports; the client reconnects and resubmits.
        processes.start(account, CASH, like=first)
        state = venue.submit(req)
        assert state.client_order_id == req.client_order_id
        assert state.status is OrderStatus.SUBMITTED and state.quantity == qty, state
        assert venue.submit(req) == state
        assert len(_orders_with(first.state_dir, req.client_order_id)) == 1
        fills = venue.fills(account, SESSION)
        own = [f for f in fills if f.client_order_id == req.client_order_id]
        assert len(own) == 1 and own[0].quantity == qty, fills
        done = venue.order(req.client_order_id)
        assert done is not None and done.status is OrderStatus.FILLED
        assert done.filled_quantity == qty and done.average_price == own[0].price
        assert venue.positions(account) == {symbol: qty}
        assert venue.cash(account) == pytest.approx(
            CASH - qty * own[0].price - own[0].commission, abs=1e-6)
        assert len(_orders_with(first.state_dir, req.client_order_id)) == 1
        lines = [json.loads(x) for x in journal.read_text().splitlines() if x.strip()]
        assert [x["reference"] for x in lines].count(req.client_order_id) == 1
    finally:
        venue.close()


def test_the_venue_process_of_the_settings(processes: VenueProcesses, shared_data: Path,
                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """deploy/'s command, ``python -m orchestration.vnpy_venue``: the process and the client
    from ETF_EXECUTION__VNPY__* (the gateway's setting, a secret, never on a command line), the
    test venue replaying the stored dataset itself; SIGTERM stops it cleanly."""
    account = "paper-main"
    state = processes.root / f"settings-{uuid.uuid4().hex[:8]}"
    rep, pub = free_port(), free_port()
    env = {"ETF_EXECUTION__ACCOUNT_ID": account,
           "ETF_EXECUTION__VNPY__GATEWAY": "trading.vnpy_replay:ReplayGateway",
           "ETF_EXECUTION__VNPY__PAPER": "true",
           "ETF_EXECUTION__VNPY__GATEWAY_SETTING": json.dumps({
               "dataset": {"root": str(shared_data / "cn_etf_morphkyan_raw"),
                           "config": str(DATASET), "start": "2025-05-01", "end": "2025-07-31",
                           "symbols": list(SYMBOLS)},
               "account": account, "cash": CASH, "costs": dataclasses.asdict(COSTS)}),
           "ETF_EXECUTION__VNPY__REP_PORT": str(rep), "ETF_EXECUTION__VNPY__PUB_PORT": str(pub),
           "ETF_EXECUTION__VNPY__STATE_DIR": str(state)}
    venue_proc = processes.launch(VenueProcess(account, state, rep, pub, None),
                                  [sys.executable, "-m", "orchestration.vnpy_venue"], env)
    assert venue_proc.proc is not None
    cmdline = Path(f"/proc/{venue_proc.proc.pid}/cmdline").read_bytes().decode()
    assert "cn_etf_morphkyan_raw" not in cmdline and "orchestration.vnpy_venue" in cmdline
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    venue = vnpy_venue(load_settings(), COSTS, replay_clock=True)
    try:
        venue.open_account(account, CASH)
        symbol = SYMBOLS[1]
        req = OrderRequest(client_order_id=f"o-settings-{uuid.uuid4().hex[:12]}",
                           account_id=account, symbol=symbol, side=Side.BUY, quantity=200,
                           session=SESSION, reference_price=5.0)
        assert venue.submit(req).status is OrderStatus.SUBMITTED
        (fill,) = venue.fills(account, SESSION)
        assert (fill.client_order_id, fill.quantity, fill.session) == \
            (req.client_order_id, 200, SESSION)
        assert venue.positions(account) == {symbol: 200}
    finally:
        venue.close()
    venue_proc.proc.terminate()
    assert venue_proc.proc.wait(20) == 0


class LinkProxy:
    """A TCP relay between the venue's client and a venue process port: the RPC link that the
    fault test cuts. ``drop_replies``: what the venue sends back is lost (requests still
    arrive); ``lose_replies_after``: it starts doing so once a request carrying those bytes
    went through (b"send_order": right after an order is sent); ``cut()`` closes every relayed
    connection."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.drop_replies = False
        self.lose_replies_after: bytes | None = None
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.server.getsockname()[1])
        self.conns: list[socket.socket] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.server.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            with self.lock:
                self.conns += [client, upstream]
            threading.Thread(target=self._pump, args=(client, upstream, False),
                             daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True),
                             daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, reply: bool) -> None:
        try:
            while data := src.recv(65536):
                if not (reply and self.drop_replies):
                    dst.sendall(data)
                if not reply and self.lose_replies_after and self.lose_replies_after in data:
                    self.drop_replies = True
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.close()

    def cut(self) -> None:
        with self.lock:
            conns, self.conns = self.conns, []
        for s in conns:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    def close(self) -> None:
        self.cut()
        self.server.close()


def test_link_cut_after_the_order_arrived_then_restored_is_not_doubled(
        processes: VenueProcesses, replay_market: ReplayMarket) -> None:
    account = f"cut-{uuid.uuid4().hex[:12]}"
    proc = processes.start(account, CASH)
    rep, pub = LinkProxy(proc.rep_port), LinkProxy(proc.pub_port)
    venue = VnpyVenue([VnpyEndpoint(account, f"tcp://127.0.0.1:{rep.port}",
                                    f"tcp://127.0.0.1:{pub.port}")],
                      COSTS, rpc_timeout=2.0, ack_timeout=5.0, replay_clock=True)
    try:
        venue.open_account(account, CASH)

        def order(symbol: str, tag: str) -> OrderRequest:
            return OrderRequest(client_order_id=f"o-{tag}-{uuid.uuid4().hex[:16]}",
                                account_id=account, symbol=symbol, side=Side.BUY,
                                quantity=300, session=SESSION,
                                reference_price=replay_market.reference_price(symbol, SESSION))

        before, during = order(SYMBOLS[0], "before"), order(SYMBOLS[1], "during")
        assert venue.submit(before).status is OrderStatus.SUBMITTED
        # The order reaches the venue, its answer is lost, then the link goes down.
        rep.lose_replies_after = b"send_order"
        with pytest.raises(VenueError) as info:
            venue.submit(during)
        assert during.client_order_id in str(info.value)
        assert len(_orders_with(proc.state_dir, during.client_order_id)) == 1
        rep.cut()
        pub.cut()
        with pytest.raises(VenueError):
            venue.order(during.client_order_id)   # down: no answer is not "unknown"
        # Restored: the venue reconnects, queries everything, recognises the resubmission.
        rep.lose_replies_after, rep.drop_replies = None, False
        state = venue.submit(during)
        assert state.status is OrderStatus.SUBMITTED and state.quantity == 300, state
        assert len(_orders_with(proc.state_dir, during.client_order_id)) == 1
        fills = venue.fills(account, SESSION)
        assert sorted((f.client_order_id, f.quantity) for f in fills) == sorted(
            [(before.client_order_id, 300), (during.client_order_id, 300)])
        assert venue.positions(account) == {SYMBOLS[0]: 300, SYMBOLS[1]: 300}
        assert venue.cash(account) == pytest.approx(
            CASH - sum(f.quantity * f.price + f.commission for f in fills), abs=1e-6)
    finally:
        venue.close()
        rep.close()
        pub.close()


def _race(venue: VnpyVenue, account: str, cid: str, session: dt.date,
          cancel_delay: float, fill_delay: float) -> dict[str, object]:
    """``cancel(cid)`` and ``fills(account, session)`` released together from two threads
    (each after its delay)."""
    start = threading.Barrier(2)
    results: dict[str, object] = {}

    def cancel() -> None:
        start.wait()
        time.sleep(cancel_delay)
        results["cancel"] = venue.cancel(cid)

    def match() -> None:
        start.wait()
        time.sleep(fill_delay)
        results["fills"] = venue.fills(account, session)

    threads = [threading.Thread(target=cancel), threading.Thread(target=match)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert set(results) == {"cancel", "fills"}, results
    return results


def _race_round(venue: VnpyVenue, req: OrderRequest, before: int, cancel_delay: float,
                fill_delay: float) -> OrderStatus:
    """One round of ``_race`` for ``req`` (open, ``before`` units of it filled): it ends
    filled (its remainder in one more trade) or cancelled with what it had, never more;
    returns how it ended."""
    cid, session = req.client_order_id, req.session
    results = _race(venue, req.account_id, cid, session, cancel_delay, fill_delay)
    final = venue.order(cid)
    assert final is not None and results["cancel"] == final, (results, final)
    own = [f.quantity for f in venue.fills(req.account_id, session) if f.client_order_id == cid]
    earlier = [before] if before else []
    if final.status is OrderStatus.FILLED:
        assert final.filled_quantity == req.quantity
        assert own == [*earlier, req.quantity - before], own
    else:
        assert (final.status, final.filled_quantity, final.reason) == (
            OrderStatus.CANCELLED, before, None), final
        assert own == earlier, own
    return final.status


def _book_is_its_fills(venue: VnpyVenue, account: str, symbol: str) -> None:
    """The venue's position in ``symbol``, its cash and its fills agree, each fill once."""
    fills = venue.fills(account)
    assert venue.positions(account) == ({symbol: sum(f.quantity for f in fills)}
                                        if fills else {})
    assert venue.cash(account) == pytest.approx(
        CASH - sum(f.quantity * f.price + f.commission for f in fills), abs=1e-6)
    assert len({f.fill_id for f in fills}) == len(fills)


def test_a_cancel_racing_the_fill_ends_one_way(processes: VenueProcesses,
                                               replay_market: ReplayMarket) -> None:
    """cancel and the session's matching sent at once, from two threads, over several
    sessions: each order ends cancelled with no fill or filled once, never both, and the book
    matches its fills. The first two rounds let one side start 0.2 s late (the fill wins, then
    the cancel does), the others race as they come."""
    account = f"race-{uuid.uuid4().hex[:12]}"
    proc = processes.start(account, CASH)
    venue = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=10.0, ack_timeout=5.0,
                      replay_clock=True)
    bars = replay_market.real.bars
    symbol = SYMBOLS[0]
    sessions = sorted(d.date() for d in bars.loc[(bars["symbol"] == symbol)
                                                 & (bars["date"] >= str(SESSION)), "date"])[:5]
    delays = [(0.2, 0.0), (0.0, 0.2), (0.0, 0.0), (0.0, 0.0), (0.0, 0.0)]
    outcomes = []
    try:
        venue.open_account(account, CASH)
        for session, (cancel_delay, fill_delay) in zip(sessions, delays, strict=True):
            req = OrderRequest(client_order_id=f"o-race-{uuid.uuid4().hex[:16]}",
                               account_id=account, symbol=symbol, side=Side.BUY, quantity=500,
                               session=session,
                               reference_price=replay_market.reference_price(symbol, session))
            assert venue.submit(req).status is OrderStatus.SUBMITTED
            outcomes.append(_race_round(venue, req, 0, cancel_delay, fill_delay))
        _book_is_its_fills(venue, account, symbol)
    finally:
        venue.close()
    assert outcomes[:2] == [OrderStatus.FILLED, OrderStatus.CANCELLED], outcomes


def test_loading_the_code_locations_imports_no_vnpy() -> None:
    """vn.py is imported where a vn.py venue is made, never when Dagster loads the code."""
    code = ("import sys, orchestration.definitions, orchestration.vnpy_venue; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in "
            "('vnpy', 'vnpy_rpcservice', 'vnpy_paperaccount', 'trading.vnpy_api')"
            " or m.startswith('trading.vnpy_')))")
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(ROOT)},
                            check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip().splitlines()[-1] == "[]", result.stdout


class KillAfterSubmits:
    """The vn.py venue, with the venue process killed (SIGKILL) right after the n-th order
    the executor submits."""

    def __init__(self, inner: VnpyVenue, proc: VenueProcess, after: int) -> None:
        self.inner, self.proc, self.after, self.submits = inner, proc, after, 0
        self.name = inner.name

    def submit(self, order: OrderRequest) -> VenueOrder:
        state = self.inner.submit(order)
        self.submits += 1
        if self.submits == self.after:
            assert self.proc.proc is not None
            os.kill(self.proc.proc.pid, signal.SIGKILL)
            self.proc.proc.wait(10)
        return state

    def __getattr__(self, name: str) -> object:
        return getattr(self.inner, name)


def test_executor_with_the_venue_killed_mid_execution_keeps_the_ledger_consistent(
        processes: VenueProcesses, replay_market: ReplayMarket, ledger_url: str) -> None:
    """The executor (trading.executor) on a real ledger sends a signal's orders through the
    vn.py venue; the venue process is killed with SIGKILL after the first order; the run
    fails naming the next order; the venue is restarted and the execution retried: every
    order reaches the venue once, and the ledger's orders, fills, cash and positions are the
    venue's."""
    ledger = Ledger(ledger_url)
    ledger.migrate()
    account = f"exec-{uuid.uuid4().hex[:10]}"
    ledger.open_account(account, CASH, actor="test")
    proc = processes.start(account, CASH)
    venue = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=3.0, ack_timeout=5.0,
                      replay_clock=True)
    quotes = replay_market.real.quotes
    signal_id, view, limits = _approved(ledger, account, "alpha", quotes)
    try:
        with pytest.raises(VenueError) as info:
            execute_signal(ledger=ledger, venue=KillAfterSubmits(venue, proc, 1),
                           signal_id=signal_id, account_id=account, market=view,
                           limits=limits, costs=COSTS, actor="test", dagster_run_id="run-1")
        planned = ledger.orders(signal_id=signal_id)
        assert len(planned) == 3
        assert any(o.order_id in str(info.value) for o in planned), info.value
        processes.start(account, CASH, like=proc)
        report = execute_signal(ledger=ledger, venue=venue, signal_id=signal_id,
                                account_id=account, market=view, limits=limits, costs=COSTS,
                                actor="test", dagster_run_id="run-2")
        assert report.status == "completed", report.summary()
        orders = ledger.orders(signal_id=signal_id)
        assert {o.order_id for o in orders} == {o.order_id for o in planned}
        for o in orders:
            remote = venue.order(o.order_id)
            assert remote is not None and len(_orders_with(proc.state_dir, o.order_id)) == 1
            assert (o.status, o.filled_quantity, o.venue_order_id) == \
                (remote.status, remote.filled_quantity, remote.venue_order_id), (o, remote)
            assert o.status is OrderStatus.FILLED, o
        _ledger_is_the_venues(ledger, venue, account, venue.fills(account, SESSION))
    finally:
        venue.close()
        ledger.dispose()


def _ledger_is_the_venues(ledger: Ledger, venue: VnpyVenue, account: str,
                          venue_fills: Sequence[Fill]) -> None:
    """The ledger's fills are the venue's (by trade id, order, quantity, price), and so are
    its positions and cash."""
    assert sorted((f.fill_id, f.client_order_id, f.quantity, f.price)
                  for f in ledger.fills(account)) == \
        sorted((f.fill_id, f.client_order_id, f.quantity, f.price) for f in venue_fills)
    assert {s: p.quantity for s, p in ledger.positions(account).items() if p.quantity} == \
        venue.positions(account)
    assert ledger.cash(account) == pytest.approx(venue.cash(account), abs=1e-6)


SIGNAL_WEIGHTS = {"510300": 0.3, "510500": 0.3, "512880": 0.2}


def _approved(ledger: Ledger, account: str, strategy: str, quotes: FrameQuotes
              ) -> tuple[str, MarketView, RiskLimits]:
    """An approved signal of ``account`` over three funds for the evening before the session,
    the market view and the limits its execution is checked with."""
    weights = SIGNAL_WEIGHTS
    signal_id = signal_id_of(strategy, account, PREVIOUS, weights)
    ledger.record_signal(SignalRecord(
        signal_id=signal_id, account_id=account, strategy=strategy, as_of=PREVIOUS,
        weights=weights, weights_hash=weights_hash(weights), status=SignalStatus.APPROVED,
        reasons=[], data_version=None, dagster_run_id=None), actor="gate")
    found = {s: quotes.quote(s, PREVIOUS) for s in weights}
    view = MarketView(signal_day=PREVIOUS, order_session=SESSION, closed_through=PREVIOUS,
                      quotes={s: q for s, q in found.items() if q is not None},
                      average_amount={s: 5e9 for s in weights})
    return signal_id, view, RiskLimits(max_weight=1.0, max_order_notional=2_000_000.0,
                                       max_daily_notional=5_000_000.0)


def test_executor_with_venue_rejections_and_partial_fills_keeps_the_ledger_consistent(
        processes: VenueProcesses, replay_market: ReplayMarket, ledger_url: str) -> None:
    """The venue rejects an order (a fund it does not offer: ``unknown_symbol``) and fills
    others in part (its account has a quarter of the ledger's cash: ``cash_short``). The
    ledger records each order's status, reason and filled quantity and each fill exactly as
    the venue reports them; executing the signal again sends nothing."""
    ledger = Ledger(ledger_url)
    ledger.migrate()
    account = f"faults-{uuid.uuid4().hex[:10]}"
    ledger.open_account(account, CASH, actor="test")
    venue_cash = CASH / 4
    proc = processes.start(account, venue_cash, unlisted=frozenset({"512880"}))
    venue = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                      replay_clock=True)
    quotes = replay_market.real.quotes
    signal_id, view, limits = _approved(ledger, account, "faults", quotes)
    try:
        first = execute_signal(ledger=ledger, venue=venue, signal_id=signal_id,
                               account_id=account, market=view, limits=limits, costs=COSTS,
                               actor="test", dagster_run_id="run-1")
        assert first.submitted == 3, first.summary()
        orders = {o.symbol: o for o in ledger.orders(signal_id=signal_id)}
        assert set(orders) == set(SIGNAL_WEIGHTS)
        for o in orders.values():
            remote = venue.order(o.order_id)
            assert remote is not None and len(_orders_with(proc.state_dir, o.order_id)) == 1
            assert (o.status, o.reason, o.filled_quantity, o.venue_order_id) == (
                remote.status, remote.reason, remote.filled_quantity,
                remote.venue_order_id), (o, remote)
        rejected = orders["512880"]
        assert (rejected.status, rejected.reason, rejected.filled_quantity) == (
            OrderStatus.REJECTED, "unknown_symbol", 0)
        partial = [o for o in orders.values() if 0 < o.filled_quantity < o.quantity]
        assert partial, [(o.symbol, o.status, o.filled_quantity, o.quantity) for o in
                         orders.values()]
        assert all((o.status, o.reason) == (OrderStatus.EXPIRED, "cash_short")
                   for o in partial), partial
        venue_fills = venue.fills(account, SESSION)
        ledger_fills = ledger.fills(account)
        assert sorted((f.fill_id, f.symbol, f.quantity, f.price) for f in ledger_fills) == \
            sorted((f.fill_id, f.symbol, f.quantity, f.price) for f in venue_fills)
        for o in orders.values():
            assert sum(f.quantity for f in ledger_fills if f.client_order_id == o.order_id) \
                == o.filled_quantity
        assert {s: p.quantity for s, p in ledger.positions(account).items() if p.quantity} == \
            venue.positions(account)
        # The same money moved on both sides (they started CASH − venue_cash apart).
        assert ledger.cash(account) - venue.cash(account) == pytest.approx(CASH - venue_cash,
                                                                            abs=1e-6)
        again = execute_signal(ledger=ledger, venue=venue, signal_id=signal_id,
                               account_id=account, market=view, limits=limits, costs=COSTS,
                               actor="test", dagster_run_id="run-2")
        assert again.submitted == 0, again.summary()
        assert all(len(_orders_with(proc.state_dir, o.order_id)) == 1 for o in orders.values())
        assert len(ledger.fills(account)) == len(ledger_fills)
    finally:
        venue.close()
        ledger.dispose()


def test_an_order_after_the_session_closed_is_refused_session_closed(
        processes: VenueProcesses, replay_market: ReplayMarket) -> None:
    """The test venue's hours: once the replay clock has opened a session (its close is past),
    an order for it is refused with the paper broker's reason ``session_closed``; an order
    for a later session is taken."""
    from trading.paper import REASON_SESSION_CLOSED

    account = f"late-{uuid.uuid4().hex[:10]}"
    proc = processes.start(account, CASH)
    venue = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                      replay_clock=True)
    symbol = SYMBOLS[0]
    price = replay_market.reference_price(symbol, SESSION)
    later = min(d.date() for d in replay_market.real.bars["date"] if d.date() > SESSION)

    def order(tag: str, session: dt.date) -> OrderRequest:
        return OrderRequest(client_order_id=f"o-{tag}-{uuid.uuid4().hex[:12]}",
                            account_id=account, symbol=symbol, side=Side.BUY, quantity=100,
                            session=session, reference_price=price)

    try:
        on_time = venue.submit(order("on-time", SESSION))
        assert on_time.status is OrderStatus.SUBMITTED, on_time
        venue.fills(account, SESSION)               # the clock opens SESSION: it is over
        filled = venue.order(on_time.client_order_id)
        assert filled is not None and filled.status is OrderStatus.FILLED, filled
        late = venue.submit(order("late", SESSION))
        assert (late.status, late.reason, late.filled_quantity) == (
            OrderStatus.REJECTED, REASON_SESSION_CLOSED, 0), late
        # Asked again (a retry after a lost answer): the same refusal, no second order.
        again = venue.submit(OrderRequest(
            client_order_id=late.client_order_id, account_id=account, symbol=symbol,
            side=Side.BUY, quantity=100, session=SESSION, reference_price=price))
        assert (again.status, again.reason, again.venue_order_id) == (
            OrderStatus.REJECTED, REASON_SESSION_CLOSED, late.venue_order_id)
        assert len(_orders_with(proc.state_dir, late.client_order_id)) == 1
        next_day = venue.submit(order("next", later))
        assert next_day.status is OrderStatus.SUBMITTED, next_day
    finally:
        venue.close()


# -- partial fills: the test venue's participation cap -----------------------------------------
# An order takes at most this share of its bar's volume traded while it was open: the signal's
# orders (tens of thousands of units against bars of 10^8–10^9) fill a quarter of the cap's
# worth by 10:30, so each is left partly filled and open.
PARTICIPATION = 1e-4
# A smaller share, for single orders sized from their bar.
SMALL_SHARE = 2.5e-5


def _at(session: dt.date, clock: str) -> dt.datetime:
    return dt.datetime.combine(session, dt.time.fromisoformat(clock), SHANGHAI)


def _capped_venue(processes: VenueProcesses, tag: str, share: float
                  ) -> tuple[str, VenueProcess, VnpyVenue]:
    """A new account's venue process whose orders take at most ``share`` of a bar's volume,
    and a vn.py venue driving its replay clock."""
    account = f"{tag}-{uuid.uuid4().hex[:10]}"
    proc = processes.start(account, CASH, participation=share)
    return account, proc, VnpyVenue([proc.endpoint], COSTS, rpc_timeout=10.0,
                                     ack_timeout=5.0, replay_clock=True)


def test_a_closed_session_stays_closed_after_a_sigkill_restart(
        processes: VenueProcesses, replay_market: ReplayMarket) -> None:
    """The venue process is killed with SIGKILL and restarted on its state folder twice: in
    the middle of a session (replayed to 10:30, an order partly filled by the participation
    cap), which goes on where it stood (the order open with its fill, the cap counting it, a
    new order for the session taken); and after the session closed: an order for it is still
    refused ``session_closed`` (the clock is on disk before ``replay_session`` answers), one for
    the next session is taken."""
    from trading.paper import REASON_SESSION_CLOSED

    share = SMALL_SHARE
    account, proc, venue = _capped_venue(processes, "reclosed", share)
    symbol = SYMBOLS[0]
    price = replay_market.reference_price(symbol, SESSION)
    bar = replay_market.real.quotes.quote(symbol, SESSION)
    assert bar is not None
    later = min(d.date() for d in replay_market.real.bars["date"] if d.date() > SESSION)

    def order(tag: str, session: dt.date, quantity: int = 100) -> OrderRequest:
        return OrderRequest(client_order_id=f"o-{tag}-{uuid.uuid4().hex[:12]}",
                            account_id=account, symbol=symbol, side=Side.BUY,
                            quantity=quantity, session=session, reference_price=price)

    running = [proc]

    def sigkill_and_restart() -> None:
        killed = running[-1].proc
        assert killed is not None
        os.kill(killed.pid, signal.SIGKILL)
        assert killed.wait(10) == -signal.SIGKILL
        running.append(processes.start(account, CASH, like=proc, participation=share))

    try:
        venue.open_account(account, CASH)
        large = order("large", SESSION, quantity=int(share * bar.volume) // 100 * 100)
        assert venue.submit(large).status is OrderStatus.SUBMITTED
        venue.replay_until(account, _at(SESSION, "10:30"))
        part = venue.order(large.client_order_id)
        assert part is not None and part.status is OrderStatus.PARTIALLY_FILLED, part
        sigkill_and_restart()
        assert venue.order(large.client_order_id) == part
        during = venue.submit(order("during", SESSION))
        assert during.status is OrderStatus.SUBMITTED, during
        fills = venue.fills(account, SESSION)                # the session's close
        own = [f.quantity for f in fills if f.client_order_id == large.client_order_id]
        cap = int(share * bar.volume)
        assert own == [part.filled_quantity, cap - cap % 100 - part.filled_quantity], fills
        assert [f.quantity for f in fills if f.client_order_id == during.client_order_id] \
            == [100]
        sigkill_and_restart()
        late = venue.submit(order("late", SESSION))
        assert (late.status, late.reason, late.filled_quantity) == (
            OrderStatus.REJECTED, REASON_SESSION_CLOSED, 0), late
        assert len(_orders_with(proc.state_dir, late.client_order_id)) == 1
        assert venue.submit(order("next", later)).status is OrderStatus.SUBMITTED
        assert venue.positions(account) == {symbol: sum(f.quantity for f in fills)}
    finally:
        venue.close()


def _vn_status(state_dir: Path, cid: str) -> tuple[str, float]:
    """vn.py's status and traded volume of the order, as the venue process wrote them."""
    (rec,) = _orders_with(state_dir, cid)
    traded = rec["traded"]
    assert isinstance(traded, float), rec
    return str(rec["status"]), traded


def test_a_partial_fill_then_cancel_keeps_the_ledger_the_venues(
        processes: VenueProcesses, replay_market: ReplayMarket, ledger_url: str) -> None:
    """The executor sends a signal's orders; the venue's session runs to 10:30 and the
    participation cap leaves each order partly filled and open (vn.py PARTTRADED: ours
    partially_filled); each is cancelled (vn.py CANCELLED with its traded volume: ours
    cancelled, the filled quantity kept). Executing the signal again sends nothing and brings
    the ledger to the venue: every order's status and filled quantity, every fill once (by trade
    id), positions and cash. The rest of the session fills nothing more."""
    ledger = Ledger(ledger_url)
    ledger.migrate()
    account = f"part-{uuid.uuid4().hex[:10]}"
    ledger.open_account(account, CASH, actor="test")
    proc = processes.start(account, CASH, participation=PARTICIPATION)
    # The evening before: the executor's own matching stops at PREVIOUS.
    venue = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                      replay_clock=True, replay_through=PREVIOUS)
    signal_id, view, limits = _approved(ledger, account, "partial", replay_market.real.quotes)
    try:
        first = execute_signal(ledger=ledger, venue=venue, signal_id=signal_id,
                               account_id=account, market=view, limits=limits, costs=COSTS,
                               actor="test", dagster_run_id="run-1")
        assert first.submitted == 3, first.summary()
        orders = ledger.orders(signal_id=signal_id)
        assert all(o.status is OrderStatus.SUBMITTED for o in orders), orders

        venue.replay_until(account, _at(SESSION, "10:30"))
        partial = {}
        for o in orders:
            state = venue.order(o.order_id)
            assert state is not None and state.status is OrderStatus.PARTIALLY_FILLED, state
            assert 0 < state.filled_quantity < o.quantity and state.quantity == o.quantity
            bar = replay_market.real.quotes.quote(o.symbol, SESSION)
            assert bar is not None
            cap = int(PARTICIPATION * bar.volume * 60 / 240)
            assert state.filled_quantity == cap - cap % COSTS.lot_size, (o.symbol, state)
            assert _vn_status(proc.state_dir, o.order_id) == ("PARTTRADED",
                                                              state.filled_quantity)
            partial[o.order_id] = state

        for o in orders:
            cancelled = venue.cancel(o.order_id)
            assert (cancelled.status, cancelled.filled_quantity, cancelled.quantity,
                    cancelled.reason) == (OrderStatus.CANCELLED,
                                          partial[o.order_id].filled_quantity, o.quantity,
                                          None), cancelled
            assert _vn_status(proc.state_dir, o.order_id) == ("CANCELLED",
                                                              cancelled.filled_quantity)
            assert venue.cancel(o.order_id) == cancelled          # idempotent

        again = execute_signal(ledger=ledger, venue=venue, signal_id=signal_id,
                               account_id=account, market=view, limits=limits, costs=COSTS,
                               actor="test", dagster_run_id="run-2")
        assert again.submitted == 0, again.summary()
        # The rest of the session: nothing more fills on a cancelled order.
        live = VnpyVenue([proc.endpoint], COSTS, rpc_timeout=5.0, ack_timeout=5.0,
                         replay_clock=True)
        try:
            venue_fills = live.fills(account, SESSION)
        finally:
            live.close()
        assert len({f.fill_id for f in venue_fills}) == len(venue_fills) == 3
        for o in ledger.orders(signal_id=signal_id):
            assert len(_orders_with(proc.state_dir, o.order_id)) == 1
            remote = venue.order(o.order_id)
            assert remote is not None
            assert (o.status, o.filled_quantity, o.venue_order_id) == (
                OrderStatus.CANCELLED, partial[o.order_id].filled_quantity,
                remote.venue_order_id), o
            assert (remote.status, remote.filled_quantity) == (o.status, o.filled_quantity)
            assert o.average_price == pytest.approx(remote.average_price)
        # Fills recorded twice are one fill each.
        for fill in venue_fills:
            ledger.record_fill(fill, actor="test")
        _ledger_is_the_venues(ledger, venue, account, venue_fills)
    finally:
        venue.close()
        ledger.dispose()


def test_a_cancel_racing_the_fill_of_the_remainder(processes: VenueProcesses,
                                                   replay_market: ReplayMarket) -> None:
    """A partly filled order (the cap, by 10:30) and the rest of its session, which has the
    volume for its remainder, racing its cancel from two threads: it ends filled (two trades,
    its quantity) or cancelled with the part filled before (one trade), never more; the book
    matches its fills. The first two rounds let one side start 0.2 s late (the fill wins, then
    the cancel does), the others race as they come."""
    share = SMALL_SHARE
    account, _, venue = _capped_venue(processes, "rest", share)
    symbol = SYMBOLS[0]
    quotes = replay_market.real.quotes
    sessions = [d for d in quotes.sessions(symbol) if d >= SESSION][:4]
    delays = [(0.2, 0.0), (0.0, 0.2), (0.0, 0.0), (0.0, 0.0)]
    outcomes = []
    try:
        venue.open_account(account, CASH)
        for session, (cancel_delay, fill_delay) in zip(sessions, delays, strict=True):
            bar = quotes.quote(symbol, session)
            assert bar is not None
            # Half of the session's cap: a quarter of the cap by 10:30 fills half of it.
            quantity = int(share * bar.volume / 2) // COSTS.lot_size * COSTS.lot_size
            req = OrderRequest(client_order_id=f"o-rest-{uuid.uuid4().hex[:16]}",
                               account_id=account, symbol=symbol, side=Side.BUY,
                               quantity=quantity, session=session,
                               reference_price=replay_market.reference_price(symbol, session))
            assert venue.submit(req).status is OrderStatus.SUBMITTED
            venue.replay_until(account, _at(session, "10:30"))
            part = venue.order(req.client_order_id)
            assert part is not None and part.status is OrderStatus.PARTIALLY_FILLED, part
            assert 0 < part.filled_quantity < quantity
            outcomes.append(_race_round(venue, req, part.filled_quantity, cancel_delay,
                                        fill_delay))
        _book_is_its_fills(venue, account, symbol)
    finally:
        venue.close()
    assert outcomes[:2] == [OrderStatus.FILLED, OrderStatus.CANCELLED], outcomes
