"""The desk console's Risk & audit and Administration pages (issue 17 items 5 and 6) in
Debian's Chromium through Playwright, against ``python -m api`` on the seeded ledger of
tests/test_console.py: the limit use of the account's newest compliance report per layer
(chart and table), the audit log filtered and paged by the server, users created, changed
and disabled by an admin, and what a viewer is refused. Every page renders with no console
error; screenshots ``risk_*.png`` and ``admin_*.png`` go to the test's folder and SHOTS."""

from __future__ import annotations

from typing import Any

import httpx
import pytest
from api_desk import PASSWORD
from test_api_live import Live
from test_console import LOAD_MS, V1, Tab, browser, live, open_tab, sign_in
from test_limit_use import write_limit_use

from api.permissions import PERMISSION_TEXT, PERMISSIONS, Role
from trading.models import AuditEntry

__all__ = ["browser", "live", "open_tab"]       # the fixtures this module shares

DRILL = "console_drill"
DRILL_ENTRIES = 30                  # more than one page of the log (25)


@pytest.fixture(scope="module")
def seeded(live: Live) -> Live:
    """The account's compliance report limit use, and a run of audit entries of one action."""
    write_limit_use(live.desk, live.desk.account)
    ledger = live.desk.ledger()
    try:
        for n in range(DRILL_ENTRIES):
            ledger.audit(AuditEntry(actor="test:drill", action=DRILL, entity="drill",
                                    entity_id=f"step-{n:02d}", reason=f"drill step {n}",
                                    details={"step": n}))
    finally:
        ledger.dispose()
    return live


def chart_bars(tab: Tab) -> dict[str, Any]:
    bars: dict[str, Any] = tab.page.evaluate(
        "() => { const t = document.getElementById('limits-chart').data[0];"
        " return {layers: t.y[0], limits: t.y[1], x: t.x, colours: t.marker.color}; }")
    return bars


def test_risk_sees_the_limit_use_by_layer_and_pages_the_audit_log(seeded: Live,
                                                                   open_tab: Any) -> None:
    tab = open_tab()
    sign_in(tab, seeded, Role.RISK, page="risk")
    page = tab.page
    page.wait_for_selector("#limits-table table", timeout=LOAD_MS)
    line = page.inner_text("#limits-session")
    assert "session 2024-03-04" in line and "1 limit in BREACH" in line
    bars = chart_bars(tab)
    assert set(bars["layers"]) == {"account", "strategy", "instrument", "order"}
    breach = bars["limits"].index("max_var_99 · target")
    assert bars["layers"][breach] == "account" and bars["x"][breach] > 100
    assert bars["colours"][breach] == "#c62828"
    assert all(c == "#2e7d32" for i, c in enumerate(bars["colours"]) if i != breach)
    assert "data and conduct layers have no numeric limit" in page.inner_text("#limits-note")
    rows = page.locator("#limits-table tbody tr")
    assert rows.count() == 19
    served = httpx.get(f"{seeded.url}{V1}/accounts/{seeded.desk.account}/limits",
                       headers=seeded.desk.headers(Role.RISK)).json()
    var = next(u for layer in served["layers"] for u in layer["limits"]
               if (u["limit"], u["applies_to"]) == ("max_var_99", "target"))
    assert f"account\tmax_var_99\ttarget\t{var['shown_value']}\t1.50%\t" \
        f"{100 * var['utilisation']:.1f}%\tbreach" in page.inner_text("#limits-table")
    page.click("#limits-table th >> text=Utilisation")          # ascending
    page.click("#limits-table th >> text=Utilisation")          # descending: the breach first
    assert "max_var_99" in rows.first.inner_text()

    page.wait_for_selector("#audit-results table", timeout=LOAD_MS)
    page.fill("#audit-filters [name=action]", DRILL)
    page.click("#audit-filters button[type=submit]")
    page.wait_for_selector(f"#audit-results .pager >> text=1–25 of {DRILL_ENTRIES}",
                           timeout=LOAD_MS)
    actions = page.locator("#audit-results tbody td:nth-child(3)").all_inner_texts()
    assert actions == [DRILL] * 25
    assert "step-29" in page.locator("#audit-results tbody tr").first.inner_text()  # newest
    tab.screenshot("risk_risk")
    page.click("#audit-results [data-page=next]")
    page.wait_for_selector(f"#audit-results .pager >> text=26–30 of {DRILL_ENTRIES}",
                           timeout=LOAD_MS)
    assert "step-00" in page.locator("#audit-results tbody tr").last.inner_text()
    assert page.is_disabled("#audit-results [data-page=next]")
    page.click("#audit-results [data-page=previous]")
    page.wait_for_selector("#audit-results .pager >> text=1–25", timeout=LOAD_MS)
    page.fill("#audit-filters [name=actor]", "nobody-at-all")
    page.click("#audit-filters button[type=submit]")
    page.wait_for_selector("#audit-results >> text=No audit entry matches these filters",
                           timeout=LOAD_MS)
    assert "Administration" not in page.inner_text("header.top nav")
    tab.assert_no_errors()


