"""The researcher's view (issue 14): what the Dagster and MLflow pages show after `make demo`,
driven in Debian's Chromium through Playwright, and that no number contradicts another.

One demo runs per module on a fresh home (as `make demo` does), with the UIs' URLs on free
ports; `make dev`'s entry point then serves that home (Dagster UI, MLflow UI with one worker,
the embedded ledger). The browser opens the asset pages of ``raw_bars`` (one session and one
holiday partition), ``factor_ic``, ``wfo_results``, ``oos_backtest`` and ``target_portfolio``
and the MLflow experiment and run, asserts what a researcher must see there and saves a
screenshot of each page in ``ETF_TEST_SHOTS`` (default /tmp/issue14_shots).

Chromium is Debian's (`make test` installs it through deploy/ensure-browser.sh; Playwright's own
browser download is not used); ``ETF_TEST_CHROMIUM`` names another binary.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pandas as pd
import pytest
from chromium import chromium
from demo_home import Demo

from resources.tracking import TAG_DAGSTER_RUN_URL, TAG_NOTE, VIEW_KEY

ROOT = Path(__file__).resolve().parents[1]
SHOTS = Path(os.environ.get("ETF_TEST_SHOTS", "/tmp/issue14_shots"))
SIGNAL_DAY, HOLIDAY = "2025-12-30", "2025-10-01"
UI_START_SECONDS = 240
STAMP = re.compile(r"^[A-Z][a-z]{2} \d{1,2}, \d{1,2}:\d\d [AP]M$")


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@pytest.fixture(scope="module")
def uis(demo: Demo) -> Iterator[Demo]:
    """`make dev`'s entry point on the demo's home: Dagster and MLflow on the demo's ports."""
    log = (demo.home.parent / "dev.log").open("w")
    dev = subprocess.Popen([sys.executable, "-m", "orchestration.dev"], cwd=ROOT, env=demo.env,
                           stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + UI_START_SECONDS
        while not (_answers(f"{demo.dagster}/server_info") and _answers(f"{demo.mlflow}/health")
                   and _location_loaded(demo.dagster)):
            assert dev.poll() is None, (demo.home.parent / "dev.log").read_text()[-4000:]
            assert time.monotonic() < deadline, (demo.home.parent / "dev.log").read_text()[-4000:]
            time.sleep(2)
        yield demo
    finally:
        dev.send_signal(signal.SIGTERM)
        try:
            dev.wait(timeout=90)
        except subprocess.TimeoutExpired:
            os.killpg(dev.pid, signal.SIGKILL)
            dev.wait()
        log.close()
    text = (demo.home.parent / "dev.log").read_text()
    assert "BetaWarning" not in text, text[-3000:]


def _location_loaded(dagster: str) -> bool:
    query = json.dumps({"query": "{ workspaceOrError { ... on Workspace { locationEntries { "
                                 "locationOrLoadError { __typename } } } } }"}).encode()
    request = urllib.request.Request(f"{dagster}/graphql", data=query,
                                     headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            body = json.loads(response.read())
    except OSError:
        return False
    entries = body["data"]["workspaceOrError"]["locationEntries"]
    return bool(entries) and all((e["locationOrLoadError"] or {}).get("__typename")
                                 == "RepositoryLocation" for e in entries)


def _metadata(instance: dg.DagsterInstance, asset: str, partition: str | None = None
              ) -> dict[str, Any]:
    found = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=dg.AssetKey(asset),
                              asset_partitions=[partition] if partition else None), limit=1)
    assert found.records, f"{asset} {partition or ''} is not materialised"
    event = found.records[0].asset_materialization
    assert event is not None
    return dict(event.metadata)


# -- consistency: the demo's figures, the asset metadata and the MLflow report agree ------------

def _printed(out: str, pattern: str) -> re.Match[str]:
    found = re.search(pattern, out, re.M)
    assert found, f"{pattern!r} not in the demo's output:\n{out[-4000:]}"
    return found


