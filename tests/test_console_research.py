"""The desk console's Research page (issue 17 item 4) in Debian's Chromium through Playwright,
against ``python -m api`` on a seeded scratch ledger: three strategies side by side (one chart,
a sortable metrics table, the correlation), each one's walk-forward winners per window with
its Dagster asset and MLflow run links, and the launch control only for the roles that may.

The stored results are made the pipeline's way from real prices (cn_etf_akshare_qfq_2020): per
walk-forward window the in-sample search picks a factor lookback, its frozen winner trades the
out-of-sample sessions, the windows are stitched into one backtest by the project's engine
(rotation.backtest.run_backtest), and the IO manager writes oos_backtest, target_portfolio and
the wfo_results partitions under the keys the deployment gives them: plain for its own
strategy, ``<strategy>/...`` for the two beside it (orchestration.strategy_stage). Two of the
strategies have their MLflow runs in the deployment's tracking store, the third not.

The API launches through ``dagster dev`` serving the project's code location: a researcher's
rebuild launched from the page is a real Dagster run, followed on the page to its end."""

# ruff: noqa: F811  (the fixtures browser and open_tab of test_console are parameters)

from __future__ import annotations

import math
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
import numpy as np
import pandas as pd
import pytest
from api_desk import desk
from dagster_dev import dagster_dev
from mlflow import MlflowClient
from test_api_live import Live, api_env, free_port, serve_api
from test_console import (  # noqa: F401  (browser, open_tab: fixtures)
    Tab,
    browser,
    open_tab,
    sign_in,
)

from api import results, windows
from api.experiments import Tracking
from api.permissions import Role
from api.routers.strategies import latest_target
from orchestration.instance import LOCAL_INSTANCE_YAML
from orchestration.strategy_stage import strategy_asset_key
from resources.parquet_io import PartitionedParquetIOManager
from resources.tracking import TAG_DAGSTER_ASSET_KEY
from rotation.backtest import BacktestConfig, run_backtest
from rotation.backtest.metrics import drawdown, performance_metrics
from rotation.wfo import WfoWindow

V1 = "/api/v1"
MLFLOW_UI = "http://mlflow.desk.test:5000"
FIRST_LOAD_MS = 30_000        # the API's first MLflow read imports MLflow
LOAD_MS = 10_000
RUN_MS = 120_000              # a research run on this home ends in seconds
FUNDS = ("510300", "510500", "159915", "518880", "512880", "513100")
BENCHMARK = "510300"
SINCE, UNTIL = "2020-01-02", "2024-12-31"
IN_SAMPLE, OUT_OF_SAMPLE, REBALANCE = 240, 60, 20     # quarterly windows


@dataclass(frozen=True)
class Rule:
    """A strategy of the seeded deployment: rank the funds by a factor over a lookback (each
    window's in-sample search picks the lookback) and hold the top N, equal weight."""

    name: str
    primary: bool
    factor: str                 # momentum: highest return first; volatility: lowest first
    lookbacks: tuple[int, ...]
    top_n: int
    tracked: bool               # its MLflow runs are in the deployment's tracking store


RULES = (Rule("etf_rotation_sample", True, "momentum", (20, 60), 2, True),
         Rule("sample_momentum", False, "momentum", (60, 120), 1, True),
         Rule("sample_low_vol", False, "volatility", (20, 60), 2, False))
NAMES = sorted(r.name for r in RULES)
METRICS = 8                  # the figures of a row of the page's metrics table


@dataclass(frozen=True)
class Prices:
    open: pd.DataFrame
    close: pd.DataFrame


def real_prices(shared: Path) -> Prices:
    root = shared / "cn_etf_akshare_qfq_2020" / "parquet"
    bars = {f: pd.read_parquet(root / f"{f}.parquet").assign(date=lambda b: pd.to_datetime(
        b["date"])).set_index("date").loc[SINCE:UNTIL] for f in FUNDS}
    close = pd.DataFrame({f: b["close"] for f, b in bars.items()}).dropna()
    return Prices(open=pd.DataFrame({f: b["open"] for f, b in bars.items()}).loc[close.index],
                  close=close)


def scores(close: pd.DataFrame, factor: str, lookback: int) -> pd.DataFrame:
    if factor == "momentum":
        return close.pct_change(lookback)
    return -close.pct_change().rolling(lookback).std()


