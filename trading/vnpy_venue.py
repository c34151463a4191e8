"""The vn.py venue (issue 18): :class:`trading.venue.ExecutionVenue` over vn.py's RPC client
(``vnpy_rpcservice``'s ``RpcGateway``), against a venue process (:mod:`trading.vnpy_process`:
vn.py's MainEngine, the configured gateway and its RPC service).

One venue process is one broker login, so one account: :class:`VnpyEndpoint` names the account
(ours, and the gateway's ``accountid`` when it differs) and the process's two addresses. A
:class:`VnpyVenue` reaches any number of them.

Rules kept here (``trading.venue``):

* Idempotency: our ``client_order_id`` is the vn.py order's ``reference``. ``submit`` first
  asks the venue for an order carrying it (``find_order``) and sends only if there is none; the
  venue process's ``send_order`` is idempotent on the reference too (its journal), so a submit
  retried after a crash, a timeout or a reconnect is recognised, never doubled.
* Acknowledgement: ``submit`` returns once the venue has accepted or rejected the order (vn.py
  status past ``SUBMITTING``), at most ``ack_timeout`` seconds; no answer at all (the process
  died, the link is cut) raises :class:`VenueError` naming the order: its state is unknown
  until a resubmission of the same id recognises it.
* Fills are the venue's trades, de-duplicated by vn.py's trade id (the ``fill_id``); their
  commission is our cost model's (vn.py's trades carry none).
* A link that failed is rebuilt before anything else is sent: a new RPC client, vn.py's full
  query (contracts, account, positions, orders, trades), then the call is made again.
* States (``trading.vnpy_api.STATUS``): vn.py ``CANCELLED`` is ``cancelled`` when we asked for
  it and ``expired`` when the venue ended the order itself (the venue process notes why: no
  bar, limit-up, T+1, cash); ``REJECTED`` carries the venue's reason.

``replay_clock``: the venue process is the test venue (:mod:`trading.vnpy_replay`), whose
market moves only when asked; ``fills(account, until)`` then first opens session ``until``
there. ``replay_through``: the newest session the clock has closed (the daily path's market as
known that evening): no later session is opened (the executor asks for the fills through the
order session right after sending, which has not happened yet), and ``fills(account)`` opens
it. A broker's market moves by itself: unset.
"""

from __future__ import annotations

import datetime as dt
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any

from rotation.costs import CostModel
from trading.models import Fill, OrderRequest, OrderStatus, Side, VenueOrder
from trading.paper import SHANGHAI
from trading.venue import UnknownOrder, VenueError
from trading.vnpy_api import (
    DIRECTION_OF_SIDE,
    SIDE_OF_DIRECTION,
    STATUS,
    CancelRequest,
    EventEngine,
    Exchange,
    Offset,
    OrderType,
    RpcGateway,
    Status,
    exchange_of,
    start_client,
)
from trading.vnpy_api import OrderRequest as VnOrderRequest

REASON_VENUE_REJECTED = "venue_rejected"
REASON_VENUE_ENDED = "expired"


class UnknownAccount(VenueError):
    """The venue process does not (yet) report the account."""


@dataclass(frozen=True)
class VnpyEndpoint:
    """One venue process: our account id, its RPC addresses, and the gateway's account id
    (``broker_account``; unset: the same as ours)."""

    account_id: str
    rep_address: str
    pub_address: str
    broker_account: str | None = None

    @property
    def gateway_account(self) -> str:
        return self.broker_account or self.account_id