def test_one_run_says_the_same_everywhere(demo: Demo) -> None:
    from mlflow import MlflowClient

    out = demo.out
    settings = demo.settings()
    with demo.instance() as instance:
        backtest = _metadata(instance, "oos_backtest")
        target = _metadata(instance, "target_portfolio")
        screen = _metadata(instance, "selected_factors")
        windows = _metadata(instance, "wfo_windows", instance.get_materialized_partitions(
            dg.AssetKey("wfo_windows")).pop())

    # The date range: the stitched backtest runs to the session the target is decided on.
    span = _printed(out, r"stitched out-of-sample backtest (\S+) \.\. (\S+): equity [\d,]+ -> "
                         r"([\d,]+) \w+, max drawdown (-?[\d.]+)%")
    assert (span.group(1), span.group(2)) == (backtest["first_date"].value,
                                               backtest["last_date"].value)
    assert span.group(2) == target["as_of"].value == SIGNAL_DAY
    assert SIGNAL_DAY in backtest["span"].value
    # The same maximum drawdown, in percent, in the printout and the metadata.
    assert float(span.group(4)) == pytest.approx(backtest["max_drawdown_pct"].value, abs=0.01)

    # The same weights: printed target, target_portfolio, oos_backtest's latest target.
    printed = dict(re.findall(r"^(\d{6}) .*? (\d+\.\d\d)% ", out.split("target portfolio")[1]
                              .split("cash:")[0], re.M))
    holdings = {r.data["symbol"]: r.data["weight_pct"] for r in target["holdings"].value.records}
    latest = {r.data["symbol"]: r.data["weight_pct"]
              for r in backtest["latest_target"].value.records}
    assert holdings == latest
    assert {s: float(w) for s, w in printed.items()} == pytest.approx(holdings, abs=0.005)
    assert all(r.data["name"] for r in target["holdings"].value.records), "fund names"
    invested = sum(holdings.values())
    assert target["invested_pct"].value == pytest.approx(invested, abs=0.01)

    # The same screen outcome: the full-history sentence and the windows' own screens.
    outcome = screen["outcome"].value
    assert f"full-history screen: {outcome}" in out
    if not screen["selected"].value:
        assert "each walk-forward window screens its own" in outcome
    assert windows["screen_outcome"].value and windows["chosen_factors"].value

    # MLflow: the oos backtest run's metrics and report say the same.
    client = MlflowClient(tracking_uri=settings.resolved_mlflow_uri)
    experiment = client.get_experiment_by_name("etf_rotation_sample")
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    assert f"mlflow.sharedViewState.{VIEW_KEY}" in experiment.tags
    [run] = client.search_runs([experiment.experiment_id], "attributes.run_name = 'oos backtest'")
    assert run.data.metrics["max_drawdown"] * 100 == pytest.approx(
        backtest["max_drawdown_pct"].value, abs=0.01)
    assert run.data.metrics["sharpe"] == pytest.approx(backtest["sharpe"].value, abs=1e-4)
    curve = client.get_metric_history(run.info.run_id, "equity")
    assert pd.Timestamp(curve[-1].timestamp, unit="ms").strftime("%Y-%m-%d") == SIGNAL_DAY
    report = Path(client.download_artifacts(run.info.run_id, "report.html",
                                            str(demo.home.parent))).read_text()
    assert f"Target portfolio for the next open (target_portfolio) ({SIGNAL_DAY})" in report
    for symbol, weight in holdings.items():
        assert re.search(rf"<th>{symbol}</th><td[^>]*>SAMPLE [^<]+</td><td>{weight:.2f}%</td>",
                         report), symbol
    assert run.data.tags[TAG_DAGSTER_RUN_URL].startswith(f"{demo.dagster}/runs/")
    assert f"]({demo.dagster}/assets/oos_backtest)" in run.data.tags[TAG_NOTE]


