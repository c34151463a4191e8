"""What the deployment runs, chosen from its settings: its strategies (the strategy files read
once as a catalogue) and its market data resource. The composition root
(``orchestration.definitions``) builds on these; the desk API's intraday P&L and the quote relay
read them without importing the code location."""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path

from orchestration.settings import Settings, SettingsError
from resources.market_data import (
    AkshareMarketData,
    FileMarketData,
    MarketDataResource,
    SampleMarketData,
)
from rotation.catalogue import Catalogue, read_catalogue
from rotation.config_paths import STRATEGY_CONFIG_DIR
from rotation.sources.files import load_dataset_spec
from rotation.strategy import (
    SAMPLE_DATASET,
    StrategyConfig,
    StrategyConfigError,
    StrategyWarning,
    load_strategy,
)


def market_data_resource(settings: Settings) -> MarketDataResource:
    """The market data the deployment reads (settings ``market_data``)."""
    md = settings.market_data
    common = {"calendar_name": settings.calendar, "calendar_start": settings.calendar_start}
    if md.source == "files":
        assert md.files_root is not None
        return FileMarketData(
            root=str(md.files_root.resolve()),
            dataset_config=str(md.dataset_config_path().resolve()),
            **common,
        )
    if md.source == "akshare":
        return AkshareMarketData(
            symbols=md.akshare_symbols, adjust=md.akshare_adjust, start=md.akshare_start,
            retries=md.akshare_retries, **common,
        )
    return SampleMarketData(
        seed=md.sample_seed, n_funds=md.sample_funds, start=md.sample_start,
        end=md.sample_end, **common,
    )


DEFAULT_STRATEGY = "etf_rotation_default"


def _source_name(settings: Settings) -> str | None:
    """The name of the configured data (a dataset config's own ``name``: a copy of a config
    under another path, e.g. one ending earlier, is still that data)."""
    md = settings.market_data
    if md.source == "sample":
        return SAMPLE_DATASET
    if md.source != "files":
        return None
    return load_dataset_spec(md.dataset_config_path()).name


def _data_strategy(settings: Settings, catalogue: Catalogue, source: str | None) -> str:
    """With ETF_STRATEGY unset: the strategy this data's deployment chose when it first loaded
    (kept in ``<home>/<data>/deployment_strategy``) while its file is in force and still trades
    the data, so a new file sorting before it cannot take its place on a reload; else the
    strategy of the data (:func:`_strategy_of_dataset`), then kept."""
    record = settings.data_home / "deployment_strategy"
    kept = record.read_text(encoding="utf-8").strip() if record.is_file() else ""
    running = catalogue.files.get(kept)
    if running is not None and source is not None and running.universe.dataset == source:
        return kept
    file = _strategy_of_dataset(catalogue, source)
    try:
        record.parent.mkdir(parents=True, exist_ok=True)
        record.write_text(file + "\n", encoding="utf-8")
    except OSError as exc:   # a read-only home still loads: the choice is just not kept
        warnings.warn(f"cannot keep the deployment's strategy in {record}: {exc}",
                      StrategyWarning, stacklevel=2)
    return file


def _strategy_of_dataset(catalogue: Catalogue, dataset: str | None) -> str:
    """The file of the strategy in force whose universe trades ``dataset``; when none does,
    the default strategy (its universe is then checked against the data when it runs). Never
    a classic strategy: the data's strategy is its rotation, a classic one runs only when
    ETF_STRATEGY names it (or beside it). Not while a refused file without a valid version in
    force names the dataset and comes before that file (so it would have been chosen, had it
    validated): the deployment must not switch strategies because a file broke. A broken file
    after it could never be the deployment's strategy: it is refused and the deployment loads
    (a new file added beside it)."""
    if dataset is None:
        return DEFAULT_STRATEGY
    chosen = next((file for file, s in catalogue.files.items()
                   if s.universe.dataset == dataset and s.classic is None), None)
    broken = [r for r in catalogue.refused if r.may_trade(dataset)
              and (chosen is None or r.path.name < f"{chosen}.yaml")]
    if broken:
        raise SettingsError(
            f"setting strategy [env ETF_STRATEGY] is unset and a refused strategy file trades "
            f"{dataset!r}: " + "; ".join(r.why for r in broken))
    return chosen or DEFAULT_STRATEGY


