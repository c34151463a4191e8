"""The one place the project imports Dagster's private (``dagster._``) modules.

Each name here has no public equivalent in Dagster 1.13; keeping them together means an upgrade
that moves them breaks one import block, reviewed in one file:

* ``UnresolvedAssetJobDefinition``: the type ``dg.define_asset_job`` returns (job factories'
  annotations).
* ``AssetCheckExecutionRecordStatus``: the status of a stored check evaluation (the approval
  gate reads whether a guarding check passed).
* ``CODE_VERSION_TAG``, ``PartitionsSubset`` and the event types below: recording one
  materialisation per good partition of a failed range run (assets/market.py), which Dagster's
  public API cannot express (a step stores all partitions of its range or none).
* The SQL storages and their tables: the metrics exporter counts runs and check results in
  the instance's database directly (one query each instead of paging the public API).
* ``AssetCheckEvaluationPlanned``: the planned check event, which the instance's event log
  (``orchestration/dagster_storage.py``, ``RunLevelCheckEventLog`` overriding
  ``SqlEventLogStorage.store_asset_check_event``, an internal hook) stores once per run instead
  of once per partition of the run.
* ``with_key_prefix``: ``AssetsDefinition.with_attributes`` (not public) moves a strategy's
  assets, their dependencies on each other and their checks under the strategy's key prefix,
  which the public ``map_asset_specs`` refuses (it may not change keys); the op is renamed
  through ``dagster_internal_init`` so two strategies' copies can share a job.
* ``OutputMetadataAccumulator``, ``AssetMetadataHandle``: :func:`add_partitions_metadata`
  gives each partition of a range its metadata in one step. Dagster 1.13's
  ``add_asset_metadata`` copies the step's whole accumulated metadata and lists the run's
  partition keys on every call: quadratic in partitions, most of a history backfill's time.
* ``serve_grpc``: ``dagster api grpc`` (``dagster._cli.api.grpc_command``) whose
  ``DagsterApiServer`` starts run workers from another multiprocessing context than its
  hard-coded ``spawn`` (``_mp_ctx``): orchestration/code_server.py forks them from a preloaded
  forkserver. Imported when called, so no other process pays for the CLI's imports.
* ``grpc_workspace``, ``launch_on_grpc_server``: what the daemon does for a scheduled or
  sensor run, for benchmarks/daily.py: a run created from a gRPC code server's snapshot and
  launched by the instance's run launcher on that server (the workspace classes are not
  public).
"""

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from multiprocessing.context import BaseContext
from typing import Any

import dagster as dg
from dagster._core.definitions.asset_checks.asset_check_evaluation import (
    AssetCheckEvaluationPlanned,
)
from dagster._core.definitions.assets.definition.assets_definition import AssetsDefinition
from dagster._core.definitions.data_version import CODE_VERSION_TAG
from dagster._core.definitions.partitions.subset import PartitionsSubset
from dagster._core.definitions.unresolved_asset_job_definition import UnresolvedAssetJobDefinition
from dagster._core.events import (
    AssetMaterializationPlannedData,
    DagsterEvent,
    DagsterEventBatchMetadata,
    generate_event_batch_id,
)
from dagster._core.execution.context.metadata_logging import (
    AssetMetadataHandle,
    OutputMetadataAccumulator,
)
from dagster._core.storage.asset_check_execution_record import AssetCheckExecutionRecordStatus
from dagster._core.storage.event_log.schema import AssetCheckExecutionsTable
from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage
from dagster._core.storage.runs.schema import RunsTable
from dagster._core.storage.runs.sql_run_storage import SqlRunStorage

__all__ = [
    "CODE_VERSION_TAG",
    "AssetCheckEvaluationPlanned",
    "AssetCheckExecutionRecordStatus",
    "AssetCheckExecutionsTable",
    "AssetMaterializationPlannedData",
    "DagsterEvent",
    "DagsterEventBatchMetadata",
    "PartitionsSubset",
    "RunsTable",
    "SqlEventLogStorage",
    "SqlRunStorage",
    "UnresolvedAssetJobDefinition",
    "add_partitions_metadata",
    "generate_event_batch_id",
    "grpc_workspace",
    "launch_on_grpc_server",
    "serve_grpc",
    "with_key_prefix",
]


def with_key_prefix(assets: Sequence[dg.AssetsDefinition], prefix: str
                    ) -> list[dg.AssetsDefinition]:
    """``assets`` under ``prefix``: their keys, their checks and their inputs from each other
    (inputs from other assets keep their keys)."""
    own = {key for asset in assets for key in asset.keys}
    moved = {key: dg.AssetKey([prefix, *key.path]) for key in own}
    return [_renamed_op(asset.with_attributes(asset_key_replacements=moved), prefix)
            for asset in assets]