def top_weights(score: pd.DataFrame, top_n: int) -> pd.DataFrame:
    ranks = score.rank(axis=1, ascending=False)
    return (ranks <= top_n).astype(float) / top_n


def in_sample_sharpe(close: pd.DataFrame, weights: pd.DataFrame) -> float:
    daily = (weights.shift(1) * close.pct_change()).sum(axis=1).iloc[1:]
    return float(daily.mean() / daily.std() * math.sqrt(252))


def windows_of(sessions: pd.DatetimeIndex, warmup: int) -> list[WfoWindow]:
    out, start = [], warmup + IN_SAMPLE
    while start + OUT_OF_SAMPLE <= len(sessions):
        out.append(WfoWindow(index=len(out), is_start=sessions[start - IN_SAMPLE],
                             is_end=sessions[start - 1], oos_start=sessions[start],
                             oos_end=sessions[start + OUT_OF_SAMPLE - 1]))
        start += OUT_OF_SAMPLE
    return out


@dataclass
class Research:
    """One strategy's walk-forward research: each window's winner and the stitched backtest."""

    rule: Rule
    prices: Prices
    winners: dict[str, int]             # window key -> the lookback it froze
    windows: list[WfoWindow]
    daily: pd.DataFrame                 # oos_backtest's rows
    targets: pd.DataFrame               # target_portfolio's rows

    @classmethod
    def run(cls, rule: Rule, prices: Prices) -> Research:
        close = prices.close
        windows = windows_of(close.index, max(rule.lookbacks))
        ranked = {n: top_weights(scores(close, rule.factor, n), rule.top_n)
                  for n in rule.lookbacks}
        winners = {w.key: max(rule.lookbacks, key=lambda n: in_sample_sharpe(
            close.loc[w.is_start:w.is_end], ranked[n].loc[w.is_start:w.is_end]))
            for w in windows}
        sessions = close.loc[windows[0].oos_start:windows[-1].oos_end].index
        targets = pd.DataFrame(np.nan, index=sessions, columns=close.columns)
        for w in windows:
            days = close.loc[w.oos_start:w.oos_end].index[::REBALANCE]
            targets.loc[days] = ranked[winners[w.key]].loc[days]
        result = run_backtest(targets, {"open": prices.open, "close": close},
                              cfg=BacktestConfig())
        research = cls(rule, prices, winners, windows, pd.DataFrame(), pd.DataFrame())
        research.daily = research.daily_frame(result.equity, result.cash)
        research.targets = research.target_frame(ranked[winners[windows[-1].key]])
        return research

    def daily_frame(self, equity: pd.Series, cash: pd.Series) -> pd.DataFrame:
        bench = self.prices.close[BENCHMARK].loc[equity.index]
        starts = pd.Series([w.key for w in self.windows],
                           index=[w.oos_start for w in self.windows])
        return pd.DataFrame({
            "date": equity.index, "equity": equity.to_numpy(), "cash": cash.to_numpy(),
            "drawdown": drawdown(equity).to_numpy(),
            f"benchmark_{BENCHMARK}": (bench / bench.iloc[0]).to_numpy(),
            "window": starts.reindex(equity.index, method="ffill").to_numpy(),
            "invested": (1.0 - cash / equity).to_numpy()})

    def target_frame(self, weights: pd.DataFrame) -> pd.DataFrame:
        day = self.daily["date"].iloc[-1]
        latest = weights.loc[day]
        return pd.DataFrame({
            "date": day, "strategy": self.rule.name, "window": self.windows[-1].key,
            "symbol": list(latest.index), "rank": np.arange(1.0, len(latest) + 1),
            "weight": latest.to_numpy(),
            "reason": [f"top {self.rule.top_n} by {self.rule.factor}" if w > 0 else
                       f"outside the top {self.rule.top_n}" for w in latest]})

    def window_row(self, w: WfoWindow, run_id: str) -> pd.DataFrame:
        equity = self.daily.set_index("date")["equity"].loc[w.oos_start:w.oos_end]
        metrics = performance_metrics(equity)
        lookback = self.winners[w.key]
        return pd.DataFrame([{
            **w.as_dict(), "no_trade": False, "no_trade_reason": "",
            "factors": f"{self.rule.factor}_{lookback}", "n_factors": 1,
            "top_n": self.rule.top_n, "rebalance_every": REBALANCE, "weighting": "equal",
            "candidates": len(self.rule.lookbacks),
            **{f"oos_{k}": metrics[k] for k in ("total_return", "cagr", "sharpe",
                                                  "max_drawdown")},
            "mlflow_run_id": run_id,
            "screened_factors": ",".join(f"{self.rule.factor}_{n}"
                                         for n in self.rule.lookbacks)}])