class VenueLink:
    """vn.py's RPC gateway to one venue process, rebuilt after a failure."""

    def __init__(self, endpoint: VnpyEndpoint, rpc_timeout: float) -> None:
        self.endpoint = endpoint
        self.timeout_ms = int(rpc_timeout * 1000)
        self.gateway: Any = None
        self.events: Any = None

    def where(self) -> str:
        return f"vnpy venue {self.endpoint.account_id} at {self.endpoint.rep_address}"

    def connect(self) -> None:
        self.close()
        events = EventEngine()
        gateway = RpcGateway(events, "RPC")
        start_client(gateway.client, self.endpoint.rep_address, self.endpoint.pub_address)
        try:
            # A short probe first: RpcGateway.connect's own queries wait 30 s each.
            gateway.client.get_all_accounts(timeout=self.timeout_ms)
        except Exception as exc:
            gateway.client.stop()
            raise VenueError(f"{self.where()}: unreachable ({exc})") from exc
        events.start()
        # vn.py's full query (contracts, account, positions, orders, trades) before anything
        # is sent on the new link.
        gateway.connect({"主动请求地址": self.endpoint.rep_address,
                         "推送订阅地址": self.endpoint.pub_address})
        self.gateway, self.events = gateway, events

    def close(self) -> None:
        if self.gateway is not None:
            self.gateway.client.stop()
            self.gateway = None
        if self.events is not None:
            self.events.stop()
            self.events = None

    def call(self, what: str, name: str, *args: Any) -> Any:
        """A remote call; a link that fails is dropped (rebuilt by the next call) and the
        failure raised as VenueError naming ``what``."""
        if self.gateway is None:
            self.connect()
        try:
            return getattr(self.gateway.client, name)(*args, timeout=self.timeout_ms)
        except Exception as exc:
            # A REQ socket that timed out cannot send again: the next call reconnects.
            self.close()
            raise VenueError(f"{what}: {name} failed at {self.where()}: {exc}") from exc

    def contract(self, symbol: str, what: str) -> tuple[Any, str]:
        """The exchange and the venue-side gateway name of the venue's contract for
        ``symbol`` (contracts reported after the link's first query are asked for again on a
        miss); unknown to the venue: the code's exchange and no gateway."""
        for attempt in range(2):
            if attempt:
                for c in self.call(what, "get_all_contracts"):
                    self.gateway.symbol_gateway_map[c.vt_symbol] = c.gateway_name
            for vt_symbol, gateway_name in self.gateway.symbol_gateway_map.items():
                code, _, exchange = vt_symbol.partition(".")
                if code == symbol:
                    return Exchange(exchange), str(gateway_name)
        return exchange_of(symbol), ""


