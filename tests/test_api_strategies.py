"""The desk API lists the strategies the deployment runs (issue 15 item 5): the strategy folder
and the kept last valid versions of the deployment's settings (ETF_STRATEGY_DIR), read as its
code location reads them, and every refused file with file, field and why. Through the real
app on the real PostgreSQL and Redis (tests/api_desk.py)."""

from __future__ import annotations

import shutil
from collections.abc import Iterator

import pytest
import yaml
from api_desk import Desk, desk
from fastapi.testclient import TestClient

from api.app import create_app
from api.permissions import Role
from orchestration.definitions import deployment_strategies
from orchestration.settings import Settings
from rotation.config_paths import STRATEGY_CONFIG_DIR
from rotation.strategy import StrategyWarning

V1 = "/api/v1"
PRIMARY = "etf_rotation_sample"
SECOND = "sample_momentum"


def second_strategy() -> str:
    data = yaml.safe_load((STRATEGY_CONFIG_DIR / f"{PRIMARY}.yaml").read_text())
    data.update({"name": SECOND, "factors": ["momentum_20", "momentum_60", "volatility_20"]})
    return yaml.safe_dump(data)


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Desk, Settings]]:
    """The API of a deployment whose strategy folder is its own: the sample strategy and a
    second one on the same data."""
    home = tmp_path_factory.mktemp("api_strategies")
    folder = home / "strategies"
    folder.mkdir()
    shutil.copy(STRATEGY_CONFIG_DIR / f"{PRIMARY}.yaml", folder)
    (folder / f"{SECOND}.yaml").write_text(second_strategy())
    with desk(home / "home") as d:
        yield d, d.settings.model_copy(update={"strategy_dir": folder})


def names(client: TestClient, d: Desk) -> list[str]:
    answer = client.get(f"{V1}/strategies", headers=d.headers(Role.VIEWER))
    assert answer.status_code == 200, answer.text
    return [s["name"] for s in answer.json()["items"]]


def refused(client: TestClient, d: Desk, **params: int) -> dict:
    answer = client.get(f"{V1}/strategies/refused", headers=d.headers(Role.VIEWER),
                        params=params)
    assert answer.status_code == 200, answer.text
    body: dict = answer.json()
    return body


def test_the_api_lists_what_the_deployment_runs_and_every_refusal(served) -> None:
    d, settings = served
    folder = settings.strategy_dir
    assert folder is not None
    # The code location reads the folder first (and keeps the valid versions).
    running = deployment_strategies(settings)
    assert [running.strategy.name] + [s.name for s in running.others] == [PRIMARY, SECOND]
    with TestClient(create_app(settings)) as client:
        assert names(client, d) == [PRIMARY, SECOND]          # not the shipped folder's five
        assert refused(client, d) == {"items": [], "total": 0, "limit": 50, "offset": 0}
        second = client.get(f"{V1}/strategies/{SECOND}", headers=d.headers(Role.VIEWER))
        assert second.status_code == 200 and second.json()["config"]["name"] == SECOND

        # The second file breaks after it validated, and a new file has a bad field.
        path = folder / f"{SECOND}.yaml"
        path.write_text(path.read_text().replace("in_sample:", "in_sample: [", 1))
        typo = yaml.safe_load(second_strategy())
        typo.update({"name": "typo_field", "costs": {"commission_bps": 50}})
        (folder / "typo_field.yaml").write_text(yaml.safe_dump(typo))
        with pytest.warns(StrategyWarning):
            reread = deployment_strategies(settings)
        assert [s.name for s in reread.others] == [SECOND]
        assert names(client, d) == [PRIMARY, SECOND]          # its last valid version runs
        body = refused(client, d)
        assert body["total"] == 2
        by_file = {r["file"]: r for r in body["items"]}
        kept, typo_file = by_file[f"{SECOND}.yaml"], by_file["typo_field.yaml"]
        assert kept["running"] == SECOND and kept["dataset"] == "sample"
        assert kept["fingerprint"] == running.others[0].fingerprint
        assert "not valid YAML" in kept["why"]
        assert typo_file["running"] is None and typo_file["fingerprint"] is None
        assert "costs.commission_bps: commission is in basis points" in typo_file["why"]
        # The deployment's folder is not shown, only the file's name.
        assert all(str(folder) not in r["why"] for r in body["items"])
        assert refused(client, d, limit=1, offset=1)["items"] == [body["items"][1]]
        # Signed in, as every strategy route.
        assert client.get(f"{V1}/strategies/refused").status_code == 401