@dataclass(frozen=True)
class Stored:
    """What the test stored per strategy: its research and the MLflow ids it logged."""

    research: dict[str, Research]
    experiments: dict[str, str]             # strategy -> MLflow experiment id
    window_runs: dict[str, dict[str, str]]  # strategy -> window -> MLflow run id
    oos_runs: dict[str, str]                # strategy -> its stitched backtest's run id


def key_path(rule: Rule, asset: str) -> str:
    return "/".join(strategy_asset_key(rule.name, asset, rule.primary).path)


def store(research: Research, storage: Path, client: MlflowClient) -> tuple[str, dict[str, str],
                                                                             str]:
    """Write the strategy's assets as the IO manager writes them and log its MLflow runs (in
    the deployment's store when the rule is tracked; else ids of runs the store lacks)."""
    rule = research.rule
    io = store_portfolio(research, storage)
    experiment = client.create_experiment(rule.name) if rule.tracked else ""
    runs = {w.key: log_run(client, experiment, f"wfo {w.key}", key_path(rule, "wfo_results"))
            for w in research.windows}
    partitions = dg.StaticPartitionsDefinition([w.key for w in research.windows])
    key = strategy_asset_key(rule.name, "wfo_results", rule.primary)
    for w in research.windows:
        io.handle_output(dg.build_output_context(
            asset_key=key, partition_key=w.key, asset_partitions_def=partitions,
            definition_metadata={"partition_column": "window"}),
            research.window_row(w, runs[w.key]))
    oos = log_run(client, experiment, "oos backtest", key_path(rule, "oos_backtest"))
    return experiment, runs, oos


def store_portfolio(research: Research, storage: Path) -> PartitionedParquetIOManager:
    """oos_backtest and target_portfolio, as the IO manager writes them."""
    rule = research.rule
    io = PartitionedParquetIOManager(base_path=str(storage))
    for asset, frame in (("oos_backtest", research.daily),
                         ("target_portfolio", research.targets)):
        key = strategy_asset_key(rule.name, asset, rule.primary)
        io.handle_output(dg.build_output_context(asset_key=key), frame)
    return io


def log_run(client: MlflowClient, experiment: str, name: str, asset_key: str) -> str:
    if not experiment:
        return uuid.uuid4().hex
    run = client.create_run(experiment, run_name=name, tags={TAG_DAGSTER_ASSET_KEY: asset_key})
    client.set_terminated(run.info.run_id)
    return str(run.info.run_id)


def seed(storage: Path, tracking_uri: str, shared: Path) -> Stored:
    prices = real_prices(shared)
    client = MlflowClient(tracking_uri)
    research, experiments, window_runs, oos_runs = {}, {}, {}, {}
    for rule in RULES:
        research[rule.name] = Research.run(rule, prices)
        experiments[rule.name], window_runs[rule.name], oos_runs[rule.name] = store(
            research[rule.name], storage, client)
    return Stored(research, experiments, window_runs, oos_runs)


