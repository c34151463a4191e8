"""Configuration YAML is read by libyaml's parser where PyYAML has it: every configuration file
of the repository reads the same as through PyYAML's pure-Python ``safe_load``, and a broken
document is still a ``yaml.YAMLError`` naming its line."""

from pathlib import Path

import pytest
import yaml

from rotation.yaml_config import _LOADER, parse_yaml

ROOT = Path(__file__).resolve().parents[1]


def test_libyaml_is_used_where_pyyaml_has_it() -> None:
    assert yaml.__with_libyaml__ and _LOADER is yaml.CSafeLoader


@pytest.mark.parametrize("path", sorted((ROOT / "config").rglob("*.y*ml")), ids=lambda p: p.name)
def test_every_configuration_file_reads_the_same(path: Path) -> None:
    text = path.read_text(encoding="utf-8")
    assert parse_yaml(text) == yaml.safe_load(text)


def test_a_broken_document_names_its_line_as_pyyaml_does() -> None:
    broken = "a: 1\nb: [2,\nc: {3\n"
    with pytest.raises(yaml.YAMLError) as pyyaml:
        yaml.safe_load(broken)
    with pytest.raises(yaml.YAMLError, match="line 3") as ours:
        parse_yaml(broken)
    assert str(ours.value) == str(pyyaml.value) and "^" in str(ours.value)
