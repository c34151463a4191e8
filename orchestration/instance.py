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


# Dagster writes the per-partition events of a multi-partition run (planned and materialised)
# in batches of this size instead of one transaction each: a 20-year single-run backfill has
# ~16,000 of them. Deployments set the same variable (deploy/).
EVENT_BATCH_SIZE = "1000"


def configure_event_batching() -> None:
    os.environ.setdefault("DAGSTER_EVENT_BATCH_SIZE", EVENT_BATCH_SIZE)


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