@dataclass(frozen=True)
class Served:
    live: Live
    stored: Stored
    dagster: str                # the Dagster UI (dagster dev's webserver)

    def get(self, path: str, role: Role = Role.VIEWER) -> httpx.Response:
        return httpx.get(f"{self.live.url}{V1}{path}",
                         headers=self.live.desk.headers(role), timeout=30)

    def asset_url(self, rule: Rule, asset: str, partition: str | None = None) -> str:
        return f"{self.dagster}/assets/{key_path(rule, asset)}" + (
            f"?partition={partition}" if partition else "")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, shared_data: Path) -> Iterator[Served]:
    """``python -m api`` over the seeded results, launching through ``dagster dev`` serving
    the project's code location on the desk's home (whose market data is not materialised:
    a research run launched here fails in seconds, which is all the page's follow needs)."""
    with desk(tmp_path_factory.mktemp("research_home"), login_attempts=1000) as d:
        d.settings.dagster_home.mkdir(parents=True)
        (d.settings.dagster_home / "dagster.yaml").write_text(LOCAL_INSTANCE_YAML,
                                                              encoding="utf-8")
        stored = seed(d.settings.resolved_storage_root, d.settings.resolved_mlflow_uri,
                      shared_data)
        logs = tmp_path_factory.mktemp("research_logs")
        location = api_env(d, DAGSTER_HOME=str(d.settings.dagster_home),
                           GX_ANALYTICS_ENABLED="false")
        with dagster_dev(location, logs / "dagster_dev.log") as dev:
            ui = f"http://127.0.0.1:{dev.port}"
            env = api_env(d, API_PORT=str(free_port()), ETF_EXECUTION__ACCOUNT_ID=d.account,
                          DAGSTER_HOME=str(d.settings.dagster_home),
                          ETF_DAGSTER_WEBSERVER_URL=ui, ETF_MLFLOW_UI_URL=MLFLOW_UI,
                          ETF_API__DAGSTER_GRAPHQL_URL=f"{ui}/graphql")
            with serve_api(env, logs / "server.log") as url:
                yield Served(Live(url=url, desk=d, log=logs / "server.log"), stored, ui)


def mlflow_url(stored: Stored, strategy: str, run_id: str) -> str:
    return (f"{MLFLOW_UI}/#/experiments/{stored.experiments[strategy]}/runs/{run_id}"
            "?workflowType=machine_learning")


# ------------------------------------------------------------------ the API


def test_the_api_finds_every_strategy_where_the_pipeline_stores_it(served: Served) -> None:
    compared = served.get("/strategies/compare")
    assert compared.status_code == 200, compared.text
    body = compared.json()
    assert body["strategies"] == NAMES
    assert all(len(body["growth"][n]) == len(body["dates"]) > 100 for n in NAMES)
    assert body["correlation"]["sample_momentum"]["sample_momentum"] == pytest.approx(1.0)
    for rule in RULES:
        stored = served.stored.research[rule.name].daily
        performance = served.get(f"/strategies/{rule.name}/performance").json()
        assert performance["sessions"] == len(stored)
        assert performance["curve"][-1]["equity"] == pytest.approx(stored["equity"].iloc[-1])
        # Its latest target too (what the Today page shows for a signal of the strategy).
        target = latest_target(served.live.desk.settings.resolved_storage_root, rule.name)
        expected = served.stored.research[rule.name].targets
        assert target is not None and target.window == expected["window"].iloc[0]
        assert [w.symbol for w in target.weights] == list(expected["symbol"])


def test_each_window_names_its_winner_and_links_its_sources(served: Served) -> None:
    stored = served.stored
    for rule in RULES:
        answer = served.get(f"/strategies/{rule.name}/windows")
        assert answer.status_code == 200, answer.text
        body = answer.json()
        research = stored.research[rule.name]
        assert body["winners_stored"] and body["asset_key"] == key_path(rule, "oos_backtest")
        assert [w["window"] for w in body["windows"]] == [w.key for w in research.windows]
        first = body["windows"][0]
        key = research.windows[0].key
        assert first["factors"] == [f"{rule.factor}_{research.winners[key]}"]
        assert first["sessions"] == (research.daily["window"] == key).sum() == OUT_OF_SAMPLE
        assert first["links"]["dagster_asset"]["url"] == \
            served.asset_url(rule, "wfo_results", key)
        assert body["oos_backtest"]["dagster_asset"]["url"] == \
            served.asset_url(rule, "oos_backtest")
        run_link, oos_link = first["links"]["mlflow_run"], body["oos_backtest"]["mlflow_run"]
        if rule.tracked:
            run = stored.window_runs[rule.name][key]
            assert run_link == {"url": mlflow_url(stored, rule.name, run), "missing": None}
            assert oos_link["url"] == mlflow_url(stored, rule.name, stored.oos_runs[rule.name])
        else:       # said plainly, not a dead link
            assert run_link["url"] is None
            assert "is not in this deployment's tracking store" in run_link["missing"]
            assert oos_link["url"] is None and "no 'oos backtest' MLflow run" in \
                oos_link["missing"]


