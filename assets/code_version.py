"""Code versions of the assets, derived from the code and the configuration they run.

Dagster marks an asset stale when its code version differs from the one its latest
materialisation recorded, and every MLflow run carries it as its ``code_version`` tag; both
mean something only when the version changes exactly when the asset's output can change.
:func:`code_version` hashes

* the source of what the asset runs (:data:`ASSET_CODE`, an explicit list per asset): its own
  function in ``assets/`` and the helpers there it calls (``"module:name"``), and the
  Dagster-free modules of ``rotation/`` and ``trading/`` (and the resource modules that read its
  data) it runs — a package means all of its modules. ``tests/test_code_version.py`` checks that
  every list is closed under the project's imports (``rotation.portfolio`` runs factor kernels,
  so whatever runs the portfolio lists ``rotation.factors``);
* the code of its upstream assets, so an edit of a factor kernel changes ``factors`` and every
  asset computed from it, and nothing upstream of it;
* the configuration it reads, which the asset's factory passes (the strategy's sections, the
  factor specs, the cross-section config, ...).

Source is compared as its syntax tree without docstrings and ``description=`` arguments:
comments, formatting and documentation mark nothing stale.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import importlib.util
import json
import sys
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rotation.derived_store import save_json

if TYPE_CHECKING:
    from rotation.strategy import StrategyConfig

VERSION_LENGTH = 16


@dataclass(frozen=True)
class AssetCode:
    """What an asset runs: ``functions`` are ``"assets.module:name"`` (a function or class,
    nested or not, found by its unique name), ``modules`` dotted modules or packages, and
    ``parents`` the upstream assets whose code it builds on."""

    functions: tuple[str, ...]
    modules: tuple[str, ...] = ()
    parents: tuple[str, ...] = ()


# The data source (files, sample, akshare) as raw_bars reads it.
_SOURCE = ("resources.market_data", "rotation.sources", "rotation.bars", "rotation.calendar",
           "rotation.market", "rotation.yaml_config", "rotation.config_paths")
_FACTORS = ("rotation.factors", "rotation.cross_section", "rotation.yaml_config")
# rotation.walkforward and what it imports (prepare, screen, search, portfolio, backtest), the
# strategy's derived settings and the funds' instruments from the data source.
_WALK_FORWARD = ("rotation.walkforward", "rotation.wfo", "rotation.search", "rotation.portfolio",
                 "rotation.backtest", "rotation.ic", "rotation.labels", "rotation.orders",
                 "rotation.strategy", "rotation.classic", "rotation.costs", *_FACTORS,
                 *_SOURCE)
_PREPARE = ("assets.walk_forward:prepare", "assets.walk_forward:_prepare")
# rotation.classic_search and what it runs: the classic generators and the walk-forward's
# panels, stitching and backtest (the rotation's modules, the factor kernels included).
_CLASSIC = ("rotation.classic_search", *_WALK_FORWARD)
_CLASSIC_PREPARE = ("assets.classic_walk_forward:prepare", "assets.classic_walk_forward:_prepare")
_TRADING = ("trading.approval", "trading.ledger", "trading.models", "trading.twap",
            "trading.volume_profile", "trading.session_clock",
            "trading.venue", "trading.conduct", "trading.account", "trading.attribution",
            "rotation.allocation", "rotation.portfolio_risk", "rotation.risk", "rotation.orders",
            "rotation.costs", "rotation.derived_store")

ASSET_CODE: dict[str, AssetCode] = {
    "raw_bars": AssetCode(
        ("assets.market:raw_bars", "assets.market:failed_partitions",
         "assets.market:PartialBackfill", "assets.market:contiguous"),
        ("rotation.quality", "rotation.adjust", "rotation.cross_section", *_SOURCE)),
    "adjusted_bars": AssetCode(("assets.market:adjusted_bars",),
                               ("rotation.adjust", "rotation.bars"), ("raw_bars",)),
    "cross_sections": AssetCode(
        ("assets.market:cross_sections", "assets.market:standardization_problems"),
        ("rotation.cross_section",), ("adjusted_bars",)),
    "factors": AssetCode(("assets.research:factors",), _FACTORS, ("adjusted_bars",)),
    "factor_ic": AssetCode(("assets.research:factor_ic", "assets.research:_wide",
                            "assets.research:own"),
                           ("rotation.ic", "rotation.labels", "rotation.report",
                            "rotation.backtest.metrics"), ("factors", "adjusted_bars")),
    "factor_ic_daily": AssetCode(
        ("assets.research:factor_ic_daily", "assets.research:daily_ic", "assets.research:_wide",
         "assets.research:own"),
        ("rotation.ic", "rotation.labels"), ("factors", "adjusted_bars")),
    "selected_factors": AssetCode(("assets.research:selected_factors", "assets.research:_wide",
                                   "assets.research:own"),
                                  ("rotation.ic",), ("factor_ic", "factors")),
    "wfo_windows": AssetCode(
        ("assets.walk_forward:wfo_windows", "assets.walk_forward:windows_of",
         "assets.walk_forward:warmup_sessions", *_PREPARE),
        _WALK_FORWARD, ("adjusted_bars", "factors")),
    "wfo_results": AssetCode(
        ("assets.walk_forward:wfo_results", "assets.walk_forward:windows_of",
         "assets.walk_forward:warmup_sessions", "assets.walk_forward:search_space", *_PREPARE),
        (*_WALK_FORWARD, "rotation.report"), ("adjusted_bars", "factors", "wfo_windows")),
    "oos_backtest": AssetCode(
        ("assets.walk_forward:oos_backtest", "assets.walk_forward:_winners",
         "assets.walk_forward:_daily_frame", *_PREPARE),
        (*_WALK_FORWARD, "rotation.report"), ("adjusted_bars", "factors", "wfo_results")),
    "oos_positions": AssetCode(
        ("assets.walk_forward:oos_positions", "assets.walk_forward:_winners",
         "assets.walk_forward:position_rows", *_PREPARE),
        _WALK_FORWARD, ("adjusted_bars", "factors", "wfo_results", "oos_backtest")),
    "target_portfolio": AssetCode(
        ("assets.walk_forward:target_portfolio", "assets.walk_forward:_winners", *_PREPARE),
        _WALK_FORWARD, ("adjusted_bars", "factors", "wfo_results")),
    "strategy_comparison": AssetCode(
        ("assets.comparison:strategy_comparison", "assets.comparison:_long",
         "assets.comparison:_metadata"),
        ("rotation.comparison", "rotation.report", "rotation.backtest.metrics"),
        ("oos_backtest",)),
    "account_allocation": AssetCode(
        ("assets.allocation:account_allocation", "assets.allocation:_allocation_frame",
         "assets.allocation:input_name"),
        (*_TRADING, "rotation.bars", "rotation.config_paths", "rotation.market",
         "rotation.yaml_config"),
        ("oos_backtest",)),
    "account_target": AssetCode(
        ("assets.allocation:account_target", "assets.allocation:_one_session",
         "assets.allocation:_target_frame", "assets.allocation:input_name"),
        (*_TRADING, "rotation.bars", "rotation.config_paths", "rotation.market",
         "rotation.yaml_config"),
        ("account_allocation", "target_portfolio")),
    "approved_signal": AssetCode(
        ("assets.signals:approved_signal", "assets.signals:failed_checks",
         "assets.signals:portfolio_figures", "assets.signals:audit_tightening",
         "assets.signals:traded_universe", "assets.signals:recent_closes",
         "assets.signals:strategy_wishes", "assets.signals:StrategyWishes",
         "assets.signals:record_parts"),
        # rotation.strategy (the traded strategies' universes) and what it imports.
        (*_TRADING, *_SOURCE, *_WALK_FORWARD),
        ("target_portfolio", "adjusted_bars")),
    "portfolio_risk": AssetCode(
        ("assets.signals:portfolio_risk", "assets.signals:book_weights",
         "assets.signals:risk_tables"),
        ("rotation.portfolio_risk", "rotation.report", "rotation.backtest.metrics", *_TRADING,
         *_SOURCE),
        ("target_portfolio", "adjusted_bars", "oos_backtest")),
    "positions_report": AssetCode(
        ("assets.signals:positions_report", "assets.signals:book_differences",
         "assets.signals:paper_equity", "assets.signals:backtest_equity",
         "assets.signals:strategy_pnl_metadata"),
        ("resources.execution", "trading.executor", "trading.paper", "trading.vnpy_venue",
         "trading.vnpy_api", "trading.intraday", "trading.live_prices", "rotation.backtest",
         "rotation.report",
         *_SOURCE, *_TRADING), ("approved_signal",)),
    "risk_compliance_report": AssetCode(
        ("assets.compliance:risk_compliance_report", "assets.compliance:report_inputs",
         "assets.compliance:breach_entries", "assets.compliance:marked_positions",
         "assets.compliance:report_paths", "assets.compliance:_on_day",
         "assets.compliance:_of_account", "assets.compliance:_risk_as_of",
         "assets.compliance:_log_to_mlflow"),
        ("rotation.compliance_report", "rotation.report", "rotation.backtest.metrics",
         "resources.execution", "trading.paper", "trading.vnpy_venue", "trading.vnpy_api",
         "trading.live_prices", "trading.intraday", *_SOURCE, *_TRADING),
        ("portfolio_risk", "positions_report")),
}


# A classic strategy's walk-forward (assets/classic_walk_forward.py): the same asset keys as
# the rotation's, its own code (a deployment defines one or the other under each key).
CLASSIC_ASSET_CODE: dict[str, AssetCode] = {
    "classic_wfo_windows": AssetCode(
        ("assets.classic_walk_forward:wfo_windows", "assets.classic_walk_forward:windows_of",
         "assets.classic_walk_forward:_window_row", *_CLASSIC_PREPARE),
        _CLASSIC, ("adjusted_bars",)),
    "classic_wfo_results": AssetCode(
        ("assets.classic_walk_forward:wfo_results", "assets.classic_walk_forward:windows_of",
         *_CLASSIC_PREPARE),
        (*_CLASSIC, "rotation.report"), ("adjusted_bars", "classic_wfo_windows")),
    "classic_oos_backtest": AssetCode(
        ("assets.classic_walk_forward:oos_backtest", "assets.classic_walk_forward:_winners",
         "assets.classic_walk_forward:latest_target", "assets.walk_forward:_daily_frame",
         *_CLASSIC_PREPARE),
        (*_CLASSIC, "rotation.report"), ("adjusted_bars", "classic_wfo_results")),
    "classic_oos_positions": AssetCode(
        ("assets.classic_walk_forward:oos_positions", "assets.classic_walk_forward:_winners",
         "assets.walk_forward:position_rows", *_CLASSIC_PREPARE),
        _CLASSIC, ("adjusted_bars", "classic_wfo_results", "classic_oos_backtest")),
    "classic_target_portfolio": AssetCode(
        ("assets.classic_walk_forward:target_portfolio", "assets.classic_walk_forward:_winners",
         "assets.classic_walk_forward:latest_target", *_CLASSIC_PREPARE),
        _CLASSIC, ("adjusted_bars", "classic_wfo_results")),
}


def code_version(asset: str, *config: object) -> str:
    """The code version of ``asset``: its code, its upstream assets' code and ``config``."""
    parts = [code_lineage(asset)] + [canonical_json(item) for item in config]
    return _digest(parts)[:VERSION_LENGTH]