# -- per-partition truth -----------------------------------------------------------------------

def test_each_partition_describes_itself(demo: Demo) -> None:
    with demo.instance() as instance:
        day = _metadata(instance, "raw_bars", SIGNAL_DAY)
        holiday = _metadata(instance, "raw_bars", HOLIDAY)
    assert day["dagster/row_count"].value == 20            # the sample's 20 funds that day
    assert (day["first_date"].value, day["last_date"].value) == (SIGNAL_DAY, SIGNAL_DAY)
    assert {r.data["date"] for r in day["preview"].value.records} == {SIGNAL_DAY}
    assert day["run_row_count"].value > 30_000            # the whole run, labelled as such
    assert day["run_first_date"].value == "2019-01-02"
    assert holiday["dagster/row_count"].value == 0
    assert "no session" in holiday["session"].value and HOLIDAY in holiday["session"].value
    assert "first_date" not in holiday


# -- one home per dataset ----------------------------------------------------------------------

def test_switching_datasets_shows_nothing_of_the_old_one_as_current(
        demo: Demo, shared_data: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from mlflow import MlflowClient

    from orchestration.definitions import build_definitions
    from orchestration.instance import prepare_local_instance
    from orchestration.runs import run_range

    sample = demo.settings()
    real = demo.settings(partitions_start="2025-11-03", market_data={
        "source": "files", "dataset": "cn_etf_morphkyan_raw",
        "files_root": str(shared_data / "cn_etf_morphkyan_raw")})
    assert real.home == sample.home and real.data_home != sample.data_home
    monkeypatch.setenv("DAGSTER_HOME", str(sample.dagster_home))   # restored after the test
    home = prepare_local_instance(real)           # what `make dev` / `make demo` would open
    assert home == real.dagster_home.resolve()
    defs = build_definitions(real)
    with dg.DagsterInstance.get() as instance:
        assert run_range(defs, instance, "2025-11-03", "2025-11-07", log_level="WARNING").success
        for asset in ("oos_backtest", "target_portfolio", "wfo_results", "factor_ic",
                      "approved_signal"):
            assert instance.get_latest_materialization_event(dg.AssetKey(asset)) is None, asset
        raw = instance.get_latest_materialization_event(dg.AssetKey("raw_bars"))
        assert raw is not None and raw.asset_materialization is not None
        source = str(raw.asset_materialization.metadata["run_source"].value)
        assert source.startswith("files: cn_etf_morphkyan_raw"), source
    stored = {p.name for p in real.resolved_storage_root.iterdir()}
    assert stored == {"raw_bars", "adjusted_bars", "cross_sections"}
    assert MlflowClient(tracking_uri=real.resolved_mlflow_uri).get_experiment_by_name(
        "etf_rotation_sample") is None
    # The sample's results are where they were, untouched.
    assert (sample.resolved_storage_root / "oos_backtest.parquet").exists()
    with demo.instance() as instance:
        assert instance.get_latest_materialization_event(dg.AssetKey("oos_backtest"))


# -- the pages, in a browser -------------------------------------------------------------------

@pytest.fixture(scope="module")
def browser(uis: Demo) -> Iterator[Any]:
    with chromium(SHOTS) as launched:
        yield launched


def _page(browser: Any, url: str, wait_for: str, shot: str, *, height: int = 1400) -> Any:
    page = browser.new_page(viewport={"width": 1920, "height": height})
    page.goto(url, wait_until="domcontentloaded")
    page.wait_for_timeout(3000)
    skip = page.get_by_role("button", name="Skip")    # Dagster's first-visit community dialog
    if skip.count():
        skip.first.click()
    page.get_by_text(wait_for, exact=False).first.wait_for(timeout=120_000)
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    # The MLflow UI polls, its network is never idle: the images get 20 s at most.
    with contextlib.suppress(PlaywrightTimeout):
        page.wait_for_load_state("networkidle", timeout=20_000)
    page.wait_for_timeout(1500)
    page.screenshot(path=str(SHOTS / f"{shot}.png"), full_page=True)
    return page


def _cell_after(page: Any, label: str) -> str:
    """The text of the metadata value in the row whose first cell is ``label``."""
    row = page.locator("tr", has=page.locator("td", has_text=re.compile(rf"^{re.escape(label)}$")))
    cells = row.first.locator(":scope > td").all_inner_texts()[1:]
    # The overview's metadata table has a timestamp column between the key and the value.
    values = [c for c in cells if not STAMP.match(c.strip())]
    return values[0] if values else ""


def test_raw_bars_partition_page(uis: Demo, browser: Any) -> None:
    page = _page(browser, f"{uis.dagster}/assets/raw_bars?view=partitions&partition={SIGNAL_DAY}",
                 "dagster/row_count", "raw_bars_partition")
    assert _cell_after(page, "dagster/row_count").strip() == "20"
    assert _cell_after(page, "session").strip() == SIGNAL_DAY
    assert "run_row_count" in page.content()
    page.close()
    page = _page(browser, f"{uis.dagster}/assets/raw_bars?view=partitions&partition={HOLIDAY}",
                 "no session", "raw_bars_holiday")
    assert _cell_after(page, "dagster/row_count").strip() == "0"
    page.close()


def test_factor_ic_page(uis: Demo, browser: Any) -> None:
    page = _page(browser, f"{uis.dagster}/assets/factor_ic", "top_by_directed_icir_h5",
                 "factor_ic", height=2600)
    text = page.content()
    assert "directed_icir" in text and "ranking" in text
    images = page.locator("img[src*='get-artifact']")
    assert images.count() == 2
    assert all(images.nth(i).evaluate("i => i.naturalWidth") > 300 for i in range(2))
    assert page.locator(f"a[href^='{uis.mlflow}/#/experiments/']").count() >= 1
    page.close()


def test_wfo_results_page(uis: Demo, browser: Any) -> None:
    with uis.instance() as instance:
        key = sorted(instance.get_materialized_partitions(dg.AssetKey("wfo_results")))[-1]
    page = _page(browser, f"{uis.dagster}/assets/wfo_results?view=partitions&partition={key}",
                 "oos_sharpe", "wfo_results", height=2600)
    for label in ("is_sharpe", "oos_sharpe", "is_annual_return_pct", "oos_cagr_pct",
                  "screen_outcome", "run_factor_stability", "run_winners"):
        assert _cell_after(page, label), label
    assert page.locator(f"a[href^='{uis.mlflow}/#/experiments/']").count() >= 1
    page.close()


def test_oos_backtest_page_and_its_mlflow_run(uis: Demo, browser: Any) -> None:
    page = _page(browser, f"{uis.dagster}/assets/oos_backtest", "total_return_pct",
                 "oos_backtest", height=4200)
    for label in ("sharpe", "total_return_pct", "max_drawdown_pct", "cagr_pct", "span",
                  "latest_target", "windows", "factor_stability"):
        assert _cell_after(page, label), label
    images = page.locator("img[src*='get-artifact']")
    assert images.count() >= 3
    assert all(images.nth(i).evaluate("i => i.naturalWidth") > 300
               for i in range(images.count()))
    link = page.locator(f"a[href^='{uis.mlflow}/#/experiments/']").first
    run_url = str(link.get_attribute("href"))
    page.close()

    run = _page(browser, run_url, "Made by Dagster run", "mlflow_run", height=1800)
    back = run.locator(f"a[href^='{uis.dagster}/runs/']")
    assert back.count() >= 1
    assert run.locator(f"a[href='{uis.dagster}/assets/oos_backtest']").count() >= 1
    assert "sharpe" in run.content()
    run.close()
    # Equity and drawdown are curves over the sessions (one point per session), not a bar.
    charts = browser.new_page(viewport={"width": 1920, "height": 1100})
    charts.goto(run_url.replace("?", "/model-metrics?", 1))
    search = charts.get_by_placeholder("Search metric charts")
    search.wait_for(timeout=120_000)
    for metric in ("equity", "drawdown"):
        search.fill(metric)
        charts.wait_for_timeout(5000)
        charts.screenshot(path=str(SHOTS / f"mlflow_run_{metric}.png"))
        assert charts.locator("path.js-line").count() >= 1, metric
    charts.close()


def test_target_portfolio_page(uis: Demo, browser: Any) -> None:
    page = _page(browser, f"{uis.dagster}/assets/target_portfolio", "holdings",
                 "target_portfolio", height=2000)
    assert _cell_after(page, "as_of").strip() == SIGNAL_DAY
    assert "SAMPLE" in _cell_after(page, "holdings")           # fund names beside codes
    assert float(_cell_after(page, "invested_pct")) > 0
    page.close()


def test_lineage_opens_with_every_group_expanded(uis: Demo, browser: Any) -> None:
    url = _printed(uis.out, r"^  lineage   : (\S+)$").group(1)
    assert url.startswith(f"{uis.dagster}/asset-groups?expanded=")
    page = _page(browser, url, "oos_backtest", "lineage", height=1400)
    for asset in ("raw_bars", "cross_sections", "factor_ic", "wfo_results", "oos_backtest",
                  "target_portfolio", "approved_signal"):
        assert page.get_by_text(asset, exact=True).count() >= 1, asset
    page.close()


def test_mlflow_experiment_opens_on_runs_with_metric_columns(uis: Demo, browser: Any) -> None:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=uis.settings().resolved_mlflow_uri)
    experiment = client.get_experiment_by_name("etf_rotation_sample")
    assert experiment is not None
    url = (f"{uis.mlflow}/#/experiments/{experiment.experiment_id}/runs?"
           f"viewStateShareKey={VIEW_KEY}&workflowType=machine_learning")
    page = _page(browser, url, "oos backtest", "mlflow_experiment", height=1000)
    headers = page.locator("[role='columnheader']").all_inner_texts()
    assert any("sharpe" in h for h in headers), headers
    assert any("total_return" in h for h in headers), headers
    page.close()


