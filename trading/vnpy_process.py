"""The venue process (issue 18): vn.py's MainEngine with the configured gateway and its RPC
service, on loopback ports; :class:`trading.vnpy_venue.VnpyVenue` talks to it over vn.py's RPC.

    python -m trading.vnpy_process --gateway vnpy_ctp:CtpGateway \\
        --setting-env VNPY_GATEWAY_SETTING --rep-port 2014 --pub-port 4102 \\
        --state-dir /var/lib/etf/vnpy-venue

* ``--gateway``: the vn.py gateway class as ``module:Class`` (``vnpy_ctp:CtpGateway``,
  ``vnpy_xtp:XtpGateway``, ... installed beside vn.py; ``trading.vnpy_replay:ReplayGateway`` is
  the test venue). Nothing broker-specific lives in our code.
* The gateway's settings (broker, front addresses, account, password) are its vn.py JSON, read
  from the environment variable ``--setting-env`` names (a secret) or from ``--setting-file``.
* ``--paper``: vn.py's paper account (vnpy_paperaccount) takes the orders instead of the
  gateway (the test venue; or a broker's market data with simulated fills).
* ``--state-dir``: vn.py's working folder (``.vntrader``) and our order journal.

Beside vn.py's own RPC functions (``send_order``, ``cancel_order``, ``get_all_orders``, ...) the
service answers:

* ``send_order(req, gateway_name)``, idempotent on ``req.reference`` (our client_order_id): a
  reference the venue already holds — in the journal, or in vn.py's order book — returns that
  order's id and sends nothing. The journal (``order_journal.jsonl``, fsync'ed) is written
  before the id is returned, and restores the references of the orders a broker reports again
  after a restart (a broker keeps its orders, not our references).
* ``find_order(reference)``: vn.py's order carrying that reference, or None.
* ``order_notes()``: why the venue refused or ended orders (vt_orderid → reason), when the
  gateway says (the test venue does).
* the gateway's own functions (``venue_functions(main_engine, state_dir, launch_dir)``: the
  test venue's replay clock ``replay_session``).

``--ack-delay`` holds each ``send_order`` reply that long after the journal is written: fault
injection for the crash-before-acknowledgement test, never set in a deployment.
"""

from __future__ import annotations

import argparse
import importlib
import json
import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

JOURNAL_FILE = "order_journal.jsonl"


def load_gateway_class(spec: str) -> Any:
    """``module:Class`` → the class; errors name the spec."""
    module_name, _, class_name = spec.partition(":")
    if not module_name or not class_name:
        raise SystemExit(f"vnpy_process: --gateway {spec!r} is not module:Class "
                         "(e.g. vnpy_ctp:CtpGateway)")
    try:
        module = importlib.import_module(module_name)
    except ImportError as exc:
        raise SystemExit(f"vnpy_process: --gateway {spec!r}: cannot import {module_name} "
                         f"({exc}); install the gateway's package beside vn.py") from exc
    try:
        return getattr(module, class_name)
    except AttributeError:
        raise SystemExit(f"vnpy_process: --gateway {spec!r}: {module_name} has no "
                         f"{class_name}") from None


def gateway_setting(env_name: str | None, file: Path | None) -> dict[str, Any]:
    """The gateway's vn.py setting (JSON object) from the environment or a file."""
    if env_name:
        raw = os.environ.get(env_name)
        if raw is None:
            raise SystemExit(f"vnpy_process: --setting-env {env_name}: the variable is not set")
        where = f"${env_name}"
    elif file is not None:
        raw = file.read_text()
        where = str(file)
    else:
        return {}
    try:
        setting = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise SystemExit(f"vnpy_process: the gateway setting in {where} is not JSON: {exc}"
                         ) from exc
    if not isinstance(setting, dict):
        raise SystemExit(f"vnpy_process: the gateway setting in {where} is not a JSON object")
    return setting


