"""Structured JSON logs: one valid JSON object per line, from plain Python loggers
(``configure_json_logging``) and from Dagster runs (``json_console_logger``)."""


import datetime as dt
import io
import json
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from orchestration.logging_json import JsonFormatter, configure_json_logging, json_console_logger


def lines_of(text: str) -> list[dict[str, Any]]:
    """Every non-empty line parsed as JSON (fails on the first line that is not)."""
    out = []
    for line in text.splitlines():
        if line.strip():
            parsed = json.loads(line)
            assert isinstance(parsed, dict), line
            out.append(parsed)
    return out


def utc(stamp: str) -> dt.datetime:
    assert stamp.endswith("Z"), stamp
    parsed = dt.datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    assert parsed.utcoffset() == dt.timedelta(0)
    return parsed


@pytest.fixture
def restore_root_logging() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    for handler in list(root.handlers):
        root.removeHandler(handler)
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)
    logging.captureWarnings(False)


def test_formatter_writes_one_json_object_per_line() -> None:
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(JsonFormatter())
    logger = logging.Logger("etf.test.formatter", level=logging.DEBUG)
    logger.addHandler(handler)

    before = dt.datetime.now(dt.UTC) - dt.timedelta(seconds=1)
    logger.info("multi\nline message with \"quotes\" and 中文 %s", "arg")
    logger.warning("with context", extra={"run_id": "r-1", "job": "j", "step": "s",
                                          "account": "paper-main", "opaque": object()})
    try:
        raise ValueError("broken value")
    except ValueError:
        logger.exception("it failed")

    records = lines_of(stream.getvalue())
    assert len(records) == 3          # the newline inside the message stayed inside its line
    first, second, third = records
    assert first["message"] == "multi\nline message with \"quotes\" and 中文 arg"
    assert first["level"] == "INFO" and first["logger"] == "etf.test.formatter"
    assert before <= utc(first["time"]) <= dt.datetime.now(dt.UTC) + dt.timedelta(seconds=1)
    assert "run_id" not in first and "exception" not in first
    assert (second["run_id"], second["job"], second["step"]) == ("r-1", "j", "s")
    assert second["account"] == "paper-main"
    assert isinstance(second["opaque"], str)          # not JSON-serialisable: its str()
    assert third["level"] == "ERROR"
    assert "ValueError: broken value" in third["exception"]
    assert "Traceback" in third["exception"]


def test_configure_json_logging_for_plain_processes(restore_root_logging: None) -> None:
    stream = io.StringIO()
    configure_json_logging("INFO", stream=stream)
    configure_json_logging("DEBUG", stream=stream)     # idempotent: still one handler
    assert len(logging.getLogger().handlers) == 1
    logging.getLogger("etf.test.plain").debug("debug line")
    logging.getLogger("etf.test.plain").info("info line")
    records = lines_of(stream.getvalue())
    assert [r["message"] for r in records] == ["debug line", "info line"]
    assert {r["logger"] for r in records} == {"etf.test.plain"}


def test_json_console_logger_in_a_dagster_run(capfd: pytest.CaptureFixture[str]) -> None:
    @dg.op
    def chatty(context: dg.OpExecutionContext) -> None:
        context.log.info("hello from the op")
        context.log.warning("careful")

    @dg.op
    def broken(context: dg.OpExecutionContext) -> None:
        raise RuntimeError("op exploded")

    @dg.job(logger_defs={"json": json_console_logger})
    def json_logged_job() -> None:
        chatty()
        broken()

    result = json_logged_job.execute_in_process(
        run_config={"loggers": {"json": {"config": {"log_level": "DEBUG"}}}},
        instance=dg.DagsterInstance.ephemeral(), raise_on_error=False)
    assert not result.success
    run_id = result.run_id

    records = lines_of(capfd.readouterr().err)     # every stderr line must be JSON
    assert records, "the json logger wrote nothing"
    for record in records:
        assert {"time", "level", "logger", "message"} <= record.keys()
        utc(record["time"])
        assert record["logger"] == "etf_rotation"
        assert not any(key.startswith("dagster_") for key in record)   # internals stay out
    mine = [r for r in records if r.get("run_id") == run_id]
    hello = next(r for r in mine if r["message"] == "hello from the op")
    assert hello["level"] == "INFO"
    assert hello["job"] == "json_logged_job" and hello["step"] == "chatty"
    assert "event_type" not in hello
    assert next(r for r in mine if r["message"] == "careful")["level"] == "WARNING"
    # Dagster events come through with their type; the step failure carries the error.
    types = {r.get("event_type") for r in mine}
    assert {"STEP_START", "STEP_SUCCESS", "STEP_FAILURE", "PIPELINE_FAILURE"} <= types
    failure = next(r for r in mine if r.get("event_type") == "STEP_FAILURE")
    assert failure["step"] == "broken" and failure["level"] == "ERROR"
    assert "op exploded" in failure["exception"]


def test_json_console_logger_level_threshold(capfd: pytest.CaptureFixture[str]) -> None:
    @dg.op
    def quiet(context: dg.OpExecutionContext) -> None:
        context.log.info("info is below the threshold")
        context.log.error("error is above it")

    @dg.job(logger_defs={"json": json_console_logger})
    def threshold_job() -> None:
        quiet()

    threshold_job.execute_in_process(
        run_config={"loggers": {"json": {"config": {"log_level": "ERROR", "name": "etf.x"}}}},
        instance=dg.DagsterInstance.ephemeral())
    records = lines_of(capfd.readouterr().err)
    assert [r["message"] for r in records] == ["error is above it"]
    assert records[0]["logger"] == "etf.x"


INSTANCE_LOGGING_YAML = """\
telemetry:
  enabled: false
python_logs:
  dagster_handler_config:
    handlers:
      json: {class: logging.StreamHandler, stream: "ext://sys.stderr", formatter: json}
    formatters:
      json: {"()": orchestration.logging_json.JsonFormatter}
"""


@pytest.mark.filterwarnings("ignore::dagster.BetaWarning")
def test_formatter_through_the_instance_python_logs_config(
        tmp_path: Path, capfd: pytest.CaptureFixture[str]) -> None:
    """The dagster.yaml snippet of the module docstring: JSON lines for every run."""
    (tmp_path / "dagster.yaml").write_text(INSTANCE_LOGGING_YAML, encoding="utf-8")

    @dg.op
    def plain(context: dg.OpExecutionContext) -> None:
        context.log.info("logged through the instance handler")

    @dg.job
    def instance_logged_job() -> None:
        plain()

    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        result = instance_logged_job.execute_in_process(instance=instance)
    # The run's default console logger still writes its own (non-JSON) lines beside ours.
    json_lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("{")]
    records = lines_of("\n".join(json_lines))
    mine = [r for r in records if r.get("run_id") == result.run_id]
    line = next(r for r in mine if r["message"] == "logged through the instance handler")
    assert (line["job"], line["step"], line["level"]) == ("instance_logged_job", "plain", "INFO")
    assert {"STEP_START", "RUN_SUCCESS"} & {r.get("event_type") for r in mine}