class VnpyVenue:
    """:class:`trading.venue.ExecutionVenue` over vn.py's RPC (module docstring)."""

    name = "vnpy"

    def __init__(self, endpoints: Iterable[VnpyEndpoint], costs: CostModel, *,
                 rpc_timeout: float = 5.0, ack_timeout: float = 5.0,
                 replay_clock: bool = False, replay_through: dt.date | None = None) -> None:
        self.costs = costs
        self.rpc_timeout = rpc_timeout
        self.ack_timeout = ack_timeout
        self.replay_clock = replay_clock
        self.replay_through = replay_through
        self._links: dict[str, VenueLink] = {}
        for endpoint in endpoints:
            self.add_endpoint(endpoint)

    def add_endpoint(self, endpoint: VnpyEndpoint) -> None:
        if endpoint.account_id in self._links:
            raise VenueError(f"vnpy: account {endpoint.account_id} has an endpoint already")
        self._links[endpoint.account_id] = VenueLink(endpoint, self.rpc_timeout)

    def close(self) -> None:
        for link in self._links.values():
            link.close()

    def _link(self, account_id: str, what: str) -> VenueLink:
        link = self._links.get(account_id)
        if link is None:
            raise VenueError(f"{what}: no vn.py venue process for account {account_id!r} "
                             f"(known: {sorted(self._links)})")
        return link

    # -- accounts ---------------------------------------------------------------------------
    def open_account(self, account_id: str, cash: float) -> None:
        """A live account cannot be funded from here: make sure the venue process serves it
        (a gateway reports its account some time after its login: up to ``ack_timeout``)."""
        what = f"vnpy: open_account {account_id}"
        link = self._link(account_id, what)
        deadline = time.monotonic() + self.ack_timeout
        while True:
            try:
                self._account(link, what)
                return
            except UnknownAccount:
                if time.monotonic() >= deadline:
                    raise
                time.sleep(0.05)

    def _account(self, link: VenueLink, what: str) -> Any:
        wanted = link.endpoint.gateway_account
        accounts = link.call(what, "get_all_accounts")
        for account in accounts:
            if account.accountid == wanted:
                return account
        raise UnknownAccount(f"{what}: the venue at {link.endpoint.rep_address} reports "
                             f"accounts {sorted(a.accountid for a in accounts)}, not "
                             f"{wanted!r}")

    def cash(self, account_id: str) -> float:
        what = f"vnpy: cash of {account_id}"
        return float(self._account(self._link(account_id, what), what).balance)

    def positions(self, account_id: str) -> dict[str, int]:
        what = f"vnpy: positions of {account_id}"
        link = self._link(account_id, what)
        held: dict[str, int] = {}
        for p in link.call(what, "get_all_positions"):
            sign = -1 if SIDE_OF_DIRECTION.get(p.direction) is Side.SELL else 1
            held[p.symbol] = held.get(p.symbol, 0) + sign * int(p.volume)
        return {s: q for s, q in sorted(held.items()) if q}

    # -- orders -----------------------------------------------------------------------------
    def submit(self, order: OrderRequest) -> VenueOrder:
        cid = order.client_order_id
        what = f"vnpy: submit {cid}"
        if not cid:
            raise VenueError("vnpy: submit: empty client_order_id")
        if order.order_type != "market":
            raise VenueError(f"{what}: order type {order.order_type!r} is not supported "
                             "(market orders only)")
        side = Side(order.side)
        link = self._link(order.account_id, what)
        existing = link.call(what, "find_order", cid)
        if existing is None:
            if self.replay_clock:
                # The test venue's hours: it refuses an order for a session it has closed.
                link.call(what, "expect_session", cid, order.session.isoformat())
            exchange, gateway_name = link.contract(order.symbol, what)
            req = VnOrderRequest(
                symbol=order.symbol, exchange=exchange,
                direction=DIRECTION_OF_SIDE[side], type=OrderType.MARKET,
                volume=float(order.quantity), price=float(order.reference_price),
                offset=Offset.NONE, reference=cid)
            vt_orderid = link.call(what, "send_order", req, gateway_name)
            if not vt_orderid:
                raise VenueError(f"{what}: the venue refused {order.symbol} {side} "
                                 f"{order.quantity} without an order id")
        state = self._await(link, cid, what, lambda o: o.status != Status.SUBMITTING)
        if state is None:
            raise VenueError(f"{what}: the venue does not report the order after sending it")
        return state

    def _await(self, link: VenueLink, cid: str, what: str, done: Any) -> VenueOrder | None:
        """The order once ``done(vn.py order)`` holds, or its state at ``ack_timeout`` (None:
        the venue has not reported it by then)."""
        deadline = time.monotonic() + self.ack_timeout
        while True:
            raw = link.call(what, "find_order", cid)
            # Just sent, vn.py's order book may not hold it yet: wait for it too.
            if raw is not None and (done(raw) or time.monotonic() >= deadline):
                return self._state(link, raw, what)
            if raw is None and time.monotonic() >= deadline:
                return None
            time.sleep(0.01)

    def order(self, client_order_id: str) -> VenueOrder | None:
        what = f"vnpy: order {client_order_id}"
        for link in self._links.values():
            raw = link.call(what, "find_order", client_order_id)
            if raw is not None:
                return self._state(link, raw, what)
        return None

    def cancel(self, client_order_id: str) -> VenueOrder:
        what = f"vnpy: cancel {client_order_id}"
        for link in self._links.values():
            raw = link.call(what, "find_order", client_order_id)
            if raw is None:
                continue
            if not raw.is_active():
                return self._state(link, raw, what)
            link.call(what, "cancel_order",
                      CancelRequest(orderid=raw.orderid, symbol=raw.symbol,
                                    exchange=raw.exchange), raw.gateway_name)
            state = self._await(link, client_order_id, what, lambda o: not o.is_active())
            assert state is not None
            # A fill that won the race is the order's final state, not an error.
            return state
        raise UnknownOrder(f"{what}: no order with this client_order_id at the venue")

    def _state(self, link: VenueLink, raw: Any, what: str) -> VenueOrder:
        status = STATUS[raw.status]
        notes: dict[str, str] = link.call(what, "order_notes")
        note = notes.get(raw.vt_orderid)
        reason: str | None = None
        if status is OrderStatus.CANCELLED and note is not None:
            status, reason = OrderStatus.EXPIRED, note or REASON_VENUE_ENDED
        elif status is OrderStatus.REJECTED:
            reason = note or REASON_VENUE_REJECTED
        filled = int(raw.traded)
        average: float | None = None
        if filled:
            trades = [t for t in self._trades(link, what) if t.orderid == raw.orderid]
            volume = sum(float(t.volume) for t in trades)
            if volume:
                average = sum(float(t.price) * float(t.volume) for t in trades) / volume
        return VenueOrder(client_order_id=raw.reference, venue_order_id=raw.vt_orderid,
                          status=status, quantity=int(raw.volume), filled_quantity=filled,
                          average_price=average, reason=reason)

    @staticmethod
    def _trades(link: VenueLink, what: str) -> list[Any]:
        """The venue's trades, one per vn.py trade id."""
        unique = {t.vt_tradeid: t for t in link.call(what, "get_all_trades")}
        return list(unique.values())

    def replay_until(self, account_id: str, at: dt.datetime) -> None:
        """The test venue's market moved to ``at`` (aware) within its session: the session is
        replayed up to that time of day (Shanghai) and stays open (``replay_session``'s
        ``through``); ``fills(account, session)`` replays the rest of it."""
        what = f"vnpy: replay {account_id} until {at.isoformat()}"
        if not self.replay_clock:
            raise VenueError(f"{what}: the venue's market moves by itself (no replay clock)")
        if at.tzinfo is None:
            raise VenueError(f"{what}: the time has no time zone")
        local = at.astimezone(SHANGHAI)
        self._link(account_id, what).call(what, "replay_session", local.date().isoformat(),
                                          local.strftime("%H:%M:%S"))

    # -- execution --------------------------------------------------------------------------
    def fills(self, account_id: str, until: dt.date | None = None) -> Sequence[Fill]:
        what = f"vnpy: fills of {account_id}"
        link = self._link(account_id, what)
        if self.replay_clock:
            session = until if self.replay_through is None else min(
                until or self.replay_through, self.replay_through)
            if session is not None:
                link.call(what, "replay_session", session.isoformat())
        references = {o.vt_orderid: o.reference for o in link.call(what, "get_all_orders")}
        fills: list[Fill] = []
        for t in self._trades(link, what):
            side = SIDE_OF_DIRECTION[t.direction]
            quantity, price = int(t.volume), float(t.price)
            filled_at = t.datetime.astimezone(SHANGHAI)
            fills.append(Fill(
                fill_id=t.vt_tradeid,
                # A trade of an order not sent by us (no reference) carries the venue's id.
                client_order_id=references.get(t.vt_orderid) or t.vt_orderid,
                account_id=account_id, symbol=t.symbol, side=side, quantity=quantity,
                price=price, commission=self.costs.fee(quantity * price, side.value),
                session=filled_at.date(), filled_at=filled_at))
        fills.sort(key=lambda f: (f.filled_at, f.fill_id))
        return fills
