"""Strategies: their configuration (config/strategies) and the latest stored target portfolio
with the reason each fund is in or out (the ``target_portfolio`` asset's Parquet file)."""

from __future__ import annotations

import functools
import math
from pathlib import Path as FilePath
from typing import Annotated

import pandas as pd
from fastapi import APIRouter, Depends, HTTPException, Path, status

from api.deps import PageParams, State, authorize
from api.paging import page_of
from api.permissions import V1
from api.schemas import (
    SIGNED_IN_RESPONSES,
    Page,
    StrategyDetail,
    StrategySummary,
    TargetPortfolio,
    TargetWeight,
    text_filter,
)
from rotation.config_paths import CONFIG_DIR, STRATEGY_CONFIG_DIR
from rotation.strategy import StrategyConfig, StrategyConfigError, load_strategy

router = APIRouter(prefix=f"{V1}/strategies", tags=["strategies"],
                   dependencies=[Depends(authorize)],
                   responses=SIGNED_IN_RESPONSES)

STRATEGY_NAME = r"^[A-Za-z0-9][A-Za-z0-9_-]{0,99}$"
TARGET_FILE = "target_portfolio.parquet"


def _config_fingerprint() -> tuple[tuple[str, int, int], ...]:
    """Name, size and modification time of every configuration file a strategy may read:
    the strategies are re-read when one changes (a new strategy file shows without a restart)."""
    return tuple((str(path), stat.st_mtime_ns, stat.st_size)
                 for path in sorted(CONFIG_DIR.rglob("*.yaml")) for stat in [path.stat()])


@functools.lru_cache(maxsize=1)
def _strategies_of(fingerprint: tuple[tuple[str, int, int], ...]) -> tuple[StrategyConfig, ...]:
    """Every strategy file that validates (an invalid one is the research stage's to report);
    validating them all takes tens of milliseconds, so it is done once per configuration."""
    loaded = []
    for path in sorted(STRATEGY_CONFIG_DIR.glob("*.yaml")):
        try:
            loaded.append(load_strategy(path.stem, warn=False))
        except StrategyConfigError:
            continue
    return tuple(loaded)


def _strategies() -> tuple[StrategyConfig, ...]:
    return _strategies_of(_config_fingerprint())


def _summary(config: StrategyConfig) -> StrategySummary:
    return StrategySummary(name=config.name, market=config.universe.market,
                           dataset=config.universe.dataset,
                           description=config.description or None)


@router.get("", summary="The configured strategies, by name")
def list_strategies(paging: PageParams,
                    market: Annotated[str | None, text_filter(100)] = None,
                    dataset: Annotated[str | None, text_filter(200)] = None
                    ) -> Page[StrategySummary]:
    chosen = [s for s in _strategies()
              if (market is None or s.universe.market == market)
              and (dataset is None or s.universe.dataset == dataset)]
    return page_of(chosen, paging, _summary)


def _number_or_none(value: object) -> float | None:
    number = float(value) if isinstance(value, int | float) else math.nan
    return None if math.isnan(number) else number


def latest_target(storage_root: FilePath, strategy: str) -> TargetPortfolio | None:
    path = storage_root / TARGET_FILE
    if not path.is_file():
        return None
    table = pd.read_parquet(path)
    rows = table[table["strategy"] == strategy]
    if rows.empty:
        return None
    weights = [TargetWeight(symbol=str(r["symbol"]), weight=float(r["weight"]),
                            rank=_number_or_none(r.get("rank")), reason=str(r["reason"]))
               for _, r in rows.iterrows()]
    return TargetPortfolio(as_of=pd.Timestamp(rows["date"].iloc[0]).date(),
                           window=str(rows["window"].iloc[0]), weights=weights)


@router.get("/{name}", summary="A strategy's configuration and latest target portfolio",
            responses={404: {"description": "No such strategy"},
                       409: {"description": "The strategy file does not validate"}})
def get_strategy(name: Annotated[str, Path(pattern=STRATEGY_NAME)], state: State
                 ) -> StrategyDetail:
    if not (STRATEGY_CONFIG_DIR / f"{name}.yaml").is_file():
        raise HTTPException(status.HTTP_404_NOT_FOUND, detail=f"no strategy {name!r}")
    try:
        config = load_strategy(name, warn=False)
    except StrategyConfigError as exc:
        raise HTTPException(status.HTTP_409_CONFLICT,
                            detail=f"strategy {name!r} does not validate: {exc}") from None
    target = latest_target(state.settings.resolved_storage_root, config.name)
    return StrategyDetail(**_summary(config).model_dump(),
                          config=config.model_dump(mode="json"), target_portfolio=target)