def asset_code(asset: str) -> AssetCode:
    """What ``asset`` runs: a rotation deployment's asset, or a classic one (``classic_*``)."""
    return ASSET_CODE[asset] if asset in ASSET_CODE else CLASSIC_ASSET_CODE[asset]


def code_lineage(asset: str) -> str:
    """A digest of the source ``asset`` runs and of its upstream assets' (no configuration)."""
    spec = asset_code(asset)
    parts = [function_digest(ref) for ref in spec.functions]
    parts += [module_digest(name) for module in spec.modules for name in modules_of(module)]
    parts += [code_lineage(parent) for parent in spec.parents]
    return _digest(parts)


def strategy_sections(strategy: StrategyConfig, *names: str) -> dict[str, Any]:
    """The named sections of the strategy's configuration (as in its YAML file)."""
    data = strategy.to_dict()
    out = {name: data[name] for name in names}
    if "costs" in names:  # the costs as charged come from the market profile's rules
        out["market"] = strategy.market.model_dump(mode="json")
    return out


# -- source ----------------------------------------------------------------------------------


# The project's own modules are found by path: ``importlib.util.find_spec`` of a submodule
# imports its package (``rotation.factors`` loads numba), which versioning has no need of.
_PROJECT = Path(__file__).resolve().parents[1]