# -- the metadata helpers, without Dagster running -------------------------------------------

def test_metrics_are_one_key_each_in_their_unit() -> None:
    from assets.metadata import metric_metadata

    meta = metric_metadata({"total_return": 0.123456, "sharpe": 1.234567, "max_drawdown": -0.2,
                            "max_drawdown_duration": 10.0, "sessions": 250.0,
                            "calmar": float("nan")})
    assert {k: v.value for k, v in meta.items()} == {
        "total_return_pct": 12.35, "sharpe": 1.2346, "max_drawdown_pct": -20.0,
        "max_drawdown_duration_sessions": 10.0, "sessions": 250.0}
    assert all(isinstance(v, dg.FloatMetadataValue) for v in meta.values())   # Plots tab


def test_rows_fall_in_their_own_partition() -> None:
    from assets.metadata import rows_by_partition, table

    keys = ["2024-01-04", "2024-01-05", "2024-01-08"]          # Thu, Fri, Mon
    frame = pd.DataFrame({"date": pd.to_datetime(["2024-01-04", "2024-01-05", "2024-01-06",
                                                  "2024-01-08"]),
                          "symbol": ["a", "a", "a", "a"], "close": [1.0, 2.0, 3.0, 4.0]})
    parts = rows_by_partition(frame, keys)
    assert [len(parts[k]) for k in keys] == [1, 2, 1]          # Saturday's bar is Friday's
    preview = table(parts["2024-01-05"])
    assert [c.name for c in preview.schema.columns] == ["date", "symbol", "close"]
    assert [r.data["date"] for r in preview.records] == ["2024-01-05", "2024-01-06"]
    assert rows_by_partition(frame.iloc[0:0], keys)["2024-01-05"].empty
