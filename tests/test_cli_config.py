"""`bayesprune config list / show`: the example configs a pip user gets, valid and current."""

from pathlib import Path

import pytest
from click.testing import CliRunner

from bayesprune.app import load_config
from bayesprune.cli import main
from bayesprune.configs_catalog import config_names, config_text

DOCS = Path(__file__).resolve().parents[1] / "docs" / "configs"


def test_shipped_configs_are_the_documented_ones():
    assert config_names() == sorted(p.stem for p in DOCS.glob("*.yaml"))
    for name in config_names():  # fix: cp docs/configs/*.yaml src/bayesprune/configs/
        assert config_text(name) == (DOCS / f"{name}.yaml").read_text(), name


def test_list_names_every_example_with_its_purpose():
    result = CliRunner().invoke(main, ["config", "list"])
    assert result.exit_code == 0
    lines = result.output.splitlines()
    assert [line.split()[0] for line in lines] == config_names()
    assert all(len(line.split()) > 2 for line in lines)  # a summary after each name


@pytest.mark.parametrize("name", ["spike_slab_breast_cancer", "friedman1_regression.yaml"])
def test_show_prints_a_config_that_loads(tmp_path, name):
    result = CliRunner().invoke(main, ["config", "show", name])
    assert result.exit_code == 0
    path = tmp_path / "my.yaml"
    path.write_text(result.output)
    assert load_config(path).data.name in ("breast_cancer", "friedman1")


def test_show_unknown_name_is_one_line_listing_the_valid_ones():
    result = CliRunner().invoke(main, ["config", "show", "nope"])
    assert result.exit_code == 1
    assert "spike_slab_breast_cancer" in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_missing_config_file_points_to_the_examples(tmp_path):
    result = CliRunner().invoke(main, ["train", str(tmp_path / "absent.yaml")])
    assert result.exit_code == 1 and "bayesprune config show" in result.output