@cache
def module_file(module: str) -> tuple[Path, bool]:
    """The source file of ``module`` and whether it is a package (its ``__init__.py``)."""
    base = _PROJECT.joinpath(*module.split("."))
    if (base / "__init__.py").is_file():
        return base / "__init__.py", True
    if base.with_suffix(".py").is_file():
        return base.with_suffix(".py"), False
    spec = importlib.util.find_spec(module)
    if spec is None or spec.origin is None:
        raise ValueError(f"code version: no module {module!r}")
    return Path(spec.origin), bool(spec.submodule_search_locations)


@cache
def modules_of(module: str) -> list[str]:
    """``module`` itself, or every module of a package (sorted), sub-packages included."""
    origin, package = module_file(module)
    if not package:
        return [module]
    root = origin.parent
    names = []
    for path in sorted(root.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names.append(".".join((module, *parts[:-1])) if parts[-1] == "__init__"
                     else ".".join((module, *parts)))
    return names


@cache
def source_text(module: str) -> str:
    """The source of one module, as the code version reads it (the file on disk)."""
    return module_file(module)[0].read_text(encoding="utf-8")


def module_digest(module: str) -> str:
    return _stored_digest(module, source_text(module), None)


def function_digest(ref: str) -> str:
    module, _, name = ref.partition(":")
    return _stored_digest(module, source_text(module), name)


# Digests of syntax trees are kept beside the module's bytecode, keyed by the source text, this
# file and the Python version (whose ``ast`` they depend on): parsing and normalising every
# listed module costs each fresh process (every run worker builds the definitions) seconds, a
# small file read does not. Where the tree is read-only they are computed every time.
_STORE_KEY = hashlib.sha256(
    Path(__file__).read_bytes() + repr(sys.version_info[:2]).encode()).hexdigest()


def store_path(module: str) -> Path:
    origin = module_file(module)[0]
    return origin.parent / "__pycache__" / f"{origin.stem}.code-digests.json"


@cache
def _store(module: str, text: str) -> tuple[Path, str, dict[str, str]]:
    """Where ``module``'s digests are kept, the key of ``text`` and the digests stored for it."""
    path = store_path(module)
    key = _digest([_STORE_KEY, text])
    try:
        stored = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        stored = {}
    known = stored.get("digests") if isinstance(stored, dict) and stored.get("key") == key \
        else None
    return path, key, dict(known) if isinstance(known, dict) else {}


def _stored_digest(module: str, text: str, name: str | None) -> str:
    path, key, known = _store(module, text)
    entry = name or ""  # "" is the whole module
    if entry not in known:
        known[entry] = _tree_digest(text, name)
        save_json(path, {"key": key, "digests": known})
    return known[entry]


@cache
def _tree_digest(text: str, name: str | None) -> str:
    """The digest of a module's syntax tree, or of the one definition called ``name`` in it."""
    node: ast.AST = ast.parse(text)
    if name is not None:
        found = [n for n in ast.walk(node) if isinstance(
            n, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef) and n.name == name]
        if len(found) != 1:
            raise ValueError(f"code version: {len(found)} definitions named {name!r}")
        node = found[0]
    return _digest([ast.dump(_Normalise().visit(node))])


class _Normalise(ast.NodeTransformer):
    """Drops what documents the code without changing what it computes."""

    def generic_visit(self, node: ast.AST) -> ast.AST:
        body = getattr(node, "body", None)
        if (isinstance(node, ast.Module | ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
                and body and isinstance(body[0], ast.Expr)
                and isinstance(body[0].value, ast.Constant)
                and isinstance(body[0].value.value, str)):
            node.body = body[1:] or [ast.Pass()]
        if isinstance(node, ast.Call):
            node.keywords = [k for k in node.keywords if k.arg != "description"]
        return super().generic_visit(node)


# -- configuration ---------------------------------------------------------------------------


def canonical_json(value: object) -> str:
    """Equal configurations, equal text: sorted keys, plain values."""
    return json.dumps(_plain(value), sort_keys=True, separators=(",", ":"), default=str)


def _plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    model_dump = getattr(value, "model_dump", None)
    if callable(model_dump) and not isinstance(value, type):
        return model_dump(mode="json")
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, set | frozenset):
        return sorted((_plain(v) for v in value), key=repr)
    if isinstance(value, Iterable) and not isinstance(value, str | bytes):
        return [_plain(v) for v in value]
    return value


def _digest(parts: Iterable[str]) -> str:
    return hashlib.sha256("\0".join(parts).encode()).hexdigest()


def store_digests() -> int:
    """Compute (and store) the digests of every asset's code, as a build step does once;
    returns how many assets."""
    assets = (*ASSET_CODE, *CLASSIC_ASSET_CODE)
    for asset in assets:
        code_lineage(asset)
    return len(assets)


if __name__ == "__main__":
    print(f"code versions: digests of {store_digests()} assets' code stored")
