"""MLflow tracking resource (SPEC §10) against a real local SQLite store."""

import json
from pathlib import Path

import dagster as dg
import matplotlib
import mlflow
import numpy as np
import pandas as pd
import pytest
from mlflow import MlflowClient
from mlflow.utils.validation import MAX_ENTITY_KEY_LENGTH, MAX_PARAM_VAL_LENGTH

from resources.tracking import (
    PARAMS_ARTIFACT,
    MlflowTracking,
    flatten_params,
    prepare_params,
)

matplotlib.use("Agg")
import matplotlib.pyplot as plt


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One SQLite store for the module (creating its schema takes a few seconds)."""
    return tmp_path_factory.mktemp("mlflow") / "home" / "mlflow.db"


@pytest.fixture(scope="module")
def tracking(store: Path) -> MlflowTracking:
    return MlflowTracking(tracking_uri=f"sqlite:///{store.as_posix()}", code_version="abc123")


@pytest.fixture(scope="module")
def client(tracking: MlflowTracking) -> MlflowClient:
    return MlflowClient(tracking_uri=tracking.tracking_uri)


def _artifact_paths(client: MlflowClient, run_id: str, path: str | None = None) -> set[str]:
    out: set[str] = set()
    for info in client.list_artifacts(run_id, path):
        if info.is_dir:
            out |= _artifact_paths(client, run_id, info.path)
        else:
            out.add(info.path)
    return out


def test_run_records_params_metrics_artifacts_and_tags(tracking, client, store, tmp_path):
    uri_before = mlflow.get_tracking_uri()
    params = {"top_n": 3, "costs": {"commission_bps": 2.0, "lot_size": 100},
              "horizons": [1, 5, 10, 20]}
    frame = pd.DataFrame({"equity": [1.0, 1.01, 0.99]},
                         index=pd.date_range("2024-01-02", periods=3, name="date"))
    fig, ax = plt.subplots()
    ax.plot(frame.index, frame["equity"])
    with tracking.run(None, experiment="tracking_basic", run_name="backtest",
                      params=params, tags={"kind": "backtest"}, data_version="dv-42") as run:
        run.log_metrics({"sharpe": np.float64(1.25), "cagr": 0.08, "skipped": None})
        for step, value in enumerate([1.0, 1.01, 0.99]):
            run.log_metrics({"equity": value}, step=step)
        assert run.log_figure(fig, "plots/equity") == "plots/equity.png"
        run.log_frame(frame, "equity.csv")
        run.log_frame(frame["equity"], "tables/equity.parquet")
        run.log_html("<h1>report</h1>", "report")
        run.log_dict({"selected": ["momentum_20", "sharpe_20"]}, "selection.json")
        run_id = run.run_id
    plt.close(fig)

    got = client.get_run(run_id)
    assert got.info.status == "FINISHED" and got.info.end_time is not None
    assert got.info.run_name == "backtest"
    assert got.data.params == {"top_n": "3", "costs.commission_bps": "2.0",
                               "costs.lot_size": "100", "horizons": "[1,5,10,20]"}
    assert got.data.metrics["sharpe"] == pytest.approx(1.25)
    assert "skipped" not in got.data.metrics
    history = client.get_metric_history(run_id, "equity")
    assert [(m.step, m.value) for m in sorted(history, key=lambda m: m.step)] == [
        (0, 1.0), (1, 1.01), (2, 0.99)]
    tags = got.data.tags
    assert tags["code_version"] == "abc123"
    assert tags["data_version"] == "dv-42"
    assert tags["kind"] == "backtest"
    assert "dagster.run_id" not in tags  # no context, no Dagster tags
    assert _artifact_paths(client, run_id) == {
        PARAMS_ARTIFACT, "plots/equity.png", "equity.csv", "tables/equity.parquet",
        "report.html", "selection.json"}

    # Artifacts live in a local folder next to the database, not ./mlruns.
    root = (store.parent / "mlartifacts").resolve()
    assert got.info.artifact_uri.startswith(root.as_uri())
    local = Path(client.download_artifacts(run_id, "", str(tmp_path)))
    assert (local / "plots" / "equity.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    back = pd.read_csv(local / "equity.csv", index_col="date", parse_dates=True)
    pd.testing.assert_frame_equal(back, frame, check_freq=False)
    pq = pd.read_parquet(local / "tables" / "equity.parquet")
    assert pq["equity"].tolist() == [1.0, 1.01, 0.99]
    assert (local / "report.html").read_text() == "<h1>report</h1>"
    assert json.loads((local / PARAMS_ARTIFACT).read_text()) == params
    # No global mlflow state was touched.
    assert mlflow.get_tracking_uri() == uri_before
    assert mlflow.active_run() is None


def test_one_experiment_per_strategy_reused_across_runs(tracking, client):
    ids = []
    for window in ("w000", "w001"):
        with tracking.run(None, experiment="strategy_a", run_name=window,
                          params={"window": window}) as run:
            ids.append(run.experiment_id)
    with tracking.run(None, experiment="strategy_b", run_name="w000", params={}) as other:
        pass
    assert ids[0] == ids[1] != other.experiment_id
    matching = [e for e in client.search_experiments() if e.name == "strategy_a"]
    assert len(matching) == 1
    runs = tracking.search("strategy_a")
    assert sorted(r.info.run_name for r in runs) == ["w000", "w001"]
    assert [r.info.run_name for r in tracking.search(
        "strategy_a", "params.window = 'w001'")] == ["w001"]
    assert tracking.search("no_such_strategy") == []
    # A deleted experiment is restored, not duplicated.
    client.delete_experiment(ids[0])
    with tracking.run(None, experiment="strategy_a", run_name="w002", params={}) as run:
        assert run.experiment_id == ids[0]
    assert len(tracking.search("strategy_a")) == 3


def test_failed_body_marks_run_failed_and_reraises(tracking, client):
    with pytest.raises(ValueError, match="boom"), tracking.run(
            None, experiment="tracking_fail", run_name="bad", params={"a": 1}) as run:
        run.log_metrics({"partial": 1.0})
        raise ValueError("boom")
    got = client.get_run(run.run_id)
    assert got.info.status == "FAILED"
    assert got.info.end_time is not None
    assert got.data.tags["error"] == "ValueError: boom"
    assert got.data.metrics["partial"] == 1.0
    assert mlflow.active_run() is None
    # Nothing left running in the experiment.
    assert tracking.search("tracking_fail", "attributes.status = 'RUNNING'") == []


def test_keyboard_interrupt_still_closes_the_run(tracking, client):
    with pytest.raises(KeyboardInterrupt), tracking.run(
            None, experiment="tracking_fail", run_name="interrupted", params={}) as run:
        raise KeyboardInterrupt
    got = client.get_run(run.run_id)
    assert got.info.status == "FAILED" and got.info.end_time is not None
    assert got.data.tags["error"].startswith("KeyboardInterrupt")


def test_bad_metric_fails_the_run_not_the_store(tracking, client):
    with pytest.raises(TypeError, match="metric 'label'"), tracking.run(
            None, experiment="tracking_fail", run_name="bad_metric", params={}) as run:
        run.log_metrics({"label": "not a number"})
    assert client.get_run(run.run_id).info.status == "FAILED"


def test_long_and_nested_params(tracking, client, tmp_path):
    long_text = "x" * (MAX_PARAM_VAL_LENGTH + 4000)
    params = {
        "universe": {"symbols": [f"5100{i:02d}" for i in range(40)], "benchmark": "510300"},
        "factors": [{"name": "momentum_20", "params": {"window": 20}},
                    {"name": "sharpe_20", "params": {}}],
        "notes": long_text,
        "weird key:with*chars": 1,
        "k" * 300: "long key",
        "nothing": None,
        "empty": {},
        "as_of": pd.Timestamp("2024-05-06"),
        "path": Path("/data/etf"),
        "ratio": np.float32(0.5),
        "count": np.int64(7),
        "many": {f"p{i:03d}": i for i in range(150)},  # > 100 params: several batches
    }
    flat = flatten_params(params)
    assert flat["factors.0.name"] == "momentum_20"
    assert flat["factors.0.params.window"] == "20"
    assert flat["factors.1.params"] == "{}"
    assert flat["empty"] == "{}"
    assert flat["nothing"] == "None"
    assert flat["as_of"] == "2024-05-06T00:00:00"
    assert flat["path"] == "/data/etf"
    assert flat["ratio"] == "0.5" and flat["count"] == "7"
    assert json.loads(flat["universe.symbols"])[:2] == ["510000", "510001"]

    with tracking.run(None, experiment="tracking_params", run_name="nested",
                      params=params) as run:
        pass
    logged = client.get_run(run.run_id).data.params
    assert logged == prepare_params(params)
    assert len(logged) == len(flat)
    assert all(len(k) <= MAX_ENTITY_KEY_LENGTH for k in logged)
    assert all(len(v) <= MAX_PARAM_VAL_LENGTH for v in logged.values())
    assert logged["notes"].startswith("xxx") and logged["notes"].endswith("params.json]")
    assert logged["weird key_with_chars"] == "1"
    assert logged["many.p149"] == "149"
    assert any(v == "long key" for v in logged.values())
    # The complete, unclipped params are kept as an artifact.
    local = client.download_artifacts(run.run_id, PARAMS_ARTIFACT, str(tmp_path))
    full = json.loads(Path(local).read_text())
    assert full["notes"] == long_text
    assert full["factors"][0]["params"] == {"window": 20}


def test_dagster_asset_context_tags(tracking, client):
    windows = dg.StaticPartitionsDefinition(["w000_2021-01-04", "w001_2021-04-06"])

    @dg.asset(partitions_def=windows, key_prefix=["wfo"])
    def window_result(context: dg.AssetExecutionContext, tracking: MlflowTracking) -> str:
        with tracking.run(context, experiment="tracking_dagster", run_name=context.partition_key,
                          params={"window": context.partition_key}, data_version="dv-1") as run:
            run.log_metrics({"oos_sharpe": 0.9})
        return run.run_id

    result = dg.materialize([window_result], resources={"tracking": tracking},
                            partition_key="w001_2021-04-06")
    assert result.success
    run_id = result.output_for_node("wfo__window_result")
    got = client.get_run(run_id)
    assert got.info.status == "FINISHED"
    tags = got.data.tags
    assert tags["dagster.run_id"] == result.run_id
    assert tags["dagster.asset_key"] == "wfo/window_result"
    assert tags["dagster.partition_key"] == "w001_2021-04-06"
    assert tags["dagster.job_name"] == "__ephemeral_asset_job__"
    assert tags["code_version"] == "abc123"
    assert tags["data_version"] == "dv-1"
    found = tracking.search("tracking_dagster", f"tags.`dagster.run_id` = '{result.run_id}'")
    assert [r.info.run_id for r in found] == [run_id]


def test_failing_dagster_asset_leaves_a_failed_run(tracking, client):
    @dg.asset(partitions_def=dg.StaticPartitionsDefinition(["w000"]))
    def exploding(context: dg.AssetExecutionContext, tracking: MlflowTracking) -> None:
        with tracking.run(context, experiment="tracking_dagster_fail", run_name="w000",
                          params={}):
            raise RuntimeError("window failed")

    result = dg.materialize([exploding], resources={"tracking": tracking},
                            partition_key="w000", raise_on_error=False)
    assert not result.success
    runs = tracking.search("tracking_dagster_fail")
    assert len(runs) == 1
    assert runs[0].info.status == "FAILED"
    assert runs[0].data.tags["dagster.run_id"] == result.run_id
    assert runs[0].data.tags["dagster.partition_key"] == "w000"
    assert runs[0].data.tags["error"] == "RuntimeError: window failed"


def test_asset_code_version_is_the_fallback(store, client):
    plain = MlflowTracking(tracking_uri=f"sqlite:///{store.as_posix()}")

    @dg.asset(code_version="v7")
    def versioned(context: dg.AssetExecutionContext, tracking: MlflowTracking) -> str:
        with tracking.run(context, experiment="tracking_versions", run_name="r",
                          params={}) as run:
            pass
        return run.run_id

    result = dg.materialize([versioned], resources={"tracking": plain})
    tags = client.get_run(result.output_for_node("versioned")).data.tags
    assert tags["code_version"] == "v7"
    assert "dagster.partition_key" not in tags


def test_explicit_artifact_root_and_isolated_stores(tmp_path, client, tracking):
    other_db = tmp_path / "other" / "mlflow.db"
    arts = tmp_path / "artifacts"
    other = MlflowTracking(tracking_uri=f"sqlite:///{other_db.as_posix()}",
                           artifact_root=str(arts))
    uri_before = mlflow.get_tracking_uri()
    with other.run(None, experiment="isolated", run_name="r", params={"x": 1}) as run:
        run.log_dict({"x": 1}, "x.json")
    exp = other.experiment("isolated", create=False)
    assert exp is not None and exp.artifact_location.startswith(arts.resolve().as_uri())
    assert (arts.resolve() / exp.artifact_location.rsplit("/", 1)[-1]).is_dir()
    # The run is only in its own store.
    assert len(other.search("isolated")) == 1
    assert tracking.search("isolated") == []
    assert mlflow.get_tracking_uri() == uri_before


def test_run_url():
    # MLflow 3's UI opens on GenAI unless the link asks for the machine-learning workflow.
    server = MlflowTracking(tracking_uri="https://mlflow.example.com/")
    assert server.run_url("abc", experiment_id="3") == (
        "https://mlflow.example.com/#/experiments/3/runs/abc?workflowType=machine_learning")
    local = MlflowTracking(tracking_uri="sqlite:////tmp/never-created.db")
    assert local.run_url("abc", experiment_id="3") is None
    # A local store with the UI `make dev` serves: links to that UI.
    served = MlflowTracking(tracking_uri="sqlite:////tmp/never-created.db",
                            ui_url="http://127.0.0.1:5000/")
    assert served.run_url("abc", experiment_id="3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs/abc?workflowType=machine_learning")
    assert served.experiment_url("3") == (
        "http://127.0.0.1:5000/#/experiments/3/runs?viewStateShareKey=researcher"
        "&workflowType=machine_learning")


def test_runs_link_back_to_dagster_and_experiments_open_on_runs(tmp_path):
    from resources.tracking import TAG_NOTE, dagster_links

    tags = {"dagster.run_id": "r-1", "dagster.job_name": "portfolio_job",
            "dagster.asset_key": "wfo_results", "dagster.partition_key": "w001_2021-05-31"}
    links = dagster_links("http://127.0.0.1:3000/", tags)
    assert links["dagster.run_url"] == "http://127.0.0.1:3000/runs/r-1"
    assert links["dagster.asset_url"] == (
        "http://127.0.0.1:3000/assets/wfo_results?partition=w001_2021-05-31")
    assert "[r-1](http://127.0.0.1:3000/runs/r-1)" in links[TAG_NOTE]
    assert dagster_links(None, tags) == {} and dagster_links("http://x", {}) == {}

    tracking = MlflowTracking(tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}",
                              ui_url="http://127.0.0.1:5000", dagster_url="http://127.0.0.1:3000")
    with tracking.run(None, experiment="view", run_name="r", params={}) as run:
        run.log_series({"equity": pd.Series([1.0, 1.1, 1.05],
                                             index=pd.bdate_range("2024-01-02", periods=3))})
        assert run.artifact_url("plots/equity.png") == (
            f"http://127.0.0.1:5000/get-artifact?path=plots%2Fequity.png&run_uuid={run.run_id}")
    experiment = tracking.experiment("view", create=False)
    assert experiment is not None
    assert experiment.tags["mlflow.experimentKind"] == "custom_model_development"
    view = json.loads(experiment.tags["mlflow.sharedViewState.researcher"])
    assert "metrics.`sharpe`" in view["selectedColumns"]
    history = tracking.client().get_metric_history(run.run_id, "equity")
    assert [m.step for m in history] == [0, 1, 2]
    assert [pd.Timestamp(m.timestamp, unit="ms") for m in history] == list(
        pd.bdate_range("2024-01-02", periods=3))


def test_artifact_names_are_checked(tracking):
    with tracking.run(None, experiment="tracking_names", run_name="r", params={}) as run:
        with pytest.raises(ValueError, match="relative path"):
            run.log_html("x", "../escape.html")
        with pytest.raises(ValueError, match="suffix"):
            run.log_frame(pd.DataFrame({"a": [1]}), "table.xlsx")
        with pytest.raises(TypeError, match="figure"):
            run.log_figure(object(), "fig")


def test_strategy_params_and_tags_round_trip(tracking, client):
    from rotation.strategy import load_strategy

    cfg = load_strategy("etf_rotation_default")
    with tracking.run(None, experiment=cfg.experiment_name, run_name="w000",
                      params=cfg.tracking_params(), tags=cfg.tracking_tags()) as run:
        pass
    got = client.get_run(run.run_id)
    assert got.data.params == flatten_params(cfg.tracking_params())
    assert len(got.data.params) > 100  # logged in several batches
    assert got.data.params["universe.benchmark"] == "510300"
    assert got.data.params["factors.momentum_250.params.window"] == "250"
    assert got.data.tags["strategy.fingerprint"] == cfg.fingerprint
    assert got.data.tags["execution_model"] == "T1_OPEN"
    assert client.get_experiment(run.experiment_id).name == "etf_rotation_default"
