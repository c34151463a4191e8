"""Code versions follow the code and configuration each asset runs (assets/code_version.py), and
MLflow runs carry the source revision (resources/tracking.py)."""

import ast
import json
import subprocess
from collections.abc import Callable
from pathlib import Path

import dagster as dg
import pytest
from mlflow import MlflowClient

from assets import code_version as cv
from orchestration.definitions import build_definitions
from orchestration.settings import Settings
from resources import tracking
from resources.tracking import MlflowTracking

ROOT = Path(__file__).resolve().parents[1]
KERNELS = "rotation.factors.kernels"
MOMENTUM = "        out[k] = c[k] / c[k - window] - 1.0\n"
UPSTREAM_OF_FACTORS = {"raw_bars", "adjusted_bars", "cross_sections"}
PROJECT = ("rotation", "trading", "resources")


def _versions(make_settings: Callable[..., Settings], **overrides: object) -> dict[str, str]:
    # A ledger URL defines the execution stage too (nothing connects while defining).
    settings = make_settings(postgres_url="postgresql+psycopg://postgres@127.0.0.1:5432/none",
                             **overrides)
    graph = build_definitions(settings).resolve_asset_graph()
    return {key.to_user_string(): str(graph.get(key).code_version)
            for key in graph.get_all_asset_keys() if graph.get(key).is_materializable}


def _edit_source(monkeypatch: pytest.MonkeyPatch, module: str,
                 edit: Callable[[str], str]) -> None:
    """What the code version reads for ``module`` becomes ``edit(source)`` (the file stays)."""
    read = cv.source_text

    def edited(name: str) -> str:
        text = read(name)
        return edit(text) if name == module else text

    monkeypatch.setattr(cv, "source_text", edited)


