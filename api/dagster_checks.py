"""Quality-check results per session from the Dagster instance (public API only): for each
asset materialised for the session, the check evaluations of the run that materialised it -
the same evaluations the approval gate reads (assets/signals.py ``failed_checks``). A range
run evaluates its checks once for the whole range, so they carry no partition of their own."""

from __future__ import annotations

import datetime as dt
import os
import threading
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from orchestration.settings import Settings


class NoInstanceError(RuntimeError):
    """Neither DAGSTER_HOME nor a local instance under the settings' home."""


@dataclass(frozen=True)
class CheckRecord:
    asset: str
    check: str
    passed: bool
    severity: str
    blocking: bool | None
    description: str | None
    run_id: str
    evaluated_at: dt.datetime


def instance_home(settings: Settings) -> Path:
    """DAGSTER_HOME (deployments set it), else the local instance of ``make demo``."""
    env = os.environ.get("DAGSTER_HOME")
    home = Path(env) if env else settings.dagster_home
    if not (home / "dagster.yaml").is_file():
        raise NoInstanceError(f"no Dagster instance at {home} (no dagster.yaml): set "
                              "DAGSTER_HOME or run make demo first")
    return home


class DagsterChecks:
    """Opens the instance on first use; one reader at a time (SQLite storage)."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._instance: dg.DagsterInstance | None = None
        self._lock = threading.Lock()

    def _open(self) -> dg.DagsterInstance:
        if self._instance is None:
            self._instance = dg.DagsterInstance.from_config(str(instance_home(self._settings)))
        return self._instance

    def for_session(self, session: dt.date) -> list[CheckRecord]:
        partition = session.isoformat()
        with self._lock:
            instance = self._open()
            runs = _materialising_runs(instance, partition)
            return [record for asset, run_id in sorted(runs.items())
                    for record in _evaluations(instance, asset, run_id, partition)]

    def close(self) -> None:
        if self._instance is not None:
            self._instance.dispose()


def _materialising_runs(instance: dg.DagsterInstance, partition: str) -> dict[dg.AssetKey, str]:
    runs = {}
    for key in instance.get_asset_keys():
        found = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1)
        if found.records:
            runs[key] = found.records[0].run_id
    return runs


def _evaluations(instance: dg.DagsterInstance, asset: dg.AssetKey, run_id: str,
                 partition: str) -> list[CheckRecord]:
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION, limit=10_000).records
    out = []
    for record in records:
        event = record.event_log_entry.dagster_event
        evaluation = event.event_specific_data if event is not None else None
        if not isinstance(evaluation, dg.AssetCheckEvaluation) or \
                evaluation.asset_key != asset or evaluation.partition not in (None, partition):
            continue
        out.append(CheckRecord(
            asset=asset.to_user_string(), check=evaluation.check_name,
            passed=evaluation.passed, severity=evaluation.severity.value,
            blocking=evaluation.blocking, description=evaluation.description, run_id=run_id,
            evaluated_at=dt.datetime.fromtimestamp(record.event_log_entry.timestamp, dt.UTC)))
    return out
