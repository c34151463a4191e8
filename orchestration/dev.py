"""`make dev`: the Dagster UI and daemon on the same local instance as `make demo`."""

from __future__ import annotations

import os
import sys

from orchestration.instance import prepare_local_instance
from orchestration.settings import PROJECT_ROOT, load_settings


def main() -> None:
    home = prepare_local_instance(load_settings())
    print(f"DAGSTER_HOME={home}")
    os.chdir(PROJECT_ROOT)
    dagster = os.path.join(os.path.dirname(sys.executable), "dagster")
    os.execv(dagster, [dagster, "dev", "-w", str(PROJECT_ROOT / "workspace.yaml")])


if __name__ == "__main__":
    main()
