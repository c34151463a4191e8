"""The strategy catalogue: one broken file never takes the others down, and a strategy whose
file breaks keeps running its last valid version until the file validates again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml

from rotation.catalogue import read_catalogue
from rotation.config_paths import STRATEGY_CONFIG_DIR
from rotation.strategy import StrategyWarning

SAMPLE = "etf_rotation_sample"
DEFAULT = "etf_rotation_default"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    out = tmp_path / "strategies"
    out.mkdir()
    for name in (SAMPLE, DEFAULT):
        shutil.copy(STRATEGY_CONFIG_DIR / f"{name}.yaml", out)
    return out


def test_every_shipped_strategy_file_validates() -> None:
    catalogue = read_catalogue()
    assert catalogue.refused == ()
    assert {p.stem for p in STRATEGY_CONFIG_DIR.glob("*.yaml")} == \
        {s.name for s in catalogue.strategies}


def test_a_broken_file_is_refused_and_the_others_load(folder: Path) -> None:
    (folder / "half_saved.yaml").write_text("name: half_saved\nuniverse: [\n")
    data = yaml.safe_load((folder / f"{SAMPLE}.yaml").read_text())
    data["name"], data["costs"]["commission_bps"] = "typo", 50
    (folder / "typo.yaml").write_text(yaml.safe_dump(data))
    catalogue = read_catalogue(folder)
    assert [s.name for s in catalogue.strategies] == [DEFAULT, SAMPLE]
    why = {r.path.name: r.describe() for r in catalogue.refused}
    assert "not valid YAML" in why["half_saved.yaml"] and "half_saved.yaml" in why[
        "half_saved.yaml"]
    assert "costs.commission_bps: commission is in basis points" in why["typo.yaml"]
    assert all(text.endswith("(refused: not loaded)") for text in why.values())


def test_an_unreadable_file_is_refused_not_fatal(folder: Path) -> None:
    (folder / "latin1.yaml").write_bytes("name: caf\xe9\n".encode("latin-1"))
    catalogue = read_catalogue(folder)
    assert len(catalogue.strategies) == 2
    assert "cannot be read as UTF-8 text" in catalogue.why_not("latin1")  # type: ignore[operator]


def test_two_files_may_not_claim_one_name(folder: Path) -> None:
    shutil.copy(folder / f"{SAMPLE}.yaml", folder / "zz_copy.yaml")
    catalogue = read_catalogue(folder)
    assert [s.name for s in catalogue.strategies] == [DEFAULT, SAMPLE]
    [refused] = catalogue.refused
    assert refused.path.name == "zz_copy.yaml"
    assert f"name: '{SAMPLE}' is already the name of another strategy file" in refused.why


def test_a_broken_edit_keeps_the_last_valid_version_in_force(folder: Path,
                                                             tmp_path: Path) -> None:
    kept = tmp_path / "home" / "strategies"
    first = read_catalogue(folder, kept=kept).named(SAMPLE)
    assert first is not None and (kept / f"{SAMPLE}.yaml").is_file()
    path = folder / f"{SAMPLE}.yaml"
    valid = path.read_text()
    path.write_text(valid.replace("top_n: 3", "top_n: three"))
    broken = read_catalogue(folder, kept=kept)
    assert broken.named(SAMPLE) == first             # still in force, as it was
    [refused] = broken.refused
    assert "portfolio.top_n" in refused.why and refused.kept == first
    assert f"keeps running its last valid version, fingerprint {first.fingerprint}" in \
        refused.describe()
    # The fixed file is the new version in force, and the one kept from now on.
    path.write_text(valid.replace("top_n: 3", "top_n: 4"))
    fixed = read_catalogue(folder, kept=kept)
    assert fixed.refused == () and fixed.named(SAMPLE).portfolio.top_n == 4  # type: ignore[union-attr]
    assert "top_n: 4" in (kept / f"{SAMPLE}.yaml").read_text()


def test_a_home_that_cannot_keep_says_so(folder: Path, tmp_path: Path) -> None:
    blocked = tmp_path / "not_a_folder"
    blocked.write_text("")                  # the kept folder cannot be made under a file
    with pytest.warns(UserWarning, match="could not keep its valid version"):
        catalogue = read_catalogue(folder, kept=blocked / "strategies")
    assert len(catalogue.strategies) == 2


@pytest.fixture
def deployed_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """config/strategies as a copy the test may break (what a deployment reads on reload)."""
    import orchestration.definitions as definitions
    import orchestration.deployment as deployment
    import rotation.catalogue as catalogue

    out = tmp_path / "deployed_strategies"
    shutil.copytree(STRATEGY_CONFIG_DIR, out)
    monkeypatch.setattr(catalogue, "STRATEGY_CONFIG_DIR", out)
    monkeypatch.setattr(definitions, "STRATEGY_CONFIG_DIR", out)
    monkeypatch.setattr(deployment, "STRATEGY_CONFIG_DIR", out)
    return out


def test_a_broken_new_file_does_not_stop_the_deployment(deployed_folder: Path,
                                                        make_settings) -> None:
    from orchestration.definitions import build_definitions, strategy_for

    (deployed_folder / "zz_new.yaml").write_text("name: zz_new\nfactors: {\n")
    settings = make_settings()
    with pytest.warns(StrategyWarning, match=r"zz_new\.yaml:\n  not valid YAML"):
        assert strategy_for(settings).name == SAMPLE
    with pytest.warns(StrategyWarning, match="refused: not loaded"):
        defs = build_definitions(settings)
    assert defs.resolve_job_def("daily_job") is not None


def test_a_broken_file_on_the_same_data_after_the_deployments_is_refused_not_fatal(
        deployed_folder: Path, make_settings) -> None:
    """With ETF_STRATEGY unset the deployment's strategy is the first valid file on the data:
    a broken file after it could never have been chosen, so it cannot be the deployment's
    strategy broken (a new strategy being written beside it, on reload)."""
    from orchestration.definitions import strategy_for
    from orchestration.settings import SettingsError

    data = yaml.safe_load((deployed_folder / f"{SAMPLE}.yaml").read_text())
    data["name"], data["costs"]["commission_bps"] = "typo", 50
    (deployed_folder / "typo.yaml").write_text(yaml.safe_dump(data))
    with pytest.warns(StrategyWarning, match="costs.commission_bps"):
        assert strategy_for(make_settings()).name == SAMPLE
    # The same file before the deployment's: this home's deployment chose SAMPLE when it first
    # loaded, so the file is not its strategy broken, just refused ...
    (deployed_folder / "typo.yaml").rename(deployed_folder / "a_typo.yaml")
    with pytest.warns(StrategyWarning, match="costs.commission_bps"):
        assert strategy_for(make_settings()).name == SAMPLE
    # ... but a deployment loading for the first time cannot tell: refused, with why.
    fresh = make_settings(home=make_settings().home.parent / "fresh_home")
    with pytest.warns(StrategyWarning), pytest.raises(
            SettingsError, match=r"a refused strategy file trades 'sample'.*a_typo\.yaml"):
        strategy_for(fresh)


def test_a_new_file_on_the_same_data_does_not_take_the_deployments_place(
        deployed_folder: Path, make_settings) -> None:
    """With ETF_STRATEGY unset, a valid file sorting before the deployment's strategy and
    trading the same data, added while it runs, is run beside it (on reload), not instead."""
    from orchestration.definitions import deployment_strategies, strategy_for

    settings = make_settings()
    assert strategy_for(settings).name == SAMPLE
    data = yaml.safe_load((deployed_folder / f"{SAMPLE}.yaml").read_text())
    data["name"] = "a_new_rotation"
    (deployed_folder / "a_new_rotation.yaml").write_text(yaml.safe_dump(data))
    deployed = deployment_strategies(settings)
    assert deployed.strategy.name == SAMPLE
    assert "a_new_rotation" in {s.name for s in deployed.others}
    # A deployment loading for the first time chooses by file order; removing the kept
    # strategy's file makes the next load choose again.
    assert strategy_for(make_settings(home=settings.home.parent / "new")).name == \
        "a_new_rotation"
    (deployed_folder / f"{SAMPLE}.yaml").unlink()
    assert strategy_for(settings).name == "a_new_rotation"


def test_the_deployed_strategy_survives_a_broken_edit(deployed_folder: Path,
                                                      make_settings) -> None:
    from orchestration.definitions import strategy_for
    from orchestration.settings import SettingsError

    settings = make_settings()
    running = strategy_for(settings)
    path = deployed_folder / f"{SAMPLE}.yaml"
    path.write_text(path.read_text().replace("in_sample:", "in_sample: [", 1))
    with pytest.warns(StrategyWarning, match=f"strategy {SAMPLE} keeps running its last valid "
                                             f"version, fingerprint {running.fingerprint}"):
        assert strategy_for(settings) == running
    # A strategy that never validated here has nothing to fall back to, and the deployment
    # does not switch to another strategy: refused, with why.
    fresh = make_settings(home=settings.home.parent / "fresh_home")
    with pytest.warns(StrategyWarning), pytest.raises(
            SettingsError, match=r"a refused strategy file trades 'sample': invalid "
                                 rf"strategy config .*{SAMPLE}\.yaml:\n  not valid YAML"):
        strategy_for(fresh)
    # ... not even when another valid file trades the same data.
    shutil.copy(STRATEGY_CONFIG_DIR / f"{SAMPLE}.yaml", deployed_folder / "zz_other.yaml")
    other = deployed_folder / "zz_other.yaml"
    other.write_text(other.read_text().replace(f"name: {SAMPLE}", "name: zz_other"))
    with pytest.warns(StrategyWarning), pytest.raises(SettingsError, match="refused strategy"):
        strategy_for(fresh)