def test_a_viewer_sees_the_limits_but_neither_the_audit_log_nor_administration(
        seeded: Live, open_tab: Any) -> None:
    tab = open_tab()
    sign_in(tab, seeded, Role.VIEWER, page="risk")
    page = tab.page
    page.wait_for_selector("#limits-table table", timeout=LOAD_MS)
    assert "cannot read the audit log: it is for risk, admin" in page.inner_text("#audit")
    assert page.locator("#audit-results, #audit-filters").count() == 0
    nav = page.inner_text("header.top nav")
    assert "Risk & audit" in nav and "Administration" not in nav
    tab.screenshot("risk_viewer")
    tab.assert_no_errors()
    refused = page.goto(f"{seeded.url}/console/admin")
    assert refused is not None and refused.status == 403
    assert "cannot open Administration: it is for admin" in page.inner_text("body")
    console = {"X-Desk-Console": "1"}
    audit = page.request.get(f"{seeded.url}{V1}/audit", headers=console)
    assert audit.status == 403 and "audit.read" in audit.json()["detail"]
    create = page.request.post(f"{seeded.url}{V1}/users", headers=console, data={
        "username": "sneaky-viewer", "password": PASSWORD, "role": "admin",
        "reason": "self-promotion"})
    assert create.status == 403 and "users.manage" in create.json()["detail"]


def sign_in_as(tab: Tab, live: Live, username: str) -> str:
    """Through the sign-in form; the alert it answered with, or "" once on the console."""
    tab.page.goto(f"{live.url}/console/today")
    tab.page.fill("#username", username)
    tab.page.fill("#password", PASSWORD)
    tab.page.click("button[type=submit]")
    tab.page.wait_for_load_state()
    if "/signin" in tab.page.url:
        return tab.page.inner_text("[role=alert]")
    return ""


def confirm(tab: Tab, reason: str) -> None:
    tab.page.fill("#user-reason", reason)
    tab.page.click("#user-confirm")


def create_user(tab: Tab, username: str, password: str, role: Role) -> None:
    page = tab.page
    page.fill("#new-username", username)
    page.select_option("#new-role", role.value)
    page.fill("#new-password", password)
    page.click("#create-user button[type=submit]")
    page.wait_for_selector("#user-dialog[open]", timeout=LOAD_MS)


def user_row(tab: Tab, username: str) -> Any:
    return tab.page.locator("#users-table tbody tr", has_text=username)


def test_an_admin_creates_changes_and_disables_a_user(seeded: Live, open_tab: Any) -> None:
    admin = open_tab()
    sign_in(admin, seeded, Role.ADMIN, page="admin")
    page = admin.page
    page.wait_for_selector("#users-table table", timeout=LOAD_MS)
    for role in Role:
        assert seeded.desk.username(role) in page.inner_text("#users-table")
    assert user_row(admin, seeded.desk.username(Role.ADMIN)).locator("text=you").count() == 1
    assert page.locator("#permission-table tbody tr").count() == len(PERMISSIONS)
    assert set(PERMISSION_TEXT) == set(PERMISSIONS)
    manage = page.locator("#permission-table tbody tr", has_text="users.manage").inner_text()
    assert manage.split("\t")[1:] == [PERMISSION_TEXT["users.manage"], "–", "–", "–", "–", "✓"]
    admin.screenshot("admin_admin")

    newcomer = f"desk-{seeded.desk.run}"
    create_user(admin, newcomer, "too short", Role.VIEWER)
    confirm(admin, "new desk member")
    page.wait_for_selector("#user-error:not([hidden])", timeout=LOAD_MS)
    assert "password: String should have at least 12 characters" in \
        page.inner_text("#user-error")
    admin.screenshot("admin_refused_weak_password")
    # The API's 422 is logged by Chromium: the refusal asked for.
    admin.errors.clear()
    page.click("#user-cancel")
    create_user(admin, seeded.desk.username(Role.TRADER), PASSWORD, Role.VIEWER)
    assert "Create the user" in page.inner_text("#user-dialog-title")
    confirm(admin, "a second trader")
    page.wait_for_selector("#user-error:not([hidden])", timeout=LOAD_MS)
    assert "exists already" in page.inner_text("#user-error")
    admin.errors.clear()
    page.click("#user-cancel")
    create_user(admin, newcomer, PASSWORD, Role.VIEWER)
    confirm(admin, "new desk member")
    page.wait_for_selector(f"#users-table >> text={newcomer}", timeout=LOAD_MS)
    assert "viewer" in user_row(admin, newcomer).inner_text()

    member = open_tab()
    assert sign_in_as(member, seeded, newcomer) == ""
    assert "viewer" in member.page.inner_text("header.top .role")

    user_row(admin, newcomer).locator("select").select_option("trader")
    user_row(admin, newcomer).locator("text=Change role…").click()
    assert "to trader" in page.inner_text("#user-dialog-title")
    admin.screenshot("admin_confirm_role")
    confirm(admin, "joins the trading desk")
    page.wait_for_selector(f"#users-table tr:has-text('{newcomer}') >> text=trader",
                           timeout=LOAD_MS)

    user_row(admin, newcomer).locator("text=Disable…").click()
    confirm(admin, "left the desk")
    page.wait_for_selector(f"#users-table tr:has-text('{newcomer}') >> text=disabled",
                           timeout=LOAD_MS)
    assert user_row(admin, newcomer).locator("text=Enable…").count() == 1
    admin.screenshot("admin_disabled")
    admin.assert_no_errors()

    # The disabled user's open session is over and they can no longer sign in.
    member.page.reload()
    assert "/signin" in member.page.url
    assert "wrong username or password" in sign_in_as(open_tab(), seeded, newcomer)
    entries = [e for e in httpx.get(f"{seeded.url}{V1}/audit", params={"entity_id": newcomer},
                                    headers=seeded.desk.headers(Role.ADMIN)).json()["items"]
               if e["action"] != "signed_in"]
    actor = f"api:{seeded.desk.username(Role.ADMIN)}"
    assert [(e["action"], e["actor"], e["reason"]) for e in entries] == [
        ("user_updated", actor, "left the desk"), ("user_updated", actor, "joins the trading desk"),
        ("user_created", actor, "new desk member")]
    assert entries[1]["details"] == {"role": "trader"}