def test_without_wfo_results_the_windows_come_from_the_backtest(served: Served,
                                                                tmp_path: Path) -> None:
    """A home whose wfo_results is not stored (or was removed): the windows and their
    sessions from the stitched backtest, and plainly no winner and no run."""
    research = served.stored.research["sample_momentum"]
    store_portfolio(research, tmp_path)
    stored = results.results_in(tmp_path, ("sample_momentum",))
    assert stored is not None and results.key_prefixes(tmp_path) == [(), ("sample_momentum",)]
    found = windows.strategy_windows(stored, Tracking(served.live.desk.settings), None,
                                     "sample_momentum")
    assert not found.winners_stored
    assert [w.window for w in found.windows] == [w.key for w in research.windows]
    assert {w.sessions for w in found.windows} == {OUT_OF_SAMPLE}
    assert all(w.no_trade is None and not w.factors for w in found.windows)
    links = found.windows[0].links
    assert links.mlflow_run.missing == "wfo_results is not stored: the window's run is unknown"
    assert links.dagster_asset.missing is not None and \
        "no Dagster UI is configured" in links.dagster_asset.missing


def test_bad_strategy_names_get_a_clear_answer(served: Served) -> None:
    missing = served.get("/strategies/no_such_strategy/windows")
    assert missing.status_code == 404
    assert "no stored out-of-sample results for strategy 'no_such_strategy'" in \
        missing.json()["detail"]
    malformed = served.get("/strategies/..%2Fetc/windows")
    assert malformed.status_code in (404, 422) and "Traceback" not in malformed.text


# ------------------------------------------------------------------ the page


def open_research(open_tab: Any, served: Served, role: Role) -> Tab:
    tab: Tab = open_tab()
    sign_in(tab, served.live, role, page="research")
    tab.page.wait_for_selector("#metrics table", timeout=FIRST_LOAD_MS)
    tab.page.wait_for_selector("#windows table", timeout=LOAD_MS)
    return tab


def metric_rows(tab: Tab) -> list[str]:
    rows: list[str] = tab.page.eval_on_selector_all(
        "#metrics tbody tr", "rows => rows.map(r => r.cells[0].textContent)")
    return rows


def test_a_researcher_sees_every_strategy_side_by_side(served: Served, open_tab: Any) -> None:
    tab = open_research(open_tab, served, Role.RESEARCHER)
    page = tab.page
    traces = page.evaluate("() => document.getElementById('growth-chart').data.map("
                           "t => ({name: t.name, points: t.y.length}))")
    assert sorted(t["name"] for t in traces) == NAMES
    assert all(t["points"] > 100 for t in traces)
    assert page.locator("#growth-chart .legendtext").count() == len(NAMES)
    assert sorted(metric_rows(tab)) == NAMES
    # Sorting by Sharpe puts the rows in the API's order of Sharpe, then the other way.
    metrics = served.get("/strategies/compare").json()["metrics"]
    by_sharpe = sorted(NAMES, key=lambda n: metrics[n]["sharpe"])
    page.click("#metrics th >> text=Sharpe")
    assert metric_rows(tab) == by_sharpe
    page.click("#metrics th >> text=Sharpe")
    assert metric_rows(tab) == by_sharpe[::-1]
    assert page.get_attribute("#metrics th[aria-sort=descending] button", "title") == \
        "Sort by Sharpe"
    primary, beside = RULES[0], RULES[1]
    for rule in (primary, beside):      # every figure of the row links to its asset
        href = served.asset_url(rule, "oos_backtest")
        assert page.locator(f"#metrics a[href='{href}']").count() == METRICS + 1
    oos_run = mlflow_url(served.stored, beside.name, served.stored.oos_runs[beside.name])
    assert page.locator(f"#metrics a[href='{oos_run}']").count() == 1
    assert "No MLflow link: no 'oos backtest' MLflow run of asset sample_low_vol/oos_backtest" \
        in page.inner_text("#metrics")
    assert "sample_momentum" in page.inner_text("#correlation table")
    tab.screenshot("research_researcher")
    tab.assert_no_errors()


