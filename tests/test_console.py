"""The desk console (issue 17, first slice) in Debian's Chromium through Playwright, against
``python -m api`` on a seeded scratch ledger: sign-in and sign-out, what each role sees and
may press, the Today page (decision with its reasons, freshness, quality, kill switch) and the
Book page following the event stream. Every page must render with no console error; a
screenshot of each (full page, laptop width) is saved in the test's folder and in
``ETF_TEST_SHOTS`` (default /tmp/console_shots)."""

from __future__ import annotations

import datetime as dt
import os
import shutil
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pandas as pd
import pytest
from api_desk import PASSWORD, SESSION, desk
from chromium import chromium
from test_api_events import new_order, receive
from test_api_live import Live, api_env, free_port, serve_api
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import connect

from api.deps import ACCESS_COOKIE
from api.permissions import Role
from orchestration.instance import LOCAL_INSTANCE_YAML
from trading.models import Fill, Side

V1 = "/api/v1"
SHOTS = Path(os.environ.get("ETF_TEST_SHOTS", "/tmp/console_shots"))
LAPTOP = {"width": 1366, "height": 768}
FILL_LATENCY_MS = 2000
LOAD_MS = 10_000
# The API's answer for a session nothing was checked for (the page says so): Chromium logs
# every 4xx fetch as a console error, so this one, and only this one, is expected.
EXPECTED_404 = f"{V1}/quality/sessions/"


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    """``python -m api`` on a free port, trading the desk's seeded account."""
    with desk(tmp_path_factory.mktemp("console_home"), login_attempts=1000) as d:
        # The local Dagster instance the quality endpoint reads (empty: nothing checked).
        d.settings.dagster_home.mkdir(parents=True)
        (d.settings.dagster_home / "dagster.yaml").write_text(LOCAL_INSTANCE_YAML,
                                                              encoding="utf-8")
        store_target(d.settings.resolved_storage_root)
        log = tmp_path_factory.mktemp("console_log") / "server.log"
        env = api_env(d, API_PORT=str(free_port()), ETF_EXECUTION__ACCOUNT_ID=d.account)
        with serve_api(env, log) as url:
            yield Live(url=url, desk=d, log=log)


def store_target(storage: Path) -> None:
    """The target portfolio the research stage stores for the signal's session."""
    storage.mkdir(parents=True, exist_ok=True)
    pd.DataFrame({"date": pd.Timestamp("2024-03-04"), "strategy": "etf_rotation_sample",
                  "window": "w07", "symbol": ["510300", "159915", "512880"],
                  "rank": [1.0, 2.0, float("nan")], "weight": [0.6, 0.4, 0.0],
                  "reason": ["top 2 by momentum", "top 2 by momentum",
                             "below the hysteresis band"]}
                 ).to_parquet(storage / "target_portfolio.parquet")


@pytest.fixture(scope="module")
def browser(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    with chromium(SHOTS) as b:
        yield b


@dataclass
class Tab:
    """A page of its own browser context (its own cookies), with the errors it logged."""

    page: Any
    shots: Path
    errors: list[str] = field(default_factory=list)

    def screenshot(self, name: str) -> Path:
        path = self.shots / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=True)
        SHOTS.mkdir(parents=True, exist_ok=True)
        shutil.copy(path, SHOTS / path.name)
        return path

    def assert_no_errors(self) -> None:
        assert self.errors == [], self.errors


def _console_error(errors: list[str], message: Any) -> None:
    if message.type != "error":
        return
    if EXPECTED_404 in message.location.get("url", "") and "404" in message.text:
        return
    errors.append(f"console: {message.text} at {message.location}")


@pytest.fixture
def open_tab(browser: Any, tmp_path: Path) -> Iterator[Any]:
    contexts: list[Any] = []

    def open_() -> Tab:
        context = browser.new_context(viewport=LAPTOP)
        contexts.append(context)
        tab = Tab(page=context.new_page(), shots=tmp_path)
        tab.page.on("console", lambda m: _console_error(tab.errors, m))
        tab.page.on("pageerror", lambda e: tab.errors.append(f"page error: {e}"))
        return tab

    yield open_
    for context in contexts:
        context.close()


