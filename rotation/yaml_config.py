"""Reading a configuration YAML into a pydantic model, with errors that name file and field."""

from __future__ import annotations

from pathlib import Path
from typing import TypeVar

import yaml
from pydantic import BaseModel, ValidationError

M = TypeVar("M", bound=BaseModel)


def load_yaml_model(path: Path, model: type[M], error: type[Exception], what: str) -> M:
    """``model`` validated from the YAML at ``path``; ``error`` names ``what``, the file and
    every invalid field."""
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (OSError, yaml.YAMLError) as exc:
        raise error(f"{what} {path}: cannot read: {exc}") from exc
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        problems = "; ".join(f"{'.'.join(str(p) for p in e['loc'])}: {e['msg']}"
                             for e in exc.errors())
        raise error(f"{what} {path}: {problems}") from exc
