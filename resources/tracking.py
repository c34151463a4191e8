"""Experiment tracking (SPEC §10): a small MLflow resource that always closes its runs.

One MLflow experiment per strategy; one run per WFO window and per backtest. Each run carries
tags that tie it to the Dagster run id, asset key and partition, the code version and the data
version, so every number can be traced back to the inputs that produced it; ``git.commit`` and
``git.dirty`` name the source it ran (see :func:`source_revision`).

Everything goes through an explicit :class:`mlflow.MlflowClient` bound to ``tracking_uri``: the
module never touches mlflow's process-global state (``mlflow.set_tracking_uri``, the fluent
"active run"), so two resources pointing at different stores cannot leak into each other and a
failed body cannot leave an active run behind.

Local SQLite stores (``sqlite:///<home>/mlflow.db``) keep artifacts in ``<home>/mlartifacts``
(or ``artifact_root``): every experiment this resource creates gets an explicit artifact location
there, never mlflow's default ``./mlruns`` relative to the working directory.

Usage::

    with tracking.run(context, experiment=cfg.name, run_name=window.key,
                      params=cfg.tracking_params(), data_version=version) as run:
        run.log_metrics({"sharpe": 1.2, "cagr": 0.08})
        run.log_figure(fig, "plots/equity.png")
        run.log_frame(weights, "weights.parquet")
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import hashlib
import json
import os
import posixpath
import re
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager, suppress
from functools import cache
from pathlib import Path, PurePath
from typing import TYPE_CHECKING, Any
from urllib.parse import urlparse

import dagster as dg

if TYPE_CHECKING:  # mlflow is imported on first use: it adds ~1.5 s to loading definitions
    import pandas as pd
    from mlflow import MlflowClient
    from mlflow.entities import Experiment, Run

# Tag keys written on every run (when the value is known).
TAG_DAGSTER_RUN_ID = "dagster.run_id"
TAG_DAGSTER_JOB = "dagster.job_name"
TAG_DAGSTER_ASSET_KEY = "dagster.asset_key"
TAG_DAGSTER_PARTITION_KEY = "dagster.partition_key"
TAG_DAGSTER_PARTITION_RANGE = "dagster.partition_key_range"
TAG_CODE_VERSION = "code_version"
TAG_DATA_VERSION = "data_version"
TAG_GIT_COMMIT = "git.commit"
TAG_GIT_DIRTY = "git.dirty"
TAG_ERROR = "error"
TAG_DAGSTER_RUN_URL = "dagster.run_url"
TAG_DAGSTER_ASSET_URL = "dagster.asset_url"
# MLflow's own: the run's description (markdown, shown on the run page) and the experiment's
# kind (MLflow 3 opens a "custom_model_development" experiment on its runs, not on traces).
TAG_NOTE = "mlflow.note.content"
TAG_EXPERIMENT_KIND = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
# A saved runs-table view of the MLflow UI (its "share view" feature): the experiment tag
# ``mlflow.sharedViewState.<key>`` holds the view as JSON, ``?viewStateShareKey=<key>`` opens it.
SHARED_VIEW_PREFIX = "mlflow.sharedViewState."
VIEW_KEY = "researcher"
# The key columns of the runs table: what a researcher compares runs by.
KEY_METRICS = ("sharpe", "total_return", "cagr", "max_drawdown", "annual_volatility",
               "excess_return", "in_sample_sharpe", "in_sample_score")
KEY_TAGS = ("wfo.window", "dataset", "no_trade")
# Set at image build (the Dockerfile's build args): an installed image has no .git to ask.
ENV_GIT_COMMIT = "GIT_COMMIT"
ENV_GIT_DIRTY = "GIT_DIRTY"
UNKNOWN = "unknown"

PARAMS_ARTIFACT = "params.json"
_TRUNCATED = "…[truncated; full value in params.json]"
_KEY_BAD_CHARS = re.compile(r"[^\w.\- /]")  # mlflow: alphanumerics, _ - . space / (and :)


@dataclasses.dataclass(frozen=True)
class _Limits:
    key: int
    param_value: int
    tag_value: int
    params_per_batch: int
    metrics_per_batch: int


@cache
def limits() -> _Limits:
    """mlflow's own limits on key and value lengths and batch sizes."""
    from mlflow.utils import validation as v

    return _Limits(key=v.MAX_ENTITY_KEY_LENGTH, param_value=v.MAX_PARAM_VAL_LENGTH,
                   tag_value=v.MAX_TAG_VAL_LENGTH, params_per_batch=v.MAX_PARAMS_TAGS_PER_BATCH,
                   metrics_per_batch=v.MAX_METRICS_PER_BATCH)


