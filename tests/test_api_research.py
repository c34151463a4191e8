"""The desk API's research and P&L endpoints over what one real `make demo` stored (the
session's demo home, tests/demo_home.py): the stitched out-of-sample curve and metrics, the
comparison of strategies, the MLflow experiments and runs with their lineage back to the Dagster
run, and the paper book against its backtest from the demo's embedded ledger. Each figure is
checked against the stored files, the MLflow run or the ledger it comes from."""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import pytest
from api_desk import JWT_SECRET, PASSWORD
from demo_home import Demo
from fastapi.testclient import TestClient

from api import security
from api.app import create_app
from api.permissions import Role
from api.store import Audit, UserStore
from orchestration.embedded_pg import embedded_ledger
from rotation.backtest.metrics import performance_metrics
from trading.ledger import Ledger

V1 = "/api/v1"
STRATEGY = "etf_rotation_sample"
ACCOUNT = "paper-main"


@dataclass(frozen=True)
class Served:
    client: TestClient
    headers: dict[str, str]
    demo: Demo
    storage: Path
    ledger: Ledger


@pytest.fixture(scope="module")
def served(demo: Demo) -> Iterator[Served]:
    """The API on the demo's home and its embedded ledger (started again for the module), a
    viewer signed in."""
    settings = demo.settings(api={"jwt_secret": JWT_SECRET})
    with embedded_ledger(settings.data_home) as server:
        resolved = settings.model_copy(update={"postgres_url": server.url()})
        ledger = Ledger(server.url())
        UserStore(ledger).create_user(
            "research-viewer", security.hash_password(PASSWORD), Role.VIEWER,
            Audit(actor="test", action="user_created", entity="api_user",
                  entity_id="research-viewer", reason="research endpoint tests", details={}))
        try:
            with TestClient(create_app(resolved)) as client:
                token = client.post(f"{V1}/auth/token", data={
                    "username": "research-viewer", "password": PASSWORD}).json()["access_token"]
                yield Served(client, {"Authorization": f"Bearer {token}"}, demo,
                             resolved.resolved_storage_root, ledger)
        finally:
            ledger.dispose()


def get(served: Served, path: str, **params: object) -> dict:
    answer = served.client.get(f"{V1}{path}", headers=served.headers, params=params)
    assert answer.status_code == 200, answer.text
    body: dict = answer.json()
    return body


def stored_oos(served: Served) -> pd.DataFrame:
    frame = pd.read_parquet(served.storage / "oos_backtest.parquet")
    return frame.assign(date=pd.to_datetime(frame["date"])).set_index("date")