def sign_in(tab: Tab, live: Live, role: Role, page: str = "today") -> None:
    """From the console's address through the sign-in form and back to the page."""
    tab.page.goto(f"{live.url}/console/{page}")
    assert "/signin?next=" in tab.page.url
    tab.page.fill("#username", live.desk.username(role))
    tab.page.fill("#password", PASSWORD)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_url(f"**/console/{page}")


def test_sign_in_reaches_the_console_and_sign_out_leaves_it(live: Live, open_tab: Any) -> None:
    tab = open_tab()
    tab.page.goto(f"{live.url}/console")
    assert "/signin?next=" in tab.page.url
    tab.screenshot("signin")
    tab.page.fill("#username", live.desk.username(Role.RISK))
    tab.page.fill("#password", "not the password")
    tab.page.click("button[type=submit]")
    assert "wrong username or password" in tab.page.inner_text("[role=alert]")
    # That page's 401 is logged by Chromium as a console error: it is the refusal asked for.
    tab.errors.clear()
    sign_in(tab, live, Role.RISK)
    header = tab.page.inner_text("header.top")
    assert live.desk.username(Role.RISK) in header and "risk" in header
    assert live.desk.account in tab.page.input_value("#account")
    tab.page.wait_for_selector("#live-status.on", timeout=LOAD_MS)
    tab.page.click("text=Sign out")
    tab.page.wait_for_url("**/signin")
    tab.page.goto(f"{live.url}/console/book")
    assert "/signin?next=" in tab.page.url
    tab.assert_no_errors()


def test_an_account_the_deployment_does_not_trade_is_said_plainly(live: Live, open_tab: Any
                                                                  ) -> None:
    tab = open_tab()
    sign_in(tab, live, Role.VIEWER)
    answer = tab.page.goto(f"{live.url}/console/book?account=elsewhere")
    assert answer is not None and answer.status == 404
    text = tab.page.inner_text("body")
    assert "'elsewhere' is not an account of this deployment" in text
    assert live.desk.account in text and "Traceback" not in text
    missing = tab.page.request.get(f"{live.url}/console/static/..%2Fdeps.py")
    assert missing.status == 404 and "Traceback" not in missing.text()


def test_a_viewer_reads_today_but_has_no_kill_switch_control(live: Live, open_tab: Any
                                                            ) -> None:
    tab = open_tab()
    sign_in(tab, live, Role.VIEWER)
    page = tab.page
    page.wait_for_selector("#decision .status", timeout=LOAD_MS)
    decision = page.inner_text("#decision")
    # The latest decision of the session is the rejected one, with its rule and message.
    assert "REJECTED" in decision and "max_weight" in decision
    assert "weight 1.00 above the 0.60 cap" in decision
    # The session's earlier (approved) decision is listed beside it.
    page.wait_for_selector(f"#decision >> text={live.desk.approved.signal_id}", timeout=LOAD_MS)
    page.wait_for_selector("#quality:not(:has(.loading))", timeout=LOAD_MS)
    assert "No quality check has run on the data of session 2024-03-04" in \
        page.inner_text("#quality")
    assert "Latest session 2024-03-04" in page.inner_text("#freshness")
    page.wait_for_selector("#kill-switch-state.released", timeout=LOAD_MS)
    assert page.locator("[data-kill-switch]").count() == 0
    assert "cannot change the kill switch" in page.inner_text("#kill-switch")
    page.wait_for_selector("#target table", timeout=LOAD_MS)
    target = page.inner_text("#target")
    assert "as of 2024-03-04, walk-forward window w07" in target
    assert "512880" in target and "below the hysteresis band" in target and "60.00 %" in target
    tab.screenshot("today_viewer")
    # The API refuses the viewer's session cookie on the route, as it refuses its token.
    engage = f"{live.url}{V1}/accounts/{live.desk.account}/kill-switch/engage"
    refused = page.request.post(engage, data={"reason": "not allowed"},
                                headers={"X-Desk-Console": "1"})
    assert refused.status == 403 and "kill_switch.engage" in refused.json()["detail"]
    # Without the console's header the cookie is no credential at all (no CSRF through it).
    assert page.request.post(engage, data={"reason": "forged"}).status == 401
    tab.assert_no_errors()