def strategy_for(settings: Settings) -> StrategyConfig:
    """The deployment's strategy (:func:`deployment_strategies`)."""
    return deployment_strategies(settings).strategy


@dataclass(frozen=True)
class Deployed:
    strategy: StrategyConfig            # the deployment's: the daily path and the account's
    others: list[StrategyConfig]        # run beside it
    catalogue: Catalogue                # the strategy files as read


def deployment_strategies(settings: Settings) -> Deployed:
    """The deployment's strategy and the others run beside it.

    The deployment's strategy is the configured one (``ETF_STRATEGY``: a file of the strategy
    folder, or a path), or the one that trades the configured data; an explicitly chosen
    strategy must name the configured market data. The others: ``ETF_STRATEGIES``, or every
    strategy in force that trades the configured data.

    The strategy files are read once, as a catalogue (rotation.catalogue): a broken file is
    refused with a warning naming file, field and why; a strategy whose file broke after it
    last validated keeps running that version (kept in ``<home>/<data>/strategies``)."""
    source = _source_name(settings)
    chosen = settings.strategy
    catalogue = read_catalogue(settings.strategy_dir, kept=settings.data_home / "strategies")
    for refused in catalogue.refused:
        warnings.warn(refused.describe(), StrategyWarning, stacklevel=2)
    if chosen is not None and not _in_catalogue(chosen, settings.strategy_dir):
        try:
            strategy = load_strategy(chosen)
        except StrategyConfigError as exc:
            raise SettingsError(f"setting strategy [env ETF_STRATEGY]={chosen!r}: {exc}"
                                ) from None
    else:
        file = Path(chosen).stem if chosen else _data_strategy(settings, catalogue, source)
        strategy = _in_force(catalogue, file, settings, "strategy [env ETF_STRATEGY]")
    wanted = strategy.universe.dataset
    if chosen and source is not None and wanted is not None and wanted != source:
        raise SettingsError(
            f"setting strategy [env ETF_STRATEGY]={chosen!r} trades the dataset "
            f"{wanted!r} but market_data is {source!r}: pick the strategy of that data (e.g. "
            f"etf_rotation_sample, etf_rotation_akshare) or point market_data at {wanted!r}")
    return Deployed(strategy, _others(settings, catalogue, strategy, source), catalogue)


def _in_force(catalogue: Catalogue, file: str, settings: Settings, setting: str
              ) -> StrategyConfig:
    if file not in catalogue.files:
        folder = settings.strategy_dir or STRATEGY_CONFIG_DIR
        why = catalogue.why_not(file) or (f"no strategy file {file}.yaml in {folder} (known: "
                                          f"{sorted(catalogue.files)})")
        raise SettingsError(f"setting {setting}={file!r}: {why}")
    return catalogue.files[file]


def _others(settings: Settings, catalogue: Catalogue, primary: StrategyConfig,
            source: str | None) -> list[StrategyConfig]:
    """The strategies beside ``primary``: the listed ones (a listed file that was refused is
    left out: the warning names it), or every one in force that trades ``source``."""
    if settings.strategies is None:
        return [s for s in catalogue.files.values()
                if source is not None and s.universe.dataset == source and s.name != primary.name]
    setting = "strategies [env ETF_STRATEGIES]"
    listed = [f for f in settings.strategies
              if f in catalogue.files or catalogue.why_not(f) is None]
    others = [_in_force(catalogue, f, settings, setting) for f in listed]
    for other in others:
        if source is not None and other.universe.dataset not in {None, source}:
            raise SettingsError(f"setting {setting}: strategy {other.name} trades "
                                f"{other.universe.dataset!r} but market_data is {source!r}")
    return [s for s in others if s.name != primary.name]


def _in_catalogue(chosen: str, folder: Path | None) -> bool:
    """Whether ``chosen`` (a name, or a path) is a file of the strategy folder."""
    path = Path(chosen)
    if path.suffix not in {".yaml", ".yml"} and path.name == chosen:
        return True
    return path.resolve().parent == (folder or STRATEGY_CONFIG_DIR).resolve()