def _now_ms() -> int:
    return int(time.time() * 1000)


# -- value conversion ---------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    """Structured objects → plain mappings/lists/scalars (recursively, best effort)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        to_dict = getattr(value, "to_dict", None)
        if callable(to_dict):
            return _plain(to_dict())
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and not isinstance(value, type):
        try:
            return _plain(model_dump(mode="python"))
        except Exception:  # pragma: no cover - unusual pydantic objects
            return _scalar(value)
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=repr) if isinstance(value, set | frozenset) else value
        return [_plain(v) for v in items]
    item = getattr(value, "item", None)  # numpy scalars
    if callable(item) and getattr(value, "shape", None) == ():
        try:
            return item()
        except Exception:  # pragma: no cover
            return _scalar(value)
    tolist = getattr(value, "tolist", None)  # numpy arrays, pandas Index/Series
    if callable(tolist) and not isinstance(value, str | bytes):
        try:
            return _plain(tolist())
        except Exception:  # pragma: no cover
            return _scalar(value)
    return value


def _scalar(value: Any) -> str:
    """A safe string for one scalar (never raises)."""
    try:
        if value is None:
            return "None"
        if isinstance(value, str):
            return value
        if isinstance(value, bool):
            return str(value)
        if isinstance(value, float):
            return repr(value)
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return value.isoformat()
        isoformat = getattr(value, "isoformat", None)  # pandas Timestamp
        if callable(isoformat):
            return str(isoformat())
        if isinstance(value, enum.Enum):
            return str(value.value)
        if isinstance(value, PurePath):
            return value.as_posix()
        if isinstance(value, bytes):
            return repr(value)
        return str(value)
    except Exception:
        try:
            return repr(value)
        except Exception:
            return f"<unprintable {type(value).__name__}>"


def _json_default(value: Any) -> Any:
    plain = _plain(value)
    if plain is value:
        return _scalar(value)
    return plain


def _to_json(value: Any, **kwargs: Any) -> str:
    return json.dumps(_plain(value), default=_json_default, ensure_ascii=False, **kwargs)


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Nested mapping → ``{"a.b.c": "value"}``.

    Mappings (and dataclasses / pydantic models) nest with ``.``; a list of scalars becomes one
    compact JSON value; a list holding mappings nests by index (``factors.0.name``); empty
    containers are logged as ``{}`` / ``[]``. Values are not truncated here.
    """
    out: dict[str, str] = {}

    def walk(key: str, value: Any) -> None:
        value = _plain(value)
        if isinstance(value, Mapping):
            if not value and key:
                out[key] = "{}"
            for k, v in value.items():
                walk(f"{key}.{k}" if key else str(k), v)
        elif isinstance(value, list):
            if any(isinstance(v, Mapping | list) for v in value):
                if not value:
                    out[key] = "[]"
                for i, v in enumerate(value):
                    walk(f"{key}.{i}", v)
            else:
                out[key] = _to_json(value, separators=(",", ":"))
        else:
            out[key] = _scalar(value)

    walk(prefix, params)
    return out


def _safe_key(key: str, taken: set[str]) -> str:
    """A valid, unique mlflow param/metric key (bad characters → ``_``, length ≤ 250)."""
    clean = _KEY_BAD_CHARS.sub("_", key).strip("/") or "_"
    clean = posixpath.normpath(clean)
    if clean in {".", ".."} or clean.startswith("../"):
        clean = clean.replace(".", "_")
    max_key = limits().key
    if len(clean) > max_key:
        digest = hashlib.sha1(key.encode()).hexdigest()[:8]
        clean = f"{clean[:max_key - 9]}-{digest}"
    base, n = clean, 1
    while clean in taken:
        n += 1
        suffix = f"-{n}"
        clean = base[:max_key - len(suffix)] + suffix
    taken.add(clean)
    return clean


def _clip(value: str, limit: int) -> str:
    if len(value) <= limit:
        return value
    return value[: limit - len(_TRUNCATED)] + _TRUNCATED


def prepare_params(params: Mapping[str, Any]) -> dict[str, str]:
    """Flattened params with keys and values within mlflow's limits (values clipped)."""
    taken: set[str] = set()
    return {_safe_key(k, taken): _clip(v, limits().param_value)
            for k, v in flatten_params(params).items()}