def test_a_trader_engages_the_kill_switch_and_the_banner_appears(live: Live, open_tab: Any
                                                                ) -> None:
    tab = open_tab()
    sign_in(tab, live, Role.TRADER)
    page = tab.page
    page.wait_for_selector("#kill-switch-state.released", timeout=LOAD_MS)
    assert page.locator("[data-kill-switch=release]").count() == 0   # risk and admin only
    assert "Releasing it is for: risk, admin" in page.inner_text("#kill-switch")
    assert page.is_hidden("#kill-banner")
    page.click("[data-kill-switch=engage]")
    assert page.is_visible("#kill-dialog")
    assert live.desk.account in page.inner_text("#kill-dialog-title")
    page.fill("#kill-reason", "venue outage drill")
    tab.screenshot("today_trader_confirm")
    page.click("#kill-confirm")
    page.wait_for_selector("#kill-banner:not([hidden])", timeout=LOAD_MS)
    banner = page.inner_text("#kill-banner")
    assert "KILL SWITCH ENGAGED" in banner and "venue outage drill" in banner
    assert live.desk.username(Role.TRADER) in banner
    tab.screenshot("today_trader_engaged")
    tab.assert_no_errors()
    # Risk releases it from the same page (its own session): the banner goes.
    risk = open_tab()
    sign_in(risk, live, Role.RISK)
    risk.page.wait_for_selector("#kill-banner:not([hidden])", timeout=LOAD_MS)
    risk.page.click("[data-kill-switch=release]")
    risk.page.fill("#kill-reason", "drill over")
    risk.page.click("#kill-confirm")
    risk.page.wait_for_selector("#kill-switch-state.released", timeout=LOAD_MS)
    assert risk.page.is_hidden("#kill-banner")
    risk.screenshot("today_risk_released")
    # The trader's open page hears of it from the event stream, without a reload.
    page.wait_for_selector("#kill-banner[hidden]", state="attached", timeout=FILL_LATENCY_MS)
    switch = httpx.get(f"{live.url}{V1}/accounts/{live.desk.account}/kill-switch",
                       headers=live.desk.headers(Role.VIEWER)).json()
    assert (switch["engaged"], switch["reason"]) == (False, "drill over")
    assert switch["actor"] == f"api:{live.desk.username(Role.RISK)}"
    risk.assert_no_errors()


def test_a_fill_booked_in_the_ledger_appears_on_the_open_book(live: Live, open_tab: Any
                                                             ) -> None:
    d = live.desk
    store_valuations(d)
    tab = open_tab()
    sign_in(tab, live, Role.VIEWER, page="book")
    page = tab.page
    page.wait_for_selector("#live-status.on", timeout=LOAD_MS)
    page.wait_for_selector("#pnl >> text=2024-03-05", timeout=LOAD_MS)
    pnl = page.inner_text("#pnl")      # equity 1,000,085 against 1,000,000 initial cash
    assert "+85.00" in pnl and "1,000,085.00" in pnl
    # Worst gap 1,000,085 / 1,000,070 - 1: within the deployment's tolerance.
    assert "Parity with the backtest: within tolerance (worst 0.001 %, tolerance 1.00 %)" in pnl
    assert "-0.001 %" in pnl
    assert "999,940.00" in pnl and "999,950.00" in pnl
    chart = page.evaluate("() => document.getElementById('equity-chart').data.map("
                          "t => [t.name, t.y.length, t.y[t.y.length - 1]])")
    assert chart == [["Paper book", 12, 1_000_085.0],
                     ["Backtest, same signals", 12, 1_000_070.0]]
    sessions = page.locator("#pnl")         # newest first, ten a page
    assert "1–10 of 12" in sessions.inner_text() and "2024-02-19" not in sessions.inner_text()
    sessions.locator("[data-page=next]").click()
    assert "11–12 of 12" in sessions.inner_text() and "2024-02-19" in sessions.inner_text()
    page.wait_for_selector(f"#fills >> text=f-{d.account}", timeout=LOAD_MS)
    assert "1,000" in page.inner_text("#positions")
    order = new_order(d)
    fill = Fill(fill_id=f"console-{d.account}", client_order_id=order.order_id,
                account_id=d.account, symbol="159915", side=Side.BUY, quantity=2000,
                price=2.12, commission=4.0, session=SESSION,
                filled_at=dt.datetime(2024, 3, 5, 9, 31, tzinfo=dt.UTC))
    ledger = d.ledger()
    try:
        booked = time.monotonic()
        assert ledger.record_fill(fill, actor="paper_broker")
        page.wait_for_selector(f"#fills >> text={fill.fill_id}", timeout=FILL_LATENCY_MS)
        latency = time.monotonic() - booked
    finally:
        ledger.dispose()
    print(f"fill on the page after {latency * 1000:.0f} ms")
    page.wait_for_selector("#positions >> text=159915", timeout=FILL_LATENCY_MS)
    assert page.url.endswith("/console/book")          # no reload, no navigation
    # A click on a heading sorts by the column, a second click the other way.
    funds = page.locator("#positions tbody tr td:first-child")
    page.click("#positions th >> text=Quantity")
    assert funds.all_inner_texts() == ["510300", "159915"]          # 1,000 then 2,000
    page.click("#positions th >> text=Quantity")
    assert funds.all_inner_texts() == ["159915", "510300"]
    assert page.get_attribute("#positions th:has-text('Quantity')", "aria-sort") == "descending"
    tab.screenshot("book_viewer")
    tab.assert_no_errors()


