"""What Dagster's "report" mutations can write (any writable webserver, the research one
included: Dagster OSS checks no roles on assets outside its workspace) does not reach the gate:
a check evaluation or a materialisation reported without a run neither passes a guarding check
nor wakes the execution sensor. On a dagster-postgres instance."""

from __future__ import annotations

import uuid

import dagster as dg
from conftest import paper_account

from assets.signals import GuardingCheck, failed_checks
from sensors.signals import approved_signal_sensor


def _asset_with_a_failing_check(key: str) -> list[dg.AssetsDefinition]:
    @dg.asset(name=key, check_specs=[dg.AssetCheckSpec("sound", asset=key, blocking=True)])
    def checked() -> dg.MaterializeResult:
        return dg.MaterializeResult(check_results=[dg.AssetCheckResult(
            check_name="sound", passed=False, description="the data is not sound")])

    return [checked]


def test_a_reported_pass_does_not_override_a_failed_check(pg_instance: dg.DagsterInstance
                                                          ) -> None:
    key = f"research_{uuid.uuid4().hex[:8]}"
    guard = GuardingCheck(key, "sound", per_session=False)
    result = dg.materialize(_asset_with_a_failing_check(key), instance=pg_instance,
                            raise_on_error=False)
    assert not result.success                   # the blocking check failed the run
    assert failed_checks(pg_instance, [guard], "2025-12-30") == [
        f"{key}:sound (2025-12-30: failed)"]
    # "reportAssetCheckEvaluations" with passed=true, as a writable webserver can send it.
    pg_instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(key), check_name="sound", passed=True))
    assert failed_checks(pg_instance, [guard], "2025-12-30") == [
        f"{key}:sound (2025-12-30: failed)"]


def test_a_reported_materialisation_is_no_session_data(pg_instance: dg.DagsterInstance
                                                       ) -> None:
    key = f"bars_{uuid.uuid4().hex[:8]}"
    guard = GuardingCheck(key, "sound", per_session=True)
    pg_instance.report_runless_asset_event(dg.AssetMaterialization(key, partition="2025-12-30"))
    pg_instance.report_runless_asset_event(dg.AssetCheckEvaluation(
        asset_key=dg.AssetKey(key), check_name="sound", passed=True))
    assert failed_checks(pg_instance, [guard], "2025-12-30") == [
        f"{key}:sound (2025-12-30: {key} not materialised)"]


def test_the_sensor_ignores_a_reported_approved_signal(pg_instance: dg.DagsterInstance
                                                       ) -> None:
    @dg.op
    def noop() -> None:
        return None

    @dg.job
    def execution_job() -> None:
        noop()

    sensor = approved_signal_sensor(execution_job, paper_account("paper-test"))
    start = pg_instance.fetch_materializations(dg.AssetKey("approved_signal"), limit=1,
                                               ascending=False)
    cursor = start.cursor if start.records else None
    pg_instance.report_runless_asset_event(dg.AssetMaterialization(
        "approved_signal", metadata={"note": "not a decision"}))
    pg_instance.report_runless_asset_event(dg.AssetMaterialization(
        "approved_signal", metadata={"signal_id": "forged", "status": "approved"}))
    with dg.build_sensor_context(instance=pg_instance, cursor=cursor,
                                 resources={"ledger": None}) as context:
        result = sensor(context)
    assert result.run_requests == []
