"""The embedded local Dagster instance: SQLite storage in a project folder, no servers."""

from __future__ import annotations

import os
from pathlib import Path

from orchestration.settings import Settings

LOCAL_INSTANCE_YAML = """\
# Local, embedded Dagster instance (written by orchestration.instance): SQLite run, event-log
# and schedule storage in this folder. Production uses deploy/dagster.yaml (PostgreSQL).
telemetry:
  enabled: false
run_coordinator:
  module: dagster.core.run_coordinator
  class: QueuedRunCoordinator
  config:
    max_concurrent_runs: 2
"""


# A 20-year single-run backfill touches ~5,300 partitions of each asset. By default Dagster
# writes one "planned" and one "materialised" event per partition, each in its own transaction
# on a fresh connection (~16,000 round trips for the planning alone, 7 minutes on PostgreSQL).
# These two documented switches make it one planned event per asset (partitions of a failed run
# then show as missing rather than failed) and write materialisations in batches. Deployments
# set the same variables (deploy/).
DAGSTER_EVENT_SETTINGS = {
    "DAGSTER_EMIT_PARTITION_SUBSET_IN_PLANNED_EVENTS": "true",
    "DAGSTER_EVENT_BATCH_SIZE": "1000",
}


def configure_event_batching() -> None:
    for name, value in DAGSTER_EVENT_SETTINGS.items():
        os.environ.setdefault(name, value)


def prepare_local_instance(settings: Settings) -> Path:
    """Create the instance folder and its dagster.yaml; point DAGSTER_HOME at it."""
    home = settings.dagster_home.resolve()
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(LOCAL_INSTANCE_YAML, encoding="utf-8")
    os.environ["DAGSTER_HOME"] = str(home)
    configure_event_batching()
    return home