# Three sessions of the account: the ledger's valuation (cash, positions value) and the
# backtest's equity for the same signals, as positions_report stores them.
# Twelve sessions (more than the P&L table's page of ten), all cash until 2024-03-01.
VALUATIONS = (*((day.date(), 1_000_000.0, 0.0, 1_000_000.0)
                for day in pd.bdate_range("2024-02-19", "2024-03-01")),
              (dt.date(2024, 3, 4), 996_440.0, 3_500.0, 999_950.0),
              (SESSION, 996_485.0, 3_600.0, 1_000_070.0))


def store_valuations(d: Any) -> None:
    ledger = d.ledger()
    try:
        for session, cash, positions_value, _ in VALUATIONS:
            ledger.record_valuation(d.account, session, cash=cash,
                                    positions_value=positions_value, actor="test")
    finally:
        ledger.dispose()
    pd.DataFrame({"date": [pd.Timestamp(v[0]) for v in VALUATIONS],
                  "backtest_equity": [v[3] for v in VALUATIONS]}
                 ).to_parquet(d.settings.resolved_storage_root / "positions_report.parquet")


def test_the_session_cookie_is_a_credential_only_from_this_site(live: Live) -> None:
    """The console's calls carry the access cookie: accepted with the console's header from
    this origin; refused from another site, on REST and on the event stream alike."""
    me = f"{live.url}{V1}/auth/me"
    cookies = {ACCESS_COOKIE: live.desk.token(Role.TRADER)}
    console = {"X-Desk-Console": "1"}
    assert httpx.get(me, cookies=cookies, headers=console).json()["role"] == "trader"
    assert httpx.get(me, cookies=cookies).status_code == 401
    for foreign in ({"Sec-Fetch-Site": "cross-site"}, {"Sec-Fetch-Site": "same-site"},
                    {"Origin": "http://desk.example.org"}):
        assert httpx.get(me, cookies=cookies, headers={**console, **foreign}).status_code == 401
    stream = live.url.replace("http://", "ws://") + f"{V1}/events"
    cookie_header = {"Cookie": f"{ACCESS_COOKIE}={cookies[ACCESS_COOKIE]}"}
    with connect(stream, origin=live.url, additional_headers=cookie_header,
                 open_timeout=LOAD_MS / 1000) as ws:
        assert receive(ws).payload["notice"] == "subscribed"
    with (connect(stream, origin="http://desk.example.org", additional_headers=cookie_header,
                  open_timeout=LOAD_MS / 1000) as ws,
          pytest.raises(ConnectionClosed) as closed):
        ws.recv(timeout=LOAD_MS / 1000)
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4401