def _artifact_name(name: str, default_suffix: str, allowed: tuple[str, ...] = ()) -> str:
    """A relative POSIX artifact path with a suffix (``plots/equity`` → ``plots/equity.png``)."""
    clean = posixpath.normpath(str(name).replace("\\", "/"))
    if not name or clean in {".", ""} or clean.startswith(("/", "../")) or clean == "..":
        raise ValueError(f"artifact name {name!r} must be a relative path inside the run")
    suffix = PurePath(clean).suffix.lower()
    if not suffix:
        clean += default_suffix
    elif allowed and suffix not in allowed:
        raise ValueError(f"artifact name {name!r}: suffix must be one of {', '.join(allowed)}")
    return clean


# -- store locations ----------------------------------------------------------------------------

def sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores or in-memory)."""
    if not uri.startswith("sqlite:"):
        return None
    rest = uri[len("sqlite:"):].split("?", 1)[0]
    if not rest.startswith("///"):
        return None
    path = rest[3:]
    if not path or path == ":memory:":
        return None
    return Path(path)


def _as_uri(location: str) -> str:
    """A local path → ``file://`` URI; URIs (``s3://``, ``file:``…) unchanged."""
    parsed = urlparse(location)
    if parsed.scheme and len(parsed.scheme) > 1:  # not a Windows drive letter
        return location.rstrip("/")
    return Path(location).expanduser().resolve().as_uri()


def _slug(name: str) -> str:
    slug = re.sub(r"[^A-Za-z0-9_.-]+", "_", name).strip("._") or "experiment"
    digest = hashlib.sha1(name.encode()).hexdigest()[:8]
    return slug if slug == name else f"{slug}-{digest}"


# -- dagster context ----------------------------------------------------------------------------

def dagster_tags(context: Any) -> dict[str, str]:
    """Run id, job, asset key(s) and partition of a Dagster execution context (what it has)."""
    if context is None:
        return {}
    tags: dict[str, str] = {}

    def attempt(fn: Any) -> Any:
        try:
            return fn()
        except Exception:
            return None

    run_id = attempt(lambda: context.run.run_id) or attempt(lambda: context.run_id)
    if run_id:
        tags[TAG_DAGSTER_RUN_ID] = str(run_id)
    job = attempt(lambda: context.job_name)
    if job:
        tags[TAG_DAGSTER_JOB] = str(job)
    has_assets = attempt(lambda: context.has_assets_def)
    if has_assets or has_assets is None:
        key = attempt(lambda: context.asset_key)
        if key is not None:
            tags[TAG_DAGSTER_ASSET_KEY] = key.to_user_string()
        else:  # a multi-asset step: all the keys it materialises
            keys = attempt(lambda: context.selected_asset_keys) or []
            if keys:
                tags[TAG_DAGSTER_ASSET_KEY] = ",".join(
                    sorted(k.to_user_string() for k in keys))
    if attempt(lambda: context.has_partition_key):
        key = attempt(lambda: context.partition_key)
        if key is not None:
            tags[TAG_DAGSTER_PARTITION_KEY] = str(key)
    elif attempt(lambda: context.has_partition_key_range):
        rng = attempt(lambda: context.partition_key_range)
        if rng is not None:
            tags[TAG_DAGSTER_PARTITION_RANGE] = f"{rng.start}..{rng.end}"
    return tags


