"""The daily path through the vn.py venue (issue 18) on real data: ``ETF_EXECUTION__VENUE=vnpy``.

cn_etf_morphkyan_raw backfilled and researched as the daily schedule's test has it
(tests/test_daily_schedule.py: 2021-01-04 .. 2023-12-26 on a dagster-postgres instance), then
ten evenings in a row (2023-12-27 .. 2024-01-10, New Year's Day between them), each as the
daemon runs it: the schedule's tick, daily_job, approved_signal_sensor, execution_job, whose
execution resource is now vn.py's RPC client of the test venue process (``python -m
orchestration.vnpy_venue``: our replay gateway over the same stored bars and vn.py's paper
account, on loopback ports), and positions_report. Every evening the ledger's book equals the
venue's (the blocking check ``ledger_matches_venue``, and read directly over RPC) and the
account stays within the parity tolerance of the backtest (``paper_matches_backtest``).

The replay clock: the test venue's market moves only when the client asks for the fills through
a session (``fills(account, D)`` opens session D), which the execution on evening D does before
it plans: the orders of evening D-1 fill at D's open, as the paper venue fills them. It never
opens a session past the clock's (the execution resource bounds it by its quotes' last session).
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from demo_home import free_port
from test_daily_schedule import (
    QUIET,
    ROOT,
    DailyMarket,
    Evenings,
    executed_signals,
    researched_market,
    schedule_ticks,
)
from test_vnpy_venue import VenueProcess, launch_venue, stop_venues

from assets.signals import BOOK_CHECK, PARITY_CHECK
from jobs.execution import ACCOUNT_TAG, VENUE_TAG
from orchestration.definitions import strategy_for
from orchestration.settings import Settings
from orchestration.vnpy_venue import vnpy_venue
from trading.ledger import Ledger

# Ten sessions after the research's last (2023-12-26); 2024-01-01 is a holiday between them.
EVENINGS = ("2023-12-27", "2024-01-10")
SESSIONS = 10
# The replayed bars: from a month before the first evening (previous closes for the price
# limits) through the last.
REPLAY_START = "2023-11-27"


@dataclass
class VnpyDaily:
    market: DailyMarket
    venue: VenueProcess

    def settings(self, day: str, ledger_url: str) -> Settings:
        return self.market.settings(day, ledger_url)


@pytest.fixture(scope="module")
def vnpy_daily(tmp_path_factory: pytest.TempPathFactory, shared_data: Path
               ) -> Iterator[VnpyDaily]:
    home = tmp_path_factory.mktemp("vnpy_daily_home")
    rep, pub = free_port(), free_port()
    while pub == rep:
        pub = free_port()
    # What a deployment sets (README, docs/execution_venue.md §10), as settings of every evening.
    execution = {"venue": "vnpy", "vnpy": {"rep_port": rep, "pub_port": pub,
                                           "replay_clock": True, "rpc_timeout_seconds": 10.0}}
    with researched_market(home, shared_data, execution) as market:
        settings = market.settings(EVENINGS[1])
        account = settings.execution.account_id
        state = home / "vnpy_venue"
        env = {"ETF_EXECUTION__ACCOUNT_ID": account,
               "ETF_EXECUTION__VENUE": "vnpy",
               "ETF_EXECUTION__VNPY__GATEWAY": "trading.vnpy_replay:ReplayGateway",
               "ETF_EXECUTION__VNPY__PAPER": "true",
               "ETF_EXECUTION__VNPY__GATEWAY_SETTING": json.dumps({
                   "dataset": {"root": str(shared_data / "cn_etf_morphkyan_raw"),
                               "config": str(ROOT / "config/datasets/cn_etf_morphkyan_raw.yaml"),
                               "start": REPLAY_START, "end": EVENINGS[1]},
                   "account": account, "cash": settings.execution.initial_cash,
                   "costs": dataclasses.asdict(strategy_for(settings).cost_model)}),
               "ETF_EXECUTION__VNPY__REP_PORT": str(rep),
               "ETF_EXECUTION__VNPY__PUB_PORT": str(pub),
               "ETF_EXECUTION__VNPY__STATE_DIR": str(state)}
        venue = VenueProcess(account, state, rep, pub, None)
        try:
            launch_venue(venue, [sys.executable, "-m", "orchestration.vnpy_venue"], env)
            yield VnpyDaily(market, venue)
        finally:
            stop_venues([venue])


def positions_report(defs: dg.Definitions, instance: dg.DagsterInstance
                     ) -> tuple[dict[str, Any], dict[str, dg.AssetCheckEvaluation]]:
    result = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, run_config=QUIET, raise_on_error=False,
        asset_selection=[dg.AssetKey("positions_report")])
    assert result.success, result.get_step_failure_events()
    [event] = result.asset_materializations_for_node("positions_report")
    checks = {c.check_name: c for c in result.get_asset_check_evaluations()}
    return {k: v.value for k, v in event.metadata.items()}, checks


def test_daily_path_through_the_vnpy_venue(vnpy_daily: VnpyDaily, ledger_url: str) -> None:
    market, instance = vnpy_daily.market, vnpy_daily.market.instance
    evenings = Evenings(market, ledger_url)
    ledger = Ledger(ledger_url)
    began = time.monotonic()
    reports: dict[str, dict[str, Any]] = {}
    try:
        for day in schedule_ticks(*EVENINGS):
            evenings.run(day)
            if day in evenings.skipped or not any(
                    s["status"] == "approved" for s in evenings.signals.values()):
                continue
            settings = vnpy_daily.settings(day, ledger_url)
            defs = market.definitions(day, ledger_url)
            meta, checks = positions_report(defs, instance)
            assert checks[BOOK_CHECK].passed, (day, checks[BOOK_CHECK].metadata)
            assert checks[PARITY_CHECK].passed, (day, checks[PARITY_CHECK].metadata)
            reports[day] = meta
            # The venue's own book over RPC: the ledger's, unit for unit and to the cent.
            account = settings.execution.account_id
            venue = vnpy_venue(settings, strategy_for(settings).cost_model, replay_clock=True)
            try:
                assert venue.positions(account) == {
                    s: p.quantity for s, p in ledger.positions(account).items()}, day
                assert venue.cash(account) == pytest.approx(ledger.cash(account), abs=0.01), day
                final_positions = venue.positions(account)
                final_cash = venue.cash(account)
            finally:
                venue.close()
        elapsed = time.monotonic() - began

        assert len(evenings.signals) == SESSIONS and evenings.skipped == ["2024-01-01"]
        approved = executed_signals(ledger, evenings.signals)
        # Every execution run went through the vn.py venue, once per approved signal.
        runs = instance.get_runs(dg.RunsFilter(job_name="execution_job"))
        assert len(runs) == len(approved)
        assert {(r.tags[ACCOUNT_TAG], r.tags[VENUE_TAG]) for r in runs} == {
            (vnpy_daily.venue.account_id, "vnpy")}
        account = vnpy_daily.venue.account_id
        orders = ledger.orders(account_id=account)
        assert orders and len({o.order_id for o in orders}) == len(orders)
        # No order ended for want of a bar: every session was replayed before its orders were
        # reconciled, and none past the clock's (the last evening's orders, for 2024-01-11,
        # beyond the replayed bars, are still open at the venue).
        unseen = [o.order_id for o in orders if "no_bar" in (o.reason or "")]
        assert not unseen, unseen
        fills = ledger.fills(account)
        # vn.py's paper account's trades: its trade ids, on sessions of the ten evenings.
        assert fills and all(f.fill_id.startswith("PAPER.") for f in fills)
        assert len({f.fill_id for f in fills}) == len(fills)
        first, last = (dt.date.fromisoformat(d) for d in EVENINGS)
        assert all(first < f.session <= last for f in fills)
        # positions_report, its parity with the backtest and the venue's book every evening
        # from the first approved signal on (the first evening's here).
        assert list(reports) == list(evenings.signals)
        # At the end the ledger's cash and positions are the venue's, and not an empty book.
        assert final_positions, "the account holds nothing after ten evenings"
        assert final_positions == {s: p.quantity for s, p in ledger.positions(account).items()}
        assert final_cash == pytest.approx(ledger.cash(account), abs=0.01)
        assert final_cash < settings.execution.initial_cash
        print(f"\n{SESSIONS} evenings through the vn.py venue: {elapsed:.0f} s; "
              f"{len(approved)} signals approved, {len(orders)} orders, {len(fills)} fills; "
              f"equity {float(reports[EVENINGS[1]]['equity']):,.2f}")
    finally:
        ledger.dispose()


def test_the_vnpy_venue_settings_name_what_is_missing(make_settings: Callable[..., Settings]
                                                      ) -> None:
    """``execution.venue: vnpy`` needs the venue process's ports, and serves one account."""
    with pytest.raises(ValueError) as missing:
        make_settings(execution={"venue": "vnpy", "vnpy": {"rep_port": 3014}})
    assert ("execution.venue is 'vnpy' but execution.vnpy.pub_port "
            "[env ETF_EXECUTION__VNPY__PUB_PORT] is not set") in str(missing.value)
    with pytest.raises(ValueError) as neither:
        make_settings(execution={"venue": "vnpy"})
    assert ("execution.vnpy.rep_port [env ETF_EXECUTION__VNPY__REP_PORT] and "
            "execution.vnpy.pub_port [env ETF_EXECUTION__VNPY__PUB_PORT] are not set"
            ) in str(neither.value)
    with pytest.raises(ValueError) as further:
        make_settings(execution={
            "venue": "vnpy", "vnpy": {"rep_port": 3014, "pub_port": 3015},
            "accounts": [{"account_id": "paper-two", "allocation": {"strategies": ["x"]}}]})
    assert ("execution.venue is 'vnpy' but execution.accounts lists ['paper-two']: a vn.py "
            "venue process is one broker login") in str(further.value)
    with pytest.raises(ValueError, match=r"execution\.venue"):
        make_settings(execution={"venue": "ctp"})
    # A further account cannot name a vn.py venue of its own (one process, one login).
    with pytest.raises(ValueError) as own:
        make_settings(execution={"accounts": [
            {"account_id": "two", "venue": "vnpy", "allocation": {"strategies": ["x"]}}]})
    assert ("setting execution.accounts.0.venue [env ETF_EXECUTION__ACCOUNTS__0__VENUE]: "
            "Input should be 'paper' (got 'vnpy')") in str(own.value)


