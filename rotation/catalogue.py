"""The strategy files of a deployment, read as one catalogue (issue 15 items 1 and 5).

Every ``*.yaml`` of the strategy folder is validated on its own, so one broken file never takes
the others down: it is refused with its file, field and why (:class:`StrategyConfigError`'s
text). Two files may not claim the same strategy ``name`` (it names the MLflow experiment and
the strategy's assets): the later file, by file name, is refused.

Hot reload: with ``kept`` (a folder of the data home), every valid file is kept there as read.
When a strategy's file later fails to validate — a half-saved edit, a typo — the strategy
keeps running its last valid version from ``kept`` and the refusal says so, until the file
validates again; a new file that never validated is simply refused.
"""

from __future__ import annotations

import re
import warnings
from dataclasses import dataclass
from pathlib import Path

import yaml

from rotation.config_paths import STRATEGY_CONFIG_DIR
from rotation.strategy import StrategyConfig, StrategyConfigError, load_strategy
from rotation.yaml_config import parse_yaml

__all__ = ["Catalogue", "RefusedFile", "read_catalogue"]


@dataclass(frozen=True)
class RefusedFile:
    path: Path
    why: str                        # file, field and why
    kept: StrategyConfig | None     # the last valid version, still in force
    dataset: str | None = None      # the data it names, as far as the text says
    classic: bool = False           # a classic strategy, as far as the text says

    def may_trade(self, dataset: str) -> bool:
        """Whether this refused file, with no valid version in force, names ``dataset`` and
        could be the strategy chosen by that data (a rotation: never a classic strategy)."""
        return self.kept is None and self.dataset == dataset and not self.classic

    def describe(self) -> str:
        if self.kept is None:
            return f"{self.why}\n  (refused: not loaded)"
        return (f"{self.why}\n  (refused: strategy {self.kept.name} keeps running its last "
                f"valid version, fingerprint {self.kept.fingerprint})")


@dataclass(frozen=True)
class Catalogue:
    files: dict[str, StrategyConfig]           # file name (no suffix) -> strategy in force
    refused: tuple[RefusedFile, ...]

    @property
    def strategies(self) -> tuple[StrategyConfig, ...]:
        """The strategies in force, by file name."""
        return tuple(self.files.values())

    def why_not(self, file: str) -> str | None:
        """Why the strategy file ``file`` (name without suffix) was refused, if it was."""
        return next((r.why for r in self.refused if r.path.stem == file), None)

    def named(self, name: str) -> StrategyConfig | None:
        return next((s for s in self.strategies if s.name == name), None)


def read_catalogue(directory: Path | None = None, *, kept: Path | None = None,
                   keep: bool = True) -> Catalogue:
    """Every strategy file of ``directory`` (default config/strategies), validated one by one
    (module docstring). ``keep=False`` falls back to ``kept`` without writing there: a reader
    (the desk API) shows what the deployment runs and must not decide its fallback."""
    directory = directory or STRATEGY_CONFIG_DIR
    files: dict[str, StrategyConfig] = {}
    refused: list[RefusedFile] = []
    for path in sorted(directory.glob("*.yaml")):
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")       # comparison-only models load quietly
                config = load_strategy(path)
        except StrategyConfigError as exc:
            last = _kept_version(kept, path)
            refused.append(RefusedFile(path, str(exc), last, _named_dataset(path),
                                       _names_classic(path)))
            if last is not None and last.name not in {s.name for s in files.values()}:
                files[path.stem] = last
            continue
        clash = next((s for s in files.values() if s.name == config.name), None)
        if clash is not None:
            refused.append(RefusedFile(path, f"invalid strategy config {path}:\n  name: "
                                       f"{config.name!r} is already the name of another "
                                       "strategy file (names must be unique)", None))
            continue
        files[path.stem] = config
        if keep:
            _keep(kept, path)
    return Catalogue(files, tuple(refused))


_DATASET_LINE = re.compile(r"^\s+dataset:\s*['\"]?([\w.-]+)", re.MULTILINE)


def _named_dataset(path: Path) -> str | None:
    """The ``universe.dataset`` a refused file names, read leniently (it may not parse)."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return None
    try:
        data = parse_yaml(text)
    except yaml.YAMLError:
        found = _DATASET_LINE.search(text)
        return found.group(1) if found else None
    universe = data.get("universe") if isinstance(data, dict) else None
    dataset = universe.get("dataset") if isinstance(universe, dict) else None
    return dataset if isinstance(dataset, str) else None


# A top-level ``classic:`` key that is not null (the section follows, or a value).
_CLASSIC_LINE = re.compile(r"^classic:(?![ \t]*(?:null\b|~|#|$))|^classic:[ \t]*(#.*)?\n[ \t]+\S",
                           re.MULTILINE)


def _names_classic(path: Path) -> bool:
    """Whether a refused file has a ``classic:`` section, read leniently (it may not parse)."""
    try:
        return bool(_CLASSIC_LINE.search(path.read_text(encoding="utf-8", errors="replace")))
    except OSError:
        return False


def _kept_copy(kept: Path, path: Path) -> Path:
    return kept / path.name


def _kept_version(kept: Path | None, path: Path) -> StrategyConfig | None:
    if kept is None or not _kept_copy(kept, path).is_file():
        return None
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return load_strategy(_kept_copy(kept, path))
    except StrategyConfigError:       # kept under an older schema: nothing to fall back to
        return None


def _keep(kept: Path | None, path: Path) -> None:
    """Keep the valid file as read (best effort: a read-only home keeps nothing)."""
    if kept is None:
        return
    text = path.read_bytes()
    copy = _kept_copy(kept, path)
    try:
        if copy.is_file() and copy.read_bytes() == text:
            return
        kept.mkdir(parents=True, exist_ok=True)
        partial = copy.with_suffix(".yaml.partial")
        partial.write_bytes(text)
        partial.replace(copy)           # atomic: a crash never leaves half a kept file
    except OSError as exc:
        warnings.warn(f"strategy file {path}: could not keep its valid version in {kept} "
                      f"({exc}); a later invalid edit will not fall back to it", stacklevel=2)