def test_winners_per_window_link_to_dagster_and_mlflow(served: Served, open_tab: Any) -> None:
    tab = open_research(open_tab, served, Role.VIEWER)
    page = tab.page
    headings = page.eval_on_selector_all("#windows h3", "hs => hs.map(h => h.textContent)")
    assert headings == NAMES
    stored = served.stored
    for rule in RULES:
        research = stored.research[rule.name]
        newest = research.windows[-1].key       # on the first page: newest first
        section = page.locator(f"#windows h3[data-strategy={rule.name}] + p + .table-wrap")
        text = section.inner_text()
        assert f"{rule.factor}_{research.winners[newest]}" in text
        assert section.locator("tbody tr").first.inner_text().startswith(newest)
        partition = section.locator(
            f"a[href='{served.asset_url(rule, 'wfo_results', newest)}']")
        assert partition.count() == 2      # the window and its sources
        run = stored.window_runs[rule.name][newest]
        linked = section.locator(f"a[href='{mlflow_url(stored, rule.name, run)}']")
        assert linked.count() == (4 if rule.tracked else 0)   # three figures and the source
    # More windows than a page: ten at a time, the next page on request.
    oldest = stored.research[NAMES[0]].windows
    table = page.locator(f"#windows h3[data-strategy={NAMES[0]}] + p + .table-wrap")
    assert f"1–10 of {len(oldest)}" in table.locator(".pager").inner_text()
    assert oldest[0].key not in table.inner_text()
    table.locator("[data-page=next]").click()
    assert f"11–{len(oldest)} of {len(oldest)}" in table.locator(".pager").inner_text()
    assert table.locator("tbody tr").last.inner_text().startswith(oldest[0].key)
    # The reason a link is missing is said once per table, not once per row.
    untracked = len(stored.research["sample_low_vol"].windows)
    assert page.locator("#windows .missing-link").all_inner_texts() == [
        "No MLflow link: the MLflow run wfo_results names is not in this deployment's "
        f"tracking store ({untracked} windows)."]
    tab.screenshot("research_windows_viewer")
    tab.assert_no_errors()


def test_a_viewer_has_no_launch_control_and_its_launch_is_refused(served: Served,
                                                                 open_tab: Any) -> None:
    tab = open_research(open_tab, served, Role.VIEWER)
    page = tab.page
    assert page.locator("[data-launch]").count() == 0
    assert "Your role (viewer) reads research results but cannot launch" in \
        page.inner_text("#launch")
    refused = page.request.post(f"{served.live.url}{V1}/runs",
                                data={"kind": "backtest", "reason": "not allowed"},
                                headers={"X-Desk-Console": "1"})
    assert refused.status == 403 and "research.launch" in refused.json()["detail"]
    tab.screenshot("research_viewer")
    tab.assert_no_errors()


def test_a_researcher_launches_a_rebuild_and_follows_the_run_to_its_end(served: Served,
                                                                       open_tab: Any) -> None:
    tab = open_research(open_tab, served, Role.RESEARCHER)
    page = tab.page
    page.click("[data-launch=research_rebuild]")
    assert "Give a reason of at least 3 characters" in page.inner_text("#launch-status")
    page.fill("#launch-reason", "new quarter of data loaded")
    page.click("[data-launch=research_rebuild]")
    page.wait_for_selector("#launch-status .run-state", timeout=LOAD_MS)
    assert page.is_disabled("[data-launch=backtest]")      # one launch followed at a time
    ended = page.wait_for_selector(
        "#launch-status .run-state:is([data-status=SUCCESS], [data-status=FAILURE])",
        timeout=RUN_MS)
    run_id = ended.get_attribute("data-run")
    run = served.get(f"/runs/{run_id}").json()
    assert run["job"] == "research_job" and ended.get_attribute("data-status") == run["status"]
    assert run["tags"]["etf/requested_by"] == f"api:{served.live.desk.username(Role.RESEARCHER)}"
    said = page.inner_text("#launch-status")
    assert f"run {run_id} of research_job is {run['status']}" in said
    assert ("sensors now run walk_forward_job, portfolio_job" if run["status"] == "SUCCESS"
            else "Nothing follows it: walk_forward_job, portfolio_job run only after") in said
    assert page.get_attribute("#launch-status a", "href") == f"{served.dagster}/runs/{run_id}"
    assert page.is_enabled("[data-launch=backtest]")
    assert "Traceback" not in page.inner_text("body")
    tab.screenshot("research_launch_followed")
    tab.assert_no_errors()