def test_the_code_location_on_the_vnpy_venue_imports_no_vnpy(tmp_path: Path) -> None:
    """ETF_EXECUTION__VENUE=vnpy: the execution resource is vn.py's client of execution.vnpy's
    process, and building the code location imports no vn.py (it is imported when a venue is
    made, in a run)."""
    code = (
        "import sys; from orchestration.definitions import build_definitions; "
        "from orchestration.settings import load_settings; "
        "from resources.deployment import deployed; "
        "from resources.execution import VnpyExecution; "
        f"defs = build_definitions(load_settings(home={str(tmp_path)!r})); "
        "r = deployed(defs, 'execution', VnpyExecution); "
        "print(r.name, r.account_id, r.rep_address, r.pub_address, r.replay_clock); "
        "print(sorted(m for m in sys.modules if m.split('.')[0] in "
        "('vnpy', 'vnpy_rpcservice', 'vnpy_paperaccount') or m.startswith('trading.vnpy_')))")
    env = {**os.environ, "PYTHONPATH": str(ROOT), "ETF_EXECUTION__VENUE": "vnpy",
           "ETF_EXECUTION__VNPY__HOST": "10.1.2.3", "ETF_EXECUTION__VNPY__REP_PORT": "3014",
           "ETF_EXECUTION__VNPY__PUB_PORT": "3015",
           "ETF_POSTGRES_URL": "postgresql+psycopg://127.0.0.1:5432/etf_not_opened"}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            text=True, timeout=300, env=env, check=False)
    assert result.returncode == 0, result.stderr[-3000:]
    made, imported = result.stdout.strip().splitlines()[-2:]
    assert made == "vnpy paper-main tcp://10.1.2.3:3014 tcp://10.1.2.3:3015 False"
    assert imported == "[]", result.stdout