def test_performance_is_the_stored_stitched_backtest(served: Served) -> None:
    oos = stored_oos(served)
    body = get(served, f"/strategies/{STRATEGY}/performance", max_points=50)
    assert (body["start"], body["end"]) == (f"{oos.index[0]:%Y-%m-%d}", f"{oos.index[-1]:%Y-%m-%d}")
    assert body["sessions"] == len(oos)
    assert len(body["curve"]) <= 50
    assert body["curve"][0]["equity"] == pytest.approx(oos["equity"].iloc[0])
    assert body["curve"][-1]["equity"] == pytest.approx(oos["equity"].iloc[-1])
    worst = min(p["drawdown"] for p in get(served, f"/strategies/{STRATEGY}/performance",
                                            max_points=5000)["curve"])
    # The metrics also count the first session against the initial cash.
    assert body["metrics"]["max_drawdown"] <= worst + 1e-12
    assert set(body["benchmark_metrics"]) == {c.removeprefix("benchmark_") for c in oos
                                              if c.startswith("benchmark_")}
    # The same total return as the oos backtest's MLflow run (one number everywhere).
    runs = get(served, "/backtests", strategy=STRATEGY, kind="oos_backtest")["items"]
    assert runs, "no oos backtest run in MLflow"
    assert body["metrics"]["total_return"] == pytest.approx(runs[0]["metrics"]["total_return"],
                                                             rel=1e-9)
    # A sub-range measures its first session against the session before it.
    since = oos.index[len(oos) // 2]
    part = get(served, f"/strategies/{STRATEGY}/performance", since=f"{since:%Y-%m-%d}")
    before = oos["equity"].loc[:since].iloc[-2]
    assert part["metrics"]["total_return"] == pytest.approx(
        oos["equity"].iloc[-1] / before - 1, rel=1e-12)
    missing = served.client.get(f"{V1}/strategies/us_rotation_taa/performance",
                                headers=served.headers)
    assert missing.status_code == 404 and "not materialised" in missing.json()["detail"]


@pytest.fixture
def second_home(served: Served) -> Iterator[str]:
    """Another dataset home under the same ETF_HOME holding a second strategy's results: the
    demo's curve over its later half with every daily return negated (a strategy whose
    returns are exactly anti-correlated), so the comparison's alignment and correlation are
    known exactly."""
    home = served.storage.parent.parent / "second_dataset" / "storage"
    home.mkdir(parents=True)
    oos = stored_oos(served).iloc[len(stored_oos(served)) // 2:]
    mirrored = (1 - oos["equity"].pct_change().fillna(0.0)).cumprod() * 1_000_000
    oos.assign(equity=mirrored).reset_index().to_parquet(home / "oos_backtest.parquet")
    target = pd.read_parquet(served.storage / "target_portfolio.parquet")
    target.assign(strategy="mirror_strategy").to_parquet(home / "target_portfolio.parquet")
    try:
        yield "mirror_strategy"
    finally:
        shutil.rmtree(home.parent)


def test_strategies_compare_on_their_common_sessions(served: Served, second_home: str) -> None:
    body = get(served, "/strategies/compare")
    assert body["strategies"] == sorted([STRATEGY, second_home])
    oos = stored_oos(served)
    half = oos.index[len(oos) // 2:]
    assert (body["start"], body["end"]) == (f"{half[0]:%Y-%m-%d}", f"{half[-1]:%Y-%m-%d}")
    assert {name: curve[0] for name, curve in body["growth"].items()} == {
        STRATEGY: 1.0, second_home: 1.0}
    assert body["growth"][STRATEGY][-1] == pytest.approx(
        oos["equity"].iloc[-1] / oos["equity"].loc[half[0]])
    assert body["correlation"][STRATEGY][second_home] == pytest.approx(-1.0)
    assert body["correlation"][STRATEGY][STRATEGY] == pytest.approx(1.0)
    expected = performance_metrics(oos["equity"].loc[half[0]:] / oos["equity"].loc[half[0]])
    assert body["metrics"][STRATEGY]["total_return"] == pytest.approx(expected["total_return"])
    one = get(served, "/strategies/compare", names=[STRATEGY])
    assert one["strategies"] == [STRATEGY] and one["start"] == f"{oos.index[0]:%Y-%m-%d}"
    unknown = served.client.get(f"{V1}/strategies/compare", headers=served.headers,
                                params={"names": [STRATEGY, "nope"]})
    assert unknown.status_code == 404 and "'nope'" in unknown.json()["detail"]


def test_experiments_and_runs_lead_back_to_their_dagster_runs(served: Served) -> None:
    experiments = get(served, "/experiments")["items"]
    sample = next(e for e in experiments if e["name"] == STRATEGY)
    assert sample["runs_url"].startswith(served.demo.mlflow)
    windows = get(served, "/backtests", strategy=STRATEGY, kind="wfo_window", limit=500)
    assert windows["total"] >= 2
    with served.demo.instance() as instance:
        for run in windows["items"]:
            assert run["kind"] == "wfo_window" and run["run_name"].startswith("wfo ")
            lineage = run["lineage"]
            assert lineage["asset_key"] == "wfo_results"
            window = lineage["window"]
            assert run["run_name"] == f"wfo {window}"
            # The window's own partition, or a range of windows run together holding it.
            first, _, last = (lineage["partition_range"] or "").partition("..")
            assert lineage["partition"] == window or first <= window <= last, lineage
            assert lineage["code_version"] and lineage["data_version"]
            assert instance.get_run_by_id(lineage["dagster_run_id"]) is not None
            assert run["links"]["dagster_run"].startswith(served.demo.dagster)
            assert run["links"]["mlflow_run"].startswith(served.demo.mlflow)
    oos = get(served, "/backtests", strategy=STRATEGY, kind="oos_backtest")["items"][0]
    detail = get(served, f"/backtests/{oos['run_id']}")
    assert detail["lineage"] == oos["lineage"] and detail["lineage"]["asset_key"] == "oos_backtest"
    assert detail["params"] and not any(k.startswith("mlflow.") for k in detail["tags"])
    every = get(served, "/backtests", limit=500)
    assert every["total"] == windows["total"] + len(
        get(served, "/backtests", kind="oos_backtest", limit=500)["items"]) + len(
        get(served, "/backtests", kind="factor_screening", limit=500)["items"])
    assert served.client.get(f"{V1}/backtests/{'f' * 32}",
                             headers=served.headers).status_code == 404


def test_pnl_is_the_ledgers_book_beside_its_backtest(served: Served) -> None:
    body = get(served, f"/accounts/{ACCOUNT}/pnl")
    valuations = served.ledger.valuations(ACCOUNT)
    assert [s["date"] for s in body["sessions"]] == [
        f"{d:%Y-%m-%d}" for d in valuations["session"]]
    assert body["sessions"], "the demo's positions_report values the account"
    initial = served.ledger.initial_cash(ACCOUNT)
    for session, (_, row) in zip(body["sessions"], valuations.iterrows(), strict=True):
        assert session["equity"] == pytest.approx(row["equity"])
        assert session["pnl"] == pytest.approx(row["equity"] - initial)
        assert session["backtest_equity"] is not None
        assert session["difference"] == pytest.approx(
            session["equity"] / session["backtest_equity"] - 1)
    report = pd.read_parquet(served.storage / "positions_report.parquet")
    assert [s["backtest_equity"] for s in body["sessions"]] == pytest.approx(
        report["backtest_equity"].tolist())
    assert body["within_tolerance"] is True
    assert body["max_abs_difference"] == pytest.approx(
        max(abs(s["difference"]) for s in body["sessions"]))