@cache
def source_revision() -> dict[str, str]:
    """The commit of the running code and whether its work tree had changes (``true``/
    ``false``), once per process: from git, else from ``GIT_COMMIT`` / ``GIT_DIRTY`` (set when
    the image is built), else ``unknown``."""
    root = Path(__file__).resolve().parents[1]
    try:
        commit = _git(root, "rev-parse", "HEAD")
        dirty = "true" if _git(root, "status", "--porcelain") else "false"
    except (OSError, subprocess.SubprocessError):
        commit = os.environ.get(ENV_GIT_COMMIT) or UNKNOWN
        dirty = os.environ.get(ENV_GIT_DIRTY) or UNKNOWN
    return {TAG_GIT_COMMIT: commit, TAG_GIT_DIRTY: dirty}


def _git(root: Path, *args: str) -> str:
    done = subprocess.run(["git", "-C", str(root), *args], capture_output=True, text=True,
                          timeout=30, check=True)
    return done.stdout.strip()


def _asset_code_version(context: Any) -> str | None:
    try:
        if context is None or not context.has_assets_def:
            return None
        versions = context.assets_def.code_versions_by_key
        return versions.get(context.asset_key)
    except Exception:
        return None


# -- the run handle -----------------------------------------------------------------------------

class TrackedRun:
    """An open MLflow run: log metrics and artifacts. Created by :meth:`MlflowTracking.run`."""

    def __init__(self, client: MlflowClient, run: Run, url: str | None,
                 ui_url: str | None = None) -> None:
        self.client = client
        self.run_id: str = run.info.run_id
        self.experiment_id: str = run.info.experiment_id
        self.artifact_uri: str = run.info.artifact_uri
        self.url = url
        self.ui_url = ui_url

    def artifact_url(self, path: str) -> str | None:
        """The URL the MLflow UI serves an artifact of this run at (None without a UI)."""
        if not self.ui_url:
            return None
        from urllib.parse import urlencode

        query = urlencode({"path": path, "run_uuid": self.run_id})
        return f"{self.ui_url.rstrip('/')}/get-artifact?{query}"

    def log_series(self, series: Mapping[str, Any]) -> None:
        """Daily curves as stepped metrics: one point per session (step = session number, the
        point's timestamp = the session's date), so MLflow charts them as lines over time.
        ``series``: metric name → a pandas Series indexed by date."""
        from mlflow.entities import Metric

        entries: list[Metric] = []
        taken: set[str] = set()
        for name, curve in series.items():
            key = _safe_key(str(name), taken)
            for step, (day, value) in enumerate(curve.dropna().items()):
                stamp = int(getattr(day, "timestamp", lambda: 0)() * 1000)
                entries.append(Metric(key, float(value), stamp, step))
        size = limits().metrics_per_batch
        for i in range(0, len(entries), size):
            self.client.log_batch(self.run_id, metrics=entries[i:i + size])

    def __repr__(self) -> str:
        return f"TrackedRun(run_id={self.run_id!r}, experiment_id={self.experiment_id!r})"

    # scalars
    def log_metrics(self, metrics: Mapping[str, Any], step: int | None = None) -> None:
        """Numeric metrics (numpy scalars fine; NaN/inf kept, None skipped)."""
        from mlflow.entities import Metric

        stamp, taken = _now_ms(), set[str]()
        entries: list[Metric] = []
        for key, value in metrics.items():
            if value is None:
                continue
            plain = _plain(value)
            if isinstance(plain, bool) or not isinstance(plain, int | float):
                raise TypeError(f"metric {key!r}: expected a number, got {value!r}")
            entries.append(Metric(_safe_key(str(key), taken), float(plain), stamp,
                                  int(step or 0)))
        size = limits().metrics_per_batch
        for i in range(0, len(entries), size):
            self.client.log_batch(self.run_id, metrics=entries[i:i + size])

    def log_params(self, params: Mapping[str, Any]) -> None:
        """More params (e.g. the frozen winner of a window); keys must be new to the run."""
        _log_params(self.client, self.run_id, params)

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        from mlflow.entities import RunTag

        taken: set[str] = set()
        entries = [RunTag(_safe_key(str(k), taken), _clip(_scalar(v), limits().tag_value))
                   for k, v in tags.items() if v is not None]
        size = limits().params_per_batch
        for i in range(0, len(entries), size):
            self.client.log_batch(self.run_id, tags=entries[i:i + size])

    # artifacts
    def _log_file(self, name: str, write: Any) -> str:
        directory, filename = posixpath.split(name)
        with tempfile.TemporaryDirectory(prefix="mlflow-artifact-") as tmp:
            path = Path(tmp) / filename
            write(path)
            self.client.log_artifact(self.run_id, str(path), artifact_path=directory or None)
        return name

    def log_figure(self, fig: Any, name: str, *, dpi: int = 110) -> str:
        """A matplotlib figure as PNG (a plotly figure as HTML). Returns the artifact path."""
        if hasattr(fig, "savefig"):
            name = _artifact_name(name, ".png", (".png", ".svg", ".pdf"))
            return self._log_file(name, lambda p: fig.savefig(p, dpi=dpi, bbox_inches="tight"))
        if hasattr(fig, "write_html"):
            name = _artifact_name(name, ".html", (".html",))
            return self._log_file(name, lambda p: fig.write_html(p, include_plotlyjs="cdn"))
        raise TypeError(f"log_figure: expected a matplotlib or plotly figure, got "
                        f"{type(fig).__name__}")

    def log_frame(self, frame: Any, name: str) -> str:
        """A DataFrame/Series as CSV (default) or Parquet, chosen by the name's suffix.

        The index is written unless it is a plain RangeIndex.
        """
        import pandas as pd

        if isinstance(frame, pd.Series):
            frame = frame.to_frame()
        if not isinstance(frame, pd.DataFrame):
            raise TypeError(f"log_frame: expected a DataFrame or Series, got "
                            f"{type(frame).__name__}")
        name = _artifact_name(name, ".csv", (".csv", ".parquet"))
        keep_index = not (isinstance(frame.index, pd.RangeIndex) and frame.index.name is None)
        if name.endswith(".parquet"):
            out = frame.copy()
            out.columns = [str(c) for c in out.columns]
            return self._log_file(name, lambda p: out.to_parquet(p, index=keep_index))
        return self._log_file(name, lambda p: frame.to_csv(p, index=keep_index))

    def log_html(self, text: str, name: str) -> str:
        name = _artifact_name(name, ".html", (".html", ".htm"))
        return self._log_file(name, lambda p: p.write_text(text, encoding="utf-8"))

    def log_text(self, text: str, name: str) -> str:
        name = _artifact_name(name, ".txt")
        return self._log_file(name, lambda p: p.write_text(text, encoding="utf-8"))

    def log_dict(self, data: Any, name: str) -> str:
        """A mapping (or any JSON-able structure) as JSON, or YAML for ``.yaml``/``.yml``."""
        name = _artifact_name(name, ".json", (".json", ".yaml", ".yml"))
        if name.endswith((".yaml", ".yml")):
            import yaml

            text = yaml.safe_dump(json.loads(_to_json(data)), sort_keys=False,
                                  allow_unicode=True)
        else:
            text = _to_json(data, indent=2)
        return self._log_file(name, lambda p: p.write_text(text, encoding="utf-8"))


