"""The test venue (issue 18, item 5): a vn.py gateway of ours that replays our stored daily bars,
with vn.py's paper account (``vnpy_paperaccount``) crossing the orders, in the venue process
(:mod:`trading.vnpy_process` ``--gateway trading.vnpy_replay:ReplayGateway --paper``).

What it is, for the venue over RPC (:mod:`trading.vnpy_venue`), is a broker: one account, its
cash and holdings, orders and trades, and the exchange's rules. vn.py's paper account knows
none of those rules (lots, T+1, price limits, cash), so :class:`ReplayBroker` decides them with
the platform's one market-rules model, :func:`trading.paper.execute_on_bar` and
:func:`trading.paper.lot_rejection` (the paper broker's), and what they allow is traded as the
paper account trades (its order and trade events, its position), at the rules' fill price (the
open with slippage), one trade id per fill (``<orderid>-<n>``).

* The replay clock: ``replay_session(day)`` (an RPC function of the venue process) opens the
  session ``day`` (> the clock): every open order is matched on that session's bar, sells before
  buys, then by arrival; an order the bar does not fill completely is ended by the venue (vn.py
  ``CANCELLED`` with a note: ``no_bar``, ``limit_up``, ``t1``, ``cash_short``, ...), which our
  venue reports as ``expired``. Sessions not asked for are not replayed.
  ``replay_session(day, through="HH:MM")`` replays the session only up to that time: it stays
  open (orders for it are taken and matched by the next call) until replayed to its close.
* Participation (setting ``participation``, a share of the bar's volume; unset: none): an order
  takes at most that share of the volume traded while it was open (the bar's volume spread
  evenly over the session's minutes; :func:`trading.paper.participation_cap`). What the cap
  held back rests in the book, vn.py ``PARTTRADED`` (or ``NOTTRADED``), until a later part of
  the session fills it, it is cancelled, or the close ends it (``participation``). With no
  cap, an order fills in one trade as before.
* Submit-time refusals (not whole lots, an odd lot that does not close the position, a
  non-market order, an unknown fund, an order for a session the clock has already replayed:
  ``session_closed``, the session told by ``expect_session`` before the order is sent) are
  vn.py ``REJECTED`` orders with a note.
* State (cash, clock, the session in progress, holdings, orders with their reference, trades,
  notes) is written to ``replay_state.json`` in the venue's state directory before an order
  is acknowledged and after every change, and restored on start: a venue process killed with
  SIGKILL comes back with the orders it had accepted.

Settings (the gateway's JSON, ``default_setting``): the market, either ``dataset`` (a stored
dataset: ``{"root": "<shared/data/cn_etf_morphkyan_raw>", "config":
"config/datasets/cn_etf_morphkyan_raw.yaml", "start", "end", "symbols"}``, read-only) or
``bars`` (a parquet file of raw daily bars: ``date, symbol, open, high, low, close, volume``,
optional ``adj_factor``) with ``instruments`` (symbol → ``exchange``, ``price_limit``,
``same_session_sell``, ``sale_cash_same_day``); ``account``, ``cash`` and ``costs``
(:class:`rotation.costs.CostModel` fields); ``participation`` (above).
"""

from __future__ import annotations

import datetime as dt
import json
import os
import threading
from copy import copy
from pathlib import Path
from typing import Any, ClassVar

import pandas as pd

from rotation.costs import CostModel
from trading.models import Side
from trading.paper import (
    REASON_INVALID_QUANTITY,
    REASON_ORDER_TYPE,
    REASON_PARTICIPATION,
    REASON_SESSION_CLOSED,
    SHANGHAI,
    FrameQuotes,
    Outcome,
    SessionBook,
    execute_on_bar,
    lot_rejection,
    participation_cap,
)
from trading.session_clock import SESSION_MINUTES, clock_at, minutes_at
from trading.vnpy_api import (
    EVENT_ACCOUNT,
    EVENT_ORDER,
    EVENT_TRADE,
    SIDE_OF_DIRECTION,
    AccountData,
    BaseGateway,
    ContractData,
    Direction,
    Event,
    Exchange,
    OrderData,
    OrderType,
    Product,
    Status,
    TradeData,
    exchange_of,
)