def test_stored_digests_are_used_only_for_the_source_they_were_computed_from(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The digests kept beside the bytecode save a fresh process the parsing; a store whose
    key does not match the source (edited, corrupt, another Python) is recomputed."""
    module = "rotation.labels"
    text = cv.source_text(module)
    fresh = cv._tree_digest(text, None)
    store = tmp_path / "labels.code-digests.json"
    monkeypatch.setattr(cv, "store_path", lambda name: store)

    def in_a_new_process(source: str) -> str:
        cv._store.cache_clear()
        return cv._stored_digest(module, source, None)

    try:
        assert in_a_new_process(text) == fresh
        saved = json.loads(store.read_text())
        assert saved["digests"] == {"": fresh}
        # A stored digest is what a later process returns for the same source …
        store.write_text(json.dumps({"key": saved["key"], "digests": {"": "stored"}}))
        assert in_a_new_process(text) == "stored"
        # … and never for another source, nor from a corrupt file.
        assert in_a_new_process(text + "\nx = 1\n") != "stored"
        store.write_text("{not json")
        assert in_a_new_process(text) == fresh
    finally:
        cv._store.cache_clear()


def _downstream(make_settings: Callable[..., Settings], asset: str) -> set[str]:
    settings = make_settings(postgres_url="postgresql+psycopg://postgres@127.0.0.1:5432/none")
    graph = build_definitions(settings).resolve_asset_graph()
    keys = graph.get_all_asset_keys()
    children = {k: {c for c in keys if k in graph.get(c).parent_keys} for k in keys}
    out: set[dg.AssetKey] = set()
    todo = [dg.AssetKey(asset)]
    while todo:
        for child in children[todo.pop()] - out:
            out.add(child)
            todo.append(child)
    return {k.to_user_string() for k in out}


def test_every_asset_has_a_derived_code_version(make_settings) -> None:
    versions = _versions(make_settings)
    # Defined with two strategies or more, and for an account netting them
    # (test_strategies_side_by_side).
    assert set(versions) == set(cv.ASSET_CODE) - {"strategy_comparison", "account_allocation",
                                                  "account_target"}
    assert all(len(v) == cv.VERSION_LENGTH and v != "1" for v in versions.values())
    assert len(set(versions.values())) == len(versions)
    assert _versions(make_settings) == versions  # deterministic


def test_editing_a_factor_kernel_changes_factors_and_what_depends_on_it_only(
        make_settings, monkeypatch: pytest.MonkeyPatch) -> None:
    before = _versions(make_settings)
    assert MOMENTUM in cv.source_text(KERNELS)
    _edit_source(monkeypatch, KERNELS,
                 lambda text: text.replace(MOMENTUM, MOMENTUM.replace("- 1.0", "- 1.5")))
    after = _versions(make_settings)
    changed = {name for name in before if before[name] != after[name]}
    downstream = _downstream(make_settings, "factors")
    assert {"factor_ic", "factor_ic_daily", "wfo_results", "oos_positions",
            "approved_signal"} <= downstream
    assert changed == {"factors"} | downstream
    assert not changed & UPSTREAM_OF_FACTORS


def test_comments_and_docstrings_change_nothing(make_settings,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    before = _versions(make_settings)
    _edit_source(monkeypatch, KERNELS, lambda text: text.replace(
        '"""``c[k] / c[k - window] - 1``. Warm-up ``window + 1`` bars."""',
        '"""Momentum, reworded."""  # and a comment') + "\n# a trailing comment\n")
    assert _versions(make_settings) == before


def test_a_cross_section_setting_changes_what_reads_it_not_the_bars(make_settings) -> None:
    before = _versions(make_settings)
    after = _versions(make_settings, cross_section={"min_history": 40})
    changed = {name for name in before if before[name] != after[name]}
    assert {"cross_sections", "factors", "wfo_windows", "wfo_results"} <= changed
    assert not changed & {"raw_bars", "adjusted_bars", "factor_ic", "factor_ic_daily"}


def test_parents_are_the_asset_graph(make_settings) -> None:
    settings = make_settings(postgres_url="postgresql+psycopg://postgres@127.0.0.1:5432/none")
    graph = build_definitions(settings).resolve_asset_graph()
    for key in graph.get_all_asset_keys():
        if not graph.get(key).is_materializable:    # strategy_files: the files as read
            continue
        parents = {p.to_user_string() for p in graph.get(key).parent_keys}
        assert set(cv.ASSET_CODE[key.to_user_string()].parents) == parents, key


def _covered(module: str, listed: set[str]) -> bool:
    return any(module == m or module.startswith(m + ".") for m in listed)


def _project_imports(tree: ast.AST) -> dict[str, str]:
    """Name bound by an import → the project module it comes from."""
    names: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                known = cv.importlib.util.find_spec(node.module) is not None
                is_module = known and _is_module(sub)
                names[alias.asname or alias.name] = sub if is_module else node.module
        elif isinstance(node, ast.Import):
            for alias in node.names:
                names[alias.asname or alias.name.split(".")[0]] = alias.name
    return {k: v for k, v in names.items() if v.split(".")[0] in PROJECT}


def _is_module(name: str) -> bool:
    try:
        return cv.importlib.util.find_spec(name) is not None
    except ModuleNotFoundError:
        return False


@pytest.mark.parametrize("asset", sorted(cv.ASSET_CODE | cv.CLASSIC_ASSET_CODE))
def test_each_list_holds_what_the_asset_runs(asset: str) -> None:
    """Every project module the listed functions use, and every project module a listed module
    imports, is listed: the lists are explicit, and complete."""
    spec = cv.asset_code(asset)
    listed = set(spec.modules)
    missing: set[str] = set()
    for ref in spec.functions:
        module, _, name = ref.partition(":")
        tree = ast.parse(cv.source_text(module))
        imports = _project_imports(tree)
        (node,) = [n for n in ast.walk(tree) if getattr(n, "name", None) == name]
        used = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)}
        missing |= {imports[n] for n in used & set(imports)}
    for module in spec.modules:
        for name in cv.modules_of(module):
            missing |= set(_project_imports(ast.parse(cv.source_text(name))).values())
    missing = {m for m in missing if not _covered(m, listed)
               and m not in {"resources.cache", "resources.tracking", "resources.ledger",
                             "resources.clock"}}  # caching, tracking, connections: no output
    assert not missing, f"{asset}: add {sorted(missing)} to ASSET_CODE"


def test_mlflow_runs_carry_the_source_revision_and_the_asset_code_version(
        tmp_path: Path) -> None:
    store = f"sqlite:///{(tmp_path / 'mlflow.db').as_posix()}"

    @dg.asset(code_version="cv-42")
    def tracked(context: dg.AssetExecutionContext, tracking: MlflowTracking) -> str:
        with tracking.run(context, experiment="revision", run_name="r", params={}) as run:
            pass
        return run.run_id

    result = dg.materialize([tracked], resources={"tracking": MlflowTracking(tracking_uri=store)})
    tags = MlflowClient(tracking_uri=store).get_run(result.output_for_node("tracked")).data.tags
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True,
                          text=True, check=True).stdout.strip()
    assert tags["git.commit"] == head
    assert tags["git.dirty"] in {"true", "false"}
    assert tags["code_version"] == "cv-42"


def test_without_git_the_revision_comes_from_the_image_or_is_unknown(
        monkeypatch: pytest.MonkeyPatch) -> None:
    def no_git(*args: object) -> str:
        raise FileNotFoundError("git")

    monkeypatch.setattr(tracking, "_git", no_git)
    monkeypatch.setenv("GIT_COMMIT", "0123abc")
    monkeypatch.setenv("GIT_DIRTY", "false")
    tracking.source_revision.cache_clear()
    try:
        assert tracking.source_revision() == {"git.commit": "0123abc", "git.dirty": "false"}
        tracking.source_revision.cache_clear()
        monkeypatch.delenv("GIT_COMMIT")
        monkeypatch.delenv("GIT_DIRTY")
        assert tracking.source_revision() == {"git.commit": "unknown", "git.dirty": "unknown"}
    finally:
        tracking.source_revision.cache_clear()
