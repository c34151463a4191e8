"""Reading a configuration YAML into a pydantic model, with errors that name file and field."""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)
# libyaml's parser where PyYAML has it (the same documents through the same safe constructor,
# several times faster): a fresh run worker reads dozens of configuration files.
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def parse_yaml(text: str) -> Any:
    """``yaml.safe_load(text)``, by libyaml where available. A document libyaml refuses is
    parsed again by PyYAML, whose error quotes the offending line with a caret."""
    try:
        return yaml.load(text, Loader=_LOADER)
    except yaml.YAMLError:
        return yaml.safe_load(text)


def load_yaml_model(path: Path, model: type[M], error: type[Exception], what: str) -> M:
    """``model`` validated from the YAML at ``path``; ``error`` names ``what``, the file and
    every invalid field."""
    try:
        data = parse_yaml(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{what} {path}: cannot read: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise error(f"{what} {path}: {problems}") from exc
