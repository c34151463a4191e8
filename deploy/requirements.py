"""Print the pip requirements of the image: ``[project].dependencies`` of pyproject.toml plus
the optional extras named in the first argument (comma-separated, e.g. ``k8s``).

The Dockerfile installs these in their own layer, before the code, so a code change does not
reinstall the dependencies.

    python deploy/requirements.py [k8s] > requirements.txt
"""

from __future__ import annotations

import sys
import tomllib
from pathlib import Path


def requirements(pyproject: Path, extras: list[str]) -> list[str]:
    project = tomllib.loads(pyproject.read_text(encoding="utf-8"))["project"]
    optional = project.get("optional-dependencies", {})
    unknown = [e for e in extras if e not in optional]
    if unknown:
        raise SystemExit(f"unknown extra(s) {unknown}; pyproject.toml defines "
                         f"{sorted(optional)}")
    return [*project["dependencies"], *(d for e in extras for d in optional[e])]


if __name__ == "__main__":
    names = [e for e in (sys.argv[1] if len(sys.argv) > 1 else "").split(",") if e.strip()]
    pyproject = Path(sys.argv[2]) if len(sys.argv) > 2 else Path("pyproject.toml")
    print("\n".join(requirements(pyproject, [e.strip() for e in names])))
