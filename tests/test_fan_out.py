"""Walk-forward windows on Kubernetes (``walk_forward.executor=k8s``): the definitions the code
location builds, and the weekly chain's two sensors driven by real runs on dagster-postgres."""

from __future__ import annotations

import sys
import uuid
from collections.abc import Callable

import dagster as dg
import pytest

from jobs.daily import REBUILD_TAG, weekly_research
from orchestration.definitions import build_definitions
from orchestration.runs import RANGE_END_TAG, RANGE_START_TAG
from orchestration.settings import Settings, SettingsError

WINDOWS = ["w1", "w2", "w3"]
WFO_ASSETS = ("wfo_windows", "wfo_results")


def test_k8s_setting_fans_the_windows_out(make_settings: Callable[..., Settings]) -> None:
    defs = build_definitions(make_settings(walk_forward={
        "executor": "k8s", "step_cpu": "1", "step_memory": "3Gi", "step_memory_limit": "4Gi"}))
    job = defs.resolve_job_def("walk_forward_job")
    assert job.executor_def.name == "k8s_walk_forward"
    assert "Each window is its own run" in (job.description or "")
    # The executor's configuration, resolved by dagster-k8s's own schema: the step pods'
    # resources come from the settings.
    execution = dg.validate_run_config(job, {})["execution"]["k8s_walk_forward"]
    assert execution["step_k8s_config"]["container_config"]["resources"] == {
        "requests": {"cpu": "1", "memory": "3Gi"}, "limits": {"memory": "4Gi"}}
    for key in WFO_ASSETS:
        assert defs.resolve_assets_def(key).backfill_policy == dg.BackfillPolicy.multi_run(1)
    sensor = defs.resolve_sensor_def("research_to_walk_forward")
    assert "a run each" in (sensor.description or "")


def test_default_keeps_one_run_sharing_the_panels(make_settings: Callable[..., Settings]
                                                  ) -> None:
    defs = build_definitions(make_settings())
    assert defs.resolve_job_def("walk_forward_job").executor_def is dg.in_process_executor
    for key in WFO_ASSETS:
        assert defs.resolve_assets_def(key).backfill_policy == dg.BackfillPolicy.single_run()


def test_k8s_without_dagster_k8s_names_the_setting(make_settings: Callable[..., Settings],
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "dagster_k8s", None)  # as if the extra were not installed
    with pytest.raises(SettingsError, match=r"walk_forward\.executor \[env "
                       r"ETF_WALK_FORWARD__EXECUTOR\]='k8s' needs dagster-k8s"):
        build_definitions(make_settings(walk_forward={"executor": "k8s"}))


# -- the weekly chain's sensors over real runs ----------------------------------------------

class Chain:
    """Stand-ins for the three research jobs (same names), run for real on the instance."""

    def __init__(self, instance: dg.DagsterInstance) -> None:
        self.instance = instance
        windows = dg.StaticPartitionsDefinition(WINDOWS)

        @dg.asset(name="screen")
        def screen() -> int:
            return 1

        @dg.asset(name="window_result", partitions_def=windows)
        def window_result() -> int:
            return 1

        @dg.asset(name="portfolio")
        def portfolio() -> int:
            return 1

        def job(name: str, asset: str):
            return dg.define_asset_job(name, selection=[asset],
                                       executor_def=dg.in_process_executor)

        self.research = job("research_job", "screen")
        self.walk_forward = job("walk_forward_job", "window_result")
        self.portfolio = job("portfolio_job", "portfolio")
        self.defs = dg.Definitions(
            assets=[screen, window_result, portfolio],
            jobs=[self.research, self.walk_forward, self.portfolio],
            resources={"io_manager": dg.mem_io_manager})

    def sensors(self, fan_out: bool) -> dict[str, dg.RunStatusSensorDefinition]:
        made = weekly_research(self.research, self.walk_forward, self.portfolio, WINDOWS,
                               "0 6 * * 6", "Asia/Shanghai", fan_out=fan_out)
        return {s.name: s for s in made if isinstance(s, dg.RunStatusSensorDefinition)}

    def run(self, name: str, partition: str | None = None, rebuild: str | None = None
            ) -> dg.ExecuteInProcessResult:
        tags = {REBUILD_TAG: rebuild} if rebuild else {}
        result = self.defs.resolve_job_def(name).execute_in_process(
            instance=self.instance, partition_key=partition, tags=tags)
        assert result.success
        return result

    def evaluate(self, sensor: dg.RunStatusSensorDefinition,
                 result: dg.ExecuteInProcessResult) -> object:
        context = dg.build_run_status_sensor_context(
            sensor_name=sensor.name, dagster_instance=self.instance,
            dagster_run=result.dagster_run, dagster_event=result.get_run_success_event())
        return sensor(context)