EVENT_REPLAY_SESSION = "eReplaySession"
EVENT_REPLAY_DONE = "eReplayDone"
REASON_UNKNOWN_SYMBOL = "unknown_symbol"
STATE_FILE = "replay_state.json"
ACTIVE = ("SUBMITTING", "NOTTRADED", "PARTTRADED")


class ReplayGateway(BaseGateway):
    """Contracts and the account of the replayed market; the orders go to the paper account
    (the venue process runs this gateway with ``--paper``)."""

    default_name = "REPLAY"
    default_setting: ClassVar[dict[str, Any]] = {
        "dataset": {}, "bars": "", "instruments": {}, "account": "replay", "cash": 1_000_000.0,
        "costs": {}}
    exchanges: ClassVar[list[Any]] = [Exchange.SSE, Exchange.SZSE, Exchange.BSE]

    def __init__(self, event_engine: Any, gateway_name: str) -> None:
        super().__init__(event_engine, gateway_name)
        self.broker: ReplayBroker | None = None

    def venue_functions(self, main_engine: Any, state_dir: Path, launch_dir: Path
                        ) -> list[Any]:
        """The venue process's hook: build the broker in front of the paper account and return
        the RPC functions it adds (the replay clock). Relative paths in the setting are the
        launch directory's (the process works in its state folder)."""
        paper = main_engine.get_engine("PaperAccount")
        if paper is None:
            raise RuntimeError("ReplayGateway: the venue process must run it with --paper "
                               "(vnpy_paperaccount crosses its orders)")
        self.broker = ReplayBroker(main_engine, paper, self, state_dir, launch_dir)
        return [self.broker.replay_session, self.broker.order_notes,
                self.broker.expect_session]

    def connect(self, setting: dict[str, Any]) -> None:
        if self.broker is None:
            raise RuntimeError("ReplayGateway.connect: no broker (venue_functions not called)")
        self.broker.load(setting)

    def close(self) -> None:
        pass

    def subscribe(self, req: Any) -> None:
        pass

    def send_order(self, req: Any) -> str:   # the paper account takes the orders
        raise RuntimeError("ReplayGateway: orders go through the paper account (--paper)")

    def cancel_order(self, req: Any) -> None:
        raise RuntimeError("ReplayGateway: orders go through the paper account (--paper)")

    def query_account(self) -> None:
        pass

    def query_position(self) -> None:
        pass


def _market(setting: dict[str, Any], base: Path
            ) -> tuple[pd.DataFrame, dict[str, dict[str, Any]]]:
    """The replayed bars and the funds' instruments: ``bars`` (a parquet file) with
    ``instruments``, or ``dataset`` (``{"root", "config", "start", "end", "symbols"}``: a stored
    dataset read with its config, read-only, as the platform reads it)."""
    dataset = setting.get("dataset")
    if dataset:
        from rotation.sources.files import FileMarketSource, load_dataset_spec

        source = FileMarketSource(base / dataset["root"],
                                  load_dataset_spec(base / dataset["config"]))
        wanted = set(dataset.get("symbols") or [])
        bars = source.load(dataset.get("start"), dataset.get("end")).bars
        bars = bars.assign(symbol=bars["symbol"].astype(str))
        if wanted:
            bars = bars.loc[bars["symbol"].isin(wanted)].reset_index(drop=True)
        known = set(bars["symbol"])
        return bars, {i.symbol: {"exchange": i.exchange, "price_limit": i.price_limit,
                                 "same_session_sell": i.same_session_sell,
                                 "sale_cash_same_day": i.sale_cash_same_day}
                      for i in source.instruments() if i.symbol in known}
    bars_path = base / str(setting.get("bars") or "")
    if not setting.get("bars") or not bars_path.is_file():
        raise RuntimeError(f"ReplayGateway: setting 'bars' {str(bars_path)!r} is not a file "
                           "(a parquet of raw daily bars) and no 'dataset' is set")
    return pd.read_parquet(bars_path), dict(setting.get("instruments") or {})


def _participation(value: Any) -> float | None:
    """The setting ``participation``: the share (0 < share ≤ 1) of a bar's volume one order may
    take; unset or null: no cap."""
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or not 0 < value <= 1:
        raise RuntimeError(f"ReplayGateway: setting 'participation' {value!r} is not a share "
                           "of the bar's volume in (0, 1]")
    return float(value)