def _log_params(client: MlflowClient, run_id: str, params: Mapping[str, Any]) -> dict[str, str]:
    from mlflow.entities import Param

    clean = prepare_params(params)
    entries = [Param(k, v) for k, v in clean.items()]
    size = limits().params_per_batch
    for i in range(0, len(entries), size):
        client.log_batch(run_id, params=entries[i:i + size])
    return clean


# -- the resource -------------------------------------------------------------------------------

class MlflowTracking(dg.ConfigurableResource):
    """MLflow experiment tracking through an explicit client (SPEC §10).

    ``tracking_uri``: ``sqlite:///<path>`` (local), ``http(s)://host`` (a tracking server) or
    any other mlflow store URI. ``artifact_root``: where experiments created by this resource
    keep artifacts (a path or URI; default for SQLite: ``mlartifacts`` beside the database; for
    a server: the server's default). ``code_version``: tagged on every run (falls back to the
    asset's Dagster code version).
    """

    tracking_uri: str
    artifact_root: str | None = None
    code_version: str = ""
    # The MLflow UI the links point at (default: the tracking server itself; a local SQLite
    # store has none unless set, e.g. `make dev`'s http://127.0.0.1:5000).
    ui_url: str | None = None
    # The Dagster webserver the MLflow runs link back to (None: no links, the ids as tags).
    dagster_url: str | None = None

    # plumbing
    def client(self) -> MlflowClient:
        from mlflow import MlflowClient

        db = sqlite_path(self.tracking_uri)
        if db is not None:
            db.expanduser().parent.mkdir(parents=True, exist_ok=True)
        return MlflowClient(tracking_uri=self.tracking_uri)

    @property
    def resolved_artifact_root(self) -> str | None:
        """The artifact root URI for new experiments (None: the store's default)."""
        if self.artifact_root:
            return _as_uri(self.artifact_root)
        db = sqlite_path(self.tracking_uri)
        if db is not None:
            return _as_uri(str(db.expanduser().resolve().parent / "mlartifacts"))
        return None

    @property
    def is_server(self) -> bool:
        return urlparse(self.tracking_uri).scheme in {"http", "https"}

    def experiment(self, name: str, *, create: bool = True,
                   client: MlflowClient | None = None) -> Experiment | None:
        """The experiment called ``name`` (created, or restored if deleted, when ``create``)."""
        if not name or not name.strip():
            raise ValueError("experiment name must not be empty")
        client = client or self.client()
        found = client.get_experiment_by_name(name)
        if found is not None:
            if found.lifecycle_stage == "deleted" and create:
                client.restore_experiment(found.experiment_id)
                found = client.get_experiment(found.experiment_id)
            if create:
                found = _set_up_experiment(client, found)
            return found
        if not create:
            return None
        root = self.resolved_artifact_root
        location = f"{root}/{_slug(name)}" if root else None
        try:
            experiment_id = client.create_experiment(name, artifact_location=location)
        except Exception:
            # Created concurrently by another process: use theirs.
            found = client.get_experiment_by_name(name)
            if found is None:
                raise
            return found
        return _set_up_experiment(client, client.get_experiment(experiment_id))

    @contextmanager
    def run(
        self,
        context: dg.AssetExecutionContext | dg.OpExecutionContext | None,
        *,
        experiment: str,
        run_name: str,
        params: Mapping[str, Any],
        tags: Mapping[str, Any] | None = None,
        data_version: str | None = None,
    ) -> Iterator[TrackedRun]:
        """Start a run in ``experiment``; yield a :class:`TrackedRun`; always end it.

        The run ends FINISHED when the body returns and FAILED when it raises anything
        (including ``KeyboardInterrupt``); the exception is re-raised and its type and message
        are tagged ``error``. Params are flattened (``a.b.c``) and clipped to mlflow's limits;
        the complete params are also stored as the ``params.json`` artifact.
        """
        client = self.client()
        exp = self.experiment(experiment, client=client)
        assert exp is not None
        run_tags: dict[str, str] = dagster_tags(context) | source_revision()
        run_tags |= dagster_links(self.dagster_url, run_tags)
        code_version = self.code_version or _asset_code_version(context)
        if code_version:
            run_tags[TAG_CODE_VERSION] = str(code_version)
        if data_version is not None:
            run_tags[TAG_DATA_VERSION] = str(data_version)
        for key, value in (tags or {}).items():
            if value is not None:
                run_tags[str(key)] = _scalar(value)
        taken: set[str] = set()
        run_tags = {_safe_key(k, taken): _clip(v, limits().tag_value)
                    for k, v in run_tags.items()}
        mlrun = client.create_run(exp.experiment_id, run_name=run_name, tags=run_tags)
        run_id = mlrun.info.run_id
        handle = TrackedRun(client, mlrun, self._url(exp.experiment_id, run_id), self.ui_base)
        try:
            _log_params(client, run_id, params)
            handle.log_dict(_plain(params), PARAMS_ARTIFACT)
            if context is not None:
                _log_to_context(context, experiment, handle)
            yield handle
        except BaseException as exc:
            # Never mask the body's exception with a tracking-store failure.
            with suppress(BaseException):
                client.set_tag(run_id, TAG_ERROR,
                               _clip(f"{type(exc).__name__}: {exc}", limits().tag_value))
            with suppress(BaseException):
                client.set_terminated(run_id, "FAILED")
            raise
        else:
            client.set_terminated(run_id, "FINISHED")

    # queries and links
    def search(self, experiment: str, filter_string: str = "", *,
               order_by: list[str] | None = None, max_results: int = 1000) -> list[Run]:
        """Runs of ``experiment`` matching an mlflow filter (e.g. ``tags.`dagster.run_id` = 'x'``);
        newest first. An unknown experiment has no runs."""
        client = self.client()
        exp = self.experiment(experiment, create=False, client=client)
        if exp is None:
            return []
        return list(client.search_runs(
            [exp.experiment_id], filter_string=filter_string,
            order_by=order_by or ["attributes.start_time DESC"], max_results=max_results))

    @property
    def ui_base(self) -> str | None:
        """The MLflow UI's base URL: ``ui_url``, else the tracking server (None: no UI)."""
        if self.ui_url:
            return self.ui_url.rstrip("/")
        return self.tracking_uri.rstrip("/") if self.is_server else None

    def run_url(self, run_id: str, experiment_id: str | None = None) -> str | None:
        """A link to the run in the MLflow UI (None without one)."""
        if self.ui_base is None:
            return None
        if experiment_id is None:
            experiment_id = self.client().get_run(run_id).info.experiment_id
        return self._url(experiment_id, run_id)

    def experiment_url(self, experiment_id: str) -> str | None:
        """The experiment's runs table with the key metrics as columns (None without a UI)."""
        if self.ui_base is None:
            return None
        return (f"{self.ui_base}/#/experiments/{experiment_id}/runs?"
                f"viewStateShareKey={VIEW_KEY}&workflowType=machine_learning")

    def _url(self, experiment_id: str, run_id: str) -> str | None:
        if self.ui_base is None:
            return None
        return (f"{self.ui_base}/#/experiments/{experiment_id}/runs/{run_id}"
                "?workflowType=machine_learning")