def _renamed_op(asset: dg.AssetsDefinition, prefix: str) -> dg.AssetsDefinition:
    """``asset`` with its op named ``<prefix>__<op>`` (as ``@dg.asset(key_prefix=...)`` names
    it): two strategies' ``target_portfolio`` ops may then run in one job."""
    attributes = asset.get_attributes_dict()
    attributes["node_def"] = asset.node_def.with_replaced_properties(
        name=f"{prefix}__{asset.node_def.name}")
    return AssetsDefinition.dagster_internal_init(**attributes)


def add_partitions_metadata(context: dg.AssetExecutionContext,
                            metadata: Mapping[str, Mapping[str, Any]]) -> None:
    """``context.add_asset_metadata(meta, partition_key=key)`` for each ``key: meta`` of
    ``metadata`` (partitions of the run's range), merged the same way, in one step."""
    asset = context.assets_def
    if len(asset.keys) != 1 or asset.partitions_def is None:
        raise dg.DagsterInvariantViolationError(
            "add_partitions_metadata: for the one partitioned asset an op materialises, not "
            f"{sorted(k.to_user_string() for k in asset.keys)}")
    targeted = set(context.partition_keys)
    stray = [key for key in metadata if key not in targeted]
    if stray:
        raise dg.DagsterInvariantViolationError(
            f"Attempted to add metadata for partition keys {stray[:3]} that are not being "
            "targeted.")
    step = context.get_step_execution_context()
    asset_key = asset.key
    merged = dict(step._metadata_accumulator.per_output_metadata)
    for partition, meta in metadata.items():
        handle = AssetMetadataHandle(asset_key=asset_key, partition_key=partition)
        merged[handle] = {**merged.get(handle, {}), **meta}
    step._metadata_accumulator = OutputMetadataAccumulator(
        per_output_metadata=merged)


def serve_grpc(args: Sequence[str], run_workers: BaseContext) -> None:
    """``dagster api grpc ARGS`` (same options, same server), its run workers started by
    ``run_workers`` instead of ``multiprocessing.get_context("spawn")``."""
    from dagster._cli.api import grpc_command
    from dagster._grpc import server

    spawning = server.DagsterApiServer

    class ApiServer(spawning):  # type: ignore[misc, valid-type]
        def __init__(self, *a: Any, **kw: Any) -> None:
            super().__init__(*a, **kw)
            if getattr(self, "_mp_ctx", None) is None:  # an upgrade moved it: fail, not spawn
                raise RuntimeError("dagster's DagsterApiServer has no _mp_ctx any more: "
                                   "orchestration/dagster_private.serve_grpc needs updating")
            self._mp_ctx = run_workers

    # grpc_command looks the class up in its module when it runs.
    server.DagsterApiServer = ApiServer  # type: ignore[misc]
    try:
        grpc_command.main(args=list(args), prog_name="dagster api grpc")
    finally:
        server.DagsterApiServer = spawning  # type: ignore[misc]


@contextmanager
def grpc_workspace(instance: dg.DagsterInstance, host: str, port: int) -> Iterator[Any]:
    """The daemon's view of the code server at ``host:port``: a workspace request context, its
    location named ``benchmark``, loaded once (the daemon keeps its workspace too)."""
    from dagster._core.workspace.context import WorkspaceProcessContext
    from dagster._core.workspace.load_target import GrpcServerTarget

    target = GrpcServerTarget(host=host, port=port, socket=None, location_name="benchmark")
    with WorkspaceProcessContext(instance, target) as workspace:
        yield workspace.create_request_context()


def launch_on_grpc_server(instance: dg.DagsterInstance, workspace: Any, job: str,
                          run_config: Mapping[str, Any], tags: Mapping[str, str]) -> str:
    """A run of ``job`` from ``workspace``'s code server (:func:`grpc_workspace`), launched
    by ``instance``'s run launcher on that server (the queue skipped, as the daemon dequeues
    it); its id."""
    location = workspace.get_code_location("benchmark")
    (repository,) = location.get_repositories().values()
    remote_job = repository.get_full_job(job)
    plan = location.get_execution_plan(remote_job, dict(run_config), step_keys_to_execute=None,
                                       known_state=None, instance=instance)
    run = instance.create_run(
        job_name=job, run_id=None, run_config=dict(run_config), status=None,
        tags={**remote_job.tags, **tags}, root_run_id=None, parent_run_id=None,
        step_keys_to_execute=plan.execution_plan_snapshot.step_keys_to_execute,
        execution_plan_snapshot=plan.execution_plan_snapshot,
        job_snapshot=remote_job.job_snapshot,
        parent_job_snapshot=remote_job.parent_job_snapshot, asset_selection=None,
        asset_check_selection=None, resolved_op_selection=None, op_selection=None,
        remote_job_origin=remote_job.get_remote_origin(),
        job_code_origin=remote_job.get_python_origin(), asset_graph=repository.asset_graph)
    instance.launch_run(run.run_id, workspace)
    return run.run_id