def _order_record(order: Any, seq: int) -> dict[str, Any]:
    return {"orderid": order.orderid, "symbol": order.symbol, "exchange": order.exchange.value,
            "direction": order.direction.name, "type": order.type.name,
            "volume": float(order.volume), "traded": float(order.traded),
            "status": order.status.name, "price": float(order.price),
            "reference": order.reference, "seq": seq,
            "datetime": order.datetime.isoformat() if order.datetime else None}


class ReplayBroker:
    """The replayed market's broker in the venue process (module docstring)."""

    def __init__(self, main_engine: Any, paper: Any, gateway: ReplayGateway,
                 state_dir: Path, launch_dir: Path) -> None:
        self.main_engine = main_engine
        self.event_engine = main_engine.event_engine
        self.paper = paper
        self.gateway = gateway
        self.path = state_dir / STATE_FILE
        self.launch_dir = launch_dir
        self.lock = threading.RLock()
        self.quotes: FrameQuotes | None = None
        self.costs = CostModel()
        self.account = "replay"
        self.cash = 0.0
        self.clock: dt.date | None = None
        self.orders: dict[str, dict[str, Any]] = {}
        self.trades: dict[str, dict[str, Any]] = {}
        self.notes: dict[str, str] = {}
        # reference -> the session its order is for (expect_session): the exchange's hours.
        self.sessions: dict[str, dt.date] = {}
        self.seq = 0
        # The share of a bar's volume an order may take (None: the whole bar), the session the
        # clock is inside (replayed up to a time of day: its minutes, and its book's T+1 units
        # and held-back sale cash) and when each order arrived in it.
        self.participation: float | None = None
        self.day: dict[str, Any] | None = None
        self.arrivals: dict[str, list[Any]] = {}
        self._waiting: dict[int, threading.Event] = {}
        self._token = 0
        self._failures: dict[int, str] = {}
        # The paper account crosses; the broker decides before it (main_engine.send_order is
        # the paper account's since PaperAccountApp was added).
        self._paper_send = main_engine.send_order
        main_engine.send_order = self.send_order
        # The paper account never trades on its own: every cross is the broker's.
        paper.instant_trade = False
        paper.trade_slippage = 0
        self.event_engine.register(EVENT_ORDER, self._on_order)
        self.event_engine.register(EVENT_TRADE, self._on_trade)
        self.event_engine.register(EVENT_REPLAY_SESSION, self._on_replay)
        self.event_engine.register(EVENT_REPLAY_DONE, self._on_done)

    # -- start -------------------------------------------------------------------------------
    def load(self, setting: dict[str, Any]) -> None:
        bars, instruments = _market(setting, self.launch_dir)
        limits = {s: i.get("price_limit", 0.10) for s, i in instruments.items()}
        classes = {s: (bool(i.get("same_session_sell", False)),
                       bool(i.get("sale_cash_same_day", True))) for s, i in instruments.items()}
        self.quotes = FrameQuotes(bars, limits, classes=classes)
        self.costs = CostModel(**dict(setting.get("costs") or {}))
        self.account = str(setting.get("account") or "replay")
        self.participation = _participation(setting.get("participation"))
        symbols = sorted(set(bars["symbol"].astype(str)))
        with self.lock:
            self.cash = float(setting.get("cash", 1_000_000.0))
            restored = self._restore()
        name = self.gateway.gateway_name
        for symbol in symbols:
            market = str(instruments.get(symbol, {}).get("exchange", ""))
            contract = ContractData(
                symbol=symbol, exchange=exchange_of(symbol, market), name=symbol,
                product=Product.ETF, size=1, pricetick=0.001,
                min_volume=self.costs.lot_size, net_position=True, gateway_name=name)
            # The paper account's cancel looks its open orders up by contract without a
            # default: a cancel racing the fill of a restored order would end its event thread.
            self.paper.active_orders.setdefault(contract.vt_symbol, {})
            self.gateway.on_contract(contract)
        if restored:
            self._replay_journal()
        self._put_account()

    def _restore(self) -> bool:
        if not self.path.is_file():
            return False
        state = json.loads(self.path.read_text())
        self.cash = float(state["cash"])
        self.clock = dt.date.fromisoformat(state["clock"]) if state["clock"] else None
        self.orders = state["orders"]
        self.trades = state["trades"]
        self.notes = state["notes"]
        self.seq = int(state["seq"])
        self.day = state.get("day")
        self.arrivals = state.get("arrivals", {})
        self.paper.order_count = max(self.paper.order_count, int(state["order_count"]))
        self.paper.positions.clear()
        for vt_symbol, volume in state["positions"].items():
            self.paper.get_position(vt_symbol, Direction.NET).volume = volume
        return True

    def _replay_journal(self) -> None:
        """Put the restored orders and trades back into vn.py's order book (and the open
        orders back into the paper account's), as a broker reports them after a restart."""
        for rec in sorted(self.orders.values(), key=lambda r: r["seq"]):
            order = OrderData(
                symbol=rec["symbol"], exchange=Exchange(rec["exchange"]), orderid=rec["orderid"],
                type=OrderType[rec["type"]], direction=Direction[rec["direction"]],
                price=rec["price"], volume=rec["volume"], traded=rec["traded"],
                status=Status[rec["status"]], reference=rec["reference"],
                datetime=dt.datetime.fromisoformat(rec["datetime"]) if rec["datetime"] else None,
                gateway_name="PAPER")
            if rec["status"] in ACTIVE:
                if order.status == Status.SUBMITTING:
                    order.status = Status.NOTTRADED
                self.paper.active_orders.setdefault(order.vt_symbol, {})[order.orderid] = order
            self.event_engine.put(Event(EVENT_ORDER, copy(order)))
        for rec in self.trades.values():
            self.event_engine.put(Event(EVENT_TRADE, TradeData(
                symbol=rec["symbol"], exchange=Exchange(rec["exchange"]), orderid=rec["orderid"],
                tradeid=rec["tradeid"], direction=Direction[rec["direction"]],
                price=rec["price"], volume=rec["volume"],
                datetime=dt.datetime.fromisoformat(rec["datetime"]), gateway_name="PAPER")))

    # -- orders ------------------------------------------------------------------------------
    def send_order(self, req: Any, gateway_name: str) -> str:
        """Refuse what the exchange refuses at entry; hand the rest to the paper account. The
        order is in the state file before its id is returned."""
        with self.lock:
            reason = self._refusal(req)
            if reason is not None:
                self.paper.order_count += 1
                orderid = f"{dt.datetime.now():%y%m%d%H%M%S}{self.paper.order_count}"
                order = req.create_order_data(orderid, "PAPER")
                order.status = Status.REJECTED
                order.datetime = dt.datetime.now(SHANGHAI)
                self.notes[order.vt_orderid] = reason
                self._record(order)
                self.event_engine.put(Event(EVENT_ORDER, copy(order)))
                return str(order.vt_orderid)
            vt_orderid = str(self._paper_send(req, gateway_name))
            if vt_orderid:
                order = req.create_order_data(vt_orderid.split(".", 1)[1], "PAPER")
                order.status = Status.NOTTRADED
                order.datetime = dt.datetime.now(SHANGHAI)
                if self.day is not None:
                    # It takes part in the volume from now on, not in what already traded.
                    self.arrivals[order.orderid] = [self.day["session"], self.day["minutes"]]
                self._record(order)
            return vt_orderid

    def _refusal(self, req: Any) -> str | None:
        side = SIDE_OF_DIRECTION.get(req.direction)
        volume = float(req.volume)
        if side is None or volume <= 0 or volume != int(volume):
            return REASON_INVALID_QUANTITY
        if req.type != OrderType.MARKET:
            return REASON_ORDER_TYPE
        if self.main_engine.get_contract(req.vt_symbol) is None:
            return REASON_UNKNOWN_SYMBOL
        session = self.sessions.get(req.reference)
        if session is not None and self.clock is not None and session <= self.clock:
            # The session was replayed (it has closed): its order would trade on a later one.
            return REASON_SESSION_CLOSED
        held = int(self.paper.get_position(req.vt_symbol, Direction.NET).volume)
        return lot_rejection(side, int(volume), held, self.costs.lot_size)

    def _record(self, order: Any) -> None:
        with self.lock:
            known = self.orders.get(order.orderid)
            if known is None:
                self.seq += 1
            self.orders[order.orderid] = _order_record(
                order, known["seq"] if known else self.seq)
            self._save()

    def _on_order(self, event: Any) -> None:
        order = event.data
        if order.gateway_name == "PAPER" and order.orderid in self.orders:
            with self.lock:
                known = self.orders[order.orderid]
                # The paper account's first echo (SUBMITTING) may come after the record.
                if order.status == Status.SUBMITTING and known["status"] != "SUBMITTING":
                    return
                self._record(order)

    def _on_trade(self, event: Any) -> None:
        trade = event.data
        with self.lock:
            self.trades[trade.tradeid] = {
                "symbol": trade.symbol, "exchange": trade.exchange.value,
                "orderid": trade.orderid, "tradeid": trade.tradeid,
                "direction": trade.direction.name, "price": float(trade.price),
                "volume": float(trade.volume), "datetime": trade.datetime.isoformat()}
            self._save()

    def expect_session(self, reference: str, day: str) -> None:
        """The session (ISO date) the order with ``reference`` is for, told before it is
        sent: an order for a session the replay clock has already opened arrives after that
        session's close and is refused, ``session_closed`` (a broker's exchange refuses it by
        its hours; vn.py's order request has no session)."""
        with self.lock:
            self.sessions[reference] = dt.date.fromisoformat(day)

    def order_notes(self) -> dict[str, str]:
        """Why the venue refused or ended an order (vt_orderid → reason)."""
        with self.lock:
            return dict(self.notes)

    # -- the replay clock --------------------------------------------------------------------
    def replay_session(self, day: str, through: str | None = None) -> str | None:
        """Open session ``day`` (ISO date) and match every open order on its bar; returns the
        clock (the newest session closed). ``through`` (``HH:MM``, Shanghai): replay the session
        only up to that time of day; it stays open (orders for it are taken) until it is replayed
        to its close. A session at or before the clock changes nothing; a later one closes a
        session left open first. Runs in the event thread, after every order sent before it;
        returns once vn.py's order book holds the outcome."""
        session = dt.date.fromisoformat(day)
        try:
            minutes = float(SESSION_MINUTES) if through is None else \
                minutes_at(dt.time.fromisoformat(through))
        except ValueError:
            raise ValueError(f"replay_session {day}: through {through!r} is not a time of "
                             "day HH:MM") from None
        done = threading.Event()
        # Events carry a token, not the threading.Event: the RPC service publishes (pickles)
        # every event.
        with self.lock:
            self._token += 1
            token = self._token
            self._waiting[token] = done
        self.event_engine.put(Event(EVENT_REPLAY_SESSION, (session, minutes, token)))
        if not done.wait(60):
            raise RuntimeError(f"replay_session {day}: not done within 60 s")
        with self.lock:
            failure = self._failures.pop(token, None)
        if failure is not None:
            raise RuntimeError(f"replay_session {day} failed in the venue: {failure}")
        return self.clock.isoformat() if self.clock else None

    def _on_done(self, event: Any) -> None:
        with self.lock:
            done = self._waiting.pop(event.data, None)
        if done is not None:
            done.set()

    def _on_replay(self, event: Any) -> None:
        session, minutes, token = event.data
        try:
            if self.clock is None or session > self.clock:
                if self.day is not None and dt.date.fromisoformat(self.day["session"]) < session:
                    self._match(dt.date.fromisoformat(self.day["session"]), SESSION_MINUTES)
                self._match(session, minutes)
        except Exception as exc:
            # An exception would end vn.py's event thread (and the venue with it): the caller
            # gets it instead.
            with self.lock:
                self._failures[token] = f"{type(exc).__name__}: {exc}"
        finally:
            # After the order, trade and position events this session put: the order book
            # holds them when the caller returns.
            self.event_engine.put(Event(EVENT_REPLAY_DONE, token))

    def _match(self, session: dt.date, minutes: float) -> None:
        """Replay ``session`` from where it stands up to ``minutes`` of continuous trading
        (``SESSION_MINUTES``: its close, which ends what is still open)."""
        assert self.quotes is not None
        iso = session.isoformat()
        fresh: dict[str, Any] = {"session": iso, "minutes": 0.0, "bought": {},
                                 "held_back": 0.0}
        day = self.day if self.day is not None and self.day["session"] == iso else fresh
        start = float(day["minutes"])
        if minutes <= start:
            return
        closing = minutes >= SESSION_MINUTES
        positions = {p.symbol: int(p.volume) for (_, d), p in self.paper.positions.items()
                     if d == Direction.NET and p.volume}
        book = SessionBook(cash=self.cash, positions=positions, bought=dict(day["bought"]),
                           held_back=float(day["held_back"]))
        active = [o for orders in self.paper.active_orders.values() for o in orders.values()]
        active.sort(key=lambda o: (SIDE_OF_DIRECTION[o.direction] is Side.BUY,
                                   self.orders.get(o.orderid, {}).get("seq", 0)))
        for order in active:
            self.paper.active_orders[order.vt_symbol].pop(order.orderid, None)
            side = SIDE_OF_DIRECTION[order.direction]
            wanted = int(order.volume - order.traded)
            quote = self.quotes.quote(order.symbol, session)
            since = self._arrival(order.orderid, iso)
            cap = participation_cap(self.participation, quote.volume if quote else 0.0,
                                    (minutes - since) / SESSION_MINUTES, int(order.traded))
            outcome = execute_on_bar(side, order.symbol, wanted, 0, 1, session, quote, book,
                                     self.costs, fill_time=clock_at(max(start, since)), cap=cap)
            if outcome.quantity > 0:
                self._cross(order, outcome)
            if outcome.quantity < wanted:
                if outcome.reason == REASON_PARTICIPATION and not closing:
                    # The volume so far held it back: it rests while the session goes on.
                    self.paper.active_orders[order.vt_symbol][order.orderid] = order
                    continue
                # The venue ends what the session did not fill.
                order.status = Status.CANCELLED
                self.notes[order.vt_orderid] = outcome.reason or "expired"
                self.event_engine.put(Event(EVENT_ORDER, copy(order)))
        with self.lock:
            self.cash = book.cash
            if closing:
                self.clock, self.day = session, None
            else:
                self.day = {"session": iso, "minutes": minutes, "bought": book.bought,
                            "held_back": book.held_back}
            self._save()
        self._put_account()

    def _arrival(self, orderid: str, session: str) -> float:
        """Minutes into ``session`` when the order arrived (0: before it opened)."""
        arrived = self.arrivals.get(orderid)
        return float(arrived[1]) if arrived is not None and arrived[0] == session else 0.0

    def _cross(self, order: Any, outcome: Outcome) -> None:
        """One trade of ``order`` as vn.py's paper account makes it (its order and trade events,
        its position), with a trade id per fill: ``<orderid>-<n>`` (the paper account's own
        cross gives every trade the order's id, and fills all of an order at once)."""
        assert outcome.price is not None and outcome.filled_at is not None
        order.traded += outcome.quantity
        order.status = Status.ALLTRADED if order.traded >= order.volume else Status.PARTTRADED
        self.event_engine.put(Event(EVENT_ORDER, copy(order)))
        with self.lock:
            n = 1 + sum(1 for t in self.trades.values() if t["orderid"] == order.orderid)
        trade = TradeData(
            symbol=order.symbol, exchange=order.exchange, orderid=order.orderid,
            tradeid=f"{order.orderid}-{n}", direction=order.direction, offset=order.offset,
            price=outcome.price, volume=outcome.quantity, datetime=outcome.filled_at,
            gateway_name=order.gateway_name)
        self.event_engine.put(Event(EVENT_TRADE, trade))
        self.paper.update_position(trade, self.main_engine.get_contract(order.vt_symbol))

    # -- state -------------------------------------------------------------------------------
    def _put_account(self) -> None:
        self.event_engine.put(Event(EVENT_ACCOUNT, AccountData(
            accountid=self.account, balance=self.cash, frozen=0.0,
            gateway_name=self.gateway.gateway_name)))

    def _save(self) -> None:
        positions = {p.vt_symbol: float(p.volume)
                     for (_, d), p in list(self.paper.positions.items())
                     if d == Direction.NET and p.volume}
        state = {"cash": self.cash, "clock": self.clock.isoformat() if self.clock else None,
                 "orders": self.orders, "trades": self.trades, "notes": self.notes,
                 "seq": self.seq, "order_count": self.paper.order_count,
                 "positions": positions, "day": self.day, "arrivals": self.arrivals}
        tmp = self.path.with_suffix(".tmp")
        with open(tmp, "w") as fh:
            json.dump(state, fh)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)