@pytest.fixture
def chain(pg_instance: dg.DagsterInstance) -> Chain:
    return Chain(pg_instance)


def requests_of(outcome: object) -> list[dg.RunRequest]:
    if outcome is None or isinstance(outcome, dg.SkipReason):
        return []
    return list(outcome) if isinstance(outcome, list) else [outcome]  # type: ignore[list-item]


def test_fan_out_requests_a_run_per_window_then_one_portfolio(chain: Chain) -> None:
    sensors = chain.sensors(fan_out=True)
    research = chain.run("research_job")
    rebuild = research.run_id

    requested = requests_of(chain.evaluate(sensors["research_to_walk_forward"], research))
    assert [r.partition_key for r in requested] == WINDOWS
    assert len({r.run_key for r in requested}) == len(WINDOWS)
    assert all(r.tags[REBUILD_TAG] == rebuild for r in requested)
    assert all(RANGE_START_TAG not in r.tags for r in requested)

    to_portfolio = sensors["walk_forward_to_portfolio"]
    # A window of another rebuild does not count towards this one.
    chain.run("walk_forward_job", "w3", rebuild=f"other-{uuid.uuid4().hex}")
    for key, waiting in (("w1", "1 of 3 windows done; waiting for ['w2', 'w3']"),
                         ("w2", "2 of 3 windows done; waiting for ['w3']")):
        done = chain.run("walk_forward_job", key, rebuild=rebuild)
        outcome = chain.evaluate(to_portfolio, done)
        assert isinstance(outcome, dg.SkipReason), outcome
        assert waiting in (outcome.skip_message or "")
    last = chain.run("walk_forward_job", WINDOWS[-1], rebuild=rebuild)
    (portfolio,) = requests_of(chain.evaluate(to_portfolio, last))
    assert portfolio.run_key == f"portfolio:{rebuild}"
    # Whichever window finishes last, the request is the same (deduplicated by run key).
    (again,) = requests_of(chain.evaluate(to_portfolio, done))
    assert again.run_key == portfolio.run_key

    # The success event is written before the run row says SUCCESS: a tick in between still
    # counts the run that woke it.
    chain.instance.handle_run_event(last.run_id, dg.DagsterEvent(
        event_type_value=dg.DagsterEventType.RUN_START.value, job_name="walk_forward_job"))
    assert chain.instance.get_run_by_id(last.run_id).status == dg.DagsterRunStatus.STARTED
    (lagging,) = requests_of(chain.evaluate(to_portfolio, last))
    assert lagging.run_key == portfolio.run_key

    # A window run launched by hand is not part of a rebuild: no portfolio from it.
    manual = chain.run("walk_forward_job", "w1")
    outcome = chain.evaluate(to_portfolio, manual)
    assert isinstance(outcome, dg.SkipReason) and "not part of a weekly rebuild" in str(
        outcome.skip_message)


def test_single_run_requests_every_window_as_one_run(chain: Chain) -> None:
    sensors = chain.sensors(fan_out=False)
    research = chain.run("research_job")
    (request,) = requests_of(chain.evaluate(sensors["research_to_walk_forward"], research))
    assert request.partition_key is None
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("w1", "w3")
    assert request.tags[REBUILD_TAG] == research.run_id
    window_run = chain.run("walk_forward_job", "w1", rebuild=research.run_id)
    (portfolio,) = requests_of(chain.evaluate(sensors["walk_forward_to_portfolio"], window_run))
    assert portfolio.run_key == f"portfolio:{window_run.run_id}"