class OrderJournal:
    """reference → vt_orderid, appended and fsync'ed before an order's id is returned."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.ids: dict[str, str] = {}
        self.references: dict[str, str] = {}
        if path.is_file():
            for line in path.read_text().splitlines():
                if line.strip():
                    rec = json.loads(line)
                    self.ids[rec["reference"]] = rec["vt_orderid"]
                    self.references[rec["vt_orderid"]] = rec["reference"]

    def record(self, reference: str, vt_orderid: str) -> None:
        with open(self.path, "a") as fh:
            fh.write(json.dumps({"reference": reference, "vt_orderid": vt_orderid}) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        self.ids[reference] = vt_orderid
        self.references[vt_orderid] = reference


class VenueService:
    """Our RPC functions over vn.py's MainEngine (module docstring)."""

    def __init__(self, main_engine: Any, journal: OrderJournal, ack_delay: float) -> None:
        self.main_engine = main_engine
        self.journal = journal
        self.ack_delay = ack_delay
        self.lock = threading.Lock()
        self._send = main_engine.send_order
        self._notes: Any = None

    def send_order(self, req: Any, gateway_name: str) -> str:
        with self.lock:
            if req.reference:
                known = self._known(req.reference)
                if known is not None:
                    return known
            vt_orderid = str(self._send(req, gateway_name))
            if vt_orderid and req.reference:
                self.journal.record(req.reference, vt_orderid)
                if self.ack_delay:
                    time.sleep(self.ack_delay)
            return vt_orderid

    def _known(self, reference: str) -> str | None:
        vt_orderid = self.journal.ids.get(reference)
        if vt_orderid is not None:
            return vt_orderid
        order = self.find_order(reference)
        return None if order is None else str(order.vt_orderid)

    def find_order(self, reference: str) -> Any:
        vt_orderid = self.journal.ids.get(reference)
        if vt_orderid is not None:
            order = self.main_engine.get_order(vt_orderid)
            if order is not None:
                return order
        for order in self.main_engine.get_all_orders():
            if order.reference == reference:
                return order
        return None

    def order_notes(self) -> dict[str, str]:
        return dict(self._notes()) if self._notes is not None else {}

    def on_order(self, event: Any) -> None:
        """A broker reporting its orders again after a restart does not know our references:
        the journal puts them back."""
        order = event.data
        if not order.reference:
            order.reference = self.journal.references.get(order.vt_orderid, "")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m trading.vnpy_process",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--gateway", required=True, help="vn.py gateway class, module:Class")
    parser.add_argument("--gateway-name", default="", help="default: the class's default_name")
    parser.add_argument("--setting-env", default=None,
                        help="environment variable holding the gateway's JSON setting")
    parser.add_argument("--setting-file", type=Path, default=None)
    parser.add_argument("--paper", action="store_true",
                        help="vn.py's paper account takes the orders (vnpy_paperaccount)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--rep-port", type=int, required=True)
    parser.add_argument("--pub-port", type=int, required=True)
    parser.add_argument("--state-dir", type=Path, required=True)
    parser.add_argument("--ack-delay", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    setting = gateway_setting(args.setting_env, args.setting_file)
    launch_dir = Path.cwd()
    state_dir: Path = args.state_dir.resolve()
    (state_dir / ".vntrader").mkdir(parents=True, exist_ok=True)
    # vn.py picks its working folder (.vntrader) from the current directory at import.
    os.chdir(state_dir)
    from trading.vnpy_api import (
        EVENT_ORDER,
        EventEngine,
        MainEngine,
        PaperAccountApp,
        RpcServiceApp,
    )

    gateway_class = load_gateway_class(args.gateway)
    event_engine = EventEngine()
    main_engine = MainEngine(event_engine)
    gateway = main_engine.add_gateway(gateway_class, args.gateway_name)
    if args.paper:
        main_engine.add_app(PaperAccountApp)
    extra: list[Any] = []
    if hasattr(gateway, "venue_functions"):
        extra = list(gateway.venue_functions(main_engine, state_dir, launch_dir))
    rpc = main_engine.add_app(RpcServiceApp)
    service = VenueService(main_engine, OrderJournal(state_dir / JOURNAL_FILE), args.ack_delay)
    event_engine.register(EVENT_ORDER, service.on_order)
    for func in extra:
        if func.__name__ == "order_notes":
            service._notes = func
        else:
            rpc.server.register(func)
    for func in (service.send_order, service.find_order, service.order_notes):
        rpc.server.register(func)

    main_engine.connect(setting, gateway.gateway_name)
    rep = f"tcp://{args.host}:{args.rep_port}"
    pub = f"tcp://{args.host}:{args.pub_port}"
    try:
        rpc.server.start(rep, pub)
    except Exception as exc:
        print(f"vnpy_process: the RPC service did not start on {rep} / {pub}: {exc}",
              file=sys.stderr, flush=True)
        main_engine.close()
        return 1
    print(f"vnpy venue ready: gateway {gateway.gateway_name} rep {rep} pub {pub}", flush=True)

    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    while not stop.wait(0.5):
        pass
    main_engine.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