def experiment_of(row: pd.Series) -> str | None:
    """The MLflow experiment id a results row recorded beside its ``mlflow_run_id`` (None in
    rows stored before it was: :meth:`MlflowTracking.run_url` then looks the run up)."""
    value = row.get("mlflow_experiment_id")
    return value if isinstance(value, str) and value else None


def dagster_url_of(base: str, run_id: str | None = None, asset: str | None = None,
                   partition: str | None = None) -> str:
    """A page of the Dagster UI: a run, or an asset (at a partition)."""
    from urllib.parse import quote

    base = base.rstrip("/")
    if run_id is not None:
        return f"{base}/runs/{run_id}"
    assert asset is not None
    url = f"{base}/assets/{'/'.join(quote(p) for p in asset.split('/'))}"
    return url + (f"?partition={quote(partition)}" if partition else "")


def dagster_links(dagster_url: str | None, tags: Mapping[str, str]) -> dict[str, str]:
    """Links from an MLflow run back to the Dagster run and asset that made it: URL tags and
    the run's description (markdown, shown as links on the MLflow run page)."""
    run_id = tags.get(TAG_DAGSTER_RUN_ID)
    if not dagster_url or not run_id:
        return {}
    out = {TAG_DAGSTER_RUN_URL: dagster_url_of(dagster_url, run_id=run_id)}
    lines = [f"Made by Dagster run [{run_id}]({out[TAG_DAGSTER_RUN_URL]})"
             + (f" (job {tags[TAG_DAGSTER_JOB]})" if TAG_DAGSTER_JOB in tags else "")]
    asset = tags.get(TAG_DAGSTER_ASSET_KEY)
    if asset and "," not in asset:
        partition = tags.get(TAG_DAGSTER_PARTITION_KEY)
        out[TAG_DAGSTER_ASSET_URL] = dagster_url_of(dagster_url, asset=asset,
                                                    partition=partition)
        lines.append(f"asset [{asset}]({out[TAG_DAGSTER_ASSET_URL]})"
                     + (f", partition {partition}" if partition else ""))
    out[TAG_NOTE] = "; ".join(lines) + "."
    return out


