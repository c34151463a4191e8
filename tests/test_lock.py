"""The lock file (uv.lock): one commit, one set of packages, wherever it is installed.

- pyproject.toml and uv.lock agree (`uv lock --check`), and that check does catch a change;
- the lock keeps what the code needs: plotly < 6 (vectorbt), numpy < 2.5 (numba), wheels for
  Python 3.11 and 3.12, the akshare, k8s and dev extras;
- the environment the suite runs in is exactly the lock with the dev extra
  (`uv sync --locked --check`, exact: nothing missing, nothing extra) and consistent
  (`uv pip check`), and that check does catch a different environment;
- `make env`, CI and the Dockerfile install from the lock with the uv version the lock pins.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml
from packaging.specifiers import SpecifierSet
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
LOCK = ROOT / "uv.lock"
PYPROJECT = ROOT / "pyproject.toml"
# The dev extra installs the lock's uv next to the interpreter (`make env`).
UV = Path(sys.executable).parent / "uv"
PROJECT = "etf-rotation"


def uv(*args: str, cwd: Path = ROOT, environment: Path | None = None
       ) -> subprocess.CompletedProcess[str]:
    if not UV.is_file():
        pytest.fail(f"{UV} is missing: uv is in the dev extra, run `make env`")
    env = {k: v for k, v in os.environ.items() if not k.startswith("UV_")}
    if environment is not None:
        env["UV_PROJECT_ENVIRONMENT"] = str(environment)
    return subprocess.run([str(UV), *args], cwd=cwd, env=env, capture_output=True, text=True,
                          timeout=300, check=False)


def lock() -> dict[str, Any]:
    return tomllib.loads(LOCK.read_text(encoding="utf-8"))


def locked_versions() -> dict[str, list[Version]]:
    """Every version the lock holds per package (a package may have one per Python range)."""
    versions: dict[str, list[Version]] = {}
    for package in lock()["package"]:
        versions.setdefault(package["name"], []).append(Version(package["version"]))
    return versions


def wheel_tags(name: str) -> set[str]:
    return {Path(wheel["url"]).name.split("-")[-3] for package in lock()["package"]
            if package["name"] == name for wheel in package.get("wheels", [])}


def uv_version() -> str:
    (version,) = locked_versions()["uv"]
    return str(version)


# -- the lock and pyproject.toml ------------------------------------------------------------


def test_lock_matches_pyproject() -> None:
    check = uv("lock", "--check")
    assert check.returncode == 0, (
        "uv.lock does not match pyproject.toml: run `.venv/bin/uv lock` and commit uv.lock\n"
        + check.stderr)


def test_lock_check_catches_a_changed_pyproject(tmp_path: Path) -> None:
    shutil.copy(LOCK, tmp_path / "uv.lock")
    text = PYPROJECT.read_text(encoding="utf-8")
    plotly = re.search(r'"plotly<6"', text)
    assert plotly is not None, "pyproject.toml must keep plotly<6 (vectorbt)"
    # A bound the locked plotly does not meet: the lock must be redone.
    (tmp_path / "pyproject.toml").write_text(text.replace('"plotly<6"', '"plotly<5.20"'),
                                             encoding="utf-8")
    check = uv("lock", "--check", cwd=tmp_path)
    assert check.returncode != 0
    assert "needs to be updated" in check.stderr, check.stderr


def test_lock_keeps_the_constraints_the_code_needs() -> None:
    data = lock()
    project = tomllib.loads(PYPROJECT.read_text(encoding="utf-8"))["project"]
    supported = SpecifierSet(data["requires-python"])
    assert supported == SpecifierSet(project["requires-python"])
    assert "3.11.0" in supported and "3.12.9" in supported
    versions = locked_versions()
    assert all(v < Version("6") for v in versions["plotly"]), versions["plotly"]
    assert all(v < Version("2.5") for v in versions["numpy"]), versions["numpy"]
    # Compiled packages come as wheels for both Pythons: nothing is built on install.
    for name in ("numpy", "numba", "llvmlite", "pyarrow", "pandas", "psycopg-binary"):
        assert {"cp311", "cp312"} <= wheel_tags(name), (name, wheel_tags(name))

    (root,) = [p for p in data["package"] if p["name"] == PROJECT]
    extras = root.get("optional-dependencies", {})
    assert set(project["optional-dependencies"]) == set(extras) >= {"akshare", "k8s", "dev"}
    for extra, requirements in extras.items():
        for requirement in requirements:
            assert requirement["name"] in versions, (extra, requirement)


# -- the installed environment --------------------------------------------------------------


def test_installed_environment_is_the_lock() -> None:
    check = uv("sync", "--locked", "--check", "--extra", "dev", "--offline",
               environment=Path(sys.prefix))
    assert check.returncode == 0, (
        f"{sys.prefix} is not uv.lock with the dev extra: run `make env` (it removes what the "
        "lock does not list)\n" + check.stdout + check.stderr)
    consistent = uv("pip", "check", "--python", sys.executable)
    assert consistent.returncode == 0, consistent.stdout + consistent.stderr


def test_environment_check_catches_a_different_environment(tmp_path: Path) -> None:
    empty = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(empty)], check=True,
                   timeout=120)
    check = uv("sync", "--locked", "--check", "--extra", "dev", "--offline",
               environment=empty)
    assert check.returncode != 0
    assert "outdated" in check.stderr, check.stdout + check.stderr
    assert "+ dagster==" in check.stdout + check.stderr


# -- who installs from it -------------------------------------------------------------------


def makefile_variable(name: str) -> str:
    match = re.search(rf"^{name}\s*:?=\s*(\S+)", (ROOT / "Makefile").read_text(), re.M)
    assert match is not None, f"Makefile has no {name}"
    return match.group(1)


def test_make_ci_and_the_image_install_from_the_lock_with_its_uv() -> None:
    version = uv_version()
    makefile = (ROOT / "Makefile").read_text(encoding="utf-8")
    assert makefile_variable("UV_VERSION") == version
    assert re.search(r"^\$\(STAMP\): pyproject\.toml uv\.lock$", makefile, re.M)
    assert "$(UV) sync --locked --extra dev" in makefile

    dockerfile = (ROOT / "Dockerfile").read_text(encoding="utf-8")
    assert f"ARG UV_VERSION={version}" in dockerfile
    assert re.search(r"^COPY pyproject\.toml uv\.lock ", dockerfile, re.M)
    assert "uv export --locked --no-emit-project" in dockerfile
    assert "pip install --require-hashes --no-deps -r /tmp/locked.txt" in dockerfile

    workflow = yaml.safe_load((ROOT / ".github/workflows/ci.yml").read_text(encoding="utf-8"))
    assert workflow["env"]["UV_VERSION"] == version
    runs = {name: "\n".join(step.get("run", "") for step in job["steps"])
            for name, job in workflow["jobs"].items()}
    assert "uv lock --check" in runs["lint"]
    assert "make env" in runs["typecheck"] and "make test" in runs["test"]
    assert "uv export --locked --all-extras" in runs["audit"]
    # Nothing is installed beside the lock in the test job's environment.
    assert ".venv/bin/pip install" not in runs["test"]


def exported_pins(text: str) -> dict[str, str]:
    """name -> version of a `uv export` requirements file, each checked to be `==`-pinned and
    followed by its hashes (what pip's --require-hashes insists on)."""
    lines = text.splitlines()
    pins = {}
    for number, line in enumerate(lines):
        if not line or line.startswith((" ", "#")):
            continue
        requirement = line.split(" ;")[0].removesuffix(" \\")
        name, pinned, version = requirement.partition("==")
        assert pinned and version, f"not pinned: {line}"
        assert lines[number + 1].lstrip().startswith("--hash=sha256:"), f"no hash: {line}"
        pins[name] = version
    return pins


@pytest.mark.parametrize(("extras", "present", "absent"), [
    ((), {"dagster", "dagster-postgres", "vectorbt"}, {"dagster-k8s", "akshare", "pytest"}),
    (("k8s",), {"dagster", "dagster-k8s"}, {"akshare", "pytest", "mypy"}),
])
def test_image_export_is_pinned_and_hashed(extras: tuple[str, ...], present: set[str],
                                           absent: set[str]) -> None:
    """What the Dockerfile hands to `pip install --require-hashes --no-deps`: the lock's
    versions of the dependencies and the asked extras, nothing else."""
    flags = [arg for extra in extras for arg in ("--extra", extra)]
    export = uv("export", "--locked", "--no-emit-project", "--format", "requirements.txt",
                "--offline", *flags)
    assert export.returncode == 0, export.stderr
    pins = exported_pins(export.stdout)
    assert present <= set(pins) and not absent & set(pins), (present - set(pins),
                                                              absent & set(pins))
    versions = locked_versions()
    for name, version in pins.items():
        assert Version(version) in versions[name], (name, version)
