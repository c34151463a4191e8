"""The MLflow tracking store as the desk API reads it: one experiment per strategy (SPEC §10),
its walk-forward window runs, out-of-sample backtests and factor screenings, each with the
lineage the pipeline tagged it with (Dagster run, job, asset, partition, data and code
version, git commit) and links to the MLflow and Dagster UIs. The client is the pipeline's
own (``resources.tracking.MlflowTracking``); MLflow is imported on first use."""

from __future__ import annotations

import datetime as dt
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from orchestration.settings import Settings
from resources import tracking as t

if TYPE_CHECKING:
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

Kind = Literal["oos_backtest", "wfo_window", "factor_screening"]
KINDS: dict[Kind, str] = {               # the run names the pipeline gives (assets/*.py)
    "oos_backtest": "attributes.run_name = 'oos backtest'",
    "wfo_window": "attributes.run_name LIKE 'wfo %'",
    "factor_screening": "attributes.run_name = 'factor screening'",
}
# A store holds a deployment's runs: hundreds, not millions; beyond this the list is cut.
MAX_RUNS = 20_000
LINEAGE_TAGS = {
    "dagster_run_id": t.TAG_DAGSTER_RUN_ID, "dagster_job": t.TAG_DAGSTER_JOB,
    "asset_key": t.TAG_DAGSTER_ASSET_KEY, "partition": t.TAG_DAGSTER_PARTITION_KEY,
    "partition_range": t.TAG_DAGSTER_PARTITION_RANGE, "data_version": t.TAG_DATA_VERSION,
    "code_version": t.TAG_CODE_VERSION, "git_commit": t.TAG_GIT_COMMIT,
    # The walk-forward window a run is of (its partition, also when one Dagster run
    # materialised a range of windows).
    "window": "wfo.window", "dataset": "dataset",
}


class TrackingUnavailableError(RuntimeError):
    """The tracking store cannot be read."""


def kind_of(run_name: str | None) -> Kind | None:
    name = run_name or ""
    if name == "oos backtest":
        return "oos_backtest"
    if name.startswith("wfo "):
        return "wfo_window"
    return "factor_screening" if name == "factor screening" else None


@dataclass(frozen=True)
class RunSummary:
    run: Run
    experiment: str


class Tracking:
    """Reads experiments and runs; an absent local store reads as empty (never created)."""

    def __init__(self, settings: Settings) -> None:
        self.resource = t.MlflowTracking(tracking_uri=settings.resolved_mlflow_uri,
                                         ui_url=settings.resolved_mlflow_ui_url,
                                         dagster_url=settings.resolved_dagster_url)
        self._client: MlflowClient | None = None
        self._lock = threading.Lock()

    def _store_exists(self) -> bool:
        db = t.sqlite_path(self.resource.tracking_uri)
        return db is None or db.expanduser().is_file()

    def client(self) -> MlflowClient | None:
        if not self._store_exists():
            return None
        with self._lock:
            if self._client is None:
                self._client = self.resource.client()
            return self._client

    def experiments(self) -> list[Experiment]:
        client = self.client()
        if client is None:
            return []
        return sorted(_read(lambda: client.search_experiments(max_results=MAX_RUNS)),
                      key=lambda e: e.name)

    def runs(self, *, strategy: str | None, kind: Kind | None) -> list[RunSummary]:
        """Newest first."""
        experiments = [e for e in self.experiments() if strategy is None or e.name == strategy]
        client = self.client()
        if client is None or not experiments:
            return []
        names = {e.experiment_id: e.name for e in experiments}
        found = _read(lambda: list(_search(client, list(names), KINDS[kind] if kind else "")))
        return [RunSummary(r, names[r.info.experiment_id]) for r in found]

    def run(self, run_id: str) -> RunSummary | None:
        client = self.client()
        if client is None:
            return None
        from mlflow.exceptions import MlflowException

        try:
            run = client.get_run(run_id)
            experiment = client.get_experiment(run.info.experiment_id)
        except MlflowException:
            return None
        return RunSummary(run, experiment.name)


def _search(client: MlflowClient, experiment_ids: list[str], filter_string: str
            ) -> Iterator[Run]:
    token: str | None = None
    seen = 0
    while seen < MAX_RUNS:
        page = client.search_runs(experiment_ids, filter_string=filter_string,
                                  max_results=min(1000, MAX_RUNS - seen),
                                  order_by=["attributes.start_time DESC"], page_token=token)
        yield from page
        seen += len(page)
        token = page.token
        if not token:
            return


def _read(work: Any) -> Any:
    from mlflow.exceptions import MlflowException

    try:
        return work()
    except (MlflowException, OSError) as exc:
        raise TrackingUnavailableError(f"the MLflow tracking store cannot be read: {exc}"
                                       ) from None


def timestamp(millis: int | None) -> dt.datetime | None:
    return None if millis is None else dt.datetime.fromtimestamp(millis / 1000, dt.UTC)


def lineage_of(run: Run) -> dict[str, str | None]:
    return {name: run.data.tags.get(tag) for name, tag in LINEAGE_TAGS.items()}


def links_of(tracking: Tracking, run: Run) -> dict[str, str | None]:
    tags = run.data.tags
    return {"mlflow_run": tracking.resource.run_url(run.info.run_id, run.info.experiment_id),
            "dagster_run": tags.get(t.TAG_DAGSTER_RUN_URL),
            "dagster_asset": tags.get(t.TAG_DAGSTER_ASSET_URL)}
