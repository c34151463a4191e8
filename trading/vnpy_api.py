"""The one module that imports vn.py (issue 18): its classes, enums and the mapping table between
vn.py's order states, exchanges and directions and ours.

vn.py ships no type information, so everything taken from it is ``Any`` here and nowhere else:
the venue (:mod:`trading.vnpy_venue`), the venue process (:mod:`trading.vnpy_process`) and the
test venue (:mod:`trading.vnpy_replay`) reach vn.py only through this module. Importing it
imports vn.py (about a second): Dagster code locations import it only where a vn.py venue is
built, never at load time.

Nothing here is broker-specific: a broker is a vn.py gateway class named in the settings.
"""

from __future__ import annotations

import threading
import time
from typing import Any

import zmq
from vnpy.event import Event, EventEngine
from vnpy.rpc import RpcClient, RpcServer
from vnpy.trader.constant import Direction, Exchange, Offset, OrderType, Product, Status
from vnpy.trader.engine import BaseEngine, MainEngine
from vnpy.trader.event import (
    EVENT_ACCOUNT,
    EVENT_CONTRACT,
    EVENT_ORDER,
    EVENT_POSITION,
    EVENT_TICK,
    EVENT_TRADE,
)
from vnpy.trader.gateway import BaseGateway
from vnpy.trader.object import (
    AccountData,
    CancelRequest,
    ContractData,
    OrderData,
    OrderRequest,
    PositionData,
    SubscribeRequest,
    TickData,
    TradeData,
)
from vnpy.trader.utility import BarGenerator
from vnpy_paperaccount import PaperAccountApp
from vnpy_rpcservice import RpcServiceApp
from vnpy_rpcservice.rpc_gateway import RpcGateway

from trading.models import OrderStatus, Side

__all__ = [
    "DIRECTION_OF_SIDE",
    "EVENT_ACCOUNT",
    "EVENT_CONTRACT",
    "EVENT_ORDER",
    "EVENT_POSITION",
    "EVENT_TICK",
    "EVENT_TRADE",
    "EXCHANGE_OF_MARKET",
    "SIDE_OF_DIRECTION",
    "STATUS",
    "AccountData",
    "BarGenerator",
    "BaseEngine",
    "BaseGateway",
    "CancelRequest",
    "ContractData",
    "Direction",
    "Event",
    "EventEngine",
    "Exchange",
    "MainEngine",
    "Offset",
    "OrderData",
    "OrderRequest",
    "OrderType",
    "PaperAccountApp",
    "PositionData",
    "Product",
    "RpcClient",
    "RpcGateway",
    "RpcServer",
    "RpcServiceApp",
    "Status",
    "SubscribeRequest",
    "TickData",
    "TradeData",
    "exchange_of",
    "start_client",
]

# -- the mapping table --------------------------------------------------------------------------
# vn.py order status → ours. CANCELLED is ours only when we asked for it: the venue process
# notes every order it ends itself (the session closed on it), and those are EXPIRED
# (trading.vnpy_venue). SUBMITTING is "sent, not yet acknowledged".
STATUS: dict[Any, OrderStatus] = {
    Status.SUBMITTING: OrderStatus.SUBMITTED,
    Status.NOTTRADED: OrderStatus.SUBMITTED,
    Status.PARTTRADED: OrderStatus.PARTIALLY_FILLED,
    Status.ALLTRADED: OrderStatus.FILLED,
    Status.CANCELLED: OrderStatus.CANCELLED,
    Status.REJECTED: OrderStatus.REJECTED,
}
# Our side ↔ vn.py's direction (cash equities trade net: Offset.NONE, Direction.LONG buys).
DIRECTION_OF_SIDE: dict[Side, Any] = {Side.BUY: Direction.LONG, Side.SELL: Direction.SHORT}
SIDE_OF_DIRECTION: dict[Any, Side] = {v: k for k, v in DIRECTION_OF_SIDE.items()}
# The exchange suffix of our instruments (rotation.bars.Instrument.exchange) → vn.py's exchange.
EXCHANGE_OF_MARKET: dict[str, Any] = {"SH": Exchange.SSE, "SZ": Exchange.SZSE,
                                      "BJ": Exchange.BSE}


def exchange_of(symbol: str, market: str = "") -> Any:
    """vn.py's exchange of a fund: its instrument's exchange suffix when known, else the code's
    (Shanghai funds are 5xxxxx/6xxxxx, Beijing 4xxxxx/8xxxxx, the rest Shenzhen)."""
    if market:
        try:
            return EXCHANGE_OF_MARKET[market.upper()]
        except KeyError:
            raise ValueError(f"{symbol}: exchange {market!r} is not in the vn.py mapping "
                             f"{sorted(EXCHANGE_OF_MARKET)}") from None
    if symbol[:1] in ("5", "6"):
        return Exchange.SSE
    if symbol[:1] in ("4", "8"):
        return Exchange.BSE
    return Exchange.SZSE


def start_client(client: Any, req_address: str, sub_address: str) -> None:
    """``RpcClient.start`` with its listening thread a daemon (vn.py's is not: a client whose
    server died would hold the interpreter's exit for the heartbeat tolerance, 30 s)."""
    if client._active:
        return
    client._socket_req.setsockopt(zmq.LINGER, 0)
    client._socket_sub.setsockopt(zmq.LINGER, 0)
    client._socket_req.connect(req_address)
    client._socket_sub.connect(sub_address)
    client._active = True
    client._thread = threading.Thread(target=client.run, daemon=True,
                                      name=f"vnpy-rpc-client {req_address}")
    client._thread.start()
    client._last_received_ping = time.time()
