"""The limit use of the daily compliance report as numbers (``<session>.limits.json`` beside the
report's HTML) and GET /api/v1/accounts/{account_id}/limits, which serves the newest one
grouped by risk layer, for the deployment's account and a further account alike. The file is
written by the report's own functions from a seeded ledger and measured risk figures."""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
from api_desk import SIGNAL_DAY, Desk, desk
from fastapi.testclient import TestClient
from test_compliance_report import measured_risk

from api.app import create_app
from api.permissions import Role
from assets.compliance import report_inputs
from orchestration.settings import AccountSettings, Settings
from rotation.compliance_report import (
    LIMIT_LAYERS,
    build_report,
    limit_use_document,
    limit_use_path,
)
from rotation.risk import LAYERS, RiskLimits
from trading.account import Allocation

V1 = "/api/v1"
FUNDS = ("510300", "159915", "512880")
# VaR of the seeded target is about 2 %: a 1.5 % limit is in breach, 4 % ES is not.
LIMITS = RiskLimits(max_var_99=0.015, max_es_99=0.04, max_stress_loss=0.2,
                    max_days_to_liquidate=5.0)


def risk_table(day: dt.date) -> pd.DataFrame:
    """The measured risk of the desk's approved target and its book."""
    return measured_risk(day, FUNDS, {"target": ({"510300": 0.6, "159915": 0.4}, 1e6),
                                      "book": ({"510300": 0.0035}, 1e6)}, LIMITS, seed=17)


def open_account(d: Desk, account: str) -> None:
    ledger = d.ledger()
    try:
        ledger.open_account(account, 500_000.0, actor="test")
    finally:
        ledger.dispose()


def write_limit_use(d: Desk, account: str, day: dt.date = SIGNAL_DAY,
                    limits: RiskLimits = LIMITS) -> Path:
    """What risk_compliance_report writes beside its HTML for ``account``'s session ``day``,
    built by the report from the desk's ledger."""
    bars = pd.DataFrame({"date": [pd.Timestamp(day)] * 2, "symbol": ["510300", "159915"],
                         "close": [3.6, 2.1]})
    ledger = d.ledger()
    try:
        inputs = report_inputs(ledger, account, day, risk_table(day), limits, bars, day)
    finally:
        ledger.dispose()
    path = limit_use_path(d.settings.resolved_storage_root, account, day)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(limit_use_document(inputs, build_report(inputs)), encoding="utf-8")
    return path


@pytest.fixture(scope="module")
def desk_(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Desk]:
    with desk(tmp_path_factory.mktemp("limits_home")) as d:
        yield d


def with_accounts(d: Desk, further: str) -> Settings:
    """The desk's settings trading its seeded account and a further account."""
    execution = d.settings.execution.model_copy(update={
        "account_id": d.account, "accounts": [AccountSettings(
            account_id=further, allocation=Allocation(strategies=("etf_rotation_sample",)))]})
    return d.settings.model_copy(update={"execution": execution})


def test_the_report_keeps_each_limit_with_its_layer_as_numbers(desk_: Desk) -> None:
    path = write_limit_use(desk_, desk_.account)
    document = json.loads(path.read_text(encoding="utf-8"))
    assert (document["account_id"], document["session"]) == (desk_.account, "2024-03-04")
    uses = {(u["limit"], u["applies_to"]): u for u in document["limits"]}
    assert {u["layer"] for u in uses.values()} <= set(LAYERS)
    assert {u["limit"] for u in uses.values()} == set(LIMIT_LAYERS)
    var = uses[("max_var_99", "target")]
    assert var["layer"] == "account" and var["status"] == "breach"
    assert var["utilisation"] == pytest.approx(var["value"] / 0.015) and var["utilisation"] > 1
    weight = uses[("max_weight", "book")]            # 1,000 × 3.60 of ~1.0 m equity
    assert weight["layer"] == "instrument" and weight["status"] == "ok"
    assert weight["utilisation"] == pytest.approx(weight["value"] / 0.5)
    assert weight["shown_bound"] == "50.00%"
    # The seeded rejected signal broke max_weight once: counted under the rule, not a ratio.
    rejected = [u for u in document["limits"] if u["unit"] == "rejections"]
    assert all(u["utilisation"] is None for u in rejected)
    assert uses[("max_intraday_loss", "intraday: loss since the last close (monitor)")][
        "status"] == "not limited"


def test_the_route_serves_the_newest_report_by_layer_for_every_account(desk_: Desk) -> None:
    further = f"two-{desk_.run}"
    open_account(desk_, further)
    with TestClient(create_app(with_accounts(desk_, further))) as client:
        viewer = desk_.headers(Role.VIEWER)
        empty = client.get(f"{V1}/accounts/{further}/limits", headers=viewer)
        assert empty.status_code == 200, empty.text
        assert empty.json()["session"] is None and empty.json()["breaches"] == 0
        assert "No risk and compliance report of" in empty.json()["note"]
        write_limit_use(desk_, further, SIGNAL_DAY - dt.timedelta(days=3))
        write_limit_use(desk_, further)                 # the newest session wins
        write_limit_use(desk_, desk_.account)
        for account, role in ((desk_.account, Role.VIEWER), (further, Role.TRADER)):
            answer = client.get(f"{V1}/accounts/{account}/limits",
                                headers=desk_.headers(role))
            assert answer.status_code == 200, answer.text
            body = answer.json()
            assert (body["account_id"], body["session"], body["note"]) == \
                (account, "2024-03-04", None)
            assert [layer["layer"] for layer in body["layers"]] == list(LAYERS)
            by_layer = {layer["layer"]: layer["limits"] for layer in body["layers"]}
            assert by_layer["data"] == [] and by_layer["conduct"] == []
            assert {u["limit"] for u in by_layer["strategy"]} == {"max_turnover",
                                                                   "drawdown_stop"}
            assert body["breaches"] == sum(u["status"] == "breach" for layer in body["layers"]
                                           for u in layer["limits"]) >= 1


def test_an_account_the_deployment_does_not_trade_is_refused_plainly(desk_: Desk) -> None:
    elsewhere = f"other-{desk_.run}"
    open_account(desk_, elsewhere)
    with TestClient(create_app(with_accounts(desk_, f"two-{desk_.run}"))) as client:
        headers = desk_.headers(Role.RISK)
        refused = client.get(f"{V1}/accounts/{elsewhere}/limits", headers=headers)
        assert refused.status_code == 404
        assert "not traded by this deployment" in refused.json()["detail"]
        unknown = client.get(f"{V1}/accounts/..%2F..%2Fetc/limits", headers=headers)
        assert unknown.status_code == 404 and "Traceback" not in unknown.text
