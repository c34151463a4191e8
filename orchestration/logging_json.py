"""Structured logs: one JSON object per line.

* :class:`JsonFormatter` - a ``logging.Formatter`` writing ``{"time", "level", "logger",
  "message", ...}`` with ``time`` in ISO-8601 UTC (millisecond precision, ``Z`` suffix). Records
  logged through Dagster (``context.log``) also carry ``run_id``, ``job``, ``step`` and, for
  Dagster events, ``event_type``; an exception (``exc_info``, or the error of a failure event)
  becomes ``exception``. Anything passed as ``extra={...}`` is kept under its own key (its
  ``str()`` when it is not JSON-serialisable).
* :data:`json_console_logger` - a Dagster logger definition (``@dg.logger``) writing those lines
  to stderr. Dagster only starts a job's loggers that the run config names, so a job uses it
  with ``logger_defs={"json": json_console_logger}`` (or ``Definitions(loggers=...)``) *and*
  run config ``loggers: {json: {}}`` (or ``{json: {config: {log_level: DEBUG}}}``); it then
  replaces the default coloured console logger of that run.
* For every run of an instance without touching jobs, the formatter also plugs into the
  instance's ``python_logs.dagster_handler_config`` (dagster.yaml)::

      python_logs:
        dagster_handler_config:
          handlers:
            json: {class: logging.StreamHandler, stream: "ext://sys.stderr", formatter: json}
          formatters:
            json: {"()": orchestration.logging_json.JsonFormatter}

  (those handlers come in addition to the run's console logger).
* :func:`configure_json_logging` - the same format for processes outside Dagster (the metrics
  exporter): replaces the root logger's handlers with one JSON handler on stderr.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import sys
from collections.abc import Mapping
from typing import IO, Any

import dagster as dg

# Attributes every LogRecord has; anything else on a record came from ``extra={...}``.
_STANDARD_ATTRS = frozenset(logging.makeLogRecord({}).__dict__) | {"message", "asctime",
                                                                   "taskName"}
# Set by Dagster's log manager on the records it hands to @dg.logger loggers.
_DAGSTER_META = "dagster_meta"
_DAGSTER_EVENT = "dagster_event"
_DAGSTER_ATTRS = frozenset({_DAGSTER_META, _DAGSTER_EVENT, "dagster_event_batch_metadata"})
_RESERVED = frozenset({"time", "level", "logger", "message", "run_id", "job", "step",
                       "event_type", "exception"})
_HANDLER_MARK = "_etf_json_handler"


def _utc_iso(created: float) -> str:
    stamp = dt.datetime.fromtimestamp(created, tz=dt.UTC)
    return stamp.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _jsonable(value: Any) -> Any:
    """``value`` if ``json.dumps`` takes it, else its ``str``."""
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return str(value)
    return value


def _event_error(event: Any) -> str | None:
    """The error text of a Dagster failure event (step or run failure), if any."""
    data = getattr(event, "event_specific_data", None)
    error = getattr(data, "error", None)
    if error is None:
        return None
    to_string = getattr(error, "to_string", None)
    return to_string() if callable(to_string) else str(error)


class JsonFormatter(logging.Formatter):
    """Formats a record as a single-line JSON object (see the module docstring)."""

    def format(self, record: logging.LogRecord) -> str:
        meta: Mapping[str, Any] = getattr(record, _DAGSTER_META, None) or {}
        message = meta.get("orig_message")
        if message is None:
            message = record.getMessage()
        out: dict[str, Any] = {
            "time": _utc_iso(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": message,
        }
        event = meta.get(_DAGSTER_EVENT)
        for key, value in (("run_id", meta.get("run_id")), ("job", meta.get("job_name")),
                           ("step", meta.get("step_key"))):
            # plain records may carry the same fields as ``extra={"run_id": ...}``
            value = value if value is not None else getattr(record, key, None)
            if value is not None:
                out[key] = str(value)
        event_type = getattr(event, "event_type_value", None) if event is not None else None
        if event_type:
            out["event_type"] = str(event_type)
        exception = None
        if record.exc_info:
            exception = self.formatException(record.exc_info)
        elif record.exc_text:
            exception = record.exc_text
        elif event is not None:
            exception = _event_error(event)
        if exception:
            out["exception"] = exception
        if record.stack_info:
            out["stack"] = self.formatStack(record.stack_info)
        for key, value in record.__dict__.items():
            if key in _STANDARD_ATTRS or key in _RESERVED or key in _DAGSTER_ATTRS \
                    or key.startswith("_") or key in out:
                continue
            out[key] = _jsonable(value)
        return json.dumps(out, ensure_ascii=False, default=str)


def json_handler(stream: IO[str] | None = None) -> logging.Handler:
    """A stream handler (stderr by default) with :class:`JsonFormatter`."""
    handler = logging.StreamHandler(stream if stream is not None else sys.stderr)
    handler.setFormatter(JsonFormatter())
    setattr(handler, _HANDLER_MARK, True)
    return handler


def configure_json_logging(level: int | str = logging.INFO,
                           stream: IO[str] | None = None) -> None:
    """JSON lines on stderr (or ``stream``) for every logger of a non-Dagster process.

    Replaces the root logger's handlers (so calling it again does not duplicate lines)."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        root.removeHandler(handler)
        if getattr(handler, _HANDLER_MARK, False):
            handler.close()
    root.addHandler(json_handler(stream))
    root.setLevel(level.upper() if isinstance(level, str) else level)
    logging.captureWarnings(True)


@dg.logger(
    {
        "log_level": dg.Field(str, is_required=False, default_value="INFO",
                              description="The logger's threshold (DEBUG, INFO, WARNING, ...)."),
        "name": dg.Field(str, is_required=False, default_value="etf_rotation",
                         description="The Python logger name written in each line."),
    },
    description="Dagster logs as JSON lines on stderr: time (UTC), level, logger, message, "
    "run_id, job, step, event_type and exception.",
)
def json_console_logger(init_context: dg.InitLoggerContext) -> logging.Logger:
    config = init_context.logger_config
    level = logging.getLevelName(str(config["log_level"]).upper())
    if not isinstance(level, int):
        raise ValueError(f"json_console_logger: log_level {config['log_level']!r} is not a "
                         "logging level (DEBUG, INFO, WARNING, ERROR, CRITICAL)")
    # A fresh Logger object (not logging.getLogger): one per run, never shared or propagated.
    logger = logging.Logger(str(config["name"]), level=level)
    logger.addHandler(json_handler())
    return logger