def view_state(metrics: Sequence[str] = KEY_METRICS, tags: Sequence[str] = KEY_TAGS
               ) -> dict[str, Any]:
    """The runs table a researcher wants: run name, the window tag and the key metrics."""
    columns = ([f"tags.`{t}`" for t in tags] + [f"metrics.`{m}`" for m in metrics]
               + ["attributes.`Duration`"])
    return {"selectedColumns": columns, "orderByKey": "attributes.start_time",
            "orderByAsc": False, "runsHiddenMode": "SHOW_ALL"}


def _set_up_experiment(client: MlflowClient, experiment: Experiment) -> Experiment:
    """An experiment that opens on its runs (not MLflow 3's GenAI traces) with a saved view
    whose columns are the key metrics (:func:`view_state`); set once, kept when present."""
    wanted = {TAG_EXPERIMENT_KIND: EXPERIMENT_KIND,
              f"{SHARED_VIEW_PREFIX}{VIEW_KEY}": json.dumps(view_state())}
    tags = dict(experiment.tags or {})
    changed = False
    for key, value in wanted.items():
        if tags.get(key) != value:
            client.set_experiment_tag(experiment.experiment_id, key, value)
            changed = True
    return client.get_experiment(experiment.experiment_id) if changed else experiment


def _log_to_context(context: Any, experiment: str, handle: TrackedRun) -> None:
    with suppress(Exception):  # logging is a courtesy
        where = handle.url or f"run {handle.run_id}"
        context.log.info(f"MLflow: experiment {experiment!r}, {where}")


__all__ = [
    "PARAMS_ARTIFACT",
    "TAG_CODE_VERSION",
    "TAG_DAGSTER_ASSET_KEY",
    "TAG_DAGSTER_ASSET_URL",
    "TAG_DAGSTER_JOB",
    "TAG_DAGSTER_PARTITION_KEY",
    "TAG_DAGSTER_PARTITION_RANGE",
    "TAG_DAGSTER_RUN_ID",
    "TAG_DAGSTER_RUN_URL",
    "TAG_DATA_VERSION",
    "TAG_ERROR",
    "TAG_GIT_COMMIT",
    "TAG_GIT_DIRTY",
    "MlflowTracking",
    "TrackedRun",
    "dagster_links",
    "dagster_tags",
    "flatten_params",
    "prepare_params",
    "source_revision",
]
